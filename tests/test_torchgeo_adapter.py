"""Each private member of TorchGeo that glcgeo uses, as glcgeo uses it.

A TorchGeo release that renames or changes one of them fails here, with a message
naming the member: glcgeo._torchgeo is then the one place to adapt.
"""

import ast
import inspect
import textwrap
from pathlib import Path

import pytest
import rasterio
import shapely
from geopandas import GeoDataFrame
from pyproj import CRS as PROJ_CRS
from rasterio.vrt import WarpedVRT
from torchgeo.datasets import GeoDataset, RasterDataset

from glcgeo._torchgeo import (
    RASTER_DATASET_ATTRIBUTES,
    init_raster_dataset,
    load_warp_file,
    resolve_slice,
)
from glcgeo.datasets import GeoTiffMosaic

DATA = Path(__file__).parent / 'data'
S2_TILE = DATA / 'sentinel2_10m_tiles' / 'S2_L1C_18SUH_tileA_B02-B03-B04-B08.tif'


def member(cls: type, name: str) -> object:
    """A TorchGeo class's member, or a failure naming it."""
    found = inspect.getattr_static(cls, name, None)
    if found is None:
        pytest.fail(f'TorchGeo changed: {cls.__name__}.{name} is gone')
    return found


def test_raster_dataset_init_sets_what_init_raster_dataset_sets() -> None:
    source = textwrap.dedent(inspect.getsource(RasterDataset.__init__))
    assigned = {
        target.attr
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Attribute)
        and isinstance(target.value, ast.Name)
        and target.value.id == 'self'
    }
    assert assigned == RASTER_DATASET_ATTRIBUTES, (
        'TorchGeo changed: RasterDataset.__init__ now sets '
        f'{sorted(assigned - RASTER_DATASET_ATTRIBUTES)} and no longer sets '
        f'{sorted(RASTER_DATASET_ATTRIBUTES - assigned)}'
    )


def test_geo_dataset_res_reads_the_private_res() -> None:
    # init_raster_dataset sets GeoDataset._res, which the res property returns.
    member(GeoDataset, '_res')
    dataset = GeoTiffMosaic.__new__(GeoTiffMosaic)
    init_raster_dataset(
        dataset,
        paths=[str(S2_TILE)],
        bands=['B1'],
        band_indexes=[1],
        res=(10.0, 20.0),
        index=GeoDataFrame(
            {'filepath': [str(S2_TILE)]},
            geometry=[shapely.box(0, 0, 10, 10)],
            crs='EPSG:32618',
        ),
        transforms=None,
        cache=True,
    )
    assert dataset.res == (10.0, 20.0), 'TorchGeo changed: GeoDataset.res and _res'
    assert dataset.crs == PROJ_CRS.from_epsg(32618)


def test_load_warp_file_opens_or_warps_as_torchgeo_reads() -> None:
    member(RasterDataset, '_load_warp_file')
    parameters = list(inspect.signature(RasterDataset._load_warp_file).parameters)
    assert parameters == ['self', 'filepath', 'crs'], (
        f'TorchGeo changed: RasterDataset._load_warp_file{tuple(parameters)}'
    )
    mosaic = GeoTiffMosaic(S2_TILE)
    with load_warp_file(mosaic, str(S2_TILE), mosaic.crs) as same:
        assert not isinstance(same, WarpedVRT)
        with rasterio.open(S2_TILE) as src:
            assert same.bounds == src.bounds
    with load_warp_file(mosaic, str(S2_TILE), PROJ_CRS.from_epsg(3857)) as warped:
        assert isinstance(warped, WarpedVRT), (
            'TorchGeo changed: RasterDataset._load_warp_file no longer warps'
        )
        assert warped.crs.to_epsg() == 3857


def test_resolve_slice_fills_the_parts_left_out_from_the_bounds() -> None:
    member(GeoDataset, '_disambiguate_slice')
    mosaic = GeoTiffMosaic(S2_TILE)
    x, y, t = mosaic.bounds
    start = x.start + 100.0
    resolved = resolve_slice(mosaic, slice(start, None, 20.0))
    assert resolved == (slice(start, x.stop, 20.0), y, t), (
        'TorchGeo changed: GeoDataset._disambiguate_slice'
    )
