"""Code that runs inside Dask workers: one task attempt, with its timeout and cancel.

A running Dask task cannot be cancelled from outside, so every attempt runs under a
guard registered in the worker process: at the attempt's timeout a watchdog timer
raises TaskInterrupted in the executing thread (the way the embedded thread pool
stops its threads), and ``interrupt`` (sent by the orchestrator with ``client.run``
when it cancels an attempt) does the same on demand. The task then ends with an
``Outcome`` instead of a value, and the Dask worker thread stays usable.

Outcomes other than success are *returned* as an ``Outcome`` object, not raised:
Dask marks the future finished with that type, which the orchestrator sees without
fetching anything, and workers do not log a "Compute Failed" for a task that merely
skipped.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cloudpickle
from distributed.diagnostics.plugin import WorkerPlugin

from headwater.wire import FailureInfo
from headwater_runtime.embedded import make_cache_key
from headwater_runtime.engine import PythonValues, Step, TaskFailed, TaskSkipped
from headwater_runtime.execution import Caller, TaskInterrupted, execute

_VALUES = PythonValues()


class OutputToStderr(WorkerPlugin):
    """A worker plugin: the worker process's standard output goes to its standard
    error (``headwater run --dask local``: the LocalCluster's worker processes share
    the CLI's stdout, which holds only the run's result; what tasks printed there
    broke ``| jq``, a user trial). Workers that join later get it too."""

    name = "headwater-output-to-stderr"

    def setup(self, worker: Any) -> None:
        """Point file descriptor 1 at what 2 is (C code's writes too)."""
        sys.stdout.flush()
        os.dup2(2, 1)


# Attempt token -> its guard, for every attempt executing in this worker process.
_GUARDS: dict[str, _Guard] = {}
_GUARDS_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an attempt ended when it did not return a value.

    ``kind`` is ``"failed"``, ``"skipped"`` or ``"interrupted"``.
    """

    kind: str
    reason: str = ""
    failure: FailureInfo | None = None


class _Guard:
    """Lets another thread interrupt one executing attempt, exactly once."""

    def __init__(self) -> None:
        self.ident = threading.get_ident()
        self.lock = threading.Lock()
        self.done = False
        self.interrupted = False
        self.reason = ""

    def interrupt(self, reason: str = "cancelled") -> bool:
        with self.lock:
            if self.done or self.interrupted:
                return False
            self.interrupted = True
            self.reason = reason
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(self.ident), ctypes.py_object(TaskInterrupted)
            )
            return True

    def finish(self) -> None:
        with self.lock:
            self.done = True
            if self.interrupted:
                # An interruption that has not landed yet must not hit the worker's
                # own code after the attempt: clear it (NULL clears a pending one).
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.ident), None)


async def interrupt(tokens: list[str]) -> int:
    """Interrupt the attempts with these tokens running in this worker; how many were.

    A coroutine: ``client.run`` runs it on the worker's event loop without waiting
    for it (only coroutines allow ``wait=False``), and it only sets flags.
    """
    with _GUARDS_LOCK:
        guards = [_GUARDS[t] for t in tokens if t in _GUARDS]
    return sum(guard.interrupt("cancelled") for guard in guards)


def _portable(failure: FailureInfo) -> FailureInfo:
    """The failure, keeping the live exception only if it survives pickling."""
    if failure.exception is None:
        return failure
    try:
        cloudpickle.loads(cloudpickle.dumps(failure.exception))
    except Exception:
        return FailureInfo(
            failure.type,
            failure.message,
            failure.traceback,
            failure.retryable,
            failure.cause and _portable(failure.cause),
            failure.language,
            failure.timed_out,
        )
    return failure


def run_attempt(
    caller: Caller,
    inputs: dict[str, Any],
    selections: dict[str, tuple[Any, tuple[Step, ...]]],
    token: str,
    name: str,
    attempt: int,
    no_retry_on: tuple[type[BaseException], ...],
    timeout: float | None,
    started_topic: str | None = None,
) -> Any:
    """Run one attempt of a task; returns its value, or an Outcome.

    ``started_topic``: a Dask event topic to report the start on (the orchestrator
    starts the attempt's timeout clock then, not while the task waits in Dask's queue).

    ``selections`` are arguments that are a part of an upstream result (an element to
    map over, ``result["key"]``): Dask resolved the upstream value, the part is taken
    here, so the whole value never travels to the orchestrator.
    """
    if selections:
        inputs = dict(inputs)
        for arg, (value, path) in selections.items():
            try:
                inputs[arg] = _VALUES.select(value, path)
            except Exception as exc:
                message = f"could not assemble the inputs of {name!r}: {exc!r}"
                failure = FailureInfo("headwater.InputError", message, retryable=False)
                return Outcome("failed", message, failure)
    if started_topic is not None:
        from distributed import get_worker

        get_worker().log_event(started_topic, token)
    guard = _Guard()
    with _GUARDS_LOCK:
        _GUARDS[token] = guard
    timer = None
    if timeout is not None:
        timer = threading.Timer(timeout, guard.interrupt, ("timed out",))
        timer.daemon = True
        timer.start()
    event: Any = None
    try:
        try:
            event = execute(caller, inputs, token, attempt, no_retry_on)
        finally:
            if timer is not None:
                timer.cancel()
            guard.finish()
    except TaskInterrupted:
        event = None
    finally:
        with _GUARDS_LOCK:
            _GUARDS.pop(token, None)
    if event is None:
        if guard.reason != "timed out":
            return Outcome("interrupted", guard.reason)
        # The same failure as the engine's own timeout timer reports.
        message = f"task {name!r} exceeded its timeout of {timeout:g}s"
        failure = FailureInfo("headwater.TaskTimeout", message, timed_out=True)
        return Outcome("interrupted", guard.reason, failure)
    if isinstance(event, TaskFailed):
        return Outcome("failed", event.failure.message, _portable(event.failure))
    if isinstance(event, TaskSkipped):
        return Outcome("skipped", event.reason)
    return event.value


def length_of(value: Any, path: tuple[Step, ...]) -> int | None:
    """``PythonValues.length`` of (a part of) a value, computed where the value lives."""
    return _VALUES.length(_VALUES.select(value, path) if path else value)


def select(value: Any, path: tuple[Step, ...]) -> Any:
    """A part of a value, as a task of its own (for parts nested in containers)."""
    return _VALUES.select(value, path)


def compute_cache_key(
    prefix: str,
    key_fn: Callable[[dict[str, Any]], Any] | None,
    name: str,
    inputs: dict[str, Any],
    selections: dict[str, tuple[Any, tuple[Step, ...]]],
) -> str:
    """A task's cache key from its real input values, computed where they live."""
    if selections:
        inputs = dict(inputs)
        for arg, (value, path) in selections.items():
            inputs[arg] = _VALUES.select(value, path)
    return make_cache_key(prefix, key_fn, name, inputs)
