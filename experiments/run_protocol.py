"""The paper's comparison, scaled to 2 CPU cores: pretrain, fine-tune with few labels.

For each labelled data set:

1. pretrain on the data set's images WITHOUT their labels (as the paper pretrains on
   the Potsdam training images): GLCNet and its ablations (no-style, global-only,
   local-only) with ``glcgeo.pretrain``; TorchGeo's SimCLR (v1) and MoCo (v2) on
   single patches of the same mosaic (TorchGeo's RandomPatchSampler), same backbone,
   patch size, batch size, steps and normalisation;
2. fine-tune TorchGeo's DeepLabV3+ from each start (and from random weights) with
   1%, 5% and 100% of the training tiles labelled, several seeds, with
   ``glcgeo.finetune`` (block-wise spatial split, fixed across runs; model selection
   on validation Kappa; test scores from the global confusion matrix);
3. write a results table (markdown: mean and standard deviation over seeds), a plot,
   one CSV line per run, and the settings and command.

Data sets (``--datasets``):

* ``nc``: the NC Landsat-7 land-cover pair of ``../shared/data`` (6 bands, 28.5 m,
  7 classes; labels in EPSG:3358 warped onto the EPSG:32119 images);
* ``potsdam``: the two ISPRS Potsdam patches of ``../shared/data`` (R, G, B, NIR,
  6 classes). They are NOT georeferenced: the runner writes copies side by side on a
  DUMMY grid (EPSG:32633, arbitrary origin, 5 cm pixels) so the geo pipeline can read
  them; only their relative placement means anything;
* ``torchgeo:<Dataset>=<root>``: a TorchGeo non-geo segmentation data set already on
  disk (e.g. ``torchgeo:Potsdam2D=/data/potsdam``), its samples written likewise on a
  dummy grid (``--torchgeo-samples`` per split).

Data sets whose files are absent are skipped with a note. Every run writes under
``--work`` and is skipped when its results exist, so an interrupted protocol resumes.

    .venv/bin/python experiments/run_protocol.py --datasets nc potsdam --seeds 0 1 2
"""

import argparse
import csv
import hashlib
import importlib
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import kornia.augmentation as K
import matplotlib
import numpy as np
import rasterio
import torch
from lightning.pytorch import Trainer, seed_everything
from rasterio.transform import from_origin
from torchgeo.datamodules import GeoDataModule
from torchgeo.samplers import RandomPatchSampler
from torchgeo.tasks import MoCo, SimCLR

from glcgeo.datasets import GeoTiffMosaic
from glcgeo.export import export_weights
from glcgeo.finetune import finetune
from glcgeo.pretrain import pretrain
from glcgeo.stats import BandStats, compute_band_stats

matplotlib.use('Agg')
import matplotlib.pyplot as plt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, '..', 'shared', 'data', 'labeled')
RESULTS = os.path.join(ROOT, 'experiments', 'results')

#: Start weights compared, in table order: (name, pretraining, transfer).
METHODS = {
    'random': ('none', 'encoder'),
    'simclr': ('simclr', 'encoder'),
    'moco': ('moco', 'encoder'),
    'glcnet': ('full', 'encoder+decoder'),
    'glcnet_encoder': ('full', 'encoder'),
    'no_style': ('no_style', 'encoder+decoder'),
    'global_only': ('global_only', 'encoder+decoder'),
    'local_only': ('local_only', 'encoder+decoder'),
}
LABELS = {
    'random': 'Random init',
    'simclr': 'SimCLR (TorchGeo, v1)',
    'moco': 'MoCo (TorchGeo, v2)',
    'glcnet': 'GLCNet (encoder + decoder)',
    'glcnet_encoder': 'GLCNet (encoder only)',
    'no_style': 'GLCNet no-style',
    'global_only': 'GLCNet global only',
    'local_only': 'GLCNet local only',
}
SCORES = ('test_Kappa', 'test_OA', 'test_mIoU', 'test_mF1')
DUMMY_CRS = 'EPSG:32633'


@dataclass
class LabelledSet:
    """A labelled data set prepared for the protocol.

    Attributes:
        name: short name used in paths and tables.
        images: image GeoTIFFs (also the unlabeled pretraining mosaic).
        masks: mask GeoTIFFs.
        class_values: raw mask value of each class.
        class_names: one name per class.
        patch_size: fine-tuning tile side in pixels.
        block_size: split block side in tiles.
        note: provenance and caveats, printed in the results.
    """

    name: str
    images: list[str]
    masks: list[str]
    class_values: list[int]
    class_names: list[str]
    patch_size: int
    block_size: int
    note: str
    mask_nodata: float | None = None


@dataclass
class Settings:
    """Everything that shapes the results, written next to them."""

    backbone: str = 'resnet18'
    pretrain_patch: int = 64
    pretrain_batch: int = 16
    pretrain_steps: int = 200
    pretrain_lr: float = 1e-3
    finetune_batch: int = 16
    finetune_length: int = 64
    finetune_epochs: int = 15
    finetune_lr: float = 1e-3
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.05, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    threads: int = 2
    accelerator: str = 'cpu'
    keep_models: bool = False


#: Settings that shape pretraining, and those that shape fine-tuning on top.
PRETRAIN_KEYS = (
    'backbone',
    'pretrain_patch',
    'pretrain_batch',
    'pretrain_steps',
    'pretrain_lr',
)
FINETUNE_KEYS = (
    *PRETRAIN_KEYS, 'finetune_batch', 'finetune_length', 'finetune_epochs',
    'finetune_lr',
)  # fmt: skip


def settings_key(settings: Settings, keys: tuple[str, ...]) -> str:
    """A short name for *keys* of *settings*: runs are reused only when it matches."""
    chosen = json.dumps({k: getattr(settings, k) for k in keys}, sort_keys=True)
    return hashlib.sha1(chosen.encode()).hexdigest()[:8]


def write_mosaic(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    folder: str,
    res: float,
    per_row: int = 8,
    gap: int = 64,
) -> tuple[list[str], list[str]]:
    """Write non-georeferenced (image, mask) samples as GeoTIFFs on a dummy grid.

    Sample *i* goes to row ``i // per_row``, column ``i % per_row`` of a grid with
    *gap* empty pixels between samples, in :data:`DUMMY_CRS` from an arbitrary
    origin: positions are made up, only the samples' own pixels are real.

    Returns:
        (image files, mask files).
    """
    os.makedirs(folder, exist_ok=True)
    images, masks = [], []
    for i, (image, mask) in enumerate(pairs):
        count, height, width = image.shape
        x0 = 500000.0 + (i % per_row) * (width + gap) * res
        y0 = 5800000.0 - (i // per_row) * (height + gap) * res
        profile = {
            'driver': 'GTiff',
            'width': width,
            'height': height,
            'crs': DUMMY_CRS,
            'transform': from_origin(x0, y0, res, res),
            'compress': 'deflate',
        }
        image_path = os.path.join(folder, f'image_{i:04d}.tif')
        mask_path = os.path.join(folder, f'mask_{i:04d}.tif')
        with rasterio.open(
            image_path, 'w', count=count, dtype=image.dtype, photometric='minisblack',
            **profile,
        ) as dst:  # fmt: skip
            dst.write(image)
        with rasterio.open(
            mask_path, 'w', count=1, dtype='uint8', nodata=255, **profile
        ) as dst:
            dst.write(mask.astype(np.uint8), 1)
        images.append(image_path)
        masks.append(mask_path)
    return images, masks


def nc_dataset(work: str) -> LabelledSet | str:
    """The NC land-cover pair, or why it is skipped."""
    folder = os.path.join(SHARED, 'nc_landsat7_landcover')
    image = os.path.join(folder, 'lsat7_2000_6band.tif')
    if not os.path.exists(image):
        return f'nc: skipped, {folder} is absent'
    return LabelledSet(
        name='nc',
        images=[image],
        masks=[os.path.join(folder, 'landclass_7class.tif')],
        class_values=[1, 2, 3, 4, 5, 6, 7],
        class_names=[
            'developed',
            'agriculture',
            'herbaceous',
            'shrubland',
            'forest',
            'water',
            'sediment',
        ],
        patch_size=32,
        block_size=2,
        note=(
            'NC Landsat-7 (2000, 6 bands, 28.5 m, 489 x 443 px) with the GRASS '
            'landclass96 map (7 classes); images EPSG:32119, labels EPSG:3358 on the '
            'same grid (warped with nearest neighbour). Pretraining uses the same '
            'image without labels.'
        ),
    )


def potsdam_dataset(work: str) -> LabelledSet | str:
    """The two Potsdam patches on a dummy grid, or why they are skipped."""
    folder = os.path.join(SHARED, 'potsdam_grsim_notgeoref')
    if not os.path.isdir(folder):
        return f'potsdam: skipped, {folder} is absent'
    names = sorted(f for f in os.listdir(folder) if f.endswith('_RGBIR.tif'))
    pairs = []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', rasterio.errors.NotGeoreferencedWarning)
        for name in names:
            with rasterio.open(os.path.join(folder, name)) as src:
                image = src.read()
            label = name.replace('_RGBIR.tif', '_label_index.tif')
            with rasterio.open(os.path.join(folder, label)) as src:
                mask = src.read(1)
            pairs.append((image, mask))
    images, masks = write_mosaic(pairs, os.path.join(work, 'potsdam_dummy_grid'), 0.05)
    return LabelledSet(
        name='potsdam',
        images=images,
        masks=masks,
        class_values=[0, 1, 2, 3, 4, 5],
        # ISPRS legend order of the index values (the authors' class_dict.txt
        # permutes the names; the colours, and these names, follow ISPRS).
        class_names=[
            'impervious',
            'building',
            'low vegetation',
            'tree',
            'car',
            'clutter',
        ],
        patch_size=32,
        block_size=2,
        mask_nodata=255,
        note=(
            'Two ISPRS Potsdam 256 x 256 patches (R, G, B, NIR; 5 cm) as shipped with '
            'the GLCNet code: NOT georeferenced, written side by side on a dummy '
            f'{DUMMY_CRS} grid; 255 (unknown colour) ignored. Pretraining uses the '
            'same patches without labels. Tiny: treat as a smoke test.'
        ),
    )


def torchgeo_dataset(spec: str, work: str, samples: int) -> LabelledSet | str:
    """A TorchGeo non-geo segmentation data set on disk, on a dummy grid."""
    name, _, root = spec.removeprefix('torchgeo:').partition('=')
    if not os.path.isdir(root):
        return f'{spec}: skipped, {root!r} is not a folder'
    cls = getattr(importlib.import_module('torchgeo.datasets'), name, None)
    if cls is None:
        return f'{spec}: skipped, torchgeo.datasets has no {name}'
    pairs = []
    for split in ('train', 'test'):
        try:
            dataset = cls(root=root, split=split)
        except Exception as error:
            return f'{spec}: skipped, {name}(split={split!r}) failed: {error}'
        for i in range(min(samples, len(dataset))):
            sample = dataset[i]
            pairs.append((sample['image'].numpy(), sample['mask'].numpy()))
    classes = list(getattr(cls, 'classes', [])) or [
        str(v) for v in range(int(max(m.max() for _, m in pairs)) + 1)
    ]
    images, masks = write_mosaic(pairs, os.path.join(work, f'{name}_dummy_grid'), 1.0)
    return LabelledSet(
        name=name.lower(),
        images=images,
        masks=masks,
        class_values=list(range(len(classes))),
        class_names=[str(c) for c in classes],
        patch_size=64,
        block_size=2,
        mask_nodata=255,
        note=(
            f'TorchGeo {name} from {root}: the first {samples} samples of its train '
            f'and test splits on a dummy {DUMMY_CRS} grid, re-split block-wise.'
        ),
    )


class PatchDataModule(GeoDataModule):
    """Single random patches of a mosaic, normalised, for TorchGeo's SimCLR/MoCo."""

    def __init__(
        self, paths: list[str], stats: BandStats, size: int, batch: int, length: int
    ) -> None:
        super().__init__(
            GeoTiffMosaic, batch_size=batch, patch_size=size, length=length
        )
        self.paths = paths
        self.stats = stats

    def setup(self, stage: str) -> None:
        self.train_dataset = GeoTiffMosaic(self.paths)
        self.train_sampler = RandomPatchSampler(
            self.train_dataset,
            size=self.patch_size,
            length=self.length,
            generator=0,
        )
        self.aug = K.AugmentationSequential(
            K.Normalize(
                mean=torch.tensor(self.stats.mean), std=torch.tensor(self.stats.std)
            ),
            data_keys=None,
            keepdim=True,
        )


def pretrain_ssl(
    kind: str, data: LabelledSet, stats: BandStats, settings: Settings, out: str
) -> str:
    """Pretrain TorchGeo's SimCLR or MoCo on single patches; return the checkpoint."""
    in_channels = len(stats.mean)
    common = {'model': settings.backbone, 'in_channels': in_channels}
    size = settings.pretrain_patch
    if kind == 'simclr':
        task: Any = SimCLR(
            **common, version=1, layers=2, memory_bank_size=0, size=size,
            lr=0.3 * settings.pretrain_batch / 256 * 4, temperature=0.5,
        )  # fmt: skip
    else:
        task = MoCo(
            **common, version=2, layers=2, hidden_dim=512, output_dim=128,
            memory_bank_size=1024, temperature=0.2, moco_momentum=0.99, size=size,
            lr=0.03 * settings.pretrain_batch / 256 * 4, weight_decay=1e-4,
        )  # fmt: skip
    length = settings.pretrain_batch * settings.pretrain_steps
    datamodule = PatchDataModule(
        data.images, stats, size, settings.pretrain_batch, length
    )
    trainer = Trainer(
        max_epochs=1, limit_train_batches=settings.pretrain_steps,
        limit_val_batches=0, accelerator=settings.accelerator, logger=False,
        enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(task, datamodule=datamodule)
    checkpoint = os.path.join(out, f'{kind}.ckpt')
    trainer.save_checkpoint(checkpoint)
    return checkpoint


def pretrain_folder(data: LabelledSet, settings: Settings, work: str) -> str:
    """Where a data set's pretrained weights for these settings live."""
    key = settings_key(settings, PRETRAIN_KEYS)
    return os.path.join(work, data.name, f'pretrain-{key}')


def pretrained_weights(
    data: LabelledSet, settings: Settings, work: str
) -> dict[str, str | None]:
    """Pretrain each start once per data set (seed 0); return weights per method."""
    folder = pretrain_folder(data, settings, work)
    os.makedirs(folder, exist_ok=True)
    stats_path = os.path.join(folder, 'stats.json')
    if not os.path.exists(stats_path):
        compute_band_stats(GeoTiffMosaic(data.images)).save(stats_path)
    stats = BandStats.load(stats_path)
    weights: dict[str, str | None] = {}
    for method in settings.methods:
        kind, _ = METHODS[method]
        if kind == 'none':
            weights[method] = None
            continue
        target = os.path.join(folder, f'{kind}.ckpt')
        if not os.path.exists(target):
            started = time.perf_counter()
            print(f'[{data.name}] pretraining {kind} ...', flush=True)
            seed_everything(0, workers=True, verbose=False)
            if kind in ('simclr', 'moco'):
                pretrain_ssl(kind, data, stats, settings, folder)
            else:
                region = 48 * settings.pretrain_patch / 224
                last = pretrain(
                    data={
                        'paths': data.images,
                        'patch_size': settings.pretrain_patch,
                        'batch_size': settings.pretrain_batch,
                        'length': settings.pretrain_batch * settings.pretrain_steps,
                        'region_size': region,
                        'stats': stats_path,
                        'num_workers': 0,
                    },
                    model={
                        'backbone': settings.backbone,
                        'ablation': kind,
                        'lr': settings.pretrain_lr,
                        'gather_distributed': False,
                    },
                    trainer={
                        'max_steps': settings.pretrain_steps,
                        'accelerator': settings.accelerator,
                    },
                    out=os.path.join(folder, f'glcnet_{kind}'),
                    quiet=True,
                )
                export_weights(last, target)
            print(
                f'[{data.name}] pretrained {kind} in '
                f'{time.perf_counter() - started:.0f} s',
                flush=True,
            )
        weights[method] = target
    return weights


def run_finetune(
    data: LabelledSet,
    method: str,
    weights: str | None,
    fraction: float,
    seed: int,
    settings: Settings,
    work: str,
) -> dict[str, Any]:
    """Fine-tune one (method, fraction, seed); reuse its results when present."""
    settings_id = settings_key(settings, FINETUNE_KEYS)
    run = os.path.join(method, f'{fraction:g}', f'seed{seed}')
    out = os.path.join(work, data.name, f'finetune-{settings_id}', run)
    metrics_path = os.path.join(out, 'metrics.json')
    if not os.path.exists(metrics_path):
        started = time.perf_counter()
        _, transfer = METHODS[method]
        stats = os.path.join(pretrain_folder(data, settings, work), 'stats.json')
        finetune(
            data={
                'images': data.images,
                'masks': data.masks,
                'class_values': data.class_values,
                'class_names': data.class_names,
                'mask_nodata': data.mask_nodata,
                'patch_size': data.patch_size,
                'block_size': data.block_size,
                'label_fraction': fraction,
                'seed': seed,
                'batch_size': settings.finetune_batch,
                'length': settings.finetune_length,
                # One normalisation for every start, so only the weights differ.
                'stats': stats,
            },
            model={
                'backbone': settings.backbone,
                'weights': weights,
                'transfer': transfer,
                'lr': settings.finetune_lr,
            },
            trainer={
                'max_epochs': settings.finetune_epochs,
                'accelerator': settings.accelerator,
            },
            out=out,
            seed=seed,
            quiet=True,
            overwrite=True,
        )
        if not settings.keep_models:
            # About 200 MB of checkpoints per run; the scores are in metrics.json.
            shutil.rmtree(os.path.join(out, 'checkpoints'))
            os.remove(os.path.join(out, 'model.ckpt'))
        print(
            f'[{data.name}] {method} {fraction:g} seed {seed}: '
            f'{time.perf_counter() - started:.0f} s',
            flush=True,
        )
    with open(metrics_path) as f:
        metrics = json.load(f)
    return {
        'dataset': data.name,
        'method': method,
        'fraction': fraction,
        'seed': seed,
        'label_tiles': metrics['label_tiles'],
        'selected_epoch': metrics['selected_epoch'],
        **{key: metrics['test'].get(key) for key in SCORES},
        'val_Kappa': metrics['val'].get('val_Kappa'),
        **{
            key: value
            for key, value in metrics['test'].items()
            if key.startswith('test_F1_')
        },
    }


def mean_std(values: list[float]) -> str:
    """'mean ± std' of the finite values, in percent."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 'n/a'
    mean = 100 * float(np.mean(finite))
    if len(finite) == 1:
        return f'{mean:.1f} (1 seed)'
    return f'{mean:.1f} ± {100 * float(np.std(finite, ddof=1)):.1f}'


def tables(rows: list[dict[str, Any]], data: LabelledSet, settings: Settings) -> str:
    """Markdown tables of one data set: Kappa, OA, mIoU by method and fraction."""
    fractions = settings.fractions
    lines = [f'### {data.name}', '', data.note, '']
    counts = {
        r['fraction']: r['label_tiles'] for r in rows if r['dataset'] == data.name
    }
    header = ' | '.join(
        f'{f:.0%} ({counts.get(f, "?")} tile{"" if counts.get(f) == 1 else "s"})'
        for f in fractions
    )
    for score in SCORES[:3]:
        lines += [
            f'Test {score.removeprefix("test_")} (%, mean ± std over seeds):',
            '',
            f'| start | {header} |',
            '|---|' + '---|' * len(fractions),
        ]
        for method in settings.methods:
            cells = [
                mean_std(
                    [
                        r[score]
                        for r in rows
                        if r['dataset'] == data.name
                        and r['method'] == method
                        and r['fraction'] == f
                    ]
                )
                for f in fractions
            ]
            lines.append(f'| {LABELS[method]} | ' + ' | '.join(cells) + ' |')
        lines.append('')
    return '\n'.join(lines)


def plot(
    rows: list[dict[str, Any]], sets: list[LabelledSet], settings: Settings, path: str
) -> None:
    """Test Kappa against the label fraction, one panel per data set."""
    figure, axes = plt.subplots(
        1, len(sets), figsize=(6 * len(sets), 4.5), squeeze=False
    )
    for axis, data in zip(axes[0], sets, strict=True):
        for method in settings.methods:
            means, stds = [], []
            for f in settings.fractions:
                values = [
                    r['test_Kappa']
                    for r in rows
                    if r['dataset'] == data.name
                    and r['method'] == method
                    and r['fraction'] == f
                    and r['test_Kappa'] is not None
                ]
                means.append(np.mean(values) if values else np.nan)
                stds.append(np.std(values, ddof=1) if len(values) > 1 else 0.0)
            axis.errorbar(
                settings.fractions, means, yerr=stds, marker='o', capsize=3,
                label=LABELS[method],
                linestyle='--' if method in ('random', 'simclr', 'moco') else '-',
            )  # fmt: skip
        axis.set_xscale('log')
        axis.set_xticks(settings.fractions, [f'{f:.0%}' for f in settings.fractions])
        axis.set_xlabel('labelled share of the training tiles')
        axis.set_ylabel('test Kappa')
        axis.set_title(data.name)
        axis.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc='lower right')
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    defaults = Settings()
    add = parser.add_argument
    add('--datasets', nargs='+', default=['nc', 'potsdam'])
    add('--methods', nargs='+', default=defaults.methods, choices=list(METHODS))
    add('--fractions', type=float, nargs='+', default=defaults.fractions)
    add('--seeds', type=int, nargs='+', default=defaults.seeds)
    add('--backbone', default=defaults.backbone)
    add('--pretrain-steps', type=int, default=defaults.pretrain_steps)
    add('--pretrain-patch', type=int, default=defaults.pretrain_patch)
    add('--pretrain-batch', type=int, default=defaults.pretrain_batch)
    add('--finetune-epochs', type=int, default=defaults.finetune_epochs)
    add('--finetune-length', type=int, default=defaults.finetune_length)
    add('--finetune-batch', type=int, default=defaults.finetune_batch)
    add('--finetune-lr', type=float, default=defaults.finetune_lr)
    add('--torchgeo-samples', type=int, default=64)
    add('--threads', type=int, default=defaults.threads)
    add('--accelerator', default=defaults.accelerator, help='cpu, gpu or auto')
    add('--keep-models', action='store_true', help="keep each run's checkpoints")
    add('--work', default=os.path.join(ROOT, 'runs', 'protocol'))
    add('--results', default=RESULTS)
    args = parser.parse_args()
    settings = Settings(
        backbone=args.backbone,
        pretrain_patch=args.pretrain_patch,
        pretrain_batch=args.pretrain_batch,
        pretrain_steps=args.pretrain_steps,
        finetune_batch=args.finetune_batch,
        finetune_length=args.finetune_length,
        finetune_epochs=args.finetune_epochs,
        finetune_lr=args.finetune_lr,
        fractions=args.fractions,
        seeds=args.seeds,
        methods=args.methods,
        threads=args.threads,
        accelerator=args.accelerator,
        keep_models=args.keep_models,
    )
    torch.set_num_threads(settings.threads)
    warnings.filterwarnings('ignore')
    command = 'python experiments/run_protocol.py ' + shlex.join(sys.argv[1:])
    print(f'$ {command}\nsettings: {json.dumps(asdict(settings))}', flush=True)
    os.makedirs(args.results, exist_ok=True)
    started = time.perf_counter()
    sets: list[LabelledSet] = []
    notes: list[str] = []
    for spec in args.datasets:
        if spec == 'nc':
            prepared = nc_dataset(args.work)
        elif spec == 'potsdam':
            prepared = potsdam_dataset(args.work)
        elif spec.startswith('torchgeo:'):
            prepared = torchgeo_dataset(spec, args.work, args.torchgeo_samples)
        else:
            parser.error(f'unknown data set {spec!r}')
        if isinstance(prepared, str):
            print(prepared, flush=True)
            notes.append(prepared)
        else:
            sets.append(prepared)

    rows: list[dict[str, Any]] = []
    for data in sets:
        weights = pretrained_weights(data, settings, args.work)
        # Seed-major: an interrupted protocol still has whole tables for some seeds.
        for seed in settings.seeds:
            for fraction in settings.fractions:
                for method in settings.methods:
                    rows.append(
                        run_finetune(
                            data, method, weights[method], fraction, seed, settings,
                            args.work,
                        )
                    )  # fmt: skip
    elapsed = time.perf_counter() - started

    with open(os.path.join(args.results, 'protocol_runs.csv'), 'w', newline='') as f:
        columns = sorted({key for row in rows for key in row}, key=str)
        first = ['dataset', 'method', 'fraction', 'seed', 'label_tiles', *SCORES]
        columns = first + [c for c in columns if c not in first]
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    if sets:
        plot(rows, sets, settings, os.path.join(args.results, 'protocol.png'))
    with open(os.path.join(args.results, 'protocol_settings.json'), 'w') as f:
        json.dump(
            {
                'command': command,
                'settings': asdict(settings),
                'datasets': [asdict(s) | {'images': len(s.images)} for s in sets],
                'skipped': notes,
                # Runs found in --work are reused, not timed again.
                'elapsed_s_this_invocation': round(elapsed),
                'machine': f'{platform.machine()}, {os.cpu_count()} CPUs, '
                f'torch {torch.__version__}, {settings.threads} threads',
            },
            f,
            indent=2,
        )
    with open(os.path.join(args.results, 'protocol_tables.md'), 'w') as f:
        f.write(
            '<!-- written by experiments/run_protocol.py; see protocol.md -->\n\n'
            f'Command: `{command}`\n\n'
        )
        for note in notes:
            f.write(f'- {note}\n')
        for data in sets:
            f.write('\n' + tables(rows, data, settings) + '\n')
    print(f'results in {args.results} ({elapsed / 60:.1f} min)')


if __name__ == '__main__':
    main()
