"""Training runs: what ``glcgeo pretrain`` and ``glcgeo finetune`` share.

A run keeps everything under one output folder (``--out``), a :class:`RunFolder`:
Lightning's ``checkpoints/`` and ``logs/`` (CSV and TensorBoard), the command's
own files, and ``config.yaml``, the run's resolved settings as a LightningCLI
config (:meth:`RunFolder.write_config`), which ``torchgeo fit --config`` and the
command's ``--config`` (:func:`load_config`) both read.
"""

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from .errors import GlcgeoError
from .outputs import atomic_write

__all__ = ['RunFolder', 'load_config']


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


@dataclass(frozen=True)
class RunFolder:
    """The output folder of a training run, and what glcgeo writes in it.

    Attributes:
        path: the folder.
        outputs: the files and folders the run writes there, that
            :meth:`existing` finds and :meth:`clear` replaces.

    .. versionadded:: 0.1
    """

    path: str
    outputs: Sequence[str] = ()

    def join(self, *names: str) -> str:
        """A path under the folder.

        Args:
            *names: the parts of the path below the folder.

        Returns:
            the joined path.
        """
        return os.path.join(self.path, *names)

    def existing(self) -> list[str]:
        """The outputs an earlier run left in the folder.

        Returns:
            their names, in the order of :attr:`outputs`.
        """
        return [name for name in self.outputs if os.path.exists(self.join(name))]

    def clear(self, inputs: Sequence[str | os.PathLike[str]] = ()) -> None:
        """Delete what an earlier run wrote (only these outputs, nothing else).

        Args:
            inputs: the files the new run reads: none may be, or lie in, an
                output (an output never replaces an input).

        Raises:
            GlcgeoError: if an input is, or lies in, one of the outputs; then
                nothing is deleted.
        """
        outputs = [os.path.realpath(self.join(name)) for name in self.outputs]
        for source in inputs:
            real = os.path.realpath(source)
            if any(real == out or real.startswith(out + os.sep) for out in outputs):
                raise GlcgeoError(
                    'an input lies in the outputs of the run this one would '
                    'replace; move it, or choose another --out',
                    source,
                )
        for name in self.outputs:
            path = self.join(name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)

    def write_config(
        self,
        seed: int,
        trainer: Mapping[str, Any],
        model_class: str,
        model: Mapping[str, Any],
        data_class: str,
        data: Mapping[str, Any],
    ) -> str:
        """Write ``config.yaml``: the run's settings as a LightningCLI config.

        Args:
            seed: the global seed (``seed_everything``).
            trainer: Lightning ``Trainer`` arguments.
            model_class: import path of the task, e.g. ``glcgeo.tasks.GLCNetTask``.
            model: the task's arguments.
            data_class: import path of the data module.
            data: the data module's arguments.

        Returns:
            the path of the file.
        """
        path = self.join('config.yaml')
        config = {
            'seed_everything': seed,
            'trainer': dict(trainer),
            'model': {'class_path': model_class, 'init_args': dict(model)},
            'data': {'class_path': data_class, 'init_args': dict(data)},
        }
        with atomic_write(path) as temporary, open(temporary, 'w') as f:
            yaml.safe_dump(config, f, sort_keys=False)
        return path

    def trainer(
        self,
        settings: Mapping[str, Any],
        callbacks: Sequence[Callback],
        quiet: bool,
        tensorboard: bool = True,
    ) -> Trainer:
        """A Lightning ``Trainer`` that logs under the folder.

        Logs go to ``logs/csv`` (and ``logs/tensorboard``), with a step every
        step; a progress bar and a model summary unless *quiet*.

        Args:
            settings: ``Trainer`` arguments; they override the above.
            callbacks: the command's callbacks (checkpoints).
            quiet: no progress bar nor model summary.
            tensorboard: log to TensorBoard too.

        Returns:
            the trainer.
        """
        logs = self.join('logs')
        loggers: list[Logger] = [CSVLogger(logs, name='csv')]
        if tensorboard:
            loggers.append(TensorBoardLogger(logs, name='tensorboard'))
        callbacks = list(callbacks)
        if not quiet:
            callbacks.append(TQDMProgressBar(refresh_rate=1))
        arguments: dict[str, Any] = {
            'log_every_n_steps': 1,
            'enable_progress_bar': not quiet,
            'enable_model_summary': not quiet,
            **settings,
        }
        return Trainer(
            default_root_dir=self.path, logger=loggers, callbacks=callbacks, **arguments
        )
