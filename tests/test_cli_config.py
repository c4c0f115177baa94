"""One parser for flags and configs: every config key is a flag, flags beat the
config, short flags are aliases, --print_config, callbacks and loggers from YAML,
and saved configs that rerun from any folder."""

import argparse
import inspect
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import rasterio
import yaml
from conftest import (
    LANDSAT8,
    RGBN,
    S2_TILES,
    TorchGeoFit,
    fcn_task,
    save_task_checkpoint,
)
from test_cli_errors import LABELS, PRETRAIN, _one_line

import glcgeo.finetune
import glcgeo.pretrain
from glcgeo.arguments import Range, argument_rules
from glcgeo.cli import build_parser, main
from glcgeo.datamodules import GLCNetDataModule, SegmentationDataModule
from glcgeo.tasks import FinetuneTask, GLCNetTask

#: The API each command calls, and the task it trains.
API = {
    'pretrain': (glcgeo.pretrain, 'glcgeo.tasks.GLCNetTask'),
    'finetune': (glcgeo.finetune, 'glcgeo.tasks.FinetuneTask'),
}
#: Each command's input flags.
INPUTS = {
    'pretrain': ['--data', str(S2_TILES)],
    'finetune': ['--images', str(S2_TILES), '--masks', str(LABELS)],
}


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The arguments the commands call their API with (which does nothing)."""
    made: list[dict[str, Any]] = []

    def record(data: Any, model: Any, trainer: Any, out: str, **options: Any) -> Any:
        made.append({'data': data, 'model': model, 'trainer': trainer, 'out': out,
                     **options})  # fmt: skip
        return SimpleNamespace(test={}, label_tiles=0, checkpoint=out)

    for command, (module, _) in API.items():
        monkeypatch.setattr(module, command, record)
    return made


def _run(command: str, *argv: str) -> None:
    """Run a command line whose API call the ``calls`` fixture records."""
    assert main([command, *argv, '--quiet']) == 0


def _config(tmp_path: Path, config: dict[str, Any]) -> str:
    path = tmp_path / 'config.yaml'
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize('command', ['pretrain', 'finetune'])
def test_flags_beat_the_config_whatever_their_order(
    tmp_path: Path, calls: list[dict[str, Any]], command: str
) -> None:
    # Before: finetune's seed was the config's seed_everything over --seed.
    config = _config(tmp_path, {
        'seed_everything': 1,
        'trainer': {'max_epochs': 7, 'max_steps': 9},
        'model': {'class_path': API[command][1], 'init_args': {'lr': 0.1}},
        'data': {'init_args': {'batch_size': 3, 'seed': 1}},
    })  # fmt: skip
    out = str(tmp_path / 'run')
    _run(command, '--seed', '5', '--max-steps', '2', '--config', config,
         '--batch-size', '6', '--model.lr', '0.2', '--out', out,
         *INPUTS[command])  # fmt: skip
    (call,) = calls
    assert call['seed'] == 5
    assert call['trainer'] == {'max_epochs': 7, 'max_steps': 2}
    assert call['model'] == {'lr': 0.2}
    assert call['data']['batch_size'] == 6
    # finetune's --seed is the label draw's too; pretrain's the global one only.
    assert call['data']['seed'] == (5 if command == 'finetune' else 1)
    assert call['out'] == out


def test_every_config_key_is_a_flag(
    tmp_path: Path, calls: list[dict[str, Any]]
) -> None:
    # Before: --trainer.max_epochs 2 was refused.
    _run('pretrain', *INPUTS['pretrain'], '--out', str(tmp_path),
         '--trainer.max_epochs', '2', '--trainer.limit_train_batches=0.5',
         '--model.init_args.lam', '0.3', '--model.temperature', '0.2',
         '--data.regions', '6', '--seed_everything', '4', '--devices', '2')  # fmt: skip
    (call,) = calls
    assert call['trainer'] == {'max_epochs': 2, 'limit_train_batches': 0.5,
                               'devices': 2}  # fmt: skip
    assert call['model'] == {'lam': 0.3, 'temperature': 0.2}
    assert call['data'] == {'paths': [str(S2_TILES)], 'regions': 6}
    assert call['seed'] == 4


def _literal(text: str) -> int | float | str:
    """A default as a flag's help writes it (``224``, ``1e-3``, ``resnet50``)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _short_flags(command: str) -> Iterator[tuple[argparse.Action, type, str]]:
    """The short flags of a training command that set a class's argument.

    Yields:
        the flag's action, the class (task or data module) and the argument.
    """
    classes = {
        'pretrain': {'model': GLCNetTask, 'data': GLCNetDataModule},
        'finetune': {'model': FinetuneTask, 'data': SegmentationDataModule},
    }[command]
    (commands,) = [a for a in build_parser()._actions if a.dest == 'command']
    for action in commands.choices[command]._actions:
        section, _, key = action.dest.partition('.')
        if section in classes:
            yield action, classes[section], key


@pytest.mark.parametrize('command', ['pretrain', 'finetune'])
def test_a_short_flag_states_the_default_its_class_has(command: str) -> None:
    # The help of --lam says [0.5] without importing the task (a fast --help):
    # the signature's default is the one that holds.
    stated = 0
    for action, cls, key in _short_flags(command):
        stated_default = re.search(r'\[([^\]]*)\]', action.help or '')
        default = inspect.signature(cls).parameters[key].default
        if stated_default is None or default is None:  # None: the help says how
            continue
        expected = list(default) if isinstance(default, tuple) else [default]
        assert [_literal(t) for t in stated_default[1].split()] == expected, (
            action.option_strings
        )
        stated += 1
    assert stated >= 12


def _just_outside(rule: Range) -> float:
    """A number that *rule* refuses, next to its range."""
    if rule.low is not None:
        return rule.low if rule.low_open else rule.low - 1
    assert rule.high is not None
    return rule.high if rule.high_open else rule.high + 1


@pytest.mark.parametrize('command', ['pretrain', 'finetune'])
def test_a_short_flag_refuses_what_its_class_refuses(command: str) -> None:
    # The short flags check as they are parsed (no torch); the class's signature
    # holds the rule the key flags and configs are checked with: they agree.
    checked = 0
    for action, cls, key in _short_flags(command):
        for rule in argument_rules(cls.__init__).get(key, []):
            if not isinstance(rule, Range):
                continue
            assert action.type is not None, action.option_strings
            with pytest.raises(argparse.ArgumentTypeError):
                action.type(str(_just_outside(rule)))
            checked += 1
    assert checked >= 12


def test_a_label_budget_flag_replaces_the_config_budget(
    tmp_path: Path, calls: list[dict[str, Any]]
) -> None:
    config = _config(tmp_path, {'data': {'label_fraction': 0.5}})
    _run('finetune', *INPUTS['finetune'], '--out', str(tmp_path), '--config', config,
         '--num-label-patches', '4')  # fmt: skip
    assert calls[0]['data']['num_label_patches'] == 4
    assert calls[0]['data']['label_fraction'] is None


@pytest.mark.parametrize(
    ('flags', 'message'),
    [
        (['--trainer.max_steps', 'x'], "argument --trainer.max_steps: must be int, "
         "got 'x'"),
        (['--model.lr=fast'], "argument --model.lr: must be float, got 'fast'"),
        (['--trainer.max_step', '3'], 'unrecognized arguments: --trainer.max_step 3 '
         '(did you mean max_steps'),
        (['--lam', '2'], 'argument --lam: must be a fraction in [0, 1], got 2'),
        (['--overwrite'], 'glcgeo pretrain: unrecognized arguments: --overwrite (see '
         'glcgeo pretrain --help)'),
    ],
)  # fmt: skip
def test_a_bad_flag_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    argv = ['pretrain', *INPUTS['pretrain'], '--out', str(tmp_path / 'run'), *flags]
    _one_line(capsys, main(argv), message)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('command', ['pretrain', 'finetune'])
def test_print_config_prints_a_config_that_gives_the_same_settings(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    calls: list[dict[str, Any]],
    command: str,
) -> None:
    argv = [*INPUTS[command], '--out', str(tmp_path / 'run'), '--seed', '3',
            '--lr', '0.01', '--max-steps', '2', '--trainer.callbacks+=EarlyStopping',
            '--trainer.callbacks.monitor=train_loss']  # fmt: skip
    assert main([command, *argv, '--print_config']) == 0
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed)
    assert config['seed_everything'] == 3
    assert config['trainer']['max_steps'] == 2
    assert config['model']['init_args']['lr'] == 0.01
    assert config['data']['init_args']['batch_size'] > 0  # defaults shown
    assert not (tmp_path / 'run').exists()
    (tmp_path / 'partial').mkdir()
    # A config prints without the settings a run needs (--out, the data).
    partial = _config(tmp_path / 'partial', {'model': {'lr': 0.5}})
    assert main([command, '--config', partial, '--print_config']) == 0
    assert yaml.safe_load(capsys.readouterr().out)['model']['init_args']['lr'] == 0.5
    # The printed config, rerun, gives what the flags give.
    _run(command, *argv)
    _run(command, '--config', _config(tmp_path, config))
    given, rerun = calls
    assert rerun['seed'] == given['seed'] and rerun['out'] == given['out']
    # The printed callback is whole: its class path and every argument.
    (callback,) = rerun['trainer'].pop('callbacks')
    assert callback['class_path'] == 'lightning.pytorch.callbacks.EarlyStopping'
    assert callback['init_args']['monitor'] == 'train_loss'
    given['trainer'].pop('callbacks')
    assert rerun['trainer'].items() >= given['trainer'].items()
    assert rerun['model'].items() >= given['model'].items()
    assert rerun['data'].items() >= given['data'].items()


def test_callbacks_and_loggers_from_the_config_are_used(tmp_path: Path) -> None:
    # Before: the config's trainer.callbacks and trainer.logger were dropped.
    config = _config(tmp_path, {'trainer': {
        'callbacks': [{
            'class_path': 'lightning.pytorch.callbacks.ModelCheckpoint',
            'init_args': {'dirpath': str(tmp_path / 'every_step'),
                          'every_n_train_steps': 1, 'save_top_k': -1},
        }],
        'logger': {'class_path': 'lightning.pytorch.loggers.CSVLogger',
                   'init_args': {'save_dir': str(tmp_path / 'my_logs')}},
    }})  # fmt: skip
    out = tmp_path / 'run'
    argv = ['pretrain', *INPUTS['pretrain'], '--out', str(out), '--config', config,
            *PRETRAIN, '--max-steps', '2']  # fmt: skip
    assert main(argv) == 0
    assert len(list((tmp_path / 'every_step').glob('*.ckpt'))) == 2
    assert list((tmp_path / 'my_logs').glob('lightning_logs/*/metrics.csv'))
    assert not (out / 'logs').exists()  # the config's loggers replace the run's
    assert (out / 'checkpoints' / 'last.ckpt').exists()  # the run's callbacks stay
    saved = yaml.safe_load((out / 'config.yaml').read_text())
    assert saved['trainer']['callbacks'][0]['init_args']['every_n_train_steps'] == 1


@pytest.fixture(scope='module')
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-step pretraining run made from a folder with relative paths."""
    home = tmp_path_factory.mktemp('home')
    os.symlink(S2_TILES, home / 'tiles')
    cwd = os.getcwd()
    os.chdir(home)
    try:
        argv = ['pretrain', '--data', 'tiles', '--out', 'runs/a', *PRETRAIN,
                '--max-steps', '1']  # fmt: skip
        assert main(argv) == 0
    finally:
        os.chdir(cwd)
    return home / 'runs' / 'a'


def test_a_saved_config_reruns_from_another_folder(
    saved_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before: paths as typed (relative to where the run started) or absolute.
    text = (saved_run / 'config.yaml').read_text()
    saved = yaml.safe_load(text)
    assert saved['data']['init_args']['paths'] == ['../../tiles']
    assert saved['data']['init_args']['stats'] == 'stats.json'
    assert str(saved_run.parent) not in text
    monkeypatch.chdir(tmp_path)
    argv = ['pretrain', '--config', str(saved_run / 'config.yaml'), '--out', 'b',
            '--quiet', '--max-steps', '1']  # fmt: skip
    assert main(argv) == 0
    assert (tmp_path / 'b' / 'checkpoints' / 'last.ckpt').exists()
    # A run folder moved with its data resumes.
    moved = shutil.copytree(saved_run.parent.parent, tmp_path / 'moved', symlinks=True)
    assert main(['pretrain', '--out', str(moved / 'runs' / 'a'), '--resume',
                 '--max-steps', '2', '--quiet']) == 0  # fmt: skip
    resumed = yaml.safe_load((moved / 'runs' / 'a' / 'config.yaml').read_text())
    assert resumed['data']['init_args']['paths'] == ['../../tiles']


def test_a_saved_config_runs_under_torchgeo_fit(
    saved_run: Path, torchgeo_fit: TorchGeoFit
) -> None:
    torchgeo_fit(
        str(saved_run / 'config.yaml'), {}, {'max_steps': 1, 'log_every_n_steps': 1}
    )


def test_predict_takes_band_names_as_every_command_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: predict --bands took indexes only; stats, pretrain, finetune names too.
    task = fcn_task(4, 3)
    task.hparams.update({'band_mean': [1000.0] * 4, 'band_std': [500.0] * 4})
    model = str(save_task_checkpoint(task, tmp_path / 'fcn.ckpt'))
    maps = {}
    for kind, bands in (
        ('indexes', ['4', '5', '6', '7']),
        ('names', ['B4', 'B5', 'B6', 'B7']),
    ):
        out = tmp_path / f'{kind}.tif'
        argv = ['predict', '--in', str(LANDSAT8), '--out', str(out), '--model', model,
                '--bands', *bands, '--quiet']  # fmt: skip
        assert main(argv) == 0
        with rasterio.open(out) as src:
            maps[kind] = src.read()
    assert np.array_equal(maps['indexes'], maps['names'])
    argv = ['predict', '--in', str(LANDSAT8), '--out', str(tmp_path / 'x.tif'),
            '--model', model, '--bands', 'B4', 'B5', 'B6', 'B9']  # fmt: skip
    _one_line(capsys, main(argv), f"{LANDSAT8}: no band named 'B9' (bands: B1, B2")
    # Bands without descriptions are B1, B2 ... as stats and the mosaics name them.
    argv = ['predict', '--in', str(RGBN), '--out', str(tmp_path / 'rgbn.tif'),
            '--model', model, '--bands', 'B1', 'B2', 'B3', 'B4', '--quiet']  # fmt: skip
    assert main(argv) == 0
