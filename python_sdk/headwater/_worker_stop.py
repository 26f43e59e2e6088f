"""Stopping ``headwater worker`` on SIGTERM or SIGINT, within its grace period, every time.

A Python-level signal handler runs on the main thread between two bytecodes of
whatever it interrupted: inside the gRPC stream iterator, a logging call, or
``Thread.start()`` while it holds the threading module's internal lock. Starting a
thread or taking a lock from there can deadlock (a stop was seen to hang inside the
handler, which started a thread). So the Python handlers here do nothing at all:
CPython's C-level handler also writes the signal's number to a pipe
(``signal.set_wakeup_fd``), and a watcher thread, started before any signal can
arrive, reads it and stops the worker from an ordinary thread.

On the first signal the watcher arms the deadlines, then asks the worker to stop
(the stream is cancelled; running attempts are interrupted and abandoned, and the
server dispatches them again). If the process is still alive shortly before ``grace``
seconds have passed (a task thread that will not let the interpreter exit), the
watcher writes every thread's stack to stderr and ends the process with status 1.
It writes them holding the GIL, so no thread changes its frames meanwhile. At
``grace`` itself, ``faulthandler``'s watchdog is the backstop: a C thread that needs
no GIL, for a process where the watcher cannot run any more. It reads the other
threads' frames while they run; a worker ended that way (the usual way before) was
seen to crash inside the dump (SIGSEGV instead of status 1). A second signal ends the
process at once (status 128 + the signal's number). docs/worker-protocol.md (§16)
says why this is how a stuck task is stopped.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

#: Default seconds ``headwater worker`` may take to stop after SIGTERM or SIGINT.
DEFAULT_GRACE = 10.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: The GIL's switch interval of ``headwater worker`` (CPython's default is 5 ms): with
#: many task threads running Python, the watcher waited that long per thread ahead of
#: it for the GIL, each time it woke (a user trial: 32 spinning tasks, 0.4-0.8 s, and
#: a stop with ``--grace 1`` ended by the backstop, past the grace).
SWITCH_INTERVAL = 0.001
#: How long before the grace runs out the watcher ends a process that is still alive
#: (at most; a quarter of the grace when that is shorter), leaving the rest to the
#: watchdog behind it.
AHEAD = 0.5


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler: nothing (the watcher thread acts; module docstring)."""


class StopOnSignal:
    """Stops a worker when the process gets SIGTERM or SIGINT (module docstring).

    Args:
        stop: asks the worker to stop (``Worker.stop``); called on the watcher thread.
        grace: seconds the process may take to end after the first signal.
        name: who is stopping, for the line written to stderr.
    """

    def __init__(self, stop: Callable[[], None], grace: float, name: str = "worker") -> None:
        self.stop = stop
        self.grace = grace
        self.name = name
        self.received: list[int] = []
        self._read_fd = self._write_fd = -1
        self._previous_fd = -1
        self._previous_handlers: dict[int, Any] = {}
        self._thread: threading.Thread | None = None
        self._previous_interval = sys.getswitchinterval()

    def install(self) -> None:
        """Route SIGTERM and SIGINT to the watcher thread (main thread only)."""
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)  # the C handler must never block
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in SIGNALS:
            self._previous_handlers[signum] = signal.getsignal(signum)
            signal.signal(signum, _ignore)
        self._previous_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._previous_interval, SWITCH_INTERVAL))
        self._thread = threading.Thread(target=self._watch, name="headwater-stop", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        deadline: float | None = None  # (monotonic) once a signal came
        while True:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                readable, _, _ = select.select([self._read_fd], [], [], wait)
                if not readable:
                    self._out_of_time()
                data = os.read(self._read_fd, 64)
            except (OSError, ValueError):
                return  # closed: the worker ended on its own
            if not data or 0 in data:
                return  # uninstall() woke it: the worker ended on its own
            for signum in data:
                if signum in {int(s) for s in SIGNALS}:
                    if deadline is None:
                        deadline = time.monotonic() + self.grace - min(AHEAD, self.grace / 4)
                    self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        self.received.append(signum)
        name = signal.Signals(signum).name
        if len(self.received) > 1:
            _say(f"headwater {self.name}: {name} again; exiting now\n")
            os._exit(128 + signum)
        # Armed first: whatever happens next, the process ends within the grace.
        faulthandler.dump_traceback_later(self.grace, exit=True, file=sys.stderr)
        _say(
            f"headwater {self.name}: {name}; stopping (running tasks are given back to "
            f"the server), at most {self.grace:g}s\n"
        )
        self.stop()

    def _out_of_time(self) -> None:
        """The grace is nearly over and the process still runs: name the threads that
        keep it alive (every thread's stack), then end it with status 1."""
        name = signal.Signals(self.received[0]).name
        _say(
            f"headwater {self.name}: still running as its {self.grace:g}s grace after {name} "
            "ends (a thread keeps the process alive); exiting with status 1. Every "
            "thread's stack:\n"
        )
        with contextlib.suppress(Exception):
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        os._exit(1)

    def uninstall(self) -> None:
        """Restore the handlers from before ``install`` and close the pipe when the
        worker ended on its own. After a signal nothing changes: the deadline stays
        armed and a second signal still exits at once, until the process is gone."""
        if self.received:
            return
        sys.setswitchinterval(self._previous_interval)
        for signum in SIGNALS:
            # The handlers from before (Python's KeyboardInterrupt for SIGINT), not
            # SIG_DFL: a process that goes on after its worker ended (an application,
            # a test run) keeps Ctrl-C working.
            previous = self._previous_handlers.pop(signum, None)
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(self._previous_fd)
        with contextlib.suppress(OSError):
            os.write(self._write_fd, b"\0")  # ends the watcher
        if self._thread is not None:
            self._thread.join(1.0)
        for fd in (self._write_fd, self._read_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _say(text: str) -> None:
    """Write to stderr without Python's stream locks (another thread may hold them)."""
    with contextlib.suppress(OSError):
        os.write(2, text.encode(errors="replace"))
