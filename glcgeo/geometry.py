"""Geometry as data: pixel grids, ground boxes and their projection into views.

Conventions used throughout glcgeo:

* Map coordinates are float64 in the dataset CRS; a *ground box* is
  ``(xmin, ymin, xmax, ymax)`` in those units.
* Pixel boxes are ``(x1, y1, x2, y2)`` = (column, row, column, row) with the
  pixel-edge convention: pixel (row i, column j) covers ``[j, j + 1) x [i, i + 1)``.
* Affine transforms are rasterio's (pixel -> map), north-up.
* Augmentation matrices are kornia's 3x3 matrices, which act on pixel *centres*
  (x' = M @ [x, y, 1] with x the column index of a pixel centre).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from affine import Affine
from rasterio.windows import Window
from torch import Tensor

__all__ = [
    'PixelBox',
    'PixelGrid',
    'ground_to_pixel_boxes',
    'project_ground_boxes',
    'transform_pixel_boxes',
]

#: A pixel box (col1, row1, col2, row2) of a grid, pixel-edge convention.
PixelBox = tuple[int, int, int, int]


@dataclass(frozen=True)
class PixelGrid:
    """A north-up pixel grid in a map CRS.

    Attributes:
        x0: map x of the grid's left edge (CRS units).
        y0: map y of the grid's top edge (CRS units).
        res: (x, y) pixel size in CRS units, both positive.

    """

    x0: float
    y0: float
    res: tuple[float, float]

    @property
    def affine(self) -> Affine:
        """The grid's pixel -> map transform."""
        return Affine(self.res[0], 0.0, self.x0, 0.0, -self.res[1], self.y0)

    def to_map(self, col: float, row: float) -> tuple[float, float]:
        """Map coordinates of a pixel-edge position.

        Args:
            col: column position (pixel edges at integers).
            row: row position.

        Returns:
            (x, y) in the grid's CRS, float64.

        """
        return self.x0 + col * self.res[0], self.y0 - row * self.res[1]

    def window(self, xmin: float, ymin: float, xmax: float, ymax: float) -> Window:
        """The window of this grid a read of a ground box fills.

        Its offsets are the box's top-left corner at the nearest pixel edge and
        its size the box's extent in pixels, rounded: the size ``rasterio.merge``
        (and so TorchGeo) gives a read of the box at the grid's pixel size, which
        every read of glcgeo matches. A box on the grid (within float error)
        gives its exact window, as :meth:`inner_window` does.

        Args:
            xmin: left edge, in the grid's CRS.
            ymin: bottom edge.
            xmax: right edge.
            ymax: top edge.

        Returns:
            the window, in grid pixels (offsets may be negative: left of or
            above the grid's origin).

        """
        xres, yres = self.res
        return Window(
            round((xmin - self.x0) / xres),
            round((self.y0 - ymax) / yres),
            round((xmax - xmin) / xres),
            round((ymax - ymin) / yres),
        )

    def inner_window(
        self, xmin: float, ymin: float, xmax: float, ymax: float
    ) -> Window:
        """The whole pixels of this grid inside a ground box.

        A partial pixel is no pixel: a mosaic's windows and tiles hold none
        beyond its bounds. An edge within float error (1e-6 pixel) of a pixel
        edge is on it, so a box on the grid gives its exact window, as
        :meth:`window` does.

        Args:
            xmin: left edge, in the grid's CRS.
            ymin: bottom edge.
            xmax: right edge.
            ymax: top edge.

        Returns:
            the window, in grid pixels (empty if no whole pixel is inside).

        """
        xres, yres = self.res
        col0 = math.ceil((xmin - self.x0) / xres - 1e-6)
        row0 = math.ceil((self.y0 - ymax) / yres - 1e-6)
        col1 = math.floor((xmax - self.x0) / xres + 1e-6)
        row1 = math.floor((self.y0 - ymin) / yres + 1e-6)
        return Window(col0, row0, max(col1 - col0, 0), max(row1 - row0, 0))

    def window_bounds(self, window: Window) -> tuple[float, float, float, float]:
        """The ground box of a window of this grid.

        Args:
            window: window of this grid, in grid pixels.

        Returns:
            (xmin, ymin, xmax, ymax) in the grid's CRS, float64.

        """
        xmin, ymax = self.to_map(window.col_off, window.row_off)
        xmax, ymin = self.to_map(
            window.col_off + window.width, window.row_off + window.height
        )
        return xmin, ymin, xmax, ymax

    def window_transform(self, window: Window, size: int) -> Affine:
        """Transform of a view made of *window* resized to *size* x *size* pixels.

        Args:
            window: window of this grid, in grid pixels.
            size: the view's width and height in pixels.

        Returns:
            the view's pixel -> map transform.

        """
        box = (window.col_off, window.row_off, window.width, window.height)
        return Affine(*self.window_affines(np.array([box]), np.array([size]))[0])

    def window_affines(self, windows: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """:meth:`window_transform` of many windows at once.

        Args:
            windows: [B, 4] (col_off, row_off, width, height) in grid pixels.
            sizes: [B] each view's width and height in pixels.

        Returns:
            [B, 6] float64 (a, b, c, d, e, f) of each view's pixel -> map transform.

        """
        col, row, width, height = np.asarray(windows, dtype=np.float64).T
        x, y = self.to_map(col, row)  # type: ignore[arg-type]
        zero = np.zeros(len(col))
        a = self.res[0] * width / sizes
        e = -self.res[1] * height / sizes
        return np.stack([a, zero, x, zero, e, y], axis=1)

    def boxes_to_map(
        self, boxes: np.ndarray | Sequence[tuple[int, int, int, int]]
    ) -> np.ndarray:
        """Convert pixel boxes of this grid into ground boxes.

        Args:
            boxes: [R, 4] (col1, row1, col2, row2) in grid pixels.

        Returns:
            [R, 4] float64 (xmin, ymin, xmax, ymax) in the grid's CRS.

        """
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        xmin, ymax = self.to_map(b[:, 0], b[:, 1])  # type: ignore[arg-type]
        xmax, ymin = self.to_map(b[:, 2], b[:, 3])  # type: ignore[arg-type]
        return np.stack([xmin, ymin, xmax, ymax], axis=1)


def ground_to_pixel_boxes(boxes: np.ndarray, affine: Affine | np.ndarray) -> np.ndarray:
    """Project ground boxes into the pixels of a north-up view (or of many).

    Args:
        boxes: [R, 4] (xmin, ymin, xmax, ymax) in the view's CRS, or [B, R, 4]
            with one view per leading index.
        affine: the view's pixel -> map transform (north-up, no rotation), or
            [B, 6] (a, b, c, d, e, f) of each view's.

    Returns:
        [R, 4] (or [B, R, 4]) float64 (x1, y1, x2, y2) in view pixels, pixel-edge
        convention.

    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if isinstance(affine, Affine):
        boxes = boxes.reshape(-1, 4)
        a, c, e, f = (np.float64(v) for v in (affine.a, affine.c, affine.e, affine.f))
    else:
        a, _, c, _, e, f = (v[:, None] for v in np.asarray(affine, np.float64).T)
    # The north-up inverse, with the operations of affine's own ~ and @.
    idet = 1.0 / (a * e)
    ra, re = e * idet, a * idet
    rc, rf = -c * ra, -f * re
    x1, y1 = boxes[..., 0] * ra + rc, boxes[..., 3] * re + rf
    x2, y2 = boxes[..., 2] * ra + rc, boxes[..., 1] * re + rf
    return np.stack([x1, y1, x2, y2], axis=-1)


def transform_pixel_boxes(boxes: Tensor, matrix: Tensor) -> Tensor:
    """Move pixel boxes through a recorded augmentation (flips, rot90, scaling).

    The matrix acts on pixel centres (kornia's convention); box edges are
    half a pixel outside the centres of the boxes' first and last pixels, so the
    corners are shifted to centres, transformed, and shifted back.

    Args:
        boxes: [B, R, 4] (x1, y1, x2, y2) in pixels of the un-augmented view.
        matrix: [B, 3, 3] augmentation matrices (un-augmented -> augmented pixels).

    Returns:
        [B, R, 4] axis-aligned boxes in pixels of the augmented view (exact for
        flips, 90-degree rotations and axis-aligned scaling).

    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    # The four corners, as pixel-centre coordinates, [B, R, 4 corners, 3].
    corners = (
        torch.stack(
            [
                torch.stack([x1, y1], -1),
                torch.stack([x2, y1], -1),
                torch.stack([x1, y2], -1),
                torch.stack([x2, y2], -1),
            ],
            dim=-2,
        )
        - 0.5
    )
    ones = torch.ones_like(corners[..., :1])
    homogeneous = torch.cat([corners, ones], -1).to(matrix.dtype)
    moved = torch.einsum('bij,brkj->brki', matrix, homogeneous)[..., :2] + 0.5
    lo = moved.amin(dim=-2)
    hi = moved.amax(dim=-2)
    return torch.cat([lo, hi], -1).to(boxes.dtype)


def project_ground_boxes(
    boxes: np.ndarray, affine: Affine, matrix: Tensor | None = None
) -> Tensor:
    """Project ground boxes into an augmented view: the one projection of glcgeo.

    Args:
        boxes: [R, 4] ground boxes (xmin, ymin, xmax, ymax) in the view's CRS.
        affine: the un-augmented view's pixel -> map transform.
        matrix: [3, 3] recorded augmentation matrix (pixel centres), or None.

    Returns:
        [R, 4] float64 (x1, y1, x2, y2) in the augmented view's pixels.

    """
    pixels = torch.from_numpy(ground_to_pixel_boxes(boxes, affine))
    if matrix is None:
        return pixels
    return transform_pixel_boxes(pixels[None], matrix[None].double())[0]
