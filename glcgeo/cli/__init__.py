"""The ``glcgeo`` command line: a thin layer that parses, validates and calls the API.

Each sub-command lives in its own module of this package and exposes
``add_parser(subparsers)`` (which registers it and sets ``func``) so commands stay
independent of each other. Command modules import torch, TorchGeo, Lightning and
rasterio inside the function that runs the command, never at the top: ``glcgeo
--help`` and every ``--help`` answer at once.
"""

import argparse
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from typing import TextIO, cast

from .. import __version__
from ..errors import GlcgeoError
from .interrupts import Interrupts
from .training import SETTING, as_given
from .types import ArgumentParser

#: Sub-command modules, in the order ``glcgeo --help`` lists them.
COMMANDS = ('stats', 'pretrain', 'export', 'finetune', 'predict', 'embed', 'vectorize')


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every sub-command registered.

    Returns:
        the argument parser of the ``glcgeo`` command.

    """
    parser = ArgumentParser(
        prog='glcgeo',
        description='GLCNet self-supervised pretraining on georeferenced mosaics.',
    )
    parser.add_argument('--version', action='version', version=f'glcgeo {__version__}')
    subparsers = parser.add_subparsers(dest='command', required=True)
    for name in COMMANDS:
        module = importlib.import_module(f'{__name__}.{name}')
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``glcgeo`` command line.

    Args:
        argv: arguments without the program name (defaults to ``sys.argv[1:]``).

    Returns:
        the exit status: 0 on success, 2 for bad input, 130 when interrupted.

    """
    with Interrupts(watch=argv is None) as interrupts:
        try:
            status = _run(argv)
            interrupts.raise_if_swallowed()
            return status
        except BaseException as error:
            if not interrupts.caused(error):
                raise
            print('glcgeo: interrupted', file=sys.stderr)
            if argv is None:
                # The command line: end now. An interrupt inside torch's import
                # can leave the interpreter's shutdown waiting forever on its
                # half-made state; everything of ours was cleaned up while
                # unwinding.
                sys.stderr.flush()
                os._exit(130)
            return 130


def _run(argv: Sequence[str] | None) -> int:
    """Parse the command line and run the command (see :func:`main`)."""
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        # The training commands (those with --print_config) read config keys
        # given as flags, --trainer.max_steps 3 (glcgeo.cli.training).
        args.settings, unknown = extras, extras
        if hasattr(args, 'print_config'):
            unknown = [a for a in extras if a.startswith('-') and not SETTING.match(a)]
        if unknown:  # said by the command, pointing to its own --help
            (commands,) = [a for a in parser._actions if a.dest == 'command']
            choices = cast(dict[str, argparse.ArgumentParser], commands.choices)
            command = choices[args.command]
            command.error(f'unrecognized arguments: {" ".join(unknown)}')
    except SystemExit as exit:  # --help, --version, or a bad flag (one line)
        return int(exit.code or 0)
    with warnings.catch_warnings():
        # A warning is one line, as an error is.
        warnings.showwarning = _show_warning
        # Lightning 2.6 on torch 2.14 warns about its own use of a torch API.
        warnings.filterwarnings('ignore', message=r'`isinstance\(treespec, LeafSpec\)`')
        if getattr(args, 'quiet', False):
            # --quiet is quiet: no warnings (rasterio's, Lightning's) nor
            # Lightning's information lines (devices, tips); errors still show.
            warnings.simplefilter('ignore')
            # Globally, not per logger: Lightning, imported later by the
            # command, sets its own loggers' level when it loads.
            logging.disable(logging.WARNING)
        try:
            args.func(args)
        except GlcgeoError as error:
            print(f'glcgeo: {as_given(args, error)}', file=sys.stderr)
            return 2
        finally:
            logging.disable(logging.NOTSET)
    return 0


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Print a warning as ``glcgeo: warning: <message>``, without its source line."""
    print(f'glcgeo: warning: {message}', file=file or sys.stderr)


if __name__ == '__main__':
    sys.exit(main())
