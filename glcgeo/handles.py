"""Open files of a dataset, per process, the least recently used closed first."""

import atexit
import os
import resource
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT

__all__ = ['FileHandles']

#: Every FileHandles of the process, closed at exit (see _close_all_handles).
_ALL_HANDLES: 'weakref.WeakSet[FileHandles]' = weakref.WeakSet()


@atexit.register
def _close_all_handles() -> None:
    """Close the process's open files while Python and GDAL are still whole.

    Left to the interpreter's last collection, a rasterio dataset closes after
    the modules it reports through are gone ("Error in sys.excepthook").
    """
    for handles in list(_ALL_HANDLES):
        handles.close()


class FileHandles:
    """A process's open files of a dataset, the least recently used closed first.

    DataLoader workers are forked from the main process: a file handle opened
    there before (statistics, a first read) would be shared by every worker, and
    their reads through the one file offset interleave into corrupt tiles. The
    handles are the opening process's: another process (a forked worker) starts
    with none, and pickling carries none. At most *capacity* files stay open
    (a quarter of the process's file descriptor limit by default), so a mosaic of
    thousands of files reads without running out of descriptors, and one of
    hundreds keeps them all open.
    """

    def __init__(
        self,
        opener: Callable[[str], DatasetReader | WarpedVRT],
        capacity: int | None = None,
    ) -> None:
        """Initialize the handles of one dataset.

        Args:
            opener: opens a file (the dataset's
                :meth:`~glcgeo.datasets.GeoTiffMosaic.open_file`).
            capacity: most files kept open per process (defaults to a quarter of
                the soft limit of open files, at least 64).
        """
        if capacity is None:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            capacity = max(64, soft // 4) if soft > 0 else 1024
        self.opener = opener
        self.capacity = capacity
        self._pid = os.getpid()
        self._open: OrderedDict[str, DatasetReader | WarpedVRT] = OrderedDict()
        _ALL_HANDLES.add(self)

    def get(self, path: str) -> DatasetReader | WarpedVRT:
        """The open file *path* of this process, opened if it is not.

        Args:
            path: the file.

        Returns:
            its handle, valid until *capacity* other files are opened.
        """
        if self._pid != os.getpid():
            # A forked copy: the parent's handles are the parent's.
            self._pid, self._open = os.getpid(), OrderedDict()
        handle = self._open.get(path)
        if handle is not None:
            self._open.move_to_end(path)
            return handle
        handle = self._open[path] = self.opener(path)
        if len(self._open) > self.capacity:
            _, oldest = self._open.popitem(last=False)
            oldest.close()
        return handle

    def close(self) -> None:
        """Close this process's open files."""
        if self._pid == os.getpid():
            while self._open:
                self._open.popitem()[1].close()

    def __len__(self) -> int:
        """Files open in this process."""
        return len(self._open) if self._pid == os.getpid() else 0

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without handles: the unpickling process opens its own."""
        return {'opener': self.opener, 'capacity': self.capacity}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore with no file open."""
        self.__init__(state['opener'], state['capacity'])  # type: ignore[misc]
