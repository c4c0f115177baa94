"""GeoTIFF mosaics as TorchGeo datasets.

:class:`GeoTiffMosaic` indexes any set of GeoTIFFs (paths, folders or globs) of any band
count and dtype, reprojects them to one CRS and resolution, and reads either a plain
TorchGeo slice or a :class:`~glcgeo.samplers.WindowPair` (two overlapping views read
from one union window).
"""

import functools
import glob
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
import torch
import torch.nn.functional as F
from affine import Affine
from pyproj import CRS as PROJ_CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject
from torch import Tensor
from torchgeo.datasets import RasterDataset
from torchgeo.datasets.utils import GeoSlice, Sample

from .errors import GlcgeoError
from .geometry import PixelGrid, ground_to_pixel_boxes
from .samplers import WindowPair

__all__ = ['GeoTiffMosaic', 'expand_paths']

#: File name endings that :func:`expand_paths` collects from folders.
RASTER_SUFFIXES = ('.tif', '.tiff', '.TIF', '.TIFF', '.vrt', '.jp2')


def expand_paths(
    paths: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
) -> list[str]:
    """Expand files, folders (searched recursively) and glob patterns into files.

    Args:
        paths: one or more files, folders or glob patterns.

    Returns:
        the sorted, de-duplicated list of files.

    Raises:
        GlcgeoError: if a path does not exist or a folder/glob holds no raster.

    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    files: set[str] = set()
    for path in (os.fspath(p) for p in paths):
        if os.path.isdir(path):
            found = [
                f
                for f in glob.glob(os.path.join(path, '**', '*'), recursive=True)
                if f.endswith(RASTER_SUFFIXES) and os.path.isfile(f)
            ]
            if not found:
                raise GlcgeoError('folder holds no GeoTIFF (*.tif, *.tiff)', path)
        elif glob.has_magic(path):
            found = [f for f in glob.glob(path, recursive=True) if os.path.isfile(f)]
            if not found:
                raise GlcgeoError('pattern matches no file', path)
        elif os.path.isfile(path):
            found = [path]
        else:
            raise GlcgeoError('no such file or folder', path)
        files.update(os.path.abspath(f) for f in found)
    if not files:
        raise GlcgeoError('no input raster given')
    return sorted(files)


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
    Indexing with a :class:`~glcgeo.samplers.WindowPair` reads the pair's union
    window once and cuts both views from it.

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
        count = infos[0][0]
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
        del count

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

    @property
    def grid(self) -> PixelGrid:
        """The pixel grid of the dataset: origin at the top-left of its bounds."""
        x, y, _ = self.bounds
        return PixelGrid(x0=float(x.start), y0=float(y.stop), res=self.res)

    def valid_mask(self, image: Tensor) -> Tensor:
        """Pixels holding data: not every band equal to nodata, and no NaN.

        Args:
            image: [C, H, W] or [B, C, H, W] raw values.

        Returns:
            a boolean [H, W] (or [B, H, W]) mask, True where there is data.

        """
        invalid = torch.isnan(image).any(dim=-3)
        if self.file_nodata is not None and not math.isnan(self.file_nodata):
            invalid |= (image == self.file_nodata).all(dim=-3)
        return ~invalid

    def __getitem__(self, index: GeoSlice | WindowPair) -> Sample:
        """Read a TorchGeo slice, or both views of a window pair.

        Args:
            index: ``[xmin:xmax:xres, ymin:ymax:yres]`` in the dataset CRS, or a
                :class:`~glcgeo.samplers.WindowPair` from
                :class:`~glcgeo.samplers.PairedWindowSampler`.

        Returns:
            for a slice: ``image`` [C, H, W] float32, ``bounds`` float64
            (xmin, xmax, xres, ymin, ymax, yres) and ``transform`` float64
            (a, b, c, d, e, f of the rasterio affine). For a pair: see
            :meth:`read_pair`.

        """
        if isinstance(index, WindowPair):
            return self.read_pair(index)
        transforms, self.transforms = self.transforms, None
        try:
            sample = super().__getitem__(index)
        finally:
            self.transforms = transforms
        x, y, _ = self._disambiguate_slice(index)
        sample['bounds'] = torch.tensor(
            [x.start, x.stop, x.step, y.start, y.stop, y.step], dtype=torch.float64
        )
        affine = Affine(x.step, 0.0, x.start, 0.0, -y.step, y.stop)
        sample['transform'] = torch.tensor(affine[:6], dtype=torch.float64)
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def read_pair(self, pair: WindowPair) -> Sample:
        """Read a pair's union window once and cut both views from it.

        Each view is the pair's window of the read grid, resized (antialiased
        bilinear) to ``pair.size`` pixels when its scale differs from 1.

        Args:
            pair: the two windows, in pixels of :attr:`grid`.

        Returns:
            a sample with, for view ``k`` in 1, 2: ``image{k}`` [C, size, size]
            float32 raw values, ``transform{k}`` float64 [6] (rasterio affine,
            pixel -> dataset CRS), ``valid{k}`` the fraction of its pixels with data;
            and ``regions`` float64 [R, 4] ground boxes (xmin, ymin, xmax, ymax in
            the dataset CRS) inside the overlap, ``boxes{k}`` float32 [R, 4] the same
            boxes in view-``k`` pixels (x1, y1, x2, y2; pixel-edge convention),
            ``overlap`` float64 [4] the overlap as a ground box.

        """
        grid = self.grid
        union = pair.union
        xmin, ymax = grid.to_map(union.col_off, union.row_off)
        xmax, ymin = grid.to_map(
            union.col_off + union.width, union.row_off + union.height
        )
        xres, yres = grid.res
        raw = super().__getitem__((slice(xmin, xmax, xres), slice(ymin, ymax, yres)))[
            'image'
        ]
        regions = grid.boxes_to_map(pair.regions)
        sample: Sample = {}
        for k, window in ((1, pair.view1), (2, pair.view2)):
            r0, c0 = (
                int(window.row_off - union.row_off),
                int(window.col_off - union.col_off),
            )
            crop = raw[:, r0 : r0 + window.height, c0 : c0 + window.width]
            sample[f'valid{k}'] = torch.tensor(
                self.valid_mask(crop).float().mean().item()
            )
            if crop.shape[-1] != pair.size or crop.shape[-2] != pair.size:
                crop = F.interpolate(
                    crop[None],
                    size=(pair.size, pair.size),
                    mode='bilinear',
                    antialias=True,
                    align_corners=False,
                )[0]
            view_affine = grid.window_transform(window, pair.size)
            sample[f'image{k}'] = crop
            sample[f'transform{k}'] = torch.tensor(view_affine[:6], dtype=torch.float64)
            sample[f'boxes{k}'] = torch.from_numpy(
                ground_to_pixel_boxes(regions, view_affine)
            ).float()
        sample['regions'] = torch.from_numpy(regions)
        sample['overlap'] = torch.from_numpy(grid.boxes_to_map([pair.overlap]))[0]
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

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
