"""The run manager: hosts one engine per active flow run, durably.

Everything the engines are told is journaled, every state change is projected, and
both go into one WriteBatch that ``flush()`` commits in one transaction. Effects on
the outside world (assignments to send, attempts to cancel) are held until the batch
that caused them is committed, so nothing is acknowledged that a crash could lose.
After a restart ``recover()`` replays each unfinished run's journal.

This module holds no gRPC code: servicers translate requests into calls here.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from headwater.v1 import graph_pb2, payload_pb2, run_pb2, worker_pb2
from headwater.wire import (
    STRUCTURAL,
    EncodedValue,
    FlowRunState,
    GraphSpec,
    JsonConsumers,
    ParameterError,
    TaskRunState,
    bind_params,
    duration,
    failure_to_dict,
    graph_from_proto,
    json_consumers,
    path_to_proto,
    split_task_run_id,
    task_run_id,
)
from headwater_runtime.engine import (
    ATTEMPT_EVENTS,
    WORKER_LOST,
    CacheChecked,
    CacheEntry,
    CancelRequested,
    CancelTask,
    CheckCache,
    Clock,
    Command,
    Event,
    EventIgnored,
    FlowFinished,
    FlowRunEngine,
    JournaledEngine,
    JournalEntry,
    RunTask,
    StateEntry,
    TaskRunRecord,
    TaskSucceeded,
    WriteCache,
    replay,
    stale_reason,
)
from headwater_runtime.store import (
    CacheRow,
    FlowRunRow,
    LogRow,
    NotFound,
    ScheduleRow,
    StateRow,
    Store,
    TaskRunRow,
    WriteBatch,
)
from headwater_runtime.tracing import active_tracer, extract, inject

if TYPE_CHECKING:
    from headwater_runtime.tracing import RunTracer

from ._codec import decode_entry, encode_entry
from ._spill import spill_inputs
from ._values import (
    SERVER_VALUES,
    Composite,
    from_input_value,
    to_input_value,
    to_result_value,
)

_RUNNING = FlowRunState.RUNNING.value


class Dispatch(Protocol):
    """Where assignments go (the dispatcher); called only after a commit."""

    def submit(self, pending: PendingAssignment) -> None:
        """Hand an attempt to a worker when one can take it."""
        ...

    def cancel(self, flow_run_id: str, task_run_id: str, attempt: int, reason: str) -> None:
        """Stop an attempt: drop it if not yet assigned, else tell its worker."""
        ...


class PendingAssignment:
    """An attempt ready for a worker. The Assignment message may be given, or built on
    first use: a 10,000-task fan-out makes 10,000 attempts ready at once, and building
    their messages up front would delay the run's first dispatch.

    Args:
        flow_run_id: the flow run the attempt belongs to.
        task_type: the capability a worker needs to run it.
        labels: labels the worker must have.
        assignment: the Assignment message, or a function that builds it.
        token: ``(task run id, attempt)``; required when ``assignment`` is a function.
    """

    __slots__ = ("_build", "_message", "flow_run_id", "labels", "task_type", "token")

    def __init__(
        self,
        flow_run_id: str,
        task_type: str,
        labels: Mapping[str, str],
        assignment: worker_pb2.Assignment | Callable[[], worker_pb2.Assignment],
        token: tuple[str, int] | None = None,
    ) -> None:
        self.flow_run_id = flow_run_id
        self.task_type = task_type
        self.labels = labels
        if isinstance(assignment, worker_pb2.Assignment):
            self._message: worker_pb2.Assignment | None = assignment
            self._build: Callable[[], worker_pb2.Assignment] | None = None
            token = (assignment.token.task_run_id, assignment.token.attempt)
        else:
            self._message, self._build = None, assignment
        assert token is not None, "a lazily built assignment needs its token"
        self.token: tuple[str, int] = token

    @property
    def assignment(self) -> worker_pb2.Assignment:
        """The Assignment message (built on first access)."""
        if self._message is None:
            assert self._build is not None
            self._message, self._build = self._build(), None
        return self._message


class NoResult(LookupError):
    """A task run has no result to return (not finished, or it did not succeed)."""


def _stored_handle(data: bytes) -> Any:
    return from_input_value(worker_pb2.InputValue.FromString(data)) if data else None


@dataclass
class ActiveRun:
    """A flow run whose engine is in memory."""

    row: FlowRunRow
    graph: GraphSpec
    engine: FlowRunEngine
    journal: JournaledEngine
    split_nodes: dict[str, tuple[str | int, ...]]
    consumers: JsonConsumers
    seq: int = 0
    armed_at: float | None = None
    state_seqs: dict[str, int] = field(default_factory=dict)
    trace: RunTracer | None = None


class RunManager:
    """Creates, drives, persists and recovers flow runs.

    Args:
        store: where flows, journals and projections are kept.
        dispatch: where ready attempts and cancels go (after each commit).
        clock: the time source the engines use.
    """

    def __init__(self, store: Store, dispatch: Dispatch, clock: Clock) -> None:
        self.store = store
        self.dispatch = dispatch
        self.clock = clock
        self.runs: dict[str, ActiveRun] = {}
        self._graphs: dict[tuple[str, str], GraphSpec] = {}
        self._batch = WriteBatch()
        self._effects: list[Callable[[], None]] = []
        self._timers: list[tuple[float, str]] = []
        self.listeners: list[Callable[[str, TaskRunRecord | None], None]] = []
        self._workers: dict[tuple[str, str], str] = {}  # (flow run, key) -> worker name
        # Decided once: with tracing off, runs carry no RunTracer and cost nothing.
        self.tracer = active_tracer()

    # ------------------------------------------------------------------- flows

    def register_flow(self, msg: graph_pb2.FlowGraph) -> tuple[str, bool]:
        """Validate and store a flow graph; GraphError names what is wrong."""
        graph = graph_from_proto(msg)
        data = msg.SerializeToString(deterministic=True)
        digest = hashlib.sha256(data).hexdigest()
        version, created = self.store.put_flow(
            msg.name, digest, data, msg.version, self.clock.now()
        )
        # Keep the graph just validated: the run that usually follows needs it.
        self._graphs.setdefault((msg.name, version.version), graph)
        return version.version, created

    def graph(self, name: str, version: str = "") -> tuple[str, GraphSpec]:
        """A registered flow's version and graph (the latest version when ``version``
        is empty); NotFound if it is not registered. Graphs are kept once decoded."""
        stored = self.store.get_flow(name, version)
        key = (name, stored.version)
        graph = self._graphs.get(key)
        if graph is None:
            graph = graph_from_proto(graph_pb2.FlowGraph.FromString(stored.graph))
            self._graphs[key] = graph
        return stored.version, graph

    # -------------------------------------------------------------------- runs

    def create_run(
        self,
        flow_name: str,
        flow_version: str,
        parameters: Mapping[str, payload_pb2.Value],
        idempotency_key: str = "",
        trace_context: Mapping[str, str] | None = None,
        *,
        schedule: ScheduleRow | None = None,
    ) -> tuple[FlowRunRow, bool]:
        """Create and start a run (ParameterError for bad parameters, NotFound for an
        unknown flow). The same idempotency key returns the first run. A run fired by
        ``schedule`` records its id, and the schedule row (advanced past this fire) is
        stored in the same transaction as the run."""
        version, graph = self.graph(flow_name, flow_version)
        params = bind_params(graph, dict(parameters))
        _check_json_params(graph, params)
        now = self.clock.now()
        stored_params = run_pb2.FlowRun(parameters=_param_values(params))
        run_id = uuid.uuid4().hex
        trace, context = self._new_trace(flow_name, run_id, trace_context or {})
        row = FlowRunRow(
            id=run_id,
            flow_name=flow_name,
            flow_version=version,
            state=_RUNNING,
            created_at=now,
            parameters=stored_params.SerializeToString(deterministic=True),
            idempotency_key=idempotency_key,
            started_at=now,
            trace_context=context,
            schedule_id=schedule.id if schedule is not None else "",
        )
        row, created = self.store.create_flow_run(row, schedule)
        if created:
            active = self._activate(row, graph, params, journal=None)
            active.trace = trace  # (a duplicate's unended span is never exported)
            self._process(active, active.journal.start())
        return row, created

    def _activate(
        self,
        row: FlowRunRow,
        graph: GraphSpec,
        params: dict[str, Any],
        journal: list[JournalEntry] | None,
    ) -> ActiveRun:
        holder: list[ActiveRun] = []

        def on_transition(run: TaskRunRecord, entry: StateEntry) -> None:
            if holder:
                self._project(holder[0], run, entry)
                if holder[0].trace is not None:
                    holder[0].trace.on_transition(run, entry)

        options: dict[str, Any] = {"auto_start": False, "on_transition": on_transition}
        if journal is None:
            engine = FlowRunEngine(graph, params, clock=self.clock, values=SERVER_VALUES, **options)
        else:
            engine = replay(
                graph, params, journal, clock=self.clock, values=SERVER_VALUES, **options
            )
        active = ActiveRun(
            row=row,
            graph=graph,
            engine=engine,
            journal=JournaledEngine(engine, lambda e: self._record(active, e)),
            split_nodes=graph.split_nodes(),
            consumers=json_consumers(graph),
            seq=len(journal or ()),
        )
        if journal is not None:
            for run in engine.runs.values():
                active.state_seqs[run.key] = len(run.history)
        holder.append(active)
        self.runs[row.id] = active
        return active

    def handle(self, flow_run_id: str, event: Event) -> list[EventIgnored]:
        """Apply an event to a run; returns the refusals (stale or unknown attempts)."""
        active = self.runs.get(flow_run_id)
        if active is None:
            return [EventIgnored(event, self._refusal(flow_run_id, event))]
        return self._process(active, active.journal.handle(event))

    def _refusal(self, flow_run_id: str, event: Event) -> str:
        """Why an event for a flow run whose engine is gone is refused: the run has
        ended, or never existed. A report about an attempt is worded as the engine
        words it (``stale_reason``), from what the store kept of the task run."""
        try:
            flow = FlowRunState(self.store.get_flow_run(flow_run_id).state)
        except NotFound:
            return f"unknown flow run {flow_run_id!r}"
        if not isinstance(event, ATTEMPT_EVENTS):
            return f"flow run is {flow.name}"
        history = self.store.task_run_history(flow_run_id, event.key)
        if not history:
            return f"unknown task run {event.key!r}"
        last = history[-1]
        ended, lost = None, False
        if last.attempt == event.attempt and TaskRunState(last.state).is_terminal:
            ended = TaskRunState(last.state)
            lost = bool(last.failure) and json.loads(last.failure).get("type") == WORKER_LOST
        return stale_reason(
            event.key,
            event.attempt,
            ended=ended,
            lost=lost,
            current=last.attempt,
            flow=None if flow is FlowRunState.RUNNING else flow,
        )

    def task_result(
        self, flow_run_id: str, task_id: str, map_index: int = -1
    ) -> tuple[payload_pb2.Value, TaskRunState]:
        """A stored task run's result: one run's, or for a mapped task with
        ``map_index`` -1 the list of its children's. NotFound for an unknown task or
        element, NoResult when the run has none (not finished, or did not succeed)."""
        self.store.get_flow_run(flow_run_id)
        rows = [r for r in self.store.task_runs(flow_run_id) if r.task_id == task_id]
        if not rows:
            raise NotFound(f"flow run {flow_run_id!r} has no task {task_id!r}")
        wanted = max(map_index, -1)
        row = next((r for r in rows if r.map_index == wanted), None)
        if row is None:
            raise NotFound(f"task {task_id!r} has no element {wanted}")
        state = TaskRunState(row.state)
        children = sorted((r for r in rows if r.map_index >= 0), key=lambda r: r.map_index)
        if wanted < 0 and children:
            handles = tuple(_stored_handle(c.result) for c in children)
            return to_result_value(Composite("list", handles)), state
        if not row.result:
            when = "" if state.is_terminal else " yet"
            raise NoResult(f"task run {row.key!r} has no result{when} (state {state.name})")
        return to_result_value(_stored_handle(row.result)), state

    def add_log(self, row: LogRow) -> None:
        """Keep a task run's log record (committed with the next batch)."""
        self._batch.logs.append(row)

    def cancel(self, flow_run_id: str, reason: str) -> None:
        """Cancel an active run (its engine cancels every unfinished task run)."""
        self.handle(flow_run_id, CancelRequested(reason or "cancelled by request"))

    def fire_timers(self) -> None:
        """Fire due retry and timeout timers of every run."""
        now = self.clock.now()
        while self._timers and self._timers[0][0] <= now:
            _, run_id = heapq.heappop(self._timers)
            active = self.runs.get(run_id)
            if active is not None:
                active.armed_at = None
                self._process(active, active.journal.fire_due_timers())

    @property
    def next_timer_at(self) -> float | None:
        """When the earliest retry or timeout timer of any run is due (None: none)."""
        return self._timers[0][0] if self._timers else None

    # ------------------------------------------------------------------ commit

    def flush(self) -> None:
        """Commit what happened since the last flush, then carry out its effects."""
        batch, self._batch = self._batch, WriteBatch()
        effects, self._effects = self._effects, []
        self.store.commit(batch)
        for effect in effects:
            effect()

    def end_traces(self, reason: str = "server stopped") -> None:
        """End the flow spans of runs still in progress (on shutdown), so the spans
        exported so far have their parent; a restart opens a resumed flow span."""
        for active in self.runs.values():
            if active.trace is not None:
                active.trace.finish(active.engine.state, reason)
                active.trace = None

    def recover(self) -> list[tuple[str, str, int]]:
        """Rebuild every unfinished run from its journal. Returns the attempts that
        were in flight (flow run id, task run id, attempt): the caller re-attaches them
        to reconnecting workers or reports them lost."""
        in_flight: list[tuple[str, str, int]] = []
        for row in self.store.unfinished_flow_runs():
            _, graph = self.graph(row.flow_name, row.flow_version)
            stored = run_pb2.FlowRun.FromString(row.parameters)
            params = {name: stored.parameters[name] for name in stored.parameters}
            journal = [decode_entry(e) for e in self.store.events(row.id)]
            active = self._activate(row, graph, params, journal)
            if self.tracer is not None:
                from headwater_runtime.tracing import RunTracer  # OpenTelemetry: only when on

                # A child of the flow span of the process that started the run.
                parent = extract(row.trace_context)
                active.trace = RunTracer(self.tracer, row.flow_name, row.id, parent, resumed=True)
            if not journal:
                # Created, then the server died before the tick that journals its start
                # was committed: start it now, or it would never run.
                self._process(active, active.journal.start())
                continue
            for run in active.engine.runs.values():
                if run.dispatched:
                    if active.trace is not None:
                        active.trace.dispatched(run, run.attempt, resumed=True)
                    in_flight.append((row.id, task_run_id(row.id, run.key), run.attempt))
            self._arm_timer(active)
        return in_flight

    # ------------------------------------------------------------------ internals

    def _record(self, active: ActiveRun, entry: JournalEntry) -> None:
        active.seq += 1
        self._batch.events.append(encode_entry(active.row.id, active.seq, entry))

    def _project(self, active: ActiveRun, run: TaskRunRecord, entry: StateEntry) -> None:
        run_id = active.row.id
        seq = active.state_seqs.get(run.key, 1) + 1
        active.state_seqs[run.key] = seq
        failure = b""
        if entry.failure is not None:
            failure = json.dumps(failure_to_dict(entry.failure)).encode()
        self._batch.states.append(
            StateRow(
                run_id,
                run.key,
                seq,
                entry.state.value,
                entry.timestamp,
                entry.attempt,
                entry.message,
                failure,
            )
        )
        result = b""
        if run.state.is_success and run.result is not None:
            result = to_input_value(run.result).SerializeToString()
        self._batch.task_runs[(run_id, run.key)] = TaskRunRow(
            run_id,
            run.key,
            run.spec.id,
            run.map_index,
            run.state.value,
            run.attempt,
            entry.timestamp,
            self._workers.get((run_id, run.key), ""),
            run.cache_key or "",
            result,
        )
        if run.state.is_terminal:
            self._workers.pop((run_id, run.key), None)
        for listener in self.listeners:
            listener(run_id, run)

    def _new_trace(
        self, flow_name: str, run_id: str, caller: Mapping[str, str]
    ) -> tuple[RunTracer | None, dict[str, str]]:
        """A new run's flow span (a child of the caller's context, if any) and the
        trace context to store with the run: the flow span's when tracing, so that
        GetFlowRun points at it and a restarted server resumes under it; else the
        caller's, passed on to workers unchanged."""
        if self.tracer is None:
            return None, dict(caller)
        from headwater_runtime.tracing import RunTracer  # OpenTelemetry: only when on

        trace = RunTracer(self.tracer, flow_name, run_id, extract(caller))
        return trace, inject(trace.flow_span)

    def _deactivate(self, flow_run_id: str) -> None:
        self.runs.pop(flow_run_id, None)

    def _arm_timer(self, active: ActiveRun) -> None:
        due = active.engine.next_timer_at
        if due is not None and due != active.armed_at:
            active.armed_at = due
            heapq.heappush(self._timers, (due, active.row.id))

    def _process(self, active: ActiveRun, commands: list[Command]) -> list[EventIgnored]:
        ignored: list[EventIgnored] = []
        queue = list(commands)
        while queue:
            command = queue.pop(0)
            if isinstance(command, RunTask):
                pending = self._assignment(active, command)
                self._effects.append(functools.partial(self.dispatch.submit, pending))
            elif isinstance(command, CancelTask):
                self._effects.append(
                    functools.partial(
                        self.dispatch.cancel,
                        active.row.id,
                        task_run_id(active.row.id, command.run.key),
                        command.attempt,
                        command.reason,
                    )
                )
            elif isinstance(command, CheckCache):
                queue.extend(active.journal.handle(self._check_cache(command)))
            elif isinstance(command, WriteCache):
                value = to_input_value(command.value).SerializeToString()
                self._batch.cache.append(CacheRow(command.cache_key, value, command.expires_at))
            elif isinstance(command, FlowFinished):
                self._finish(active, command.state)
            elif isinstance(command, EventIgnored):
                ignored.append(command)
        self._arm_timer(active)
        return ignored

    def assigned(self, flow_run_id: str, task_run_id: str, worker: str) -> None:
        """An attempt went to this worker: shown with the task run from its next state."""
        self._workers[(flow_run_id, split_task_run_id(task_run_id)[1])] = worker

    def function_cache_key(self, flow_run_id: str, run_key: str, reported: str) -> str:
        """The cache key for a key a worker derived with the task's key function ("" if
        the task does not cache by function: workers cannot write arbitrary keys)."""
        if not reported:  # the common case: every result of an uncached task
            return ""
        active = self.runs.get(flow_run_id)
        run = active.engine.runs.get(run_key) if active is not None else None
        if run is None:
            return ""
        spec, cache = run.spec, run.spec.cache
        if cache is None or not cache.by_function:
            return ""
        return f"{spec.cache_key_prefix}key={reported}"

    def cache_lookup(self, flow_run_id: str, run_key: str, attempt: int, reported: str) -> bool:
        """A worker derived a cache key with the task's key function (CacheKeyReport).
        On a valid hit the attempt ends CACHED with the stored value, and True tells
        the worker not to run the task."""
        key = self.function_cache_key(flow_run_id, run_key, reported)
        if not key:
            return False
        row = self.store.get_cache(key)
        if row is None or (row.expires_at is not None and row.expires_at <= self.clock.now()):
            return False
        value = from_input_value(worker_pb2.InputValue.FromString(row.value))
        hit = TaskSucceeded(run_key, attempt, value, cache_key=key, cached=True)
        return not self.handle(flow_run_id, hit)

    def _check_cache(self, command: CheckCache) -> CacheChecked:
        spec = command.run.spec
        cache = spec.cache
        assert cache is not None
        if cache.by_function:
            # The key function lives in the worker: the assignment asks it for the key
            # (CacheKeyReport), answered by cache_lookup before the task runs.
            return CacheChecked(command.run.key, "", None)
        digest = hashlib.sha256()
        for name in sorted(command.inputs):
            digest.update(name.encode() + b"\0")
            digest.update(
                to_input_value(command.inputs[name], elements=False).SerializeToString(
                    deterministic=True
                )
            )
        key = spec.cache_key_prefix + digest.hexdigest()
        row = self.store.get_cache(key)
        if row is None:
            return CacheChecked(command.run.key, key, None)
        value = from_input_value(worker_pb2.InputValue.FromString(row.value))
        return CacheChecked(command.run.key, key, CacheEntry(value, row.expires_at))

    def _assignment(self, active: ActiveRun, command: RunTask) -> PendingAssignment:
        spec = command.run.spec
        token = (task_run_id(active.row.id, command.run.key), command.attempt)
        build = functools.partial(self._assignment_message, active, command)
        return PendingAssignment(active.row.id, spec.task_type, spec.labels, build, token)

    def _assignment_message(self, active: ActiveRun, command: RunTask) -> worker_pb2.Assignment:
        run = command.run
        spec = run.spec
        flow_run_id = active.row.id
        consumer = active.consumers.producers.get(spec.id)
        msg = worker_pb2.Assignment(
            token=worker_pb2.FencingToken(
                task_run_id=task_run_id(flow_run_id, run.key), attempt=command.attempt
            ),
            flow_run_id=flow_run_id,
            task_id=spec.id,
            task_type=spec.task_type,
            task_name=run.name,
            argument_order=list(spec.argument_order),
            map_index=run.map_index,
            result_encoding="json" if spec.portable or consumer else "",
            result_consumer=f"task {consumer[0]!r}, argument {consumer[1]!r}" if consumer else "",
            split_result=spec.id in active.split_nodes,
            # The attempt span's context when tracing; else the client's, passed through.
            trace_context=(
                active.row.trace_context
                if active.trace is None
                else inject(active.trace.dispatched(run, command.attempt))
            ),
        )
        split_path = active.split_nodes.get(spec.id)
        if split_path:
            msg.split_path.extend(path_to_proto(split_path))
        for name, value in command.inputs.items():
            msg.inputs[name].CopyFrom(to_input_value(value, elements=False))
        if spec.timeout is not None:
            msg.timeout.CopyFrom(duration(spec.timeout))
        if spec.cache is not None and spec.cache.by_function and command.attempt == 1:
            msg.cache.key_source = graph_pb2.CACHE_KEY_SOURCE_FUNCTION
            msg.cache.version = spec.cache.version
        spill_inputs(msg, self.store)  # many inline inputs must not exceed 4 MiB
        return msg

    def _finish(self, active: ActiveRun, state: FlowRunState) -> None:
        row = active.row
        engine = active.engine
        row.state = state.value
        row.ended_at = self.clock.now()
        row.message = engine.flow_history[-1][2] if engine.flow_history else ""
        if state is FlowRunState.SUCCESS and engine.graph.result is not None:
            row.result = to_result_value(engine.result).SerializeToString()
        self._batch.flow_runs[row.id] = row
        if active.trace is not None:
            active.trace.finish(state, row.message)
        self._effects.append(functools.partial(self._deactivate, row.id))
        for listener in self.listeners:
            listener(row.id, None)


def _param_values(params: dict[str, Any]) -> dict[str, payload_pb2.Value]:
    return {name: to_result_value(value) for name, value in params.items()}


def _encoding(value: Any) -> str:
    """The encoding of a parameter's payload that is not json, or "" when all json."""
    if isinstance(value, EncodedValue):
        return "" if value.encoding == "json" else value.encoding or "(none)"
    if not isinstance(value, payload_pb2.Value):
        return type(value).__name__
    kind = value.WhichOneof("kind")
    meta = value.ref.metadata if kind == "ref" else value.inline.metadata
    encoding = meta.get("encoding", "")
    if encoding in STRUCTURAL:
        return next((e for e in map(_encoding, value.items) if e), "")
    return "" if encoding == "json" else encoding or "(none)"


def _check_json_params(graph: GraphSpec, params: Mapping[str, Any]) -> None:
    """Parameters that portable tasks read must be json (ParameterError otherwise)."""
    for name, (task, arg) in json_consumers(graph).params.items():
        encoding = _encoding(params.get(name))
        if encoding:
            raise ParameterError(
                f"task {task!r}, argument {arg!r}: parameter {name!r} is encoded as "
                f"{encoding}, but the task reads only json (it is portable or implemented "
                "in another language); pass a json value (docs/payloads.md)"
            )


#: Shared with the scheduler, which checks a schedule's parameters when it is created.
check_json_params = _check_json_params
