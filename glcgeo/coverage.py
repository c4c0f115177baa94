"""Where a mosaic holds data, in coarse cells, stored for the occupied cells only.

A regional mosaic is often a few files far apart: its bounding box is mostly
empty. :class:`SparseCoverage` keeps the valid fraction of the cells that hold
data (row-major keys and values, with per-row prefix sums), so its memory and the
cost of building it grow with the data, never with the bounding box. It answers
the two questions window drawing asks: the mean coverage of a box of cells
(:meth:`SparseCoverage.box_means`) and a cell drawn in proportion to its valid
area (:meth:`SparseCoverage.cell_weights`). A file's share of it is a
:class:`CellBlock`: its footprint's (:func:`footprint_block`), or its valid
mask's, read at reduced resolution (:func:`mask_block`).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from affine import Affine

from .geometry import PixelGrid

__all__ = ['CellBlock', 'SparseCoverage', 'footprint_block', 'mask_block']


@dataclass(frozen=True)
class CellBlock:
    """The coverage of one file: a dense block of cells of the coverage grid.

    Attributes:
        row: the block's first row in the coverage grid.
        col: the block's first column.
        fractions: [rows, cols] float32 area of each cell holding the file's
            data, as a fraction of the cell, in [0, 1].

    """

    row: int
    col: int
    fractions: np.ndarray


@dataclass(frozen=True, eq=False)
class SparseCoverage:
    """Fraction of each coarse cell of a mosaic holding data, occupied cells only.

    Cells are those of :attr:`grid` (cell size in the mosaic CRS, origin at the
    mosaic's top-left corner), numbered row-major: cell ``(row, col)`` has key
    ``row * shape[1] + col``. Cells absent from :attr:`keys` hold no data.

    Attributes:
        grid: the cell grid, in the mosaic CRS.
        shape: (rows, cols) of the cell grid over the mosaic's bounding box (two
            integers; nothing of that size is allocated).
        keys: int64 sorted keys of the cells holding data.
        fractions: float32 fraction of each of those cells holding data, (0, 1].

    """

    grid: PixelGrid
    shape: tuple[int, int]
    keys: np.ndarray
    fractions: np.ndarray
    _prefix: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # Sums over a run of cells of one row are two lookups in these.
        prefix = np.zeros(len(self.fractions) + 1, dtype=np.float64)
        np.cumsum(self.fractions, dtype=np.float64, out=prefix[1:])
        object.__setattr__(self, '_prefix', prefix)

    @classmethod
    def from_blocks(
        cls, grid: PixelGrid, shape: tuple[int, int], blocks: Sequence[CellBlock]
    ) -> 'SparseCoverage':
        """Combine files' blocks: the valid areas add up, to at most the whole cell.

        Touching files fill the cells they share (two halves make a whole);
        overlapping files count their common valid area twice, which the cap at
        1 absorbs wherever one of them alone covers the cell.

        Args:
            grid: the cell grid.
            shape: (rows, cols) of the cell grid.
            blocks: each file's block of cells.

        Returns:
            the coverage of the occupied cells.

        """
        keys, values = [], []
        for block in blocks:
            rows, cols = np.nonzero(block.fractions > 0)
            keys.append((rows + block.row) * shape[1] + cols + block.col)
            values.append(block.fractions[rows, cols])
        if not keys:
            return cls(grid, shape, np.zeros(0, np.int64), np.zeros(0, np.float32))
        key = np.concatenate(keys).astype(np.int64)
        value = np.concatenate(values).astype(np.float32)
        order = np.argsort(key, kind='stable')
        key, value = key[order], value[order]
        unique, starts = np.unique(key, return_index=True)
        total = np.minimum(np.add.reduceat(value, starts), 1.0)
        return cls(grid, shape, unique, total.astype(np.float32))

    @property
    def nbytes(self) -> int:
        """Bytes held: proportional to the occupied cells."""
        return self.keys.nbytes + self.fractions.nbytes + self._prefix.nbytes

    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns of the occupied cells, in key order."""
        return np.divmod(self.keys, self.shape[1])

    def box_means(self, boxes: np.ndarray) -> np.ndarray:
        """Mean coverage of boxes of cells (empty cells count as 0).

        Args:
            boxes: [B, 4] int (col1, row1, col2, row2) cell boxes, end exclusive,
                inside the grid, each at least one cell.

        Returns:
            [B] float64 mean coverage of each box.

        """
        boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        means = np.empty(len(boxes))
        cols = self.shape[1]
        for i, (c1, r1, c2, r2) in enumerate(boxes.tolist()):
            starts = np.arange(r1, r2, dtype=np.int64) * cols
            bounds = np.searchsorted(self.keys, np.stack([starts + c1, starts + c2]))
            total = self._prefix[bounds[1]].sum() - self._prefix[bounds[0]].sum()
            means[i] = total / ((r2 - r1) * (c2 - c1))
        return means

    def restricted(self, keep: np.ndarray) -> 'SparseCoverage':
        """This coverage on the occupied cells where *keep* holds, else empty.

        Args:
            keep: [len(keys)] bool, one per occupied cell.

        Returns:
            the restricted coverage.

        """
        return SparseCoverage(
            self.grid, self.shape, self.keys[keep], self.fractions[keep]
        )


def _cell_span(
    x: float, y: float, cell: float, shape: tuple[int, int], start: bool
) -> tuple[int, int]:
    """The cell (col, row) holding a corner at (x, y) from the grid's origin.

    Args:
        x: distance right of the grid's left edge, in CRS units.
        y: distance below the grid's top edge.
        cell: cell size.
        shape: (rows, cols) of the grid.
        start: True for a top-left corner (first cell), False for a bottom-right
            one (last cell).

    Returns:
        (col, row) clamped inside the grid.
    """
    # A corner on a cell edge (within float error) belongs to one side only.
    rounding = math.floor if start else math.ceil
    offset = 1e-9 if start else -1e-9
    col = rounding(x / cell + offset) - (0 if start else 1)
    row = rounding(y / cell + offset) - (0 if start else 1)
    return (
        min(max(col, 0), shape[1] - 1),
        min(max(row, 0), shape[0] - 1),
    )


def _overlap_matrix(cells: np.ndarray, pixels: np.ndarray, cell: float) -> np.ndarray:
    """Overlap of cells with pixels along one axis, as a fraction of a cell.

    Args:
        cells: the cells' edges, increasing (one more than the cells).
        pixels: the pixels' edges, increasing, in the same units and origin.
        cell: cell size.

    Returns:
        [cells, pixels] float64 length shared by each cell and pixel, divided by
        *cell*; a row of pixels covering a cell sums to exactly 1.
    """
    low = np.maximum(cells[:-1, None], pixels[None, :-1])
    high = np.minimum(cells[1:, None], pixels[None, 1:])
    overlap = np.clip(high - low, 0.0, None) / cell
    # A cell inside the pixels is whole, whatever the rounding of their edges.
    inside = (cells[:-1] >= pixels[0] - 1e-9 * cell) & (
        cells[1:] <= pixels[-1] + 1e-9 * cell
    )
    total = overlap.sum(axis=1)
    overlap[inside] /= np.where(total[inside] > 0, total[inside], 1.0)[:, None]
    return overlap


def _cell_edges(
    box: np.ndarray, grid: PixelGrid, shape: tuple[int, int]
) -> tuple[int, int, np.ndarray, np.ndarray]:
    """The block of cells a footprint spans.

    Returns:
        (first row, first column, the block's column edges and row edges as
        distances right of and below the grid's corner).
    """
    left, bottom, right, top = box
    cell = grid.res[0]
    c0, r0 = _cell_span(left - grid.x0, grid.y0 - top, cell, shape, start=True)
    c1, r1 = _cell_span(right - grid.x0, grid.y0 - bottom, cell, shape, start=False)
    return r0, c0, np.arange(c0, c1 + 2) * cell, np.arange(r0, r1 + 2) * cell


def footprint_block(
    box: np.ndarray, grid: PixelGrid, shape: tuple[int, int]
) -> CellBlock:
    """The cells a file holding data everywhere covers, and how much of each.

    Args:
        box: the file's (left, bottom, right, top) in the grid's CRS.
        grid: the cell grid (square cells).
        shape: (rows, cols) of the cell grid.

    Returns:
        the file's block of cells: its footprint is its data, one "pixel" as
        large as the file.
    """
    left, bottom, right, top = box
    r0, c0, cells_x, cells_y = _cell_edges(box, grid, shape)
    cell = grid.res[0]
    along_x = _overlap_matrix(cells_x, np.array([left, right]) - grid.x0, cell)
    along_y = _overlap_matrix(cells_y, grid.y0 - np.array([top, bottom]), cell)
    return CellBlock(r0, c0, (along_y @ along_x.T).astype(np.float32))


def mask_block(
    box: np.ndarray,
    grid: PixelGrid,
    shape: tuple[int, int],
    mask: np.ndarray,
    transform: Affine,
    size: tuple[int, int],
) -> CellBlock:
    """The cells a file covers, and the area of each holding its data.

    Args:
        box: the file's (left, bottom, right, top) in the grid's CRS.
        grid: the cell grid (square cells).
        shape: (rows, cols) of the cell grid.
        mask: [rows, cols] float32 1.0 where the file holds data, read at
            reduced resolution over the whole file.
        transform: the file's north-up pixel -> map transform (full resolution).
        size: the file's (height, width) in full-resolution pixels.

    Returns:
        the file's block of cells: each cell's valid area, the mask's pixels
        weighted by their overlap with it.
    """
    r0, c0, cells_x, cells_y = _cell_edges(box, grid, shape)
    cell = grid.res[0]
    height, width = size
    pixels_x = transform.c + np.linspace(0, width, mask.shape[1] + 1) * transform.a
    pixels_y = transform.f + np.linspace(0, height, mask.shape[0] + 1) * transform.e
    along_x = _overlap_matrix(cells_x, pixels_x - grid.x0, cell)
    along_y = _overlap_matrix(cells_y, grid.y0 - pixels_y, cell)
    return CellBlock(r0, c0, (along_y @ mask @ along_x.T).astype(np.float32))
