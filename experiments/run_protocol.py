"""Does GLCNet pretraining help few-label segmentation? The paper's protocol, paired.

For each labelled data set (``--datasets``; see ``protocol/datasets.py``):

1. pretrain every start on the data set's images WITHOUT their labels, at each
   pretraining seed: GLCNet (the same run gives ``glcnet``, encoder and decoder
   transferred, and ``glcnet_encoder``), its ablations ``no_style``,
   ``global_only`` and ``local_only``, TorchGeo's SimCLR v1 and MoCo v2 (same
   backbone, views, batch and steps), and the control ``zero_step`` (GLCNet's
   untrained network at that seed); ``random`` is TorchGeo's own
   initialisation. Each run's loss is checked against chance.
2. fine-tune every start on nested label budgets (counts of labelled tiles, or
   percentages of the training area's labelled pixels: ``--budgets 1% 10%``), at
   every fine-tuning seed, in two evaluations: ``probe`` (encoder frozen;
   decoder and head trained) and ``finetune`` (everything trained). Runs are
   selected on validation Kappa and scored once on test.
3. compare each start with ``random`` and ``zero_step`` pair by pair (same
   data set, evaluation, budget and seeds): mean +- standard error, wins out of
   N and a sign-flip permutation test, written to ``--results``.

A data set of many scenes (``sparcs``, or ``NAME='DIR/*_img.tif:DIR/*_lbl.tif'``)
is split by scene: pretraining sees the training scenes' images only, each on
its own pixel grid, and test scenes are never seen before they are scored.

Every run is kept under ``--work`` and reused when its settings match, so an
interrupted protocol resumes. ``--quick`` runs everything at toy length (a check
of the pipeline, not evidence).

    .venv/bin/python experiments/run_protocol.py
    .venv/bin/python experiments/run_protocol.py --quick --results /tmp/r --work /tmp/w
    .venv/bin/python experiments/run_protocol.py --datasets mine=img.tif:labels.tif
    .venv/bin/python experiments/run_protocol.py --datasets sparcs --primary sparcs \
        --budgets 1% 10%
"""

import argparse
import concurrent.futures
import csv
import hashlib
import json
import multiprocessing
import os
import platform
import re
import resource
import shlex
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from protocol.datasets import ROOT, LabelledSet, lay_out_scenes, resolve
from protocol.finetuning import (
    Schedule,
    TiledSet,
    finetune_run,
    read_scenes,
    read_tiles,
)
from protocol.pretraining import (
    GLCNET_ABLATIONS,
    TRAINED_MARGIN,
    PretrainSettings,
    pretrain_start,
    records_to_rows,
)
from protocol.report import PAIR_KEYS, budget_label, compare, plot_differences

from glcgeo.datamodules import SegmentationDataModule
from glcgeo.datasets import GeoTiffMosaic
from glcgeo.stats import BandStats, compute_band_stats

RESULTS = os.path.join(ROOT, 'experiments', 'results')

#: Starts, in table order: (pretraining run, transfer, label).
METHODS = {
    'random': (None, 'encoder', 'Random init'),
    'zero_step': (
        'zero_step',
        'encoder+decoder',
        'Zero-step (untrained GLCNet network)',
    ),
    'simclr': ('simclr', 'encoder', 'SimCLR v1 (TorchGeo)'),
    'moco': ('moco', 'encoder', 'MoCo v2 (TorchGeo)'),
    'glcnet': ('glcnet', 'encoder+decoder', 'GLCNet (encoder + decoder)'),
    'glcnet_encoder': ('glcnet', 'encoder', 'GLCNet (encoder only)'),
    'no_style': ('no_style', 'encoder+decoder', 'GLCNet no-style'),
    'global_only': ('global_only', 'encoder+decoder', 'GLCNet global only'),
    'local_only': ('local_only', 'encoder+decoder', 'GLCNet local only'),
}
EVALUATIONS = ('probe', 'finetune')
#: The paper's comparison: random init, the control, the two baselines, GLCNet.
MAIN_METHODS = ('random', 'zero_step', 'simclr', 'moco', 'glcnet', 'glcnet_encoder')
DEFAULT_DATASETS = ['nc', 'sen1floods11']


def parse_budget(text: str) -> str:
    """A budget as given: a whole number of tiles ('16') or a percentage ('1%')."""
    if not re.fullmatch(r'[1-9]\d*|(\d+(\.\d*)?|\.\d+)%', text) or text in ('0%',):
        raise argparse.ArgumentTypeError(
            f'{text!r} is neither a number of tiles (16) nor a percentage (1%)'
        )
    if text.endswith('%') and not 0 < float(text[:-1]) <= 100:
        raise argparse.ArgumentTypeError(f'{text!r}: a percentage in (0, 100]')
    return text


def budget_order(budget: str) -> tuple[bool, float]:
    """Sort key: tile counts first, then percentages, each ascending (nested)."""
    return (budget.endswith('%'), float(budget.rstrip('%')))


@dataclass
class Settings:
    """Everything that shapes the results, written beside them."""

    backbone: str = 'resnet18'
    tile: int = 64
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    probe: Schedule = field(default_factory=lambda: Schedule(lr=1e-3, max_steps=600))
    finetune: Schedule = field(
        default_factory=lambda: Schedule(lr=1e-4, max_steps=1500)
    )
    budgets: list[str] = field(default_factory=lambda: ['4', '16'])
    finetune_budgets: list[str] | None = None
    #: Tiles drawn from each validation and test scene of a set split by scene
    #: (a fixed seeded sample, the same for every start).
    scored_tiles: dict[str, int] = field(
        default_factory=lambda: {'val': 16, 'test': 64}
    )
    primary: str = 'nc'
    every_cell: bool = False
    pretrain_seeds: list[int] = field(default_factory=lambda: [0, 1])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    evaluations: list[str] = field(default_factory=lambda: list(EVALUATIONS))

    def planned(self, dataset: str, method: str, evaluation: str, budget: str) -> bool:
        """Whether the protocol runs this cell (see ``--every-cell``).

        On 2 cores in 90 minutes the protocol cannot run every start in both
        evaluations at every budget on every data set (about 4 hours), so by
        default: the primary data set gets every start in ``probe`` at every
        budget, and the main starts (:data:`MAIN_METHODS`) in ``finetune`` at
        ``finetune_budgets`` (default: the smallest budget); the other
        data sets get the main starts in ``probe``. Full fine-tuning costs
        about 5 times a probe.
        """
        if self.every_cell:
            return True
        if dataset != self.primary:
            return method in MAIN_METHODS and evaluation == 'probe'
        if evaluation == 'finetune':
            return method in MAIN_METHODS and budget in (
                self.finetune_budgets or self.budgets[:1]
            )
        return True


#: Toy lengths for --quick: every start, evaluation and budget, 2 x 2 seeds, in
#: minutes. A check of the pipeline, not evidence.
QUICK = {
    'pretrain': PretrainSettings(steps=6, batch=8),
    'probe': Schedule(lr=1e-3, max_steps=10, batch_size=4, eval_every=5, patience=1),
    'finetune': Schedule(lr=1e-4, max_steps=10, batch_size=4, eval_every=5, patience=1),
}
#: --quick's seeds, unless given: 2 pretraining x 2 fine-tuning.
QUICK_SEEDS = [0, 1]


def cpu_minutes() -> float:
    """CPU time of this process and its finished workers, in core-minutes."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    return sum(u.ru_utime + u.ru_stime for u in (own, workers)) / 60


def digest(value: Any) -> str:
    """A short name for settings: runs are reused only when it matches."""
    return hashlib.sha1(
        json.dumps(value, sort_keys=True, default=str).encode()
    ).hexdigest()[:8]


def _worker_init(threads: int) -> None:
    """One process per core, each on its own threads (faster than 2 threads in one)."""
    torch.set_num_threads(threads)
    warnings.filterwarnings('ignore')
    import logging

    logging.getLogger('lightning').setLevel(logging.ERROR)
    logging.getLogger('lightning.pytorch').setLevel(logging.ERROR)


@dataclass(frozen=True)
class PretrainJob:
    """One pretraining run; its result is a JSON file beside its weights."""

    dataset: str
    images: tuple[str, ...]
    stats: str
    method: str
    seed: int
    settings: PretrainSettings
    folder: str

    @property
    def result(self) -> str:
        return os.path.join(self.folder, f'{self.method}_seed{self.seed}.json')

    def run(self) -> dict[str, Any]:
        if not os.path.exists(self.result):
            weights, records, seconds = pretrain_start(
                self.method,
                list(self.images),
                self.stats,
                self.settings,
                self.seed,
                self.folder,
            )
            rows = records_to_rows(
                self.dataset, self.method, self.seed, records, seconds
            )
            with open(self.result, 'w') as f:
                json.dump({'weights': weights, 'rows': rows, 'seconds': seconds}, f)
        with open(self.result) as f:
            return json.load(f)


_TILES: dict[str, TiledSet] = {}


@dataclass(frozen=True)
class FinetuneJob:
    """One fine-tuning run; its scores are a JSON file."""

    keys: tuple[tuple[str, Any], ...]
    tiles: str
    weights: str | None
    transfer: str
    schedule: Schedule
    backbone: str
    result: str

    def run(self) -> dict[str, Any]:
        if not os.path.exists(self.result):
            if self.tiles not in _TILES:
                _TILES[self.tiles] = TiledSet.load(self.tiles)
            keys = dict(self.keys)
            scores = finetune_run(
                _TILES[self.tiles],
                self.weights,
                self.transfer,
                keys['evaluation'],
                self.schedule,
                keys['budget'],
                seed=keys['seed'],
                init_seed=1000 * (keys['pretrain_seed'] + 1) + keys['seed'],
                backbone=self.backbone,
            )
            os.makedirs(os.path.dirname(self.result), exist_ok=True)
            with open(self.result + '.part', 'w') as f:
                json.dump({**keys, **scores}, f)
            os.replace(self.result + '.part', self.result)
        with open(self.result) as f:
            return json.load(f)


def _run(job: PretrainJob | FinetuneJob) -> dict[str, Any]:
    return job.run()


def run_all(jobs: list[Any], pool: concurrent.futures.Executor, what: str) -> list[Any]:
    """Run jobs on the pool, printing progress; results in job order."""
    started = time.perf_counter()
    futures = [pool.submit(_run, job) for job in jobs]
    for done, _ in enumerate(concurrent.futures.as_completed(futures), 1):
        if done % max(1, len(jobs) // 20) == 0 or done == len(jobs):
            print(
                f'  {what}: {done}/{len(jobs)} ({time.perf_counter() - started:.0f} s)',
                flush=True,
            )
    return [f.result() for f in futures]


@dataclass(frozen=True)
class Prepared:
    """What every run of a data set shares, computed once.

    Attributes:
        stats: band statistics JSON (of the pretraining images).
        tiles: the fine-tuning tiles (:class:`TiledSet` file).
        pretrain_images: the unlabelled images pretraining sees.
    """

    stats: str
    tiles: str
    pretrain_images: tuple[str, ...]


def prepare(data: LabelledSet, settings: Settings, work: str) -> Prepared:
    """Band statistics, pretraining images and tiles of a data set, made once.

    A set split by scene pretrains on its training scenes only. They are laid
    side by side on one dummy grid without resampling (:func:`lay_out_scenes`),
    so that scenes in different UTM zones form one mosaic while every view is
    cut from one scene's own 30 m pixels.
    """
    folder = os.path.join(work, data.name)
    os.makedirs(folder, exist_ok=True)
    stats = os.path.join(folder, 'stats.json')
    if data.by_scene:
        train = data.scene_files('train')
        images = lay_out_scenes(
            [image for image, _ in train], os.path.join(folder, 'pretrain_scenes')
        )
        if not os.path.exists(stats):
            compute_band_stats(GeoTiffMosaic(images)).save(stats)
        scored = '-'.join(f'{settings.scored_tiles[p]}' for p in ('val', 'test'))
        tiles = os.path.join(folder, f'tiles-{settings.tile}-scenes-{scored}.pt')
        if not os.path.exists(tiles):
            class_values, class_names = data.classes()
            read_scenes(
                data.name,
                {part: data.scene_files(part) for part in ('train', 'val', 'test')},
                class_values,
                class_names,
                BandStats.load(stats),
                settings.tile,
                settings.scored_tiles,
            ).save(tiles)
        return Prepared(stats, tiles, tuple(images))
    if not os.path.exists(stats):
        compute_band_stats(GeoTiffMosaic(data.images)).save(stats)
    tiles = os.path.join(folder, f'tiles-{settings.tile}-{data.block_size}.pt')
    if not os.path.exists(tiles):
        datamodule = SegmentationDataModule(
            images=data.images,
            masks=data.masks,
            class_values=data.class_values,
            class_names=data.class_names,
            mask_nodata=data.mask_nodata,
            patch_size=settings.tile,
            block_size=data.block_size,
            stats=stats,
        )
        datamodule.setup('fit')
        read_tiles(data.name, datamodule).save(tiles)
    return Prepared(stats, tiles, tuple(data.images))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n')[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults = Settings()
    add = parser.add_argument
    add(
        '--datasets',
        nargs='+',
        default=DEFAULT_DATASETS,
        help='nc, sen1floods11, sparcs, zion, potsdam, NAME=IMAGES:MASKS (two '
        "files, two folders, or two quoted globs: 'DIR/*_img.tif:DIR/*_lbl.tif'; "
        'several scenes are split by scene), torchgeo:<Dataset>=<root>',
    )
    add('--methods', nargs='+', default=defaults.methods, choices=list(METHODS))
    add('--evaluations', nargs='+', default=defaults.evaluations, choices=EVALUATIONS)
    add(
        '--budgets',
        type=parse_budget,
        nargs='+',
        default=defaults.budgets,
        help='labelled training tiles (16) or percentages of the training '
        "area's labelled pixels (1%%), nested",
    )
    add(
        '--finetune-budgets',
        type=parse_budget,
        nargs='+',
        default=defaults.finetune_budgets,
        help='budgets of the finetune evaluation (None: the smallest budget)',
    )
    add(
        '--primary',
        default=defaults.primary,
        help='data set that gets every start (the others: the main starts, probe)',
    )
    add(
        '--every-cell',
        action='store_true',
        help='every start, evaluation and budget on every data set (hours)',
    )
    add(
        '--pretrain-seeds',
        type=int,
        nargs='+',
        help=f'pretraining seeds (None: {defaults.pretrain_seeds}; --quick: [0, 1])',
    )
    add(
        '--seeds',
        type=int,
        nargs='+',
        help=f'fine-tuning seeds (None: {defaults.seeds}; --quick: [0, 1])',
    )
    add('--pretrain-steps', type=int, default=defaults.pretrain.steps)
    add('--quick', action='store_true', help='toy lengths: checks the pipeline only')
    add(
        '--report-only',
        action='store_true',
        help='write the results of the runs already in --work, run nothing '
        '(the planned runs not yet made are counted in protocol.md)',
    )
    add('--jobs', type=int, default=2, help='worker processes (one thread each)')
    add('--torchgeo-samples', type=int, default=64)
    add('--work', default=os.path.join(ROOT, 'runs', 'protocol'))
    add('--results', default=RESULTS)
    args = parser.parse_args()
    settings = Settings(
        methods=args.methods,
        evaluations=args.evaluations,
        budgets=sorted(args.budgets, key=budget_order),
        finetune_budgets=args.finetune_budgets,
        primary=args.primary,
        every_cell=args.every_cell,
        pretrain_seeds=args.pretrain_seeds
        or (QUICK_SEEDS if args.quick else defaults.pretrain_seeds),
        seeds=args.seeds or (QUICK_SEEDS if args.quick else defaults.seeds),
        pretrain=replace(defaults.pretrain, steps=args.pretrain_steps),
    )
    if args.quick:
        settings = replace(settings, **QUICK)
    command = 'python experiments/run_protocol.py ' + shlex.join(sys.argv[1:])
    print(f'$ {command}', flush=True)
    started = time.perf_counter()
    os.makedirs(args.results, exist_ok=True)
    sets, notes = [], []
    for spec in args.datasets:
        prepared = resolve(spec, args.work, args.torchgeo_samples)
        if isinstance(prepared, str):
            print(prepared, flush=True)
            notes.append(prepared)
        else:
            sets.append(prepared)

    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(
        args.jobs, mp_context=context, initializer=_worker_init, initargs=(1,)
    ) as pool:
        prepared = {data.name: prepare(data, settings, args.work) for data in sets}
        pretrain_key = digest(
            asdict(settings.pretrain) | {'backbone': settings.backbone}
        )
        cells = [
            (data, evaluation, p, seed, budget, method)
            for data in sets
            # Full fine-tuning first: the longest runs, so the pool ends together.
            for evaluation in sorted(settings.evaluations, key='finetune'.__ne__)
            for p in settings.pretrain_seeds
            for seed in settings.seeds
            for budget in settings.budgets
            for method in settings.methods
            if settings.planned(data.name, method, evaluation, budget)
        ]
        needed = {(c[0].name, METHODS[c[5]][0]) for c in cells}
        pretrain_jobs = [
            PretrainJob(
                name,
                prepared[name].pretrain_images,
                prepared[name].stats,
                kind,
                seed,
                settings.pretrain,
                os.path.join(args.work, name, f'pretrain-{pretrain_key}'),
            )
            # GLCNet's runs first: the longest, so the pool ends together.
            for name, kind in sorted(
                (n for n in needed if n[1] is not None),
                key=lambda n: (n[1] not in GLCNET_ABLATIONS, n[1], n[0]),
            )
            for seed in settings.pretrain_seeds
        ]
        if args.report_only:
            missing = [j.result for j in pretrain_jobs if not os.path.exists(j.result)]
            if missing:
                parser.error(f'--report-only: {missing[0]} is not made yet')
        print(f'pretraining: {len(pretrain_jobs)} runs', flush=True)
        pretrained = dict(
            zip(
                [(j.dataset, j.method, j.seed) for j in pretrain_jobs],
                run_all(pretrain_jobs, pool, 'pretraining'),
                strict=True,
            )
        )
        finetune_jobs = []
        for data, evaluation, p, seed, budget, method in cells:
            schedule = getattr(settings, evaluation)
            key = digest(
                [
                    pretrain_key,
                    asdict(schedule),
                    os.path.basename(prepared[data.name].tiles),
                ]
            )
            kind, transfer, _ = METHODS[method]
            weights = (
                None if kind is None else pretrained[(data.name, kind, p)]['weights']
            )
            keys = {
                'dataset': data.name,
                'method': method,
                'evaluation': evaluation,
                'budget': budget,
                'pretrain_seed': p,
                'seed': seed,
            }
            result = os.path.join(
                args.work,
                data.name,
                f'finetune-{key}',
                evaluation,
                method,
                f'{budget.replace("%", "pct")}-p{p}-s{seed}.json',
            )
            finetune_jobs.append(
                FinetuneJob(
                    tuple(keys.items()),
                    prepared[data.name].tiles,
                    weights,
                    transfer,
                    schedule,
                    settings.backbone,
                    result,
                )
            )
        if args.report_only:
            made = [j for j in finetune_jobs if os.path.exists(j.result)]
            notes.append(
                f'--report-only: {len(made)} of the {len(finetune_jobs)} planned '
                'fine-tuning runs had been made; the others are missing from the '
                'tables.'
            )
            finetune_jobs = made
        print(f'fine-tuning: {len(finetune_jobs)} runs', flush=True)
        rows = run_all(finetune_jobs, pool, 'fine-tuning')
    elapsed = time.perf_counter() - started
    cpu = cpu_minutes()
    print(f'CPU time: {cpu:.0f} core-min', flush=True)
    loss_rows = [row for result in pretrained.values() for row in result['rows']]
    write_results(
        args.results, command, settings, sets, notes, rows, loss_rows, elapsed, cpu
    )
    print(f'results in {args.results} ({elapsed / 60:.1f} min)')


def write_csv(path: str, rows: list[dict[str, Any]], first: list[str]) -> None:
    """Rows as CSV, the given columns first."""
    columns = first + sorted({k for r in rows for k in r} - set(first))
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_results(
    folder: str,
    command: str,
    settings: Settings,
    sets: list[LabelledSet],
    notes: list[str],
    rows: list[dict[str, Any]],
    loss_rows: list[dict[str, Any]],
    elapsed: float,
    cpu: float,
) -> None:
    """protocol_runs.csv, pretrain_losses.csv, protocol.md, protocol.png, settings."""
    write_csv(
        os.path.join(folder, 'protocol_runs.csv'),
        rows,
        [
            *PAIR_KEYS[:1],
            'method',
            *PAIR_KEYS[1:],
            'label_tiles',
            'test_Kappa',
            'test_OA',
            'test_mIoU',
            'test_mF1',
            'val_Kappa',
        ],
    )
    write_csv(
        os.path.join(folder, 'pretrain_losses.csv'),
        loss_rows,
        [
            'dataset',
            'method',
            'pretrain_seed',
            'part',
            'chance',
            'first',
            'last',
            'trained',
        ],
    )
    with open(os.path.join(folder, 'protocol_settings.json'), 'w') as f:
        json.dump(
            {
                'command': command,
                'settings': asdict(settings),
                'datasets': [asdict(s) for s in sets],
                'skipped': notes,
                'elapsed_s': round(elapsed),
                'cpu_core_minutes': round(cpu, 1),
                'machine': f'{platform.machine()}, {os.cpu_count()} CPUs, '
                f'torch {torch.__version__}',
            },
            f,
            indent=2,
        )
    names = [s.name for s in sets]
    labels = {m: label for m, (_, _, label) in METHODS.items()}
    plot_differences(
        rows,
        settings.methods,
        labels,
        names,
        settings.evaluations,
        settings.budgets,
        os.path.join(folder, 'protocol.png'),
    )
    with open(os.path.join(folder, 'protocol.md'), 'w') as f:
        f.write(markdown(command, settings, sets, notes, rows, loss_rows, elapsed, cpu))


def not_trained(
    loss_rows: list[dict[str, Any]], dataset: str, kind: str | None
) -> list[str]:
    """The losses of a start's pretraining runs that did not fall below chance."""
    return [
        f'seed {r["pretrain_seed"]} {r["part"]} {r["last"]:.2f} '
        f'vs chance {r["chance"]:.2f}'
        for r in loss_rows
        if r['dataset'] == dataset and r['method'] == kind and not r['trained']
    ]


def per_class_table(
    runs: list[dict[str, Any]],
    methods: list[str],
    budgets: list[str],
    class_names: list[str] | None,
) -> list[str]:
    """Mean test F1 of each class (points), per start and budget, as markdown."""
    if not runs:
        return []
    names = class_names or sorted(
        k.removeprefix('test_F1_') for k in runs[0] if k.startswith('test_F1_')
    )
    lines = [
        'Per-class test F1 (points; mean over runs; NaN where a class is absent '
        'from the test tiles):',
        '',
        '| start | budget | ' + ' | '.join(names) + ' | mIoU |',
        '|---|---|' + '---|' * (len(names) + 1),
    ]
    for method in methods:
        for budget in budgets:
            own = [r for r in runs if r['method'] == method and r['budget'] == budget]
            if not own:
                continue
            cells = [
                f'{100 * np.nanmean([r.get(f"test_F1_{n}", np.nan) for r in own]):.1f}'
                for n in names
            ]
            miou = 100 * np.mean([r['test_mIoU'] for r in own])
            lines.append(
                f'| {METHODS[method][2]} | {budget_label(budget)} | '
                + ' | '.join(cells)
                + f' | {miou:.1f} |'
            )
    return [*lines, '']


def markdown(
    command: str,
    settings: Settings,
    sets: list[LabelledSet],
    notes: list[str],
    rows: list[dict[str, Any]],
    loss_rows: list[dict[str, Any]],
    elapsed: float,
    cpu: float,
) -> str:
    """The results page: settings, pretraining losses, paired comparisons."""
    lines = [
        '# Protocol results (written by experiments/run_protocol.py)',
        '',
        f'Command: `{command}`; {elapsed / 60:.0f} min on {os.cpu_count()} CPU cores '
        f'({cpu:.0f} core-minutes of CPU time).',
        '',
        'Test Kappa differences in points, paired seed by seed (same data set, '
        'evaluation, budget, pretraining seed and fine-tuning seed): '
        'mean ± standard error (wins/N, two-sided sign-flip permutation p). '
        'Runs are selected on validation Kappa; test is scored once per run.',
        '',
        *[f'- {note}' for note in notes],
        '',
        '## Pretraining losses against chance',
        '',
        'Mean loss over the first and last tenth of the steps; chance is log(2N - 1) '
        "for N embeddings (log(K + 1) for MoCo's queue of K). A start counts as "
        f'trained when its loss ends at least {TRAINED_MARGIN} nats below chance.',
        '',
        '| data set | start | seed | loss | chance | first | last | trained |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for r in loss_rows:
        lines.append(
            f'| {r["dataset"]} | {r["method"]} | {r["pretrain_seed"]} | {r["part"]} | '
            f'{r["chance"]:.2f} | {r["first"]:.2f} | {r["last"]:.2f} | '
            f'{"yes" if r["trained"] else "**no**"} |'
        )
    for data in sets:
        lines += ['', f'## {data.name}', '', data.note, '']
        if data.by_scene:
            lines += [
                f'Split by scene (seeded): {len(data.scenes["train"])} training, '
                f'{len(data.scenes["val"])} validation and {len(data.scenes["test"])} '
                "test scenes. Pretraining saw the training scenes' images only; "
                f'scored: {settings.scored_tiles["val"]} tiles of {settings.tile} px '
                f'per validation scene, {settings.scored_tiles["test"]} per test scene '
                '(a fixed seeded sample, the same for every start).',
                '',
                *[
                    f'- {part} scenes: {", ".join(data.scenes[part])}'
                    for part in ('val', 'test')
                ],
                '- training scenes: listed in protocol_settings.json',
                '',
            ]
        for evaluation in settings.evaluations:
            runs = [
                r
                for r in rows
                if r['dataset'] == data.name and r['evaluation'] == evaluation
            ]
            if not runs:
                continue
            budgets = sorted({r['budget'] for r in runs}, key=budget_order)
            methods = [
                m for m in settings.methods if any(r['method'] == m for r in runs)
            ]
            at_cap = sum(
                not r['stopped_early'] and r['selected_step'] == r['last_step']
                for r in runs
            )
            lines += [
                f'### {evaluation}',
                '',
                f'{len(runs)} runs; {at_cap} ({at_cap / len(runs):.0%}) selected '
                'their last scoring at the step cap (still improving).',
                '',
                '| start | '
                + ' | '.join(
                    f'{budget_label(b)}: vs random | {budget_label(b)}: vs zero_step | '
                    f'{budget_label(b)}: Kappa'
                    for b in budgets
                )
                + ' |',
                '|---|' + '---|---|---|' * len(budgets),
            ]
            versus = {
                ref: {m: compare(rows, m, ref) for m in settings.methods}
                for ref in ('random', 'zero_step')
            }
            for method in methods:
                kind = METHODS[method][0]
                failed = not_trained(loss_rows, data.name, kind)
                cells = []
                for budget in budgets:
                    own = [
                        r['test_Kappa']
                        for r in runs
                        if r['method'] == method and r['budget'] == budget
                    ]
                    mean = 100 * sum(own) / len(own) if own else float('nan')
                    for ref in ('random', 'zero_step'):
                        found = versus[ref][method].get((data.name, evaluation, budget))
                        if method == ref:
                            cells.append('-')
                        elif failed:
                            cells.append('not trained')
                        else:
                            cells.append(found.cell() if found else 'n/a')
                    cells.append(f'{mean:.1f} (n={len(own)})')
                lines.append(f'| {METHODS[method][2]} | ' + ' | '.join(cells) + ' |')
                if failed:
                    lines.append(
                        f'| | not trained: {"; ".join(failed)} |'
                        + ' |' * (3 * len(budgets) - 1)
                    )
            lines.append('')
            lines += per_class_table(runs, methods, budgets, data.class_names)
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    main()
