"""Output files: checked before any work, written whole or not at all.

The rules every glcgeo command follows when it writes a file:

* :func:`check_destination`, before any work: the folder exists and takes new
  files, an existing file is kept unless *overwrite*, and an output is never one
  of the command's inputs (compared as resolved real paths, *overwrite* or not);
  :func:`check_output_folder` likewise for a folder of outputs (a run's).
* :class:`OutputLock`, for the whole run: an output file or folder is written by
  one run at a time; another live run's output is refused, and what dead runs
  left of it (their temporary files) is removed.
* :class:`OutputFile` / :func:`atomic_write`, while writing: the file is written
  under a temporary name in its own folder and renamed onto its name
  (:func:`os.replace`, atomic within a folder) only once complete; an error or
  an interruption (Ctrl-C) removes the temporary file, so no half-written file
  ever stands under an output's name. A write that finds no room (a full disk, a
  quota, the file size limit) is one line naming the output (:func:`no_room`).
"""

import errno
import fcntl
import os
import re
import resource
import secrets
import socket
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from types import TracebackType
from typing import Self

from .errors import GlcgeoError, NoRoomError

__all__ = [
    'OutputFile',
    'OutputLock',
    'atomic_write',
    'check_destination',
    'check_output_folder',
    'joins_a_run',
    'no_room',
    'no_room_reported',
    'written_as_folder',
]

StrPath = str | os.PathLike[str]

#: This machine, in lock files and temporary file names: a process id says
#: whether the process lives only on the machine that runs it.
HOST = socket.gethostname()

#: Write errors for lack of room: errno -> (reason, whether the device is full).
ROOM_ERRORS = {
    errno.ENOSPC: ('no space left on the device', True),
    errno.EDQUOT: ('disk quota exceeded', True),
    errno.EFBIG: (
        'file size limit reached (ulimit -f, or the largest file of the file system)',
        False,
    ),
}
#: Free bytes below which a device counts as full: a failed write needed more.
FULL_DEVICE_BYTES = 1 << 20
#: Bytes below the file size limit at which a file counts as having reached it:
#: a write that would cross the limit fails whole (SQLite writes pages).
FILE_SIZE_MARGIN = 1 << 16

#: Environment variables that number the processes of one run (torchrun,
#: Lightning's launcher, SLURM, LSF): a process numbered above 0 joins the run
#: of process 0, which holds its outputs' locks.
RANK_VARIABLES = (
    'RANK',
    'LOCAL_RANK',
    'NODE_RANK',
    'GROUP_RANK',
    'SLURM_PROCID',
    'JSM_NAMESPACE_RANK',
)


def written_as_folder(path: StrPath) -> bool:
    """Whether a path is written as a folder's: it ends in ``/`` (or ``os.sep``)."""
    return os.fspath(path).endswith(('/', os.sep))


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
        GlcgeoError: if the path is empty or names a folder (it ends in a path
            separator, or one stands there), the folder is missing or takes no
            new file, the output is one of *inputs*, or it exists and
            *overwrite* is False.
    """
    if not os.fspath(path):
        raise GlcgeoError('an output file is named by an empty path')
    if written_as_folder(path):
        raise GlcgeoError('a folder is named where an output file goes', path)
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


def _free_bytes(folder: str) -> int | None:
    """Bytes this process may still write on *folder*'s device, if known."""
    try:
        device = os.statvfs(folder)
    except OSError:
        return None
    # Root may write into the blocks reserved for it.
    blocks = device.f_bfree if os.geteuid() == 0 else device.f_bavail
    return blocks * device.f_frsize


def no_room(
    error: BaseException, path: StrPath, *temporaries: StrPath
) -> NoRoomError | None:
    """Say whether a write of *path* failed for lack of room, in one line.

    GDAL and torch report such failures in their own words (GDAL, a full file
    size limit as a read error of the truncated file): after the errno and the
    system's words, the file size limit is compared with the temporary files,
    and the device's free space is read.

    Args:
        error: what the write raised.
        path: the output being written; an OSError naming another file names
            that one.
        temporaries: the files being written for *path*.

    Returns:
        the error to raise instead, or None when room was not the problem.
    """
    if isinstance(error, GlcgeoError):
        return None
    codes = [error.errno] if isinstance(error, OSError) else []
    codes += [code for code in ROOM_ERRORS if os.strerror(code) in str(error)]
    if isinstance(error, OSError) and error.filename:
        path = error.filename
    code = next((code for code in codes if code in ROOM_ERRORS), None)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if code is None and limit != resource.RLIM_INFINITY:
        for temporary in temporaries:
            with suppress(OSError):
                if os.path.getsize(temporary) + FILE_SIZE_MARGIN >= limit:
                    code = errno.EFBIG
    if code is None:
        free = _free_bytes(os.path.dirname(os.path.abspath(path)))
        if free is not None and free < FULL_DEVICE_BYTES:
            code = errno.ENOSPC
    if code is None:
        return None
    reason, lasting = ROOM_ERRORS[code]
    return NoRoomError(reason, path, lasting)


@contextmanager
def no_room_reported(path: StrPath, *temporaries: StrPath) -> Iterator[None]:
    """Raise a write error for lack of room in the block as :func:`no_room`'s.

    Args:
        path: the output written in the block.
        temporaries: the files being written for it.

    Yields:
        nothing.

    Raises:
        NoRoomError: instead of an error for lack of room.
    """
    try:
        yield
    except Exception as error:
        room = no_room(error, path, *temporaries)
        if room is None:
            raise
        raise room from error


def _alive(pid: int) -> bool:
    """Whether a process of this machine is running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def joins_a_run() -> bool:
    """Whether this process is one of a run's processes other than the first.

    The first process (rank 0, see :data:`RANK_VARIABLES`) claims the run's
    outputs, checks and writes them; the others join its claim.

    Returns:
        True in a process numbered above 0.
    """
    for name in RANK_VARIABLES:
        with suppress(ValueError):
            if int(os.environ.get(name, '0')) > 0:
                return True
    return False


#: The name of a temporary file: '.', the output's name, this machine, the
#: writing process and a random token, '.partial' (and what GDAL adds to it).
_PARTIAL = re.compile(
    rf'\.(?P<name>.+)\.{re.escape(HOST)}\.(?P<pid>\d+)\.[0-9a-f]+\.partial(\..+)?'
)


def _remove_stale_partials(folder: str, names: Sequence[str] | None) -> None:
    """Remove the temporary files that ended processes of this machine left.

    Args:
        folder: where to look (not below).
        names: the outputs whose temporary files to remove; None for all.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:  # not there (yet)
        return
    for entry in entries:
        match = _PARTIAL.fullmatch(entry.name)
        if (
            match is not None
            and (names is None or match['name'] in names)
            and not _alive(int(match['pid']))
        ):
            with suppress(OSError):
                os.remove(entry.path)


#: Files of this process that only its unwinding would remove (temporary
#: outputs, lock files): a process ending without unwinding (``os._exit`` after
#: a Ctrl-C that found the main thread stuck in a C call) removes them first.
_UNWOUND_FILES: set[str] = set()


def remove_unwound_files() -> None:
    """Remove the files only this process's unwinding would have removed.

    For a process about to end without unwinding its ``with`` blocks; what
    another thread removes meanwhile is no error.
    """
    for path in list(_UNWOUND_FILES):
        with suppress(OSError):
            os.remove(path)


class OutputLock:
    """Claim an output, a file or a folder of outputs, for one run at a time.

    The claim is a lock file, ``.NAME.lock`` beside an output file or
    ``.glcgeo.lock`` in an output folder, locked (:func:`fcntl.flock`) for as
    long as the run lives and removed when it ends (normally, on an error, on
    Ctrl-C). It records the owner's process id and machine, so that another run
    is refused in one line that names them. The kernel releases the lock of a
    process that ends in any way (``kill -9`` too): the lock file it leaves is
    taken over silently, and the temporary files that ended processes of this
    machine left for the output (their names carry machine and process id) are
    removed. The processes of a multi-process run other than the first (rank 0,
    see :data:`RANK_VARIABLES`) join the first's claim. On a file system
    without locks, outputs are not claimed.

    Example::

        with OutputLock('maps', folder=True):
            predict_scenes(...)

    .. versionadded:: 0.1
    """

    def __init__(
        self, path: StrPath, *, folder: bool = False, subfolders: Sequence[str] = ()
    ) -> None:
        """Initialize a new OutputLock.

        Args:
            path: the output file, or the (existing) output folder.
            folder: whether *path* is a folder of outputs.
            subfolders: folders under *path* whose temporary files are
                removed too (a run's ``checkpoints`` ...).
        """
        self.path = os.fspath(path)
        self.folder = folder
        self.subfolders = subfolders
        where, name = os.path.split(os.path.abspath(self.path))
        #: The lock file.
        self.lock = (
            os.path.join(self.path, '.glcgeo.lock')
            if folder
            else os.path.join(where, f'.{name}.lock')
        )
        self._fd: int | None = None

    def __enter__(self) -> Self:
        """Claim the output, and clear what dead processes left of it.

        Raises:
            GlcgeoError: if another live run holds the output, or the lock file
                cannot be written.
        """
        if joins_a_run():
            return self
        while True:
            try:
                fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise GlcgeoError(
                    f'cannot write the lock file {self.lock} ({error.strerror})',
                    self.path,
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 256).decode(errors='replace').split()
                os.close(fd)
                who = (
                    f'process {owner[0]} on {owner[1]}'
                    if len(owner) == 2
                    else 'starting'
                )
                raise GlcgeoError(
                    f'in use by another glcgeo run ({who}); wait until it ends, '
                    'or write elsewhere',
                    self.path,
                ) from None
            except OSError:  # no locks on this file system
                os.close(fd)
                return self
            # The last owner may have removed the file between our open and our
            # lock: the lock is ours only on the file under the name.
            with suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(self.lock)):
                    break
            os.close(fd)
        self._fd = fd
        _UNWOUND_FILES.add(self.lock)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f'{os.getpid()} {HOST}\n'.encode())
        except OSError as error:
            self.release()
            raise GlcgeoError(
                f'cannot write the lock file {self.lock} ({error.strerror})',
                self.path,
            ) from None
        if self.folder:
            for name in ('', *self.subfolders):
                _remove_stale_partials(os.path.join(self.path, name), None)
        else:
            where, name = os.path.split(os.path.abspath(self.path))
            _remove_stale_partials(where, [name])
        return self

    def release(self) -> None:
        """Remove the lock file and release the lock (nothing if not held)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with suppress(FileNotFoundError):
            os.remove(self.lock)
        _UNWOUND_FILES.discard(self.lock)
        os.close(fd)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Release the output, whatever happened."""
        self.release()


class OutputFile:
    """A file written under a temporary name beside its destination.

    :attr:`temporary` is a hidden name in the destination's folder (so the
    final rename never crosses file systems), not yet created: write it with
    any writer, then :meth:`commit`. Leaving the ``with`` block removes the
    temporary file if it is still there, whatever happened; an error for lack
    of room in the block is raised as :func:`no_room`'s one line.

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
        # The machine and process id tell a later run whether the writer lives
        # (see OutputLock).
        token = f'{HOST}.{os.getpid()}.{secrets.token_hex(4)}'
        #: The temporary file, beside the destination ('.partial' names it so).
        self.temporary = os.path.join(folder, f'.{name}.{token}.partial')

    def __enter__(self) -> Self:
        """Start writing."""
        _UNWOUND_FILES.add(self.temporary)
        return self

    def commit(self) -> None:
        """Move the complete temporary file onto the destination."""
        os.replace(self.temporary, self.path)
        _UNWOUND_FILES.discard(self.temporary)

    def discard(self) -> None:
        """Remove the temporary file, if it is there.

        Safe from several threads at once: a publishing thread may clean up
        while an interrupted main thread discards.
        """
        # Not exists-then-remove: the other thread may remove it in between.
        with suppress(FileNotFoundError):
            os.remove(self.temporary)
        _UNWOUND_FILES.discard(self.temporary)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Remove what is left of the temporary file (nothing after a commit).

        Raises:
            NoRoomError: if the block failed for lack of room.
        """
        room = None
        if isinstance(exc, Exception):
            room = no_room(exc, self.path, self.temporary)
        self.discard()
        if room is not None:
            raise room from exc


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
