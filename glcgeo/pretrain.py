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
from collections.abc import Callable
from typing import Any

from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, OnExceptionCheckpoint

from .arguments import check_arguments
from .checkpoints import read_checkpoint, state_dict_misfit
from .datamodules import GLCNetDataModule
from .errors import GlcgeoError, check_band_count
from .outputs import OutputFile
from .runs import RunFolder, check_patch_size
from .tasks import GLCNetTask

__all__ = ['pretrain']

#: Files and folders :func:`pretrain` writes under its output folder.
OUTPUTS = ('checkpoints', 'logs', 'stats.json', 'config.yaml', 'index')
#: Settings that are paths (relative to the folder of the config holding them).
PATHS = ('data.paths', 'data.stats', 'data.index_cache')
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
        resume: continue from ``out/checkpoints/last.ckpt``. A checkpoint that
            cannot be read, or holds another network than *model* asks for, is
            refused before anything is written: ``last.ckpt`` and
            ``config.yaml`` stay as they were.
        seed: global seed (model initialisation, augmentation).
        quiet: no progress bar.

    Returns:
        the path of ``last.ckpt``.

    Raises:
        SettingError: naming a setting out of range (``data.batch_size``,
            ``model.lr`` ...) or one that Lightning refuses (``trainer.devices``
            ...), before anything is written.
        GlcgeoError: for bad data or settings, before training starts; if another
            live run holds *out* (:class:`~glcgeo.outputs.OutputLock`).
        NoRoomError: if a file of the run finds no room.
    """
    check_arguments(GLCNetDataModule.__init__, data, 'data')
    check_arguments(GLCNetTask.__init__, model, 'model')
    run = RunFolder(out, OUTPUTS)
    run.check()
    with run.claimed():
        return _pretrain(run, data, model, trainer, resume, seed, quiet)


def _check_resumable(task: GLCNetTask, path: str) -> None:
    """Check that a checkpoint resumes *task*, before anything is written.

    Raises:
        GlcgeoError: naming the checkpoint, if it cannot be read (truncated,
            damaged), holds another network than *task*'s, or holds no training
            state.
    """
    checkpoint = read_checkpoint(path)
    misfit = state_dict_misfit(task, checkpoint['state_dict'], strict=True)
    if misfit:
        saved = checkpoint['hyper_parameters']
        changed = [
            f'{name} {saved[name]!r}, not {value!r}'
            for name, value in task.hparams.items()
            if value is not None and name in saved and saved[name] != value
        ]
        raise GlcgeoError(
            'cannot resume: the checkpoint holds another network '
            f'({"; ".join(changed) or misfit}); resume with the settings it was '
            'trained with, or choose another --out',
            path,
        )
    if not {'optimizer_states', 'loops'} <= checkpoint.keys():
        raise GlcgeoError(
            'cannot resume: the checkpoint holds no training state (optimizer, loops)',
            path,
        )


def _save_training_state(fit: Trainer, path: str) -> None:
    """Save the full training state (optimiser, loops, data module) whole.

    Only the first process writes checkpoints; the file appears complete or not
    at all (:class:`~glcgeo.outputs.OutputFile`).
    """
    with OutputFile(path) as output:
        fit.save_checkpoint(output.temporary, weights_only=False)
        if fit.is_global_zero:
            output.commit()


class _TrainingStateOnException(OnExceptionCheckpoint):
    """Lightning's ``OnExceptionCheckpoint`` for the steps taken since this start.

    An interrupted run (Ctrl-C, a killed job) leaves ``last.ckpt`` to resume
    from, written whole; a run that fails before its first step (a checkpoint
    that cannot be restored, a first batch that fails) leaves ``last.ckpt`` as
    it was. ``last.ckpt`` stays when training ends: the final state replaces it.
    """

    def __init__(self, dirpath: str) -> None:
        super().__init__(dirpath, filename='last')
        self._start: int | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = trainer.global_step

    def on_exception(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        if self._start is not None and trainer.global_step > self._start:
            _save_training_state(trainer, self.ckpt_path)

    def teardown(self, trainer: Trainer, *args: Any, **kwargs: Any) -> None:
        pass


class _OnTrainStart(Callback):
    """Call a function in the first process once training has started.

    That is, once the model and a resumed checkpoint are restored: a run that
    cannot start leaves the files it would write as they were.
    """

    def __init__(self, call: Callable[[], None]) -> None:
        self.call = call

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            self.call()


def _pretrain(
    run: RunFolder,
    data: dict[str, Any],
    model: dict[str, Any],
    trainer: dict[str, Any],
    resume: bool,
    seed: int,
    quiet: bool,
) -> str:
    """:func:`pretrain` in its claimed output folder."""
    out = run.path
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
        # It is this run's cache, not a setting: the saved config leaves it
        # out, so that a rerun into another folder keeps its own.
        given, data = data, {'index_cache': run.join('index'), **data}
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
        check_band_count(
            'the mosaic has',
            datamodule.num_bands,
            'in_channels is',
            model['in_channels'],
            # The mosaic's first file, where the statistics were computed.
            next(iter(datamodule.band_stats.files), None),
        )
        task = GLCNetTask(**model)
        check_patch_size(task, datamodule.hparams['patch_size'])
        if resume:
            _check_resumable(task, last)
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
        stats_path = run.join('stats.json')

        def write_settings() -> None:
            assert datamodule.band_stats is not None
            datamodule.band_stats.save(stats_path)
            run.write_config(
                seed,
                trainer,
                'glcgeo.tasks.GLCNetTask',
                model,
                'glcgeo.datamodules.GLCNetDataModule',
                {**given, 'stats': stats_path},
                PATHS,
            )

        callbacks: list[Callback] = [
            # One last.ckpt, overwritten when resuming (no last-v1.ckpt beside it).
            ModelCheckpoint(
                dirpath=checkpoints,
                save_last=True,
                every_n_train_steps=CHECKPOINT_EVERY,
                enable_version_counter=False,
            ),
            _TrainingStateOnException(checkpoints),
            # The run's settings, once it is known to start.
            _OnTrainStart(write_settings),
        ]
        fit = run.trainer(settings, callbacks, quiet)
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
        # Periodic checkpoints may predate the last step: save the final state to
        # resume from.
        _save_training_state(fit, last)
    return last
