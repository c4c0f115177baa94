"""Ctrl-C for the ``glcgeo`` command: one line, exit status 130, the work stopped.

:class:`Interrupts` takes Ctrl-C (and SIGTERM, a job scheduler's or a
container's stop) for the length of a command, from its first moment: the
signal itself is remembered, and during the sub-commands' imports (torch,
Lightning: seconds) it waits for the import to end, as an interrupt inside a C
extension's import may be swallowed (torch's NumPy bridge goes on without
NumPy), surface as another error (NumPy's "cannot load module more than once")
or abort the process (torch's operator registry). A Ctrl-C that lands where
Python ignores errors is raised again in the next call; one that finds the main
thread stuck in a C call ends the process after :data:`INTERRUPT_GRACE`.
"""

import contextlib
import os
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any, Self

from ..outputs import remove_unwound_files

#: importlib's frame of an import statement at work.
_IMPORT_FRAME = ('<frozen importlib._bootstrap>', '_find_and_load')


def _interrupt_next_call(frame: FrameType, event: str, arg: object) -> None:
    """A trace function that raises KeyboardInterrupt in the first call it sees."""
    sys.settrace(None)
    raise KeyboardInterrupt


def _outermost_import(frame: FrameType | None) -> FrameType | None:
    """The frame of the outermost import running below *frame*, if any."""
    outermost = None
    while frame is not None:
        code = frame.f_code
        if (code.co_filename, code.co_name) == _IMPORT_FRAME:
            outermost = frame
        frame = frame.f_back
    return outermost


class _InterruptAfter:
    """A profile function: raise KeyboardInterrupt once an import has returned.

    The interrupt is raised in the first call after the import statement whose
    frame is *importing* (see :func:`_interrupt_next_call`).
    """

    def __init__(self, importing: FrameType) -> None:
        self.importing = importing

    def __call__(self, frame: FrameType, event: str, arg: object) -> None:
        if event == 'return' and frame is self.importing:
            sys.setprofile(None)
            sys.settrace(_interrupt_next_call)


#: Seconds the main thread has to take Ctrl-C (or SIGTERM) before the process
#: ends without it (see :class:`_SignalWatch`).
INTERRUPT_GRACE = 5.0
#: The signals that interrupt a command.
INTERRUPTS = (signal.SIGINT, signal.SIGTERM)


class _SignalWatch:
    """End the process when Ctrl-C finds the main thread stuck in a C call.

    Python runs signal handlers in the main thread, between two bytecodes: while
    that thread waits inside a library (GDAL waiting for a server that accepted
    the connection and never answers), Ctrl-C and SIGTERM wait with it. Python's
    C-level handler still writes the signal's number to its wakeup file
    descriptor: this thread reads it and, if the main thread's handler has not
    run within :data:`INTERRUPT_GRACE` seconds, says ``interrupted`` and ends the
    process with status 130 itself.
    """

    def __init__(self, taken: threading.Event) -> None:
        """Start watching (from the main thread).

        Args:
            taken: set by the main thread's handler when it runs.
        """
        self.taken = taken
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name='glcgeo-signals', daemon=True).start()

    def _watch(self) -> None:
        while received := os.read(self._read, 64):
            if not any(number in INTERRUPTS for number in received):
                continue  # e.g. SIGCHLD, which DataLoader handles
            if not self.taken.wait(INTERRUPT_GRACE):
                print('glcgeo: interrupted', file=sys.stderr, flush=True)
                remove_unwound_files()
                os._exit(130)
        os.close(self._read)

    def stop(self) -> None:
        """Stop watching (from the main thread)."""
        signal.set_wakeup_fd(self._previous)
        os.close(self._write)  # the watching thread reads the end, and ends


def _forget_wakeup_fd() -> None:
    """In a forked child (a DataLoader worker), leave the parent's watch alone."""
    # ValueError: forked from another thread than the main one, which has none.
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)


os.register_at_fork(after_in_child=_forget_wakeup_fd)


class Interrupts:
    """Take Ctrl-C and SIGTERM while a command runs (in the main thread).

    Example::

        with Interrupts(watch=True) as interrupts:
            try:
                run()
                interrupts.raise_if_swallowed()
            except BaseException as error:
                if not interrupts.caused(error):
                    raise
                ...  # say so, exit with status 130
    """

    def __init__(self, watch: bool) -> None:
        """Initialize new Interrupts.

        Args:
            watch: also end the process when the main thread cannot take the
                signal (see :class:`_SignalWatch`): for the command line.
        """
        self.watch = watch
        self.interrupted = threading.Event()
        self._taken = threading.Event()
        self._main_thread = threading.current_thread() is threading.main_thread()
        self._previous: dict[int, Any] = {}
        self._previous_hook = sys.unraisablehook
        self._watch: _SignalWatch | None = None

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        self.interrupted.set()
        self._taken.set()
        importing = _outermost_import(frame)
        if importing is None:
            raise KeyboardInterrupt
        sys.setprofile(_InterruptAfter(importing))

    def _unraisable(self, report: Any) -> None:
        # Ctrl-C landing in code whose errors Python ignores (a weakref callback
        # of the import system, a __del__) would be lost and the work go on:
        # raise it again in the next function this thread calls (a signal raised
        # here would be handled, and ignored, in here).
        if report.exc_type is KeyboardInterrupt and self.interrupted.is_set():
            sys.settrace(_interrupt_next_call)
        else:
            self._previous_hook(report)

    def __enter__(self) -> Self:
        if self._main_thread:
            for number in INTERRUPTS:
                self._previous[number] = signal.getsignal(number)
                signal.signal(number, self._interrupt)
            sys.unraisablehook = self._unraisable
            if self.watch:
                self._watch = _SignalWatch(self._taken)
        return self

    def raise_if_swallowed(self) -> None:
        """Raise KeyboardInterrupt if a Ctrl-C was swallowed on its way out.

        Raises:
            KeyboardInterrupt: if interrupted (e.g. a library's handler took it).
        """
        if self.interrupted.is_set():
            raise KeyboardInterrupt

    def caused(self, error: BaseException) -> bool:
        """Whether *error* is a Ctrl-C, or any error that a Ctrl-C caused."""
        return self.interrupted.is_set() or isinstance(error, KeyboardInterrupt)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self._main_thread:
            return
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        sys.unraisablehook = self._previous_hook
        if self._watch is not None:
            self._watch.stop()
        if sys.gettrace() is _interrupt_next_call:
            sys.settrace(None)
        if isinstance(sys.getprofile(), _InterruptAfter):
            sys.setprofile(None)
