"""Reading scenes for prediction: raw values with their nodata mask, ahead of the model.

:class:`SceneReader` reads a raster for a :func:`prediction_grid` a few tiles of
a grid row at a time: a :class:`Strip`, one window mirrored beyond the scene's
edges, from which the tiles are cut, with each tile's :class:`Placement` on the
scene. It hands out raw values with their nodata mask
(:func:`~glcgeo.rasters.valid_pixels`, the one nodata rule), as
:mod:`glcgeo.inference.patches` does for a TorchGeo dataset's patches;
:func:`read_ahead` reads in a background thread, so reading runs while the model
works (where that pays: :func:`~glcgeo.inference.predict.reads_ahead`), and
:func:`normalize_input` and :func:`pad_to_stride` make raw values into model
input on the model's device.
"""

import itertools
import os
import queue
import threading
import warnings
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from rasterio.enums import MaskFlags
from rasterio.windows import Window
from torch import Tensor

from ..checkpoints import BandMetadata, ModelMetadata
from ..errors import check_band_count, given_name
from ..rasters import band_indexes, band_names, pixel_reads, valid_pixels
from ..transforms import normalize_bands
from .tiling import Tile, TileGrid

__all__ = [
    'PAD_MULTIPLE',
    'SCENE_MARGIN',
    'Placement',
    'SceneReader',
    'Strip',
    'input_bands',
    'normalize_input',
    'pad_to_stride',
    'place_tile',
    'prediction_grid',
    'read_ahead',
]

#: Tile sides are rounded up to (and scenes smaller than a tile padded by reflection
#: to) a multiple of the encoders' output stride.
PAD_MULTIPLE = 32
#: Context mirrored around the scene, in pixels: tiles on the scene's edge see
#: reflected pixels there rather than the model's zero padding, as a whole scene
#: padded for the model would, so tiled and whole-scene predictions agree.
SCENE_MARGIN = 32
#: Tallest blocks read whole (see :class:`_DecodedRows`), in rows.
MAX_BLOCK_ROWS = 1024


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


def normalize_input(data: Tensor, holds_data: Tensor, metadata: BandMetadata) -> Tensor:
    """Make raw values into model input: :func:`~glcgeo.transforms.normalize_bands`.

    Runs on the device the tensors are on.

    Args:
        data: [..., C, H, W] raw values, of any dtype.
        holds_data: [..., H, W] True where there is data.
        metadata: band mean and std (raw units), if any.

    Returns:
        [..., C, H, W] float32 normalised values, 0 where there is no data.

    """
    channels = data.shape[-3]
    mean: Sequence[float] = metadata.band_mean or [0.0] * channels
    std: Sequence[float] = metadata.band_std or [1.0] * channels
    # A model without statistics takes raw values, whose band means are unknown:
    # there nodata keeps its value, and only NaN (never an input) becomes 0.
    valid = holds_data if metadata.band_mean is not None else None
    return normalize_bands(data, mean, std, valid)


def pad_to_stride(image: Tensor) -> Tensor:
    """Pad images by reflection to sides that are multiples of :data:`PAD_MULTIPLE`.

    Args:
        image: [B, C, H, W] model input.

    Returns:
        [B, C, H', W'], H' and W' the next multiples; *image* itself if they fit.

    """
    pad_rows = -image.shape[-2] % PAD_MULTIPLE
    pad_cols = -image.shape[-1] % PAD_MULTIPLE
    # Reflection pads at most one pixel less than the side: repeat for small sides.
    while pad_rows or pad_cols:
        rows = min(pad_rows, image.shape[-2] - 1)
        cols = min(pad_cols, image.shape[-1] - 1)
        image = F.pad(image, (0, cols, 0, rows), mode='reflect')
        pad_rows, pad_cols = pad_rows - rows, pad_cols - cols
    return image


def input_bands(
    src: rasterio.DatasetReader, metadata: ModelMetadata, path: str
) -> list[int]:
    """Choose the 1-based bands to read, checked against the file and the model.

    Bands given by name (``predict --bands B4 B3``) are the file's band
    names (:func:`~glcgeo.rasters.band_names`). Values of another dtype than
    those the model's statistics were computed on (uint8 for a model of uint16
    images) are most likely on another scale: that is warned of.
    """
    bands = band_indexes(metadata.bands, band_names(src), path)
    trained = metadata.band_dtype
    if trained is not None and src.dtypes[0] != trained:
        warnings.warn(
            f'{given_name(path)}: {src.dtypes[0]} values, but the model was trained '
            f'on {trained} images: they are normalised with its statistics (give '
            "the scene's own with --stats, or --mean and --std)",
            UserWarning,
            stacklevel=2,
        )
    # Bands given are as many as the model takes (CheckpointMetadata checks).
    check_band_count(
        'the input has',
        len(bands),
        'the model takes',
        metadata.in_channels,
        path,
        ' (choose them with --bands)',
    )
    return bands


@dataclass(frozen=True)
class Placement:
    """Where a tile's prediction goes in the scene.

    Attributes:
        window: the part of the tile inside the scene, in scene pixels.
        crop: that part, in tile pixels (rows, columns).
        edges: whether the tile touches the (top, bottom, left, right) edge of
            the area tiled; those sides get full weight.

    """

    window: Window
    crop: tuple[slice, slice]
    edges: tuple[bool, bool, bool, bool]


def place_tile(
    row: int,
    col: int,
    size: tuple[int, int],
    scene_size: tuple[int, int],
    edges: tuple[bool, bool, bool, bool],
) -> Placement | None:
    """Place a tile on its scene.

    Args:
        row: scene row of the tile's top (negative above the scene).
        col: scene column of the tile's left (negative left of the scene).
        size: the tile's (height, width) in pixels.
        scene_size: the scene's (height, width) in pixels.
        edges: see :class:`Placement`.

    Returns:
        the placement, or None for a tile wholly outside the scene.

    """
    height, width = size
    scene_height, scene_width = scene_size
    top, left = max(row, 0), max(col, 0)
    bottom = min(row + height, scene_height)
    right = min(col + width, scene_width)
    if bottom <= top or right <= left:
        return None
    return Placement(
        window=Window(left, top, right - left, bottom - top),
        crop=(slice(top - row, bottom - row), slice(left - col, right - col)),
        edges=edges,
    )


def _mirrored_read(
    start: int, stop: int, size: int
) -> tuple[slice, tuple[int, int], slice]:
    """Take pixels [start, stop) of a scene axis mirrored beyond its edges.

    As :func:`numpy.pad` does in ``'reflect'`` mode over the whole axis: pixel
    -k is pixel k, pixel size - 1 + k is pixel size - 1 - k (reflected again
    where the axis is shorter than the margin).

    Args:
        start: first pixel (negative in the margin).
        stop: pixel after the last (beyond *size* in the margin).
        size: the scene's pixels along the axis.

    Returns:
        (the scene pixels to read, the padding to reflect them by, the
        pixels [start, stop) of the padded ones).

    """
    before, after = max(0, -start), max(0, stop - size)
    # Read beyond [start, stop) as far as the pixels reflected into it.
    first = max(0, min(start, size - 1 - after))
    end = min(size, max(stop, before + 1))
    cut = slice(start - first + before, stop - first + before)
    return slice(first, end), (before, after), cut


@dataclass
class Strip:
    """Consecutive tiles of a grid row, read once for all of them.

    Attributes:
        data: [C, H, W] raw values of the window the tiles cover in the scene
            grown by :data:`SCENE_MARGIN` (mirrored scene pixels beyond its
            edges), in pinned memory when asked; None where no tile holds data.
        holds_data: [H, W] True where *data* holds data, or None.
        col_off: the column of the grown scene where *data* starts.
        tiles: the tiles, left to right, each with its placement, or None where
            the tile holds no data in the scene.

    """

    data: Tensor | None
    holds_data: Tensor | None
    col_off: int
    tiles: list[tuple[Tile, Placement | None]]


class _DecodedRows:
    """Scene rows decoded once each, across the scene's width.

    GDAL decodes every block a read touches and keeps none of them for the next
    read (its GeoTIFF reader decodes straight into the caller's array), so
    overlapping windows read one by one decode the blocks they share again and
    again. Here rows are read in whole block rows, each once, and kept while
    later strips still need them: a buffer of a tile's height (or the rows the
    bottom margin mirrors, if more) plus a block's, reused from one grid row to
    the next.
    """

    def __init__(
        self,
        src: rasterio.DatasetReader,
        bands: list[int],
        nodata: float | None,
        use_dataset_mask: bool,
        depth: int,
    ) -> None:
        """Initialize a new _DecodedRows.

        Args:
            src: the open raster.
            bands: 1-based bands to read.
            nodata: nodata value of the raster.
            use_dataset_mask: whether the raster's internal mask says where data is.
            depth: the most rows asked for at once.

        """
        self.src = src
        self.bands = bands
        self.nodata = nodata
        self.use_dataset_mask = use_dataset_mask
        block_height = src.block_shapes[bands[0] - 1][0]
        # A file stored in a few tall strips (or one) is read as asked: rounding
        # up to its blocks would hold most of the scene.
        self.block_height = block_height if block_height <= MAX_BLOCK_ROWS else 1
        capacity = depth + self.block_height - 1
        self.data = np.empty(
            (len(bands), capacity, src.width), dtype=src.dtypes[bands[0] - 1]
        )
        self.valid = np.empty((capacity, src.width), dtype=bool)
        #: Scene row of the buffers' first row, and the rows they hold from it.
        self.top = 0
        self.count = 0

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw values and nodata mask of scene rows [start, stop).

        Rows above *start* are dropped: later calls must not start above it.

        Returns:
            ([C, N, W] raw values, [N, W] True where there is data), views of
            the buffers valid until the next call.

        """
        keep = max(0, self.top + self.count - start)
        if keep and start > self.top:
            moved = slice(self.count - keep, self.count)
            # Source and target may overlap: numpy copies through a buffer then.
            self.data[:, :keep] = self.data[:, moved]
            self.valid[:keep] = self.valid[moved]
        self.top, self.count = start, keep
        if stop > start + keep:
            # Down to the end of the block row holding the last row asked for:
            # at most depth + block height - 1 rows from start, the capacity.
            end = min(
                self.src.height, -(-stop // self.block_height) * self.block_height
            )
            first = start + keep
            self._read(first, end, rows=slice(keep, keep + end - first))
            self.count = end - start
        rows = slice(0, stop - start)
        return self.data[:, rows], self.valid[rows]

    def _read(self, first: int, end: int, rows: slice) -> None:
        """Decode scene rows [first, end) into the buffers' *rows*."""
        window = Window(0, first, self.src.width, end - first)
        data = self.data[:, rows]
        self.src.read(self.bands, window=window, out=data)
        self.valid[rows] = valid_pixels(torch.from_numpy(data), self.nodata).numpy()
        if self.use_dataset_mask:
            self.valid[rows] &= self.src.dataset_mask(window=window) > 0


class SceneReader:
    """Reads a raster for a :func:`prediction_grid`, several tiles at a time.

    Each block of the file is decoded once, whatever the tiles' overlaps (see
    :class:`_DecodedRows`), and consecutive tiles of a grid row are handed out
    together as a :class:`Strip`, cut from the decoded rows, so that they go to
    the model's device and are normalised there once; a strip holds at most
    *tiles_per_read* tiles, so that its memory does not grow with the scene's
    width.
    """

    def __init__(
        self,
        src: rasterio.DatasetReader,
        bands: list[int],
        nodata: float | None,
        source: str | os.PathLike[str],
        tiles_per_read: int = 8,
    ) -> None:
        """Initialize a new SceneReader.

        Args:
            src: the open raster.
            bands: 1-based bands to read.
            nodata: nodata value overriding the file's own.
            source: the raster's name as the user gave it, for errors.
            tiles_per_read: most tiles of a strip.

        """
        self.src = src
        self.bands = bands
        self.source = source
        self.tiles_per_read = tiles_per_read
        self.nodata = src.nodata if nodata is None else nodata
        flags = [src.mask_flag_enums[b - 1] for b in bands]
        # An internal mask or alpha band is authoritative unless nodata is forced.
        self.use_dataset_mask = nodata is None and any(
            MaskFlags.per_dataset in f or MaskFlags.alpha in f for f in flags
        )

    def strips(self, grid: TileGrid, pin_memory: bool = False) -> Generator[Strip]:
        """Read the strips of a grid over the scene plus :data:`SCENE_MARGIN`.

        Args:
            grid: a grid whose windows are in pixels of the scene grown by the
                margin on every side.
            pin_memory: put strips in page-locked memory, for fast copies to CUDA.

        Yields:
            the strips, row by row, left to right: each tile of the grid once.

        Raises:
            GlcgeoError: if GDAL cannot read the pixels (a damaged file, a lost
                connection), naming the source.

        """
        height = self.src.height
        # The bottom margin mirrors the rows from here down: grid rows near the
        # bottom start reading here, so that reads only move down.
        bottom_mirrored = max(0, height - 1 - SCENE_MARGIN)
        decoded = _DecodedRows(
            self.src,
            self.bands,
            self.nodata,
            self.use_dataset_mask,
            max(grid.tile_height, SCENE_MARGIN + 1),
        )
        for row in itertools.batched(grid, len(grid.col_offsets)):
            # The grid row's rows in scene pixels (negative in the margin).
            top = int(row[0].window.row_off) - SCENE_MARGIN
            band = None
            if top < height and top + grid.tile_height > 0:
                rows, _, _ = _mirrored_read(top, top + grid.tile_height, height)
                first = min(rows.start, bottom_mirrored)
                with pixel_reads([os.fspath(self.source)]):
                    band = first, *decoded.rows(first, rows.stop)
            for tiles in itertools.batched(row, self.tiles_per_read):
                strip = self._strip(list(tiles), top, band)
                if pin_memory and strip.data is not None:
                    strip.data = strip.data.pin_memory()
                    strip.holds_data = cast(Tensor, strip.holds_data).pin_memory()
                yield strip

    def _strip(
        self,
        tiles: list[Tile],
        top: int,
        band: tuple[int, np.ndarray, np.ndarray] | None,
    ) -> Strip:
        """Cut the strip of consecutive tiles of one grid row from its rows.

        Args:
            tiles: the tiles.
            top: scene row of the tiles' top (negative in the margin).
            band: the scene row of the first row read for the tiles, and the
                raw values and mask of the rows read, across the scene's
                width; None if the tiles have no row inside the scene.

        """
        first, last = tiles[0].window, tiles[-1].window
        # The strip's window in scene pixels (negative in the margin).
        left = int(first.col_off) - SCENE_MARGIN
        height = int(first.height)
        width = int(last.col_off) + int(last.width) - int(first.col_off)
        placements = [
            place_tile(
                top,
                int(tile.window.col_off) - SCENE_MARGIN,
                (height, int(tile.window.width)),
                (self.src.height, self.src.width),
                tile.edges,
            )
            for tile in tiles
        ]
        col_off = int(first.col_off)
        if band is None or not any(placements):  # tiles of the margin only
            return Strip(None, None, col_off, [(tile, None) for tile in tiles])
        band_top, band_data, band_valid = band
        rows, row_pad, row_cut = _mirrored_read(top, top + height, self.src.height)
        cols, col_pad, col_cut = _mirrored_read(left, left + width, self.src.width)
        in_band = slice(rows.start - band_top, rows.stop - band_top)
        # Copies: the decoded rows are reused for the rows below.
        data = np.pad(
            band_data[:, in_band, cols], ((0, 0), row_pad, col_pad), 'reflect'
        )
        valid = np.pad(band_valid[in_band, cols], (row_pad, col_pad), 'reflect')
        # The window alone (a copy only where more was read for its mirror).
        data = np.ascontiguousarray(data[:, row_cut, col_cut])
        valid = np.ascontiguousarray(valid[row_cut, col_cut])
        tiles_placed: list[tuple[Tile, Placement | None]] = []
        for tile, placement in zip(tiles, placements, strict=True):
            if placement is not None:
                crop_rows, crop_cols = placement.crop
                offset = int(tile.window.col_off) - col_off
                inside = valid[
                    crop_rows, offset + crop_cols.start : offset + crop_cols.stop
                ]
                if not inside.any():
                    placement = None
            tiles_placed.append((tile, placement))
        return Strip(
            torch.from_numpy(data), torch.from_numpy(valid), col_off, tiles_placed
        )


#: Marks the end of the items in :func:`read_ahead`'s queue.
_END = object()


def read_ahead[Item](items: Iterable[Item], depth: int = 2) -> Generator[Item]:
    """Iterate in a background thread, ahead of the caller.

    The thread reads (GDAL releases Python's lock while it reads and
    decompresses) while the caller runs the model; it holds at most *depth*
    items ahead, so memory does not grow with the scene. Errors of the
    reading are raised in the caller. Close the iterator (e.g. with
    :func:`contextlib.closing`) to stop the thread early.

    Args:
        items: what to read, e.g. :meth:`SceneReader.strips` or
            :func:`~glcgeo.inference.patches.batch_patches`.
        depth: items held ready.

    Yields:
        the items, in order.

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
            for item in items:
                put(item)
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
