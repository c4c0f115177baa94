"""The private members of TorchGeo that glcgeo relies on, each behind one function.

:class:`~glcgeo.datasets.GeoTiffMosaic` is a TorchGeo ``RasterDataset`` built
from its own index (TorchGeo's constructor would open every file twice more),
and it opens files as TorchGeo does. Those uses reach members TorchGeo does not
publish; they are all here, so that a TorchGeo release that changes one breaks
one function, and ``tests/test_torchgeo_adapter.py`` (one test per member)
names it. Written against TorchGeo 0.10 (``pyproject.toml`` pins the range).
"""

from collections.abc import Sequence
from typing import Any

from geopandas import GeoDataFrame
from pyproj import CRS as PROJ_CRS
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from torchgeo.datasets import GeoDataset, RasterDataset
from torchgeo.datasets.utils import GeoSlice

__all__ = [
    'RASTER_DATASET_ATTRIBUTES',
    'init_raster_dataset',
    'load_warp_file',
    'resolve_slice',
]

#: What ``RasterDataset.__init__`` sets on a dataset (``cmap`` only for files
#: with a colour map): :func:`init_raster_dataset` sets the same.
RASTER_DATASET_ATTRIBUTES = frozenset(
    {
        'paths',
        'bands',
        'transforms',
        'cache',
        'time_series',
        'band_indexes',
        '_res',
        'index',
        'cmap',
    }
)


def init_raster_dataset(
    dataset: RasterDataset,
    *,
    paths: Sequence[str],
    bands: Sequence[str],
    band_indexes: Sequence[int],
    res: tuple[float, float],
    index: GeoDataFrame,
    transforms: Any,
    cache: bool,
) -> None:
    """Set what ``RasterDataset.__init__`` sets, from an index built elsewhere.

    TorchGeo's constructor opens every file (twice, warped) to index it; a
    dataset whose index is built (or read from a cache) by glcgeo sets the
    same state instead, the resolution without the message
    ``GeoDataset.res``'s setter prints.

    Args:
        dataset: the dataset, whose ``__init__`` calls this instead of
            ``RasterDataset.__init__``.
        paths: its files.
        bands: the names of the bands read.
        band_indexes: their 1-based indexes in the files.
        res: (x, y) pixel size, in units of the index's CRS.
        index: one row per file: ``filepath``, the footprint (geometry) and
            the time interval (the index), in the dataset's CRS.
        transforms: the function applied to each sample, or None.
        cache: whether file handles are kept open between reads.
    """
    dataset.paths = list(paths)
    dataset.bands = list(bands)
    dataset.band_indexes = list(band_indexes)
    dataset.transforms = transforms
    dataset.cache = cache
    dataset.time_series = False
    dataset._res = res  # GeoDataset.res reads it
    dataset.index = index


def load_warp_file(
    dataset: RasterDataset, path: str, crs: PROJ_CRS | None
) -> DatasetReader | WarpedVRT:
    """Open a file as TorchGeo does: warped to *crs* where it is off that grid.

    ``RasterDataset._load_warp_file``: a WarpedVRT on TorchGeo's grid for the
    file in *crs* (the footprint and pixel size TorchGeo indexes it with),
    with the dataset's ``nodata`` overriding the file's; the file itself where
    no warp is needed.

    Args:
        dataset: the dataset (its ``nodata``; its CRS where *crs* is None).
        path: the file (a GDAL path).
        crs: the CRS to warp to.

    Returns:
        the open file, or its warped VRT; the caller closes it.
    """
    return RasterDataset._load_warp_file(dataset, path, crs)  # type: ignore[arg-type]


def resolve_slice(dataset: GeoDataset, index: GeoSlice) -> tuple[slice, slice, slice]:
    """A TorchGeo slice with the parts left out taken from the dataset's bounds.

    ``GeoDataset._disambiguate_slice``: ``ds[xmin:xmax]`` reads the whole
    height at the dataset's resolution, as TorchGeo's own datasets do.

    Args:
        dataset: the dataset.
        index: ``[xmin:xmax:xres, ymin:ymax:yres, tmin:tmax:tres]``, any part
            of it left out.

    Returns:
        the (x, y, t) slices, every part set.
    """
    return GeoDataset._disambiguate_slice(dataset, index)
