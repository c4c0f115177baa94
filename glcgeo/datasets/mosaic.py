"""GeoTIFF mosaics as TorchGeo datasets: :class:`GeoTiffMosaic`.

:class:`GeoTiffMosaic` indexes any set of GeoTIFFs (paths, folders, globs or URLs:
:mod:`glcgeo.sources`) of any band count and dtype, reprojects them to one CRS and
resolution, reads TorchGeo slices of it, and tells where it holds data
(:meth:`GeoTiffMosaic.coverage`, per occupied cell). Its cost follows the data:
each file is opened once to index it, reads find their files through a spatial
index, and nothing is sized by the mosaic's bounding box.

The work is shared out: single files are :mod:`glcgeo.rasters`' (opening,
headers, the nodata rule), the index :mod:`glcgeo.indexing`'s (kept on disk by
:mod:`glcgeo.index_cache`), open files :mod:`glcgeo.handles`', compositing files
into a read :mod:`glcgeo.compositing`'s, and coverage cells
:mod:`glcgeo.coverage`'s; TorchGeo's private members are reached through
:mod:`glcgeo._torchgeo` only. Reading window pairs is :mod:`glcgeo.pairs`' job.
"""

import functools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import rasterio
import shapely
import torch
from affine import Affine
from geopandas import GeoDataFrame
from pyproj import CRS as PROJ_CRS
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from torch import Tensor
from torchgeo.datasets import RasterDataset
from torchgeo.datasets.utils import GeoSlice, Sample

from .._torchgeo import init_raster_dataset, load_warp_file, resolve_slice
from ..compositing import Compositor
from ..coverage import CellBlock, SparseCoverage, footprint_block, mask_block
from ..errors import check_memory
from ..geometry import PixelGrid
from ..handles import FileHandles
from ..index_cache import (
    cache_key,
    load_coverage,
    load_index,
    save_coverage,
    save_index,
)
from ..indexing import Footprints, build_index, first_crs
from ..rasters import (
    RasterHeader,
    band_indexes,
    map_files,
    open_env,
    pixel_reads,
    read_headers,
    read_valid_mask,
    valid_pixels,
)
from ..sources import expand as expand_paths

__all__ = ['GeoTiffMosaic']


class GeoTiffMosaic(RasterDataset):
    """A mosaic of GeoTIFFs of any band count, dtype, CRS and nodata.

    Files are reprojected on the fly (GDAL warped VRTs) to one target CRS and
    resolution, and overlapping files are mosaicked, first file on top. Indexing
    with a TorchGeo slice ``ds[xmin:xmax:xres, ymin:ymax:yres]`` works as for any
    :class:`~torchgeo.datasets.RasterDataset`, but ``bounds`` and ``transform`` are
    returned as float64 (TorchGeo's float32 loses decimetres at UTM northings).

    A pixel is nodata where every selected band equals the nodata value, or any
    band is NaN (:func:`~glcgeo.rasters.valid_pixels`).

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
        # Warped files take it as their nodata (TorchGeo's rule).
        self.nodata = nodata
        self.index_cache = None if index_cache is None else os.fspath(index_cache)
        self._cache_key = cache_key(
            files, {'crs': crs and crs.to_wkt(), 'res': res, 'nodata': nodata}
        )
        index = None
        if self.index_cache is not None:
            index = load_index(self.index_cache, self._cache_key)
        if index is None:
            if headers is None:
                headers = read_headers(files, crs_given=crs is not None)
            index = build_index(
                files,
                headers,
                crs if crs is not None else first_crs(files[0], headers[0]),
                res,
                nodata,
                self.warp_file,
            )
            if self.index_cache is not None:
                save_index(self.index_cache, self._cache_key, index)
        descriptions = index.descriptions
        self.all_bands = tuple(descriptions)
        self.band_indexes_selected = band_indexes(bands, descriptions, files[0])
        self.file_nodata = nodata if nodata is not None else index.nodata
        self.source_dtype = index.dtype
        self._paths = files
        datetimes = pd.IntervalIndex.from_tuples(
            [(self.mint, self.maxt)] * len(files), closed='both', name='datetime'
        )
        # What RasterDataset.__init__ sets, from the index: TorchGeo's own opens
        # every file twice more and computes a warp grid for each (~5 ms a file).
        init_raster_dataset(
            self,
            paths=files,
            bands=[descriptions[i - 1] for i in self.band_indexes_selected],
            # By index: band names may repeat.
            band_indexes=self.band_indexes_selected,
            res=index.res,
            index=GeoDataFrame(
                {'filepath': files},
                index=datetimes,
                geometry=shapely.box(*index.boxes.T),
                crs=PROJ_CRS.from_wkt(index.crs),
            ),
            transforms=transforms,
            cache=cache,
        )
        self._direct = frozenset(np.asarray(files)[index.direct].tolist())
        self._all_valid = index.all_valid
        self._footprints = Footprints(index.boxes)
        self._handles = FileHandles(self._open_file)
        self._compositor = Compositor(self.band_indexes_selected)
        self._coverages: dict[float, SparseCoverage] = {}

    def __getstate__(self) -> dict[str, Any]:
        """The state DataLoader workers receive: the index, not the coverages.

        Workers only read; the coverages (the sampler's, in the main process),
        the spatial index of the footprints (rebuilt on a worker's first read)
        and open files stay behind.
        """
        state = self.__dict__.copy()
        state['_coverages'] = {}
        return state

    @property
    def files(self) -> list[str]:
        """The mosaic's files, in index order (first on top)."""
        return list(self._paths)

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
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the whole pixels of :attr:`grid` inside the bounds.

        Where windows may lie (:meth:`PixelGrid.inner_window
        <glcgeo.geometry.PixelGrid.inner_window>`: a partial last pixel is none).
        """
        x, y, _ = self.bounds
        window = self.grid.inner_window(x.start, y.start, x.stop, y.stop)
        return int(window.height), int(window.width)

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
        return self._footprints.overlapping(xmin, ymin, xmax, ymax)

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
        return self._footprints.on_files((xmin, ymin, xmax, ymax), res or self.res)

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
        file on top, composited by :class:`~glcgeo.compositing.Compositor`: files
        on the dataset's pixel grid are read by whole-pixel windows, skipping
        ``rasterio.merge``'s resampled reads of fractional windows (which, on some
        grids, take a neighbouring pixel) and the slice read's queries of the
        spatial index (together ~8x the cost of the read itself for a 224-pixel
        view); other files go through ``rasterio.merge`` as in TorchGeo. Slices at
        the dataset's resolution (``self[xmin:xmax:xres, ymin:ymax:yres]``) are
        read here.

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
        with pixel_reads(files), self._opened(files) as handles:
            return self._compositor.read(
                handles, (xmin, ymin, xmax, ymax), self.res, self.resampling
            )

    @contextmanager
    def _opened(
        self, files: Sequence[str]
    ) -> Iterator[list[DatasetReader | WarpedVRT]]:
        """The files, open in the dataset CRS: kept open with *cache*, else closed.

        Args:
            files: the files.

        Yields:
            their handles, in order.
        """
        if self.cache:
            yield [self._handles.get(path) for path in files]
            return
        handles: list[DatasetReader | WarpedVRT] = []
        try:
            for path in files:
                handles.append(self._open_file(path))
            yield handles
        finally:
            for handle in handles:
                handle.close()

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
        x, y, _ = resolve_slice(self, index)
        xres, yres = self.res
        window = PixelGrid(x0=x.start, y0=y.stop, res=(x.step, y.step)).window(
            x.start, y.start, x.stop, y.stop
        )
        rows, columns = int(window.height), int(window.width)
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
            data = self.read_raw(x.start, y.start, x.stop, y.stop)
        else:
            data = self._merge(x, y, index)
        data = data.to(self.dtype)
        sample: Sample = (
            {'image': data} if self.is_image else {'mask': data.squeeze(-3)}
        )
        sample['bounds'] = torch.tensor(
            [x.start, x.stop, x.step, y.start, y.stop, y.step], dtype=torch.float64
        )
        affine = Affine(x.step, 0.0, x.start, 0.0, -y.step, y.stop)
        sample['transform'] = torch.tensor(affine[:6], dtype=torch.float64)
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def _merge(self, x: slice, y: slice, index: GeoSlice) -> Tensor:
        """Read a box at another resolution than the dataset's, as TorchGeo does.

        The files TorchGeo's ``RasterDataset`` reads for the box (those it
        touches included), merged by ``rasterio.merge`` with the dataset's
        resampling.

        Args:
            x: the box's x slice, in the dataset CRS (step: the pixel width).
            y: its y slice (step: the pixel height).
            index: the slice asked for, for errors.

        Returns:
            [C, H, W] values, as TorchGeo's ``array_to_tensor`` maps them.

        Raises:
            IndexError: if no file intersects the box.
        """
        found = self._footprints.intersecting(x.start, y.start, x.stop, y.stop)
        files = [self._paths[i] for i in found.tolist()]
        if not files:
            raise IndexError(
                f'index: {index} not found in dataset with bounds: {self.bounds}'
            )
        with pixel_reads(files), self._opened(files) as handles:
            return self._compositor.merge(
                handles,
                (x.start, y.start, x.stop, y.stop),
                (x.step, y.step),
                self.resampling,
            )

    def warp_file(self, path: str, crs: PROJ_CRS) -> DatasetReader | WarpedVRT:
        """Open a file in *crs* as TorchGeo does: warped where it is off that grid.

        Args:
            path: the file.
            crs: the CRS to read it in.

        Returns:
            the open file or its warped VRT (with the dataset's nodata, if set).
        """
        return load_warp_file(self, path, crs)

    def _open_file(self, filepath: str) -> DatasetReader | WarpedVRT:
        """Open a file in the dataset CRS: as it is when it lies on it, else warped."""
        with open_env(filepath):
            if filepath in self._direct:
                return rasterio.open(filepath)
            return self.warp_file(filepath, self.crs)

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
        left, bottom, right, top = self._footprints.boxes.T
        cells = np.sum(((right - left) / cell + 2) * ((top - bottom) / cell + 2))
        mosaic = self.grid.window(x.start, y.start, x.stop, y.stop)
        columns, rows = int(mosaic.width), int(mosaic.height)
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
        box = self._footprints.boxes[position]
        if self._all_valid[position]:
            return footprint_block(box, grid, shape)
        handle = self._open_file(self._paths[position])
        try:
            # Read masks at about 4 samples per cell: cheap and accurate enough.
            scale = max(1.0, grid.res[0] / 4 / handle.res[0])
            out_shape = (
                max(1, round(handle.height / scale)),
                max(1, round(handle.width / scale)),
            )
            mask = self._file_mask(handle, out_shape)
            # Files and warped files alike lie on north-up grids of the CRS.
            transform, size = handle.transform, (handle.height, handle.width)
        finally:
            handle.close()
        return mask_block(box, grid, shape, mask, transform, size)

    def _file_mask(
        self, handle: DatasetReader | WarpedVRT, out_shape: tuple[int, int]
    ) -> np.ndarray:
        """Valid-data mask of one file at reduced resolution, as float32 0/1.

        Args:
            handle: an open (possibly warped) file in the dataset CRS.
            out_shape: (rows, cols) to read at.

        Returns:
            1.0 where the selected bands hold data by the mosaic's nodata
            (:func:`~glcgeo.rasters.read_valid_mask`), else 0.0. A file without
            a nodata value of its own, none being given, holds data over its
            footprint.
        """
        nodata = None
        if self.nodata is not None or handle.nodata is not None:
            nodata = self.file_nodata
        return read_valid_mask(handle, self.band_indexes_selected, nodata, out_shape)
