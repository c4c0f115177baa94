"""Runs under hostile use: a resume that cannot load, two runs into one output, a
full disk or file size limit, maps written inside the input folder, a killed run.

Each command claims its output (glcgeo.outputs.OutputLock), checks a checkpoint
before it resumes from it, and reports a write that finds no room in one line
naming the output; each test here fails if one of these goes.
"""

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import geopandas as gpd
import pytest
import rasterio
import torch
from conftest import S2_TILE_A, S2_TILES
from rasterio.windows import Window
from test_cli_errors import _one_line

import glcgeo.inference.scenes as scenes_module
import glcgeo.pretrain
from glcgeo.cli import main
from glcgeo.errors import NoRoomError
from glcgeo.inference import load_segmentation_checkpoint
from glcgeo.inference.scenes import predict_scenes, scene_jobs
from glcgeo.inference.writer import CogWriter, sidecar_paths
from glcgeo.outputs import HOST, OutputLock
from glcgeo.runs import STAGING
from glcgeo.sources import expand
from glcgeo.tasks import FinetuneTask

#: Pretraining settings that run a step in about a second on 2 CPU cores.
PRETRAIN = [
    '--backbone', 'resnet18', '--patch-size', '64', '--batch-size', '4',
    '--length', '8', '--num-workers', '0', '--quiet',
]  # fmt: skip
LABELS = S2_TILES.parent / 'demo_labels' / 's2_pseudo_labels.tif'
#: Fine-tuning settings that run an epoch in seconds on 2 CPU cores.
FINETUNE = [
    '--masks', str(LABELS), '--backbone', 'resnet18', '--patch-size', '32',
    '--batch-size', '4', '--eval-batch-size', '16', '--length', '8',
    '--num-label-patches', '4', '--accelerator', 'cpu', '--quiet',
]  # fmt: skip
#: Windows (column, row) of tile A cut into small scenes, 180 x 150 pixels.
CROPS = {'crop0.tif': (0, 0), 'crop1.tif': (300, 200)}


@pytest.fixture
def scenes(tmp_path: Path) -> Path:
    """A folder of two small Sentinel-2 scenes cut from tile A."""
    folder = tmp_path / 'scenes'
    folder.mkdir()
    with rasterio.open(S2_TILE_A) as src:
        for name, (col, row) in CROPS.items():
            window = Window(col, row, 180, 150)
            profile = src.profile | {
                'width': 180,
                'height': 150,
                'transform': src.window_transform(window),
            }
            with rasterio.open(folder / name, 'w', **profile) as dst:
                dst.write(src.read(window=window))
    return folder


def _with_sidecars(*maps: str) -> list[str]:
    """The file names of class maps and of the GIS sidecars that travel with them."""
    return [
        name
        for m in maps
        for name in (m, *(os.path.basename(p) for p in sidecar_paths(m)))
    ]


def _partials(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if '.partial' in name]


# A resume that cannot load leaves the run as it was.


def test_a_resume_that_cannot_load_leaves_last_ckpt_and_config_untouched(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / 'run'
    argv = ['pretrain', '--data', str(S2_TILES), '--out', str(out), *PRETRAIN]
    assert main([*argv, '--max-steps', '2']) == 0
    last = out / 'checkpoints' / 'last.ckpt'
    kept = [last, out / 'config.yaml', out / 'stats.json']
    before = {path: path.read_bytes() for path in kept}

    def untouched() -> bool:
        return {path: path.read_bytes() for path in kept} == before and not (
            _partials(out) or _partials(out / 'checkpoints')
        )

    resume = ['pretrain', '--out', str(out), '--resume', '--max-steps', '3', '--quiet']
    for flags, change in (
        (['--backbone', 'resnet34'], "backbone 'resnet18', not 'resnet34'"),
        (['--ablation', 'global_only'], "ablation 'full', not 'global_only'"),
    ):
        status = main([*resume, *flags])
        _one_line(capfd, status, f'{last}: cannot resume: the checkpoint holds '
                  'another network', change)  # fmt: skip
        assert untouched()
    # A checkpoint that fails to restore in a way the check does not foresee
    # leaves them too: nothing is written before training starts.
    with monkeypatch.context() as patch:
        patch.setattr(glcgeo.pretrain, '_check_resumable', lambda *args: None)
        with pytest.raises(RuntimeError, match='Missing key'):
            main([*resume, '--backbone', 'resnet34'])
    assert untouched()
    capfd.readouterr()
    # A truncated checkpoint is one line naming it.
    last.write_bytes(before[last][: len(before[last]) // 2])
    _one_line(capfd, main(resume), f'glcgeo: {last}: not a readable checkpoint')
    assert last.stat().st_size == len(before[last]) // 2
    assert (out / 'config.yaml').read_bytes() == before[out / 'config.yaml']
    # The run resumes from its own checkpoint.
    last.write_bytes(before[last])
    assert main(resume) == 0
    assert torch.load(last, weights_only=False)['global_step'] == 3


# A fine-tuning run that would replace an earlier one and does not complete.


def test_an_overwriting_finetune_replaces_the_earlier_run_only_once_complete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / 'ft'
    argv = ['finetune', '--images', str(S2_TILES), '--out', str(out), *FINETUNE,
            '--epochs', '1']  # fmt: skip
    assert main(argv) == 0
    outputs = sorted(os.listdir(out))
    kept = [out / 'model.ckpt', out / 'metrics.json', out / 'config.yaml']
    before = {path: path.read_bytes() for path in kept}

    def untouched() -> bool:
        """The earlier run is as it was (what a killed run left aside)."""
        shown = [name for name in os.listdir(out) if not name.startswith('.')]
        return (
            sorted(shown) == outputs
            and {path: path.read_bytes() for path in kept} == before
        )

    # Interrupted while training (Ctrl-C; Lightning then ignores further ones).
    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(FinetuneTask, 'training_step', interrupted)
        patch.setattr(signal, 'signal', lambda *args: None)
        capsys.readouterr()
        assert main([*argv, '--overwrite']) == 130
    assert capsys.readouterr().err.endswith('glcgeo: interrupted\n')
    assert untouched()

    # Failing in training (a bug, or a library's error).
    def failing(*args: Any) -> None:
        raise RuntimeError('a failure in training')

    with monkeypatch.context() as patch:
        patch.setattr(FinetuneTask, 'training_step', failing)
        with pytest.raises(RuntimeError, match='a failure in training'):
            main([*argv, '--overwrite'])
    assert untouched()
    # Killed while training: the next run into the folder removes what it left.
    slow = _start([*argv, '--overwrite', '--epochs', '50'], tmp_path)
    try:
        _wait_for(slow, lambda: (out / STAGING / 'split.geojson').exists())
    finally:
        os.killpg(slow.pid, signal.SIGKILL)
        slow.wait()
    assert (out / STAGING).is_dir() and untouched()
    capsys.readouterr()
    _one_line(capsys, main(argv), f'glcgeo: {out}: already holds a fine-tuning run')
    assert sorted(os.listdir(out)) == outputs and untouched()
    assert not (out / STAGING).exists()
    # A run that completes replaces the earlier one.
    assert main([*argv, '--overwrite', '--lr', '0.01']) == 0
    assert sorted(os.listdir(out)) == outputs
    assert 'lr: 0.01' in (out / 'config.yaml').read_text()
    assert (out / 'model.ckpt').read_bytes() != before[out / 'model.ckpt']


# Two runs into one output.


@pytest.mark.parametrize(
    'command', ['stats', 'pretrain', 'finetune', 'predict file', 'predict folder']
)
def test_an_output_that_a_live_run_writes_is_refused_in_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fcn_checkpoint: Path,
    command: str,
) -> None:
    name, _, kind = command.partition(' ')
    folder = kind != 'file' and name != 'stats'
    out = tmp_path / (
        'out' if folder else 'stats.json' if name == 'stats' else 'map.tif'
    )
    argv = {
        'stats': ['--data', S2_TILES, '--out', out],
        'pretrain': ['--data', S2_TILES, '--out', out, *PRETRAIN],
        'finetune': ['--images', S2_TILES, '--out', out, *FINETUNE],
        'predict': ['--in', S2_TILE_A, '--out', out, '--model', fcn_checkpoint],
    }[name]
    if folder:
        out.mkdir()
    with OutputLock(out, folder=folder):
        before = sorted(os.listdir(tmp_path))
        status = main([name, *map(str, argv)])
        assert sorted(os.listdir(tmp_path)) == before
    _one_line(capsys, status, f'glcgeo: {out}: in use by another glcgeo run '
              f'(process {os.getpid()} on {HOST})')  # fmt: skip
    # Released, the output is free: no lock file is left.
    assert os.listdir(out if folder else tmp_path) == []


def _start(argv: list[str], cwd: Path) -> subprocess.Popen[str]:
    """Start ``glcgeo`` in its own process group."""
    return subprocess.Popen(
        [sys.executable, '-m', 'glcgeo', *argv],
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for(process: subprocess.Popen[str], ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 300
    while not ready():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.02)


@pytest.mark.parametrize('folder', [False, True], ids=['file', 'folder'])
def test_a_killed_prediction_leaves_nothing_that_blocks_or_stays(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fcn_checkpoint: Path,
    folder: bool,
) -> None:
    out = f'{tmp_path / "maps"}/' if folder else str(tmp_path / 'map.tif')
    where = Path(out) if folder else tmp_path
    argv = ['predict', '--in', str(S2_TILE_A), '--out', out, '--model',
            str(fcn_checkpoint), '--quiet']  # fmt: skip
    # Small tiles: seconds of work, with the map's temporary files open.
    slow = _start([*argv, '--tile-size', '32', '--overlap', '16'], tmp_path)
    try:
        _wait_for(slow, lambda: where.is_dir() and bool(_partials(where)))
        # A second run into the same output, while the first lives, is refused.
        _one_line(capsys, main(argv), f'{out}: in use by another glcgeo run '
                  f'(process {slow.pid} on {HOST})')  # fmt: skip
    finally:
        os.killpg(slow.pid, signal.SIGKILL)
        slow.wait()
    assert _partials(where)
    # The dead run's lock is taken over and its temporary files removed.
    assert main(argv) == 0
    name = S2_TILE_A.name if folder else 'map.tif'
    maps = (
        [*_with_sidecars(name), 'footprints.gpkg'] if folder else _with_sidecars(name)
    )
    assert sorted(os.listdir(where)) == sorted(maps)


# Maps written into a folder inside the input folder.


def test_maps_inside_the_input_folder_are_never_inputs(
    scenes: Path, fcn_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    maps = scenes / 'maps'
    argv = ['predict', '--in', str(scenes), '--out', f'{maps}/', '--model',
            str(fcn_checkpoint)]  # fmt: skip
    assert main(argv) == 0
    assert sorted(os.listdir(maps)) == sorted(
        [*_with_sidecars(*CROPS), 'footprints.gpkg']
    )
    # The rerun (after a kill, say) finds the same two scenes, both done.
    assert main(argv) == 0
    assert '0 predicted, 2 skipped, 0 failed' in capsys.readouterr().out
    index = gpd.read_file(maps / 'footprints.gpkg')
    assert sorted(map(os.path.basename, index['scene'])) == sorted(CROPS)


# No room: a full disk, a quota, the file size limit.


def _limited(limit: int) -> Callable[[], None]:
    """Set the file size limit of a child process, which then sees EFBIG."""

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return limit_files


def _run_limited(argv: list[str], limit: int, cwd: Path) -> tuple[int, list[str]]:
    """Run ``glcgeo`` under a file size limit; its status and glcgeo's lines."""
    run = subprocess.run(
        [sys.executable, '-m', 'glcgeo', *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_limited(limit),
    )
    assert 'Traceback' not in run.stderr, run.stderr
    # GDAL's own report of each failed write (libtiff's, on stderr) aside.
    lines = [line for line in run.stderr.splitlines() if line.startswith('glcgeo')]
    return run.returncode, lines


LIMIT_REASON = 'cannot write it: file size limit reached'


def test_a_file_size_limit_fails_the_scene_that_exceeds_it(
    tmp_path: Path, scenes: Path, fcn_checkpoint: Path
) -> None:
    shutil.copy(S2_TILE_A, scenes / 'large.tif')
    maps = tmp_path / 'maps'
    argv = ['predict', '--in', str(scenes), '--out', f'{maps}/',
            '--model', str(fcn_checkpoint)]  # fmt: skip
    # The large scene's map is ~150 kB, the small ones' and the index under 100.
    status, lines = _run_limited(argv, 120_000, tmp_path)
    assert status == 2
    assert lines == [
        f'glcgeo: {maps / "large.tif"}: {LIMIT_REASON} (ulimit -f, or the '
        'largest file of the file system)',
        'glcgeo: 1 of 3 scenes failed (see above)',
    ]
    assert sorted(os.listdir(maps)) == sorted(
        [*_with_sidecars(*CROPS), 'footprints.gpkg']
    )
    # One scene, one file: one line, nothing left.
    single = tmp_path / 'map.tif'
    argv = ['predict', '--in', str(S2_TILE_A), '--out', str(single),
            '--model', str(fcn_checkpoint)]  # fmt: skip
    status, lines = _run_limited(argv, 50_000, tmp_path)
    assert status == 2 and len(lines) == 1 and f'{single}: {LIMIT_REASON}' in lines[0]
    assert sorted(os.listdir(tmp_path)) == ['maps', 'scenes']


@pytest.mark.parametrize('command', ['stats', 'pretrain'])
def test_a_file_size_limit_is_one_line_naming_the_file(
    tmp_path: Path, command: str
) -> None:
    out = tmp_path / ('stats.json' if command == 'stats' else 'run')
    argv = {
        'stats': ['--data', str(S2_TILES), '--out', str(out), '--windows', '2'],
        'pretrain': ['--data', str(S2_TILES), '--out', str(out), *PRETRAIN,
                     '--max-steps', '1'],
    }[command]  # fmt: skip
    status, lines = _run_limited([command, *argv], 100, tmp_path)
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f'glcgeo: {out}') and LIMIT_REASON in lines[0]
    assert os.listdir(tmp_path) == []


def test_a_full_disk_fails_the_scenes_left_without_predicting_them(
    tmp_path: Path,
    scenes: Path,
    fcn_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shutil.copy(scenes / 'crop0.tif', scenes / 'crop2.tif')
    maps = tmp_path / 'maps'
    maps.mkdir()
    jobs = scene_jobs(expand([str(scenes)]), maps, folder=True)
    predicted = []
    predict_unpublished = scenes_module.predict_unpublished

    def predict_scene(*args: Any, **kwargs: Any) -> Any:
        predicted.append(Path(args[3]).name)
        return predict_unpublished(*args, **kwargs)

    def full(writer: CogWriter) -> None:
        raise NoRoomError('no space left on the device', writer.path, lasting=True)

    monkeypatch.setattr(scenes_module, 'predict_unpublished', predict_scene)
    monkeypatch.setattr(CogWriter, 'finish', full)
    model, metadata = load_segmentation_checkpoint(fcn_checkpoint)
    results = predict_scenes(model, metadata, jobs, progress=False)
    assert [result.status for result in results] == ['failed'] * 3
    # The first map's failure is known once the second scene is predicted.
    assert predicted == ['crop0.tif', 'crop1.tif']
    assert results[0].error == (
        f'{maps / "crop0.tif"}: cannot write it: no space left on the device'
    )
    assert results[2].error == (
        f'{maps / "crop2.tif"}: not predicted: no space left on the device'
    )
    assert os.listdir(maps) == []
