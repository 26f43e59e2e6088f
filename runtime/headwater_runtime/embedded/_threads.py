"""The default executor: a pool of daemon threads.

Isolation of stuck tasks: Python cannot kill a thread. When an attempt times out or
is cancelled, the engine moves on at once (the attempt is TIMED_OUT or CANCELLED and
its late result, if any, is refused by attempt number). The executor then raises
TaskInterrupted inside the thread (PyThreadState_SetAsyncExc), which stops Python code
at its next bytecode, and retires the thread: a replacement thread is started so the
pool keeps its size. A thread blocked inside a C call (a socket read, time.sleep) only
sees the exception when the call returns; being a daemon, it never blocks exit.

Short tasks run inline. Handing an attempt to a pool thread and its outcome back costs
tens of microseconds (two queue hand-offs and GIL switches), more than many task
functions take. The executor times every task function's runs; one whose recent runs
all took less than ``INLINE_LIMIT`` and that has no timeout runs on the engine's thread,
inside ``submit``, in a context of its own (as a pool thread would: it neither sees nor
changes the caller's context variables). Its first run always goes to the pool, so a
function is never run inline before it was seen to be short, nor while an asyncio event
loop runs on the engine's thread (a Jupyter cell's). ``inline=False`` keeps every task
on the pool threads.

Threads start on demand, when an attempt goes to the pool and no started thread is
free for it, up to ``max_workers``: a run of short tasks starts one or two.
"""

from __future__ import annotations

import contextvars
import os
import sys
import threading
from collections.abc import Callable
from queue import SimpleQueue
from time import perf_counter
from typing import Any

from headwater.wire import TaskSpec
from headwater_runtime.engine import (
    PYTHON_VALUES,
    CacheEntry,
    Event,
    RunTask,
    TaskFailed,
    ValueOps,
)
from headwater_runtime.execution import Caller, TaskInterrupted, execute, failure_from_exception

from ._cache import ResultCache, Snapshot, cache_key, cache_snapshot, thaw

_Job = tuple[
    str, int, Caller, dict[str, Any], tuple[type[BaseException], ...], Callable[..., Any] | None
]

#: A task function runs inline (on the engine's thread) while its recent runs took
#: less than this many seconds: about what a hand-off to a pool thread costs, so a
#: task this short gains nothing from a thread, and one inline run delays the
#: engine's other work by no more than a hand-off would.
INLINE_LIMIT = 0.0002


def _loop_running() -> bool:
    """Whether an asyncio event loop runs on this thread (a Jupyter cell's: its
    kernel's). Tasks then go to the pool threads: inline, ``asyncio.run`` in a task
    failed ("cannot be called from a running event loop") and a task saw the kernel's
    loop as its own, in some runs only (a notebook trial)."""
    asyncio = sys.modules.get("asyncio")  # (not imported: no loop can run)
    return asyncio is not None and asyncio._get_running_loop() is not None


def default_thread_count() -> int:
    """Same default as concurrent.futures.ThreadPoolExecutor."""
    return min(32, (os.cpu_count() or 1) + 4)


class ThreadExecutor:
    """Runs task functions on a pool of threads in this process.

    Args:
        max_workers: threads in the pool (default: min(32, CPUs + 4)).
        inline: run short tasks on the engine's thread (see the module docstring).
    """

    def __init__(self, max_workers: int | None = None, *, inline: bool = True) -> None:
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.max_workers = max_workers or default_thread_count()
        self.inline = inline
        #: Task function -> a decaying maximum of its run times (seconds): the larger
        #: of the last run and half the previous figure, so one slow run keeps the
        #: function off the engine's thread for a few runs.
        self._durations: dict[Any, float] = {}
        self._context = contextvars.Context()
        self.ran_inline = 0
        self._free = 0  # started threads not committed to a queued job (under _lock)
        self._lock = threading.Lock()
        self._work: SimpleQueue[_Job | None] = SimpleQueue()
        self._completions: SimpleQueue[Event] | None = None
        self._running: dict[int, tuple[str, int]] = {}
        self._cancelled: set[tuple[str, int]] = set()
        self._retired: set[int] = set()
        self._threads: list[threading.Thread] = []
        self.interrupted = 0
        #: The run whose attempts run here (set by EmbeddedRun): a flow a task calls
        #: starts as a child of that run (``execution.current_task``).
        self.launcher: Any = None

    def for_child(self) -> ThreadExecutor:
        """A pool of the same size (and inlining) for a child flow run."""
        return ThreadExecutor(self.max_workers, inline=self.inline)

    @property
    def slots(self) -> int:
        """The pool size (``max_workers``)."""
        return self.max_workers

    def start(self, completions: SimpleQueue[Event]) -> None:
        """Start the pool's threads; outcomes go to ``completions``."""
        self._completions = completions
        self._work = SimpleQueue()
        self._retired.clear()
        self._cancelled.clear()
        self._threads = []
        self._free = 0
        # Threads start on demand (``submit``): a run whose tasks all run inline, or
        # a short chain, does not pay for starting a whole pool.

    def _spawn(self) -> None:
        thread = threading.Thread(target=self._worker, name="headwater-task", daemon=True)
        thread.start()
        self._threads.append(thread)

    @property
    def values(self) -> ValueOps:
        """PythonValues: results are the live objects tasks returned."""
        return PYTHON_VALUES  # live objects, passed as they are

    @property
    def reports_starts(self) -> bool:
        """False: an attempt starts when it is submitted."""
        return False  # a job waits for a thread only while the engine's slots allow

    def submit(self, tasks: list[tuple[RunTask, Caller]]) -> None:
        """Queue the attempts for the pool's threads; run short ones now, inline."""
        put = self._work.put
        durations = self._durations if self.inline and not _loop_running() else None
        for command, caller in tasks:
            spec = command.run.spec
            if (
                durations
                and spec.timeout is None
                and durations.get(spec.fn, INLINE_LIMIT) < INLINE_LIMIT
            ):
                self._run_inline(command, caller)
                continue
            with self._lock:
                if self._free > 0:
                    self._free -= 1  # a started thread will take it
                    spawn = False
                else:
                    spawn = len(self._threads) < self.max_workers
            if spawn:
                self._spawn()  # a new thread for it (else it waits for one to finish)
            put(
                (
                    command.run.key,
                    command.attempt,
                    caller,
                    command.inputs,
                    spec.no_retry_on,
                    spec.fn,
                )
            )

    def _run_inline(self, command: RunTask, caller: Caller) -> None:
        """Run an attempt on this (the engine's) thread; its outcome is queued like a
        pool thread's. Ctrl-C stops the run, as it does while tasks run on the pool."""
        spec = command.run.spec
        start = perf_counter()
        event = self._context.run(
            execute,
            caller,
            command.inputs,
            command.run.key,
            command.attempt,
            spec.no_retry_on,
            self.launcher,
        )
        self._timed(spec.fn, perf_counter() - start)
        self.ran_inline += 1
        if type(event) is TaskFailed and isinstance(event.failure.exception, KeyboardInterrupt):
            raise event.failure.exception
        assert self._completions is not None
        self._completions.put(event)

    def _timed(self, fn: Any, seconds: float) -> None:
        last = self._durations.get(fn)
        self._durations[fn] = seconds if last is None or seconds > last else max(seconds, last / 2)

    def resolve(self, value: Any) -> Any:
        """The value itself (it is already live)."""
        return value

    def cache_key(self, spec: TaskSpec, inputs: dict[str, Any]) -> str:
        """The task's key function's key, or a stable hash of the inputs."""
        return cache_key(spec, inputs)

    def cache_hit(self, entry: CacheEntry) -> CacheEntry | None:
        """The entry, with a fresh copy of its value; a miss for a value a Dask
        cluster holds (a run with ``DaskExecutor(client=...)`` cached its future: a
        later run on threads in the process got the Future object as the value)."""
        if type(entry.value) is not Snapshot:
            return None
        return CacheEntry(thaw(entry.value), entry.expires_at)

    def cache_put(
        self,
        cache: ResultCache,
        key: str,
        value: Any,
        expires_at: float | None,
        task: str,
        fn: Callable[..., Any] | None = None,
    ) -> None:
        """Store a copy of the value (pickled now, before a later task of the run can
        change it in place); a value that cannot be pickled is not cached (a warning
        at ``fn``, the task's function, says so)."""
        cache_snapshot(cache, key, value, expires_at, task, fn)

    def cancel(self, key: str, attempt: int) -> None:
        """Interrupt the thread running this attempt, and replace it in the pool."""
        import ctypes  # only to interrupt a thread: not part of every import

        with self._lock:
            for ident, job in self._running.items():
                if job == (key, attempt):
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(ident), ctypes.py_object(TaskInterrupted)
                    )
                    self._retired.add(ident)
                    self.interrupted += 1
                    break
            else:
                # Not picked up by a thread yet: make sure it never starts.
                self._cancelled.add((key, attempt))
                return
        self._spawn()  # the replacement takes the next job that waits
        with self._lock:
            self._free += 1

    def shutdown(self) -> None:
        """Let idle threads exit; busy ones exit after their current task."""
        for _ in self._threads:
            self._work.put(None)
        self._threads = []

    def _worker(self) -> None:
        me = threading.get_ident()
        work = self._work
        completions = self._completions
        assert completions is not None
        lock = self._lock
        running = self._running
        while True:
            job = work.get()
            if job is None:
                return
            key, attempt, caller, inputs, no_retry_on, fn = job
            event: Event | None = None
            try:
                with lock:
                    if (key, attempt) in self._cancelled:
                        self._cancelled.discard((key, attempt))
                        self._free += 1
                        continue
                    running[me] = (key, attempt)
                try:
                    # The launcher is read per job, not kept: an idle thread must not
                    # keep a finished run (and its engine) alive.
                    start = perf_counter()
                    event = execute(caller, inputs, key, attempt, no_retry_on, self.launcher)
                    self._timed(fn, perf_counter() - start)
                finally:
                    with lock:
                        running.pop(me, None)
            except TaskInterrupted:
                event = None  # the engine has already moved on from this attempt
            except Exception as exc:
                # Headwater's own failure around the task (describing its outcome, say):
                # the attempt fails; a thread dying here left the run waiting for good.
                event = TaskFailed(key, attempt, failure_from_exception(exc))
            if event is not None:
                completions.put(event)
            if me in self._retired:
                return
            with lock:
                self._free += 1
