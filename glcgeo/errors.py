"""Errors that reach users as one clear line."""

import os


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
            path: the file the problem is in, prefixed to the message when given.

        """
        # torch re-raises a DataLoader worker's error as GlcgeoError(<the worker's
        # traceback>), whose last line holds the message: keep that line.
        name = type(self).__name__
        if path is None and message.startswith(f'Caught {name} in DataLoader'):
            message = message.rstrip().rsplit(f'{name}: ', 1)[-1]
        self.path = None if path is None else os.fspath(path)
        super().__init__(f'{self.path}: {message}' if self.path else message)


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
