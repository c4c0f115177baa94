"""Run folders: the config they keep, what they replace, and what they never do."""

import importlib
import os
from pathlib import Path

import pytest
import yaml

from glcgeo.datamodules import GLCNetDataModule
from glcgeo.errors import GlcgeoError
from glcgeo.runs import RunFolder, read_config
from glcgeo.tasks import GLCNetTask

OUTPUTS = ('model.ckpt', 'config.yaml', 'checkpoints', 'logs')


def test_config_is_a_lightning_cli_config_with_paths_relative_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = RunFolder('runs/a', OUTPUTS)
    os.makedirs(run.path)
    elsewhere = str(tmp_path / 'stats.json')
    path = run.write_config(
        3,
        {'max_steps': 5},
        'glcgeo.tasks.GLCNetTask',
        {'backbone': 'resnet18'},
        'glcgeo.datamodules.GLCNetDataModule',
        {
            'paths': ['tiles/', 'https://host/a.tif', '@list.txt'],
            'stats': elsewhere,
            'index_cache': 'runs/a/index',
            'overlap': [0.3, 1.0],
        },
        ('data.paths', 'data.stats', 'data.index_cache'),
    )
    assert os.listdir(run.path) == ['config.yaml']
    with open(path) as f:
        config = yaml.safe_load(f)
    for section in ('model', 'data'):
        module, _, name = config[section]['class_path'].rpartition('.')
        assert getattr(importlib.import_module(module), name)
    # Paths relative to the config's folder; absolute ones outside it stay so.
    assert config['data']['init_args'] == {
        'paths': ['../../tiles', 'https://host/a.tif', '@../../list.txt'],
        'stats': elsewhere,
        'index_cache': 'index',
        'overlap': [0.3, 1.0],
    }
    # Read from another folder, they are the same files.
    monkeypatch.chdir(tmp_path / 'runs')
    classes = {'model': GLCNetTask, 'data': GLCNetDataModule}
    paths = ('data.paths', 'data.index_cache')
    sections = read_config('a/config.yaml', classes, paths)
    # Relative paths stay relative, to the working folder.
    assert sections['data']['paths'] == ['../tiles', 'https://host/a.tif',
                                         '@../list.txt']  # fmt: skip
    assert sections['data']['index_cache'] == 'a/index'
    assert sections['model'] == {'backbone': 'resnet18'}
    assert sections['trainer'] == {'max_steps': 5}
    assert sections['seed_everything'] == 3


def test_shipped_configs_name_classes_that_exist() -> None:
    configs = Path(__file__).parent.parent / 'experiments' / 'configs'
    for path in configs.glob('*.yaml'):
        config = yaml.safe_load(path.read_text())
        for section in ('model', 'data'):
            module, _, name = config[section]['class_path'].rpartition('.')
            assert getattr(importlib.import_module(module), name), path


def test_clear_removes_the_outputs_only(tmp_path: Path) -> None:
    run = RunFolder(str(tmp_path), OUTPUTS)
    for name in ('model.ckpt', 'notes.txt'):
        (tmp_path / name).write_text(name)
    (tmp_path / 'checkpoints').mkdir()
    (tmp_path / 'checkpoints' / 'best.ckpt').write_text('best')
    assert run.existing() == ['model.ckpt', 'checkpoints']
    run.clear()
    assert os.listdir(tmp_path) == ['notes.txt']


def test_a_replacing_run_never_deletes_an_input(tmp_path: Path) -> None:
    """A new run that starts from the old run's checkpoint must not delete it."""
    run = RunFolder(str(tmp_path), OUTPUTS)
    (tmp_path / 'checkpoints').mkdir()
    best = tmp_path / 'checkpoints' / 'best.ckpt'
    best.write_text('weights')
    (tmp_path / 'model.ckpt').write_text('model')
    for source in (best, tmp_path / 'model.ckpt', tmp_path / '.' / 'model.ckpt'):
        with (
            pytest.raises(GlcgeoError, match='an input lies in the outputs'),
            run.replacing([source]),
        ):
            pass
    assert best.read_text() == 'weights'
    assert (tmp_path / 'model.ckpt').read_text() == 'model'
    assert sorted(os.listdir(tmp_path)) == ['checkpoints', 'model.ckpt']
    # An input beside the outputs, whose name starts like one, is no output.
    (tmp_path / 'model.ckpt.bak').write_text('kept')
    with run.replacing([tmp_path / 'model.ckpt.bak']):
        run.staging().write_config(0, {}, 'm', {}, 'd', {})
    assert sorted(os.listdir(tmp_path)) == ['config.yaml', 'model.ckpt.bak']


def test_a_replacing_run_keeps_the_earlier_outputs_until_it_completes(
    tmp_path: Path,
) -> None:
    run = RunFolder(str(tmp_path), OUTPUTS)
    stage = run.staging()
    (tmp_path / 'model.ckpt').write_text('old')
    (tmp_path / 'logs').mkdir()
    with pytest.raises(KeyboardInterrupt), run.replacing():
        Path(stage.join('model.ckpt')).write_text('new')
        raise KeyboardInterrupt
    assert sorted(os.listdir(tmp_path)) == ['logs', 'model.ckpt']
    assert (tmp_path / 'model.ckpt').read_text() == 'old'
    with run.replacing():
        Path(stage.join('model.ckpt')).write_text('new')
        assert (tmp_path / 'model.ckpt').read_text() == 'old'
    # The new run's outputs replace the old ones; those it did not write go.
    assert os.listdir(tmp_path) == ['model.ckpt']
    assert (tmp_path / 'model.ckpt').read_text() == 'new'


def test_a_killed_replacing_run_is_settled_by_the_next_claim(tmp_path: Path) -> None:
    """kill -9: an incomplete staged run goes, a complete one is moved in."""
    run = RunFolder(str(tmp_path), OUTPUTS)
    stage = Path(run.staging().path)
    (tmp_path / 'model.ckpt').write_text('old')
    (tmp_path / 'logs').mkdir()
    # Killed while training: the earlier run stays, the staging folder goes.
    (stage / 'checkpoints').mkdir(parents=True)
    (stage / 'model.ckpt').write_text('half')
    with run.claimed():
        assert sorted(os.listdir(tmp_path)) == ['.glcgeo.lock', 'logs', 'model.ckpt']
    assert (tmp_path / 'model.ckpt').read_text() == 'old'
    # Killed while moving in a complete run (config.yaml moved in already).
    (stage / 'checkpoints').mkdir(parents=True)
    (stage / 'model.ckpt').write_text('new')
    (tmp_path / 'config.yaml').write_text('new')
    (stage / 'complete.json').write_text('["model.ckpt", "config.yaml", "checkpoints"]')
    with run.claimed():
        pass
    assert sorted(os.listdir(tmp_path)) == ['checkpoints', 'config.yaml', 'model.ckpt']
    assert (tmp_path / 'model.ckpt').read_text() == 'new'
