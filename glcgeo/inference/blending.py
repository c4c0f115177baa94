"""Blending overlapping tile predictions without seams, in a row band.

Each tile's class scores are weighted by a 2-D Hann window: highest in the tile's
centre, falling towards its edges, where pixels lack context and a neighbouring
tile, in which they lie more centrally, takes over. Wherever tiles overlap, the
blend changes smoothly, so no seam appears. The halves of the window facing the
scene's edge are flat instead, as no other tile covers those pixels, and the window
is sampled at pixel centres, so it never reaches zero: every covered pixel has a
positive total weight.

:class:`RowBandAccumulator` sums weighted scores for the band of scene rows that
tiles still in progress cover and hands finished rows out, so memory grows with
the tile height and scene width, never with the scene height. It works on the
model's device: scores never go back to the host.
"""

import math

import numpy as np
import torch
from rasterio.windows import Window
from torch import Tensor

__all__ = ['RowBandAccumulator', 'hann_window', 'tile_weights']


def hann_window(length: int, taper_start: bool, taper_end: bool) -> np.ndarray:
    """Compute a 1-D Hann window, optionally flat on either half.

    Values are ``sin(pi (i + 0.5) / length) ** 2``, sampled at pixel centres, so
    they lie in (0, 1].

    Args:
        length: number of pixels.
        taper_start: fall towards the start (False: 1 from the centre to the start,
            for a side on the scene's edge).
        taper_end: fall towards the end (False: 1 from the centre to the end).

    Returns:
        float32 weights of shape (length,).

    """
    weights = np.sin(math.pi * (np.arange(length) + 0.5) / length) ** 2
    centre = length // 2
    if not taper_start:
        weights[:centre] = 1
    if not taper_end:
        weights[centre:] = 1
    return weights.astype(np.float32)


def tile_weights(
    height: int, width: int, edges: tuple[bool, bool, bool, bool]
) -> np.ndarray:
    """Compute 2-D tile weights: the outer product of two :func:`hann_window`.

    Args:
        height: tile height in pixels.
        width: tile width in pixels.
        edges: whether the tile touches the scene's (top, bottom, left, right) edge;
            those sides are not tapered.

    Returns:
        float32 weights of shape (height, width) in (0, 1].

    """
    top, bottom, left, right = edges
    rows = hann_window(height, not top, not bottom)
    cols = hann_window(width, not left, not right)
    return np.outer(rows, cols)


class RowBandAccumulator:
    """Weighted sums of tile scores over a band of scene rows, on a torch device.

    The band starts at scene row :attr:`top` and grows downward as tiles are added;
    :meth:`pop` hands out finished rows from its top, as views of the buffers
    valid until the band next changes, and they are dropped then. The buffers
    are allocated once for the deepest band seen and reused: finished rows are
    dropped by moving the unfinished ones up, so that predicting a scene allocates
    nothing per tile.

    .. versionadded:: 0.1
    """

    def __init__(
        self,
        width: int,
        channels: int,
        top: int = 0,
        device: torch.device | str | None = None,
        capacity: int = 0,
    ) -> None:
        """Initialize a new RowBandAccumulator.

        Args:
            width: scene width in pixels.
            channels: number of score channels (classes).
            top: first scene row of the band.
            device: where the sums are kept (default: the CPU).
            capacity: rows to allocate up front, the deepest band expected (the
                buffers grow beyond it if need be: growing copies them).

        """
        self.top = top
        #: Rows of the band in use, from :attr:`top`; the buffers' rows below
        #: them are zero.
        self.rows = 0
        # Rows handed out by the last pop, still at the buffers' top until dropped.
        self._handed_out = 0
        # Classes first, as tiles' scores and the probability file have them.
        self.scores = torch.zeros((channels, capacity, width), device=device)
        self.weights = torch.zeros((capacity, width), device=device)
        self.valid = torch.zeros((capacity, width), dtype=torch.bool, device=device)
        # A tile's weighted scores, before they are added to the band.
        self._product = torch.zeros((channels, 0, 0), device=device)

    @property
    def capacity(self) -> int:
        """Rows the buffers hold: the deepest band seen so far."""
        return len(self.weights)

    def _drop_handed_out(self) -> None:
        """Move the unfinished rows up over the rows the last pop handed out."""
        count, self._handed_out = self._handed_out, 0
        if not count:
            return
        for rows_first in (self.scores.transpose(0, 1), self.weights, self.valid):
            unfinished = rows_first[count : count + self.rows]
            # Overlapping source and target need a copy in between.
            rows_first[: self.rows] = (
                unfinished.clone() if count < self.rows else unfinished
            )
            rows_first[self.rows : count + self.rows] = 0

    def _reserve(self, end: int) -> None:
        """Make the band reach scene row *end* (exclusive), growing the buffers."""
        self._drop_handed_out()
        self.rows = max(self.rows, end - self.top)
        extra = self.rows - self.capacity
        if extra > 0:
            channels, _, width = self.scores.shape
            self.scores = torch.cat(
                [self.scores, self.scores.new_zeros((channels, extra, width))], dim=1
            )
            self.weights, self.valid = (
                torch.cat([t, t.new_zeros((extra, width))])
                for t in (self.weights, self.valid)
            )

    def add(
        self, window: Window, scores: Tensor, weights: Tensor, valid: Tensor
    ) -> None:
        """Add one tile's scores.

        Args:
            window: the tile's window in the scene; must not start above :attr:`top`.
            scores: [C, H, W] class scores (e.g. probabilities) of the tile.
            weights: [H, W] blending weights of the tile.
            valid: [H, W] True where the input has data.

        """
        row_off = int(window.row_off) - self.top
        col_off = int(window.col_off)
        height, width = weights.shape
        self._reserve(self.top + row_off + height)
        rows = slice(row_off, row_off + height)
        cols = slice(col_off, col_off + width)
        if self._product.shape[1] < height or self._product.shape[2] < width:
            self._product = scores.new_empty((len(scores), height, width))
        product = self._product[:, :height, :width]
        # The product rounded to float32, then the sum: as scores * weights would.
        torch.mul(scores, weights, out=product)
        self.scores[:, rows, cols] += product
        self.weights[rows, cols] += weights
        self.valid[rows, cols] |= valid

    # Buffers grown while a batch is predicted are inference tensors.
    @torch.inference_mode()
    def pop(self, end: int, normalize: bool = True) -> tuple[int, Tensor, Tensor]:
        """Remove the band's rows above scene row *end* and return their result.

        Args:
            end: scene row (exclusive) up to which all tiles have been added.
            normalize: divide the weighted sums of scores by the sums of
                weights (blended scores); False skips the division where only
                the order of the classes matters (each pixel's weights are
                positive, so they do not change which class scores highest).

        Returns:
            (first scene row, [C, N, W] blended scores (or weighted sums), [N, W]
            valid mask) for the N = ``end - top`` finished rows (N may be 0),
            classes first; views of the buffers, valid until the band next
            changes. Scores are 0 where no tile contributed.

        """
        count = max(0, end - self.top)
        self._reserve(end)
        scores = self.scores[:, :count]
        if normalize:
            # In place: the rows are dropped at the next change anyway.
            scores.div_(self.weights[:count].clamp_min(1e-12))
        result = (self.top, scores, self.valid[:count])
        self.top += count
        self.rows -= count
        self._handed_out = count
        return result
