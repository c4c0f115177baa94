"""Sources: local files, folders and globs, and URLs read through GDAL."""

from pathlib import Path

import pytest
from conftest import QUADRANTS, RGBN, S2_TILE_A, S2_TILES

from glcgeo.errors import GlcgeoError
from glcgeo.sources import exists, expand, is_url, stem, to_gdal_path

URLS = {
    'https://example.com/a/scene.tif?sig=x': '/vsicurl/https://example.com/a/scene.tif?sig=x',
    'http://127.0.0.1:8000/scene.tif': '/vsicurl/http://127.0.0.1:8000/scene.tif',
    's3://bucket/tiles/scene.tif': '/vsis3/bucket/tiles/scene.tif',
    'gs://bucket/scene.tif': '/vsigs/bucket/scene.tif',
    '/vsizip//data/scenes.zip/scene.tif': '/vsizip//data/scenes.zip/scene.tif',
}


@pytest.mark.parametrize('url', URLS)
def test_urls_map_to_gdal_paths_as_rasterio_maps_them(url: str) -> None:
    from rasterio._path import _parse_path, _vsi_path

    assert is_url(url) and exists(url)
    assert to_gdal_path(url) == URLS[url] == _vsi_path(_parse_path(url))
    assert stem(url) == 'scene'


def test_local_paths_stay_local(tmp_path: Path) -> None:
    for path in (S2_TILE_A, str(S2_TILE_A), 'relative/scene.tif', 'scene:2020.tif'):
        assert not is_url(path)
        assert to_gdal_path(path) == str(path)
    assert exists(S2_TILE_A) and not exists(tmp_path / 'missing.tif')
    assert stem(S2_TILE_A) == 'S2_L1C_18SUH_tileA_B02-B03-B04-B08'


def test_expand_keeps_urls_beside_files_folders_and_globs() -> None:
    url = 'https://example.com/scene.tif'
    sources = expand([S2_TILES, str(QUADRANTS[0].parent / 'rgb[12].tif'), url, RGBN])
    assert sources == sorted(
        [
            *(str(p) for p in sorted(S2_TILES.glob('*.tif'))),
            str(QUADRANTS[0]),
            str(QUADRANTS[1]),
            str(RGBN),
            url,
        ]
    )
    assert expand([url, url]) == [url]


def test_expand_says_what_is_missing(tmp_path: Path) -> None:
    for paths, message in [
        (tmp_path / 'missing.tif', 'no such file or folder'),
        (str(tmp_path / '*.tif'), 'pattern matches no file'),
        (tmp_path, 'folder holds no GeoTIFF'),
        ([], 'no input raster given'),
    ]:
        with pytest.raises(GlcgeoError, match=message):
            expand(paths)
