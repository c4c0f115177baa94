"""What the ``glcgeo`` commands' flags share: one-line errors, checked values.

A value out of range is refused as the flags are parsed, naming the flag
(``argument --res: must be > 0, got -10``), before any file is read or written.
Flags that several commands take are defined once, in :data:`SHARED`, so they
are spelled, typed and explained alike everywhere (bands are 1-based indexes or
names in every command).
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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show an option's default only when it says something.

    Options whose default is None (worked out later, e.g. from a checkpoint or a
    config), suppressed (a config setting) or False (a switch) describe their
    default in their own help text.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, argparse.SUPPRESS):
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


def _checked(kind: type, accept: Callable[[float], bool], rule: str) -> ArgumentType:
    """A type for numbers of *kind* that *accept* takes; *rule* says which."""

    def parse(text: str) -> float:
        value = _number(kind, text)
        if not accept(value):
            raise argparse.ArgumentTypeError(f'{rule}, got {text}')
        return value

    return parse


def at_least(minimum: float, kind: type = int) -> ArgumentType:
    """A type for numbers >= *minimum*, of *kind* (int or float)."""
    return _checked(kind, lambda value: value >= minimum, f'must be >= {minimum}')


def positive(kind: type = float) -> ArgumentType:
    """A type for numbers > 0, of *kind* (int or float)."""
    return _checked(kind, lambda value: value > 0, 'must be > 0')


def fraction(low_open: bool, high_open: bool) -> ArgumentType:
    """A type for fractions in [0, 1]; 0 refused if *low_open*, 1 if *high_open*."""
    interval = f'{"(" if low_open else "["}0, 1{")" if high_open else "]"}'
    return _checked(
        float,
        lambda v: (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1),
        f'must be a fraction in {interval}',
    )


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


def band(text: str) -> int | str:
    """A type for bands: a 1-based index, or a name (a file's band description).

    Returns:
        the index as an int, or the name.
    """
    if not text.isdigit():
        return text
    if int(text) < 1:
        raise argparse.ArgumentTypeError(f'band indexes start at 1, got {text}')
    return int(text)


def devices(text: str) -> int | str:
    """A type for Lightning's devices: a number, a list such as ``0,1``, or auto.

    Returns:
        a number as an int, anything else as given.
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


#: Sources of rasters, as ``glcgeo.sources.expand`` takes them.
SOURCES = (
    'GeoTIFF files, folders or globs; URLs (http(s)://, s3://, gs://, /vsi...), '
    "folder URLs ending in /, or @list.txt of them; a file per band ('S2/*_{band}.tif' "
    'with --bands B02 B03 ...), STAC items (.json)'
)

#: Flags that several commands take: their ``add_argument`` options. A command
#: gives its own help where the default differs (``add(..., help=...)``).
SHARED: dict[str, dict[str, Any]] = {
    '--bands': {
        'nargs': '+',
        'type': band,
        'metavar': 'BAND',
        'help': 'bands to read: 1-based indexes or names [all]',
    },
    '--crs': {
        'type': crs,
        'help': 'CRS to reproject every file to [each file read in its own]',
    },
    '--res': {
        'type': positive(),
        'help': "pixel size in CRS units, on one grid [each file's own]",
    },
    '--nodata': {'type': float, 'help': "nodata value overriding the files' own"},
    '--stats': {
        'metavar': 'JSON',
        'help': 'band statistics JSON, e.g. from glcgeo stats [computed]',
    },
    '--batch-size': {'type': positive(int), 'help': 'samples per batch'},
    '--num-workers': {'type': at_least(0), 'help': 'data loader workers'},
    '--seed': {'type': at_least(0), 'help': 'random seed [0]'},
    '--devices': {
        'type': devices,
        'help': 'devices per node (processes): a number, a list or auto [auto]',
    },
    '--num-nodes': {'type': at_least(1), 'help': 'machines [1]'},
    '--accelerator': {'help': 'cpu, gpu or auto [auto]'},
    '--min-area': {
        'metavar': 'PIXELS',
        'type': positive(int),
        'default': 1,
        'help': 'leave out polygons of fewer pixels',
    },
    '--overwrite': {'action': 'store_true', 'help': 'replace existing outputs'},
    '--quiet': {
        'action': 'store_true',
        'help': 'no progress bar, summary, information line nor warning',
    },
}


def add(parser: argparse.ArgumentParser, flag: str, **options: Any) -> None:
    """Add a flag to a command: a flag of :data:`SHARED` with its options.

    Args:
        parser: the command's parser (or an argument group of it).
        flag: the flag, e.g. ``'--bands'``.
        **options: ``add_argument`` options (over the shared ones).
    """
    parser.add_argument(flag, **{**SHARED.get(flag, {}), **options})
