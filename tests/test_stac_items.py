"""STAC Items and ItemCollections as inputs: an item's assets chosen by --bands
(asset key, band name, common name) read as a band stack, locally (relative
hrefs) and by URL from the byte-range server; predict names maps by item id.
"""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from range_server import ServedFolder, serve
from rasterio.windows import Window
from test_band_files import BANDS, CROPS, split_bands
from test_cli_errors import _one_line

from glcgeo.bands import stack_of
from glcgeo.cli import main
from glcgeo.gdal_paths import stem
from glcgeo.sources import expand

#: Asset key -> band name and common name; no key is a band's common name nir.
ASSETS = {
    'blue': ('B02', 'blue'),
    'green': ('B03', 'green'),
    'red': ('B04', 'red'),
    'nir08': ('B08', 'nir'),
}
#: The shipped crops' items.
ITEMS = [f'S2_{scene}' for scene in CROPS]


def stac_item(scene: str, folder: str) -> dict[str, Any]:
    """A STAC 1.0 item of a scene's band files under *folder* (a relative href,
    or a URL ending in /)."""
    assets: dict[str, Any] = {
        # A JPEG 2000 copy of B08 listed before its GeoTIFF: the GeoTIFF is read.
        'nir08-jp2': {
            'href': f'{folder}{scene}_B08.jp2',
            'type': 'image/jp2',
            'eo:bands': [{'name': 'B08', 'common_name': 'nir'}],
        },
        'thumbnail': {'href': f'{scene}.png', 'type': 'image/png'},
    }
    for key, (band, common) in ASSETS.items():
        assets[key] = {
            'href': f'{folder}{scene}_{band}.tif',
            'type': 'image/tiff; application=geotiff; profile=cloud-optimized',
            'roles': ['data'],
            'eo:bands': [{'name': band, 'common_name': common}],
        }
    return {
        'type': 'Feature',
        'stac_version': '1.0.0',
        'stac_extensions': ['https://stac-extensions.github.io/eo/v1.1.0/schema.json'],
        'id': f'S2_{scene}',
        'geometry': None,
        'properties': {'datetime': '2024-06-01T10:00:00Z'},
        'links': [],
        'assets': assets,
    }


def write_json(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document))
    return path


@pytest.fixture(scope='module')
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """S2/ (band files), stacked/, items/<id>.json (hrefs ../S2/...) and
    search.json (an ItemCollection of both, hrefs S2/...)."""
    folder = tmp_path_factory.mktemp('stac')
    for sub in ('S2', 'stacked', 'items'):
        (folder / sub).mkdir()
    for name, (path, (col, row)) in CROPS.items():
        split_bands(path, Window(col, row, 256, 192), folder, name)
        write_json(folder / 'items' / f'S2_{name}.json', stac_item(name, '../S2/'))
    collection = {
        'type': 'FeatureCollection',
        'features': [stac_item(name, 'S2/') for name in CROPS],
    }
    write_json(folder / 'search.json', collection)
    return folder


@pytest.fixture(scope='module')
def server(folder: Path) -> Iterator[ServedFolder]:
    """The folder, served by byte ranges."""
    with serve(folder) as served:
        yield served


@pytest.mark.parametrize(
    'bands',
    [
        ['blue', 'green', 'red', 'nir'],  # keys, and nir a common name
        ['B02', 'B03', 'B04', 'B08'],  # band names
        ['nir08', 'red'],  # keys only
    ],
)
def test_an_item_reads_the_assets_its_bands_name(
    folder: Path, bands: list[str]
) -> None:
    (source,) = expand(str(folder / 'items' / 'S2_tileA.json'), bands=bands)
    stack = stack_of(source)
    assert stack is not None and stack.item == 'S2_tileA'
    assert stem(source) == 'S2_tileA'
    order = {'nir08': 4, 'red': 3}
    indexes = [order[b] for b in bands] if 'nir08' in bands else [1, 2, 3, 4]
    with (
        rasterio.open(source) as got,
        rasterio.open(folder / 'stacked' / 'tileA.tif') as want,
    ):
        assert got.descriptions == tuple(bands)
        assert (got.crs, got.transform) == (want.crs, want.transform)
        assert np.array_equal(got.read(), want.read(indexes))


def _stats(data: str, out: Path, bands: list[str]) -> dict[str, Any]:
    argv = ['stats', '--data', data, '--out', str(out), '--windows', '16']
    assert main([*argv, '--window-size', '64', '--bands', *bands]) == 0
    result = json.loads(out.read_text())
    result.pop('files')
    return result


def test_items_by_url_give_the_statistics_and_maps_of_the_stacked_files(
    folder: Path, server: ServedFolder, tmp_path: Path, fcn_checkpoint: Path
) -> None:
    # A local item whose assets are URLs of the server.
    remote = write_json(
        tmp_path / 'remote.json', stac_item('tileA', f'{server.url}/S2/')
    )
    stacked = _stats(str(folder / 'stacked' / 'tileA.tif'), tmp_path / 'a.json', BANDS)
    assert _stats(str(remote), tmp_path / 'b.json', BANDS) == stacked

    # A saved search by URL, its hrefs relative to it: a map per item, named by
    # the item's id.
    common = [
        '--model',
        str(fcn_checkpoint),
        '--tile-size',
        '128',
        '--overlap',
        '32',
        '--quiet',
    ]
    maps = tmp_path / 'maps'
    argv = ['predict', '--in', f'{server.url}/search.json', '--out', str(maps)]
    assert main([*argv, '--bands', 'blue', 'green', 'red', 'nir', *common]) == 0
    files = tmp_path / 'files'
    argv = ['predict', '--in', str(folder / 'stacked'), '--out', str(files)]
    assert main([*argv, *common]) == 0
    for scene, item in zip(CROPS, ITEMS, strict=True):
        with (
            rasterio.open(maps / f'{item}.tif') as got,
            rasterio.open(files / f'{scene}.tif') as want,
        ):
            assert (got.crs, got.transform) == (want.crs, want.transform)
            assert np.array_equal(got.read(), want.read())
            assert got.tags()['source'] == f'{server.url}/search.json'
    index = gpd.read_file(maps / 'footprints.gpkg')
    assert list(index['item']) == ITEMS
    assert list(index['scene']) == [f'{server.url}/search.json#{i}' for i in ITEMS]
    # The band files were read by byte ranges, never whole.
    ranges = [r for path, r in server.requests() if path.endswith('.tif')]
    assert ranges and 'whole' not in ranges


@pytest.mark.parametrize(
    ('case', 'advice'),
    [
        ('no band', "item S2_tileA has no asset or band named 'swir16' (assets: "),
        ('no bands', 'a STAC item needs --bands: the assets to read'),
        ('collection', 'not a STAC Item or ItemCollection (type: Collection)'),
        ('not json', 'not a STAC JSON document ('),
        ('missing asset', 'no such file'),
    ],
)
def test_a_bad_item_is_one_line_naming_it(
    folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    advice: str,
) -> None:
    document = stac_item('tileA', f'{folder}/S2/')
    culprit = path = tmp_path / 'item.json'
    bands = ['blue', 'swir16'] if case == 'no band' else BANDS
    if case == 'no bands':
        bands = []
    elif case == 'collection':
        document = {'type': 'Collection', 'id': 'sentinel-2', 'stac_version': '1.0.0'}
    elif case == 'missing asset':
        document['assets']['red']['href'] = 'S2/missing_B04.tif'
        culprit = tmp_path / 'S2' / 'missing_B04.tif'
    write_json(path, document)
    if case == 'not json':
        path.write_text('{"type": "Feature",')
    out = tmp_path / 'stats.json'
    argv = ['stats', '--data', str(path), '--out', str(out)]
    argv += ['--bands', *bands] if bands else []
    _one_line(capsys, main(argv), f'glcgeo: {culprit}: ', advice)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['item.json']
