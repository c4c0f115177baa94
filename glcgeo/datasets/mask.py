"""Class masks in GeoTIFFs as a TorchGeo dataset: :class:`GeoTiffMask`."""

import os
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import rasterio
import torch
from pyproj import CRS as PROJ_CRS
from rasterio.crs import CRS
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from torchgeo.datasets.utils import GeoSlice, Sample

from .._torchgeo import resolve_slice
from ..errors import GlcgeoError
from ..rasters import map_files, open_env, pixel_reads, valid_pixels
from .mosaic import GeoTiffMosaic

__all__ = ['GeoTiffMask']


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

    def warp_file(self, path: str, crs: PROJ_CRS) -> DatasetReader | WarpedVRT:
        """Open a file in *crs*, or a file of *read_as* in the CRS given there."""
        grid_crs = self.read_as.get(path)
        if grid_crs is None:
            return super().warp_file(path, crs)
        src = rasterio.open(path)
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
        x, y, _ = resolve_slice(self, index)
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
