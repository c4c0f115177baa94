"""Raster files one at a time: opening, headers, the nodata rule, masks and reads.

What training (:mod:`glcgeo.datasets`) and prediction (:mod:`glcgeo.inference`)
both need of a single file, in one place:

* :func:`open_raster` opens a local file or a URL with glcgeo's GDAL settings
  (:func:`open_env`), and refuses one it cannot use in one line naming it, with
  GDAL's own reason (:func:`~glcgeo.gdal_paths.gdal_reason`);
* :func:`read_header` reads in that one open what indexing a file needs
  (:class:`RasterHeader`), :func:`read_headers` many files' in threads
  (:func:`map_files`);
* :func:`valid_pixels` is glcgeo's one nodata rule: a pixel holds data unless
  every band equals the nodata value or any band is NaN; :func:`read_valid_mask`
  applies it to a file read at reduced resolution;
* :func:`pixel_reads` reports a failed read of pixels in one line naming the
  file;
* :func:`band_names` names a file's bands, and :func:`band_indexes` turns
  bands given by name or 1-based index into indexes.
"""

import functools
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import rasterio
import rasterio.errors
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from torch import Tensor

from .errors import GlcgeoError
from .gdal_paths import exists, gdal_options, gdal_reason, is_url, to_gdal_path

__all__ = [
    'RasterHeader',
    'check_band_counts',
    'fits_dtype',
    'map_files',
    'open_env',
    'open_raster',
    'pixel_reads',
    'read_header',
    'read_headers',
    'read_valid_mask',
    'valid_pixels',
]


def open_env(source: str) -> rasterio.Env:
    """GDAL's settings to open *source* (:func:`~glcgeo.gdal_paths.gdal_options`)."""
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


def fits_dtype(nodata: float | None, dtype: str) -> bool:
    """Whether *dtype* holds *nodata* exactly (as rasterio.merge requires to use it).

    Args:
        nodata: a nodata value, or None (which every dtype holds).
        dtype: a numpy dtype name.

    Returns:
        whether a value of *dtype* can equal *nodata*.
    """
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

    The one nodata rule of glcgeo, for mosaics read as datasets, their
    coverage, and scenes read by prediction alike.

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
        if not fits_dtype(nodata, str(image.dtype).removeprefix('torch.')):
            nodata = None
    if nodata is not None and not math.isnan(nodata):
        invalid = invalid | (image == nodata).all(dim=-3)
    return ~invalid


def read_valid_mask(
    handle: DatasetReader | WarpedVRT,
    bands: Sequence[int],
    nodata: float | None,
    out_shape: tuple[int, int],
) -> np.ndarray:
    """Where an open file holds data, read at reduced resolution, as float32 0/1.

    Args:
        handle: the open (possibly warped) file.
        bands: its 1-based bands that are read.
        nodata: the nodata value that holds for the file, or None for its own;
            where neither is set, the file holds data over its footprint
            except a warp's empty margin (its dataset mask says where).
        out_shape: (rows, cols) to read at (GDAL uses overviews where present).

    Returns:
        [rows, cols] 1.0 where the pixel holds data by :func:`valid_pixels`,
        else 0.0.
    """
    rule = nodata if nodata is not None else handle.nodata
    if rule is None:
        mask = handle.dataset_mask(out_shape=out_shape)
        return (mask > 0).astype(np.float32)
    data = handle.read(list(bands), out_shape=out_shape, masked=False)
    return valid_pixels(torch.from_numpy(data), rule).numpy().astype(np.float32)


@contextmanager
def pixel_reads(files: Sequence[str | os.PathLike[str]]) -> Iterator[None]:
    """Report a failed read of pixels in one line naming the file.

    A file whose header opens may still fail when its pixels are read (a
    download cut short, a connection lost): the line names the file as given
    and says GDAL's reason (:func:`~glcgeo.gdal_paths.gdal_reason`).

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


def open_raster(source: str | os.PathLike[str], kind: str = 'raster') -> DatasetReader:
    """Open a raster, a local file or a URL, with glcgeo's GDAL settings.

    The one way glcgeo opens an input: GDAL's settings for the source
    (:func:`open_env`, network time limits included) and, when it cannot be
    used, one line naming it as given with GDAL's own reason
    (:func:`~glcgeo.gdal_paths.gdal_reason`).

    Args:
        source: a local path or a URL (see :mod:`glcgeo.sources`).
        kind: what the source should be, for errors (``'class map'``, say).

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
        what = f'cannot open the URL as a {kind}'
        if not is_url(source):
            what = f'not a readable {kind}'
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


def band_names(src: DatasetReader) -> tuple[str, ...]:
    """A raster's band names: its band descriptions, ``B<i>`` where it has none."""
    return tuple(d or f'B{i + 1}' for i, d in enumerate(src.descriptions))


def band_indexes(
    bands: Sequence[int | str] | None, names: Sequence[str], path: str
) -> list[int]:
    """Turn band names or 1-based indexes into 1-based indexes.

    Args:
        bands: the user's selection, or None for all bands.
        names: the file's band names (:func:`band_names`).
        path: the file, named in errors.

    Returns:
        1-based band indexes.

    Raises:
        GlcgeoError: for an index out of range or an unknown band name.
    """
    if bands is None:
        return list(range(1, len(names) + 1))
    indexes = []
    for band in bands:
        if isinstance(band, str) and not band.isdigit():
            if band not in names:
                raise GlcgeoError(
                    f'no band named {band!r} (bands: {", ".join(names)})', path
                )
            indexes.append(names.index(band) + 1)
            continue
        index = int(band)
        if not 1 <= index <= len(names):
            raise GlcgeoError(f'band index {index} out of range 1..{len(names)}', path)
        indexes.append(index)
    return indexes


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
            descriptions=band_names(src),
            all_valid=all(
                flags == [MaskFlags.all_valid] for flags in src.mask_flag_enums
            ),
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
