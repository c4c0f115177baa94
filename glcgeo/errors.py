"""Errors that reach users as one clear line."""

import os

#: Sources glcgeo made for what a user named (a band stack's VRT in GDAL's
#: memory, :mod:`glcgeo.bands`) -> that name, which messages show instead.
_GIVEN_NAMES: dict[str, str] = {}


def name_as_given(source: str, name: str) -> None:
    """Record the name a user gave to a source glcgeo made for it.

    Args:
        source: the source made (e.g. ``/vsimem/glcgeo/.../scene.vrt``).
        name: what the user named (e.g. the pattern ``S2/T33UXP_{band}.tif``).
    """
    _GIVEN_NAMES[source] = name


def given_name(source: str | os.PathLike[str]) -> str:
    """A source as the user named it: see :func:`name_as_given`; else itself."""
    text = os.fspath(source)
    return _GIVEN_NAMES.get(text, text)


class GlcgeoError(ValueError):
    """A problem with user input, reported as one line that names the file.

    The command line prints ``glcgeo: <message>`` and exits with status 2; the Python
    API raises it unchanged so scripts can catch it.
    """

    def __init__(
        self, message: str, path: str | os.PathLike[str] | None = None
    ) -> None:
        """Initialize a new GlcgeoError.

        Args:
            message: what is wrong, in one line.
            path: the file the problem is in, prefixed to the message when given
                (as the user named it: :func:`given_name`).

        """
        # torch re-raises a DataLoader worker's error as GlcgeoError(<the worker's
        # traceback>), whose last line holds the message: keep that line.
        name = type(self).__name__
        if path is None and message.startswith(f'Caught {name} in DataLoader'):
            message = message.rstrip().rsplit(f'{name}: ', 1)[-1]
        self.path = None if path is None else given_name(path)
        super().__init__(f'{self.path}: {message}' if self.path else message)


class SettingError(GlcgeoError):
    """A setting out of range or refused, as one line naming it.

    Raised by the classes and the API for an argument that breaks its rule
    (:mod:`glcgeo.arguments`) and for a ``Trainer`` setting Lightning refuses;
    the command line names the flag or config key the user gave it as.

    Attributes:
        name: the setting, as an argument name (``batch_size``).
        problem: what is wrong with it (``must be > 0, got 0``).
        section: the config section it belongs to (``data``, ``model``,
            ``trainer``), or None for an argument of a class.

    .. versionadded:: 0.1
    """

    def __init__(self, name: str, problem: str, section: str | None = None) -> None:
        """Initialize a new SettingError.

        Args:
            name: the setting.
            problem: what is wrong with it.
            section: its config section, if any (prefixed to *name*).
        """
        self.name = name
        self.problem = problem
        self.section = section
        super().__init__(f'{self.key} {problem}')

    @property
    def key(self) -> str:
        """The setting with its section: ``data.batch_size``, or ``batch_size``."""
        return f'{self.section}.{self.name}' if self.section else self.name


class NoRoomError(GlcgeoError):
    """An output that could not be written for lack of room, as one line naming it.

    The device is full, a disk quota is used up, or the output reached the
    process's file size limit (``ulimit -f``).

    Attributes:
        reason: which of these, in words.
        lasting: whether the device or quota is full, so that any further output
            there fails too (a file size limit concerns one file).

    .. versionadded:: 0.1
    """

    def __init__(
        self, reason: str, path: str | os.PathLike[str], lasting: bool
    ) -> None:
        """Initialize a new NoRoomError.

        Args:
            reason: what ran out, in words.
            path: the output that could not be written.
            lasting: whether the device or quota is full.
        """
        self.reason = reason
        self.lasting = lasting
        super().__init__(f'cannot write it: {reason}', path)


def check_band_count(
    data: str,
    count: int,
    taker: str,
    expected: int,
    path: str | os.PathLike[str] | None = None,
    advice: str = '',
) -> None:
    """Refuse data whose band count is not the one a model or statistics take.

    glcgeo's one band-count check: the message reads ``<data> <count> bands,
    but <taker> <expected><advice>``.

    Args:
        data: what has the bands, with its verb (``'the mosaic has'``).
        count: its band count.
        taker: what takes them, with its verb (``'the model takes'``).
        expected: the band count that takes.
        path: the file named by the error, if any.
        advice: what to do, appended to the message (``' (choose them with
            --bands)'``).

    Raises:
        GlcgeoError: if *count* is not *expected*.
    """
    if count != expected:
        raise GlcgeoError(f'{data} {count} bands, but {taker} {expected}{advice}', path)


def physical_memory() -> int:
    """The machine's physical memory, in bytes (0 where it cannot be told)."""
    try:
        return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    except (ValueError, OSError):
        return 0


def check_memory(nbytes: float, what: str, advice: str) -> None:
    """Refuse, before allocating, what would not fit in the machine's memory.

    Sizes that settings derive (a grid from a pixel size, windows and batches
    from their sides) grow with their square: a pixel size given in the wrong
    unit asks for terabytes. Refused in one line instead of a failed allocation.

    Args:
        nbytes: the bytes it would take.
        what: what would take them, naming the setting it follows from
            (e.g. ``'the coverage of the mosaic at --res 0.001'``).
        advice: how to make it smaller.

    Raises:
        GlcgeoError: if *nbytes* exceeds the physical memory.
    """
    memory = physical_memory()
    if memory and nbytes > memory:
        raise GlcgeoError(
            f'{what} would take {_size(nbytes)}, more than this machine has '
            f'({_size(memory)}): {advice}'
        )


def _size(nbytes: float) -> str:
    """Bytes in binary units, e.g. ``1.7 TiB``."""
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if nbytes < 1024 or unit == 'TiB':
            return f'{nbytes:.1f} {unit}'
        nbytes /= 1024
    raise AssertionError  # the loop returns
