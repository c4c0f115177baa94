"""Hostile inputs: statistics, rasters, folders, configs, sizes and URLs.

Each is refused in one line naming the flag, file or key and what is wrong (or,
for folders, read as it is), with a non-zero exit and nothing written; a URL
that never answers fails in time, and Ctrl-C or SIGTERM stop the command while
it waits.
"""

import importlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import rasterio
import yaml
from conftest import LANDSAT8, S2_TILE_A, S2_TILES, write_raster
from range_server import unresponsive
from rasterio.control import GroundControlPoint
from test_cli_errors import LABELS, _one_line, _save_segmentation_checkpoint

from glcgeo.cli import main
from glcgeo.errors import GlcgeoError
from glcgeo.gdal_paths import GDAL_HTTP_LIMITS, gdal_options
from glcgeo.runs import read_config
from glcgeo.sources import expand
from glcgeo.stats import BandStats
from glcgeo.tasks import GLCNetTask

PREDICT = ['--tile-size', '64', '--overlap', '16', '--quiet']


@pytest.fixture(scope='module')
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny TorchGeo checkpoint for 4 bands, without band statistics."""
    folder = tmp_path_factory.mktemp('model')
    return _save_segmentation_checkpoint(folder / 'model.ckpt', statistics=False)


# Band statistics: finite means, finite positive stds, from one reader.

BAD_STATISTICS = {
    'nan mean': ('{"mean": [NaN, 1, 1, 1], "std": [1, 1, 1, 1]}',
                 "'mean' must be finite numbers, got [nan, 1, 1, 1]"),
    'infinite std': ('{"mean": [0, 0, 0, 0], "std": [Infinity, 1, 1, 1]}',
                     "'std' must be finite numbers"),
    'zero std': ('{"mean": [0, 0, 0, 0], "std": [0, 1, 1, 1]}',
                 'std must be > 0, got [0.0, 1.0, 1.0, 1.0]'),
    'negative std': ('{"mean": [0, 0, 0, 0], "std": [-1, 1, 1, 1]}',
                     'std must be > 0'),
    'strings': ('{"mean": ["0", "0", "0", "0"], "std": [1, 1, 1, 1]}',
                "'mean' must be a list of numbers, got ['0', '0', '0', '0']"),
    'lengths': ('{"mean": [0, 0, 0, 0], "std": [1, 1]}', '4 means but 2 stds'),
    'unknown key': ('{"mean": [0], "std": [1], "means": [0]}',
                    "unknown key 'means'; keys: mean, std, bands"),
    'no std': ('{"mean": [0, 0, 0, 0]}', "no 'std' list"),
    'a list': ('[1, 2]', 'a JSON object is expected, got list'),
    'bands': ('{"mean": [0], "std": [1], "bands": [0]}',
              "'bands' must be 1 band indexes >= 1, got [0]"),
}  # fmt: skip


@pytest.mark.parametrize('case', BAD_STATISTICS)
@pytest.mark.parametrize('command', ['predict', 'pretrain'])
def test_statistics_that_would_normalise_wrongly_are_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    model: Path,
    case: str,
    command: str,
) -> None:
    stats = tmp_path / 'stats.json'
    text, problem = BAD_STATISTICS[case]
    stats.write_text(text)
    out = tmp_path / 'out'
    argv = {
        'predict': ['--in', S2_TILE_A, '--out', out, '--model', model, *PREDICT],
        'pretrain': ['--data', S2_TILE_A, '--out', out, '--max-steps', '1'],
    }[command]
    status = main([command, *map(str, argv), '--stats', str(stats)])
    _one_line(capsys, status, f'glcgeo: {stats}: not glcgeo band statistics', problem)
    assert sorted(os.listdir(tmp_path)) == ['stats.json']


def test_a_checkpoint_given_as_statistics_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: Path
) -> None:
    out = tmp_path / 'map.tif'
    argv = ['predict', '--in', str(S2_TILE_A), '--out', str(out), '--model',
            str(model), '--stats', str(model)]  # fmt: skip
    status = main(argv)
    _one_line(capsys, status, f'{model}: not glcgeo band statistics (not a JSON text')
    assert not out.exists()


def test_statistics_of_mean_and_std_alone_still_serve_predict(
    tmp_path: Path, model: Path
) -> None:
    stats = tmp_path / 'stats.json'
    stats.write_text(json.dumps({'mean': [1000.0] * 4, 'std': [500.0] * 4}))
    assert BandStats.load(stats).bands == [1, 2, 3, 4]
    out = tmp_path / 'map.tif'
    argv = ['predict', '--in', str(S2_TILE_A), '--out', str(out), '--model',
            str(model), '--stats', str(stats), *PREDICT]  # fmt: skip
    assert main(argv) == 0 and out.exists()


@pytest.mark.parametrize('value', ['nan', 'inf', 'Infinity'])
def test_a_mean_that_is_not_finite_is_refused_as_parsed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: Path, value: str
) -> None:
    argv = ['predict', '--in', str(S2_TILE_A), '--out', str(tmp_path / 'map.tif'),
            '--model', str(model), '--mean', value, '1', '1', '1',
            '--std', '1', '1', '1', '1']  # fmt: skip
    _one_line(capsys, main(argv), f"argument --mean: not a finite number: '{value}'")
    assert os.listdir(tmp_path) == []


# Rasters that glcgeo cannot use, and GDAL's reasons.


def _gcp_raster(path: Path) -> Path:
    """Landsat 8 georeferenced by four corner GCPs only, as many L1 products are."""
    with rasterio.open(LANDSAT8) as src:
        data, affine, crs = src.read(), src.transform, src.crs
    height, width = data.shape[1:]
    gcps = [
        GroundControlPoint(row, col, *(affine @ (col, row)))
        for row in (0, height)
        for col in (0, width)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, 'w', driver='GTiff', width=width, height=height,
                           count=len(data), dtype=data.dtype) as dst:  # fmt: skip
            dst.write(data)
            dst.gcps = (gcps, crs)
    return path


@pytest.mark.parametrize('command', ['stats', 'predict'])
def test_a_raster_georeferenced_by_gcps_only_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: Path, command: str
) -> None:
    # Before: a map without CRS nor GCPs (predict), "nodata everywhere" (stats).
    scene = _gcp_raster(tmp_path / 'l1.tif')
    out = tmp_path / 'out.tif'
    argv = {
        'stats': ['--data', scene, '--out', out],
        'predict': ['--in', scene, '--out', out, '--model', model, '--bands',
                    '1', '2', '3', '4', '--mean', '0', '0', '0', '0',
                    '--std', '1', '1', '1', '1', *PREDICT],
    }[command]  # fmt: skip
    status = main([command, *map(str, argv)])
    _one_line(capsys, status, f'{scene}: raster is georeferenced by ground control '
              'points only', 'gdalwarp')  # fmt: skip
    assert os.listdir(tmp_path) == ['l1.tif']


def _local_crs_scene(path: Path) -> Path:
    """The Landsat-8 crop on its own grid, in a local (engineering) CRS."""
    with rasterio.open(LANDSAT8) as src:
        data, affine = src.read(), src.transform
    local = rasterio.crs.CRS.from_wkt(
        'LOCAL_CS["site grid",UNIT["metre",1],AXIS["Easting",EAST],'
        'AXIS["Northing",NORTH]]'
    )
    return write_raster(path, data, crs=local, transform=affine)


@pytest.mark.parametrize('command', ['stats', 'pretrain'])
@pytest.mark.parametrize('grid', [['--crs', 'EPSG:4326'], ['--res', '60']])
def test_a_crs_proj_cannot_transform_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, grid: list[str]
) -> None:
    # Before: a 30-line rasterio CRSError traceback (a local engineering CRS
    # has no coordinate operation to any other CRS).
    scene = _local_crs_scene(tmp_path / 'site.tif')
    shutil.copy(LANDSAT8, tmp_path / 'utm.tif')
    out = tmp_path / 'out'
    argv = [command, '--data', str(tmp_path / '*.tif'), *grid, '--out', str(out)]
    # --res reads every file into the first one's CRS, the local one.
    refused, source, target = {
        '--crs': (scene, 'a local CRS "site grid"', 'EPSG:4326'),
        '--res': (tmp_path / 'utm.tif', 'EPSG:32616', 'a local CRS "site grid"'),
    }[grid[0]]
    _one_line(capsys, main(argv), f'{refused}: its CRS, {source}, cannot be '
              f'transformed to {target}: leave out {grid[0]} to read each file '
              'in its own CRS')  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ['site.tif', 'utm.tif']


def test_a_local_crs_beside_a_utm_scene_is_read_in_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / 'scenes').mkdir()
    scene = _local_crs_scene(tmp_path / 'scenes' / 'site.tif')
    shutil.copy(LANDSAT8, scene.parent / 'utm.tif')
    out = tmp_path / 'stats.json'
    argv = ['stats', '--data', str(scene.parent), '--out', str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    # Both scenes hold the same pixels, each read on its own grid.
    both = json.loads(out.read_text())
    assert main(['stats', '--data', str(LANDSAT8), '--out', str(tmp_path / 'one')]) == 0
    one = json.loads((tmp_path / 'one').read_text())
    assert both['files'] == [str(scene), str(scene.parent / 'utm.tif')]
    assert both['mean'] == pytest.approx(one['mean'], rel=0.01)


def test_advice_for_rasters_without_georeferencing_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with rasterio.open(LANDSAT8) as src:
        data, affine = src.read(), src.transform
    # Without CRS, --crs is the way, and it works.
    no_crs = write_raster(tmp_path / 'no_crs.tif', data, crs=None, transform=affine)
    out = tmp_path / 'stats.json'
    argv = ['stats', '--data', str(no_crs), '--out', str(out), '--windows', '2']
    _one_line(capsys, main(argv), 'give one with --crs')
    assert main([*argv, '--crs', 'EPSG:32616']) == 0
    out.unlink()
    # Without a geotransform, --crs cannot help: it is not advised.
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', rasterio.errors.NotGeoreferencedWarning)
        bare = write_raster(tmp_path / 'bare.tif', data, crs=None, transform=None)
    argv = ['stats', '--data', str(bare), '--out', str(out), '--crs', 'EPSG:32616']
    error = _one_line(capsys, main(argv), f'{bare}: raster has no geotransform',
                      'gdal_translate')  # fmt: skip
    assert '--crs' not in error
    assert not out.exists()


def test_gdal_reasons_are_kept_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: Path
) -> None:
    # Before: the reason was cut at its last ':' ("8765/html/a.tif' not ...").
    text = tmp_path / 'notes.tif'
    text.write_text('not a raster: see https://gdal.org/en/stable/drivers')
    for argv in (
        ['stats', '--data', str(text), '--out', str(tmp_path / 'stats.json')],
        ['predict', '--in', str(text), '--out', str(tmp_path / 'map.tif'),
         '--model', str(model), '--mean', '0', '0', '0', '0',
         '--std', '1', '1', '1', '1'],
    ):  # fmt: skip
        error = _one_line(capsys, main(argv), f'glcgeo: {text}: not a readable '
                          'raster (not recognized as being in a supported file '
                          'format.)\n')  # fmt: skip
        assert error.count(str(text)) == 1
    url = 'http://127.0.0.1:9/scene.tif'  # nothing listens on the discard port
    argv = ['stats', '--data', url, '--out', str(tmp_path / 'stats.json')]
    _one_line(capsys, main(argv), f'glcgeo: {url}: cannot open the URL as a raster '
              '(CURL error: Failed to connect to 127.0.0.1 port 9')  # fmt: skip
    assert os.listdir(tmp_path) == ['notes.tif']


# A server that accepts and never answers.


def test_url_reads_have_time_limits_that_the_environment_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = 'https://host/scene.tif'
    assert GDAL_HTTP_LIMITS.items() <= gdal_options(url).items()
    monkeypatch.setenv('GDAL_HTTP_TIMEOUT', '5')
    # GDAL reads the environment's own value.
    assert 'GDAL_HTTP_TIMEOUT' not in gdal_options(url)
    assert 'GDAL_HTTP_TIMEOUT' not in gdal_options('/data/scene.tif')


def _start(argv: list[str], folder: Path, **environment: str) -> subprocess.Popen[str]:
    """Start ``glcgeo`` in *folder*, in its own process group."""
    return subprocess.Popen(
        [sys.executable, '-m', 'glcgeo', *argv],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, **environment},
    )


def _wait_for_connection(
    process: subprocess.Popen[str], listening: socket.socket
) -> None:
    """Wait until GDAL, in *process*, has connected to the server (Python's
    start-up may take minutes on a loaded machine)."""
    deadline = time.monotonic() + 300
    while not select.select([listening], [], [], 0.1)[0]:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline


def test_a_url_that_never_answers_fails_in_time(tmp_path: Path) -> None:
    # Before: GDAL waited for an answer for as long as the server kept quiet.
    with unresponsive() as (url, listening):
        argv = ['stats', '--data', f'{url}/scene.tif', '--out', 'stats.json']
        limits = {'GDAL_HTTP_TIMEOUT': '1', 'GDAL_HTTP_MAX_RETRY': '1'}
        process = _start(argv, tmp_path, **limits)
        _wait_for_connection(process, listening)
        connected = time.monotonic()
        _, err = process.communicate(timeout=120)
    assert time.monotonic() - connected < 60
    assert process.returncode == 2, err
    assert err.count('\n') == 1 and 'Operation timed out after 1' in err, err
    assert err.startswith(f'glcgeo: {url}/scene.tif: cannot open the URL'), err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM], ids=['INT', 'TERM'])
@pytest.mark.parametrize('command', ['stats', 'predict'])
def test_ctrl_c_and_sigterm_stop_a_command_waiting_for_a_url(
    tmp_path: Path, model: Path, command: str, signum: int
) -> None:
    # Before: Ctrl-C and SIGTERM did nothing for minutes, while GDAL waited.
    with unresponsive() as (url, listening):
        argv = {
            'stats': ['--data', f'{url}/scene.tif', '--out', 'stats.json'],
            'predict': ['--in', f'{url}/scene.tif', '--out', 'map.tif', '--model',
                        str(model), '--mean', '0', '0', '0', '0',
                        '--std', '1', '1', '1', '1', *PREDICT],
        }[command]  # fmt: skip
        process = _start([command, *argv], tmp_path)
        # Once GDAL has connected, it waits for an answer that never comes.
        _wait_for_connection(process, listening)
        os.killpg(process.pid, signum)
        pressed = time.monotonic()
        _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err == 'glcgeo: interrupted\n'
    # GDAL's own limit is 60 s: the command ends long before.
    assert time.monotonic() - pressed < 30
    assert os.listdir(tmp_path) == []


def test_bad_statistics_are_a_glcgeo_error_in_python(tmp_path: Path) -> None:
    path = tmp_path / 'stats.json'
    path.write_text('{"mean": [1], "std": [NaN]}')
    with pytest.raises(GlcgeoError, match="'std' must be finite") as info:
        BandStats.load(path)
    assert info.value.path == str(path)


# Folders: each file once, whatever links lead to it.


def test_a_link_loop_in_a_folder_counts_each_file_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: 41 files for one, weighed 41 times.
    data = tmp_path / 'data'
    data.mkdir()
    (data / 'scene.tif').symlink_to(LANDSAT8)
    (data / 'loop').symlink_to(data, target_is_directory=True)
    (data / 'again.tif').symlink_to(data / 'scene.tif')
    (data / '.hidden.tif').symlink_to(LANDSAT8)
    assert expand([data, data / 'loop' / 'scene.tif']) == [str(data / 'again.tif')]
    out = tmp_path / 'stats.json'
    argv = ['stats', '--data', str(data), '--out', str(out), '--windows', '2']
    assert main(argv) == 0
    assert 'statistics of 1 file(s)' in capsys.readouterr().out
    assert BandStats.load(out).files == [str(data / 'again.tif')]


# Config files: every key known, every value of its type.

BAD_CONFIGS = {
    'section a list': ('finetune', {'data': [1, 2]},
                       'data must be a mapping of settings, got list [1, 2]'),
    'class values text': ('finetune', {'data': {'class_values': '0,1,2'}},
                          "data.class_values must be list[int] | None, got str "
                          "'0,1,2'"),
    'unknown data key': ('pretrain', {'data': {'patchsize': 32}},
                         'unknown key data.patchsize (did you mean patch_size'),
    'unknown section': ('pretrain', {'train': {'max_steps': 1}},
                        'unknown key train (did you mean trainer?)'),
    'model type': ('pretrain', {'model': {'init_args': {'lr': 'fast'}}},
                   "model.lr must be float, got str 'fast'"),
    'trainer type': ('finetune', {'trainer': {'max_steps': '3'}},
                     "trainer.max_steps must be int, got str '3'"),
    'trainer key': ('finetune', {'trainer': {'max_step': 3}},
                    'unknown key trainer.max_step (did you mean max_steps'),
    'init args': ('finetune', {'model': {'init_args': [1]}},
                  'model.init_args must be a mapping of settings, got list'),
    'tuple length': ('finetune', {'data': {'split': [0.5, 0.5]}},
                     'data.split must be tuple[float, float, float], got list'),
}  # fmt: skip


@pytest.mark.parametrize('case', BAD_CONFIGS)
def test_a_config_with_a_bad_key_or_value_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    # Before: TypeError or AttributeError tracebacks, or for class_values as
    # text, "the masks hold no class pixel".
    command, config, problem = BAD_CONFIGS[case]
    path = tmp_path / 'config.yaml'
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / 'out'
    data = {
        'pretrain': ['--data', str(S2_TILE_A)],
        'finetune': ['--images', str(S2_TILES), '--masks', str(LABELS)],
    }[command]
    argv = [command, *data, '--out', str(out), '--config', str(path)]
    _one_line(capsys, main(argv), f'glcgeo: {path}: {problem}')
    assert os.listdir(tmp_path) == ['config.yaml']


@pytest.mark.parametrize(
    'name', sorted(p.name for p in (Path(__file__).parent.parent / 'experiments'
                                    / 'configs').glob('*.yaml'))
)  # fmt: skip
def test_shipped_configs_pass_the_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    path = Path(__file__).parent.parent / 'experiments' / 'configs' / name
    config = yaml.safe_load(path.read_text())
    data_class, model_class = (
        getattr(importlib.import_module(module), name)
        for module, _, name in (
            config[section]['class_path'].rpartition('.')
            for section in ('data', 'model')
        )
    )
    command = 'pretrain' if model_class is GLCNetTask else 'finetune'
    argv = [command, '--config', str(path), '--out', str(tmp_path), '--print_config']
    assert main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)['data']['init_args']
    paths = ('data.paths', 'data.images', 'data.masks')
    sections = read_config(str(path), {'data': data_class, 'model': model_class}, paths)
    assert printed.items() >= sections['data'].items(), path


# Sizes that settings derive, checked before they are allocated.


@pytest.mark.parametrize('command', ['stats', 'finetune'])
def test_a_pixel_size_in_the_wrong_unit_is_one_line_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    # Before: 1.7 TiB asked of the allocator and a traceback (stats), or hours of
    # mask reading (finetune).
    out = tmp_path / 'out'
    argv = {
        'stats': ['stats', '--data', str(LANDSAT8), '--out', str(out)],
        'finetune': ['finetune', '--images', str(S2_TILE_A), '--masks',
                     str(LABELS), '--out', str(out)],
    }[command]  # fmt: skip
    _one_line(capsys, main([*argv, '--res', '0.001']),
              'at a pixel size of 0.001 (--res), each',
              "pixel of the files would be read as",
              "give a pixel size near the files' own")  # fmt: skip
    # Before: "a window of 1 x 1 px does not fit in the mosaic, 0 x 0 px".
    _one_line(capsys, main([*argv, '--res', '100000']),
              'at a pixel size of 100000 (--res), the files (',
              "CRS units) are less than one pixel")  # fmt: skip
    assert not out.exists()


def test_tiles_and_batches_beyond_memory_are_one_line_naming_the_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: Path
) -> None:
    out = tmp_path / 'map.tif'
    argv = ['predict', '--in', str(S2_TILE_A), '--out', str(out), '--model',
            str(model), '--mean', '0', '0', '0', '0', '--std', '1', '1', '1', '1',
            '--batch-size', '10000000', '--quiet']  # fmt: skip
    _one_line(capsys, main(argv), '(--batch-size, --tile-size) would take')
    assert os.listdir(tmp_path) == []
