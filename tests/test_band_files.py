"""Scenes of one file per band (``{band}`` patterns): read as the same bands
stacked in one file, by stats, predict and pretrain; bad scenes in one line.

The scenes are two crops of the shipped Sentinel-2 tiles, split into a file per
band, B08 written at 20 m (each 2 x 2 block averaged); the stacked files hold
the same bands with B08 brought back to 10 m (each 20 m pixel repeated), as a
stack reads it.
"""

import json
import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from conftest import S2_TILE_A, S2_TILE_B, warp_raster
from rasterio.windows import Window
from test_cli_errors import FINETUNE, LOCAL_CRS, _one_line

from glcgeo.bands import band_files, stack_of
from glcgeo.cli import main
from glcgeo.datasets import GeoTiffMosaic
from glcgeo.errors import GlcgeoError
from glcgeo.gdal_paths import stem
from glcgeo.sources import expand

BANDS = ['B02', 'B03', 'B04', 'B08']
#: Crops (column, row) of 256 x 192 pixels of each shipped tile.
CROPS = {'tileA': (S2_TILE_A, (64, 96)), 'tileB': (S2_TILE_B, (320, 128))}


def split_bands(src_path: Path, window: Window, folder: Path, name: str) -> np.ndarray:
    """Write a crop's bands one file each (B08 at 20 m) and its stacked file.

    Returns:
        the stacked file's [4, H, W] values.
    """
    with rasterio.open(src_path) as src:
        data = src.read(window=window)
        transform = src.window_transform(window)
        profile = src.profile | {'count': 1, 'blockxsize': 64, 'blockysize': 64}
    for band, values in zip(BANDS, data, strict=True):
        size = {'width': values.shape[1], 'height': values.shape[0]}
        where = transform
        if band == 'B08':
            height, width = values.shape
            coarse = values.reshape(height // 2, 2, width // 2, 2).mean(axis=(1, 3))
            values = np.round(coarse).astype(values.dtype)
            size = {'width': width // 2, 'height': height // 2}
            where = Affine(20.0, 0.0, transform.c, 0.0, -20.0, transform.f)
            data[3] = np.repeat(np.repeat(values, 2, axis=0), 2, axis=1)
        with rasterio.open(
            folder / 'S2' / f'{name}_{band}.tif',
            'w',
            **(profile | size | {'transform': where}),
        ) as dst:
            dst.write(values, 1)
    stacked = profile | {'count': 4, 'width': window.width, 'height': window.height}
    with rasterio.open(
        folder / 'stacked' / f'{name}.tif', 'w', **(stacked | {'transform': transform})
    ) as dst:
        dst.write(data)
        dst.descriptions = tuple(BANDS)
    return data


@pytest.fixture(scope='module')
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """S2/<scene>_<band>.tif for two scenes, and stacked/<scene>.tif."""
    folder = tmp_path_factory.mktemp('bands')
    (folder / 'S2').mkdir()
    (folder / 'stacked').mkdir()
    for name, (path, (col, row)) in CROPS.items():
        split_bands(path, Window(col, row, 256, 192), folder, name)
    return folder


def test_a_star_pattern_gives_a_scene_per_match_with_the_bands_named(
    scenes: Path,
) -> None:
    sources = expand(str(scenes / 'S2' / '*_{band}.tif'), bands=['B08', 'B02'])
    assert [stem(s) for s in sources] == ['tileA', 'tileB']
    for source in sources:
        stack = stack_of(source)
        assert stack is not None and stack.origin == str(
            scenes / 'S2' / f'{stack.name}_{{band}}.tif'
        )
        with (
            rasterio.open(source) as got,
            rasterio.open(scenes / 'stacked' / f'{stack.name}.tif') as want,
        ):
            # --bands names select and order; 20 m B08 on the 10 m grid.
            assert got.descriptions == ('B08', 'B02')
            assert (got.crs, got.transform, got.shape) == (
                want.crs,
                want.transform,
                want.shape,
            )
            assert np.array_equal(got.read(), want.read([4, 1]))
            # Windows at odd offsets read the coarse band as the whole read does.
            window = Window(33, 17, 101, 57)
            assert np.array_equal(
                got.read(window=window), want.read([4, 1], window=window)
            )
    assert band_files(sources[:1]) == [
        str(scenes / 'S2' / f'tileA_{band}.tif') for band in ('B08', 'B02')
    ]
    # Without a wildcard, the pattern is one scene; made once per process.
    one = expand(str(scenes / 'S2' / 'tileB_{band}.tif'), bands=['B08', 'B02'])
    assert one == sources[1:]


def _stats(data: list[str], out: Path, *flags: str) -> dict[str, object]:
    argv = ['stats', '--data', *data, '--out', str(out), '--windows', '16']
    assert main([*argv, '--window-size', '64', '--bands', *BANDS, *flags]) == 0
    return json.loads(out.read_text())


def test_stats_of_a_pattern_equal_those_of_the_stacked_files(
    scenes: Path, tmp_path: Path
) -> None:
    pattern = str(scenes / 'S2' / '*_{band}.tif')
    stacks = _stats([pattern], tmp_path / 'stacks.json')
    files = _stats([str(scenes / 'stacked')], tmp_path / 'files.json')
    assert stacks.pop('files') == [
        str(scenes / 'S2' / f'{name}_{{band}}.tif') for name in CROPS
    ]
    files.pop('files')
    assert stacks == files


def test_at_another_pixel_size_each_band_is_read_from_its_own_pixels(
    scenes: Path,
) -> None:
    stacks = GeoTiffMosaic(scenes / 'S2' / 'tileA_{band}.tif', bands=BANDS, res=20)
    files = GeoTiffMosaic(scenes / 'stacked' / 'tileA.tif', res=20)
    x, y, _ = stacks.bounds
    box = (slice(x.start, x.stop, 20.0), slice(y.start, y.stop, 20.0))
    got, want = stacks[box]['image'], files[box]['image']
    assert torch.equal(got[:3], want[:3])
    with rasterio.open(scenes / 'S2' / 'tileA_B08.tif') as b08:
        assert np.array_equal(got[3].numpy(), b08.read(1))


def test_predict_on_a_pattern_equals_predict_on_the_stacked_files(
    scenes: Path, tmp_path: Path, fcn_checkpoint: Path
) -> None:
    pattern = str(scenes / 'S2' / '*_{band}.tif')
    outs = {'stacks': tmp_path / 'stacks', 'files': tmp_path / 'files'}
    common = ['--model', str(fcn_checkpoint), '--tile-size', '128', '--overlap', '32']
    argv = ['predict', '--in', pattern, '--bands', *BANDS, '--quiet', *common]
    assert main([*argv, '--out', str(outs['stacks'])]) == 0
    stacked = ['predict', '--in', str(scenes / 'stacked'), '--quiet', *common]
    assert main([*stacked, '--out', str(outs['files'])]) == 0
    for name in CROPS:
        with (
            rasterio.open(outs['stacks'] / f'{name}.tif') as got,
            rasterio.open(outs['files'] / f'{name}.tif') as want,
        ):
            assert (got.crs, got.transform, got.shape) == (
                want.crs,
                want.transform,
                want.shape,
            )
            assert np.array_equal(got.read(), want.read())
            assert got.tags()['source'] == str(scenes / 'S2' / f'{name}_{{band}}.tif')
    index = gpd.read_file(outs['stacks'] / 'footprints.gpkg')
    assert list(index['scene']) == [
        str(scenes / 'S2' / f'{name}_{{band}}.tif') for name in CROPS
    ]
    assert index['item'].isna().all() and index.geometry.notna().all()


def test_pretrain_takes_a_pattern(scenes: Path, tmp_path: Path) -> None:
    run = tmp_path / 'run'
    argv = ['pretrain', '--data', str(scenes / 'S2' / '*_{band}.tif')]
    argv += ['--bands', *BANDS, '--out', str(run), '--max-steps', '1']
    tiny = ['--backbone', 'resnet18', '--patch-size', '64', '--batch-size', '2']
    # A loader worker reads the stacks its parent made (inherited, not remade).
    assert main([*argv, *tiny, '--num-workers', '1', '--quiet']) == 0
    assert (run / 'checkpoints' / 'last.ckpt').exists()


def test_finetune_takes_a_pattern(scenes: Path, tmp_path: Path) -> None:
    out = tmp_path / 'ft'
    argv = ['finetune', '--images', str(scenes / 'S2' / '*_{band}.tif')]
    argv += ['--bands', *BANDS, '--out', str(out), '--max-steps', '1', *FINETUNE]
    assert main(argv) == 0
    assert (out / 'model.ckpt').exists()


# Bad scenes: one line naming the pattern or the file, nothing written.


def _scene(folder: Path, scenes: Path, change: str) -> tuple[Path, Path]:
    """A copy of tile A's band files with one changed; (pattern, culprit)."""
    folder.mkdir()
    for band in BANDS:
        source = scenes / 'S2' / f'tileA_{band}.tif'
        (folder / source.name).write_bytes(source.read_bytes())
    culprit = folder / 'tileA_B08.tif'
    if change == 'missing':
        culprit.unlink()
    elif change == 'crs':
        warp_raster(scenes / 'S2' / 'tileA_B08.tif', culprit, 'EPSG:32617')
    elif change == 'far':
        with rasterio.open(culprit, 'r+') as dst:
            dst.transform = dst.transform @ Affine.translation(0, 10_000)
    elif change == 'local':
        for band in BANDS:
            with rasterio.open(folder / f'tileA_{band}.tif', 'r+') as dst:
                dst.crs = LOCAL_CRS
    return folder / 'tileA_{band}.tif', culprit


@pytest.mark.parametrize(
    ('change', 'named', 'advice'),
    [
        ('missing', 'file', 'no such file: band B08 of the scene '),
        ('crs', 'file', 'band B08 is in EPSG:32617, band B02 ('),
        ('far', 'file', 'band B08 does not overlap the bands before it'),
        ('local', 'pattern', 'its CRS, a local CRS "RGF93 v1 / Lambert-93", cannot'),
        ('no bands', 'pattern', 'a {band} pattern needs --bands: the band names'),
        ('numbers', 'pattern', 'a {band} pattern takes band names, not numbers'),
    ],
)
def test_a_bad_scene_is_one_line_naming_it(
    scenes: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    change: str,
    named: str,
    advice: str,
) -> None:
    pattern, culprit = _scene(tmp_path / 'S2', scenes, change)
    out = tmp_path / 'out'
    argv = ['stats', '--data', str(pattern), '--out', str(out), '--windows', '4']
    if change == 'local':
        # Fine-tuning on the masks' grid: the scene's CRS cannot be transformed.
        argv = ['finetune', '--images', str(pattern), '--out', str(out), *FINETUNE]
        argv += ['--crs', 'EPSG:32618']
    bands = {'no bands': [], 'numbers': ['2', '3']}.get(change, BANDS)
    if bands:
        argv += ['--bands', *bands]
    name = culprit if named == 'file' else pattern
    _one_line(capsys, main(argv), f'glcgeo: {name}: ', advice)
    assert os.listdir(tmp_path) == ['S2']


def test_predict_reads_band_names_of_a_plain_file_from_its_descriptions(
    scenes: Path,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    fcn_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Names on a stacked file are its band descriptions: the same map as the
    # same bands given one file per band, and an unknown name is one line.
    plain = scenes / 'stacked' / 'tileA.tif'
    pattern = str(scenes / 'S2' / 'tileA_{band}.tif')
    common = ['--model', str(fcn_checkpoint), '--bands', *BANDS, '--quiet']
    maps = tmp_path_factory.mktemp('maps')
    assert main(['predict', '--in', str(plain), '--out', str(maps / 'a.tif'),
                 *common]) == 0  # fmt: skip
    assert main(['predict', '--in', pattern, '--out', str(maps / 'b.tif'),
                 *common]) == 0  # fmt: skip
    with rasterio.open(maps / 'a.tif') as a, rasterio.open(maps / 'b.tif') as b:
        assert (a.read() == b.read()).all()
    argv = ['predict', '--in', str(plain), '--out', str(tmp_path / 'c.tif'),
            '--model', str(fcn_checkpoint), '--bands', *BANDS[:3], 'B05']  # fmt: skip
    _one_line(
        capsys,
        main(argv),
        f"glcgeo: {plain}: no band named 'B05' (bands: B02, B03, B04, B08)",
    )
    assert not (tmp_path / 'c.tif').exists()
    # An output is never one of a stack's band files.
    band_file = scenes / 'S2' / 'tileA_B02.tif'
    before = band_file.read_bytes()
    argv = ['predict', '--in', str(scenes / 'S2' / 'tileA_{band}.tif'), '--bands']
    argv += [*BANDS, '--out', str(band_file), '--model', str(fcn_checkpoint)]
    _one_line(
        capsys, main([*argv, '--overwrite']), 'output and input must be different'
    )
    assert band_file.read_bytes() == before
    assert not list(tmp_path.iterdir())
    with pytest.raises(GlcgeoError, match='pattern matches no file of any band'):
        expand(str(tmp_path / '*_{band}.tif'), bands=BANDS)
