"""Reading scenes for prediction: tiles of raw values, read ahead of the model.

:class:`TileReader` reads the tiles of a :func:`prediction_grid` from a raster,
mirrored beyond the scene's edges; :func:`dataset_patch` places a TorchGeo
dataset's patch on its scene. Both hand out raw values with their nodata mask
(:func:`~glcgeo.datasets.valid_pixels`, the one nodata rule);
:func:`read_ahead` stacks them into batches in a background thread, so reading
runs while the model works, and :func:`prepare_batch` makes a batch into model
input on the model's device (:func:`~glcgeo.transforms.normalize_bands`, then
padding to the encoders' stride).
"""

import os
import queue
import threading
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.enums import MaskFlags
from rasterio.windows import Window
from torch import Tensor

from ..checkpoints import CheckpointMetadata
from ..datasets import valid_pixels
from ..errors import GlcgeoError
from ..sources import exists, is_url, to_gdal_path
from ..transforms import normalize_bands
from .tiling import Tile, TileGrid

__all__ = [
    'PAD_MULTIPLE',
    'SCENE_MARGIN',
    'Patch',
    'PatchBatch',
    'TileReader',
    'dataset_patch',
    'input_bands',
    'open_source',
    'prediction_grid',
    'prepare_batch',
    'read_ahead',
]

#: Tile sides are rounded up to (and scenes smaller than a tile padded by reflection
#: to) a multiple of the encoders' output stride.
PAD_MULTIPLE = 32
#: Context mirrored around the scene, in pixels: tiles on the scene's edge see
#: reflected pixels there rather than the model's zero padding, as a whole scene
#: padded for the model would, so tiled and whole-scene predictions agree.
SCENE_MARGIN = 32


def prediction_grid(
    height: int, width: int, tile_size: int = 512, overlap: int = 128
) -> TileGrid:
    """Build the tile grid :func:`~glcgeo.inference.predict_raster` uses over a scene.

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


def prepare_batch(
    data: Tensor, holds_data: Tensor, metadata: CheckpointMetadata
) -> Tensor:
    """Make raw values into model input: normalise, then pad to the stride.

    Runs on the device the tensors are on.

    Args:
        data: [B, C, H, W] raw values, of any dtype.
        holds_data: [B, H, W] True where there is data.
        metadata: band mean and std (raw units), if any.

    Returns:
        [B, C, H', W'] float32, H' and W' multiples of :data:`PAD_MULTIPLE`,
        padded by reflection.

    """
    channels = data.shape[1]
    mean: Sequence[float] = metadata.band_mean or [0.0] * channels
    std: Sequence[float] = metadata.band_std or [1.0] * channels
    # A model without statistics takes raw values, whose band means are unknown:
    # there nodata keeps its value, and only NaN (never an input) becomes 0.
    valid = holds_data if metadata.band_mean is not None else None
    image = normalize_bands(data, mean, std, valid)
    pad_rows = -image.shape[-2] % PAD_MULTIPLE
    pad_cols = -image.shape[-1] % PAD_MULTIPLE
    # Reflection pads at most one pixel less than the side: repeat for small sides.
    while pad_rows or pad_cols:
        rows = min(pad_rows, image.shape[-2] - 1)
        cols = min(pad_cols, image.shape[-1] - 1)
        image = F.pad(image, (0, cols, 0, rows), mode='reflect')
        pad_rows, pad_cols = pad_rows - rows, pad_cols - cols
    return image


def _reason(error: BaseException, gdal_path: str) -> str:
    """GDAL's first complaint in a few words, without the path it names."""
    # rasterio chains GDAL's errors, the first cause last.
    while error.__cause__ is not None:
        error = error.__cause__
    message = str(error).replace(gdal_path, '').strip(' :\'"')
    return message.splitlines()[0] if message else 'unreadable'


def open_source(source: str | os.PathLike[str]) -> rasterio.DatasetReader:
    """Open an input raster, a local file or a URL, or say in one line why not.

    Args:
        source: a local path or a URL (see :mod:`glcgeo.sources`).

    Returns:
        the open dataset.

    Raises:
        GlcgeoError: naming *source* as given: a missing local file, or a file or
            URL that GDAL cannot open as a raster.

    """
    gdal_path = to_gdal_path(source)
    if not exists(source):
        raise GlcgeoError('no such input file', source)
    try:
        return rasterio.open(gdal_path)
    except rasterio.errors.RasterioIOError as error:
        what = (
            'cannot open the URL as a raster'
            if is_url(source)
            else ('not a readable raster')
        )
        raise GlcgeoError(f'{what} ({_reason(error, gdal_path)})', source) from None


def input_bands(
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
class Patch:
    """A tile of raw values waiting for prediction.

    Attributes:
        data: [C, H, W] raw values of the tile; beyond the scene's edges, mirrored
            scene pixels (rasters) or the dataset's fill (datasets).
        holds_data: [H, W] True where *data* holds data.
        edges: whether the tile touches the (top, bottom, left, right) edge of
            the area tiled; those sides get full weight.
        window: the part of the tile inside the scene, in scene pixels.
        crop: that part, in tile pixels.

    """

    data: np.ndarray
    holds_data: np.ndarray
    edges: tuple[bool, bool, bool, bool]
    window: Window
    crop: tuple[slice, slice]


class TileReader:
    """Reads tiles of a raster, mirrored beyond its edges, as raw values."""

    def __init__(
        self,
        src: rasterio.DatasetReader,
        bands: list[int],
        nodata: float | None,
        source: str | os.PathLike[str],
    ) -> None:
        """Initialize a new TileReader.

        Args:
            src: the open raster.
            bands: 1-based bands to read.
            nodata: nodata value overriding the file's own.
            source: the raster's name as the user gave it, for errors.

        """
        self.src = src
        self.bands = bands
        self.source = source
        self.nodata = src.nodata if nodata is None else nodata
        flags = [src.mask_flag_enums[b - 1] for b in bands]
        # An internal mask or alpha band is authoritative unless nodata is forced.
        self.use_dataset_mask = nodata is None and any(
            MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in flags
        )

    def read(self, tile: Tile) -> Patch | None:
        """Read one tile of the grid over the scene plus :data:`SCENE_MARGIN`.

        Args:
            tile: a tile whose window is in pixels of the scene grown by the margin
                on every side.

        Returns:
            the tile to predict, or None where its part in the scene has no data.

        Raises:
            GlcgeoError: if GDAL cannot read the pixels (a damaged file, a lost
                connection), naming the source.

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
        try:
            data = self.src.read(self.bands, window=inside)
            valid = valid_pixels(torch.from_numpy(data), self.nodata).numpy()
            if self.use_dataset_mask:
                valid &= self.src.dataset_mask(window=inside) > 0
        except rasterio.errors.RasterioIOError as error:
            reason = _reason(error, self.src.name)
            raise GlcgeoError(f'cannot read pixels ({reason})', self.source) from None
        if not valid.any():
            return None
        margins = ((top, bottom), (left, right))
        if top or bottom or left or right:
            data = np.pad(data, ((0, 0), *margins), mode='reflect')
            valid = np.pad(valid, margins, mode='reflect')
        return Patch(
            data=data,
            holds_data=valid,
            edges=tile.edges,
            window=inside,
            crop=(slice(top, top + inside.height), slice(left, left + inside.width)),
        )


def dataset_patch(
    data: np.ndarray,
    nodata: float | None,
    row: int,
    col: int,
    scene_height: int,
    scene_width: int,
) -> Patch | None:
    """Cut a patch at (row, col) to the scene; None if it holds no data there.

    Args:
        data: [C, H, W] raw values of the patch.
        nodata: nodata value of *data*.
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
    inside = torch.from_numpy(data[:, crop[0], crop[1]])
    valid[crop] = valid_pixels(inside, nodata).numpy()
    if not valid.any():
        return None
    return Patch(
        data=data,
        holds_data=valid,
        edges=(row <= 0, bottom == scene_height, col <= 0, right == scene_width),
        window=Window(left, top, right - left, bottom - top),
        crop=crop,
    )


@dataclass
class PatchBatch[Item]:
    """Patches stacked for one forward pass, with what was read to find them.

    *Item* is what each patch was read for: a tile of a grid, a query of a
    sampler.

    Attributes:
        patches: the patches, in reading order.
        data: [B, C, H, W] their raw values (in pinned memory when asked), or
            None when *patches* is empty.
        holds_data: [B, H, W] True where *data* holds data, or None.
        items: items read for this batch, those without data included.
        last: the last of them.

    """

    patches: list[Patch]
    data: Tensor | None
    holds_data: Tensor | None
    items: int
    last: Item


def _stack[Item](
    patches: list[Patch], items: int, last: Item, pin_memory: bool
) -> PatchBatch[Item]:
    """Stack patches into a :class:`PatchBatch`."""
    if not patches:
        return PatchBatch(patches, None, None, items, last)
    data = torch.from_numpy(np.stack([patch.data for patch in patches]))
    holds = torch.from_numpy(np.stack([patch.holds_data for patch in patches]))
    if pin_memory:
        data, holds = data.pin_memory(), holds.pin_memory()
    return PatchBatch(patches, data, holds, items, last)


def _batches[Item](
    patches: Iterable[tuple[Item, Patch | None]], batch_size: int, pin_memory: bool
) -> Iterator[PatchBatch[Item]]:
    """Group patches into batches (see :func:`read_ahead`)."""
    pending: list[Patch] = []
    items = 0
    for item, patch in patches:
        items += 1
        if patch is not None:
            pending.append(patch)
        # An item without data and nothing pending ends a batch too, so that
        # rows finish while a stretch without data is read.
        if len(pending) == batch_size or not pending:
            yield _stack(pending, items, item, pin_memory)
            pending, items = [], 0
    if items:
        yield _stack(pending, items, item, pin_memory)


#: Marks the end of the batches in :func:`read_ahead`'s queue.
_END = object()


def read_ahead[Item](
    patches: Iterable[tuple[Item, Patch | None]],
    batch_size: int,
    *,
    pin_memory: bool = False,
    depth: int = 2,
) -> Generator[PatchBatch[Item]]:
    """Read patches in a background thread, stacked into batches.

    The thread reads (GDAL releases Python's lock while it reads and
    decompresses) while the caller runs the model; it holds at most *depth*
    batches ahead, so memory does not grow with the scene. Errors of the
    reading are raised in the caller. Close the iterator (e.g. with
    :func:`contextlib.closing`) to stop the thread early.

    Args:
        patches: (item, patch or None where the item holds no data), in order.
        batch_size: patches per batch.
        pin_memory: put batches in page-locked memory, for fast copies to CUDA.
        depth: batches held ready.

    Yields:
        the batches: *batch_size* patches each, or fewer at the end and where
        an item without data follows a finished batch.

    """
    stop = threading.Event()
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)

    def put(value: object) -> None:
        while not stop.is_set():
            try:
                ready.put(value, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for batch in _batches(patches, batch_size, pin_memory):
                put(batch)
                if stop.is_set():
                    return
            put(_END)
        except BaseException as error:  # re-raised in the caller's thread
            put(error)

    thread = threading.Thread(target=produce, name='glcgeo-read-ahead', daemon=True)
    thread.start()
    try:
        while (value := ready.get()) is not _END:
            if isinstance(value, BaseException):
                raise value
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
