"""One parser for the training commands' flags and configs (``pretrain``, ``finetune``).

Every setting of a run is a key of its LightningCLI config (``seed_everything``,
``trainer``, ``model``, ``data``) and every key is a flag: ``--trainer.max_steps
100``, ``--model.lam 0.3`` (or ``--model.init_args.lam``, as ``torchgeo fit``
spells it). jsonargparse, LightningCLI's parser, reads the ``--config`` file, then
the flags, and checks each name and value against the class it configures; flags
beat the file wherever they stand. The short flags people use most
(``--max-steps``) are aliases of keys, read by argparse and checked as they are
parsed, so that ``--help`` answers without importing Lightning. jsonargparse's
errors become one line naming the file or the flag, and the key.
"""

import argparse
import difflib
import importlib
import inspect
import os
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import GlcgeoError
from .flags import SHARED, HelpFormatter, positive

#: The sections of a LightningCLI config.
SECTIONS = ('seed_everything', 'trainer', 'model', 'data')
#: A flag that sets a config key: ``--trainer.max_steps``, ``--data.bands=[1]``.
SETTING = re.compile(r'--(seed_everything|(trainer|model|data)\.[\w.]+)\+?(=|$)')


@dataclass(frozen=True)
class Alias:
    """A short flag for config keys (``--max-steps`` for ``trainer.max_steps``).

    Attributes:
        flag: the flag.
        keys: the keys it sets to its value.
        options: its ``add_argument`` options; ``group`` names a group of
            mutually exclusive flags.
        clears: keys it sets to None (a label budget replaces the other kind).
    """

    flag: str
    keys: tuple[str, ...]
    options: Mapping[str, Any]
    clears: tuple[str, ...] = ()


def alias(
    flag: str,
    keys: str | tuple[str, ...],
    help: str | None = None,
    clears: tuple[str, ...] = (),
    **options: Any,
) -> Alias:
    """An :class:`Alias`, with the options of :data:`~glcgeo.cli.flags.SHARED`'s flag.

    Returns:
        the alias.
    """
    keys = (keys,) if isinstance(keys, str) else keys
    help = help or SHARED.get(flag, {}).get('help', '')
    options = {**SHARED.get(flag, {}), **options, 'help': f'{help} ({", ".join(keys)})'}
    return Alias(flag, keys, options, clears)


#: The run's folder, which both commands take.
OUT = alias('--out', 'trainer.default_root_dir', 'output folder', metavar='FOLDER')
OUT_REQUIRED = {
    'trainer.default_root_dir': 'no output folder: give --out FOLDER or a config '
    'with trainer.default_root_dir'
}
#: Trainer settings that both commands take as short flags.
TRAINER_ALIASES = (
    alias('--max-steps', 'trainer.max_steps', 'stop after this many steps',
          type=positive(int)),
    alias('--devices', 'trainer.devices'),
    alias('--accelerator', 'trainer.accelerator'),
    alias('--strategy', 'trainer.strategy', 'Lightning strategy [ddp over several '
          'devices]'),
    alias('--num-nodes', 'trainer.num_nodes'),
    alias('--precision', 'trainer.precision', 'e.g. 32, bf16-mixed, 16-mixed [32]'),
)  # fmt: skip


@dataclass(frozen=True)
class Training:
    """A training command: the classes it configures and its short flags.

    Attributes:
        name: the sub-command.
        api: the module of the function it calls, whose ``PATHS`` names its
            path settings.
        model: import path of the task.
        data: import path of the data module.
        aliases: its short flags.
        required: what to say when a key that must be given is not.
        derived: model keys the run works out from the data when not given
            (left out of ``--print_config``).
    """

    name: str
    api: str
    model: str
    data: str
    aliases: Sequence[Alias]
    required: Mapping[str, str]
    derived: Sequence[str] = ()


def add_arguments(parser: argparse.ArgumentParser, command: Training) -> None:
    """Add ``--config``, ``--print_config`` and the aliases to a command's parser.

    Args:
        parser: the command's parser.
        command: the command.
    """
    parser.formatter_class = HelpFormatter
    add = parser.add_argument
    add('--config', metavar='YAML', help='LightningCLI config (seed_everything, '
        'trainer, model, data); paths in it are relative to its folder')  # fmt: skip
    add('--print_config', action='store_true', help='print the settings as a config '
        'and exit; every key of it is also a flag: --trainer.KEY, --model.KEY, '
        '--data.KEY, --seed_everything')  # fmt: skip
    groups: dict[str, Any] = {}
    for short in command.aliases:
        options = dict(short.options)
        where: Any = parser
        if 'group' in options:
            where = (
                groups.get(options['group']) or parser.add_mutually_exclusive_group()
            )
            groups[options.pop('group')] = where
        if 'action' not in options:
            options.setdefault('metavar', short.flag[2:].upper().replace('-', '_'))
        where.add_argument(short.flag, dest=short.flag, default=argparse.SUPPRESS,
                           **options)  # fmt: skip
    parser.set_defaults(training=command)


def check_settings(parser: argparse.ArgumentParser, extras: Sequence[str]) -> None:
    """Refuse the flags argparse left that are no config keys (one line).

    Args:
        parser: the ``glcgeo`` parser.
        extras: what argparse left of the command line.
    """
    unknown = [a for a in extras if a.startswith('-') and not SETTING.match(a)]
    if [a for a in unknown if not re.fullmatch(r'-[\d.e+-]+', a)]:  # -1 is a value
        parser.error(f'unrecognized arguments: {" ".join(unknown)}')


@dataclass
class Settings:
    """A run's settings given by the config and the flags, by section."""

    seed_everything: int | None
    trainer: dict[str, Any]
    model: dict[str, Any]
    data: dict[str, Any]


def parse_settings(args: argparse.Namespace, extras: Sequence[str]) -> Settings | None:
    """The settings of a training command: its config file, then its flags.

    Args:
        args: the command line as argparse read it: ``training`` names the
            command, the aliases given are attributes named by their flag.
        extras: config keys given as flags (``--trainer.max_steps 3``).

    Returns:
        the settings given (the API fills in the rest), or None when
        ``--print_config`` printed them.

    Raises:
        GlcgeoError: naming the config file or the flag, for an unknown key, a
            value of the wrong type, or a missing setting.
    """
    from lightning.pytorch import Trainer

    from ..runs import read_config

    command: Training = args.training
    classes = {'trainer': Trainer, 'model': _import(command.model),
               'data': _import(command.data)}  # fmt: skip
    parser = _parser(command.name, classes)
    given = None
    config_file = _config_file(args)
    if config_file is not None:
        paths = (*_import(f'{command.api}.PATHS'), 'trainer.default_root_dir')
        config = read_config(config_file, classes, paths)
        given = _parsed(
            lambda: parser.parse_object(config, defaults=False, _skip_required=True),
            _Source(command, classes, config_file, config),
        )
        _refuse_quoted_values(config, given, classes, config_file)
    aliases = _alias_settings(args, command)
    given = _parsed(
        lambda: parser.parse_object(
            aliases, namespace=given, defaults=False, _skip_required=True
        ),
        _Source(command, classes, None, aliases),
    )
    # torchgeo fit's spelling of the class sections' keys.
    extras = [re.sub(r'^--(model|data)\.init_args\.', r'--\1.', a) for a in extras]
    source = _Source(command, classes, None, extras)
    given = _parsed(
        lambda: parser.parse_args(
            extras, namespace=given, defaults=False, _skip_validation=True
        ),
        source,
    )
    _parsed(lambda: parser.validate(given, skip_required=True), source)
    for key, message in {**command.required, **OUT_REQUIRED}.items():
        if given.get(key) is None and not args.print_config:
            raise GlcgeoError(message)
    if args.print_config:
        print(_config_text(parser, given, command, classes), end='')
        return None
    sections = given.as_dict()
    return Settings(
        sections.get('seed_everything'),
        *(dict(sections.get(name) or {}) for name in SECTIONS[1:]),
    )


def _import(path: str) -> Any:
    """The object at an import path (``glcgeo.tasks.GLCNetTask``)."""
    module, _, name = path.rpartition('.')
    return getattr(importlib.import_module(module), name)


def _parser(name: str, classes: Mapping[str, type]) -> Any:
    """LightningCLI's parser of a run's sections."""
    from lightning.pytorch.cli import LightningArgumentParser

    parser = LightningArgumentParser(
        prog=f'glcgeo {name}', exit_on_error=False, allow_abbrev=False
    )
    parser.add_argument('--seed_everything', type=int)
    parser.add_lightning_class_args(classes['trainer'], 'trainer')
    for section in ('model', 'data'):
        parser.add_class_arguments(
            classes[section], section, fail_untyped=False, instantiate=False
        )
    return parser


def _config_file(args: argparse.Namespace) -> str | None:
    """The config to read: ``--config``, or a resumed run's ``config.yaml``."""
    if args.config is not None or not getattr(args, 'resume', False):
        return args.config
    out = getattr(args, '--out', None)
    if out is None:
        raise GlcgeoError('--resume continues the run in --out: give --out FOLDER')
    saved = os.path.join(out, 'config.yaml')
    if not os.path.exists(saved):
        raise GlcgeoError('nothing to resume in this folder (no config.yaml)', out)
    return saved


def _alias_settings(args: argparse.Namespace, command: Training) -> dict[str, Any]:
    """The settings of the aliases given, as a config."""
    config: dict[str, Any] = {}
    for short in command.aliases:
        if short.flag in vars(args):
            value = getattr(args, short.flag)
            for key in (*short.keys, *short.clears):
                section, _, name = key.partition('.')
                setting = value if key in short.keys else None
                if name:
                    config.setdefault(section, {})[name] = setting
                else:
                    config[section] = setting
    return config


@dataclass(frozen=True)
class _Source:
    """Where settings came from, to name in errors: a config file, or flags."""

    command: Training
    classes: Mapping[str, type]
    path: str | None
    given: Mapping[str, Any] | Sequence[str]

    def value(self, key: str) -> Any:
        """The value given for a key."""
        section, _, name = key.partition('.')
        if isinstance(self.given, Mapping):
            value = self.given.get(section)
            return value.get(name) if name and isinstance(value, dict) else value
        for i, arg in enumerate(self.given):
            flag, equals, value = arg.partition('=')
            if flag == f'--{key}':
                return value if equals else (self.given[i + 1 : i + 2] or [''])[0]
        return None


def _parsed(parse: Any, source: _Source) -> Any:
    """Run a jsonargparse parse; its error as one line naming the source."""
    try:
        return parse()
    except (argparse.ArgumentError, TypeError) as error:  # TypeError: validate's
        raise GlcgeoError(_problem(str(error), source), source.path) from None


def _problem(error: str, source: _Source) -> str:
    """The key and the problem of jsonargparse's error, in one line."""
    first = error.splitlines()[0]
    if match := re.match(r"Group '([\w.]+)' does not accept option '([\w.]+)'", first):
        return _unknown(f'{match[1]}.{match[2]}', source.classes)
    if match := re.match(r"Option '([\w.]+)' is not accepted", first):
        return _unknown(match[1], source.classes)
    if match := re.match(r'the following arguments are required: ([\w.]+)', first):
        return source.command.required.get(match[1], first)
    if match := re.match(r'Parser key "([\w.]+)"', first):
        key, value = match[1], source.value(match[1])
        typename = _type_name(key, source.classes)
        if '.' in typename:  # a class (callbacks, loggers): jsonargparse's reason
            return f'{key}: {_reason(error)}'
        if source.path is None:
            return f'argument --{key}: must be {typename}, got {value!r:.40}'
        return f'{key} must be {typename}, got {type(value).__name__} {value!r:.40}'
    return first


def _unknown(key: str, classes: Mapping[str, type]) -> str:
    """An unknown key, with the known ones that come close."""
    section, _, rest = key.partition('.')
    if section in classes and rest:
        name, prefix = rest.split('.')[0], f'{section}.'
        parameters = inspect.signature(classes[section]).parameters
        known = [p for p in parameters if p not in ('args', 'kwargs')]
    else:
        name, prefix, known = section, '', list(SECTIONS)
    close = difflib.get_close_matches(name, known, n=3)
    hint = (
        f'did you mean {" or ".join(close)}?' if close else f'keys: {", ".join(known)}'
    )
    return f'unknown key {prefix}{name} ({hint})'


def _type_name(key: str, classes: Mapping[str, type]) -> str:
    """The type of a setting, as its class's signature writes it."""
    section, _, name = key.partition('.')
    try:
        init = classes[section].__init__  # type: ignore[misc]
        hint = typing.get_type_hints(init).get(name, Any)
    except (KeyError, NameError, TypeError):
        hint = int if section == 'seed_everything' else Any
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace('typing.', '').replace('NoneType', 'None')


def _reason(error: str) -> str:
    """The innermost reason in jsonargparse's error about a class setting."""
    skipped = ('Does not validate', 'Subtypes', 'Errors', 'Given value', 'Problem',
               'Expected a <class', 'Not a valid', 'Subclass types', 'a ')  # fmt: skip
    lines = [line.strip().removeprefix('- ') for line in error.splitlines()[1:]]
    return next(
        (line for line in lines if line and not line.startswith(skipped)), error
    )


def _refuse_quoted_values(
    config: Mapping[str, Any], given: Any, classes: Mapping[str, type], path: str
) -> None:
    """Refuse text where a number or a switch goes (``max_steps: '3'``).

    jsonargparse reads text as YAML, as it reads flags; in a file, a quoted
    number is a mistake that the YAML types tell.
    """
    for section, settings in config.items():
        for name, value in settings.items() if isinstance(settings, dict) else ():
            key = f'{section}.{name}'
            if isinstance(value, str) and not isinstance(given.get(key), str):
                typename = _type_name(key, classes)
                raise GlcgeoError(
                    f'{key} must be {typename}, got str {value!r:.40}', path
                )


def _config_text(
    parser: Any, given: Any, command: Training, classes: Mapping[str, type]
) -> str:
    """The settings as a config: the model's and data's over their defaults.

    Trainer settings are the given ones: the command has its own defaults (a
    log line every step, the run's loggers and checkpoints ...).
    """
    import yaml

    full = parser.parse_object(given.as_dict(), _skip_validation=True)
    config = yaml.safe_load(parser.dump(full, skip_validation=True))
    config.pop('print_config', None)
    if given.get('seed_everything') is None:
        config.pop('seed_everything', None)
    trainer = given.as_dict().get('trainer', {})
    config['trainer'] = {k: v for k, v in config['trainer'].items() if k in trainer}
    for key in command.derived:
        if given.get(key) is None:
            config['model'].pop(key.partition('.')[2], None)
    for section in ('model', 'data'):
        cls = classes[section]
        class_path = f'{cls.__module__.rpartition(".")[0]}.{cls.__name__}'
        config[section] = {'class_path': class_path, 'init_args': config[section]}
    return yaml.safe_dump(config, sort_keys=False)
