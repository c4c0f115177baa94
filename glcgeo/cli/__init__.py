"""The ``glcgeo`` command line: a thin layer that parses, validates and calls the API.

Each sub-command lives in its own module of this package and exposes
``add_parser(subparsers)`` (which registers it and sets ``func``) so commands stay
independent of each other. Command modules import torch, TorchGeo, Lightning and
rasterio inside the function that runs the command, never at the top: ``glcgeo
--help`` and every ``--help`` answer at once.
"""

import argparse
import contextlib
import importlib
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Sequence
from types import FrameType
from typing import Any

from .. import __version__
from ..errors import GlcgeoError
from ..outputs import remove_unwound_files
from .training import SETTING
from .types import ArgumentParser

#: importlib's frame of an import statement at work.
_IMPORT_FRAME = ('<frozen importlib._bootstrap>', '_find_and_load')


#: Sub-command modules, in the order ``glcgeo --help`` lists them.
COMMANDS = ('stats', 'pretrain', 'export', 'finetune', 'predict', 'embed', 'vectorize')


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every sub-command registered.

    Returns:
        the argument parser of the ``glcgeo`` command.

    """
    parser = ArgumentParser(
        prog='glcgeo',
        description='GLCNet self-supervised pretraining on georeferenced mosaics.',
    )
    parser.add_argument('--version', action='version', version=f'glcgeo {__version__}')
    subparsers = parser.add_subparsers(dest='command', required=True)
    for name in COMMANDS:
        module = importlib.import_module(f'{__name__}.{name}')
        module.add_parser(subparsers)
    return parser


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``glcgeo`` command line.

    Args:
        argv: arguments without the program name (defaults to ``sys.argv[1:]``).

    Returns:
        the exit status: 0 on success, 2 for bad input, 130 when interrupted.

    """
    # Ctrl-C is one line from the first moment, and stops the work: the signal
    # itself is remembered, and during the sub-commands' imports (torch,
    # Lightning: seconds) it waits for the import to end, as an interrupt inside
    # a C extension's import may be swallowed (torch's NumPy bridge goes on
    # without NumPy), surface as another error (NumPy's "cannot load module more
    # than once") or abort the process (torch's operator registry).
    interrupted = threading.Event()
    taken = threading.Event()
    previous = {number: signal.getsignal(number) for number in INTERRUPTS}
    previous_hook = sys.unraisablehook

    def interrupt(signum: int, frame: FrameType | None) -> None:
        interrupted.set()
        taken.set()
        importing = _outermost_import(frame)
        if importing is None:
            raise KeyboardInterrupt
        sys.setprofile(_InterruptAfter(importing))

    def unraisable(report: Any) -> None:
        # Ctrl-C landing in code whose errors Python ignores (a weakref callback
        # of the import system, a __del__) would be lost and the work go on:
        # raise it again in the next function this thread calls (a signal raised
        # here would be handled, and ignored, in here).
        if report.exc_type is KeyboardInterrupt and interrupted.is_set():
            sys.settrace(_interrupt_next_call)
        else:
            previous_hook(report)

    main_thread = threading.current_thread() is threading.main_thread()
    watch = None
    if main_thread:
        # SIGTERM (a job scheduler's, a container's stop) is Ctrl-C too.
        for number in INTERRUPTS:
            signal.signal(number, interrupt)
        sys.unraisablehook = unraisable
        if argv is None:
            watch = _SignalWatch(taken)
    try:
        status = _run(argv)
        if interrupted.is_set():
            # Ctrl-C was swallowed on its way out (e.g. by a library's handler).
            raise KeyboardInterrupt
        return status
    except BaseException as error:
        # A KeyboardInterrupt of our own, or any error that Ctrl-C caused.
        if not (interrupted.is_set() or isinstance(error, KeyboardInterrupt)):
            raise
        print('glcgeo: interrupted', file=sys.stderr)
        if argv is None:
            # The command line: end now. An interrupt inside torch's import can
            # leave the interpreter's shutdown waiting forever on its half-made
            # state; everything of ours was cleaned up while unwinding.
            sys.stderr.flush()
            os._exit(130)
        return 130
    finally:
        if main_thread:
            for number, handler in previous.items():
                signal.signal(number, handler)
            sys.unraisablehook = previous_hook
            if watch is not None:
                watch.stop()
            if sys.gettrace() is _interrupt_next_call:
                sys.settrace(None)
            if isinstance(sys.getprofile(), _InterruptAfter):
                sys.setprofile(None)


def _run(argv: Sequence[str] | None) -> int:
    """Parse the command line and run the command (see :func:`main`)."""
    parser = build_parser()
    try:
        args, extras = parser.parse_known_args(argv)
        # The training commands (those with --print_config) read config keys
        # given as flags, --trainer.max_steps 3 (glcgeo.cli.training).
        args.settings, unknown = extras, extras
        if hasattr(args, 'print_config'):
            unknown = [a for a in extras if a.startswith('-') and not SETTING.match(a)]
        if unknown:
            parser.error(f'unrecognized arguments: {" ".join(unknown)}')
    except SystemExit as exit:  # --help, --version, or a bad flag (one line)
        return int(exit.code or 0)
    # Lightning 2.6 on torch 2.14 warns about its own use of a torch API.
    warnings.filterwarnings('ignore', message=r'`isinstance\(treespec, LeafSpec\)`')
    if getattr(args, 'quiet', False):
        # --quiet is quiet: no warnings (rasterio's, Lightning's) nor Lightning's
        # information lines (devices, tips); errors still show.
        warnings.simplefilter('ignore')
        # Globally, not per logger: Lightning, imported later by the command,
        # sets its own loggers' level when it loads.
        logging.disable(logging.WARNING)
    try:
        args.func(args)
    except GlcgeoError as error:
        print(f'glcgeo: {error}', file=sys.stderr)
        return 2
    finally:
        logging.disable(logging.NOTSET)
    return 0


if __name__ == '__main__':
    sys.exit(main())
