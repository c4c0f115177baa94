"""Training runs: what ``glcgeo pretrain`` and ``glcgeo finetune`` share.

A run keeps everything under one output folder (``--out``), a :class:`RunFolder`:
Lightning's ``checkpoints/`` and ``logs/`` (CSV and TensorBoard), the command's
own files, and ``config.yaml``, the run's resolved settings as a LightningCLI
config (:meth:`RunFolder.write_config`), which ``torchgeo fit --config`` and the
command's ``--config`` (:func:`read_config`) both read. Paths in a config are
relative to its folder.

A run that replaces an earlier one (``finetune --overwrite``) writes in a
hidden staging folder of the run folder, and its outputs replace the earlier
run's only once it is complete (:meth:`RunFolder.replacing`): a run that fails,
is interrupted or killed leaves the earlier run as it was.
"""

import json
import logging
import os
import shutil
import warnings
from argparse import ArgumentError
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from segmentation_models_pytorch.base import SegmentationModel

from .errors import GlcgeoError, SettingError
from .outputs import (
    OutputLock,
    atomic_write,
    check_output_folder,
    joins_a_run,
    no_room_reported,
)
from .sources import is_url

__all__ = ['RunFolder', 'RunTrainer', 'check_patch_size', 'class_path', 'read_config']

#: The folder, in a run folder, where a run writes until its outputs replace
#: the earlier run's (:meth:`RunFolder.replacing`).
STAGING = '.glcgeo-staging'
#: The file, in the staging folder, that marks the staged run complete: it
#: lists the outputs the run wrote, which replace the earlier run's.
COMPLETE = 'complete.json'


def check_patch_size(task: LightningModule, patch_size: int) -> None:
    """Check that a task's networks take patches of *patch_size* pixels.

    segmentation_models_pytorch networks take sides that are multiples of their
    encoder's output stride (16 for DeepLabV3+); finding out at the first step
    would leave a run behind.

    Args:
        task: the task whose networks will see the patches.
        patch_size: side of the patches, in pixels.

    Raises:
        GlcgeoError: if *patch_size* is not a multiple of a network's stride.
    """
    for network in task.modules():
        if not isinstance(network, SegmentationModel):
            continue
        stride = int(network.encoder.output_stride)
        if network.requires_divisible_input_shape and patch_size % stride:
            nearest = max(stride, patch_size // stride * stride)
            raise GlcgeoError(
                f'patch size {patch_size}: the network takes multiples of {stride} '
                f'pixels: use {nearest}'
            )


class RunTrainer(Trainer):
    """A Lightning ``Trainer`` whose Ctrl-C reaches the caller as KeyboardInterrupt.

    On Ctrl-C, Lightning stops gracefully (callbacks' ``on_exception`` run, e.g.
    ``OnExceptionCheckpoint`` saves ``last.ckpt``) and then exits the process
    with status 1; a glcgeo command must say "interrupted", take back what it
    must and exit with 130.

    .. versionadded:: 0.1
    """

    @contextmanager
    def _interrupts(self) -> Iterator[None]:
        """Turn Lightning's exit after a Ctrl-C back into KeyboardInterrupt."""
        try:
            yield
        except SystemExit:
            if self.interrupted:
                raise KeyboardInterrupt from None
            raise

    def fit(self, *args: Any, **kwargs: Any) -> None:
        """Lightning's ``fit``; Ctrl-C raises KeyboardInterrupt."""
        with self._interrupts():
            super().fit(*args, **kwargs)

    def validate(self, *args: Any, **kwargs: Any) -> Any:
        """Lightning's ``validate``; Ctrl-C raises KeyboardInterrupt."""
        with self._interrupts():
            return super().validate(*args, **kwargs)

    def test(self, *args: Any, **kwargs: Any) -> Any:
        """Lightning's ``test``; Ctrl-C raises KeyboardInterrupt."""
        with self._interrupts():
            return super().test(*args, **kwargs)


def read_config(
    path: str, classes: Mapping[str, type], paths: Iterable[str] = ()
) -> dict[str, Any]:
    """Read a LightningCLI config into plain sections, its paths made usable here.

    A section may be ``{'class_path': ..., 'init_args': {...}}`` (``torchgeo
    fit`` style), ``{'init_args': {...}}`` or the settings themselves. Relative
    paths in the settings named by *paths* are relative to the config's folder
    (as :meth:`RunFolder.write_config` stores them): they are resolved against
    it, so a config runs from any working folder. Names and values of the
    settings are the parser's to check.

    Args:
        path: the YAML file.
        classes: the class each class section (``model``, ``data``) configures.
        paths: dotted names of path settings (``data.paths`` ...).

    Returns:
        the sections, each a mapping of settings (``seed_everything`` a value).

    Raises:
        GlcgeoError: naming the file, if it is missing or not a YAML mapping, a
            section is not a mapping, or a ``class_path`` names another class.
    """
    try:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise GlcgeoError('no such config file', path) from None
    except OSError as error:  # a folder, an unreadable file
        raise GlcgeoError(f'cannot read the config ({error.strerror})', path) from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise GlcgeoError(
            f'not valid YAML ({error.__class__.__name__})', path
        ) from None
    if not isinstance(config, dict):
        raise GlcgeoError('config is not a YAML mapping', path)
    for name in ('trainer', *classes):
        section = _mapping(config.get(name) or {}, name, path)
        if name in classes and {'class_path', 'init_args'} & section.keys():
            _check_class(section.get('class_path'), classes[name], name, path)
            section = _mapping(
                section.get('init_args') or {}, f'{name}.init_args', path
            )
        if name in config:
            config[name] = section
    folder = os.path.dirname(os.path.abspath(path))
    return _with_paths(config, paths, lambda p: _resolved(p, folder))


def _mapping(section: Any, name: str, path: str) -> dict[str, Any]:
    """A section of a config, which must be a mapping of settings."""
    if not isinstance(section, dict):
        raise GlcgeoError(
            f'{name} must be a mapping of settings, got '
            f'{type(section).__name__} {section!r:.40}',
            path,
        )
    return dict(section)


def class_path(cls: type) -> str:
    """A class as a config's ``class_path`` names it: by its package's export.

    Returns:
        e.g. ``glcgeo.tasks.GLCNetTask`` for ``glcgeo.tasks.glcnet.GLCNetTask``.
    """
    return f'{cls.__module__.rpartition(".")[0]}.{cls.__name__}'


def _check_class(given: Any, cls: type, name: str, path: str) -> None:
    """Refuse a section's ``class_path`` that names another class than *cls*."""
    expected = class_path(cls)
    if given not in (None, expected, f'{cls.__module__}.{cls.__name__}'):
        raise GlcgeoError(
            f'{name}.class_path must be {expected}, got {given!r:.60}', path
        )


def _with_paths(
    config: dict[str, Any], paths: Iterable[str], change: Callable[[str], str]
) -> dict[str, Any]:
    """*config* with the path settings named by *paths* changed by *change*."""
    for key in paths:
        name, _, setting = key.partition('.')
        section = config.get(name)
        if not isinstance(section, dict) or setting not in section:
            continue
        value = section[setting]
        if isinstance(value, str):
            value = change(value)
        elif isinstance(value, list):
            value = [change(v) if isinstance(v, str) else v for v in value]
        config[name] = {**section, setting: value}
    return config


def _resolved(path: str, folder: str) -> str:
    """A path of a config in *folder*, as the working folder reaches it.

    A relative path stays relative (to the working folder), so that the run's
    own config stores it relative again.
    """
    if path.startswith('@'):  # a list of sources (glcgeo.sources.expand)
        return '@' + _resolved(path[1:], folder)
    if is_url(path) or os.path.isabs(path):
        return path
    return os.path.relpath(os.path.join(folder, path))


def _stored(path: str, folder: str) -> str:
    """A path as a config in *folder* keeps it: relative to the folder.

    Absolute paths outside the folder stay absolute, as they were given.
    """
    if path.startswith('@'):
        return '@' + _stored(path[1:], folder)
    real = os.path.abspath(path)
    if is_url(path) or (
        os.path.isabs(path) and not real.startswith(os.path.abspath(folder) + os.sep)
    ):
        return path
    return os.path.relpath(real, folder)


@dataclass(frozen=True)
class RunFolder:
    """The output folder of a training run, and what glcgeo writes in it.

    Attributes:
        path: the folder.
        outputs: the files and folders the run writes there, that
            :meth:`existing` finds and :meth:`clear` replaces.
        home: for a staging folder (:meth:`staging`), the run folder its
            outputs go to; paths in its config are stored relative to that.

    .. versionadded:: 0.1
    """

    path: str
    outputs: Sequence[str] = ()
    home: str | None = None

    def join(self, *names: str) -> str:
        """A path under the folder.

        Args:
            *names: the parts of the path below the folder.

        Returns:
            the joined path.
        """
        return os.path.join(self.path, *names)

    def check(self) -> None:
        """Check, before any work, that the folder can be written or created.

        Raises:
            GlcgeoError: if it cannot (:func:`~glcgeo.outputs.check_output_folder`).
        """
        check_output_folder(self.path)

    @contextmanager
    def claimed(self) -> Iterator[None]:
        """Hold the folder for this run alone, from its checks to its end.

        The folder is created if needed and claimed
        (:class:`~glcgeo.outputs.OutputLock`: another live run's folder is
        refused, temporary files of dead runs are removed, and so is the
        staging folder of a run killed before it completed; a complete one's
        outputs are moved in, as that run would have); a folder the run
        created and left empty is removed when the block ends. A write that
        finds no room in the block is one line naming the file or the folder.
        The processes of a multi-process run other than the first join the
        first's claim (:func:`~glcgeo.outputs.joins_a_run`).

        Yields:
            nothing.

        Raises:
            GlcgeoError: if the folder cannot be created or another run holds
                it; :class:`~glcgeo.errors.NoRoomError` for lack of room.
        """
        created = not os.path.exists(self.path)
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as error:
            raise GlcgeoError(
                f'cannot create the folder ({error.strerror})', self.path
            ) from None
        try:
            with (
                OutputLock(self.path, folder=True, subfolders=self.outputs),
                no_room_reported(self.path),
            ):
                if not joins_a_run():
                    self._settle(self.staging())
                yield
        finally:
            if created and os.path.isdir(self.path) and not os.listdir(self.path):
                os.rmdir(self.path)

    @contextmanager
    def taken_back_on_failure(
        self, keep: Callable[[], bool] = lambda: False
    ) -> Iterator[None]:
        """Remove what the run wrote if it fails, so the folder serves its rerun.

        On an error or a Ctrl-C inside the block, the :attr:`outputs` go, unless
        *keep* says they hold something worth resuming (an empty folder the run
        created goes when :meth:`claimed` ends).

        Args:
            keep: asked after a failure; True keeps the outputs.

        Yields:
            nothing.
        """
        try:
            yield
        except BaseException:
            if not keep():
                self.clear()
            raise

    def existing(self) -> list[str]:
        """The outputs an earlier run left in the folder.

        Returns:
            their names, in the order of :attr:`outputs`.
        """
        return [name for name in self.outputs if os.path.exists(self.join(name))]

    def clear(self) -> None:
        """Delete what an earlier run wrote (only these outputs, nothing else)."""
        for name in self.outputs:
            _remove(self.join(name))

    def staging(self) -> 'RunFolder':
        """The folder where a run writes until it replaces this one's outputs.

        Returns:
            the hidden staging folder in this folder (not created here), with
            the same outputs; see :meth:`replacing`.
        """
        return RunFolder(self.join(STAGING), self.outputs, home=self.path)

    @contextmanager
    def replacing(
        self, inputs: Sequence[str | os.PathLike[str]] = ()
    ) -> Iterator[None]:
        """Let a run write in :meth:`staging`, and replace the outputs once it is done.

        The earlier run's outputs stay as they were until the block ends
        without an error: then the staged outputs replace them (an output the
        new run did not write goes). An error or a Ctrl-C in the block removes
        the staging folder. A run killed in the block (``kill -9``) leaves the
        staging folder, which the next run into this folder removes when it
        claims it (:meth:`claimed`); one killed while its outputs are moved in
        leaves them to be moved in then. In a multi-process run, only the first
        process creates, moves in and removes the staging folder.

        Args:
            inputs: the files the new run reads: none may be, or lie in, an
                output (an output never replaces an input).

        Yields:
            nothing.

        Raises:
            GlcgeoError: if an input is, or lies in, one of the outputs; then
                nothing is written.
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
        if joins_a_run():
            yield
            return
        stage = self.staging()
        os.makedirs(stage.path, exist_ok=True)
        try:
            yield
        except BaseException:
            shutil.rmtree(stage.path, ignore_errors=True)
            raise
        with (
            atomic_write(stage.join(COMPLETE)) as temporary,
            open(temporary, 'w') as f,
        ):
            json.dump(stage.existing(), f)
        self._settle(stage)

    def _settle(self, stage: 'RunFolder') -> None:
        """Finish what a staged run left: move a complete one in, drop the rest.

        Moving in can be taken up again where it stopped: each output staged
        replaces the old one, an old output the run did not write goes, and
        the staging folder goes last.
        """
        if not os.path.isdir(stage.path):
            return
        try:
            with open(stage.join(COMPLETE)) as f:
                written = json.load(f)
        except FileNotFoundError:  # the run did not complete: its files go
            written = None
        if written is not None:
            for name in self.outputs:
                staged = stage.join(name)
                if os.path.lexists(staged):
                    _remove(self.join(name))
                    os.replace(staged, self.join(name))
                elif name not in written:
                    _remove(self.join(name))
        shutil.rmtree(stage.path)

    def write_config(
        self,
        seed: int,
        trainer: Mapping[str, Any],
        model_class: str,
        model: Mapping[str, Any],
        data_class: str,
        data: Mapping[str, Any],
        paths: Iterable[str] = (),
    ) -> str:
        """Write ``config.yaml``: the run's settings as a LightningCLI config.

        Paths are stored relative to the folder (a staging folder's
        :attr:`home`; absolute paths outside it stay absolute), so the config
        reruns from any working folder (:func:`read_config`) and moves with
        the folder.

        Args:
            seed: the global seed (``seed_everything``).
            trainer: Lightning ``Trainer`` arguments.
            model_class: import path of the task, e.g. ``glcgeo.tasks.GLCNetTask``.
            model: the task's arguments.
            data_class: import path of the data module.
            data: the data module's arguments.
            paths: dotted names of the path settings (``data.paths`` ...).

        Returns:
            the path of the file.
        """
        path = self.join('config.yaml')
        home = self.home or self.path
        config = _with_paths(
            {'trainer': dict(trainer), 'model': dict(model), 'data': dict(data)},
            paths,
            lambda p: _stored(p, home),
        )
        config = {
            'seed_everything': seed,
            'trainer': config['trainer'],
            'model': {'class_path': model_class, 'init_args': config['model']},
            'data': {'class_path': data_class, 'init_args': config['data']},
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
    ) -> RunTrainer:
        """A Lightning ``Trainer`` that logs under the folder, creating nothing yet.

        Logs go to ``logs/csv`` (and ``logs/tensorboard``), with a step every
        step; a progress bar and a model summary unless *quiet*.

        Args:
            settings: ``Trainer`` arguments; they override the above. Its
                ``callbacks`` and ``logger`` are given as in a config
                (``class_path`` and ``init_args``): the callbacks are added to
                the command's, the loggers replace the above (``False``: none).
            callbacks: the command's callbacks (checkpoints).
            quiet: no progress bar nor model summary.
            tensorboard: log to TensorBoard too.

        Returns:
            the trainer.

        Raises:
            SettingError: naming the setting Lightning refuses (``devices=0``,
                ``accelerator='tpu'`` without torch_xla ...).
            GlcgeoError: if Lightning refuses settings together only.
        """
        arguments: dict[str, Any] = {
            'log_every_n_steps': 1,
            'enable_progress_bar': not quiet,
            'enable_model_summary': not quiet,
            **settings,
        }
        try:
            given = _instantiate(
                arguments.pop('callbacks', None), arguments.pop('logger', True)
            )
            logs = self.join('logs')
            loggers = given.logger
            if loggers is True:
                loggers = [CSVLogger(logs, name='csv')]
                if tensorboard:
                    loggers.append(TensorBoardLogger(logs, name='tensorboard'))
            extra = given.callbacks or []
            callbacks = [
                *callbacks,
                *([extra] if isinstance(extra, Callback) else extra),
            ]
            if not quiet:
                callbacks.append(TQDMProgressBar(refresh_rate=1))
            return RunTrainer(
                default_root_dir=self.path,
                logger=loggers,
                callbacks=callbacks,
                **arguments,
            )
        except REFUSALS as error:
            raise _trainer_error(error, settings) from None


#: How Lightning refuses ``Trainer`` settings (ImportError: an accelerator or
#: strategy whose package is missing, ``accelerator='tpu'``).
REFUSALS = (ImportError, MisconfigurationException, TypeError, ValueError)


def _trainer_error(error: Exception, settings: Mapping[str, Any]) -> GlcgeoError:
    """Lightning's refusal of ``Trainer`` settings, naming the setting refused.

    Lightning's messages do not always name it (``No supported gpu backend
    found!``): the first setting that Lightning refuses on its own is named.

    Returns:
        a SettingError naming it, or, for settings refused together only, a
        GlcgeoError.
    """
    message = ' '.join(str(error).split())
    previous = logging.root.manager.disable
    # Not a line more: Lightning's device lines and warnings, while trying.
    logging.disable(max(previous, logging.INFO))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            for name, value in settings.items():
                if name in ('callbacks', 'logger'):
                    continue
                try:
                    Trainer(
                        **{'logger': False, 'enable_checkpointing': False, name: value}
                    )
                except REFUSALS:
                    problem = f'cannot be {value!r:.40}: {message}'
                    return SettingError(name, problem, 'trainer')
    finally:
        logging.disable(previous)
    return GlcgeoError(f'bad trainer setting: {message}')


def _remove(path: str) -> None:
    """Remove a file or a folder of files, if it is there."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _instantiate(callbacks: Any, logger: Any) -> Any:
    """Lightning callbacks and loggers from their config form (``class_path`` ...).

    Returns:
        a namespace with ``callbacks`` (a list, or None) and ``logger`` (a
        logger, a list of them, or a bool).

    Raises:
        ValueError: if a class or argument does not exist (jsonargparse's words).
    """
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument('--callbacks', type=list[Callback] | Callback | None)
    parser.add_argument('--logger', type=list[Logger] | Logger | bool | None)
    try:
        config = parser.parse_object({'callbacks': callbacks, 'logger': logger})
    except ArgumentError as error:
        raise ValueError(str(error).splitlines()[0]) from None
    return parser.instantiate(config)
