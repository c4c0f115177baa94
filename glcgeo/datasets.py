"""GeoTIFF mosaics as TorchGeo datasets.

:class:`GeoTiffMosaic` indexes any set of GeoTIFFs (paths, folders, globs or URLs:
:mod:`glcgeo.sources`) of any band count and dtype, reprojects them to one CRS and
resolution, reads TorchGeo slices of it, and tells where it holds data
(:meth:`GeoTiffMosaic.coverage`, per occupied cell); :class:`GeoTiffMask` reads
class masks the same way. Its cost follows the data: each file is opened once to
index it, reads find their files through a spatial index, and nothing is sized by
the mosaic's bounding box. Reading window pairs is :mod:`glcgeo.pairs`' job.
"""

import atexit
import functools
import math
import os
import resource
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import rasterio
import rasterio.errors
import shapely
import torch
from affine import Affine
from geopandas import GeoDataFrame
from pyproj import CRS as PROJ_CRS
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import MaskFlags
from rasterio.features import geometry_mask
from rasterio.io import DatasetReader
from rasterio.merge import copy_first
from rasterio.transform import array_bounds
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from torch import Tensor
from torchgeo.datasets import RasterDataset
from torchgeo.datasets.utils import GeoSlice, Sample

from .coverage import CellBlock, SparseCoverage
from .errors import GlcgeoError, check_memory
from .geometry import PixelGrid
from .index_cache import (
    MosaicIndex,
    cache_key,
    load_coverage,
    load_index,
    save_coverage,
    save_index,
)
from .sources import exists, gdal_options, gdal_reason, is_url, to_gdal_path
from .sources import expand as expand_paths

__all__ = [
    'GeoTiffMask',
    'GeoTiffMosaic',
    'expand_paths',
    'open_raster',
    'pixel_reads',
    'valid_pixels',
]

#: Band mask flags under which a masked pixel holds the file's nodata value (or
#: none is masked), so that a plain read equals a masked one filled with nodata.
PLAIN_MASKS = ([MaskFlags.all_valid], [MaskFlags.nodata])


def open_env(source: str) -> rasterio.Env:
    """The GDAL settings to open one of a mosaic's files (:func:`gdal_options`)."""
    return rasterio.Env(**gdal_options(source))


def map_files[T, R](function: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """Apply *function* to each item (a file's work) in threads, in order.

    GDAL releases the GIL while it opens, decompresses and waits for remote
    bytes, so indexing and coverage of many files run on every core.

    Args:
        function: the work for one file; it opens its own handles.
        items: what it applies to.

    Returns:
        the results, in the order of *items*.
    """
    workers = min(len(items), 2 * (os.cpu_count() or 1), 16)
    if workers <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(function, items))


def _fits(nodata: float | None, dtype: str) -> bool:
    """Whether *dtype* holds *nodata* exactly (as rasterio.merge requires to use it)."""
    if nodata is None:
        return True
    if math.isnan(nodata):
        return np.issubdtype(dtype, np.floating)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return info.min <= nodata <= info.max and float(nodata).is_integer()
    return bool(np.isfinite(np.array(nodata, dtype=dtype)))


def valid_pixels(image: Tensor, nodata: float | None) -> Tensor:
    """Pixels holding data: not every band equal to *nodata*, and no band NaN.

    The one nodata rule of glcgeo, for mosaics read as datasets and for scenes
    read by prediction alike.

    Args:
        image: [..., C, H, W] raw values, of any dtype.
        nodata: the nodata value, or None.

    Returns:
        a boolean [..., H, W] mask, True where there is data.

    """
    if image.is_floating_point():
        invalid = torch.isnan(image).any(dim=-3)
    else:
        invalid = torch.zeros(
            image.shape[-2:], dtype=torch.bool, device=image.device
        ).expand(*image.shape[:-3], -1, -1)
        # An integer image never holds a nodata value its dtype cannot hold
        # (compared as its dtype, -9999 would match uint16 55537).
        if not _fits(nodata, str(image.dtype).removeprefix('torch.')):
            nodata = None
    if nodata is not None and not math.isnan(nodata):
        invalid = invalid | (image == nodata).all(dim=-3)
    return ~invalid


@contextmanager
def pixel_reads(files: Sequence[str | os.PathLike[str]]) -> Iterator[None]:
    """Report a failed read of pixels in one line naming the file.

    A file whose header opens may still fail when its pixels are read (a
    download cut short, a connection lost): the line names the file as given
    and says GDAL's reason (:func:`~glcgeo.sources.gdal_reason`).

    Args:
        files: the sources (local paths or URLs) the reads inside the block may
            touch; the one GDAL's error names is reported, else the first.

    Yields:
        nothing.

    Raises:
        GlcgeoError: naming the file, if a read fails.
    """
    try:
        yield
    except rasterio.errors.RasterioIOError as error:
        # rasterio's message says 'see previous exception': GDAL's names the file.
        detail = str(error.__cause__ or error)
        named = [f for f in files if os.path.basename(to_gdal_path(f)) in detail]
        source = named[0] if named else files[0]
        reason = gdal_reason(error, to_gdal_path(source))
        raise GlcgeoError(f'cannot read pixels ({reason})', source) from None


@dataclass(frozen=True)
class RasterHeader:
    """What indexing needs of one file, read in one open.

    Attributes:
        count: number of bands.
        dtype: dtype name of the first band.
        nodata: the file's nodata value, if any.
        crs: the file's CRS (None for a file without one).
        transform: the file's pixel -> map transform.
        width: columns.
        height: rows.
        descriptions: band names (``B<i>`` where a band has none).
        all_valid: whether every band's mask flags say all pixels are valid
            (no nodata, no mask band, no alpha).

    """

    count: int
    dtype: str
    nodata: float | None
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    descriptions: tuple[str, ...]
    all_valid: bool


def open_raster(source: str | os.PathLike[str]) -> DatasetReader:
    """Open a raster, a local file or a URL, with glcgeo's GDAL settings.

    The one way glcgeo opens an input: GDAL's settings for the source
    (:func:`open_env`, network time limits included) and, when it cannot be
    used, one line naming it as given with GDAL's own reason
    (:func:`~glcgeo.sources.gdal_reason`).

    Args:
        source: a local path or a URL (see :mod:`glcgeo.sources`).

    Returns:
        the open dataset.

    Raises:
        GlcgeoError: naming *source*: a missing local file, a file or URL that
            GDAL cannot open as a raster, or a raster georeferenced by ground
            control points only (glcgeo reads rasters on a grid).
    """
    source = os.fspath(source)
    if not exists(source):
        raise GlcgeoError('no such file', source)
    gdal_path = to_gdal_path(source)
    try:
        with open_env(source):
            src = rasterio.open(gdal_path)
    except rasterio.errors.RasterioIOError as error:
        what = 'cannot open the URL as a raster'
        if not is_url(source):
            what = 'not a readable raster'
        raise GlcgeoError(f'{what} ({gdal_reason(error, gdal_path)})', source) from None
    if src.transform.is_identity and src.gcps[0]:
        src.close()
        raise GlcgeoError(
            'raster is georeferenced by ground control points only (no '
            'geotransform); warp it onto a grid first, e.g. gdalwarp -r bilinear '
            'IN.tif OUT.tif',
            source,
        )
    return src


def read_header(path: str, crs_given: bool) -> RasterHeader:
    """Open one file once and check that glcgeo can use it.

    Args:
        path: the raster file.
        crs_given: whether the user forces a CRS, so files without one may be used.

    Returns:
        the file's header.

    Raises:
        GlcgeoError: if the file is not a readable raster or has no georeferencing.

    """
    with open_raster(path) as src:
        if src.transform.is_identity:
            raise GlcgeoError(
                'raster has no geotransform (not georeferenced); georeference it '
                'first, e.g. gdal_translate -a_srs EPSG:32631 -a_ullr ULX ULY LRX '
                'LRY IN.tif OUT.tif',
                path,
            )
        if src.crs is None and not crs_given:
            raise GlcgeoError(
                'raster has no CRS (not georeferenced); give one with --crs '
                '(crs= in Python)',
                path,
            )
        return RasterHeader(
            count=src.count,
            dtype=src.dtypes[0],
            nodata=src.nodata,
            crs=src.crs,
            transform=src.transform,
            width=src.width,
            height=src.height,
            descriptions=tuple(
                d or f'B{i + 1}' for i, d in enumerate(src.descriptions)
            ),
            all_valid=all(
                flags == [MaskFlags.all_valid] for flags in src.mask_flag_enums
            ),
        )


#: Most pixels a read may make of one file pixel (100 x 100): beyond it a
#: pixel size was given in the wrong unit, and reads would take hours or
#: terabytes.
MAX_PIXELS_PER_FILE_PIXEL = 10_000


def _check_upsampling(
    res: float | tuple[float, float], native: tuple[float, float], path: str
) -> None:
    """Refuse a pixel size that makes one file pixel into too many.

    Args:
        res: the pixel size asked for, in CRS units.
        native: the first file's pixel size in the same CRS.
        path: the first file, named in the error.

    Raises:
        GlcgeoError: naming --res, if one file pixel would be read as more than
            :data:`MAX_PIXELS_PER_FILE_PIXEL`.
    """
    xres, yres = (res, res) if isinstance(res, int | float) else res
    per_pixel = native[0] / float(xres) * native[1] / float(yres)
    if per_pixel > MAX_PIXELS_PER_FILE_PIXEL:
        raise GlcgeoError(
            f'at a pixel size of {float(xres):g} (--res), each {native[0]:g} x '
            f'{native[1]:g} pixel of the files would be read as {per_pixel:,.0f}: '
            "give a pixel size near the files' own",
            path,
        )


def read_headers(files: Sequence[str], crs_given: bool) -> list[RasterHeader]:
    """:func:`read_header` of each file, in parallel for many.

    Raises:
        GlcgeoError: naming the first file glcgeo cannot use, and why (GDAL's
            georeferencing warnings are left out: the error says it).
    """
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', rasterio.errors.NotGeoreferencedWarning)
        return map_files(functools.partial(read_header, crs_given=crs_given), files)


def check_band_counts(files: Sequence[str], headers: Sequence[RasterHeader]) -> None:
    """Check that all files have the same number of bands.

    Args:
        files: the files.
        headers: their headers, in the same order.

    Raises:
        GlcgeoError: naming the first file and each file's band count, if they
            differ.
    """
    if len({header.count for header in headers}) > 1:
        detail = ', '.join(
            f'{os.path.basename(f)}: {h.count}'
            for f, h in zip(files, headers, strict=True)
        )
        raise GlcgeoError(f'files have different band counts ({detail})', files[0])


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


def _overlap(a: slice, b: slice) -> bool:
    """Whether two ranges of indexes share one."""
    return a.start < b.stop and b.start < a.stop


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


#: Every FileHandles of the process, closed at exit (see _close_all_handles).
_ALL_HANDLES: 'weakref.WeakSet[FileHandles]' = weakref.WeakSet()


@atexit.register
def _close_all_handles() -> None:
    """Close the process's open files while Python and GDAL are still whole.

    Left to the interpreter's last collection, a rasterio dataset closes after
    the modules it reports through are gone ("Error in sys.excepthook").
    """
    for handles in list(_ALL_HANDLES):
        handles.close()


class FileHandles:
    """A process's open files of a dataset, the least recently used closed first.

    DataLoader workers are forked from the main process: a file handle opened
    there before (statistics, a first read) would be shared by every worker, and
    their reads through the one file offset interleave into corrupt tiles. The
    handles are the opening process's: another process (a forked worker) starts
    with none, and pickling carries none. At most *capacity* files stay open
    (a quarter of the process's file descriptor limit by default), so a mosaic of
    thousands of files reads without running out of descriptors, and one of
    hundreds keeps them all open.
    """

    def __init__(
        self,
        opener: Callable[[str], DatasetReader | WarpedVRT],
        capacity: int | None = None,
    ) -> None:
        """Initialize the handles of one dataset.

        Args:
            opener: opens a file (the dataset's :meth:`GeoTiffMosaic._open_file`).
            capacity: most files kept open per process (defaults to a quarter of
                the soft limit of open files, at least 64).
        """
        if capacity is None:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            capacity = max(64, soft // 4) if soft > 0 else 1024
        self.opener = opener
        self.capacity = capacity
        self._pid = os.getpid()
        self._open: OrderedDict[str, DatasetReader | WarpedVRT] = OrderedDict()
        _ALL_HANDLES.add(self)

    def get(self, path: str) -> DatasetReader | WarpedVRT:
        """The open file *path* of this process, opened if it is not.

        Args:
            path: the file.

        Returns:
            its handle, valid until *capacity* other files are opened.
        """
        if self._pid != os.getpid():
            # A forked copy: the parent's handles are the parent's.
            self._pid, self._open = os.getpid(), OrderedDict()
        handle = self._open.get(path)
        if handle is not None:
            self._open.move_to_end(path)
            return handle
        handle = self._open[path] = self.opener(path)
        if len(self._open) > self.capacity:
            _, oldest = self._open.popitem(last=False)
            oldest.close()
        return handle

    def close(self) -> None:
        """Close this process's open files."""
        if self._pid == os.getpid():
            while self._open:
                self._open.popitem()[1].close()

    def __len__(self) -> int:
        """Files open in this process."""
        return len(self._open) if self._pid == os.getpid() else 0

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without handles: the unpickling process opens its own."""
        return {'opener': self.opener, 'capacity': self.capacity}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore with no file open."""
        self.__init__(state['opener'], state['capacity'])  # type: ignore[misc]


class GeoTiffMosaic(RasterDataset):
    """A mosaic of GeoTIFFs of any band count, dtype, CRS and nodata.

    Files are reprojected on the fly (GDAL warped VRTs) to one target CRS and
    resolution, and overlapping files are mosaicked, first file on top. Indexing
    with a TorchGeo slice ``ds[xmin:xmax:xres, ymin:ymax:yres]`` works as for any
    :class:`~torchgeo.datasets.RasterDataset`, but ``bounds`` and ``transform`` are
    returned as float64 (TorchGeo's float32 loses decimetres at UTM northings).

    A pixel is nodata where every selected band equals the nodata value (or is NaN).

    Example::

        ds = GeoTiffMosaic('tiles/*.tif', bands=[3, 2, 1, 4], res=10.0)
        sample = ds[ds.bounds[0].start : ds.bounds[0].start + 2560 : 10.0,
                    ds.bounds[1].start : ds.bounds[1].start + 2560 : 10.0]

    .. versionadded:: 0.1
    """

    filename_glob = '*'

    def __init__(
        self,
        paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        bands: Sequence[int | str] | None = None,
        crs: PROJ_CRS | str | int | None = None,
        res: float | tuple[float, float] | None = None,
        nodata: float | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        cache: bool = True,
        index_cache: str | os.PathLike[str] | None = None,
        headers: Sequence[RasterHeader] | None = None,
    ) -> None:
        """Initialize a new GeoTiffMosaic.

        Args:
            paths: files, folders (searched recursively for ``*.tif``), glob
                patterns, URLs or lists of them (:func:`glcgeo.sources.expand`).
            bands: bands to read, as 1-based indexes or band descriptions
                (defaults to all bands of the first file).
            crs: CRS to reproject to, anything pyproj accepts (defaults to the CRS of
                the first file).
            res: pixel size in units of *crs* (defaults to that of the first file).
            nodata: nodata value overriding the files' own (defaults to the value
                in the first file, if any).
            transforms: a function applied to each sample.
            cache: keep file handles open between reads.
            index_cache: a folder where the index and coverages are kept
                (:mod:`glcgeo.index_cache`), so that other processes of a run
                (DDP ranks, a resumed run) read them instead of every file
                (defaults to none: computed in this process).
            headers: the files' headers (:func:`read_header`, one per file of
                *paths* once expanded), when they have been read already, so
                that indexing does not open the files again.

        Raises:
            GlcgeoError: for a missing or unreadable file, files with different band
                counts, a file that cannot be reprojected to *crs*, or a band out
                of range.

        """
        files = expand_paths(paths, bands)
        if crs is not None and not isinstance(crs, PROJ_CRS):
            crs = PROJ_CRS.from_user_input(crs)
        # RasterDataset only overrides the files' nodata when this is set.
        self.nodata = nodata
        self.index_cache = None if index_cache is None else os.fspath(index_cache)
        self._cache_key = cache_key(
            files, {'crs': crs and crs.to_wkt(), 'res': res, 'nodata': nodata}
        )
        index = None
        if self.index_cache is not None:
            index = load_index(self.index_cache, self._cache_key)
        if index is None:
            index = self._read_index(files, crs, res, headers)
            if self.index_cache is not None:
                save_index(self.index_cache, self._cache_key, index)
        descriptions = index.descriptions
        self.all_bands = tuple(descriptions)
        self.band_indexes_selected = self._resolve_bands(bands, descriptions, files[0])
        self.file_nodata = nodata if nodata is not None else index.nodata
        self.source_dtype = index.dtype
        # What RasterDataset.__init__ sets, from the index: TorchGeo's own opens
        # every file twice more and computes a warp grid for each (~5 ms a file).
        self.paths = self._paths = files
        self.bands = [descriptions[i - 1] for i in self.band_indexes_selected]
        self.transforms = transforms
        self.cache = cache
        self.time_series = False
        # TorchGeo maps band names to indexes; with duplicate names use ours.
        self.band_indexes = list(self.band_indexes_selected)
        self._res = index.res
        self._direct = frozenset(np.asarray(files)[index.direct].tolist())
        self._file_boxes = index.boxes
        self._all_valid = index.all_valid
        datetimes = pd.IntervalIndex.from_tuples(
            [(self.mint, self.maxt)] * len(files), closed='both', name='datetime'
        )
        self.index = GeoDataFrame(
            {'filepath': files},
            index=datetimes,
            geometry=shapely.box(*index.boxes.T),
            crs=PROJ_CRS.from_wkt(index.crs),
        )
        self._mask_flags: dict[str, Sequence[Sequence[MaskFlags]]] = {}
        self._handles = FileHandles(self._open_file)
        self._coverages: dict[float, SparseCoverage] = {}

    def _read_index(
        self,
        files: list[str],
        crs: PROJ_CRS | None,
        res: float | tuple[float, float] | None,
        headers: Sequence[RasterHeader] | None = None,
    ) -> MosaicIndex:
        """Index the files: one open each (in threads), and their footprints.

        A file in the mosaic CRS on a north-up grid is read as it is: its
        footprint is its bounds. Other files (another CRS, rotated, a
        nodata override) are opened as TorchGeo opens them (a warped VRT) for
        theirs.

        Args:
            files: the files, in mosaic order.
            crs: the mosaic CRS, or None for the first file's.
            res: the pixel size, or None for the first file's.
            headers: the files' headers if already read, else None (read here).

        Returns:
            the index.

        Raises:
            GlcgeoError: for an unreadable or ungeoreferenced file, files with
                different band counts, or a file GDAL cannot reproject to *crs*.
        """
        if headers is None:
            headers = read_headers(files, crs_given=crs is not None)
        check_band_counts(files, headers)
        if crs is None:
            crs = self._first_crs(files[0], headers[0])
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
                and self.nodata is None
                and affine.b == affine.d == 0
                and affine.a > 0
                and affine.e < 0
            ):
                direct[i] = True
                bounds[i] = array_bounds(header.height, header.width, affine)
                file_res = (affine.a, -affine.e)
            else:
                try:
                    with open_env(path), self._load_warp_file(path, crs) as vrt:
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
            _check_upsampling(res, first_res, files[0])
        nodata = self.nodata if self.nodata is not None else headers[0].nodata
        return MosaicIndex(
            files=files,
            boxes=bounds,
            direct=direct,
            all_valid=direct
            & np.array([h.all_valid for h in headers], dtype=bool)
            & (nodata is None),
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

    @staticmethod
    def _first_crs(path: str, header: RasterHeader) -> PROJ_CRS:
        """The CRS of the first file, as TorchGeo takes it (WKT2)."""
        # read_header refuses files without a CRS unless one is given.
        assert header.crs is not None, path
        with rasterio.Env(OSR_WKT_FORMAT='WKT2_2018'):
            return PROJ_CRS.from_user_input(header.crs)

    def __getstate__(self) -> dict[str, Any]:
        """The state DataLoader workers receive: the index, not the coverages.

        Workers only read; the coverages (the sampler's, in the main process)
        and the spatial tree (rebuilt on a worker's first read) stay behind.
        """
        state = self.__dict__.copy()
        state['_coverages'] = {}
        state.pop('_tree', None)
        return state

    @property
    def files(self) -> list[str]:
        """The mosaic's files, in index order (first on top)."""
        return list(self._paths)

    @staticmethod
    def _resolve_bands(
        bands: Sequence[int | str] | None, descriptions: list[str], path: str
    ) -> list[int]:
        """Turn band names or 1-based indexes into 1-based indexes.

        Args:
            bands: the user's selection, or None for all bands.
            descriptions: the band names of the first file.
            path: the first file, named in errors.

        Returns:
            1-based band indexes.

        Raises:
            GlcgeoError: for an index out of range or an unknown band name.

        """
        if bands is None:
            return list(range(1, len(descriptions) + 1))
        indexes = []
        for band in bands:
            if isinstance(band, str) and not band.isdigit():
                if band not in descriptions:
                    raise GlcgeoError(
                        f'no band named {band!r} (bands: {", ".join(descriptions)})',
                        path,
                    )
                indexes.append(descriptions.index(band) + 1)
                continue
            index = int(band)
            if not 1 <= index <= len(descriptions):
                raise GlcgeoError(
                    f'band index {index} out of range 1..{len(descriptions)}', path
                )
            indexes.append(index)
        return indexes

    @property
    def num_bands(self) -> int:
        """Number of bands each sample has."""
        return len(self.band_indexes_selected)

    @functools.cached_property
    def grid(self) -> PixelGrid:
        """The pixel grid of the dataset: origin at the top-left of its bounds."""
        x, y, _ = self.bounds
        return PixelGrid(x0=float(x.start), y0=float(y.stop), res=self.res)

    def files_within(
        self, xmin: float, ymin: float, xmax: float, ymax: float
    ) -> np.ndarray:
        """The files whose footprint overlaps a ground box (not only touches it).

        A spatial index query: its cost does not grow with the number of files.

        Args:
            xmin: left edge, in the dataset CRS.
            ymin: bottom edge.
            xmax: right edge.
            ymax: top edge.

        Returns:
            int64 positions of the files in the index, in index order.
        """
        tree = self.__dict__.get('_tree')
        if tree is None:
            tree = self.__dict__['_tree'] = shapely.STRtree(self.index.geometry.values)
        found = np.sort(tree.query(shapely.box(xmin, ymin, xmax, ymax)))
        left, bottom, right, top = self._file_boxes[found].T
        return found[(left < xmax) & (xmin < right) & (bottom < ymax) & (ymin < top)]

    def on_files(
        self,
        xmin: float,
        ymin: float,
        xmax: float,
        ymax: float,
        res: tuple[float, float] | None = None,
    ) -> Tensor:
        """Pixels of a read whose centre lies on a file's footprint.

        A read fills the ground between files with the first file's nodata
        value, or 0 where it has none, which is data (or a class) for files
        without nodata: this tells the files' ground from the gaps.

        Args:
            xmin: left edge, in the dataset CRS.
            ymin: bottom edge.
            xmax: right edge.
            ymax: top edge.
            res: (x, y) pixel size of the read (defaults to the dataset's).

        Returns:
            a boolean [H, W] mask of the read's pixels, True on a file.
        """
        xres, yres = res or self.res
        shape = (round((ymax - ymin) / yres), round((xmax - xmin) / xres))
        boxes = self._file_boxes[self.files_within(xmin, ymin, xmax, ymax)]
        left, bottom, right, top = boxes.T
        if np.any((left <= xmin) & (bottom <= ymin) & (xmax <= right) & (ymax <= top)):
            return torch.ones(shape, dtype=torch.bool)  # one file covers the read
        if len(boxes) == 0:
            return torch.zeros(shape, dtype=torch.bool)
        on_files = geometry_mask(
            shapely.box(*boxes.T),
            out_shape=shape,
            transform=Affine(xres, 0.0, xmin, 0.0, -yres, ymax),
            invert=True,
        )
        return torch.from_numpy(on_files)

    def read_window(self, xmin: float, ymin: float, xmax: float, ymax: float) -> Tensor:
        """Read a ground box at the dataset's resolution, as float32.

        Args:
            xmin: left edge, in the dataset CRS.
            ymin: bottom edge.
            xmax: right edge.
            ymax: top edge.

        Returns:
            [C, H, W] float32 raw values (nodata where no file has data).

        Raises:
            IndexError: if no file intersects the box.
        """
        return self.read_raw(xmin, ymin, xmax, ymax).float()

    def read_raw(self, xmin: float, ymin: float, xmax: float, ymax: float) -> Tensor:
        """Read a ground box at the dataset's resolution, in the files' dtype.

        The files that TorchGeo's slice read would merge, in the same order, first
        file on top. Files on the dataset's pixel grid are read by whole-pixel
        windows and composited as ``rasterio.merge`` does, skipping its resampled
        reads of fractional windows (which, on some grids, take a neighbouring
        pixel) and the slice read's queries of the spatial index (together ~8x
        the cost of the read itself for a 224-pixel view); other files go through
        ``rasterio.merge`` as in TorchGeo. Slices at the dataset's resolution
        (``self[xmin:xmax:xres, ymin:ymax:yres]``) are read here.

        Args:
            xmin: left edge, in the dataset CRS.
            ymin: bottom edge.
            xmax: right edge.
            ymax: top edge.

        Returns:
            [C, H, W] raw values in the first file's dtype (as TorchGeo's
            ``array_to_tensor`` maps it for files off the pixel grid), nodata where
            no file has data.

        Raises:
            IndexError: if no file intersects the box.
        """
        paths = self._paths
        files = [paths[i] for i in self.files_within(xmin, ymin, xmax, ymax).tolist()]
        if not files:
            raise IndexError(f'({xmin}, {ymin}, {xmax}, {ymax}) is outside the mosaic')
        xres, yres = self.res
        shape = (round((ymax - ymin) / yres), round((xmax - xmin) / xres))
        with pixel_reads(files):
            if self.cache:
                handles = [self._handles.get(path) for path in files]
                pieces = [self._grid_piece(h, xmin, ymax, shape) for h in handles]
                if _fits(handles[0].nodata, handles[0].dtypes[0]) and all(
                    piece is not None for piece in pieces
                ):
                    return self._composite(handles, pieces, shape)  # type: ignore[arg-type]
            box = (slice(xmin, xmax, xres), slice(ymin, ymax, yres))
            return self._merge_or_stack(files, box, self.band_indexes, out_crs=self.crs)

    def _grid_piece(
        self,
        handle: DatasetReader | WarpedVRT,
        xmin: float,
        ymax: float,
        shape: tuple[int, int],
    ) -> tuple[Window, slice, slice] | None:
        """Where an open file falls in a read, if it lies on the read's pixel grid.

        Args:
            handle: the open file, in the dataset CRS.
            xmin: left edge of the read.
            ymax: top edge of the read.
            shape: (rows, cols) of the read.

        Returns:
            (window of the file, rows of the read, columns of the read), or None
            if the file's pixels are not whole pixels of the read.
        """
        xres, yres = self.res
        affine = handle.transform
        if not (
            affine.b == affine.d == 0
            and math.isclose(affine.a, xres, rel_tol=1e-9)
            and math.isclose(-affine.e, yres, rel_tol=1e-9)
        ):
            return None
        col, row = (affine.c - xmin) / xres, (ymax - affine.f) / yres
        if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
            return None
        col, row = round(col), round(row)
        c0, c1 = max(col, 0), min(col + handle.width, shape[1])
        r0, r1 = max(row, 0), min(row + handle.height, shape[0])
        window = Window(c0 - col, r0 - row, max(c1 - c0, 0), max(r1 - r0, 0))
        return window, slice(r0, r1), slice(c0, c1)

    def _composite(
        self,
        handles: list[DatasetReader | WarpedVRT],
        pieces: list[tuple[Window, slice, slice]],
        shape: tuple[int, int],
    ) -> Tensor:
        """Composite whole-pixel reads of files, first file on top.

        As ``rasterio.merge`` (method 'first'): the output has the first file's
        dtype and is filled with its nodata (0 if none); each file fills the
        pixels still nodata where it has data.

        Args:
            handles: the open files, in index order.
            pieces: where each file falls in the output (see :meth:`_grid_piece`).
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
            data = first.read(
                self.band_indexes_selected, window=window, out_dtype=dtype
            )
            return torch.from_numpy(data)
        out = np.full((self.num_bands, *shape), nodata, dtype=dtype)
        placed: list[tuple[slice, slice]] = []
        for handle, (window, rows, cols) in zip(handles, pieces, strict=True):
            if window.width == 0 or window.height == 0:
                continue
            region = out[:, rows, cols]
            if self._fills_plainly(handle, nodata) and not any(
                _overlap(rows, r) and _overlap(cols, c) for r, c in placed
            ):
                # Where no file above lies, the output holds the fill, and so do
                # this file's masked pixels: its plain read is the composite
                # there, without the masks and copies (touching tiles' case).
                region[:] = handle.read(
                    self.band_indexes_selected, window=window, out_dtype=dtype
                )
            else:
                if math.isnan(nodata):
                    still_nodata = np.isnan(region)
                elif np.issubdtype(out.dtype, np.integer):
                    still_nodata = region == nodata
                else:
                    still_nodata = np.isclose(region, nodata)
                if still_nodata.any():  # else the files above cover this one here
                    data = handle.read(
                        self.band_indexes_selected, window=window, masked=True
                    )
                    copy_first(region, data, still_nodata, np.ma.getmaskarray(data))
            placed.append((rows, cols))
        return torch.from_numpy(out)

    def _fills_plainly(self, handle: DatasetReader | WarpedVRT, fill: float) -> bool:
        """Whether a file's plain read equals its masked read filled with *fill*.

        Args:
            handle: the open file.
            fill: the composite's fill value (the first file's nodata, or 0).

        Returns:
            True if none of its selected bands' pixels is masked, or the masked
            ones hold its nodata value and that is *fill*.
        """
        flags = self._band_mask_flags(handle)
        if all(
            flags[i - 1] == [MaskFlags.all_valid] for i in self.band_indexes_selected
        ):
            return True
        nodata = handle.nodata
        return (
            self._plain_masks(handle)
            and nodata is not None
            and (nodata == fill or (math.isnan(nodata) and math.isnan(fill)))
        )

    def _plain_masks(self, handle: DatasetReader | WarpedVRT) -> bool:
        """Whether a plain read of an open file is its masked read filled with nodata.

        Args:
            handle: the open file.

        Returns:
            True if every selected band's masked pixels hold the file's nodata
            value, or none is masked.
        """
        flags = self._band_mask_flags(handle)
        return all(flags[i - 1] in PLAIN_MASKS for i in self.band_indexes_selected)

    def _band_mask_flags(
        self, handle: DatasetReader | WarpedVRT
    ) -> Sequence[Sequence[MaskFlags]]:
        """The mask flags of every band of an open file, read once per file."""
        # Rasterio builds the flags of every band anew at each access (~20 us, a
        # tenth of a view's read).
        flags = self._mask_flags.get(handle.name)
        if flags is None:
            flags = self._mask_flags[handle.name] = handle.mask_flag_enums
        return flags

    def valid_mask(self, image: Tensor) -> Tensor:
        """Pixels holding data: :func:`valid_pixels` with the mosaic's nodata.

        Args:
            image: [C, H, W] or [B, C, H, W] raw values, of any dtype.

        Returns:
            a boolean [H, W] (or [B, H, W]) mask, True where there is data.

        """
        return valid_pixels(image, self.file_nodata)

    def __getitem__(self, index: GeoSlice) -> Sample:
        """Read a TorchGeo slice.

        Args:
            index: ``[xmin:xmax:xres, ymin:ymax:yres]`` in the dataset CRS.

        Returns:
            ``image`` [C, H, W] float32 (at the mosaic's resolution, the files'
            own pixels: see :meth:`read_raw`), ``bounds`` float64
            (xmin, xmax, xres, ymin, ymax, yres) and ``transform`` float64
            (a, b, c, d, e, f of the rasterio affine).

        """
        x, y, _ = self._disambiguate_slice(index)
        xres, yres = self.res
        rows, columns = (
            round((y.stop - y.start) / y.step),
            round((x.stop - x.start) / x.step),
        )
        # Read in the files' dtype, then as float32 (8 bytes at most, then 4).
        check_memory(
            12 * rows * columns * self.num_bands,
            f'at a pixel size of {x.step:g} (--res), a read of {columns:,} x '
            f'{rows:,} pixels',
            "choose a coarser --res, in units of the mosaic's CRS",
        )
        if math.isclose(x.step, xres, rel_tol=1e-9) and math.isclose(
            y.step, yres, rel_tol=1e-9
        ):
            # At the mosaic's resolution, whole-pixel reads return the files' own
            # pixels; TorchGeo's merge reads fractional windows with nearest
            # resampling, which on some grids (e.g. the quadrants' 300.038 x
            # 300.042 m pixels) takes a neighbouring pixel.
            data = self.read_raw(x.start, y.start, x.stop, y.stop).to(self.dtype)
            sample: Sample = (
                {'image': data} if self.is_image else {'mask': data.squeeze(-3)}
            )
        else:
            transforms, self.transforms = self.transforms, None
            try:
                sample = super().__getitem__(index)
            finally:
                self.transforms = transforms
        sample['bounds'] = torch.tensor(
            [x.start, x.stop, x.step, y.start, y.stop, y.step], dtype=torch.float64
        )
        affine = Affine(x.step, 0.0, x.start, 0.0, -y.step, y.stop)
        sample['transform'] = torch.tensor(affine[:6], dtype=torch.float64)
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    # TorchGeo's version is an lru_cache wrapper, hence the type: ignore.
    def _cached_load_warp_file(  # type: ignore[override]
        self, filepath: str, crs: PROJ_CRS
    ) -> DatasetReader | WarpedVRT:
        """Open (and warp) a file once per process, as TorchGeo does once per dataset.

        Args:
            filepath: the file.
            crs: the CRS to warp to: the dataset's, as TorchGeo's reads pass it.

        Returns:
            the open (possibly warped) file, from :class:`FileHandles`.
        """
        del crs
        return self._handles.get(filepath)

    def _open_file(self, filepath: str) -> DatasetReader | WarpedVRT:
        """Open a file in the dataset CRS: as it is when it lies on it, else warped."""
        with open_env(filepath):
            if filepath in self._direct:
                return rasterio.open(filepath)
            return self._load_warp_file(filepath, self.crs)

    def coverage(self, cell: float) -> SparseCoverage:
        """Fraction of each coarse cell of the mosaic holding data, occupied cells only.

        Built once per cell size, file by file on the cells each file covers, so
        its cost and size grow with the data, not with the mosaic's bounding box.
        A cell's coverage is the area of it holding data, summed over the files
        (touching files fill a cell together), at most 1. Files known to be
        valid everywhere (no nodata, no mask, on the mosaic grid) count their
        footprint without being opened; the others' masks are read at reduced
        resolution (GDAL uses overviews where present), so no file is ever read
        at full resolution.

        Args:
            cell: cell size in units of the dataset CRS.

        Returns:
            the coverage, on a grid of *cell* units from the mosaic's top-left.
        """
        cached = self._coverages.get(cell)
        if cached is not None:
            return cached
        key = cache_key(
            [], {'index': self._cache_key, 'bands': self.band_indexes, 'cell': cell}
        )
        if self.index_cache is not None:
            cached = load_coverage(self.index_cache, key)
            if cached is not None:
                self._coverages[cell] = cached
                return cached
        x, y, _ = self.bounds
        grid = PixelGrid(x0=float(x.start), y0=float(y.stop), res=(cell, cell))
        shape = (
            max(1, math.ceil((y.stop - y.start) / cell - 1e-9)),
            max(1, math.ceil((x.stop - x.start) / cell - 1e-9)),
        )
        # Each file's block of cells, in float64 as it is computed.
        left, bottom, right, top = self._file_boxes.T
        cells = np.sum(((right - left) / cell + 2) * ((top - bottom) / cell + 2))
        columns = round((x.stop - x.start) / self.res[0])
        rows = round((y.stop - y.start) / self.res[1])
        check_memory(
            8 * cells,
            f'at a pixel size of {self.res[0]:g} (--res), the mosaic is {columns:,} '
            f'x {rows:,} pixels; its coverage',
            "choose a coarser --res, in units of the mosaic's CRS",
        )
        blocks = map_files(
            functools.partial(self._file_coverage, grid=grid, shape=shape),
            range(len(self._paths)),
        )
        coverage = SparseCoverage.from_blocks(grid, shape, blocks)
        self._coverages[cell] = coverage
        if self.index_cache is not None:
            save_coverage(self.index_cache, key, coverage)
        return coverage

    def _file_coverage(
        self, position: int, grid: PixelGrid, shape: tuple[int, int]
    ) -> CellBlock:
        """The cells one file covers and the fraction of each holding its data.

        Args:
            position: the file's position in the index.
            grid: the cell grid.
            shape: (rows, cols) of the cell grid.

        Returns:
            the file's block of cells.
        """
        left, bottom, right, top = self._file_boxes[position]
        cell = grid.res[0]
        c0, r0 = _cell_span(left - grid.x0, grid.y0 - top, cell, shape, start=True)
        c1, r1 = _cell_span(right - grid.x0, grid.y0 - bottom, cell, shape, start=False)
        # Cell edges, as distances right of and below the grid's corner.
        cells_x = np.arange(c0, c1 + 2) * cell
        cells_y = np.arange(r0, r1 + 2) * cell
        if self._all_valid[position]:
            # The footprint is the data: one "pixel" as large as the file.
            along_x = _overlap_matrix(cells_x, np.array([left, right]) - grid.x0, cell)
            along_y = _overlap_matrix(cells_y, grid.y0 - np.array([top, bottom]), cell)
            return CellBlock(r0, c0, (along_y @ along_x.T).astype(np.float32))
        handle = self._open_file(self._paths[position])
        try:
            # Read masks at about 4 samples per cell: cheap and accurate enough.
            scale = max(1.0, cell / 4 / handle.res[0])
            out_shape = (
                max(1, round(handle.height / scale)),
                max(1, round(handle.width / scale)),
            )
            mask = self._file_mask(handle, out_shape)
            # Files and warped files alike lie on north-up grids of the CRS.
            affine = handle.transform
        finally:
            handle.close()
        pixels_x = affine.c + np.linspace(0, handle.width, out_shape[1] + 1) * affine.a
        pixels_y = affine.f + np.linspace(0, handle.height, out_shape[0] + 1) * affine.e
        along_x = _overlap_matrix(cells_x, pixels_x - grid.x0, cell)
        along_y = _overlap_matrix(cells_y, grid.y0 - pixels_y, cell)
        # Each cell's valid area: the mask's pixels weighted by their overlap.
        return CellBlock(r0, c0, (along_y @ mask @ along_x.T).astype(np.float32))

    def _file_mask(self, handle: Any, out_shape: tuple[int, int]) -> np.ndarray:
        """Valid-data mask of one file at reduced resolution, as float32 0/1.

        Args:
            handle: an open (possibly warped) rasterio dataset in the dataset CRS.
            out_shape: (rows, cols) to read at.

        Returns:
            1.0 where any selected band holds data, else 0.0.

        """
        if self.nodata is None and handle.nodata is None:
            # No nodata: the footprint is valid, except a warp's empty margin.
            mask = handle.dataset_mask(out_shape=out_shape)
            return (mask > 0).astype(np.float32)
        data = handle.read(
            self.band_indexes_selected, out_shape=out_shape, masked=False
        ).astype(np.float64)
        nodata = self.file_nodata if self.file_nodata is not None else handle.nodata
        if nodata is None or math.isnan(nodata):
            valid = ~np.isnan(data).all(axis=0)
        else:
            valid = ~((data == nodata) | np.isnan(data)).all(axis=0)
        return valid.astype(np.float32)


class GeoTiffMask(GeoTiffMosaic):
    """Class masks in GeoTIFFs: one band of integer class values.

    Samples hold ``mask`` [H, W] int64 instead of ``image``, and ``labelled``
    [H, W] bool: True where a file holds a value other than the nodata value
    (or NaN). The ground outside every file is unlabelled whatever the files'
    nodata: a read fills it with the nodata value, or with 0 where there is
    none, which is a class in many masks. Resampling is nearest neighbour
    (TorchGeo's choice for integer data), so class values are never blended.
    Float files must hold whole numbers (1.0, not 1.5).

    .. versionadded:: 0.1
    """

    is_image = False

    def __init__(
        self,
        paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        band: int | None = None,
        crs: PROJ_CRS | str | int | None = None,
        res: float | tuple[float, float] | None = None,
        nodata: float | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        read_as: Mapping[str, CRS | PROJ_CRS | str] | None = None,
    ) -> None:
        """Initialize a new GeoTiffMask.

        Args:
            paths: files, folders or glob patterns of the masks.
            band: 1-based band holding the class values; None for files of one
                band.
            crs: CRS to reproject to (defaults to the first file's).
            res: pixel size in units of *crs* (defaults to the first file's).
            nodata: value of unlabelled pixels overriding the files' own.
            transforms: a function applied to each sample.
            read_as: files (as :func:`~glcgeo.sources.expand` gives them) to read
                in another CRS than their own: a mask in a local (engineering)
                CRS, which cannot be transformed, on the exact pixel grid of an
                image in that CRS.

        Raises:
            GlcgeoError: for a file of several bands without *band*, or a float
                file holding values that are no whole number.

        """
        # Before indexing, which opens the files.
        self.read_as = {
            path: CRS.from_user_input(crs) for path, crs in (read_as or {}).items()
        }
        super().__init__(
            paths,
            bands=[band or 1],
            crs=crs,
            res=res,
            nodata=nodata,
            transforms=transforms,
        )
        if band is None and len(self.all_bands) != 1:
            raise GlcgeoError(
                'a class mask must have one band of class ids, this file has '
                f'{len(self.all_bands)}',
                self.files[0],
            )
        if np.issubdtype(self.source_dtype, np.floating):
            map_files(self._check_whole_numbers, self.files)

    @property
    def dtype(self) -> torch.dtype:
        """int64, or float64 for float files (NaN is no class: see ``labelled``)."""
        if np.issubdtype(self.source_dtype, np.floating):
            return torch.float64
        return torch.long

    def _check_whole_numbers(self, path: str) -> None:
        """Check that a float mask holds class ids: whole numbers, NaN or nodata.

        Raises:
            GlcgeoError: naming the file and a value that is no whole number.
        """
        band = self.band_indexes_selected[0]
        with open_env(path), rasterio.open(path) as src, pixel_reads([path]):
            nodata = self.nodata if self.nodata is not None else src.nodata
            for _, window in src.block_windows(band):
                values = src.read(band, window=window)
                values = values[np.isfinite(values) & (values != nodata)]
                fractional = values[values != np.round(values)]
                if fractional.size:
                    raise GlcgeoError(
                        f'the mask holds values that are no whole number '
                        f'({fractional[0]:g}): class masks hold integer class ids',
                        path,
                    )

    def _load_warp_file(  # type: ignore[override]
        self, filepath: str, crs: PROJ_CRS | None = None
    ) -> DatasetReader | WarpedVRT:
        """Open a file in *crs*, or a file of *read_as* in the CRS given there."""
        grid_crs = self.read_as.get(filepath)
        if grid_crs is None:
            return super()._load_warp_file(filepath, crs)
        src = rasterio.open(filepath)
        override = {} if self.nodata is None else {'src_nodata': self.nodata}
        vrt = WarpedVRT(src, src_crs=grid_crs, crs=grid_crs, **override)
        src.close()
        return vrt

    def __getitem__(self, index: GeoSlice) -> Sample:
        """Read a TorchGeo slice.

        Args:
            index: ``[xmin:xmax:xres, ymin:ymax:yres]`` in the dataset CRS.

        Returns:
            ``mask`` [H, W] int64 raw class values, ``labelled`` [H, W] bool (True
            on a file's value that is not nodata), ``bounds`` and ``transform``
            (see :meth:`GeoTiffMosaic.__getitem__`).
        """
        transforms, self.transforms = self.transforms, None
        try:
            sample = super().__getitem__(index)
        finally:
            self.transforms = transforms
        x, y, _ = self._disambiguate_slice(index)
        values = sample['mask']
        labelled = self.on_files(x.start, y.start, x.stop, y.stop, (x.step, y.step))
        labelled &= valid_pixels(values[None], self.file_nodata)
        if values.is_floating_point():
            labelled &= torch.isfinite(values)
            values = torch.where(labelled, values, 0.0).long()
        sample['mask'] = values
        sample['labelled'] = labelled
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample
