"""One parser for the training commands' flags and configs (``pretrain``, ``finetune``).

Every setting of a run is a key of its LightningCLI config (``seed_everything``,
``trainer``, ``model``, ``data``) and every key is a flag: ``--trainer.max_steps
100``, ``--model.lam 0.3`` (or ``--model.init_args.lam``, as ``torchgeo fit``
spells it). jsonargparse, LightningCLI's parser, reads the ``--config`` file,
then the flags, and checks each name and value against the class it sets; flags
beat the file wherever they stand. The short flags people use most
(``--max-steps``) are aliases of keys (their ``dest``), read by argparse and
checked as they are parsed, so that ``--help`` answers without importing
Lightning. A setting that the API refuses (:class:`~glcgeo.errors.SettingError`)
is named as it was given: :func:`as_given`.
"""

import argparse
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import GlcgeoError, SettingError
from .types import HelpFormatter, devices, positive

#: A flag that sets a config key (``--trainer.max_steps``, ``--data.bands=[1]``),
#: or a negative number (a value): what argparse leaves to :func:`parse_settings`.
SETTING = re.compile(r'--(seed_everything|(trainer|model|data)\.[\w.]+)\+?(=|$)|-[\d.]')


def alias(parser: Any, flag: str, key: str, help: str, **options: Any) -> None:
    """Add a short flag for a config key (``--max-steps`` for ``trainer.max_steps``).

    Args:
        parser: the command's parser, or a group of it.
        flag: the flag.
        key: the config key it sets.
        help: what it sets, for ``--help`` (the key is added).
        **options: ``add_argument`` options.
    """
    if not {'action', 'choices'} & options.keys():
        options.setdefault('metavar', flag[2:].upper().replace('-', '_'))
    parser.add_argument(
        flag, dest=key, default=argparse.SUPPRESS, help=f'{help} ({key})', **options
    )
    # Each key's short flag, for errors that name it (as_given).
    parser.set_defaults(aliases={**(parser.get_default('aliases') or {}), key: flag})


def add_arguments(parser: argparse.ArgumentParser, epochs: int) -> None:
    """Add what both training commands take: the config, the run, the trainer.

    Args:
        parser: the command's parser.
        epochs: the command's default number of epochs, for the help.
    """
    parser.formatter_class = HelpFormatter
    add = parser.add_argument
    # fmt: off
    add('--config', metavar='YAML', help='LightningCLI config (seed_everything, '
        'trainer, model, data); paths in it are relative to its folder')
    add('--print_config', action='store_true', help='print the settings as a config '
        'and exit; every key of it is also a flag: --trainer.KEY, --model.KEY, '
        '--data.KEY, --seed_everything')
    alias(parser, '--out', 'trainer.default_root_dir', 'output folder')
    alias(parser, '--epochs', 'trainer.max_epochs', f'epochs [{epochs}]',
          type=positive(int))
    alias(parser, '--max-steps', 'trainer.max_steps', 'stop after this many steps',
          type=positive(int))
    alias(parser, '--devices', 'trainer.devices', 'devices per node (processes): a '
          'number, a list or auto [auto]', type=devices)
    alias(parser, '--accelerator', 'trainer.accelerator', 'cpu, gpu or auto [auto]')
    alias(parser, '--strategy', 'trainer.strategy', 'Lightning strategy [ddp over '
          'several devices]')
    alias(parser, '--num-nodes', 'trainer.num_nodes', 'machines [1]',
          type=positive(int))
    alias(parser, '--precision', 'trainer.precision', 'e.g. 32, bf16-mixed, 16-mixed '
          '[32]')
    add('--quiet', action='store_true', help='no progress bar, summary, '
        'information line nor warning')
    # fmt: on


def parse_settings(
    args: argparse.Namespace,
    classes: Mapping[str, type],
    paths: Sequence[str],
    required: Mapping[str, str],
    derived: Sequence[str] = (),
) -> dict[str, Any] | None:
    """The settings of a training run: its config file, then its flags.

    Args:
        args: the command line as argparse read it: short flags by their key,
            ``settings`` the keys given as flags (``--trainer.max_steps 3``).
        classes: the class of the ``model`` and of the ``data`` section.
        paths: keys of path settings (relative to a config's folder).
        required: keys that must be given, and what to say when one is not.
        derived: model keys the run works out from the data when not given
            (left out of ``--print_config``).

    Returns:
        the sections given (the API fills in the rest), or None when
        ``--print_config`` printed them.

    Raises:
        GlcgeoError: naming the config file or the flag, for an unknown key, a
            value of the wrong type, or a missing setting.
    """
    from lightning.pytorch import Trainer
    from lightning.pytorch.cli import LightningArgumentParser

    from ..runs import read_config

    parser = LightningArgumentParser(
        prog=f'glcgeo {args.command}', exit_on_error=False, allow_abbrev=False
    )
    parser.add_argument('--seed_everything', type=int)
    parser.add_lightning_class_args(Trainer, 'trainer')
    for section, cls in classes.items():
        parser.add_class_arguments(cls, section, fail_untyped=False, instantiate=False)
    given, path = None, _config_file(args)
    if path is not None:
        config = read_config(path, classes, (*paths, 'trainer.default_root_dir'))
        given = _parsed(parser, config, path)
        for section, settings in config.items():
            for name, value in settings.items() if isinstance(settings, dict) else ():
                # jsonargparse reads text as YAML; in a file, '3' for 3 is a mistake.
                key = f'{section}.{name}'
                if isinstance(value, str) and not isinstance(given.get(key), str):
                    raise GlcgeoError(_wrong_type(parser, key, value, path), path)
    # The short flags given, by their key (their dest).
    aliases = {k: v for k, v in vars(args).items() if SETTING.match(f'--{k}')}
    given = _parsed(parser, aliases, None, given)
    given = _parsed(parser, [_plain_key(a) for a in args.settings], None, given)
    required = {
        **required,
        'trainer.default_root_dir': 'no output folder: give --out FOLDER or a '
        'config with trainer.default_root_dir',
    }
    for key, message in required.items():
        if given.get(key) is None and not args.print_config:
            raise GlcgeoError(message)
    if args.print_config:
        print(_config_text(parser, given, classes, derived), end='')
        return None
    sections = given.as_dict()
    sections.setdefault('seed_everything', None)
    for name in ('trainer', 'model', 'data'):
        sections[name] = sections.get(name) or {}
    return sections


def as_given(args: argparse.Namespace, error: GlcgeoError) -> str:
    """What glcgeo says of an error of a training command's API.

    A setting the API refuses is named as the user gave it: its flag
    (``argument --batch-size: must be > 0, got 0``), its key given as a flag
    (``argument --data.batch_size: ...``) or its config key (``run.yaml:
    data.batch_size must be > 0, got 0``).

    Args:
        args: the command line (see :func:`parse_settings`).
        error: the error.

    Returns:
        the message.
    """
    if not isinstance(error, SettingError) or error.section is None:
        return str(error)
    key = error.key
    for flag in reversed(args.settings):
        written = re.split(r'\+?=', flag, maxsplit=1)[0]
        name = _plain_key(written)
        if name == f'--{key}' or name.startswith(f'--{key}.'):
            return f'argument {written}: {error.problem}'
    flag = args.aliases.get(key) if hasattr(args, key) else None
    if flag is not None:
        return f'argument {flag}: {error.problem}'
    return str(GlcgeoError(f'{key} {error.problem}', _config_file(args)))


def _plain_key(flag: str) -> str:
    """A key flag as glcgeo spells it: ``--model.lam`` for ``--model.init_args.lam``.

    ``torchgeo fit`` spells the keys of the class sections with ``init_args``.
    """
    return re.sub(r'^--(model|data)\.init_args\.', r'--\1.', flag)


def _config_file(args: argparse.Namespace) -> str | None:
    """The config to read: ``--config``, or a resumed run's ``config.yaml``."""
    out = getattr(args, 'trainer.default_root_dir', None)
    if args.config is not None or not getattr(args, 'resume', False) or out is None:
        return args.config  # --resume without --out: no output folder
    saved = os.path.join(out, 'config.yaml')
    if not os.path.exists(saved):
        raise GlcgeoError('nothing to resume in this folder (no config.yaml)', out)
    return saved


def _parsed(parser: Any, given: Any, path: str | None, namespace: Any = None) -> Any:
    """Parse settings (a mapping) or flags (a list) over *namespace*, checked.

    Raises:
        GlcgeoError: naming the key (of the config file at *path*) or the flag,
            and the problem.
    """
    try:
        if isinstance(given, list):
            namespace = parser.parse_args(
                given, namespace=namespace, defaults=False, _skip_validation=True
            )
            parser.validate(namespace, skip_required=True)
            return namespace
        return parser.parse_object(
            given, namespace=namespace, defaults=False, _skip_required=True
        )
    except (argparse.ArgumentError, TypeError) as error:  # TypeError: validate's
        raise GlcgeoError(_one_line(parser, str(error), given, path), path) from None


def _one_line(parser: Any, error: str, given: Any, path: str | None) -> str:
    """What glcgeo says of jsonargparse's *error* about *given* (settings, flags)."""
    first = error.splitlines()[0]
    if match := re.match(
        r"Group '(\w+)' does not accept option '([\w.]+)'|"
        r"Option '([\w.]+)' is not accepted",
        first,
    ):
        return _unknown(parser, match[3] or f'{match[1]}.{match[2]}')
    if match := re.match(r'unrecognized arguments: --([\w.]+)', first):
        close = _known_keys(parser, match[1])[2]
        return f'{first} (did you mean {" or ".join(close)}?)' if close else first
    match = re.match(r'Parser key "([\w.]+)"', first)
    if not match or f'--{match[1]}' not in parser._option_string_actions:
        return first
    if path is None:  # flags: the value as jsonargparse read it
        value = (re.findall(r'(?:Got|Given) value: (.*)', error) or [''])[-1]
    else:
        section, _, name = match[1].partition('.')
        value = given.get(section)
        value = value.get(name) if isinstance(value, dict) else value
    return _wrong_type(parser, match[1], value, path)


def _unknown(parser: Any, key: str) -> str:
    """An unknown key, with the known ones that come close."""
    name, known, close = _known_keys(parser, key)
    if close:
        return f'unknown key {name} (did you mean {" or ".join(close)}?)'
    return f'unknown key {name} (keys: {", ".join(known)})'


def _known_keys(parser: Any, key: str) -> tuple[str, list[str], list[str]]:
    """The unknown *key* as its section names it, the section's keys, the close ones.

    Returns:
        ``trainer.max_step`` (or ``train`` for an unknown section), the keys of
        its section (or the sections), and up to 3 of them that come close.
    """
    keys = [a.dest.split('.') for a in parser._actions if a.dest != 'help']
    sections = list(dict.fromkeys(k[0] for k in keys))
    section, _, name = key.partition('.')
    if section in sections and name:
        prefix, name = f'{section}.', name.split('.')[0]
        known = list(dict.fromkeys(k[1] for k in keys if k[0] == section and k[1:]))
    else:
        prefix, name, known = '', section, sections
    return prefix + name, known, difflib.get_close_matches(name, known, n=3)


def _wrong_type(parser: Any, key: str, value: Any, path: str | None) -> str:
    """A value of a key's wrong type: in a config (*path*), or given as a flag."""
    action = parser._option_string_actions[f'--{key}']
    expected = _type_name(getattr(action, '_typehint', None) or action.type)
    if path is None:
        return f'argument --{key}: must be {expected}, got {value!r:.40}'
    return f'{key} must be {expected}, got {type(value).__name__} {value!r:.40}'


def _type_name(hint: Any) -> str:
    """A type as a signature writes it: ``list[int] | None``, ``Callback``."""
    if typing.get_origin(hint) is typing.Annotated:  # a rule: the API checks it
        return _type_name(typing.get_args(hint)[0])
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return ' | '.join(map(_type_name, typing.get_args(hint)))
    if isinstance(hint, type) and not typing.get_args(hint):
        return 'None' if hint is type(None) else hint.__name__
    return re.sub(r'\b[A-Za-z_]\w*\.', '', str(hint))  # no module paths


def _config_text(
    parser: Any, given: Any, classes: Mapping[str, type], derived: Sequence[str]
) -> str:
    """The settings as a config: the model's and data's over their defaults.

    Trainer settings are the given ones: the command has its own defaults (a
    log line every step, the run's loggers and checkpoints ...).
    """
    import yaml

    from ..runs import class_path

    full = parser.parse_object(given.as_dict(), _skip_validation=True)
    config = yaml.safe_load(parser.dump(full, skip_validation=True))
    if given.get('seed_everything') is None:
        config.pop('seed_everything', None)
    trainer = given.as_dict().get('trainer', {})
    config['trainer'] = {k: v for k, v in config['trainer'].items() if k in trainer}
    for key in derived:
        if given.get(key) is None:
            config['model'].pop(key.partition('.')[2], None)
    for section, cls in classes.items():
        config[section] = {'class_path': class_path(cls), 'init_args': config[section]}
    return yaml.safe_dump(config, sort_keys=False)
