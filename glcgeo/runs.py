"""Training runs: what ``glcgeo pretrain`` and ``glcgeo finetune`` share.

A run keeps everything under one output folder (``--out``), a :class:`RunFolder`:
Lightning's ``checkpoints/`` and ``logs/`` (CSV and TensorBoard), the command's
own files, and ``config.yaml``, the run's resolved settings as a LightningCLI
config (:meth:`RunFolder.write_config`), which ``torchgeo fit --config`` and the
command's ``--config`` (:func:`load_config`) both read.
"""

import collections.abc
import difflib
import inspect
import os
import shutil
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from segmentation_models_pytorch.base import SegmentationModel

from .errors import GlcgeoError
from .outputs import OutputLock, atomic_write, check_output_folder, no_room_reported

__all__ = ['RunFolder', 'RunTrainer', 'check_patch_size', 'load_config']


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


#: The sections of a config file glcgeo reads (LightningCLI's names).
CONFIG_SECTIONS = ('seed_everything', 'trainer', 'model', 'data')


def load_config(path: str, data_class: type, model_class: type) -> dict[str, Any]:
    """Read the ``data``, ``model`` and ``trainer`` sections of a LightningCLI YAML.

    Both ``{'init_args': {...}}`` sections (``torchgeo fit`` style) and plain
    mappings are accepted. Every setting is checked against the arguments of the
    class it is for (names, and the types a YAML value can have), so a mistake
    is one line naming the file and the key. The trainer's ``default_root_dir``,
    ``logger`` and ``callbacks`` are left out: glcgeo writes its own under
    ``--out``.

    Args:
        path: the YAML file.
        data_class: the data module the ``data`` section is for.
        model_class: the task the ``model`` section is for.

    Returns:
        a mapping with keys ``data``, ``model``, ``trainer`` and ``seed_everything``.

    Raises:
        GlcgeoError: naming the file, if it is missing or not a YAML mapping, or
            a key is unknown or its value of the wrong type.
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
    _check_keys(config, CONFIG_SECTIONS, '', path)
    seed = config.get('seed_everything')
    _check_value(seed, int | None, 'seed_everything', path)
    sections: dict[str, Any] = {'seed_everything': seed}
    for name, cls in (('data', data_class), ('model', model_class)):
        section = _section(config, name, path)
        if 'init_args' in section:
            _check_keys(section, ('class_path', 'init_args'), f'{name}.', path)
            section = _section(section, 'init_args', path, f'{name}.')
        section.pop('class_path', None)
        _check_arguments(section, cls, f'{name}.', path)
        sections[name] = section
    trainer = _section(config, 'trainer', path)
    # glcgeo's commands write logs and checkpoints under their --out folder: a
    # config's own places are for `torchgeo fit`.
    for key in ('default_root_dir', 'logger', 'callbacks'):
        trainer.pop(key, None)
    _check_arguments(trainer, Trainer, 'trainer.', path)
    sections['trainer'] = trainer
    return sections


def _section(
    config: Mapping[str, Any], name: str, path: str, prefix: str = ''
) -> dict[str, Any]:
    """A section of a config, a mapping (empty if absent)."""
    section = config.get(name)
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise GlcgeoError(
            f'{prefix}{name} must be a mapping of settings, got '
            f'{type(section).__name__} {section!r:.40}',
            path,
        )
    return dict(section)


def _check_keys(
    section: Mapping[str, Any], known: Sequence[str], prefix: str, path: str
) -> None:
    """Refuse a key of a config section that is not among *known*."""
    for key in section:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=3)
            hint = (
                f'did you mean {" or ".join(close)}?'
                if close
                else f'keys: {", ".join(known)}'
            )
            raise GlcgeoError(f'unknown key {prefix}{key} ({hint})', path)


def _check_arguments(
    section: Mapping[str, Any], cls: type, prefix: str, path: str
) -> None:
    """Check a config section's settings against the arguments of *cls*."""
    parameters = inspect.signature(cls.__init__).parameters  # type: ignore[misc]
    names = [
        name
        for name, parameter in parameters.items()
        if name != 'self'
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ]
    _check_keys(section, names, prefix, path)
    hints = typing.get_type_hints(cls.__init__)  # type: ignore[misc]
    for key, value in section.items():
        _check_value(value, hints.get(key, Any), f'{prefix}{key}', path)


def _check_value(value: Any, annotation: Any, key: str, path: str) -> None:
    """Refuse a setting whose value is not of its argument's type."""
    if not _matches(value, annotation):
        name = str(annotation).replace('typing.', '').replace('NoneType', 'None')
        if isinstance(annotation, type):
            name = annotation.__name__
        raise GlcgeoError(
            f'{key} must be {name}, got {type(value).__name__} {value!r:.40}', path
        )


def _matches(value: Any, annotation: Any) -> bool:
    """Whether a YAML value can be an argument of type *annotation*.

    YAML gives None, bool, int, float, str, lists and mappings: those are
    checked (a list stands for a tuple); other classes are the API's to check.
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if annotation is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, collections.abc.Sequence, collections.abc.Iterable):
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(value) == len(args) and all(
            _matches(v, a) for v, a in zip(value, args, strict=True)
        )
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict) and all(
            _matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items()
        )
    if annotation in (list, tuple, dict):
        return isinstance(value, annotation)
    return True


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
        refused, temporary files of dead runs are removed); a folder the run
        created and left empty is removed when the block ends. A write that
        finds no room in the block is one line naming the file or the folder.

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
    ) -> RunTrainer:
        """A Lightning ``Trainer`` that logs under the folder, creating nothing yet.

        Logs go to ``logs/csv`` (and ``logs/tensorboard``), with a step every
        step; a progress bar and a model summary unless *quiet*.

        Args:
            settings: ``Trainer`` arguments; they override the above.
            callbacks: the command's callbacks (checkpoints).
            quiet: no progress bar nor model summary.
            tensorboard: log to TensorBoard too.

        Returns:
            the trainer.

        Raises:
            GlcgeoError: if Lightning refuses a setting (``devices=0`` ...).
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
        try:
            return RunTrainer(
                default_root_dir=self.path,
                logger=loggers,
                callbacks=callbacks,
                **arguments,
            )
        except (MisconfigurationException, TypeError, ValueError) as error:
            raise GlcgeoError(f'bad trainer setting: {error}') from None
