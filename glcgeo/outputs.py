"""Output files: checked before any work, written whole or not at all.

The rules every glcgeo command follows when it writes a file:

* :func:`check_destination`, before any work: the folder exists and takes new
  files, an existing file is kept unless *overwrite*, and an output is never one
  of the command's inputs (compared as resolved real paths, *overwrite* or not);
  :func:`check_output_folder` likewise for a folder of outputs (a run's).
* :class:`OutputFile` / :func:`atomic_write`, while writing: the file is written
  under a temporary name in its own folder and renamed onto its name
  (:func:`os.replace`, atomic within a folder) only once complete; an error or
  an interruption (Ctrl-C) removes the temporary file, so no half-written file
  ever stands under an output's name.
"""

import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Self

from .errors import GlcgeoError

__all__ = ['OutputFile', 'atomic_write', 'check_destination', 'check_output_folder']

StrPath = str | os.PathLike[str]


def check_destination(
    path: StrPath, overwrite: bool = False, inputs: Iterable[StrPath] = ()
) -> None:
    """Check that an output file may be written, before any work is done.

    Args:
        path: the output file.
        overwrite: whether an existing file may be replaced.
        inputs: the files the command reads; *path* may be none of them, even
            with *overwrite* (a symbolic link or another spelling of an input
            is the input).

    Raises:
        GlcgeoError: if the folder is missing or takes no new file, the output is
            a folder or one of *inputs*, or it exists and *overwrite* is False.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise GlcgeoError('output folder does not exist', folder)
    if os.path.isdir(path):
        raise GlcgeoError('output is a folder', path)
    real = os.path.realpath(path)
    if any(real == os.path.realpath(source) for source in inputs):
        raise GlcgeoError(
            'output and input must be different files (an output never replaces '
            'an input, --overwrite or not)',
            path,
        )
    if os.path.exists(path) and not overwrite:
        raise GlcgeoError('output exists (use --overwrite to replace it)', path)
    _probe(folder, folder)


def _probe(folder: str, named: str) -> None:
    """Check that *folder* takes new files; errors name *named*."""
    # Permissions alone do not tell (root, read-only mounts): try a file.
    try:
        with tempfile.TemporaryFile(dir=folder, prefix='.glcgeo-probe-'):
            pass
    except OSError as error:
        what = 'to the output folder' if folder == named else f'in {folder}'
        raise GlcgeoError(f'cannot write {what} ({error.strerror})', named) from None


def check_output_folder(path: StrPath) -> None:
    """Check that an output folder can be written, or created, before any work.

    Args:
        path: the folder; it may not exist yet, if it can be created.

    Raises:
        GlcgeoError: if *path*, or the nearest folder above it that exists, is a
            file or takes no new file.
    """
    named = os.path.abspath(path)
    existing = named
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = '' if existing == named else f' ({existing})'
        raise GlcgeoError(f'a file{where} stands where the folder goes', named)
    _probe(existing, named)


class OutputFile:
    """A file written under a temporary name beside its destination.

    :attr:`temporary` is a hidden name in the destination's folder (so the
    final rename never crosses file systems), not yet created: write it with
    any writer, then :meth:`commit`. Leaving the ``with`` block removes the
    temporary file if it is still there, whatever happened.

    Example::

        with OutputFile('map.tif') as output:
            write_map(output.temporary)
            output.commit()

    .. versionadded:: 0.1
    """

    def __init__(self, path: StrPath) -> None:
        """Initialize a new OutputFile.

        Args:
            path: the destination.
        """
        self.path = os.fspath(path)
        folder, name = os.path.split(os.path.abspath(self.path))
        token = f'{os.getpid()}-{secrets.token_hex(4)}'
        #: The temporary file, beside the destination ('.partial' names it so).
        self.temporary = os.path.join(folder, f'.{name}.{token}.partial')

    def __enter__(self) -> Self:
        """Start writing."""
        return self

    def commit(self) -> None:
        """Move the complete temporary file onto the destination."""
        os.replace(self.temporary, self.path)

    def discard(self) -> None:
        """Remove the temporary file, if it is there.

        Safe from several threads at once: a publishing thread may clean up
        while an interrupted main thread discards.
        """
        # Not exists-then-remove: the other thread may remove it in between.
        with suppress(FileNotFoundError):
            os.remove(self.temporary)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Remove what is left of the temporary file (nothing after a commit)."""
        self.discard()


@contextmanager
def atomic_write(path: StrPath) -> Iterator[str]:
    """Write a file whole or not at all: a temporary name, renamed when complete.

    Example::

        with atomic_write('stats.json') as temporary, open(temporary, 'w') as f:
            json.dump(stats, f)

    Args:
        path: the destination.

    Yields:
        the temporary file to write; it becomes *path* when the block ends
        without an exception, and is removed otherwise.
    """
    with OutputFile(path) as output:
        yield output.temporary
        output.commit()
