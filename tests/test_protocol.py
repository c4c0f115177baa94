"""The protocol runner's statistics, and its run on an image/mask pair never seen."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA, S2_TILE_A

sys.path.insert(0, str(Path(__file__).parents[1] / 'experiments'))
from protocol.report import Comparison, compare, sign_flip_p

RUNNER = Path(__file__).parents[1] / 'experiments' / 'run_protocol.py'


def test_sign_flip_test_is_exact() -> None:
    # All four differences positive: only all-plus and all-minus are as extreme.
    assert sign_flip_p([1.0, 2.0, 3.0, 4.0]) == pytest.approx(2 / 16)
    # Symmetric differences: every assignment is as extreme as the observed 0.
    assert sign_flip_p([1.0, -1.0]) == 1.0
    assert sign_flip_p([0.5] * 8) == pytest.approx(2 / 256)


def test_comparison_is_mean_se_wins_and_p() -> None:
    found = Comparison.of([1.0, 3.0, -1.0, 5.0])
    assert found.mean == pytest.approx(2.0)
    assert found.se == pytest.approx(2.5819888974716 / 2)
    assert found.wins == 3
    assert found.cell().startswith('+2.0 ± 1.3 (3/4, p=')


def test_compare_pairs_runs_seed_by_seed() -> None:
    def row(method: str, p: int, s: int, kappa: float) -> dict[str, object]:
        return {
            'dataset': 'd',
            'evaluation': 'probe',
            'label_tiles': 4,
            'pretrain_seed': p,
            'seed': s,
            'method': method,
            'test_Kappa': kappa,
        }

    rows = [
        row('random', 0, 0, 0.30),
        row('random', 0, 1, 0.50),
        row('glcnet', 0, 0, 0.35),
        row('glcnet', 0, 1, 0.52),
        row('glcnet', 1, 0, 0.99),  # no random run with these seeds: unpaired
    ]
    found = compare(rows, 'glcnet', 'random')[('d', 'probe', 4)]
    assert found.differences == pytest.approx([5.0, 2.0])


@pytest.mark.slow
def test_protocol_runs_on_a_pair_it_has_never_seen(tmp_path: Path) -> None:
    """NAME=IMAGES:MASKS, any band count, classes read from the mask."""
    labels = DATA / 'demo_labels' / 's2_pseudo_labels.tif'
    results, work = tmp_path / 'results', tmp_path / 'work'
    command = [
        sys.executable,
        str(RUNNER),
        '--quick',
        '--jobs',
        '1',
        '--datasets',
        f's2={S2_TILE_A}:{labels}',
        '--primary',
        's2',
        '--methods',
        'random',
        'zero_step',
        'glcnet',
        '--pretrain-seeds',
        '0',
        '--seeds',
        '0',
        '--budgets',
        '2',
        '--results',
        str(results),
        '--work',
        str(work),
    ]
    subprocess.run(command, check=True, capture_output=True, env=os.environ)
    with open(results / 'protocol_runs.csv') as f:
        rows = list(csv.DictReader(f))
    required = {
        'dataset',
        'method',
        'evaluation',
        'label_tiles',
        'pretrain_seed',
        'seed',
        'test_Kappa',
        'test_OA',
        'test_mIoU',
    }
    assert required <= set(rows[0])
    assert {r['method'] for r in rows} == {'random', 'zero_step', 'glcnet'}
    assert {r['evaluation'] for r in rows} == {'probe', 'finetune'}
    assert len(rows) == 3 * 2
    page = (results / 'protocol.md').read_text()
    assert '## s2' in page and 'vs random' in page
