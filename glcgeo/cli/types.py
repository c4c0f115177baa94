"""Argument types of the ``glcgeo`` command line: numbers checked as they are parsed.

A value out of range is refused by argparse, which names the flag
(``argument --res: must be > 0, got -10``), before any file is read or written.
Settings from a ``--config`` file skip these types; the API checks them again
with its own messages.
"""

import argparse
import math
from collections.abc import Callable, Sequence
from typing import Any

#: A parser of one command-line value.
ArgumentType = Callable[[str], Any]


class ArgumentParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the flag.

    argparse prints the usage and the error on several lines; glcgeo prints
    ``<prog>: <error> (see <prog> --help)`` on one, and exits with status 2.
    """

    def error(self, message: str) -> Any:  # noqa: D102 (argparse's)
        self.exit(2, f'{self.prog}: {message} (see {self.prog} --help)\n')


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
    """A type for finite numbers (NaN and infinities refused).

    Returns:
        the number.
    """
    return _number(float, text)


def at_least(minimum: float, kind: type = int) -> ArgumentType:
    """A type for numbers >= *minimum*.

    Args:
        minimum: the smallest value accepted.
        kind: int or float.

    Returns:
        the type, for ``add_argument(type=...)``.
    """

    def parse(text: str) -> float:
        value = _number(kind, text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f'must be >= {minimum}, got {text}')
        return value

    return parse


def positive(kind: type = float) -> ArgumentType:
    """A type for numbers > 0.

    Args:
        kind: int or float.

    Returns:
        the type, for ``add_argument(type=...)``.
    """

    def parse(text: str) -> float:
        value = _number(kind, text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f'must be > 0, got {text}')
        return value

    return parse


def band(text: str) -> int | str:
    """A type for bands: a 1-based index, or a name (``B04``, ``red``).

    Returns:
        the index as an int (> 0), or the name as given.
    """
    if text.lstrip('+-').isdigit():
        return int(positive(int)(text))
    return text


def fraction(low_open: bool, high_open: bool) -> ArgumentType:
    """A type for fractions between 0 and 1.

    Args:
        low_open: whether 0 is refused.
        high_open: whether 1 is refused.

    Returns:
        the type, for ``add_argument(type=...)``.
    """
    interval = f'{"(" if low_open else "["}0, 1{")" if high_open else "]"}'

    def parse(text: str) -> float:
        value = _number(float, text)
        low = value > 0 if low_open else value >= 0
        high = value < 1 if high_open else value <= 1
        if not (low and high):
            raise argparse.ArgumentTypeError(
                f'must be a fraction in {interval}, got {text}'
            )
        return value

    return parse


def crs(text: str) -> str:
    """A type for coordinate reference systems that GDAL knows (EPSG:32631, WKT...).

    Returns:
        the text as given.
    """
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        CRS.from_user_input(text)
    except CRSError:
        raise argparse.ArgumentTypeError(f'unknown CRS {text!r}') from None
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
