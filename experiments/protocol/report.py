"""Paired comparisons of starts: differences seed by seed, their spread and a test.

Two runs are paired when they share the data set, evaluation, label budget,
pretraining seed and fine-tuning seed: the same labelled tiles, batch order,
augmentation and segmentation-head initialisation; only the start weights
differ. A start is compared with ``random`` and with ``zero_step`` through the
differences of its test Kappa in each pair.
"""

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt

#: Columns that identify a pair of runs, beside the method.
PAIR_KEYS = ('dataset', 'evaluation', 'budget', 'pretrain_seed', 'seed')


def budget_label(budget: str) -> str:
    """'16' -> '16 tiles'; a percentage ('1%') as it is."""
    return budget if budget.endswith('%') else f'{budget} tiles'


def sign_flip_p(differences: Sequence[float]) -> float:
    """Two-sided p-value of a paired sign-flip permutation test of mean 0.

    Exact over all ``2**n`` sign assignments up to n = 16 (Monte Carlo with a
    fixed seed beyond): the share of assignments whose mean is at least as far
    from 0 as the observed one.
    """
    values = np.asarray(differences, dtype=float)
    n = len(values)
    if n == 0:
        return math.nan
    observed = abs(values.mean()) - 1e-12
    if n <= 16:
        signs = np.array(list(itertools.product((1, -1), repeat=n)))
    else:
        signs = np.random.default_rng(0).choice((1, -1), size=(65536, n))
    means = np.abs((signs * values).mean(axis=1))
    return float((means >= observed).mean())


@dataclass
class Comparison:
    """A start against a reference, over paired runs (Kappa in points).

    Attributes:
        differences: start minus reference, one per pair.
        mean: their mean.
        se: their standard error (sd / sqrt(n)).
        wins: pairs where the start scored higher.
        p: two-sided sign-flip permutation p-value.
    """

    differences: list[float]
    mean: float
    se: float
    wins: int
    p: float

    @classmethod
    def of(cls, differences: Sequence[float]) -> 'Comparison':
        """Summarise paired differences."""
        values = [float(d) for d in differences]
        n = len(values)
        se = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        return cls(
            values,
            float(np.mean(values)) if n else math.nan,
            se,
            sum(d > 0 for d in values),
            sign_flip_p(values),
        )

    def cell(self) -> str:
        """'mean ± se (wins/n, p)' for a markdown table."""
        n = len(self.differences)
        if not n:
            return 'n/a'
        return f'{self.mean:+.1f} ± {self.se:.1f} ({self.wins}/{n}, p={self.p:.3f})'


def compare(
    rows: list[dict[str, Any]], method: str, reference: str, score: str = 'test_Kappa'
) -> dict[tuple[str, str, str], Comparison]:
    """Paired differences of *method* from *reference* by data set, evaluation, budget.

    Scores are fractions; differences are returned in points (x 100).
    """
    index = {
        tuple(r[k] for k in PAIR_KEYS): r[score]
        for r in rows
        if r['method'] == reference
    }
    grouped: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        if r['method'] != method:
            continue
        key = tuple(r[k] for k in PAIR_KEYS)
        if key in index and r[score] is not None and index[key] is not None:
            group = (r['dataset'], r['evaluation'], str(r['budget']))
            grouped.setdefault(group, []).append(100 * (r[score] - index[key]))
    return {group: Comparison.of(values) for group, values in grouped.items()}


def plot_differences(
    rows: list[dict[str, Any]],
    methods: Sequence[str],
    labels: dict[str, str],
    datasets: Sequence[str],
    evaluations: Sequence[str],
    budgets: Sequence[str],
    path: str,
) -> None:
    """Paired test-Kappa differences from random init: a panel per data set, evaluation.

    Each dot is a pair (start minus random init, same seeds); bars are mean ± SE.
    """
    shown = [m for m in methods if m != 'random']
    figure, axes = plt.subplots(
        len(datasets),
        len(evaluations),
        figsize=(
            6.5 * len(evaluations),
            0.45 * len(shown) * len(budgets) + 1.5 * len(datasets) + 1,
        ),
        squeeze=False,
    )
    colours = plt.get_cmap('tab10')
    for row, dataset in enumerate(datasets):
        for col, evaluation in enumerate(evaluations):
            axis = axes[row][col]
            ticks, names = [], []
            position = 0.0
            for method in shown:
                comparisons = compare(rows, method, 'random')
                for b, budget in enumerate(budgets):
                    found = comparisons.get((dataset, evaluation, budget))
                    if found is None:
                        continue
                    y = -position
                    jitter = np.linspace(-0.12, 0.12, len(found.differences))
                    axis.scatter(
                        found.differences, y + jitter, s=9, color=colours(b), alpha=0.6
                    )
                    axis.errorbar(
                        found.mean,
                        y,
                        xerr=found.se,
                        fmt='o',
                        color=colours(b),
                        capsize=3,
                        label=budget_label(budget)
                        if not ticks or position < len(budgets)
                        else None,
                    )
                    ticks.append(y)
                    names.append(f'{labels[method]} ({budget})')
                    position += 1
                position += 0.5
            axis.axvline(0, color='black', linewidth=0.8)
            axis.set_yticks(ticks, names, fontsize=7)
            axis.set_xlabel('test Kappa minus random init (points), paired')
            axis.set_title(f'{dataset}: {evaluation}')
            axis.grid(axis='x', alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
