"""Spatial splits of a labelled mosaic, and label budgets drawn from them.

* :func:`split_tiles` cuts the labelled area into square tiles, groups them into
  blocks and deals whole blocks to train, validation and test with a seeded
  generator, so no training tile touches the evaluation area.
* :func:`draw_label_tiles` draws a label budget (a fraction or a count of tiles)
  from the training tiles only, reproducibly.

Why not TorchGeo's ``random_grid_cell_assignment``: it grids each *file* separately,
so two overlapping files give overlapping cells that may land in different splits.
Here one grid covers the whole mosaic, aligned to its pixels.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from rasterio.windows import Window
from torch import Generator

from .datasets import GeoTiffMask, GeoTiffMosaic
from .errors import GlcgeoError
from .geometry import PixelGrid

__all__ = ['SPLITS', 'TileIndex', 'TileSplit', 'draw_label_tiles', 'split_tiles']

#: Names of the three spatially disjoint parts of a labelled mosaic.
SPLITS = ('train', 'val', 'test')

#: A tile of a :class:`TileSplit`: (row, col) in tiles from the top-left.
TileIndex = tuple[int, int]


@dataclass(frozen=True)
class TileSplit:
    """Square tiles of a labelled mosaic dealt, block by block, to three splits.

    The tile grid starts at :attr:`grid`'s origin; tile (row, col) covers pixels
    ``row * tile_size`` to ``(row + 1) * tile_size`` of that grid (likewise for
    columns). A block is ``block_size`` x ``block_size`` tiles; every tile of a
    block is in the block's split, so tiles of different splits never overlap and
    only touch along block edges.

    Attributes:
        grid: pixel grid of the mosaic (origin at the top-left of the tiles, in
            the mosaic's CRS).
        tile_size: side of a tile, in pixels.
        block_size: side of a block, in tiles.
        tiles: for each split name, its tiles holding enough labels, sorted.
        labelled: fraction of labelled pixels in each kept tile.
        class_values: raw mask values found in the tiles (or given), sorted.

    """

    grid: PixelGrid
    tile_size: int
    block_size: int
    tiles: dict[str, list[TileIndex]]
    labelled: dict[TileIndex, float] = field(repr=False)
    class_values: list[int]

    def block_of(self, tile: TileIndex) -> TileIndex:
        """The (row, col) of the block holding *tile*.

        Args:
            tile: (row, col) of a tile.

        Returns:
            (row, col) of its block, in blocks.

        """
        return tile[0] // self.block_size, tile[1] // self.block_size

    def bounds(self, tile: TileIndex) -> tuple[float, float, float, float]:
        """The ground extent of a tile.

        Args:
            tile: (row, col) of a tile.

        Returns:
            (xmin, ymin, xmax, ymax) in the mosaic's CRS.

        """
        row, col = tile
        size = self.tile_size
        return self.grid.window_bounds(Window(col * size, row * size, size, size))

    def query(self, tile: TileIndex) -> tuple[slice, slice]:
        """The TorchGeo query that reads a tile at the grid's resolution.

        Args:
            tile: (row, col) of a tile.

        Returns:
            ``(slice(xmin, xmax, xres), slice(ymin, ymax, yres))``.

        """
        xmin, ymin, xmax, ymax = self.bounds(tile)
        xres, yres = self.grid.res
        return slice(xmin, xmax, xres), slice(ymin, ymax, yres)


def _split_counts(fractions: Sequence[float], total: int) -> list[int]:
    """Whole numbers of blocks per split, each at least one, summing to *total*.

    Needs at least one block per split (checked by the caller).
    """
    counts = [max(1, math.floor(f * total)) for f in fractions]
    # Hand out what rounding left, largest remainder first; never below one.
    while sum(counts) < total:
        remainders = [f * total - c for f, c in zip(fractions, counts, strict=True)]
        counts[int(np.argmax(remainders))] += 1
    while sum(counts) > total:
        counts[int(np.argmax(counts))] -= 1
    return counts


def _blocks_on_files(
    masks: GeoTiffMask, grid: PixelGrid, span: int, shape: tuple[int, int]
) -> list[TileIndex]:
    """The blocks that mask files overlap, sorted.

    Blocks are found from the files' footprints, so that scattered files cost
    their own blocks, not their bounding box's.

    Args:
        masks: the masks, in the CRS of *grid*.
        grid: the tiled pixel grid.
        span: side of a block, in pixels.
        shape: (rows, columns) of blocks of the tiled area.

    Returns:
        (row, col) of each block, in blocks.
    """
    xres, yres = grid.res
    last_row, last_col = shape[0] - 1, shape[1] - 1
    blocks: set[TileIndex] = set()
    for left, bottom, right, top in masks.index.geometry.bounds.to_numpy():
        # Block edges from the grid's top-left corner, rounded off float error.
        c0 = math.floor(round((left - grid.x0) / xres / span, 9))
        c1 = math.ceil(round((right - grid.x0) / xres / span, 9)) - 1
        r0 = math.floor(round((grid.y0 - top) / yres / span, 9))
        r1 = math.ceil(round((grid.y0 - bottom) / yres / span, 9)) - 1
        blocks.update(
            (r, c)
            for r in range(max(r0, 0), min(r1, last_row) + 1)
            for c in range(max(c0, 0), min(c1, last_col) + 1)
        )
    return sorted(blocks)


def split_tiles(
    masks: GeoTiffMask,
    grid: PixelGrid,
    size: tuple[int, int],
    tile_size: int,
    block_size: int = 4,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    min_labelled: float = 0.5,
    class_values: Sequence[int] | None = None,
    generator: Generator | None = None,
    images: GeoTiffMosaic | None = None,
) -> TileSplit:
    """Cut the labelled area into tiles and deal whole blocks of them to splits.

    The mask is read once, block by block (only blocks on mask files), to find
    each tile's labelled fraction: pixels on a mask file holding a class value,
    and on an image file when *images* are given (the ground between files is
    never labelled, whatever the masks' nodata); tiles below *min_labelled* are
    dropped, and blocks without any kept tile take no part in the draw. Blocks
    are dealt in the order of a seeded permutation: the first ``fractions[0]``
    of them to train, and so on, at least one each.

    Args:
        masks: the masks, in the CRS and resolution of *grid*.
        grid: the pixel grid to tile (origin at the top-left of the area).
        size: (width, height) of the area, in pixels of *grid*.
        tile_size: side of a tile, in pixels.
        block_size: side of a block, in tiles.
        fractions: shares of blocks for train, validation and test.
        min_labelled: smallest fraction of class pixels for a tile to be used.
        class_values: raw values that are classes (defaults to every value found
            on labelled pixels).
        generator: random generator of the block deal (defaults to seed 0).
        images: the images, in the CRS and resolution of *grid*: labels count
            only on their files.

    Returns:
        the split.

    Raises:
        GlcgeoError: for bad fractions or sizes, or too few labelled blocks.

    """
    if len(fractions) != len(SPLITS) or any(f <= 0 for f in fractions):
        raise GlcgeoError(
            f'split fractions must be three positive numbers, got {list(fractions)}'
        )
    if not math.isclose(sum(fractions), 1.0):
        raise GlcgeoError(f'split fractions must sum to 1, got {list(fractions)}')
    for name, value in (('patch_size', tile_size), ('block_size', block_size)):
        if value < 1:
            raise GlcgeoError(f'{name} must be >= 1, got {value}')
    columns, rows = size[0] // tile_size, size[1] // tile_size
    if columns == 0 or rows == 0:
        raise GlcgeoError(
            f'the labelled area ({size[0]} x {size[1]} pixels) is smaller than one '
            f'{tile_size}-pixel tile',
            masks.files[0],
        )
    generator = generator or torch.Generator().manual_seed(0)
    span = tile_size * block_size
    raw_blocks: dict[TileIndex, tuple[np.ndarray, np.ndarray]] = {}
    shape = (math.ceil(rows / block_size), math.ceil(columns / block_size))
    for block_row, block_col in _blocks_on_files(masks, grid, span, shape):
        # Read whole blocks (clipped to the tiled area): one read per block.
        width = min(span, (columns - block_col * block_size) * tile_size)
        height = min(span, (rows - block_row * block_size) * tile_size)
        block = Window(block_col * span, block_row * span, width, height)
        xmin, ymin, xmax, ymax = grid.window_bounds(block)
        query = (slice(xmin, xmax, grid.res[0]), slice(ymin, ymax, grid.res[1]))
        try:
            sample = masks[query]
        except IndexError:
            continue  # only touches a mask file
        block_labels = sample['labelled']
        if images is not None:
            block_labels &= images.on_files(xmin, ymin, xmax, ymax)
        raw_blocks[(block_row, block_col)] = (
            sample['mask'].numpy(),
            block_labels.numpy(),
        )
    if class_values is None:
        found = set()
        for raw, on_labels in raw_blocks.values():
            found.update(np.unique(raw[on_labels]).tolist())
        class_values = sorted(int(v) for v in found)
    labelled: dict[TileIndex, float] = {}
    any_class = False
    for (block_row, block_col), (raw, on_labels) in raw_blocks.items():
        is_class = np.isin(raw, class_values) & on_labels
        any_class = any_class or bool(is_class.any())
        for r in range(raw.shape[0] // tile_size):
            for c in range(raw.shape[1] // tile_size):
                part = is_class[
                    r * tile_size : (r + 1) * tile_size,
                    c * tile_size : (c + 1) * tile_size,
                ]
                fraction = float(part.mean())
                if fraction >= min_labelled and fraction > 0:
                    tile = (block_row * block_size + r, block_col * block_size + c)
                    labelled[tile] = fraction
    blocks = sorted({(r // block_size, c // block_size) for r, c in labelled})
    if not any_class:
        raise GlcgeoError(
            'the masks hold no class pixel over the images (only nodata or values '
            'that are no class)',
            masks.files[0],
        )
    if len(blocks) < len(fractions):
        raise GlcgeoError(
            f'only {len(blocks)} block(s) hold tiles with at least '
            f'{min_labelled:.0%} labelled pixels, {len(fractions)} are needed (one '
            'per split): lower --min-labelled, or use a smaller --block-size or '
            '--patch-size',
            masks.files[0],
        )
    counts = _split_counts(fractions, len(blocks))
    order = torch.randperm(len(blocks), generator=generator).tolist()
    split_of_block: dict[TileIndex, str] = {}
    start = 0
    for name, count in zip(SPLITS, counts, strict=True):
        for i in order[start : start + count]:
            split_of_block[blocks[i]] = name
        start += count
    tiles: dict[str, list[TileIndex]] = {name: [] for name in SPLITS}
    for tile in sorted(labelled):
        tiles[split_of_block[(tile[0] // block_size, tile[1] // block_size)]].append(
            tile
        )
    return TileSplit(
        grid=grid,
        tile_size=tile_size,
        block_size=block_size,
        tiles=tiles,
        labelled=labelled,
        class_values=list(class_values),
    )


def draw_label_tiles(
    tiles: Sequence[TileIndex],
    label_fraction: float | None = None,
    num_label_patches: int | None = None,
    generator: Generator | None = None,
) -> list[TileIndex]:
    """Draw the labelled tiles of a budget from the training tiles.

    The tiles are put in the order of a seeded permutation and the budget takes
    the first ones, so with one seed a smaller budget is a subset of a larger one
    (1% within 5% within 100%): budgets differ by labels only, not by luck.

    Args:
        tiles: the training tiles to draw from.
        label_fraction: share of *tiles* to label, in (0, 1]; at least one tile.
        num_label_patches: number of tiles to label (instead of a fraction).
        generator: random generator (defaults to seed 0).

    Returns:
        the drawn tiles, in draw order.

    Raises:
        GlcgeoError: for both or a bad budget, or more tiles than there are.

    """
    if label_fraction is not None and num_label_patches is not None:
        raise GlcgeoError('give a label fraction or a number of labelled patches')
    if label_fraction is None and num_label_patches is None:
        label_fraction = 1.0
    if num_label_patches is None:
        assert label_fraction is not None
        if not 0 < label_fraction <= 1:
            raise GlcgeoError(f'label fraction must be in (0, 1], got {label_fraction}')
        count = max(1, round(label_fraction * len(tiles)))
    else:
        count = num_label_patches
        if not 1 <= count <= len(tiles):
            raise GlcgeoError(
                f'{count} labelled patches asked for, the training area has '
                f'{len(tiles)}'
            )
    generator = generator or torch.Generator().manual_seed(0)
    order = torch.randperm(len(tiles), generator=generator).tolist()
    return [tiles[i] for i in order[:count]]
