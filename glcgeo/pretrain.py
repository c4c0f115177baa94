"""Pretrain GLCNet on an unlabeled mosaic: the API behind ``glcgeo pretrain``.

:func:`pretrain` wires :class:`~glcgeo.datamodules.GLCNetDataModule`,
:class:`~glcgeo.tasks.GLCNetTask` and a Lightning ``Trainer`` with CSV and
TensorBoard logs, checkpoints (``last.ckpt`` for resuming) and a progress bar.
Its three dictionaries are the ``data``, ``model`` and ``trainer`` sections of a
LightningCLI config, so ``torchgeo fit --config`` and ``glcgeo pretrain --config``
read the same YAML.
"""

import os
import warnings
from typing import Any

import yaml
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import (
    ModelCheckpoint,
    OnExceptionCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from .datamodules import GLCNetDataModule
from .errors import GlcgeoError
from .outputs import OutputFile, atomic_write
from .tasks import GLCNetTask

__all__ = ['load_config', 'pretrain']


def load_config(path: str) -> dict[str, Any]:
    """Read the ``data``, ``model`` and ``trainer`` sections of a LightningCLI YAML.

    Both ``{'init_args': {...}}`` sections (``torchgeo fit`` style) and plain
    mappings are accepted. The trainer's ``default_root_dir``, ``logger`` and
    ``callbacks`` are left out: glcgeo writes its own under ``--out``.

    Args:
        path: the YAML file.

    Returns:
        a mapping with keys ``data``, ``model``, ``trainer`` and ``seed_everything``.

    Raises:
        GlcgeoError: if the file is missing or not a YAML mapping.
    """
    try:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise GlcgeoError('no such config file', path) from None
    except yaml.YAMLError as error:
        raise GlcgeoError(
            f'not valid YAML ({error.__class__.__name__})', path
        ) from None
    if not isinstance(config, dict):
        raise GlcgeoError('config is not a YAML mapping', path)
    sections: dict[str, Any] = {}
    for name in ('data', 'model'):
        section = config.get(name) or {}
        sections[name] = dict(section.get('init_args') or section)
        sections[name].pop('class_path', None)
    sections['trainer'] = dict(config.get('trainer') or {})
    # glcgeo's commands write logs and checkpoints under their --out folder: a
    # config's own places are for `torchgeo fit`.
    for key in ('default_root_dir', 'logger', 'callbacks'):
        sections['trainer'].pop(key, None)
    sections['seed_everything'] = config.get('seed_everything')
    return sections


def pretrain(
    data: dict[str, Any],
    model: dict[str, Any],
    trainer: dict[str, Any],
    out: str,
    resume: bool = False,
    seed: int = 0,
    quiet: bool = False,
) -> str:
    """Pretrain GLCNet and return the path of the last checkpoint.

    Args:
        data: keyword arguments of :class:`~glcgeo.datamodules.GLCNetDataModule`.
        model: keyword arguments of :class:`~glcgeo.tasks.GLCNetTask`
            (``in_channels`` defaults to the mosaic's band count).
        trainer: keyword arguments of Lightning's ``Trainer`` (``max_epochs``,
            ``max_steps``, ``devices``, ``strategy``, ``accelerator`` ...).
        out: output folder: ``checkpoints/``, ``logs/`` (CSV, TensorBoard),
            ``stats.json`` and ``config.yaml``.
        resume: continue from ``out/checkpoints/last.ckpt``.
        seed: global seed (model initialisation, augmentation).
        quiet: no progress bar.

    Returns:
        the path of ``last.ckpt``.

    Raises:
        GlcgeoError: for bad data or settings, before training starts.
    """
    checkpoints = os.path.join(out, 'checkpoints')
    last = os.path.join(checkpoints, 'last.ckpt')
    if resume and not os.path.exists(last):
        raise GlcgeoError('nothing to resume: no checkpoints/last.ckpt', out)
    if not resume and os.path.exists(last):
        raise GlcgeoError(
            'already holds a pretraining run; pass --resume to continue it, or '
            'choose another --out',
            out,
        )
    seed_everything(seed, workers=True, verbose=False)

    # Build the data first: bad inputs fail here, before any model is built.
    datamodule = GLCNetDataModule(**data)
    datamodule.setup('fit')
    assert datamodule.band_stats is not None
    # Centre matching uses the regions' size in view pixels, as the sampler does.
    model = {
        'in_channels': datamodule.num_bands,
        'region_size': datamodule.hparams['region_size'],
        **model,
    }
    if model['in_channels'] != datamodule.num_bands:
        raise GlcgeoError(
            f'the mosaic has {datamodule.num_bands} bands but in_channels is '
            f'{model["in_channels"]}',
            datamodule.band_stats.files[0],
        )
    task = GLCNetTask(**model)
    os.makedirs(out, exist_ok=True)
    stats_path = os.path.join(out, 'stats.json')
    datamodule.band_stats.save(stats_path)

    config_path = os.path.join(out, 'config.yaml')
    with atomic_write(config_path) as temporary, open(temporary, 'w') as f:
        yaml.safe_dump(
            {
                'seed_everything': seed,
                'trainer': trainer,
                'model': {'class_path': 'glcgeo.tasks.GLCNetTask', 'init_args': model},
                'data': {
                    'class_path': 'glcgeo.datamodules.GLCNetDataModule',
                    'init_args': {**data, 'stats': stats_path},
                },
            },
            f,
            sort_keys=False,
        )

    trainer_args: dict[str, Any] = {
        # With --max-steps alone, the step count decides when to stop.
        'max_epochs': -1 if 'max_steps' in trainer else 1,
        'log_every_n_steps': 1,
        # The pair sampler draws each rank's share itself.
        'use_distributed_sampler': False,
        'enable_progress_bar': not quiet,
        'enable_model_summary': not quiet,
        **trainer,
    }
    if (
        trainer_args.get('devices', 1) not in (1, '1', 'auto')
        and 'strategy' not in trainer
    ):
        trainer_args['strategy'] = 'ddp'
    callbacks: list[Any] = [
        ModelCheckpoint(dirpath=checkpoints, save_last=True, every_n_train_steps=50),
        # An interrupted run (Ctrl-C, a killed job) leaves last.ckpt to resume from.
        OnExceptionCheckpoint(dirpath=checkpoints, filename='last'),
    ]
    if not quiet:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    logs = os.path.join(out, 'logs')
    fit = Trainer(
        default_root_dir=out,
        logger=[
            CSVLogger(logs, name='csv'),
            TensorBoardLogger(logs, name='tensorboard'),
        ],
        callbacks=callbacks,
        **trainer_args,
    )
    with warnings.catch_warnings():
        # Pretraining has no validation, and a new run (checked above) has no
        # last.ckpt for OnExceptionCheckpoint's implicit ckpt_path='last'.
        for message in (
            r'`val_dataloader` but have no `validation_step`',
            r'`\.fit\(ckpt_path=None\)` was called without a model',
            r'there is no last checkpoint available',
        ):
            warnings.filterwarnings('ignore', message=f'.*{message}')
        fit.fit(task, datamodule=datamodule, ckpt_path=last if resume else None)
    # Periodic checkpoints may predate the last step: save the final state, in
    # full (optimiser, loops, data module), to resume from.
    with OutputFile(last) as output:
        fit.save_checkpoint(output.temporary, weights_only=False)
        # Only the first process writes checkpoints.
        if fit.is_global_zero:
            output.commit()
    return last
