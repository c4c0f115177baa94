"""Streaming tiled inference of a segmentation model over a georeferenced raster.

:func:`predict_raster` reads a scene tile by tile (rasterio windows), predicts
batches of tiles, blends overlapping tiles with Hann weights and writes each band of
finished rows as soon as no later tile touches it, so memory is bounded by the tile
size, batch size and scene width, not by the scene. The output has exactly the
input's size, CRS and transform (copied from the input file, never from float32
tensors), is nodata wherever the input is, and is published as a Cloud Optimized
GeoTIFF only once complete.

:func:`predict_dataset` does the same over a TorchGeo dataset and sampler, stitching
the patches in memory.
"""

import json
import os
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.enums import MaskFlags
from rasterio.windows import Window
from torch import Tensor, nn
from torchgeo.datasets import GeoDataset
from torchgeo.samplers import GeoSampler
from tqdm import tqdm

from ..checkpoints import CheckpointMetadata
from ..datasets import GeoTiffMosaic
from ..errors import GlcgeoError
from ..outputs import check_destination
from ..transforms import normalize_bands
from .blending import RowBandAccumulator, tile_weights
from .tiling import Tile, TileGrid
from .writer import CogWriter, class_dtype

__all__ = [
    'PredictionSummary',
    'SegmentationMap',
    'predict_dataset',
    'predict_raster',
    'prediction_grid',
    'resolve_device',
]

#: Tile sides are rounded up to (and scenes smaller than a tile padded by reflection
#: to) a multiple of the encoders' output stride.
PAD_MULTIPLE = 32
#: Context mirrored around the scene, in pixels: tiles on the scene's edge see
#: reflected pixels there rather than the model's zero padding, as a whole scene
#: padded for the model would, so tiled and whole-scene predictions agree.
SCENE_MARGIN = 32
#: GDAL's block cache, in MB: its default (5% of RAM) would grow with the scene.
GDAL_CACHE_MB = 64
#: Nodata value of the per-class probability file (stored as percent, 0-100).
PROBABILITY_NODATA = 255


@dataclass(frozen=True)
class PredictionSummary:
    """What :func:`predict_raster` did.

    Attributes:
        destination: the class map written.
        probabilities: the per-class probability file written, if any.
        width: scene width in pixels.
        height: scene height in pixels.
        tiles: number of tiles in the grid.
        skipped_tiles: tiles skipped because they held no data.
        seconds: wall-clock time of the whole prediction.

    """

    destination: str
    probabilities: str | None
    width: int
    height: int
    tiles: int
    skipped_tiles: int
    seconds: float


@dataclass
class SegmentationMap:
    """A class map in memory, with its georeferencing.

    Attributes:
        classes: [H, W] class ids, *nodata* where the input had no data.
        transform: pixel -> map affine transform (float64).
        crs: coordinate reference system of *transform*.
        nodata: the value marking pixels without data.
        metadata: the model's metadata (class names and colours).

    """

    classes: np.ndarray
    transform: Affine
    crs: Any
    nodata: int
    metadata: CheckpointMetadata

    def write(self, path: str | os.PathLike[str], overwrite: bool = False) -> None:
        """Write the map as a Cloud Optimized GeoTIFF with colour map and names.

        Args:
            path: the output file.
            overwrite: whether an existing file may be replaced.

        """
        height, width = self.classes.shape
        with _class_writer(
            path, self.metadata, width, height, self.crs, self.transform, overwrite
        ) as writer:
            writer.write(self.classes[None], Window(0, 0, width, height))
            writer.finish()
            writer.commit()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Choose the device to run a model on.

    Args:
        device: a torch device, or None / ``'auto'`` for CUDA when available, else
            the CPU.

    Returns:
        the device.

    Raises:
        GlcgeoError: if the device name is not valid or not available.

    """
    if device is None or device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        resolved = torch.device(device)
        torch.empty(0, device=resolved)
    except (RuntimeError, AssertionError) as error:
        reason = str(error).splitlines()[0]
        raise GlcgeoError(f'device {device} is not available ({reason})') from None
    return resolved


def prediction_grid(
    height: int, width: int, tile_size: int = 512, overlap: int = 128
) -> TileGrid:
    """Build the tile grid :func:`predict_raster` uses over a scene.

    The grid covers the scene grown by :data:`SCENE_MARGIN` mirrored pixels on
    every side (tile windows are in pixels of that grown scene), with tile sides
    rounded up to a multiple of :data:`PAD_MULTIPLE`.

    Args:
        height: scene height in pixels.
        width: scene width in pixels.
        tile_size: tile side in pixels.
        overlap: pixels shared by neighbouring tiles.

    Returns:
        the grid.

    """
    margin = 2 * SCENE_MARGIN
    return TileGrid(height + margin, width + margin, tile_size, overlap, PAD_MULTIPLE)


def _values_valid(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """[H, W] True where not every band equals *nodata* and no band is NaN."""
    valid = np.ones(data.shape[1:], dtype=bool)
    if np.issubdtype(data.dtype, np.floating):
        valid &= ~np.isnan(data).any(axis=0)
    if nodata is not None and not np.isnan(nodata):
        valid &= ~(data == nodata).all(axis=0)
    return valid


def _prepare(
    data: np.ndarray, valid: np.ndarray, metadata: CheckpointMetadata
) -> np.ndarray:
    """Normalise raw values and pad by reflection to a multiple of the stride.

    Args:
        data: [C, H, W] raw values.
        valid: [H, W] True where there is data.
        metadata: band mean and std (raw units), if any.

    Returns:
        [C, H', W'] float32, H' and W' multiples of :data:`PAD_MULTIPLE`.

    """
    mean: Sequence[float] = metadata.band_mean or [0.0] * len(data)
    std: Sequence[float] = metadata.band_std or [1.0] * len(data)
    # A model without statistics takes raw values, whose band means are unknown:
    # there nodata keeps its value, and only NaN (never an input) becomes 0.
    holds_data = torch.from_numpy(valid) if metadata.band_mean is not None else None
    image = normalize_bands(torch.from_numpy(data), mean, std, holds_data).numpy()
    height, width = valid.shape
    pad_rows = -height % PAD_MULTIPLE
    pad_cols = -width % PAD_MULTIPLE
    return np.pad(image, ((0, 0), (0, pad_rows), (0, pad_cols)), mode='reflect')


def _scores(model: nn.Module, batch: Tensor, task: str) -> Tensor:
    """Class probabilities [B, K, H, W] of a batch of normalised images."""
    logits = model(batch)
    if task == 'binary':
        foreground = logits[:, :1].sigmoid()
        return torch.cat([1 - foreground, foreground], dim=1)
    return logits.softmax(dim=1)


def _class_ids(scores: np.ndarray, metadata: CheckpointMetadata) -> np.ndarray:
    """[H, W] most probable class of [K, H, W] scores, never the ignored class."""
    if metadata.ignore_index is not None and 0 <= metadata.ignore_index < len(scores):
        scores = scores.copy()
        scores[metadata.ignore_index] = -1
    return scores.argmax(axis=0)


def _class_writer(
    path: str | os.PathLike[str],
    metadata: CheckpointMetadata,
    width: int,
    height: int,
    crs: Any,
    transform: Affine,
    overwrite: bool,
) -> CogWriter:
    """Make a writer of a class map with colour table, class names and nodata."""
    dtype, nodata = class_dtype(metadata.num_classes)
    colormap = {i: (*rgb, 255) for i, rgb in enumerate(metadata.class_colors)}
    colormap[nodata] = (0, 0, 0, 0)
    profile = {
        'width': width,
        'height': height,
        'count': 1,
        'dtype': dtype,
        'crs': crs,
        'transform': transform,
        'nodata': nodata,
    }
    return CogWriter(
        path,
        profile,
        overwrite=overwrite,
        overview_resampling='mode',
        colormap=colormap,
        descriptions=('class',),
        band_tags={'class_names': json.dumps(list(metadata.class_names))},
        tags={'model': f'{metadata.model} {metadata.backbone}'},
    )


def _probability_writer(
    path: str | os.PathLike[str],
    metadata: CheckpointMetadata,
    width: int,
    height: int,
    crs: Any,
    transform: Affine,
    overwrite: bool,
) -> CogWriter:
    """Make a writer of per-class probabilities in percent, one band per class."""
    profile = {
        'width': width,
        'height': height,
        'count': metadata.num_classes,
        'dtype': 'uint8',
        'crs': crs,
        'transform': transform,
        'nodata': PROBABILITY_NODATA,
    }
    return CogWriter(
        path,
        profile,
        overwrite=overwrite,
        overview_resampling='average',
        descriptions=metadata.class_names,
        scales=(0.01,) * metadata.num_classes,
    )


def _open_source(path: str | os.PathLike[str]) -> rasterio.DatasetReader:
    """Open the input raster, or explain in one line why it cannot be."""
    if not os.path.exists(path):
        raise GlcgeoError('no such input file', path)
    try:
        return rasterio.open(path)
    except rasterio.errors.RasterioIOError as error:
        reason = str(error).split(':')[-1].strip() or 'unreadable'
        raise GlcgeoError(f'not a readable raster ({reason})', path) from None


def _input_bands(
    src: rasterio.DatasetReader, metadata: CheckpointMetadata, path: str
) -> list[int]:
    """Choose the 1-based bands to read, checked against the file and the model."""
    bands = list(metadata.bands or range(1, src.count + 1))
    if len(bands) != metadata.in_channels:
        raise GlcgeoError(
            f'the input has {src.count} bands, the model takes {metadata.in_channels} '
            '(choose them with --bands)',
            path,
        )
    if not all(1 <= b <= src.count for b in bands):
        raise GlcgeoError(f'bands {bands} out of range 1..{src.count}', path)
    return bands


@dataclass
class _Patch:
    """A tile waiting for prediction.

    Attributes:
        image: [C, H', W'] model input from :func:`_prepare`.
        tile_shape: (rows, columns) of the tile, before padding to the stride.
        edges: whether the tile touches the (top, bottom, left, right) edge of
            the area tiled; those sides get full weight.
        window: the part of the tile inside the scene, in scene pixels.
        crop: that part, in tile pixels.
        valid: True where that part has data.

    """

    image: np.ndarray
    tile_shape: tuple[int, int]
    edges: tuple[bool, bool, bool, bool]
    window: Window
    crop: tuple[slice, slice]
    valid: np.ndarray


class _TileReader:
    """Reads tiles of a raster, mirrored beyond its edges, as model inputs."""

    def __init__(
        self,
        src: rasterio.DatasetReader,
        bands: list[int],
        metadata: CheckpointMetadata,
        nodata: float | None,
    ) -> None:
        self.src = src
        self.bands = bands
        self.metadata = metadata
        self.nodata = src.nodata if nodata is None else nodata
        flags = [src.mask_flag_enums[b - 1] for b in bands]
        # An internal mask or alpha band is authoritative unless nodata is forced.
        self.use_dataset_mask = nodata is None and any(
            MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in flags
        )

    def read(self, tile: Tile) -> _Patch | None:
        """Read one tile of the grid over the scene plus :data:`SCENE_MARGIN`.

        Args:
            tile: a tile whose window is in pixels of the scene grown by the margin
                on every side.

        Returns:
            the tile to predict, or None where its part in the scene has no data.

        """
        window = tile.window
        row_off = int(window.row_off) - SCENE_MARGIN
        col_off = int(window.col_off) - SCENE_MARGIN
        height, width = int(window.height), int(window.width)
        top, left = max(0, -row_off), max(0, -col_off)
        bottom = max(0, row_off + height - self.src.height)
        right = max(0, col_off + width - self.src.width)
        inside = Window(
            col_off + left, row_off + top, width - left - right, height - top - bottom
        )
        if inside.width <= 0 or inside.height <= 0:
            return None  # a tile of the margin only
        data = self.src.read(self.bands, window=inside)
        valid = _values_valid(data, self.nodata)
        if self.use_dataset_mask:
            valid &= self.src.dataset_mask(window=inside) > 0
        if not valid.any():
            return None
        margins = ((top, bottom), (left, right))
        return _Patch(
            image=_prepare(
                np.pad(data, ((0, 0), *margins), mode='reflect'),
                np.pad(valid, margins, mode='reflect'),
                self.metadata,
            ),
            tile_shape=(height, width),
            edges=tile.edges,
            window=inside,
            crop=(slice(top, top + inside.height), slice(left, left + inside.width)),
            valid=valid,
        )


class _BatchPredictor:
    """Runs batches of tiles through the model and blends them into a row band."""

    def __init__(
        self,
        model: nn.Module,
        metadata: CheckpointMetadata,
        device: torch.device,
        accumulator: RowBandAccumulator,
    ) -> None:
        self.model = model
        self.metadata = metadata
        self.device = device
        self.accumulator = accumulator
        self.pending: list[_Patch] = []
        self._weights: dict[tuple[Any, ...], np.ndarray] = {}

    @torch.inference_mode()
    def run(self) -> int:
        """Predict the queued tiles and add them to the accumulator.

        Returns:
            the number of tiles predicted.

        """
        if not self.pending:
            return 0
        batch = torch.from_numpy(np.stack([patch.image for patch in self.pending]))
        scores = _scores(self.model, batch.to(self.device), self.metadata.task)
        for patch, tile_scores in zip(
            self.pending, scores.float().cpu().numpy(), strict=True
        ):
            key = (*patch.tile_shape, patch.edges)
            if key not in self._weights:
                self._weights[key] = tile_weights(*patch.tile_shape, patch.edges)
            rows, cols = patch.crop
            self.accumulator.add(
                patch.window,
                tile_scores[:, rows, cols],
                self._weights[key][rows, cols],
                patch.valid,
            )
        count = len(self.pending)
        self.pending.clear()
        return count


def predict_raster(
    model: nn.Module,
    metadata: CheckpointMetadata,
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    probabilities: str | os.PathLike[str] | None = None,
    tile_size: int = 512,
    overlap: int = 128,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    nodata: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PredictionSummary:
    """Predict a class map of a raster scene, tile by tile, into a COG.

    The output has the input's width, height, CRS and transform; class ids are the
    smallest unsigned dtype that fits (uint8 up to 255 classes) with its largest
    value as nodata, written wherever the input has no data (every band equal to
    nodata, NaN, or masked by the file's internal mask). It carries a colour table
    and the class names (band 1 tag ``class_names``, JSON). Tiles holding no data
    are not predicted.

    Args:
        model: segmentation model taking [B, C, H, W] normalised images (H and W
            multiples of 32) and returning [B, K, H, W] logits.
        metadata: the model's bands, normalisation, classes and colours.
        source: input raster with the bands the model takes (see metadata.bands).
        destination: output GeoTIFF; written under a temporary name in its folder
            and renamed when complete.
        probabilities: optional output of per-class probabilities, one band per
            class, uint8 percent (0-100, scale 0.01), nodata 255.
        tile_size: tile side in pixels, rounded up to a multiple of 32 (the extra
            pixels widen the overlap).
        overlap: pixels shared by neighbouring tiles, blended with Hann weights.
        batch_size: tiles per forward pass.
        device: torch device, or None / ``'auto'`` for CUDA when available.
        nodata: input nodata value overriding the file's own.
        overwrite: whether existing outputs may be replaced.
        progress: show a progress bar (tiles, ETA) on stderr.

    Returns:
        a summary of the run.

    Raises:
        GlcgeoError: for a missing or unreadable input, a band count that does not
            fit the model, a missing or read-only output folder, or an existing
            output without *overwrite*; checked before any tile is predicted, and
            nothing is left behind.

    """
    start = time.perf_counter()
    outputs = [os.fspath(destination)]
    if probabilities is not None:
        outputs.append(os.fspath(probabilities))
    if len({os.path.realpath(output) for output in outputs}) != len(outputs):
        raise GlcgeoError('the class map and probabilities must be different files')
    for output in outputs:
        check_destination(output, overwrite, inputs=[source])
    if batch_size < 1:
        raise GlcgeoError(f'batch size must be positive, got {batch_size}')
    torch_device = resolve_device(device)
    model = model.eval().to(torch_device)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), _open_source(source) as src:
        bands = _input_bands(src, metadata, os.fspath(source))
        width, height = src.width, src.height
        grid = prediction_grid(height, width, tile_size, overlap)
        reader = _TileReader(src, bands, metadata, nodata)
        accumulator = RowBandAccumulator(width, metadata.num_classes)
        predictor = _BatchPredictor(model, metadata, torch_device, accumulator)
        geo = (width, height, src.crs, src.transform)
        with ExitStack() as stack:
            writers = [
                stack.enter_context(
                    _class_writer(destination, metadata, *geo, overwrite)
                )
            ]
            if probabilities is not None:
                writers.append(
                    stack.enter_context(
                        _probability_writer(probabilities, metadata, *geo, overwrite)
                    )
                )
            bar = stack.enter_context(
                tqdm(total=len(grid), unit='tile', disable=not progress, leave=False)
            )
            skipped = 0
            for tile in grid:
                patch = reader.read(tile)
                if patch is None:
                    skipped += 1
                    bar.update()
                else:
                    predictor.pending.append(patch)
                if len(predictor.pending) == batch_size:
                    bar.update(predictor.run())
                # Rows are finished only once every queued tile is predicted.
                if not predictor.pending:
                    finished = grid.rows_finished(tile) - SCENE_MARGIN
                    _write_rows(writers, accumulator, min(finished, height), metadata)
            bar.update(predictor.run())
            _write_rows(writers, accumulator, height, metadata)
            for writer in writers:
                writer.finish()
            for writer in writers:
                writer.commit()
    return PredictionSummary(
        destination=outputs[0],
        probabilities=outputs[1] if probabilities is not None else None,
        width=width,
        height=height,
        tiles=len(grid),
        skipped_tiles=skipped,
        seconds=time.perf_counter() - start,
    )


def _write_rows(
    writers: list[CogWriter],
    accumulator: RowBandAccumulator,
    end: int,
    metadata: CheckpointMetadata,
) -> None:
    """Write the finished rows above scene row *end* to the class (and score) files."""
    top, scores, valid = accumulator.pop(end)
    if not len(valid):
        return
    window = Window(0, top, valid.shape[1], valid.shape[0])
    class_writer, *probability_writers = writers
    classes = _class_ids(scores, metadata).astype(class_writer.profile['dtype'])
    classes[~valid] = class_writer.profile['nodata']
    class_writer.write(classes[None], window)
    for writer in probability_writers:
        percent = np.rint(scores * 100).astype(np.uint8)
        percent[:, ~valid] = PROBABILITY_NODATA
        writer.write(percent, window)


def predict_dataset(
    model: nn.Module,
    metadata: CheckpointMetadata,
    dataset: GeoDataset,
    sampler: GeoSampler,
    *,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    nodata: float | None = None,
    progress: bool = False,
) -> SegmentationMap:
    """Predict a class map over a TorchGeo dataset's bounds, patch by patch.

    Patches are the sampler's queries (e.g. a
    :class:`~torchgeo.samplers.GriddedPatchSampler` with a stride smaller than its
    size); each is placed by its query's float64 map coordinates on the dataset's
    pixel grid, predicted whole and blended with Hann weights over its part inside
    the dataset's bounds. The map is held in memory
    ([K, H, W] float32 scores while stitching): for large scenes, use
    :func:`predict_raster`.

    Args:
        model: segmentation model (see :func:`predict_raster`).
        metadata: the model's normalisation, classes and colours; the dataset picks
            the bands, so ``metadata.bands`` is not used.
        dataset: a TorchGeo raster dataset returning ``image`` [C, H, W] raw values
            (no normalising transform: *metadata* normalises).
        sampler: yields the patches, in the dataset's CRS; all of one size.
        batch_size: patches per forward pass.
        device: torch device, or None / ``'auto'``.
        nodata: nodata value of the raw images (defaults to the dataset's).
        progress: show a progress bar.

    Returns:
        the class map on the dataset's grid (origin at the top-left of its bounds).

    Raises:
        GlcgeoError: if the dataset's band count does not fit the model.

    """
    x_bounds, y_bounds, _ = dataset.bounds
    x_res, y_res = dataset.res
    width = round((x_bounds.stop - x_bounds.start) / x_res)
    height = round((y_bounds.stop - y_bounds.start) / y_res)
    transform = Affine(x_res, 0.0, x_bounds.start, 0.0, -y_res, y_bounds.stop)
    if nodata is None:
        nodata = (
            dataset.file_nodata
            if isinstance(dataset, GeoTiffMosaic)
            else getattr(dataset, 'nodata', None)
        )
    torch_device = resolve_device(device)
    model = model.eval().to(torch_device)
    accumulator = RowBandAccumulator(width, metadata.num_classes)
    predictor = _BatchPredictor(model, metadata, torch_device, accumulator)
    for query in tqdm(sampler, unit='patch', disable=not progress, leave=False):
        data = dataset[query]['image'].numpy()
        if len(data) != metadata.in_channels:
            raise GlcgeoError(
                f'the dataset has {len(data)} bands, the model takes '
                f'{metadata.in_channels}'
            )
        # The patch's pixel window on the dataset's grid, from float64 map bounds.
        x, y = query[0], query[1]
        row = round((y_bounds.stop - y.stop) / y_res)
        col = round((x.start - x_bounds.start) / x_res)
        patch = _dataset_patch(data, nodata, metadata, row, col, height, width)
        if patch is not None:
            predictor.pending.append(patch)
        if len(predictor.pending) == batch_size:
            predictor.run()
    predictor.run()
    _, scores, valid = accumulator.pop(height)
    dtype, class_nodata = class_dtype(metadata.num_classes)
    classes = _class_ids(scores, metadata).astype(dtype)
    classes[~valid] = class_nodata
    return SegmentationMap(classes, transform, dataset.crs, class_nodata, metadata)


def _dataset_patch(
    data: np.ndarray,
    nodata: float | None,
    metadata: CheckpointMetadata,
    row: int,
    col: int,
    scene_height: int,
    scene_width: int,
) -> _Patch | None:
    """Cut a patch at (row, col) to the scene; None if it holds no data there.

    Args:
        data: [C, H, W] raw values of the patch.
        nodata: nodata value of *data*.
        metadata: normalisation.
        row: scene row of the patch's top (may be negative).
        col: scene column of the patch's left (may be negative).
        scene_height: scene height in pixels.
        scene_width: scene width in pixels.

    Returns:
        the patch to predict, or None.

    """
    _, height, width = data.shape
    top, left = max(row, 0), max(col, 0)
    bottom = min(row + height, scene_height)
    right = min(col + width, scene_width)
    crop = (slice(top - row, bottom - row), slice(left - col, right - col))
    # Whatever lies outside the scene is fill, not data.
    valid = np.zeros((height, width), dtype=bool)
    valid[crop] = _values_valid(data[:, crop[0], crop[1]], nodata)
    if not valid.any():
        return None
    return _Patch(
        image=_prepare(data, valid, metadata),
        tile_shape=(height, width),
        edges=(row <= 0, bottom == scene_height, col <= 0, right == scene_width),
        window=Window(left, top, right - left, bottom - top),
        crop=crop,
        valid=valid[crop],
    )
