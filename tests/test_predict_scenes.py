"""``glcgeo predict`` over many scenes: folders and globs, resuming, failures, the
footprint index, two processes, and scenes read by URL (sources' names)."""

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.shutil
from conftest import S2_TILE_A
from pyproj import Transformer
from rasterio.windows import Window
from shapely.geometry import Point

import glcgeo.inference.predict as predict_module
import glcgeo.inference.scenes as scenes_module
from glcgeo.cli import main
from glcgeo.gdal_paths import exists, is_url, stem, to_gdal_path
from glcgeo.inference import load_segmentation_checkpoint
from glcgeo.inference.predict import UnpublishedScene
from glcgeo.inference.scenes import SceneJob, predict_scenes, scene_jobs
from glcgeo.inference.writer import CogWriter
from glcgeo.provenance import Provenance
from glcgeo.sources import expand

#: Windows (column, row) of tile A cut into the small scenes, 180 x 150 pixels.
CROPS = {'crop0.tif': (0, 0), 'crop1.tif': (300, 200), 'sub/crop2.tif': (100, 400)}
MAPS = ['crop0.tif', 'crop1.tif', 'crop2.tif']

pytestmark = pytest.mark.usefixtures('reproducible_creation_time')


def _with_sidecars(*maps: str) -> list[str]:
    """The files of class maps: each map and its sidecars for GDAL and QGIS."""
    return sorted(
        name
        for map_name in maps
        for name in (map_name, f'{map_name}.aux.xml', f'{Path(map_name).stem}.qml')
    )


def predict(*args: object) -> int:
    """``glcgeo predict`` in this process; its exit status."""
    return main(['predict', *map(str, args)])


@pytest.fixture(scope='module')
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of three small Sentinel-2 scenes, one in a subfolder."""
    folder = tmp_path_factory.mktemp('scenes')
    with rasterio.open(S2_TILE_A) as src:
        for name, (col, row) in CROPS.items():
            window = Window(col, row, 180, 150)
            profile = src.profile | {
                'width': 180,
                'height': 150,
                'transform': src.window_transform(window),
                'blockxsize': 64,
                'blockysize': 64,
            }
            (folder / name).parent.mkdir(exist_ok=True)
            with rasterio.open(folder / name, 'w', **profile) as dst:
                dst.write(src.read(window=window))
    return folder


@pytest.fixture(scope='module')
def single_maps(
    tmp_path_factory: pytest.TempPathFactory, scenes: Path, fcn_checkpoint: Path
) -> dict[str, bytes]:
    """Each scene's map predicted alone (one scene, one file), as bytes."""
    folder = tmp_path_factory.mktemp('single')
    maps = {}
    for name in CROPS:
        out = folder / Path(name).name
        assert predict('--in', scenes / name, '--out', out, '--model', fcn_checkpoint,
                       '--quiet') == 0  # fmt: skip
        maps[out.name] = out.read_bytes()
    return maps


def _mtimes(folder: Path) -> dict[str, int]:
    return {name: (folder / name).stat().st_mtime_ns for name in MAPS}


def test_folder_gives_a_map_per_scene_and_a_footprint_index(
    tmp_path: Path,
    scenes: Path,
    fcn_checkpoint: Path,
    single_maps: dict[str, bytes],
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / 'maps'
    assert predict('--in', scenes, '--out', out, '--model', fcn_checkpoint) == 0
    assert sorted(os.listdir(out)) == sorted(
        [*_with_sidecars(*MAPS), 'footprints.gpkg']
    )
    for name in MAPS:
        assert (out / name).read_bytes() == single_maps[name]
    table = capsys.readouterr().out
    assert re.search(r'crop1\.tif +180 x 150 +[\d.]+ +predicted', table)
    assert '3 predicted, 0 skipped, 0 failed' in table
    index = gpd.read_file(out / 'footprints.gpkg', layer='footprints')
    assert index.crs.to_epsg() == 4326 and len(index) == 3
    assert set(index['status']) == {'predicted'}
    to_degrees = Transformer.from_crs('EPSG:32618', 'EPSG:4326', always_xy=True)
    for row in index.itertuples():
        assert Path(row.location) == out / Path(row.scene).name
        with rasterio.open(row.location) as dst:
            centre = dst.xy(dst.height // 2, dst.width // 2)
        assert row.geometry.contains(Point(to_degrees.transform(*centre)))

    # A killed run leaves complete maps and temporary files: a rerun predicts
    # only the scenes without a map.
    os.remove(out / 'crop1.tif')
    (out / '.crop1.tif.123-abcd.partial').write_bytes(b'cut short')
    before = {n: (out / n).stat().st_mtime_ns for n in ('crop0.tif', 'crop2.tif')}
    assert predict('--in', scenes, '--out', out, '--model', fcn_checkpoint) == 0
    assert '1 predicted, 2 skipped, 0 failed' in capsys.readouterr().out
    assert (out / 'crop1.tif').read_bytes() == single_maps['crop1.tif']
    assert before == {n: (out / n).stat().st_mtime_ns for n in before}
    index = gpd.read_file(out / 'footprints.gpkg')
    assert sorted(index['status']) == ['predicted', 'skipped', 'skipped']
    assert index.geometry.notna().all()

    # --overwrite predicts them all again.
    assert predict('--in', scenes, '--out', out, '--model', fcn_checkpoint,
                   '--overwrite', '--quiet') == 0  # fmt: skip
    assert all(t > before.get(n, 0) for n, t in _mtimes(out).items())


def test_a_map_without_its_sidecars_is_predicted_again(
    tmp_path: Path,
    scenes: Path,
    fcn_checkpoint: Path,
    single_maps: dict[str, bytes],
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / 'maps'
    assert predict('--in', scenes, '--out', out, '--model', fcn_checkpoint,
                   '--quiet') == 0  # fmt: skip
    # A map is complete with its sidecars only: class names for GDAL and QGIS.
    os.remove(out / 'crop0.qml')
    os.remove(out / 'crop2.tif.aux.xml')
    kept = (out / 'crop1.tif').stat().st_mtime_ns
    assert predict('--in', scenes, '--out', out, '--model', fcn_checkpoint) == 0
    assert '2 predicted, 1 skipped, 0 failed' in capsys.readouterr().out
    assert (out / 'crop1.tif').stat().st_mtime_ns == kept
    assert sorted(os.listdir(out)) == sorted(
        [*_with_sidecars(*MAPS), 'footprints.gpkg']
    )
    for name in MAPS:
        assert (out / name).read_bytes() == single_maps[name]


def test_files_and_globs_and_a_folder_path(
    tmp_path: Path, scenes: Path, fcn_checkpoint: Path
) -> None:
    out = tmp_path / 'new' / 'maps'
    status = predict('--in', scenes / 'crop0.tif', f'{scenes}/sub/*.tif',
                     '--out', out, '--model', fcn_checkpoint, '--quiet')  # fmt: skip
    assert status == 0
    assert sorted(os.listdir(out)) == sorted(
        [*_with_sidecars('crop0.tif', 'crop2.tif'), 'footprints.gpkg']
    )
    # One scene into a path ending in '/' is a folder too.
    one = tmp_path / 'one'
    assert predict('--in', scenes / 'crop1.tif', '--out', f'{one}/',
                   '--model', fcn_checkpoint, '--quiet') == 0  # fmt: skip
    assert sorted(os.listdir(one)) == sorted(
        [*_with_sidecars('crop1.tif'), 'footprints.gpkg']
    )


def test_a_failed_scene_is_reported_and_the_others_go_on(
    tmp_path: Path,
    scenes: Path,
    fcn_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / 'scenes'
    shutil.copytree(scenes, folder)
    (folder / 'broken.tif').write_text('not a raster')
    out = tmp_path / 'maps'
    assert predict('--in', folder, '--out', out, '--model', fcn_checkpoint) == 2
    captured = capsys.readouterr()
    errors = captured.err.splitlines()
    assert errors[0].startswith(f'glcgeo: {folder / "broken.tif"}: not a readable')
    assert errors[-1] == 'glcgeo: 1 of 4 scenes failed (see above)'
    assert re.search(r'broken\.tif +- +[\d.]+ +failed', captured.out)
    assert sorted(os.listdir(out)) == sorted(
        [*_with_sidecars(*MAPS), 'footprints.gpkg']
    )
    index = gpd.read_file(out / 'footprints.gpkg')
    failed = index[index['status'] == 'failed']
    assert len(failed) == 1 and failed.geometry.isna().all()
    assert 'not a readable raster' in failed['error'].iloc[0]
    # Fixed, the rerun predicts it and skips the others.
    shutil.copy(folder / 'crop0.tif', folder / 'broken.tif')
    assert predict('--in', folder, '--out', out, '--model', fcn_checkpoint) == 0
    assert '1 predicted, 3 skipped, 0 failed' in capsys.readouterr().out


def _jobs(scenes: Path, out: Path) -> list[SceneJob]:
    out.mkdir()
    return scene_jobs(expand([str(scenes)]), out, folder=True)


def _threads_end(prefix: str) -> None:
    deadline = time.monotonic() + 60
    while any(t.name.startswith(prefix) for t in threading.enumerate()):
        assert time.monotonic() < deadline, 'a thread did not end'
        time.sleep(0.05)


def test_each_map_is_published_while_the_next_scene_is_predicted(
    tmp_path: Path,
    scenes: Path,
    fcn_checkpoint: Path,
    single_maps: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jobs = _jobs(scenes, tmp_path / 'maps')
    predicting = {job.destination: threading.Event() for job in jobs}
    following = dict(zip(predicting, list(predicting)[1:], strict=False))
    overlapped = []
    predict_unpublished = scenes_module.predict_unpublished
    publish = UnpublishedScene.publish

    def predict_scene(*args: Any, **kwargs: Any) -> UnpublishedScene:
        predicting[str(args[3])].set()
        return predict_unpublished(*args, **kwargs)

    def publish_scene(scene: UnpublishedScene) -> None:
        # Published only once the next scene's prediction has started.
        after = following.get(scene.summary.destination)
        if after is not None:
            overlapped.append(predicting[after].wait(timeout=60))
        publish(scene)

    monkeypatch.setattr(scenes_module, 'predict_unpublished', predict_scene)
    monkeypatch.setattr(UnpublishedScene, 'publish', publish_scene)
    model, metadata = load_segmentation_checkpoint(fcn_checkpoint)
    reported: list[str] = []
    results = predict_scenes(
        model,
        metadata,
        jobs,
        progress=False,
        provenance=Provenance.of_checkpoint(fcn_checkpoint),
        report=lambda result: reported.append(Path(result.job.destination).name),
    )
    assert overlapped == [True, True]
    assert [r.status for r in results] == ['predicted'] * 3
    assert reported == MAPS  # in job order
    for name in MAPS:
        assert (tmp_path / 'maps' / name).read_bytes() == single_maps[name]
    assert sorted(os.listdir(tmp_path / 'maps')) == _with_sidecars(*MAPS)


def test_a_map_that_cannot_be_published_fails_alone(
    tmp_path: Path,
    scenes: Path,
    fcn_checkpoint: Path,
    single_maps: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jobs = _jobs(scenes, tmp_path / 'maps')
    finish = CogWriter.finish

    def disk_full_for_crop1(writer: CogWriter) -> None:
        if Path(writer.path).name == 'crop1.tif':
            raise OSError(28, 'No space left on device')
        finish(writer)

    monkeypatch.setattr(CogWriter, 'finish', disk_full_for_crop1)
    model, metadata = load_segmentation_checkpoint(fcn_checkpoint)
    provenance = Provenance.of_checkpoint(fcn_checkpoint)
    results = predict_scenes(
        model, metadata, jobs, progress=False, provenance=provenance
    )
    assert [r.status for r in results] == ['predicted', 'failed', 'predicted']
    assert results[1].error == (
        f'{scenes / "crop1.tif"}: [Errno 28] No space left on device'
    )
    # Nothing of the failed map is left, not even its temporary files.
    assert sorted(os.listdir(tmp_path / 'maps')) == _with_sidecars(
        'crop0.tif', 'crop2.tif'
    )
    for name in ('crop0.tif', 'crop2.tif'):
        assert (tmp_path / 'maps' / name).read_bytes() == single_maps[name]


@pytest.mark.parametrize('moment', ['before', 'while'])
def test_an_interrupt_leaves_nothing_of_the_map_being_published(
    tmp_path: Path,
    scenes: Path,
    fcn_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    moment: str,
) -> None:
    jobs = _jobs(scenes, tmp_path / 'maps')
    publishing, interrupted = threading.Event(), threading.Event()
    predict_unpublished = scenes_module.predict_unpublished
    publish, finish = UnpublishedScene.publish, CogWriter.finish

    def predict_scene(*args: Any, **kwargs: Any) -> UnpublishedScene:
        if Path(args[3]).name == 'crop1.tif':
            # Ctrl-C while the first map waits to be published, or is.
            assert publishing.wait(timeout=60)
            raise KeyboardInterrupt
        return predict_unpublished(*args, **kwargs)

    def publish_later(scene: UnpublishedScene) -> None:
        if moment == 'before':
            publishing.set()
            interrupted.wait(timeout=60)
        publish(scene)

    def finish_later(writer: CogWriter) -> None:
        if moment == 'while':
            publishing.set()
            interrupted.wait(timeout=60)
        finish(writer)

    monkeypatch.setattr(scenes_module, 'predict_unpublished', predict_scene)
    monkeypatch.setattr(UnpublishedScene, 'publish', publish_later)
    monkeypatch.setattr(CogWriter, 'finish', finish_later)
    model, metadata = load_segmentation_checkpoint(fcn_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        predict_scenes(model, metadata, jobs, progress=False)
    # Gone at once, without waiting for the conversion...
    assert os.listdir(tmp_path / 'maps') == []
    interrupted.set()
    _threads_end('glcgeo-publish')
    # ...which then fails, leaving nothing either.
    assert os.listdir(tmp_path / 'maps') == []


def test_scenes_sharing_a_name_or_their_folder_are_refused(
    tmp_path: Path,
    scenes: Path,
    fcn_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = tmp_path / 'other'
    other.mkdir()
    shutil.copy(scenes / 'crop0.tif', other / 'crop0.tif')
    out = tmp_path / 'maps'
    assert predict('--in', scenes, other, '--out', out, '--model', fcn_checkpoint) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1
    assert f'{scenes / "crop0.tif"} and {other / "crop0.tif"} would both be' in err
    assert not out.exists()
    # Maps written beside their scenes would replace them.
    copy = tmp_path / 'copy'
    shutil.copytree(scenes, copy)
    assert predict('--in', copy / 'crop0.tif', copy / 'crop1.tif', '--out', copy,
                   '--model', fcn_checkpoint) == 2  # fmt: skip
    assert 'output and input must be different files' in capsys.readouterr().err
    assert (copy / 'crop0.tif').read_bytes() == (scenes / 'crop0.tif').read_bytes()
    # Several scenes into one file name.
    assert predict('--in', scenes, '--out', tmp_path / 'map.tif',
                   '--model', fcn_checkpoint) == 2  # fmt: skip
    assert '--out must be a folder for several scenes' in capsys.readouterr().err
    assert not (tmp_path / 'map.tif').exists()
    # A run refused once it made its folder leaves none (before: an empty one).
    new = f'{tmp_path / "new"}/'
    assert predict('--in', scenes, '--out', new, '--model', fcn_checkpoint,
                   '--probabilities', tmp_path / 'p.tif') == 2  # fmt: skip
    assert '--probabilities must be a folder' in capsys.readouterr().err
    assert not (tmp_path / 'new').exists()
    # Polygons are of one map: several are vectorized one by one.
    assert predict('--in', scenes, '--out', out, '--model', fcn_checkpoint,
                   '--polygons', tmp_path / 'p.gpkg') == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.count('\n') == 1
    assert '--polygons takes one scene in one process; run glcgeo vectorize' in err
    assert not out.exists()


def test_two_processes_write_the_maps_of_one(
    tmp_path: Path, scenes: Path, fcn_checkpoint: Path, single_maps: dict[str, bytes]
) -> None:
    out = tmp_path / 'maps'
    command = [
        sys.executable, '-m', 'glcgeo', 'predict', '--in', str(scenes),
        '--out', str(out), '--model', str(fcn_checkpoint),
        '--accelerator', 'cpu', '--devices', '2',
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    # Each scene written once, by one process: scenes 0 and 2 by process 0.
    lines = [line for line in run.stdout.splitlines() if line.startswith('[process')]
    assert len(lines) == 3, run.stdout + run.stderr[-3000:]
    assert sum(line.startswith('[process 1]') for line in lines) == 1
    for name in MAPS:
        assert (out / name).read_bytes() == single_maps[name]
    assert len(gpd.read_file(out / 'footprints.gpkg')) == 3
    before = _mtimes(out)
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert '0 predicted, 3 skipped, 0 failed' in rerun.stdout
    assert _mtimes(out) == before


# Scenes by URL.


@pytest.fixture(scope='module')
def http_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A local HTTP server of byte ranges (tests/range_server.py, its own process).

    Yields:
        (its URL, the folder it serves, holding ``s2.tif``: tile A as a COG).
    """
    root = tmp_path_factory.mktemp('served')
    rasterio.shutil.copy(S2_TILE_A, root / 's2.tif', driver='COG')
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / 'range_server.py'), str(root)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        yield f'http://127.0.0.1:{int(server.stdout.readline())}', root
    finally:
        server.kill()
        server.wait()


def test_a_scene_by_url_gives_the_local_map(
    tmp_path: Path,
    http_root: tuple[str, Path],
    fcn_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv('NO_PROXY', '127.0.0.1')
    # On the CPU a local scene is read in the model's thread, a URL ahead of it:
    # its network waits take no core.
    read_ahead = predict_module.read_ahead
    threads: list[Any] = []

    def recording(items: Any) -> Any:
        threads.append(items)
        return read_ahead(items)

    monkeypatch.setattr(predict_module, 'read_ahead', recording)
    url, root = http_root
    local, remote = tmp_path / 'local.tif', tmp_path / 'remote.tif'
    assert predict('--in', root / 's2.tif', '--out', local, '--model', fcn_checkpoint,
                   '--quiet', '--device', 'cpu') == 0  # fmt: skip
    assert not threads
    assert predict('--in', f'{url}/s2.tif', '--out', remote, '--model', fcn_checkpoint,
                   '--quiet', '--device', 'cpu') == 0  # fmt: skip
    assert len(threads) == 1
    with rasterio.open(local) as a, rasterio.open(remote) as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.profile == b.profile
    # Among several scenes, a URL's map is named after the file in its path.
    out = tmp_path / 'maps'
    status = predict('--in', f'{url}/s2.tif?version=2', f'{url}/missing.tif',
                     '--out', out, '--model', fcn_checkpoint)  # fmt: skip
    assert status == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f'glcgeo: {url}/missing.tif: cannot open the URL')
    assert 'no such' not in err[0]
    with rasterio.open(out / 's2.tif') as dst, rasterio.open(local) as a:
        np.testing.assert_array_equal(dst.read(), a.read())


def test_an_unreachable_url_is_one_line_naming_it(
    tmp_path: Path,
    http_root: tuple[str, Path],
    fcn_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f'{http_root[0]}/nothing/here.tif'
    out = tmp_path / 'map.tif'
    assert predict('--in', url, '--out', out, '--model', fcn_checkpoint) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'glcgeo: {url}: cannot open the URL as a raster (')
    assert err.count('\n') == 1 and '/vsicurl/' not in err
    assert os.listdir(tmp_path) == []


# How predict names its sources and finds them.

URLS = {
    'https://example.com/a/scene.tif?sig=x': '/vsicurl/https://example.com/a/scene.tif?sig=x',
    's3://bucket/tiles/scene.tif': '/vsis3/bucket/tiles/scene.tif',
    'gs://bucket/scene.tif': '/vsigs/bucket/scene.tif',
    '/vsizip//data/scenes.zip/scene.tif': '/vsizip//data/scenes.zip/scene.tif',
}


@pytest.mark.parametrize('url', URLS)
def test_urls_open_as_rasterio_opens_them_and_are_named_by_their_file(url: str) -> None:
    from rasterio._path import _parse_path, _vsi_path

    assert is_url(url) and exists(url) and stem(url) == 'scene'
    assert to_gdal_path(url) == URLS[url] == _vsi_path(_parse_path(url))


def test_local_sources_are_local(tmp_path: Path) -> None:
    for path in (S2_TILE_A, 'relative/scene.tif', 'scene:2020.tif'):
        assert not is_url(path) and to_gdal_path(path) == str(path)
    assert exists(S2_TILE_A) and not exists(tmp_path / 'missing.tif')
    assert stem(S2_TILE_A) == 'S2_L1C_18SUH_tileA_B02-B03-B04-B08'
    url = 'https://example.com/scene.tif'
    assert expand([S2_TILE_A, url, url]) == [str(S2_TILE_A), url]


@pytest.mark.parametrize(
    ('given', 'message'),
    [
        ('missing.tif', 'no such file or folder'),
        ('*.tif', 'pattern matches no file'),
        ('.', 'folder holds no GeoTIFF'),
    ],
)
def test_missing_local_sources_are_named(
    tmp_path: Path,
    fcn_checkpoint: Path,
    capsys: pytest.CaptureFixture[str],
    given: str,
    message: str,
) -> None:
    source = tmp_path / given
    assert predict('--in', source, '--out', tmp_path / 'maps',
                   '--model', fcn_checkpoint) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith(f'glcgeo: {source}: {message}') and err.count('\n') == 1
    assert os.listdir(tmp_path) == []
