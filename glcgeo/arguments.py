"""Arguments that carry their rule: type hints that the classes and the API check.

A signature says what each argument takes: ``batch_size: PositiveInt`` is an
``int`` for jsonargparse, LightningCLI and type checkers, annotated with the
:class:`Range` it must lie in. :func:`check_arguments` checks values against
these rules, so that one rule refuses a value whether it comes from Python, a
config file or a flag, naming the argument (:class:`~glcgeo.errors.SettingError`);
the command line names it as the user gave it.

Imports neither torch nor rasterio until a value is checked.

.. versionadded:: 0.1
"""

import difflib
import functools
import math
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from .errors import SettingError

__all__ = [
    'CRSName',
    'EncoderName',
    'NonNegativeFloat',
    'NonNegativeInt',
    'PositiveFloat',
    'PositiveInt',
    'Range',
    'Rule',
    'argument_rules',
    'check_arguments',
]


class Rule(Protocol):
    """What an argument's annotation may carry: a check of its values."""

    def problem(self, value: Any) -> str | None:
        """What is wrong with *value* (``must be > 0, got 0``), or None."""


@dataclass(frozen=True)
class Range:
    """Numbers between two bounds, each open or closed, or unbounded.

    A list or tuple (a pair of bounds, three shares) must hold numbers in range.

    Attributes:
        low: the lowest number, or None for no lower bound.
        high: the highest number, or None for no upper bound.
        low_open: *low* itself is out of range.
        high_open: *high* itself is out of range.
        ordered: a sequence is (min, max): its first number is not above its
            second.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    ordered: bool = False

    def __str__(self) -> str:
        """The range as messages write it: ``> 0``, ``>= 1``, ``in [0, 1)``."""
        if self.high is None:
            return f'{">" if self.low_open else ">="} {self.low}'
        if self.low is None:
            return f'{"<" if self.high_open else "<="} {self.high}'
        left, right = '(' if self.low_open else '[', ')' if self.high_open else ']'
        return f'in {left}{self.low}, {self.high}{right}'

    def holds(self, number: float) -> bool:
        """Whether *number* is in range (NaN never is)."""
        if math.isnan(number):
            return False
        if self.low is not None and not (
            number > self.low if self.low_open else number >= self.low
        ):
            return False
        return self.high is None or (
            number < self.high if self.high_open else number <= self.high
        )

    def problem(self, value: Any) -> str | None:
        """``must be > 0, got 0`` (``each must be ...`` for a sequence), or None.

        Values that are no numbers are left to the type checks.
        """
        several = isinstance(value, list | tuple)
        numbers = [
            v
            for v in (value if several else [value])
            if isinstance(v, int | float) and not isinstance(v, bool)
        ]
        if not all(map(self.holds, numbers)):
            return f'{"each " if several else ""}must be {self}, got {value!r:.60}'
        if self.ordered and several and numbers != sorted(numbers):
            return f'must be (min, max) with min <= max, got {value!r:.60}'
        return None


@dataclass(frozen=True)
class KnownCRS:
    """Coordinate reference systems that GDAL knows (``EPSG:32631``, WKT ...)."""

    def problem(self, value: Any) -> str | None:
        """``must be a CRS that GDAL knows ..., got 'foo'``, or None."""
        import rasterio
        from rasterio.crs import CRS
        from rasterio.errors import CRSError

        try:
            with rasterio.Env():  # PROJ's complaint in the error, not on stderr
                CRS.from_user_input(value)
        except CRSError:
            return (
                'must be a CRS that GDAL knows (EPSG:32631, WKT, a PROJ string), '
                f'got {value!r:.60}'
            )
        return None


@dataclass(frozen=True)
class KnownEncoder:
    """Encoder names of segmentation_models_pytorch, ``tu-<timm model>`` included."""

    def problem(self, value: Any) -> str | None:
        """``must be a segmentation_models_pytorch encoder, got ...``, or None."""
        from segmentation_models_pytorch.encoders import get_encoder_names

        names = get_encoder_names()
        if not isinstance(value, str) or value in names:
            return None
        if value.startswith('tu-'):
            import timm

            if timm.is_model(value[3:]):
                return None
            return f'must name a timm model after tu-, got {value!r:.60}'
        close = difflib.get_close_matches(value, names, n=3)
        hint = (
            f'did you mean {" or ".join(close)}?'
            if close
            else "list them with: python -c 'import segmentation_models_pytorch as "
            "smp; print(smp.encoders.get_encoder_names())', or give tu-<timm model>"
        )
        return (
            f'must be a segmentation_models_pytorch encoder, got {value!r:.60} ({hint})'
        )


#: Integers > 0 (batch sizes, patch sizes, lengths).
PositiveInt = Annotated[int, Range(low=0, low_open=True)]
#: Integers >= 0 (worker counts, seeds).
NonNegativeInt = Annotated[int, Range(low=0)]
#: Numbers > 0 (learning rates, pixel sizes).
PositiveFloat = Annotated[float, Range(low=0, low_open=True)]
#: Numbers >= 0 (weight decays).
NonNegativeFloat = Annotated[float, Range(low=0)]
#: A CRS as ``rasterio.crs.CRS.from_user_input`` reads it.
CRSName = Annotated[str, KnownCRS()]
#: An encoder of segmentation_models_pytorch.
EncoderName = Annotated[str, KnownEncoder()]


def _rules_in(hint: Any) -> Iterator[Rule]:
    """The rules an annotation carries, inside unions (``PositiveInt | None``)."""
    if typing.get_origin(hint) is Annotated:
        yield from (m for m in hint.__metadata__ if hasattr(m, 'problem'))
    elif typing.get_origin(hint) in (typing.Union, types.UnionType):
        for argument in typing.get_args(hint):
            yield from _rules_in(argument)


@functools.cache
def argument_rules(function: Callable[..., Any]) -> dict[str, list[Rule]]:
    """The rules of each argument of *function* that has some, by name."""
    hints = typing.get_type_hints(function, include_extras=True)
    rules = {name: list(_rules_in(hint)) for name, hint in hints.items()}
    return {name: found for name, found in rules.items() if found}


def check_arguments(
    function: Callable[..., Any],
    values: Mapping[str, Any],
    section: str | None = None,
) -> None:
    """Refuse values that break the rules of *function*'s annotations.

    Args:
        function: a function or ``__init__`` whose arguments carry rules.
        values: arguments by name (e.g. ``locals()`` at the start of
            ``__init__``, or a config section); None and unknown names pass.
        section: the config section *values* come from, named by the error.

    Raises:
        SettingError: naming the first argument that breaks its rule.
    """
    for name, rules in argument_rules(function).items():
        value = values.get(name)
        for rule in rules if value is not None else ():
            problem = rule.problem(value)
            if problem is not None:
                raise SettingError(name, problem, section)
