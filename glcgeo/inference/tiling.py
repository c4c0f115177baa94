"""A grid of overlapping tiles over a raster, as rasterio windows.

Tiles are laid out row by row (top to bottom, left to right) with a fixed stride
of ``tile_size - overlap`` pixels. The last tile of each row and column is shifted
inward so that it ends exactly at the scene's edge: every tile lies inside the
scene, so there is no padding with fill values (black borders) except in a scene
smaller than one tile, where the tile is the whole scene.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass

from rasterio.windows import Window

from ..errors import GlcgeoError

__all__ = ['Tile', 'TileGrid', 'tile_offsets']


def tile_offsets(length: int, tile_size: int, overlap: int) -> list[int]:
    """Compute the start offsets of overlapping tiles covering ``[0, length)``.

    Args:
        length: extent to cover, in pixels (> 0).
        tile_size: tile extent in pixels; clamped to *length*.
        overlap: pixels shared by consecutive tiles (at least; the last tile is
            shifted inward, so it may share more).

    Returns:
        increasing offsets in pixels; the last one is ``length - min(tile_size,
        length)``.

    """
    size = min(tile_size, length)
    if size == length:
        return [0]
    stride = tile_size - overlap
    count = math.ceil((length - size) / stride) + 1
    return [min(i * stride, length - size) for i in range(count)]


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TileGrid`.

    Attributes:
        window: the tile's pixel window in the scene.
        row: index of the tile's row in the grid (0 = top).
        last_in_row: whether no tile follows in the same grid row.
        edges: whether the tile touches the scene's (top, bottom, left, right) edge.

    """

    window: Window
    row: int
    last_in_row: bool
    edges: tuple[bool, bool, bool, bool]


class TileGrid:
    """Overlapping tiles covering a scene, row by row.

    All tiles have the same size, ``min(tile_size, height)`` by
    ``min(tile_size, width)`` pixels, so they stack into batches. A tile size that
    is not a multiple of *multiple* (a model's output stride) is rounded up and the
    extra pixels widen the overlap: the stride and the number of tiles stay as
    asked, and the model sees real neighbouring pixels instead of padding.

    Example::

        grid = TileGrid(height=640, width=640, tile_size=512, overlap=128)
        for tile in grid:
            image = src.read(window=tile.window)

    .. versionadded:: 0.1
    """

    def __init__(
        self, height: int, width: int, tile_size: int, overlap: int, multiple: int = 1
    ) -> None:
        """Initialize a new TileGrid.

        Args:
            height: scene height in pixels.
            width: scene width in pixels.
            tile_size: tile side in pixels.
            overlap: pixels shared by neighbouring tiles, ``0 <= overlap < tile_size``.
            multiple: round the tile side up to a multiple of this many pixels.

        Raises:
            GlcgeoError: for an empty scene or invalid tile size or overlap.

        """
        if height < 1 or width < 1:
            raise GlcgeoError(f'empty scene ({width} x {height} pixels)')
        if tile_size < 1:
            raise GlcgeoError(f'tile size must be positive, got {tile_size}')
        if not 0 <= overlap < tile_size:
            raise GlcgeoError(
                f'overlap must be in [0, tile size {tile_size}), got {overlap}'
            )
        rounded = math.ceil(tile_size / multiple) * multiple
        overlap += rounded - tile_size
        tile_size = rounded
        self.height = height
        self.width = width
        self.tile_height = min(tile_size, height)
        self.tile_width = min(tile_size, width)
        self.row_offsets = tile_offsets(height, tile_size, overlap)
        self.col_offsets = tile_offsets(width, tile_size, overlap)

    def __len__(self) -> int:
        """Count the tiles."""
        return len(self.row_offsets) * len(self.col_offsets)

    def __iter__(self) -> Iterator[Tile]:
        """Iterate over tiles row by row.

        Yields:
            each tile, top row first, left to right.

        """
        last_row = len(self.row_offsets) - 1
        last_col = len(self.col_offsets) - 1
        for i, row_off in enumerate(self.row_offsets):
            for j, col_off in enumerate(self.col_offsets):
                yield Tile(
                    window=Window(col_off, row_off, self.tile_width, self.tile_height),
                    row=i,
                    last_in_row=j == last_col,
                    edges=(i == 0, i == last_row, j == 0, j == last_col),
                )

    def rows_finished(self, tile: Tile) -> int:
        """Count the leading scene rows that no tile after *tile* touches.

        Args:
            tile: a tile of this grid; all tiles before it are done too.

        Returns:
            the number of leading scene rows whose prediction is complete.

        """
        if not tile.last_in_row:
            return self.row_offsets[tile.row]
        if tile.row + 1 < len(self.row_offsets):
            return self.row_offsets[tile.row + 1]
        return self.height
