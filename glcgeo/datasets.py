"""GeoTIFF mosaics as TorchGeo datasets.

:class:`GeoTiffMosaic` indexes any set of GeoTIFFs (paths, folders or globs) of any band
count and dtype, reprojects them to one CRS and resolution, and reads TorchGeo
slices of it; :class:`GeoTiffMask` reads class masks the same way. Reading window
pairs is :mod:`glcgeo.pairs`' job.
"""

import functools
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import torch
from affine import Affine
from pyproj import CRS as PROJ_CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.io import DatasetReader
from rasterio.merge import copy_first
from rasterio.vrt import WarpedVRT
from rasterio.warp import reproject
from rasterio.windows import Window
from torch import Tensor
from torchgeo.datasets import RasterDataset
from torchgeo.datasets.utils import GeoSlice, Sample

from .errors import GlcgeoError
from .geometry import PixelGrid
from .sources import expand as expand_paths

__all__ = ['GeoTiffMask', 'GeoTiffMosaic', 'expand_paths', 'valid_pixels']

#: Band mask flags under which a masked pixel holds the file's nodata value (or
#: none is masked), so that a plain read equals a masked one filled with nodata.
PLAIN_MASKS = ([MaskFlags.all_valid], [MaskFlags.nodata])


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


def _check_raster(path: str, crs_given: bool) -> tuple[int, str, float | None]:
    """Open one file and check that glcgeo can use it.

    Args:
        path: the raster file.
        crs_given: whether the user forces a CRS, so files without one may be used.

    Returns:
        (band count, dtype name, nodata value) of the file.

    Raises:
        GlcgeoError: if the file is not a readable raster or has no georeferencing.

    """
    try:
        with rasterio.open(path) as src:
            if src.crs is None and not src.gcps[1] and not crs_given:
                raise GlcgeoError(
                    'raster has no CRS (not georeferenced); give one with crs=...',
                    path,
                )
            if src.transform.is_identity and not src.gcps[0]:
                raise GlcgeoError(
                    'raster has no geotransform (not georeferenced)', path
                )
            return src.count, src.dtypes[0], src.nodata
    except rasterio.errors.RasterioIOError as error:
        reason = str(error).split(':')[-1].strip() or 'unreadable'
        raise GlcgeoError(f'not a readable raster ({reason})', path) from None


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
    ) -> None:
        """Initialize a new GeoTiffMosaic.

        Args:
            paths: files, folders (searched recursively for ``*.tif``) or glob patterns.
            bands: bands to read, as 1-based indexes or band descriptions
                (defaults to all bands of the first file).
            crs: CRS to reproject to, anything pyproj accepts (defaults to the CRS of
                the first file).
            res: pixel size in units of *crs* (defaults to that of the first file).
            nodata: nodata value overriding the files' own (defaults to the value
                in the first file, if any).
            transforms: a function applied to each sample.
            cache: keep file handles open between reads.

        Raises:
            GlcgeoError: for a missing or unreadable file, files with different band
                counts, or a band out of range.

        """
        files = expand_paths(paths)
        infos = [_check_raster(f, crs is not None) for f in files]
        counts = {count for count, _, _ in infos}
        if len(counts) > 1:
            detail = ', '.join(
                f'{os.path.basename(f)}: {c}'
                for f, (c, _, _) in zip(files, infos, strict=True)
            )
            raise GlcgeoError(f'files have different band counts ({detail})', files[0])
        with rasterio.open(files[0]) as src:
            descriptions = [d or f'B{i + 1}' for i, d in enumerate(src.descriptions)]
        self.all_bands = tuple(descriptions)
        self.band_indexes_selected = self._resolve_bands(bands, descriptions, files[0])
        self.file_nodata = nodata if nodata is not None else infos[0][2]
        # RasterDataset only overrides the files' nodata when this is set.
        self.nodata = nodata
        self.source_dtype = infos[0][1]
        self._paths = files
        if crs is not None and not isinstance(crs, PROJ_CRS):
            crs = PROJ_CRS.from_user_input(crs)
        super().__init__(
            paths=files,
            crs=crs,
            res=res,
            bands=[descriptions[i - 1] for i in self.band_indexes_selected],
            transforms=transforms,
            cache=cache,
        )
        # TorchGeo maps band names to indexes; with duplicate names use ours.
        self.band_indexes = list(self.band_indexes_selected)
        self._mask_flags: dict[str, Sequence[Sequence[MaskFlags]]] = {}

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

    @functools.cached_property
    def file_bounds(self) -> list[tuple[str, tuple[float, float, float, float]]]:
        """Each file, in index order, with its (xmin, ymin, xmax, ymax) in the CRS."""
        bounds = self.index.geometry.bounds.to_numpy(dtype=np.float64)
        return [
            (path, (b[0], b[1], b[2], b[3]))
            for path, b in zip(self.index.filepath, bounds, strict=True)
        ]

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
        files = [
            path
            for path, (left, bottom, right, top) in self.file_bounds
            if left < xmax and xmin < right and bottom < ymax and ymin < top
        ]
        if not files:
            raise IndexError(f'({xmin}, {ymin}, {xmax}, {ymax}) is outside the mosaic')
        xres, yres = self.res
        shape = (round((ymax - ymin) / yres), round((xmax - xmin) / xres))
        if self.cache:
            pid = os.getpid()
            handles = [self._open_in_process(pid, path) for path in files]
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
        window, rows, cols = pieces[0]
        covered = (rows.stop - rows.start, cols.stop - cols.start) == shape
        if self._plain_masks(first) and window.width and window.height:
            # The first file's masked pixels hold its nodata, the fill: its plain
            # read is the composite so far where it lies, without the masks and
            # copies (most of a view's cost), and all of it when it covers the
            # output.
            data = first.read(
                self.band_indexes_selected, window=window, out_dtype=first.dtypes[0]
            )
            if covered:
                out = data
            else:
                out = np.full((self.num_bands, *shape), nodata, dtype=data.dtype)
                out[:, rows, cols] = data
            handles, pieces = handles[1:], pieces[1:]
        else:
            out = np.full((self.num_bands, *shape), nodata, dtype=first.dtypes[0])
        for handle, (window, rows, cols) in zip(handles, pieces, strict=True):
            if window.width == 0 or window.height == 0:
                continue
            region = out[:, rows, cols]
            if math.isnan(nodata):
                still_nodata = np.isnan(region)
            elif np.issubdtype(out.dtype, np.integer):
                still_nodata = region == nodata
            else:
                still_nodata = np.isclose(region, nodata)
            if not still_nodata.any():
                continue  # the files above cover this one here
            data = handle.read(self.band_indexes_selected, window=window, masked=True)
            copy_first(region, data, still_nodata, np.ma.getmaskarray(data))
        return torch.from_numpy(out)

    def _plain_masks(self, handle: DatasetReader | WarpedVRT) -> bool:
        """Whether a plain read of an open file is its masked read filled with nodata.

        Args:
            handle: the open file.

        Returns:
            True if every selected band's masked pixels hold the file's nodata
            value, or none is masked.
        """
        # Read once per file: rasterio builds the flags of every band anew at
        # each access (~20 us, a tenth of a view's read).
        flags = self._mask_flags.get(handle.name)
        if flags is None:
            flags = self._mask_flags[handle.name] = handle.mask_flag_enums
        return all(flags[i - 1] in PLAIN_MASKS for i in self.band_indexes_selected)

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

        DataLoader workers are forked from the main process: a file handle opened
        there before (statistics, a first read) would be shared by every worker,
        and their reads through the one file offset interleave into corrupt
        tiles. Keying the cache by process id gives each process its own handle.

        Args:
            filepath: the file.
            crs: the CRS to warp to: the dataset's, as TorchGeo's reads pass it.

        Returns:
            the open (possibly warped) file.
        """
        del crs
        return self._open_in_process(os.getpid(), filepath)

    @functools.lru_cache(maxsize=128)  # noqa: B019 (as TorchGeo's own handle cache)
    def _open_in_process(self, pid: int, filepath: str) -> DatasetReader | WarpedVRT:
        """Open a file in the dataset CRS for process *pid* (a cache key only).

        The CRS is no key: it is always the dataset's, and hashing a pyproj CRS
        exports its WKT (~35 us a read, as much as the rest of the lookup).
        """
        del pid
        return self._load_warp_file(filepath, self.crs)

    @functools.lru_cache(maxsize=4)  # noqa: B019 (the dataset lives as long as its cache)
    def coverage_grid(self, cell: float) -> tuple[np.ndarray, PixelGrid]:
        """Fraction of each coarse cell of the mosaic that holds data.

        Built once per cell size from each file's dataset mask read at reduced
        resolution (GDAL uses overviews where present), so the whole mosaic is never
        loaded at full resolution. Gaps between files count as nodata.

        Args:
            cell: cell size in units of the dataset CRS.

        Returns:
            (fractions [rows, cols] float32 in [0, 1], the grid of the cells).

        """
        x, y, _ = self.bounds
        cols = max(1, math.ceil((x.stop - x.start) / cell))
        rows = max(1, math.ceil((y.stop - y.start) / cell))
        coarse = PixelGrid(x0=float(x.start), y0=float(y.stop), res=(cell, cell))
        coverage = np.zeros((rows, cols), dtype=np.float32)
        for filepath in self.index.filepath:
            handle = self._load_warp_file(filepath, self.crs)
            try:
                # Read masks at about 4 samples per cell: cheap and accurate enough.
                scale = max(1.0, cell / 4 / handle.res[0])
                out_shape = (
                    max(1, round(handle.height / scale)),
                    max(1, round(handle.width / scale)),
                )
                mask = self._file_mask(handle, out_shape)
                mask_transform = handle.transform @ Affine.scale(
                    handle.width / out_shape[1], handle.height / out_shape[0]
                )
            finally:
                handle.close()
            part = np.zeros_like(coverage)
            reproject(
                mask,
                part,
                src_transform=mask_transform,
                src_crs=handle.crs,
                dst_transform=coarse.affine,
                dst_crs=handle.crs,
                resampling=Resampling.average,
            )
            np.maximum(coverage, part, out=coverage)
        return coverage, coarse

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

    Samples hold ``mask`` [H, W] int64 instead of ``image``. Resampling is nearest
    neighbour (TorchGeo's choice for integer data), so class values are never
    blended. Areas outside the files read as the nodata value.

    .. versionadded:: 0.1
    """

    is_image = False

    def __init__(
        self,
        paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        band: int = 1,
        crs: PROJ_CRS | str | int | None = None,
        res: float | tuple[float, float] | None = None,
        nodata: float | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
    ) -> None:
        """Initialize a new GeoTiffMask.

        Args:
            paths: files, folders or glob patterns of the masks.
            band: 1-based band holding the class values.
            crs: CRS to reproject to (defaults to the first file's).
            res: pixel size in units of *crs* (defaults to the first file's).
            nodata: value of unlabelled pixels overriding the files' own.
            transforms: a function applied to each sample.

        """
        super().__init__(
            paths, bands=[band], crs=crs, res=res, nodata=nodata, transforms=transforms
        )
