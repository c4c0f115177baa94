"""Pretrain GLCNet on an unlabeled mosaic: the API behind ``glcgeo pretrain``.

:func:`pretrain` wires :class:`~glcgeo.datamodules.GLCNetDataModule`,
:class:`~glcgeo.tasks.GLCNetTask` and a Lightning ``Trainer`` with CSV and
TensorBoard logs, checkpoints (``last.ckpt`` for resuming) and a progress bar.
Its three dictionaries are the ``data``, ``model`` and ``trainer`` sections of a
LightningCLI config, so ``torchgeo fit --config`` and ``glcgeo pretrain --config``
read the same YAML (:mod:`glcgeo.runs`).
"""

import os
import warnings
from typing import Any

from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, OnExceptionCheckpoint

from .datamodules import GLCNetDataModule
from .errors import GlcgeoError
from .outputs import OutputFile
from .runs import RunFolder, check_patch_size
from .tasks import GLCNetTask

__all__ = ['pretrain']

#: Files and folders :func:`pretrain` writes under its output folder.
OUTPUTS = ('checkpoints', 'logs', 'stats.json', 'config.yaml', 'index')
#: Training steps between two saves of ``last.ckpt``.
CHECKPOINT_EVERY = 50


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
            ``stats.json``, ``config.yaml`` and ``index/`` (the mosaic's index
            and coverage, :mod:`glcgeo.index_cache`).
        resume: continue from ``out/checkpoints/last.ckpt``.
        seed: global seed (model initialisation, augmentation).
        quiet: no progress bar.

    Returns:
        the path of ``last.ckpt``.

    Raises:
        GlcgeoError: for bad data or settings, before training starts.
    """
    run = RunFolder(out, OUTPUTS)
    checkpoints = run.join('checkpoints')
    last = run.join('checkpoints', 'last.ckpt')
    if resume and not os.path.exists(last):
        raise GlcgeoError(
            'nothing to resume in this folder (no checkpoints/last.ckpt)', out
        )
    if not resume and os.path.exists(last):
        raise GlcgeoError(
            'already holds a pretraining run; pass --resume to continue it, or '
            'choose another --out',
            out,
        )
    run.check()
    seed_everything(seed, workers=True, verbose=False)

    # A run that fails before its first step leaves nothing (a corrected rerun
    # may use the folder), not even the index its set-up cached; one that took
    # steps keeps last.ckpt to resume from.
    fit: Trainer | None = None
    with run.taken_back_on_failure(
        keep=lambda: resume or (fit is not None and fit.global_step > 0)
    ):
        # The mosaic's index and coverage are computed once per run: the other
        # processes (DDP ranks, a resumed run) read them from the run folder.
        data = {'index_cache': run.join('index'), **data}
        # Build the data, the model and the trainer first: bad inputs or settings
        # fail here, before the run's files are written.
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
        check_patch_size(task, datamodule.hparams['patch_size'])
        settings: dict[str, Any] = {
            # With --max-steps alone, the step count decides when to stop.
            'max_epochs': -1 if 'max_steps' in trainer else 1,
            # The pair sampler draws each rank's share itself.
            'use_distributed_sampler': False,
            **trainer,
        }
        if (
            settings.get('devices', 1) not in (1, '1', 'auto')
            and 'strategy' not in trainer
        ):
            settings['strategy'] = 'ddp'
        callbacks: list[Callback] = [
            # One last.ckpt, overwritten when resuming (no last-v1.ckpt beside it).
            ModelCheckpoint(
                dirpath=checkpoints,
                save_last=True,
                every_n_train_steps=CHECKPOINT_EVERY,
                enable_version_counter=False,
            ),
            # An interrupted run (Ctrl-C, a killed job) leaves last.ckpt to resume from.
            OnExceptionCheckpoint(dirpath=checkpoints, filename='last'),
        ]
        fit = run.trainer(settings, callbacks, quiet)

        os.makedirs(out, exist_ok=True)
        stats_path = run.join('stats.json')
        datamodule.band_stats.save(stats_path)
        run.write_config(
            seed,
            trainer,
            'glcgeo.tasks.GLCNetTask',
            model,
            'glcgeo.datamodules.GLCNetDataModule',
            {**data, 'stats': stats_path},
        )
        with warnings.catch_warnings():
            # Pretraining has no validation, and a new run (checked above) has
            # no last.ckpt for OnExceptionCheckpoint's implicit ckpt_path='last'.
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
