"""Why a start's probes pass validation and then collapse on test: measured.

    .venv/bin/python experiments/diagnose_collapse.py --dataset sen1floods11

For one data set of the protocol (its tiles and pretraining runs under
``--work``, as ``run_protocol.py`` makes them with its default settings; GLCNet
runs that are missing are pretrained here, and the protocol reuses them):

1. **split composition**: tiles, class shares and image-nodata share of each
   split: what the validation and test tiles contain;
2. **probes** as the protocol runs them (budget, fine-tuning seeds): validation
   and test Kappa and the share of test pixels predicted as each class, for
   random init and for GLCNet at each pretraining seed;
3. **separability**: a per-pixel linear classifier on the frozen encoder's
   features (raw bands as the reference), fitted on the budget's labelled tiles
   and scored on validation and on test;
4. **batch-norm shift**: after the probe's re-estimation on training tiles, how
   far the channel means of the validation and of the test tiles lie from the
   running means, at every batch norm of the encoder (mean over channels of
   ``|batch mean - running mean| / running std``).

Test is read here to explain results the protocol already scored; nothing is
chosen on it.
"""

import argparse
import concurrent.futures
import multiprocessing
import os
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch
from protocol.datasets import ROOT, LabelledSet, resolve
from protocol.diagnostics import frozen_encoder, separability
from protocol.finetuning import IGNORE, TiledSet, finetune_run
from run_protocol import PretrainJob, Settings, _worker_init, digest, prepare
from torch import nn


def composition(data: TiledSet) -> list[str]:
    """Markdown rows: each split's tiles, class shares and nodata share."""
    rows = []
    for part in ('train', 'val', 'test'):
        tiles = getattr(data, part)
        masks = tiles.masks.long()
        counts = torch.bincount(masks.flatten(), minlength=IGNORE + 1).double()
        shares = counts / masks.numel()
        classes = ', '.join(
            f'{name} {100 * shares[i]:.0f} %' for i, name in enumerate(data.class_names)
        )
        # Normalised nodata pixels are 0 in every band.
        nodata = (tiles.images == 0).all(1).double().mean()
        rows.append(
            f'| {part} | {len(masks)} | {classes} | {100 * shares[IGNORE]:.0f} % | '
            f'{100 * nodata:.1f} % |'
        )
    return rows


def batch_norm_shift(
    weights: str | None, data: TiledSet, seed: int, backbone: str
) -> dict[str, float]:
    """Mean |z| of the val and test channel means against the running statistics.

    The encoder is re-estimated on the training tiles as the probe does
    (:func:`~protocol.finetuning.recalibrate`); z is a channel's mean over the
    tiles minus its running mean, in running standard deviations, averaged over
    the channels of every batch norm of the encoder.
    """
    encoder = frozen_encoder(data, weights, seed, backbone)
    shifts: dict[str, list[float]] = {}
    current: list[str] = []

    def hook(module: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...], _: Any) -> None:
        assert module.running_mean is not None and module.running_var is not None
        mean = inputs[0].mean((0, 2, 3))
        z = (mean - module.running_mean) / (module.running_var + module.eps).sqrt()
        shifts.setdefault(current[0], []).append(float(z.abs().mean()))

    handles = [
        m.register_forward_hook(hook)
        for m in encoder.modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    with torch.no_grad():
        for part in ('train', 'val', 'test'):
            current[:] = [part]
            images = (
                data.calibration() if part == 'train' else getattr(data, part).images
            )
            encoder(images)
    for handle in handles:
        handle.remove()
    return {part: float(np.mean(values)) for part, values in shifts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', default='sen1floods11')
    parser.add_argument('--budget', default='4')
    parser.add_argument('--pretrain-seeds', type=int, nargs='+', default=[0, 1])
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3])
    parser.add_argument('--work', default=os.path.join(ROOT, 'runs', 'protocol'))
    parser.add_argument(
        '--pretrain-steps',
        type=int,
        default=Settings().pretrain.steps,
        help="the protocol's by default (its runs are reused)",
    )
    args = parser.parse_args()
    settings = Settings()
    settings.pretrain = replace(settings.pretrain, steps=args.pretrain_steps)
    found = resolve(args.dataset, args.work, 0)
    if not isinstance(found, LabelledSet):
        parser.error(found)
    prepared = prepare(found, settings, args.work)
    data = TiledSet.load(prepared.tiles)
    key = digest(asdict(settings.pretrain) | {'backbone': settings.backbone})
    jobs = [
        PretrainJob(
            found.name,
            prepared.pretrain_images,
            prepared.stats,
            'glcnet',
            seed,
            settings.pretrain,
            os.path.join(args.work, found.name, f'pretrain-{key}'),
        )
        for seed in args.pretrain_seeds
    ]
    with concurrent.futures.ProcessPoolExecutor(
        2,
        mp_context=multiprocessing.get_context('spawn'),
        initializer=_worker_init,
        initargs=(1,),
    ) as pool:
        runs = list(pool.map(PretrainJob.run, jobs))
    torch.set_num_threads(2)
    starts: list[tuple[str, str | None, int]] = [('random init', None, 0)]
    starts += [
        (f'GLCNet seed {job.seed}', run['weights'], job.seed)
        for job, run in zip(jobs, runs, strict=True)
    ]
    print(f'# {found.name}: why probes pass validation and fail on test\n')
    print('## 1. What each split holds\n')
    print('| split | tiles | class shares | unlabelled | image nodata |')
    print('|---|---|---|---|---|')
    print('\n'.join(composition(data)), flush=True)
    print(f'\n## 2. Probes at budget {args.budget} (as the protocol runs them)\n')
    names = data.class_names
    print(
        '| start | seed | val Kappa | test Kappa | '
        + ' | '.join(f'test predicted {n}' for n in names)
        + ' |'
    )
    print('|---|---|---|---|' + '---|' * len(names))
    for name, weights, p in starts:
        for seed in args.seeds:
            result = finetune_run(
                data,
                weights,
                'encoder' if weights is None else 'encoder+decoder',
                'probe',
                settings.probe,
                args.budget,
                seed=seed,
                init_seed=1000 * (p + 1) + seed,
                backbone=settings.backbone,
            )
            shares = ' | '.join(
                f'{100 * result[f"test_predicted_{n}"]:.0f} %' for n in names
            )
            print(
                f'| {name} | {seed} | {100 * result["val_Kappa"]:.1f} | '
                f'{100 * result["test_Kappa"]:.1f} | {shares} |',
                flush=True,
            )
    print(f'\n## 3. Linear separability of frozen features, budget {args.budget}\n')
    print('| start | val Kappa | test Kappa |')
    print('|---|---|---|')
    rows = [('raw bands', None, 0, True), *[(n, w, p, False) for n, w, p in starts]]
    for name, weights, _, raw in rows:
        cells = []
        for split in ('val', 'test'):
            kappas = 100 * np.array(
                [
                    separability(data, weights, args.budget, s, raw=raw, split=split)
                    for s in args.seeds
                ]
            )
            se = kappas.std(ddof=1) / np.sqrt(len(kappas))
            cells.append(f'{kappas.mean():.1f} ± {se:.1f}')
        print(f'| {name} | ' + ' | '.join(cells) + ' |', flush=True)
    print('\n## 4. Batch-norm shift after re-estimation on training tiles\n')
    print('| start | train | val | test |')
    print('|---|---|---|---|')
    for name, weights, p in starts:
        shift = batch_norm_shift(weights, data, 1000 * (p + 1), settings.backbone)
        print(
            f'| {name} | {shift["train"]:.2f} | {shift["val"]:.2f} | '
            f'{shift["test"]:.2f} |',
            flush=True,
        )


if __name__ == '__main__':
    main()
