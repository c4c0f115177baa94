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
