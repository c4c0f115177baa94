"""Argument types of the ``glcgeo`` command line: numbers checked as they are parsed.

A value out of range is refused by argparse, which names the flag
(``argument --res: must be > 0, got -10``), before any file is read or written.
Short flags of config keys (``pretrain --lam``) are checked so too, as their
class's signature states (:mod:`glcgeo.arguments`); settings from a ``--config``
file, or given as keys (``--model.lam``), are checked by the training commands'
parser (:mod:`glcgeo.cli.training`) and, with those signatures, by the API.
"""

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any

from ..arguments import KnownCRS, Range

#: A parser of one command-line value.
ArgumentType = Callable[[str], Any]
#: The help of the flags that take sources, as ``glcgeo.sources.expand`` does.
SOURCES = (
    'GeoTIFF files, folders or globs; URLs (http(s)://, s3://, gs://, /vsi...), '
    "folder URLs ending in /, or @list.txt of them; a file per band ('S2/*_{band}"
    ".tif' with --bands B02 B03 ...), STAC items (.json)"
)


class ArgumentParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the flag.

    argparse prints the usage and the error on several lines; glcgeo prints
    ``<prog>: <error> (see <prog> --help)`` on one, and exits with status 2.
    """

    def error(self, message: str) -> Any:  # noqa: D102 (argparse's)
        self.exit(2, f'{self.prog}: {message} (see {self.prog} --help)\n')


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show an option's default only when it says something.

    Options whose default is None (worked out later, e.g. from a checkpoint or a
    config) or False (a switch) describe their default in their own help text.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _number(kind: type, text: str) -> float:
    """Parse *text* as an int or a finite float, as argparse's ``type`` does."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'not {"an integer" if kind is int else "a number"}: {text!r}'
        ) from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f'not a finite number: {text!r}')
    return value


def finite(text: str) -> float:
    """A type for finite numbers (NaN and infinities refused)."""
    return _number(float, text)


def _checked(kind: type, rule: Range, what: str = '') -> ArgumentType:
    """A type for numbers of *kind* in *rule*'s range; *what* names them."""

    def parse(text: str) -> float:
        value = _number(kind, text)
        if not rule.holds(value):
            raise argparse.ArgumentTypeError(f'must be {what}{rule}, got {text}')
        return value

    return parse


def at_least(minimum: float, kind: type = int) -> ArgumentType:
    """A type for numbers >= *minimum*, of *kind* (int or float)."""
    return _checked(kind, Range(low=minimum))


def positive(kind: type = float) -> ArgumentType:
    """A type for numbers > 0, of *kind* (int or float)."""
    return _checked(kind, Range(low=0, low_open=True))


def band(text: str) -> int | str:
    """A type for bands: a 1-based index, or a name (``B04``, ``red``).

    Returns:
        the index as an int (> 0), or the name as given.
    """
    if text.lstrip('+-').isdigit():
        return int(positive(int)(text))
    return text


def fraction(low_open: bool, high_open: bool) -> ArgumentType:
    """A type for fractions in [0, 1]; 0 refused if *low_open*, 1 if *high_open*."""
    return _checked(float, Range(0, 1, low_open, high_open), 'a fraction ')


def devices(text: str) -> int | str:
    """A type for Lightning's devices: a number, a list such as ``0,1``, or auto.

    Returns:
        a number as an int (Lightning reads the text '2' as a device list).
    """
    return int(text) if text.isdigit() else text


def colour(text: str) -> list[int]:
    """A type for ``r,g,b`` colours (0-255 each).

    Returns:
        [r, g, b].
    """
    try:
        rgb = [int(part) for part in text.split(',')]
    except ValueError:
        rgb = []
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise argparse.ArgumentTypeError(f'not an r,g,b colour (0-255): {text!r}')
    return rgb


def crs(text: str) -> str:
    """A type for coordinate reference systems that GDAL knows (EPSG:32631, WKT...).

    Returns:
        the text as given.
    """
    problem = KnownCRS().problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


class OrderedPair(argparse.Action):
    """Store a ``MIN MAX`` pair (``nargs=2``), refusing MIN > MAX."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        """Check and store the pair."""
        assert isinstance(values, list)  # nargs=2: [MIN, MAX], parsed
        low, high = values
        if low > high:
            raise argparse.ArgumentError(self, f'MIN must be <= MAX, got {low} {high}')
        setattr(namespace, self.dest, list(values))
