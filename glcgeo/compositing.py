"""Compositing open files into one read of a ground box, first file on top.

:class:`Compositor` gives what ``rasterio.merge.merge`` (method 'first', the
way TorchGeo's ``RasterDataset`` mosaics files) gives: the output has the first
file's dtype, is filled with its nodata value (0 if none), and each file fills
the pixels still nodata where it has data. Files that lie on the read's pixel
grid (the usual case: tiles of one grid read at their own pixel size) are read
by whole-pixel windows straight into the output, without rasterio.merge's
resampled reads of fractional windows (which, on some grids, take a
neighbouring pixel) or its copies; any other file goes through rasterio.merge.
"""

import math
from collections.abc import Sequence

import numpy as np
import rasterio.merge
import torch
from rasterio.enums import MaskFlags, Resampling
from rasterio.io import DatasetReader
from rasterio.merge import copy_first
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from torch import Tensor
from torchgeo.datasets.utils import array_to_tensor

from .geometry import PixelGrid
from .rasters import fits_dtype

__all__ = ['PLAIN_MASKS', 'Compositor']

#: Band mask flags under which a masked pixel holds the file's nodata value (or
#: none is masked), so that a plain read equals a masked one filled with nodata.
PLAIN_MASKS = ([MaskFlags.all_valid], [MaskFlags.nodata])

#: An open file, in the CRS of the read (as it is, or warped).
type Handle = DatasetReader | WarpedVRT

#: Where a file falls in a read: (window of the file, rows, columns of the read).
type Piece = tuple[Window, slice, slice]


def _overlap(a: slice, b: slice) -> bool:
    """Whether two ranges of indexes share one."""
    return a.start < b.stop and b.start < a.stop


def grid_piece(handle: Handle, grid: PixelGrid, shape: tuple[int, int]) -> Piece | None:
    """Where an open file falls in a read, if it lies on the read's pixel grid.

    Args:
        handle: the open file, in the read's CRS.
        grid: the read's pixel grid (its origin the read's top-left corner).
        shape: (rows, cols) of the read.

    Returns:
        (window of the file, rows of the read, columns of the read), or None if
        the file's pixels are not whole pixels of the read.
    """
    xres, yres = grid.res
    affine = handle.transform
    if not (
        affine.b == affine.d == 0
        and math.isclose(affine.a, xres, rel_tol=1e-9)
        and math.isclose(-affine.e, yres, rel_tol=1e-9)
    ):
        return None
    col, row = (affine.c - grid.x0) / xres, (grid.y0 - affine.f) / yres
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    col, row = round(col), round(row)
    c0, c1 = max(col, 0), min(col + handle.width, shape[1])
    r0, r1 = max(row, 0), min(row + handle.height, shape[0])
    window = Window(c0 - col, r0 - row, max(c1 - c0, 0), max(r1 - r0, 0))
    return window, slice(r0, r1), slice(c0, c1)


class Compositor:
    """Reads ground boxes from a dataset's open files, first file on top.

    Keeps what it learns of each file (its bands' mask flags) between reads.
    """

    def __init__(self, bands: Sequence[int]) -> None:
        """Initialize a new Compositor.

        Args:
            bands: the 1-based bands every read returns, in order.
        """
        self.bands = list(bands)
        self._mask_flags: dict[str, list[list[MaskFlags]]] = {}

    def __getstate__(self) -> dict[str, object]:
        """Pickle without what was learnt of the files: another process reads anew."""
        return {'bands': self.bands, '_mask_flags': {}}

    def read(
        self,
        handles: Sequence[Handle],
        bounds: tuple[float, float, float, float],
        res: tuple[float, float],
        resampling: Resampling,
    ) -> Tensor:
        """Read a ground box from open files, first file on top.

        Files on the read's pixel grid are read by whole-pixel windows; if one
        is not (or the first file's nodata value does not fit its dtype), all
        go through :meth:`merge`.

        Args:
            handles: the open files the box overlaps, in index order, in the
                read's CRS.
            bounds: (xmin, ymin, xmax, ymax) of the box.
            res: (x, y) pixel size of the read.
            resampling: how :meth:`merge` resamples files off the grid.

        Returns:
            [C, H, W] raw values in the first file's dtype (as TorchGeo's
            ``array_to_tensor`` maps it for files off the grid), nodata where no
            file has data; H and W as :meth:`PixelGrid.window
            <glcgeo.geometry.PixelGrid.window>` sizes the box.
        """
        xmin, ymin, xmax, ymax = bounds
        grid = PixelGrid(x0=xmin, y0=ymax, res=res)
        window = grid.window(xmin, ymin, xmax, ymax)
        shape = (int(window.height), int(window.width))
        first = handles[0]
        if fits_dtype(first.nodata, first.dtypes[0]):
            pieces = [grid_piece(handle, grid, shape) for handle in handles]
            if all(piece is not None for piece in pieces):
                return self._composite(handles, pieces, shape)  # type: ignore[arg-type]
        return self.merge(handles, bounds, res, resampling)

    def merge(
        self,
        handles: Sequence[Handle],
        bounds: tuple[float, float, float, float],
        res: tuple[float, float],
        resampling: Resampling,
    ) -> Tensor:
        """Read a ground box with ``rasterio.merge.merge``, as TorchGeo reads it.

        Args:
            handles: the open files, in index order, in the read's CRS.
            bounds: (xmin, ymin, xmax, ymax) of the box.
            res: (x, y) pixel size of the read.
            resampling: how files are resampled onto the read's grid.

        Returns:
            [C, H, W] values, as TorchGeo's ``array_to_tensor`` maps them.
        """
        data, _ = rasterio.merge.merge(
            list(handles),
            bounds=bounds,
            res=res,
            indexes=self.bands,
            resampling=resampling,
        )
        return array_to_tensor(data)

    def _composite(
        self, handles: Sequence[Handle], pieces: Sequence[Piece], shape: tuple[int, int]
    ) -> Tensor:
        """Composite whole-pixel reads of files, first file on top.

        Args:
            handles: the open files, in index order.
            pieces: where each file falls in the output (see :func:`grid_piece`).
            shape: (rows, cols) of the output.

        Returns:
            [C, rows, cols] raw values in the first file's dtype.
        """
        first = handles[0]
        nodata = 0.0 if first.nodata is None else first.nodata
        dtype = first.dtypes[0]
        window, rows, cols = pieces[0]
        if (rows.stop - rows.start, cols.stop - cols.start) == shape and (
            self._plain_masks(first)
        ):
            # The first file covers the output and its masked pixels hold the
            # fill: its plain read is the composite (most views, on big files).
            data = first.read(self.bands, window=window, out_dtype=dtype)
            return torch.from_numpy(data)
        plain = [self._fills_plainly(handle, nodata) for handle in handles]
        filled = [piece for piece in pieces if _area(*piece[1:]) > 0]
        bands_shape = (len(self.bands), *shape)
        if (
            all(plain)
            and sum(_area(*piece[1:]) for piece in filled) == shape[0] * shape[1]
            and not _any_overlap(filled)
        ):
            # Files side by side, each read plainly, that cover the output
            # (touching tiles): every pixel is read, none needs the fill first.
            out = np.empty(bands_shape, dtype=dtype)
        else:
            out = np.full(bands_shape, nodata, dtype=dtype)
        placed: list[tuple[slice, slice]] = []
        for handle, (window, rows, cols), plainly in zip(
            handles, pieces, plain, strict=True
        ):
            if window.width == 0 or window.height == 0:
                continue
            region = out[:, rows, cols]
            if plainly and not any(
                _overlap(rows, r) and _overlap(cols, c) for r, c in placed
            ):
                # Where no file above lies, the output holds the fill, and so do
                # this file's masked pixels: its plain read, straight into the
                # output, is the composite there.
                handle.read(self.bands, window=window, out=region)
            else:
                if math.isnan(nodata):
                    still_nodata = np.isnan(region)
                elif np.issubdtype(out.dtype, np.integer):
                    still_nodata = region == nodata
                else:
                    still_nodata = np.isclose(region, nodata)
                if still_nodata.any():  # else the files above cover this one here
                    data = handle.read(self.bands, window=window, masked=True)
                    copy_first(region, data, still_nodata, np.ma.getmaskarray(data))
            placed.append((rows, cols))
        return torch.from_numpy(out)

    def _fills_plainly(self, handle: Handle, fill: float) -> bool:
        """Whether a file's plain read equals its masked read filled with *fill*.

        Args:
            handle: the open file.
            fill: the composite's fill value (the first file's nodata, or 0).

        Returns:
            True if none of its selected bands' pixels is masked, or the masked
            ones hold its nodata value and that is *fill*.
        """
        flags = self._band_mask_flags(handle)
        if all(flags[i - 1] == [MaskFlags.all_valid] for i in self.bands):
            return True
        nodata = handle.nodata
        return (
            self._plain_masks(handle)
            and nodata is not None
            and (nodata == fill or (math.isnan(nodata) and math.isnan(fill)))
        )

    def _plain_masks(self, handle: Handle) -> bool:
        """Whether a plain read of an open file is its masked read filled with nodata.

        Args:
            handle: the open file.

        Returns:
            True if every selected band's masked pixels hold the file's nodata
            value, or none is masked.
        """
        flags = self._band_mask_flags(handle)
        return all(flags[i - 1] in PLAIN_MASKS for i in self.bands)

    def _band_mask_flags(self, handle: Handle) -> list[list[MaskFlags]]:
        """The mask flags of every band of an open file, read once per file."""
        # Rasterio builds the flags of every band anew at each access (~20 us, a
        # tenth of a view's read).
        flags = self._mask_flags.get(handle.name)
        if flags is None:
            flags = self._mask_flags[handle.name] = handle.mask_flag_enums
        return flags


def _area(rows: slice, cols: slice) -> int:
    """Pixels of a piece of a read."""
    return (rows.stop - rows.start) * (cols.stop - cols.start)


def _any_overlap(pieces: Sequence[Piece]) -> bool:
    """Whether any two pieces of a read share a pixel."""
    return any(
        _overlap(a[1], b[1]) and _overlap(a[2], b[2])
        for i, a in enumerate(pieces)
        for b in pieces[i + 1 :]
    )
