"""GeoTIFF mosaics and class masks as TorchGeo datasets, one module each."""

from ..sources import expand as expand_paths
from .mask import GeoTiffMask
from .mosaic import GeoTiffMosaic

__all__ = ['GeoTiffMask', 'GeoTiffMosaic', 'expand_paths']
