"""What did pretraining put into the encoder? Frozen-feature separability of each start.

For every start pretrained by ``run_protocol.py`` (its checkpoints under
``--work``), a per-pixel linear classifier on the frozen encoder's stride-4 and
stride-16 features (``protocol/diagnostics.py``) is fitted on the labelled
tiles of each budget and scored on the validation tiles (never test). ``raw``
is the same classifier on the normalised bands, ``random`` on TorchGeo's
random initialisation. Far less noisy than fine-tuning: no decoder, no
schedule, no selection.

    .venv/bin/python experiments/separability.py --dataset nc
"""

import argparse
import glob
import os
import re

import numpy as np
import torch
from protocol.datasets import ROOT
from protocol.diagnostics import separability
from protocol.finetuning import TiledSet
from protocol.report import budget_label


def starts(folder: str) -> dict[str, list[str]]:
    """Checkpoints of each pretrained start in a run folder, by pretraining seed."""
    found: dict[str, list[str]] = {}
    for path in sorted(glob.glob(os.path.join(folder, 'pretrain-*', '*_seed*.ckpt'))):
        match = re.fullmatch(r'(.+)_seed(\d+)\.ckpt', os.path.basename(path))
        if match:
            found.setdefault(match[1], []).append(path)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', default='nc')
    parser.add_argument('--work', default=os.path.join(ROOT, 'runs', 'protocol'))
    parser.add_argument(
        '--budgets',
        nargs='+',
        default=['4', '16'],
        help='labelled tiles, or percentages of the labelled pixels (1%%)',
    )
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3])
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = os.path.join(args.work, args.dataset)
    tiles = sorted(glob.glob(os.path.join(folder, 'tiles-*.pt')))
    if not tiles:
        parser.error(f'{folder} holds no tiles: run run_protocol.py first')
    data = TiledSet.load(tiles[-1])
    rows: list[tuple[str, str | None, bool]] = [('raw', None, True)]
    rows += [('random', None, False)]
    for name, paths in starts(folder).items():
        rows += [(f'{name} (seed {i})', path, False) for i, path in enumerate(paths)]
    print(
        f'{args.dataset}: validation Kappa (%) of a per-pixel linear classifier on '
        f'frozen features, mean ± SE over label seeds {args.seeds}\n'
    )
    print('| start | ' + ' | '.join(budget_label(b) for b in args.budgets) + ' |')
    print('|---|' + '---|' * len(args.budgets))
    for name, weights, raw in rows:
        cells = []
        for budget in args.budgets:
            kappas = 100 * np.array(
                [separability(data, weights, budget, s, raw=raw) for s in args.seeds]
            )
            se = kappas.std(ddof=1) / np.sqrt(len(kappas))
            cells.append(f'{kappas.mean():.1f} ± {se:.1f}')
        print(f'| {name} | ' + ' | '.join(cells) + ' |', flush=True)


if __name__ == '__main__':
    main()
