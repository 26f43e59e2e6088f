"""The embedded host: drives the engine in this process.

Values pass between tasks as the Python objects the tasks returned (no serialisation,
no copies). The loop is single-threaded; executors report outcomes through one queue.

Child flow runs run in the same process, each driven by its own EmbeddedRun on a thread
of its own: a subflow node's child (started by the loop when the engine dispatches the
node; its end is reported to the engine like a task's) and a flow a task calls while it
runs (``run_child``, from the task's thread, which waits for it). When the parent's
attempt is cancelled or times out, its children are cancelled.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any, Protocol

from headwater.wire import (
    FailureInfo,
    FlowRunState,
    GraphError,
    GraphSpec,
    ParameterError,
    TaskRunState,
    TaskSpec,
)
from headwater_runtime.engine import (
    PYTHON_VALUES,
    CacheChecked,
    CacheEntry,
    CancelRequested,
    CancelTask,
    CheckCache,
    Command,
    Event,
    FlowRunEngine,
    RunRetried,
    RunTask,
    StateEntry,
    TaskFailed,
    TaskRunRecord,
    TaskStarted,
    ValueOps,
    WriteCache,
    subflow_outcome,
)
from headwater_runtime.execution import (
    Caller,
    TaskInterrupted,
    TaskLogLine,
    capturing,
    failure_from_exception,
    make_caller,
    routing_records,
)
from headwater_runtime.tracing import active_tracer

if TYPE_CHECKING:
    from headwater_runtime.tracing import RunTracer

from ._cache import PROCESS_CACHE, ResultCache, warn_at_task
from ._gc import relaxed_gc
from ._threads import ThreadExecutor

# Upper bound on one wait, so Ctrl-C is seen promptly even on platforms where a
# blocking queue read is not interruptible.
_MAX_WAIT = 0.5
#: The task runs a retry keeps, with their results.
_KEPT = (TaskRunState.SUCCESS, TaskRunState.CACHED)


class SystemClock:
    """Wall-clock seconds since the epoch."""

    # time.time itself rather than a method calling it: read ~5 times per task run.
    now = staticmethod(time.time)


class Executor(Protocol):
    """Where task functions run (threads, a Dask cluster).

    Besides running attempts, an executor says what the values it produces are (its
    ``values`` for the engine: live objects, or futures of a cluster), how to turn one
    into what the user sees (``resolve``), and how cache keys and entries work for them.
    """

    @property
    def slots(self) -> int:
        """Most attempts the executor takes at once (the engine never exceeds it)."""
        ...

    @property
    def values(self) -> ValueOps:
        """The engine's operations on the values this executor's tasks produce."""
        ...

    @property
    def reports_starts(self) -> bool:
        """True: attempts may queue in the executor, which reports TaskStarted when
        one really starts (timeouts count from then). False: submitting starts them."""
        ...

    def start(self, completions: SimpleQueue[Event]) -> None:
        """Get ready for a run; outcomes (and TaskStarted) go to ``completions``."""
        ...

    def submit(self, tasks: list[tuple[RunTask, Caller]]) -> None:
        """Run these attempts, each with the caller of its task function."""
        ...

    def cancel(self, key: str, attempt: int) -> None:
        """Stop an attempt (interrupt it if it runs); it reports nothing afterwards."""
        ...

    def shutdown(self) -> None:
        """Release what ``start`` (or the run) acquired; called once the run ends."""
        ...

    def resolve(self, value: Any) -> Any:
        """A result as the user sees it (e.g. a future gathered into its value)."""
        ...

    def cache_key(self, spec: TaskSpec, inputs: dict[str, Any]) -> str:
        """The cache key of an attempt of ``spec`` with these inputs."""
        ...

    def cache_hit(self, entry: CacheEntry) -> CacheEntry | None:
        """The entry if this executor can use its value, else None (a miss)."""
        ...

    def cache_put(
        self,
        cache: ResultCache,
        key: str,
        value: Any,
        expires_at: float | None,
        task: str,
        fn: Callable[..., Any] | None = None,
    ) -> None:
        """Store a result of task ``task`` (whose function is ``fn``, where a warning
        about it points) in ``cache`` under ``key``."""
        ...


class SubflowTarget(Protocol):
    """What a subflow node runs embedded (``SubflowSpec.flow``: the SDK's Flow)."""

    def prepare_run(self, params: dict[str, Any]) -> tuple[GraphSpec, dict[str, Any]]:
        """The graph and the checked, converted parameters (defaults filled in) of a
        run with these parameter values; ParameterError for a value that does not fit."""
        ...


def child_executor(executor: Executor) -> Executor:
    """Where a child flow run's tasks run: ``executor.for_child()`` when it has one
    (the same kind of executor, e.g. the same Dask cluster), else a thread pool."""
    make = getattr(executor, "for_child", None)
    return make() if callable(make) else ThreadExecutor()


class EmbeddedRun:
    """One flow run in this process. ``run()`` blocks until it ends; ``cancel()`` may be
    called from any thread.

    Args:
        graph: the compiled flow.
        params: parameter values by name (defaults are filled in).
        executor: where task functions run (default: a ThreadExecutor); shut down when
            the run ends.
        max_concurrency: most task runs executing at once (the executor's slots bound
            it too).
        cache: the result cache for tasks that cache (default: this process's).
        clock: the time source (default: the system clock).
        on_transition: called with (task run, state entry) on every state change, in
            the thread that calls ``run()``.
        parent_id: for a child flow run, the id of the run it belongs to.
        parent_task_run: for a child flow run, the key of the parent's task run that
            stands for it (the subflow node, or the task that started it).
        trace_parent: the OpenTelemetry context the flow span is a child of (default:
            the context current where the run is created).
        engine: the engine of an ended run of this process to drive again (``run(retry=
            ...)``: a retry from its failure) instead of a new one; ``graph``, ``params``
            and ``clock`` are then not used.
        run_id: the run's id (default: a new one).
    """

    def __init__(
        self,
        graph: GraphSpec,
        params: Mapping[str, Any] | None = None,
        *,
        executor: Executor | None = None,
        max_concurrency: int | None = None,
        cache: ResultCache = PROCESS_CACHE,
        clock: Any = None,
        on_transition: Callable[[TaskRunRecord, StateEntry], None] | None = None,
        parent_id: str = "",
        parent_task_run: str = "",
        trace_parent: Any = None,
        engine: FlowRunEngine | None = None,
        run_id: str | None = None,
    ) -> None:
        # 32 random hex digits, like uuid4().hex (uuid imports platform: ~10 ms).
        self.id = run_id or os.urandom(16).hex()
        self.parent_id = parent_id
        self.parent_task_run = parent_task_run
        #: Child flow runs, in the order they were started.
        self.children: list[EmbeddedRun] = []
        self._live: dict[str, list[EmbeddedRun]] = {}  # task run key -> running children
        self._child_threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        # Tracing is decided once per run: when off, the loop tests one None per task.
        self._tracer = active_tracer()
        self._trace: RunTracer | None = None
        self._trace_parent = trace_parent
        if self._tracer is not None and trace_parent is None:
            from headwater_runtime.tracing import current_context

            # The caller's current span (flow.run() in traced code, a task's span for a
            # flow the task calls): captured here, as run() may be on another thread.
            self._trace_parent = current_context()
        self._user_on_transition: Callable[[TaskRunRecord, StateEntry], None] | None = None
        self.executor: Executor = executor or ThreadExecutor()
        if isinstance(self.executor, ThreadExecutor):
            self.executor.launcher = self  # tasks' threads start child runs through it
        self.cache = cache
        self._completions: SimpleQueue[Event] = SimpleQueue()
        limit = self.executor.slots
        if max_concurrency is not None:
            limit = min(limit, max_concurrency)
        hook = on_transition
        if self._tracer is not None:
            hook = self._on_transition
            self._user_on_transition = on_transition
        try:
            if engine is not None:
                _check_same_kind(engine, self.executor)
                engine.on_transition = hook
                engine.max_concurrency = min(limit, engine.max_concurrency or limit)
                self.engine = engine
            else:
                self.engine = FlowRunEngine(
                    graph,
                    params,
                    clock=clock or SystemClock(),
                    values=self.executor.values,
                    max_concurrency=limit,
                    auto_start=not self.executor.reports_starts,
                    on_transition=hook,
                    # A child run is bounded by its node's timeout, not its flow's own.
                    timeout=None if parent_id else graph.timeout,
                    seed=self.id,
                )
        except BaseException:
            self.executor.shutdown()  # e.g. a LocalCluster started for this run
            raise
        self._callers: dict[Any, Caller] = {}
        #: What the tasks printed and logged (on this process's threads), in order.
        self.logs: list[TaskLogLine] = []
        # Tasks run on this process's threads (not a Dask cluster): capture their output.
        self._capture = isinstance(self.executor, ThreadExecutor)
        #: Whether Ctrl-C (a KeyboardInterrupt) cancelled it (``run`` does not raise it:
        #: the caller decides, once the run has ended).
        self.interrupted = False

    def cancel(self, reason: str = "cancelled") -> None:
        """Ask the run to stop: running tasks are interrupted, pending ones cancelled."""
        self._completions.put(CancelRequested(reason))

    def _on_transition(self, run: TaskRunRecord, entry: StateEntry) -> None:
        if self._trace is not None:
            self._trace.on_transition(run, entry)
        if self._user_on_transition is not None:
            self._user_on_transition(run, entry)

    def run(self, *, retry: str | None = None) -> FlowRunEngine:
        """Drive the run to its end and return the engine (states, results, history).

        A task failure does not raise; Ctrl-C cancels the run (and sets
        ``interrupted``). A successful run's
        result is resolved by the executor (e.g. gathered from a Dask cluster). With
        ``retry`` (the reason), the ended run of ``engine`` runs again from its failure
        (engine/_rerun.py) instead of starting.
        """
        with relaxed_gc(), routing_records():
            return self._run(retry)

    def _run(self, retry: str | None) -> FlowRunEngine:
        engine = self.engine
        completions = self._completions
        if self._tracer is not None:
            from headwater_runtime.tracing import RunTracer  # OpenTelemetry: only when on

            # Parent: the caller's current span, if any (flow.run() inside traced code).
            attempt = engine.run_attempt + (retry is not None)
            self._trace = RunTracer(
                self._tracer, engine.graph.name, self.id, self._trace_parent, attempt=attempt
            )
        self.executor.start(completions)
        try:
            try:
                first = engine.start() if retry is None else engine.handle(RunRetried(retry))
                self._execute(first)
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
                self.interrupted = True
                self._execute(engine.handle(CancelRequested("interrupted (Ctrl-C)")))
            if engine.state is FlowRunState.SUCCESS and engine.result is not None:
                try:
                    engine.result = self.executor.resolve(engine.result)
                except Exception as exc:
                    engine.result_unavailable(exc)
        finally:
            self.executor.shutdown()
            if isinstance(self.executor, ThreadExecutor) and self.executor.launcher is self:
                # No cycle run <-> executor: the engine is freed as soon as it is unused.
                self.executor.launcher = None
            # Children the run cancelled end promptly (their loops stop their tasks):
            # wait for them, so that every child's state is final when this returns.
            with self._lock:
                threads = list(self._child_threads)
            for thread in threads:
                thread.join()
            if self._trace is not None:
                message = engine.flow_history[-1][2] if engine.flow_history else ""
                self._trace.finish(engine.state, message)
            if self._tracer is not None:  # (no cycle run <-> engine once it has ended)
                engine.on_transition = self._user_on_transition
        return engine

    def _execute(self, commands: list[Command]) -> None:
        queue = deque(commands)
        executor = self.executor
        batch: list[tuple[RunTask, Caller]] = []
        while queue:
            command = queue.popleft()
            if type(command) is RunTask:
                spec = command.run.spec
                if spec.subflow is not None:
                    self._start_subflow(command)
                    continue
                caller = self._callers.get(spec.fn)
                if caller is None:
                    if spec.fn is None:
                        raise RuntimeError(
                            f"task {spec.name!r} has no Python function in this process; "
                            "embedded runs need flows compiled here"
                        )
                    caller = self._callers[spec.fn] = make_caller(spec.fn)
                if self._capture:
                    caller = capturing(caller, self._sink(command.run.key, command.attempt))
                if self._trace is not None:
                    span = self._trace.dispatched(command.run, command.attempt)
                    caller = self._trace.in_span(caller, span)
                batch.append((command, caller))
                continue
            if isinstance(command, WriteCache):  # (copied before the tasks after it start)
                executor.cache_put(
                    self.cache,
                    command.cache_key,
                    command.value,
                    command.expires_at,
                    command.run.name,
                    command.run.spec.fn,
                )
                continue
            if batch:  # keep the order of submits and cancels
                executor.submit(batch)
                batch = []
            if isinstance(command, CancelTask):
                if command.run.spec.subflow is None:
                    executor.cancel(command.run.key, command.attempt)
                self._cancel_children(command.run.key, command.reason)
            elif isinstance(command, CheckCache):
                queue.extend(self.engine.handle(self._check_cache(command)))
        if batch:
            executor.submit(batch)

    def _sink(self, key: str, attempt: int) -> Callable[[str, str, str, float], None]:
        logs = self.logs

        def sink(level: str, logger: str, message: str, at: float) -> None:
            logs.append(TaskLogLine(key, attempt, at, level, logger, message))

        return sink

    def _check_cache(self, command: CheckCache) -> CacheChecked:
        run = command.run
        try:
            key = self.executor.cache_key(run.spec, command.inputs)
        except Exception as exc:
            # A broken key function must not break the run: run the task uncached.
            warn_at_task(
                run.spec.fn,
                f"task {run.spec.name!r}: could not compute a cache key ({exc!r}); "
                "running it without the cache",
            )
            return CacheChecked(run.key, "", None)
        entry = self.cache.get(key)
        if entry is not None:
            entry = self.executor.cache_hit(entry)
        return CacheChecked(run.key, key, entry)

    # --------------------------------------------------------------- child runs

    def _child(
        self, graph: GraphSpec, params: Mapping[str, Any], key: str, trace: Any
    ) -> EmbeddedRun:
        child = EmbeddedRun(
            graph,
            params,
            executor=child_executor(self.executor),
            cache=self.cache,
            parent_id=self.id,
            parent_task_run=key,
            trace_parent=trace,
        )
        with self._lock:
            self.children.append(child)
            self._live.setdefault(key, []).append(child)
        return child

    def _child_done(self, key: str, child: EmbeddedRun) -> None:
        with self._lock:
            live = self._live.get(key, [])
            if child in live:
                live.remove(child)

    def _cancel_children(self, key: str, reason: str) -> None:
        """The attempt of task run ``key`` ended (cancelled, timed out): so do the child
        flow runs it started."""
        with self._lock:
            children = list(self._live.get(key, ()))
        for child in children:
            child.cancel(f"{reason} (the parent task run {key!r} ended)")

    def _start_subflow(self, command: RunTask) -> None:
        """Run a subflow node's child flow run on a thread of its own; its end is
        reported to the engine as the node's outcome."""
        run, attempt = command.run, command.attempt
        trace = None
        if self._trace is not None:
            trace = self._trace.span_context(self._trace.dispatched(run, attempt))

        def launch() -> None:
            self._completions.put(self._subflow(run, attempt, command.inputs, trace))

        if self.executor.reports_starts:  # (Dask) the node's timeout runs from its start
            self._completions.put(TaskStarted(run.key, attempt))

        thread = threading.Thread(target=launch, name=f"headwater-subflow-{run.key}", daemon=True)
        with self._lock:
            self._child_threads.append(thread)
        thread.start()

    def _subflow(
        self, run: TaskRunRecord, attempt: int, inputs: dict[str, Any], trace: Any
    ) -> Event:
        spec = run.spec
        assert spec.subflow is not None
        target: SubflowTarget | None = spec.subflow.flow
        try:
            if target is None:
                raise RuntimeError(
                    f"subflow {spec.subflow.flow_name!r} has no flow in this process; "
                    "embedded runs need flows compiled here"
                )
            # A child checks, and may build its graph from, the values themselves:
            # results held in a Dask cluster are gathered for it.
            resolve = self.executor.resolve
            graph, params = target.prepare_run({k: resolve(v) for k, v in inputs.items()})
            child = self._child(graph, params, run.key, trace)
        except (ParameterError, GraphError) as exc:
            failure = FailureInfo(type=type(exc).__name__, message=str(exc), retryable=False)
            return TaskFailed(run.key, attempt, failure)
        except Exception as exc:
            return TaskFailed(run.key, attempt, failure_from_exception(exc))
        try:
            engine = child.run()
        except BaseException as exc:  # a broken child run must not leave the node hanging
            return TaskFailed(run.key, attempt, failure_from_exception(exc))
        finally:
            self._child_done(run.key, child)
        message = engine.flow_history[-1][2] if engine.flow_history else ""
        return subflow_outcome(
            run.key, attempt, child.id, graph.name, engine.state, engine.result, message, engine
        )

    def run_child(self, graph: GraphSpec, params: Mapping[str, Any], key: str) -> EmbeddedRun:
        """Run a flow that the task ``key`` calls while it runs, as a child of that
        task run, and wait for it to end (from the task's thread). When the task is
        cancelled or times out, the child is cancelled."""
        child = self._child(graph, params, key, None)
        done = threading.Event()

        def drive() -> None:
            try:
                child.run()
            finally:
                done.set()

        thread = threading.Thread(target=drive, name=f"headwater-child-{key}", daemon=True)
        with self._lock:
            self._child_threads.append(thread)
        thread.start()
        try:
            # Short waits: a cancelled task's thread is interrupted between bytecodes.
            while not done.wait(0.05):
                pass
        except TaskInterrupted:
            child.cancel(f"the task run {key!r} that started it was stopped")
            raise
        finally:
            self._child_done(key, child)
        return child


def _kind(values: Any) -> str:
    """Where an executor's values live, as a retry's refusal says it."""
    return "on this process's threads" if values is PYTHON_VALUES else "on Dask"


def _check_same_kind(engine: FlowRunEngine, executor: Executor) -> None:
    """An engine's values must be the executor's kind (a thread pool's live objects
    cannot stand in for futures of a Dask cluster, nor the other way round)."""
    ran, given = _kind(engine.values), _kind(executor.values)
    if ran != given or engine.auto_start == executor.reports_starts:
        # (it named DaskValues and PythonValues: a trial)
        fix = (
            "pass executor=DaskExecutor(client=...) with the client the run used (a run "
            "on an address or on its own LocalCluster closed its client as it ended: run "
            "the flow again)"
            if ran == "on Dask"
            else "leave executor= out (or give a ThreadExecutor)"
        )
        raise ValueError(f"this run ran {ran} and keeps its results there; {fix}")
    check_kept = getattr(executor, "check_kept", None)  # (a Dask cluster's futures)
    if check_kept is not None:
        check_kept([r.result for r in engine.runs.values() if r.state in _KEPT])
