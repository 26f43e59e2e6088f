"""The embedded host: drives the engine in this process.

Values pass between tasks as the Python objects the tasks returned (no serialisation,
no copies). The loop is single-threaded; executors report outcomes through one queue.
"""

from __future__ import annotations

import time
import uuid
import warnings
from collections import deque
from collections.abc import Mapping
from queue import Empty, SimpleQueue
from typing import Any, Protocol

from headwater_runtime.engine import (
    CacheChecked,
    CancelRequested,
    CancelTask,
    CheckCache,
    Command,
    Event,
    FlowRunEngine,
    GraphSpec,
    RunTask,
    StateEntry,
    TaskRunRecord,
    WriteCache,
)
from headwater_runtime.execution import Caller, make_caller
from headwater_runtime.tracing import RunTracer, active_tracer, in_span

from ._cache import PROCESS_CACHE, ResultCache, cache_key
from ._threads import ThreadExecutor

# Upper bound on one wait, so Ctrl-C is seen promptly even on platforms where a
# blocking queue read is not interruptible.
_MAX_WAIT = 0.5


class SystemClock:
    """Wall-clock seconds since the epoch."""

    # time.time itself rather than a method calling it: read ~5 times per task run.
    now = staticmethod(time.time)


class Executor(Protocol):
    """Where task functions run (threads, a Dask cluster)."""

    @property
    def slots(self) -> int: ...

    def start(self, completions: SimpleQueue[Event]) -> None: ...

    def submit(
        self,
        key: str,
        attempt: int,
        caller: Caller,
        inputs: dict[str, Any],
        no_retry_on: tuple[type[BaseException], ...],
    ) -> None: ...

    def cancel(self, key: str, attempt: int) -> None: ...

    def shutdown(self) -> None: ...


class EmbeddedRun:
    """One flow run in this process. ``run()`` blocks until it ends; ``cancel()`` may be
    called from any thread."""

    def __init__(
        self,
        graph: GraphSpec,
        params: Mapping[str, Any] | None = None,
        *,
        executor: Executor | None = None,
        max_concurrency: int | None = None,
        cache: ResultCache = PROCESS_CACHE,
        clock: Any = None,
    ) -> None:
        self.id = uuid.uuid4().hex
        # Tracing is decided once per run: when off, the loop tests one None per task.
        self._tracer = active_tracer()
        self._trace: RunTracer | None = None
        self.executor: Executor = executor or ThreadExecutor()
        self.cache = cache
        self._completions: SimpleQueue[Event] = SimpleQueue()
        limit = self.executor.slots
        if max_concurrency is not None:
            limit = min(limit, max_concurrency)
        self.engine = FlowRunEngine(
            graph,
            params,
            clock=clock or SystemClock(),
            max_concurrency=limit,
            auto_start=True,
            on_transition=None if self._tracer is None else self._on_transition,
        )
        self._callers: dict[Any, Caller] = {}

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the run to stop: running tasks are interrupted, pending ones cancelled."""
        self._completions.put(CancelRequested(reason))

    def _on_transition(self, run: TaskRunRecord, entry: StateEntry) -> None:
        if self._trace is not None:
            self._trace.on_transition(run, entry)

    def run(self) -> FlowRunEngine:
        engine = self.engine
        completions = self._completions
        if self._tracer is not None:
            # Parent: the caller's current span, if any (flow.run() inside traced code).
            self._trace = RunTracer(self._tracer, engine.graph.name, self.id)
        self.executor.start(completions)
        try:
            try:
                self._execute(engine.start())
                while not engine.finished:
                    timeout = _MAX_WAIT
                    due = engine.next_timer_at
                    if due is not None:
                        timeout = min(timeout, max(0.0, due - engine.clock.now()))
                    events: list[Event] = []
                    try:
                        events.append(completions.get(timeout=timeout))
                        while True:
                            events.append(completions.get_nowait())
                    except Empty:
                        pass
                    commands = engine.handle_many(events) if events else []
                    if due is not None:
                        commands += engine.fire_due_timers()
                    self._execute(commands)
            except KeyboardInterrupt:
                self._execute(engine.handle(CancelRequested("interrupted (Ctrl-C)")))
        finally:
            self.executor.shutdown()
            if self._trace is not None:
                message = engine.flow_history[-1][2] if engine.flow_history else ""
                self._trace.finish(engine.state, message)
        return engine

    def _execute(self, commands: list[Command]) -> None:
        queue = deque(commands)
        executor = self.executor
        while queue:
            command = queue.popleft()
            if type(command) is RunTask:
                spec = command.run.spec
                caller = self._callers.get(spec.fn)
                if caller is None:
                    if spec.fn is None:
                        raise RuntimeError(
                            f"task {spec.name!r} has no Python function in this process; "
                            "embedded runs need flows compiled here"
                        )
                    caller = self._callers[spec.fn] = make_caller(spec.fn)
                if self._trace is not None:
                    span = self._trace.dispatched(command.run, command.attempt)
                    caller = in_span(caller, span)
                executor.submit(
                    command.run.key, command.attempt, caller, command.inputs, spec.no_retry_on
                )
            elif isinstance(command, CancelTask):
                executor.cancel(command.run.key, command.attempt)
            elif isinstance(command, CheckCache):
                queue.extend(self.engine.handle(self._check_cache(command)))
            elif isinstance(command, WriteCache):
                self.cache.put(command.cache_key, command.value, command.expires_at)

    def _check_cache(self, command: CheckCache) -> CacheChecked:
        run = command.run
        try:
            key = cache_key(run.spec, command.inputs)
        except Exception as exc:
            # A broken key function must not break the run: run the task uncached.
            warnings.warn(
                f"task {run.spec.name!r}: could not compute a cache key ({exc!r}); "
                "running it without the cache",
                RuntimeWarning,
                stacklevel=2,
            )
            return CacheChecked(run.key, "", None)
        return CacheChecked(run.key, key, self.cache.get(key))
