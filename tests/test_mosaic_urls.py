"""Mosaics by URL: read through GDAL from a local byte-range HTTP server.

The server (tests/range_server.py, its own process) serves copies of the
shipped files; every result must be what the local copies give.
"""

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import QUADRANTS, S2_TILES
from range_server import ServedFolder, serve

from glcgeo.cli import main
from glcgeo.datasets import GeoTiffMosaic
from glcgeo.errors import GlcgeoError
from glcgeo.gdal_paths import is_url, to_gdal_path
from glcgeo.pairs import GeoTiffPairs
from glcgeo.samplers import PairedWindowSampler
from glcgeo.sources import expand
from glcgeo.stats import compute_band_stats


@pytest.fixture(scope='module')
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedFolder]:
    """A server of www/s2/ (the Sentinel-2 tiles), www/quadrants/ (rgb1, rgb2)
    and www/empty/."""
    www = tmp_path_factory.mktemp('www')
    shutil.copytree(S2_TILES, www / 's2')
    (www / 'quadrants').mkdir()
    for path in QUADRANTS[:2]:
        shutil.copy(path, www / 'quadrants')
    (www / 'empty').mkdir()
    (www / 'empty' / 'notes.txt').write_text('no raster here')
    with serve(www) as server:
        yield server


@pytest.fixture
def served(server: ServedFolder) -> str:
    """The server's base URL."""
    return server.url


def s2_urls(base: str) -> list[str]:
    return [f'{base}/s2/{path.name}' for path in sorted(S2_TILES.iterdir())]


def test_expand_lists_folder_urls_and_reads_lists_of_sources(
    served: str, tmp_path: Path
) -> None:
    assert expand(f'{served}/s2/') == s2_urls(served)
    assert expand([f'{served}/s2/', s2_urls(served)[0]]) == s2_urls(served)
    local = shutil.copy(QUADRANTS[0], tmp_path / 'local.tif')
    listing = tmp_path / 'sources.txt'
    listing.write_text(f'# a mosaic\n{s2_urls(served)[1]}\n\nlocal.tif\n')
    expected = sorted([s2_urls(served)[1], str(local)])
    assert expand(f'@{listing}') == expected
    assert to_gdal_path('s3://bucket/key/a.tif') == '/vsis3/bucket/key/a.tif'
    assert to_gdal_path('gs://bucket/a.tif') == '/vsigs/bucket/a.tif'
    assert to_gdal_path(f'{served}/a.tif') == f'/vsicurl/{served}/a.tif'
    assert is_url('/vsizip/archive.zip/a.tif') and not is_url(str(local))
    for bad, message in (
        (f'{served}/empty/', 'lists no GeoTIFF'),
        (f'@{tmp_path / "missing.txt"}', 'cannot read list'),
    ):
        with pytest.raises(GlcgeoError, match=message) as info:
            expand(bad)
        assert '\n' not in str(info.value)


def test_a_mosaic_by_url_gives_the_pairs_and_statistics_of_its_local_copy(
    server: ServedFolder,
) -> None:
    served = server.url
    local, remote = GeoTiffPairs(S2_TILES), GeoTiffPairs(f'{served}/s2/')
    assert remote.files == s2_urls(served)
    assert remote.bounds == local.bounds and remote.res == local.res
    samplers = [
        PairedWindowSampler(m, size=64, length=6, generator=torch.Generator())
        for m in (local, remote)
    ]
    for a, b in zip(*samplers, strict=True):
        assert a == b
        one, two = local[a], remote[b]
        for key in ('image1', 'image2', 'transform1', 'boxes1', 'valid2'):
            assert torch.equal(one[key], two[key])
    stats = [compute_band_stats(m, windows=6, window_size=64) for m in (local, remote)]
    assert stats[0].mean == stats[1].mean and stats[0].std == stats[1].std
    # The files were read by byte ranges, never whole.
    files = [r for path, r in server.requests() if path.endswith('.tif')]
    assert files and 'whole' not in files


def test_stats_and_pretrain_commands_take_urls(served: str, tmp_path: Path) -> None:
    outs = []
    for name, data in (('local', str(S2_TILES)), ('remote', f'{served}/s2/')):
        outs.append(tmp_path / f'{name}.json')
        argv = ['stats', '--data', data, '--out', str(outs[-1]), '--windows', '4']
        assert main(argv) == 0
    local, remote = (json.loads(p.read_text()) for p in outs)
    assert local['mean'] == remote['mean'] and local['std'] == remote['std']
    listing = tmp_path / 'urls.txt'
    listing.write_text('\n'.join(s2_urls(served)))
    run = tmp_path / 'run'
    argv = ['pretrain', '--data', f'@{listing}', '--out', str(run), '--max-steps', '2']
    tiny = ['--backbone', 'resnet18', '--patch-size', '64', '--batch-size', '4']
    assert main([*argv, *tiny, '--num-workers', '0', '--quiet']) == 0
    assert (run / 'checkpoints' / 'last.ckpt').exists()
    # Built once for the run's other processes (DDP ranks, --resume): the
    # files' CRS groups, the index and the valid-data coverage.
    cached = {p.name.split('-')[0] for p in (run / 'index').iterdir()}
    assert cached == {'coverage', 'crs', 'index'}


def test_a_missing_url_is_one_line_naming_it(served: str) -> None:
    url = f'{served}/s2/missing.tif'
    reason = r'cannot open the URL as a raster \(HTTP response code: 404\)'
    with pytest.raises(GlcgeoError, match=reason) as info:
        GeoTiffMosaic(url)
    assert info.value.path == url and '\n' not in str(info.value)
