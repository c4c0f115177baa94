"""A mosaic's index: its files' footprints in the mosaic CRS, and queries of them.

:func:`build_index` makes a :class:`~glcgeo.index_cache.MosaicIndex` from the
files' headers (:func:`~glcgeo.rasters.read_headers`): a file already on the
mosaic CRS's north-up grid is placed by its header alone, any other through the
warped VRT TorchGeo would read it with. :class:`Footprints` answers which files
a ground box reads, through a spatial index, so that a read's cost does not grow
with the number of files.
"""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import shapely
import torch
from pyproj import CRS as PROJ_CRS
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.features import geometry_mask
from rasterio.io import DatasetReader
from rasterio.transform import array_bounds
from rasterio.vrt import WarpedVRT
from torch import Tensor

from .errors import GlcgeoError
from .gdal_paths import gdal_reason
from .geometry import PixelGrid
from .index_cache import MosaicIndex
from .rasters import RasterHeader, check_band_counts, open_env

__all__ = [
    'MAX_PIXELS_PER_FILE_PIXEL',
    'Footprints',
    'build_index',
    'check_pixel_size',
    'first_crs',
]

#: Most pixels a read may make of one file pixel (100 x 100): beyond it a
#: pixel size was given in the wrong unit, and reads would take hours or
#: terabytes.
MAX_PIXELS_PER_FILE_PIXEL = 10_000


def check_pixel_size(
    res: float | tuple[float, float],
    native: tuple[float, float],
    extent: tuple[float, float],
    path: str,
) -> None:
    """Refuse a pixel size in the wrong unit: far below or above the files' own.

    Args:
        res: the pixel size asked for, in CRS units.
        native: the first file's pixel size in the same CRS.
        extent: the width and height of the files' bounds, in CRS units.
        path: the first file, named in the error.

    Raises:
        GlcgeoError: naming --res, if one file pixel would be read as more than
            :data:`MAX_PIXELS_PER_FILE_PIXEL`, or the files would be less than
            one pixel wide or high.
    """
    xres, yres = (res, res) if isinstance(res, int | float) else res
    xres, yres = float(xres), float(yres)
    per_pixel = native[0] / xres * native[1] / yres
    if per_pixel > MAX_PIXELS_PER_FILE_PIXEL:
        raise GlcgeoError(
            f'at a pixel size of {xres:g} (--res), each {native[0]:g} x '
            f'{native[1]:g} pixel of the files would be read as {per_pixel:,.0f}: '
            "give a pixel size near the files' own",
            path,
        )
    if extent[0] < xres or extent[1] < yres:
        raise GlcgeoError(
            f'at a pixel size of {xres:g} (--res), the files ({extent[0]:g} x '
            f'{extent[1]:g} CRS units) are less than one pixel: give a pixel size '
            "near the files' own",
            path,
        )


def first_crs(path: str, header: RasterHeader) -> PROJ_CRS:
    """The CRS of a mosaic's first file, as TorchGeo takes it (WKT2)."""
    # read_header refuses files without a CRS unless one is given.
    assert header.crs is not None, path
    with rasterio.Env(OSR_WKT_FORMAT='WKT2_2018'):
        return PROJ_CRS.from_user_input(header.crs)


def build_index(
    files: list[str],
    headers: Sequence[RasterHeader],
    crs: PROJ_CRS,
    res: float | tuple[float, float] | None,
    nodata: float | None,
    warp: Callable[[str, PROJ_CRS], DatasetReader | WarpedVRT],
) -> MosaicIndex:
    """Index the files: their footprints in *crs*, from their headers.

    A file in *crs* on a north-up grid is read as it is: its footprint is its
    bounds. Other files (another CRS, rotated, a nodata override) are opened
    through *warp*, as they will be read, for theirs.

    Args:
        files: the files, in mosaic order.
        headers: their headers, in the same order.
        crs: the mosaic CRS.
        res: the pixel size, or None for the first file's.
        nodata: the nodata value overriding the files' own, or None.
        warp: opens a file warped to a CRS (the mosaic's
            :meth:`~glcgeo.datasets.GeoTiffMosaic.warp_file`).

    Returns:
        the index.

    Raises:
        GlcgeoError: for files with different band counts, a file GDAL cannot
            reproject to *crs*, or a pixel size far below the files' own.
    """
    check_band_counts(files, headers)
    target = CRS.from_user_input(crs)
    same_crs: dict[str, bool] = {}
    bounds = np.empty((len(files), 4), dtype=np.float64)
    direct = np.zeros(len(files), dtype=bool)
    first_res: tuple[float, float] | None = None
    for i, (path, header) in enumerate(zip(files, headers, strict=True)):
        affine = header.transform
        if header.crs is not None:
            wkt = header.crs.to_wkt()
            if wkt not in same_crs:
                same_crs[wkt] = header.crs == target
        if (
            header.crs is not None
            and same_crs[wkt]
            and nodata is None
            and affine.b == affine.d == 0
            and affine.a > 0
            and affine.e < 0
        ):
            direct[i] = True
            bounds[i] = array_bounds(header.height, header.width, affine)
            file_res = (affine.a, -affine.e)
        else:
            try:
                with open_env(path), warp(path, crs) as vrt:
                    bounds[i] = tuple(vrt.bounds)
                    file_res = vrt.res
            except (rasterio.errors.RasterioError, CPLE_BaseError) as error:
                # Too far from the target CRS's area of use, GDAL cannot
                # place the file's footprint in it.
                raise GlcgeoError(
                    f'cannot be reprojected to {crs.name} ({gdal_reason(error)})',
                    path,
                ) from None
        first_res = first_res or file_res
    assert first_res is not None
    if res is None:
        res = first_res
    else:
        extent = (
            bounds[:, 2].max() - bounds[:, 0].min(),
            bounds[:, 3].max() - bounds[:, 1].min(),
        )
        check_pixel_size(res, first_res, extent, files[0])
    in_force = nodata if nodata is not None else headers[0].nodata
    return MosaicIndex(
        files=files,
        boxes=bounds,
        direct=direct,
        all_valid=direct
        & np.array([h.all_valid for h in headers], dtype=bool)
        & (in_force is None),
        crs=crs.to_wkt(),
        res=(
            (float(res), float(res))
            if isinstance(res, int | float)
            else (float(res[0]), float(res[1]))
        ),
        descriptions=list(headers[0].descriptions),
        nodata=headers[0].nodata,
        dtype=headers[0].dtype,
    )


class Footprints:
    """The files' footprints, and which of them a ground box reads.

    The spatial index is built on the first query of each process (and not
    pickled: DataLoader workers build their own).
    """

    def __init__(self, boxes: np.ndarray) -> None:
        """Initialize a new Footprints.

        Args:
            boxes: [N, 4] float64 each file's (left, bottom, right, top), in
                index order.
        """
        self.boxes = boxes
        self._tree: shapely.STRtree | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickle the boxes only."""
        return {'boxes': self.boxes, '_tree': None}

    def _query(self, xmin: float, ymin: float, xmax: float, ymax: float) -> np.ndarray:
        """Files whose box intersects a ground box's (edges included), in order."""
        if self._tree is None:
            self._tree = shapely.STRtree(shapely.box(*self.boxes.T))
        return np.sort(self._tree.query(shapely.box(xmin, ymin, xmax, ymax)))

    def overlapping(
        self, xmin: float, ymin: float, xmax: float, ymax: float
    ) -> np.ndarray:
        """The files whose footprint overlaps a ground box (not only touches it).

        Args:
            xmin: left edge, in the index's CRS.
            ymin: bottom edge.
            xmax: right edge.
            ymax: top edge.

        Returns:
            int64 positions of the files in the index, in index order.
        """
        found = self._query(xmin, ymin, xmax, ymax)
        left, bottom, right, top = self.boxes[found].T
        return found[(left < xmax) & (xmin < right) & (bottom < ymax) & (ymin < top)]

    def intersecting(
        self, xmin: float, ymin: float, xmax: float, ymax: float
    ) -> np.ndarray:
        """The files whose footprint intersects a ground box, touching included.

        The files TorchGeo's ``RasterDataset`` reads for a box (its index's
        ``cx`` query).

        Args:
            xmin: left edge, in the index's CRS.
            ymin: bottom edge.
            xmax: right edge.
            ymax: top edge.

        Returns:
            int64 positions of the files in the index, in index order.
        """
        found = self._query(xmin, ymin, xmax, ymax)
        left, bottom, right, top = self.boxes[found].T
        keep = (left <= xmax) & (xmin <= right) & (bottom <= ymax) & (ymin <= top)
        return found[keep]

    def on_files(
        self,
        bounds: tuple[float, float, float, float],
        res: tuple[float, float],
    ) -> Tensor:
        """Pixels of a read whose centre lies on a file's footprint.

        Args:
            bounds: (xmin, ymin, xmax, ymax) of the read.
            res: (x, y) pixel size of the read.

        Returns:
            a boolean [H, W] mask of the read's pixels (sized as
            :meth:`PixelGrid.window <glcgeo.geometry.PixelGrid.window>` sizes
            the read), True on a file.
        """
        xmin, ymin, xmax, ymax = bounds
        grid = PixelGrid(x0=xmin, y0=ymax, res=res)
        window = grid.window(xmin, ymin, xmax, ymax)
        shape = (int(window.height), int(window.width))
        boxes = self.boxes[self.overlapping(xmin, ymin, xmax, ymax)]
        left, bottom, right, top = boxes.T
        if np.any((left <= xmin) & (bottom <= ymin) & (xmax <= right) & (ymax <= top)):
            return torch.ones(shape, dtype=torch.bool)  # one file covers the read
        if len(boxes) == 0:
            return torch.zeros(shape, dtype=torch.bool)
        on_files = geometry_mask(
            shapely.box(*boxes.T),
            out_shape=shape,
            transform=grid.affine,
            invert=True,
        )
        return torch.from_numpy(on_files)
