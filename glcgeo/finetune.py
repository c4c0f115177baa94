"""Fine-tune a segmentation model with few labels: the API behind ``glcgeo finetune``.

:func:`finetune` wires :class:`~glcgeo.datamodules.SegmentationDataModule`,
:class:`~glcgeo.tasks.FinetuneTask` and a Lightning ``Trainer``:
it trains on the label budget, keeps the checkpoint with the best validation
Kappa, scores it once on the test area, and writes under ``out``:

* ``model.ckpt``: the selected model with the metadata ``glcgeo predict`` reads;
* ``metrics.json``: validation and test scores, split and budget sizes;
* ``split.geojson``: every tile with its split and whether it was labelled;
* ``config.yaml``: the settings, as a LightningCLI config;
* ``checkpoints/`` (Lightning's ``best.ckpt`` and ``last.ckpt``) and ``logs/``.

Its three dictionaries are the ``data``, ``model`` and ``trainer`` sections of a
LightningCLI config, so ``glcgeo finetune --config`` and ``torchgeo fit --config``
read the same YAML (:mod:`glcgeo.runs`).
"""

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import rasterio
import shapely
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torchgeo.datasets import IntersectionDataset

from .arguments import check_arguments
from .checkpoints import read_band_metadata, write_model_checkpoint
from .datamodules import SegmentationDataModule
from .errors import GlcgeoError, check_band_count
from .outputs import atomic_write, joins_a_run
from .runs import RunFolder, check_patch_size
from .sources import expand as expand_paths
from .splits import SPLITS
from .stats import BandStats
from .tasks import FinetuneTask

__all__ = ['FinetuneResult', 'finetune', 'pretrained_band_stats']

#: Files and folders :func:`finetune` writes under its output folder.
OUTPUTS = (
    'model.ckpt',
    'metrics.json',
    'split.geojson',
    'config.yaml',
    'checkpoints',
    'logs',
)

#: Settings that are paths (relative to the folder of the config holding them).
PATHS = ('data.images', 'data.masks', 'data.stats', 'model.weights')


@dataclass(frozen=True)
class FinetuneResult:
    """What a fine-tuning run produced.

    Attributes:
        checkpoint: the selected model (``out/model.ckpt``), for ``glcgeo predict``.
        val: validation scores of the selected model (``val_Kappa`` ...).
        test: test scores of the selected model (``test_Kappa`` ...).
        label_tiles: number of labelled training tiles used.
        tiles: number of tiles in each split.

    """

    checkpoint: str
    val: dict[str, float]
    test: dict[str, float]
    label_tiles: int
    tiles: dict[str, int]


def pretrained_band_stats(path: str) -> BandStats | None:
    """The normalisation a pretrained checkpoint was trained with, if it says.

    Fine-tuning must feed the pretrained layers the inputs they learnt from, so
    glcgeo exports, GLCNet and segmentation checkpoints carry their statistics
    (:class:`~glcgeo.checkpoints.BandMetadata`).

    Args:
        path: a start checkpoint.

    Returns:
        its statistics, or None when it holds none.

    """
    metadata = read_band_metadata(path)
    if metadata.band_mean is None or metadata.band_std is None:
        return None
    bands = metadata.bands or range(1, len(metadata.band_mean) + 1)
    return BandStats(
        mean=list(metadata.band_mean), std=list(metadata.band_std), bands=list(bands)
    )


def _start_normalisation(weights: str, data: dict[str, Any]) -> None:
    """Normalise as the start weights were trained, on the data they were trained on.

    Without ``bands``, the images must have the band count (and dtype, where the
    weights record it) of those the weights were trained on: their bands and
    statistics are then used. ``bands`` other than the weights' (or of another
    dtype) are the user's choice of bands to feed the weights: they are
    normalised with the images' own statistics, computed by the data module.

    Args:
        weights: the start checkpoint.
        data: the data module's arguments, without ``stats``; ``stats`` and
            ``bands`` are set here.

    Raises:
        GlcgeoError: naming the weights, if the images differ from the data the
            weights were trained on and no ``bands`` are given.
    """
    stats = pretrained_band_stats(weights)
    if stats is None:
        return
    trained = read_band_metadata(weights)
    trained_dtype = trained.band_dtype
    try:
        with rasterio.open(expand_paths(data['images'], data.get('bands'))[0]) as src:
            count, dtype = src.count, src.dtypes[0]
    except rasterio.errors.RasterioIOError:
        return  # the data module names the unreadable file
    other_dtype = trained_dtype is not None and trained_dtype != dtype
    bands = data.get('bands')
    if bands is None:
        if count != len(stats.bands) or other_dtype:
            trained_on = f'{trained_dtype} images' if trained_dtype else 'images'
            these = f' ({dtype})' if trained_dtype else ''
            raise GlcgeoError(
                f'the weights take {len(stats.bands)} bands (bands {stats.bands} of '
                f'the {trained_on} they were trained on), but the images have '
                f'{count}{these}: give --bands with {len(stats.bands)} of their '
                "bands (normalised with the images' own statistics), or --stats",
                weights,
            )
        # The bands the weights read: all (None), or those of the same files.
        data['bands'] = None if trained.bands is None else stats.bands
        data['stats'] = stats
    elif len(bands) != len(stats.bands):
        check_band_count(
            '--bands gives', len(bands), 'the weights take', len(stats.bands), weights
        )
    elif [str(b) for b in bands] == [str(b) for b in stats.bands] and not other_dtype:
        data['stats'] = stats
    else:
        warnings.warn(
            f'{weights}: the weights were trained on bands {stats.bands} of other '
            f'images; bands {list(bands)} of these are normalised with their own '
            'statistics',
            UserWarning,
            stacklevel=3,
        )


def _scores(metrics: Mapping[str, float], prefix: str) -> dict[str, float]:
    """Scalar scores of one split, as plain floats (NaN for undefined classes)."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if key.startswith(prefix) and not key.endswith('loss')
    }


def _json_scores(scores: dict[str, float]) -> dict[str, float | None]:
    """Scores for JSON, which has no NaN: undefined scores become null."""
    return {k: None if math.isnan(v) else v for k, v in scores.items()}


def _write_split(datamodule: SegmentationDataModule, path: str) -> None:
    """Write every tile's extent, split and label status as GeoJSON."""
    split = datamodule.tile_split
    assert split is not None and datamodule.dataset is not None
    labelled = set(datamodule.label_tiles)
    rows = []
    for name in SPLITS:
        for tile in split.tiles[name]:
            rows.append(
                {
                    'split': name,
                    'row': tile[0],
                    'col': tile[1],
                    'block_row': split.block_of(tile)[0],
                    'block_col': split.block_of(tile)[1],
                    'labelled_pixels': round(split.labelled[tile], 4),
                    'in_label_budget': tile in labelled,
                    'geometry': shapely.box(*split.bounds(tile)),
                }
            )
    assert isinstance(datamodule.dataset, IntersectionDataset)
    crs = datamodule.dataset.crs
    frame = gpd.GeoDataFrame(rows, geometry='geometry', crs=crs)
    with atomic_write(path) as temporary:
        frame.to_file(temporary, driver='GeoJSON')


def finetune(
    data: dict[str, Any],
    model: dict[str, Any],
    trainer: dict[str, Any],
    out: str,
    seed: int = 0,
    quiet: bool = False,
    overwrite: bool = False,
) -> FinetuneResult:
    """Fine-tune on a label budget, select on validation, score on test.

    Args:
        data: keyword arguments of :class:`~glcgeo.datamodules.SegmentationDataModule`
            (``images``, ``masks``, ``label_fraction`` ...). Without ``stats``, a
            start checkpoint's own bands and statistics are used where the
            images are of the data it was trained on, else the images' own
            statistics (:func:`_start_normalisation`).
        model: keyword arguments of :class:`~glcgeo.tasks.FinetuneTask`
            (``weights``, ``transfer``, ``backbone`` ...); ``in_channels``,
            ``num_classes``, ``class_names`` and ``ignore_index`` default to the
            data's.
        trainer: keyword arguments of Lightning's ``Trainer`` (``max_epochs``,
            ``max_steps``, ``accelerator``, ``devices`` ...).
        out: output folder (see the module doc).
        seed: global seed (model head initialisation, augmentation, dropout).
        quiet: no progress bar, model summary nor TensorBoard log.
        overwrite: replace the outputs of an earlier run in *out*, once this
            run is complete: until then, and if it fails or is interrupted,
            they stay as they were (:meth:`~glcgeo.runs.RunFolder.replacing`).

    Returns:
        the selected checkpoint and its scores.

    Raises:
        GlcgeoError: for bad data, weights or settings, before anything is written;
            if another live run holds *out* (:class:`~glcgeo.outputs.OutputLock`),
            or for start weights trained on other data than the images, unless
            ``bands`` are given.
        NoRoomError: if a file of the run finds no room.

    """
    # Settings out of range are named before any input is read.
    check_arguments(SegmentationDataModule.__init__, data, 'data')
    check_arguments(FinetuneTask.__init__, model, 'model')
    run = RunFolder(out, OUTPUTS)
    run.check()
    with run.claimed():
        return _finetune(run, data, model, trainer, seed, quiet, overwrite)


def _finetune(
    run: RunFolder,
    data: dict[str, Any],
    model: dict[str, Any],
    trainer: dict[str, Any],
    seed: int,
    quiet: bool,
    overwrite: bool,
) -> FinetuneResult:
    """:func:`finetune` in its claimed output folder."""
    out = run.path
    existing = run.existing()
    if existing and not overwrite:
        raise GlcgeoError(
            f'already holds a fine-tuning run ({", ".join(existing)}); pass '
            '--overwrite to replace it, or choose another --out',
            out,
        )
    seed_everything(seed, workers=True, verbose=False)
    data = dict(data)
    weights = model.get('weights')
    if weights is not None and data.get('stats') is None:
        _start_normalisation(weights, data)
    # Build the data, the model and the trainer first: bad inputs or settings
    # fail before any file is written.
    datamodule = SegmentationDataModule(**data)
    datamodule.setup('fit')
    assert datamodule.encoder is not None
    model = {
        'in_channels': datamodule.num_bands,
        'num_classes': len(datamodule.encoder.class_values),
        'class_names': datamodule.class_names,
        'ignore_index': datamodule.hparams['ignore_index'],
        **datamodule.band_metadata.to_hyperparameters(),
        **model,
    }
    task = FinetuneTask(**model)
    check_patch_size(task, datamodule.hparams['patch_size'])
    # The new run is written in a staging folder: the earlier run's outputs
    # stay as they were until it is complete (RunFolder.replacing).
    stage = run.staging()
    selection = ModelCheckpoint(
        dirpath=stage.join('checkpoints'),
        filename='best',
        monitor=FinetuneTask.monitor,
        mode=FinetuneTask.mode,
        save_last=True,
        enable_version_counter=False,
    )
    fit = stage.trainer(
        {'max_epochs': 150, 'num_sanity_val_steps': 0, **trainer},
        [selection],
        quiet,
        tensorboard=not quiet,
    )
    # The other processes of a multi-process run train and score with the
    # first; the first alone writes the run's files.
    first = not joins_a_run()
    inputs = [path for path in (weights, data.get('stats')) if isinstance(path, str)]
    with run.replacing(inputs):
        if first:
            _write_split(datamodule, stage.join('split.geojson'))
            data_config = {k: v for k, v in data.items() if k != 'stats'}
            if isinstance(data.get('stats'), str):
                data_config['stats'] = data['stats']
            stage.write_config(
                seed,
                trainer,
                'glcgeo.tasks.FinetuneTask',
                model,
                'glcgeo.datamodules.SegmentationDataModule',
                data_config,
                PATHS,
            )
        with warnings.catch_warnings():
            # The scores are synced already: each is computed from the confusion
            # matrix summed across processes (torchmetrics), not logged per step.
            warnings.filterwarnings(
                'ignore', message=r".*self\.log\('(train|val|test)_(?!loss)"
            )
            fit.fit(task, datamodule=datamodule)
            best = selection.best_model_path
            if not best:
                # Training stopped (--max-steps) before the first validation, at the
                # end of an epoch: the final model is the one candidate.
                best = stage.join('checkpoints', 'best.ckpt')
                fit.save_checkpoint(best)
            # Score the selected model once on each evaluation area. Under DDP
            # the processes share the area (Lightning's DistributedSampler evens
            # their shares, repeating up to one tile per extra process) and the
            # scores are of all their tiles.
            validated = fit.validate(
                task, datamodule=datamodule, ckpt_path=best, verbose=False
            )
            tested = fit.test(
                task, datamodule=datamodule, ckpt_path=best, verbose=not quiet
            )
        split = datamodule.tile_split
        assert split is not None
        result = FinetuneResult(
            checkpoint=run.join('model.ckpt'),
            val=_scores(validated[0], 'val_'),
            test=_scores(tested[0], 'test_'),
            label_tiles=len(datamodule.label_tiles),
            tiles={name: len(split.tiles[name]) for name in SPLITS},
        )
        if first:
            checkpoint = write_model_checkpoint(best, stage.join('model.ckpt'))
            with (
                atomic_write(stage.join('metrics.json')) as temporary,
                open(temporary, 'w') as f,
            ):
                json.dump(
                    {
                        'selected_epoch': checkpoint['epoch'],
                        'val': _json_scores(result.val),
                        'test': _json_scores(result.test),
                        'label_tiles': result.label_tiles,
                        'tiles': result.tiles,
                        'class_names': datamodule.class_names,
                    },
                    f,
                    indent=2,
                )
    return result
