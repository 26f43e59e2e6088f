"""The run manager: hosts one engine per active flow run, durably.

Everything the engines are told is journaled, every state change is projected, and
both go into one WriteBatch that the server commits in one transaction. Effects on
the outside world (assignments to send, attempts to cancel) are held until the batch
that caused them is committed, so nothing is acknowledged that a crash could lose; a
batch whose commit failed is put back in front of what happened since and committed
again later (``detach``/``reattach``). After a restart each unfinished run's journal
is replayed (_recovery.py, docs/durability.md).

This module holds no gRPC code: servicers translate requests into calls here.
"""

from __future__ import annotations

import functools
import heapq
import json
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from headwater.v1 import payload_pb2, run_pb2
from headwater.wire import (
    FlowRunState,
    GraphSpec,
    JsonConsumers,
    Limits,
    TaskRunState,
    bind_params,
    failure_to_dict,
    json_consumers,
    message_budget,
    split_task_run_id,
    task_run_id,
)
from headwater_runtime.engine import (
    ENGINE_VERSION,
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
    RunRetried,
    RunTask,
    StateEntry,
    TaskFailed,
    TaskLost,
    TaskRunRecord,
    TaskSkipped,
    TaskSucceeded,
    WriteCache,
    replay,
)
from headwater_runtime.store import (
    CacheRow,
    FlowRunRow,
    LogRow,
    OpsWrites,
    RunAttemptRow,
    ScheduleRow,
    StateRow,
    Store,
    TaskRunRow,
    WriteBatch,
)
from headwater_runtime.tracing import active_tracer, extract, inject

from ._aside import WIDE_INPUTS, WIDE_RESULT, RunsAside
from ._assignments import (
    Dispatch,
    PendingAssignment,
    ReadyAttempts,
    input_width,
)
from ._children import (
    ChildRuns,
    NotRunning,
    SubflowStart,
    parent_fields,
    result_value,
    subflow_event,
    subflow_start,
)
from ._flows import FlowGraphs
from ._gc import Collector
from ._journal import (
    decode_entry,
    encode_entry,
    entry_value_ids,
    to_stored,
)
from ._params import (
    check_built_for,
    check_json_params,
    check_mapped_given,
    check_refs,
    check_types,
    param_payload_ids,
    param_values,
)
from ._queries import NoResult, refusal
from ._recovery import Recovery, Resumed, RunRecovery
from ._run_cache import RunCacheLookups, Split
from ._run_dispatch import RunDispatching
from ._sink import Effect, Sink
from ._values import SERVER_VALUES

if TYPE_CHECKING:
    from headwater_runtime.tracing import RunTracer

_RUNNING = FlowRunState.RUNNING.value
# The stored number of each state, without Enum's ``.value`` (a Python-level
# descriptor call): read for every row the projections write, three per task run.
_NUMBER = {state: state.value for state in TaskRunState}
_TERMINAL = frozenset(state for state in TaskRunState if state.is_terminal)
#: Worker reports that end an attempt (refused at once for a run being cancelled).
_OUTCOMES = (TaskSucceeded, TaskFailed, TaskSkipped)
_SUCCESS = frozenset(state for state in TaskRunState if state.is_success)


#: A task run no worker was handed (its name and holder).
_NO_WORKER: tuple[str, str | None] = ("", "")


def _no_snapshot(_flow_run_id: str, _run: TaskRunRecord) -> None:
    return None


def _no_notes(_flow_run_id: str, _notes: list[object]) -> None:
    return None


__all__ = [
    "Dispatch",
    "NoResult",
    "NotRunning",
    "PendingAssignment",
    "Recovery",
    "Resumed",
    "RunManager",
    "SubflowStart",
]


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
    delivered: dict[str, int] = field(default_factory=dict)  # key -> attempt delivered
    #: Its attempts in flight as the replay of its journal made them (engine ``replay``),
    #: until recovery has sent them again or left them to their workers (_recovery.py).
    replayed: dict[str, RunTask] = field(default_factory=dict)
    #: Where its writes go while it is started off the event loop (None: the shared
    #: sink of the run manager, once adopted).
    sink: Sink | None = None
    #: Built as a large run (its objects frozen away from the cycle collector, _gc).
    large: bool = False


@dataclass(frozen=True)
class PreparedRun:
    """A run checked, its engine built and started, ready to be stored
    (``RunManager.prepare_run``, which may run off the event loop): ``batch`` holds its
    start (journal, projections), written with ``row`` in one transaction
    (``store.create_flow_run(row, schedule, batch)``), then ``RunManager.adopt`` makes
    it live."""

    row: FlowRunRow
    active: ActiveRun
    batch: WriteBatch


class RunManager(FlowGraphs, RunCacheLookups, RunDispatching, RunRecovery, RunsAside):
    """Creates, drives, persists and recovers flow runs (flow graphs:
    _flows.py; cache lookups: _run_cache.py; resuming after a restart: _recovery.py;
    runs worked on off the loop: _aside.py).

    Args:
        store: where runs are kept.
        dispatch: where ready attempts go (after their commit).
        clock: the time source.
        limits: what the server accepts (graph sizes are checked by ``check_flow``).
    """

    def __init__(
        self, store: Store, dispatch: Dispatch, clock: Clock, limits: Limits | None = None
    ) -> None:
        self.store = store
        self.dispatch = dispatch
        self.clock = clock
        self.limits = limits or Limits()
        # Workers accept messages up to the server's limit (the gateway checks).
        self._assignment_budget = message_budget(self.limits.max_message_bytes)
        self.collector = Collector()
        self.collector.last_large_run_ended.append(self._drop_large_graphs)
        self.runs: dict[str, ActiveRun] = {}
        self._graphs: dict[tuple[str, str], GraphSpec] = {}
        self._sink = Sink()  # what waits for the commit pipeline
        self._timers: list[tuple[float, str]] = []
        self.listeners: list[Callable[[str, TaskRunRecord | None], None]] = []
        #: For a run worked on off the loop (set aside), whose changes the listeners
        #: are not told of one by one: called on that thread with each changed task
        #: run, returns what to keep of it until the run rejoins (the latest per task
        #: run) or None; ``notes_rejoined`` gets what was kept, on the loop. The
        #: watchers' snapshots (ServerCore).
        self.snapshot_aside: Callable[[str, TaskRunRecord], object | None] = _no_snapshot
        self.notes_rejoined: Callable[[str, list[object]], None] = _no_notes
        #: Called with a flow run's row (and its engine) whenever the run's own state
        #: changes (started, retried, ended), while the batch that stores it is open:
        #: webhooks add their deliveries to it (``ops``), metrics count.
        self.flow_listeners: list[Callable[[FlowRunRow, FlowRunEngine], None]] = []
        # (flow run, key) -> the worker's name and holder (``delivered``)
        self._workers: dict[tuple[str, str], tuple[str, str | None]] = {}
        # Decided once: with tracing off, runs carry no RunTracer and cost nothing.
        self.tracer = active_tracer()
        self.children = ChildRuns()
        #: Starts the child flow run of a dispatched subflow node (the server core sets
        #: it; called after the commit, like an assignment is sent).
        self.start_subflow: Callable[[SubflowStart], None] | None = None
        #: Submits an attempt with wide inputs once its Assignment is built off the
        #: loop (the server core sets it; called after the commit). Unset: submitted as
        #: any other, its Assignment built when sent.
        self.submit_wide: Callable[[PendingAssignment], None] | None = None
        #: Fires the due timers of a run of ``CANCEL_ASIDE`` task runs or more off the
        #: loop (the server core sets it): False when it cannot (then on the loop).
        self.timers_aside: Callable[[str], bool] | None = None
        #: Looks a task's cache up off the loop, then applies what it found (the server
        #: core sets it: ``WideWork.check_cache``). Unset: looked up where the run is
        #: worked on, at once.
        self.check_cache_later: Callable[[str, CheckCache, Split], None] | None = None
        #: Called with how many task runs ended in each terminal state where the
        #: per-task ``listeners`` were not told (a run started or cancelled off the loop).
        self.ended_listeners: list[Callable[[Mapping[TaskRunState, int]], None]] = []
        #: Called with (cache key, value, expiry) when a task's result is written to
        #: the cache (the server core keeps a Dask bridge's value held meanwhile).
        self.cache_written: Callable[[str, object, float | None], None] | None = None
        self.value_available: Callable[[object], bool] | None = None  # (RunCacheLookups)
        # Runs being cancelled on a reader thread (cancel_aside), with the calls for
        # them that came meanwhile, in order: carried out once they rejoin.
        self._aside: dict[str, list[Callable[[], object]]] = {}
        self._stored: dict[str, int] = {}  # runs to resume: what each stored (_recovery)
        self._cancelling: set[str] = set()  # of those, the runs being cancelled

    # -------------------------------------------------------------------- runs

    def prepare_run(
        self,
        flow_name: str,
        flow_version: str,
        parameters: Mapping[str, payload_pb2.Value],
        idempotency_key: str = "",
        trace_context: Mapping[str, str] | None = None,
        *,
        schedule: ScheduleRow | None = None,
        parent: tuple[str, str, int] | None = None,
        offered: frozenset[str] | None = None,
    ) -> PreparedRun:
        """Check a new run (ParameterError for bad parameters, NotFound for an unknown
        flow), build its row and its engine and start it into a sink of its own;
        nothing is stored and nothing leaves yet. Safe to call from a reader thread: a
        100k-task graph takes a while to build and start, and the event loop must not
        wait for it.
        ``parent`` (flow run id, task run key, attempt) makes it a child run.
        ``offered``: for a run of the latest version, the flow's code digest the
        newest connected builder offers (empty: none is connected); a stored build of
        other code is not reused (GraphBuildNeeded: a worker builds it again). None: a
        version asked for by name, run as it was built."""
        version, graph = self.graph(flow_name, flow_version)
        params = self.check_params(
            graph, version, parameters, offered if not flow_version else None
        )
        if parent is None and schedule is None:
            # A client's own values (a subflow's child gets stored results, a schedule
            # the values it was created with): a store read per payload referenced.
            check_refs(self.store, flow_name, parameters)
        now = self.clock.now()
        values = param_values(params)
        stored_params = run_pb2.FlowRun(parameters=values)
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
            engine_version=ENGINE_VERSION,
            payload_ids=param_payload_ids(values),
            **parent_fields(parent),
        )
        # A map over a long parameter or constant list makes its children at the
        # start: count them in.
        size = graph.weight() + sum(len(value.items) for value in parameters.values())
        with self.collector.building(size):
            active = self._build(row, graph, params, journal=None)
            active.trace = trace
            active.sink = Sink()
            self._run_attempt(active)
            self._process(active, active.journal.start())
            # By its task runs: a map over a long parameter makes its children at the
            # start (a cancel is then worked on off the loop, the end retired off it).
            active.large = len(active.engine.runs) >= self.collector.large
            batch, effects = active.sink.take()
            for effect in effects:  # laid out here, so that adopt() costs the loop little
                if type(effect) is ReadyAttempts:
                    effect.lay_out()
        active.sink.effects = effects  # carried out by adopt(), once the batch is stored
        return PreparedRun(row, active, batch)

    def adopt(self, prepared: PreparedRun) -> None:
        """Make a run live whose row and start were just stored together
        (``store.create_flow_run(row, schedule, prepared.batch)``): carry out what its
        start decided (hand its ready attempts to the dispatcher, a few calls however
        many they are) and arm its timers. On the event loop."""
        active = prepared.active
        sink, active.sink = active.sink, None
        assert sink is not None, "adopt() takes a run from prepare_run() once"
        self.runs[active.row.id] = active  # one that ended at once leaves with _deactivate
        self.children.link(active.row)
        if active.large:
            self.collector.large_run_started()
        for effect in sink.effects:
            effect()
        self._arm_timer(active)
        self._tell_ended(sink.ended)
        for listener in self.listeners:
            listener(active.row.id, None)
        row = active.row
        if row.parent_flow_run_id and not self.parent_running(
            row.parent_flow_run_id, row.parent_task_key, row.parent_attempt
        ):
            # The parent's attempt ended while the child was being created.
            self.cancel(row.id, f"the parent task run {row.parent_task_key!r} is over")

    def parent_running(self, parent_id: str, key: str, attempt: int) -> bool:
        """Whether attempt ``attempt`` of task run ``key`` of run ``parent_id`` runs."""
        active = self.runs.get(parent_id)
        return self.children.current(active.engine if active else None, key, attempt)

    def check_parent(self, parent_task_run_id: str, attempt: int) -> tuple[str, str, int]:
        """The parent link of a run a task starts while it runs: NotRunning unless that
        attempt runs now."""
        try:
            parent_id, key = split_task_run_id(parent_task_run_id)
        except ValueError as exc:
            raise NotRunning(str(exc)) from None
        if not self.parent_running(parent_id, key, attempt):
            raise NotRunning(
                f"attempt {attempt} of task run {parent_task_run_id!r} is not running: a "
                "child flow run can only be started by a running task"
            )
        return parent_id, key, attempt

    def create_run(
        self,
        flow_name: str,
        flow_version: str,
        parameters: Mapping[str, payload_pb2.Value],
        idempotency_key: str = "",
        trace_context: Mapping[str, str] | None = None,
        *,
        schedule: ScheduleRow | None = None,
        parent: tuple[str, str, int] | None = None,
    ) -> tuple[FlowRunRow, bool]:
        """Create and start a run in this thread (prepare, store, start). The same
        idempotency key returns the first run (Conflict when its parameters differ). A
        run fired by ``schedule`` records its id, and the schedule row (advanced past
        this fire) is stored in the same transaction as the run. ``parent`` (flow run
        id, task run key, attempt) makes it a child run."""
        prepared = self.prepare_run(
            flow_name,
            flow_version,
            parameters,
            idempotency_key,
            trace_context,
            schedule=schedule,
            parent=parent,
        )
        try:
            row, created = self.store.create_flow_run(prepared.row, schedule, prepared.batch)
        except BaseException:
            self.discard(prepared)
            raise
        if created:
            self.adopt(prepared)
        else:
            self.discard(prepared)
        return row, created

    @staticmethod
    def check_params(
        graph: GraphSpec,
        version: str,
        given: Mapping[str, payload_pb2.Value],
        offered: frozenset[str] | None = None,
    ) -> dict[str, Any]:
        """A run's parameters with defaults filled in, checked as far as the server
        can (server/_params.py): ParameterError, or GraphBuildNeeded when a
        value-dependent graph was built for other values."""
        params = bind_params(graph, dict(given))
        # First: values a worker will build (and convert) a graph for are not refused
        # here for not being converted yet ("5" for an int).
        check_built_for(graph, version, params, offered)
        check_mapped_given(graph, given)
        check_json_params(graph, params)
        check_types(graph, given)
        return params

    def _build(
        self,
        row: FlowRunRow,
        graph: GraphSpec,
        params: dict[str, Any],
        journal: list[JournalEntry] | None,
        seq: int = 0,
    ) -> ActiveRun:
        """An ActiveRun with its engine (new, or replayed from ``journal``); not yet
        registered in ``runs``."""
        holder: list[ActiveRun] = []

        def on_transition(run: TaskRunRecord, entry: StateEntry) -> None:
            if holder:
                self._project(holder[0], run, entry)
                if holder[0].trace is not None:
                    holder[0].trace.on_transition(run, entry)

        options: dict[str, Any] = {
            "auto_start": False,
            "on_transition": on_transition,
            # A child run is bounded by its node's timeout, not its flow's own.
            "timeout": None if row.parent_flow_run_id else graph.timeout,
            "seed": row.id,  # (a replay takes the journal's, "" in older journals)
        }
        in_flight: dict[str, RunTask] = {}
        if journal is None:
            engine = FlowRunEngine(graph, params, clock=self.clock, values=SERVER_VALUES, **options)
        else:
            engine = replay(
                graph,
                params,
                journal,
                clock=self.clock,
                values=SERVER_VALUES,
                in_flight=in_flight,
                **options,
            )
        active = ActiveRun(
            row=row,
            graph=graph,
            engine=engine,
            journal=JournaledEngine(engine, lambda e: self._record(active, e)),
            split_nodes=self.split_nodes(row, graph),
            consumers=json_consumers(graph),
            seq=seq,
            replayed=in_flight,
        )
        if journal is not None:
            for run in engine.runs.values():
                active.state_seqs[run.key] = len(run.history)
        holder.append(active)
        return active

    def handle(self, flow_run_id: str, event: Event) -> list[EventIgnored]:
        """Apply an event to a run; returns the refusals (stale or unknown attempts).
        An event for a run being cancelled off the loop is applied once it rejoins."""
        later = self._aside.get(flow_run_id)
        active = self.runs.get(flow_run_id)
        if active is None and later is None:
            return [EventIgnored(event, refusal(self.store, flow_run_id, event))]
        if later is not None:
            # The cancel under way ends every attempt; another outcome waits its turn.
            if flow_run_id in self._cancelling and isinstance(event, _OUTCOMES):
                why = f"stale attempt {event.attempt} of task run {event.key!r}"
                return [EventIgnored(event, f"{why}: the flow run is being cancelled")]
            later.append(functools.partial(self.handle, flow_run_id, event))
            return []
        assert active is not None
        if (
            (type(event) is TaskFailed and event.never_started)
            or (type(event) is TaskLost and event.given_back)
            or getattr(event, "ended_at", None) is not None
        ):
            row = active.row
            if row.engine_version != ENGINE_VERSION:
                # A run started by an older engine: its journal now holds an input that
                # engine would replay differently (as retry() says).
                row.engine_version = ENGINE_VERSION
                self._sink_of(active).batch.flow_runs[row.id] = row
        return self._process(active, active.journal.handle(event))

    def add_log(self, row: LogRow) -> None:
        """Keep a task run's log record (committed with the next batch)."""
        self._sink.batch.logs.append(row)

    def cancel(self, flow_run_id: str, reason: str) -> None:
        """Ask a run to stop (its running attempts are cancelled)."""
        self.handle(flow_run_id, CancelRequested(reason or "cancelled by request"))

    def fire_timers(self) -> None:
        """Fire due retry and timeout timers of every run."""
        now = self.clock.now()
        while self._timers and self._timers[0][0] <= now:
            _, run_id = heapq.heappop(self._timers)
            active = self.runs.get(run_id)
            if active is not None:
                active.armed_at = None
                if run_id in self._aside:
                    continue  # re-armed when it rejoins
                aside = self.timers_aside
                if aside is not None and self.worked_aside(active) and aside(run_id):
                    continue
                self._process(active, active.journal.fire_due_timers())

    @property
    def next_timer_at(self) -> float | None:
        """When the earliest retry or timeout timer of any run is due."""
        return self._timers[0][0] if self._timers else None

    # ------------------------------------------------------------------ commit

    def detach(self) -> tuple[WriteBatch, list[Effect]]:
        """What happened since the last detach: the writes to commit, and the effects
        to carry out once they are committed."""
        return self._sink.take()

    def reattach(self, batch: WriteBatch, effects: list[Effect]) -> None:
        """Put back a batch whose commit failed, in front of what happened since, so
        the next commit writes both in order (and carries out both effects after)."""
        self._sink.put_back(batch, effects)

    @property
    def has_writes(self) -> bool:
        """Whether anything waits to be committed."""
        return bool(self._sink)

    def flush(self) -> None:
        """Commit in this thread, then carry out the effects (tests and recovery; the
        server commits on its writer thread instead)."""
        batch, effects = self.detach()
        try:
            self.store.commit(batch)
        except BaseException:
            self.reattach(batch, effects)
            raise
        for effect in effects:
            effect()

    def end_traces(self, reason: str = "server stopped") -> None:
        """End the flow spans of runs still in progress (on shutdown), so the spans
        exported so far have their parent; a restart opens a resumed flow span."""
        for active in self.runs.values():
            if active.trace is not None:
                active.trace.finish(active.engine.state, reason)
                active.trace = None

    def rebuild(self, row: FlowRunRow, stored_size: int | None = None) -> ActiveRun:
        """A stored run's engine, replayed from its journal (not registered in ``runs``;
        may run on a reader thread). ``stored_size``: the run's ``Store.run_sizes``,
        when already read."""
        _, graph = self.graph(row.flow_name, row.flow_version)
        stored = run_pb2.FlowRun.FromString(row.parameters)
        params = {name: stored.parameters[name] for name in stored.parameters}
        rows = self.store.events(row.id)
        loaded = self.store.get_values(entry_value_ids(rows))
        journal = [decode_entry(e, loaded) for e in rows]
        # Large by what it stored too: a three-task graph with a 100,000-element map in
        # flight rebuilds 100,000 task runs.
        size = graph.weight()
        if size < self.collector.large:
            if stored_size is None:
                stored_size = self.store.run_sizes([row.id]).get(row.id, 0)
            size = max(size, stored_size)
        with self.collector.building(size):
            return self._build(row, graph, params, journal, rows[-1].seq if rows else 0)

    def retry(self, active: ActiveRun, reason: str) -> None:
        """Run an ended run (just rebuilt: ``rebuild``) again from its failure, as its
        next run attempt (engine/_rerun.py); on the event loop. The caller checked that
        the run may be retried and is not active. A run of ``CANCEL_ASIDE`` task runs
        or more is better retried in steps, its engine's part on a reader thread:
        ``begin_retry``, ``set_aside(working=True)``, ``retry_aside``, ``rejoin``,
        ``end_retry``."""
        self.begin_retry(active)
        self._process(active, active.journal.handle(RunRetried(reason)))
        self.end_retry(active)

    def retry_aside(self, active: ActiveRun, reason: str) -> None:
        """The engine's part of a retry (``retry``), for a run set aside: on a reader
        thread (every task run to run again is scheduled there)."""
        with self.collector.building(len(active.engine.runs)):
            self._process(active, active.journal.handle(RunRetried(reason)))

    def begin_retry(self, active: ActiveRun) -> None:
        """A retry's first step (``retry``): the run is live again, running."""
        row = active.row
        row.state = _RUNNING
        row.ended_at = None
        row.message = ""
        row.result = b""
        # The journal now holds an input older engines cannot read.
        row.engine_version = ENGINE_VERSION
        self.runs[row.id] = active
        if self.tracer is not None:
            from headwater_runtime.tracing import RunTracer  # OpenTelemetry: only when on

            # A new flow span for the new run attempt, in the run's trace.
            attempt = active.engine.run_attempt + 1
            parent = extract(row.trace_context)
            active.trace = RunTracer(self.tracer, row.flow_name, row.id, parent, attempt=attempt)

    def end_retry(self, active: ActiveRun) -> None:
        """A retry's last step (``retry``), once its engine's part is done: the run's
        row and its new run attempt are stored, its listeners told."""
        row = active.row
        if active.engine.state is FlowRunState.RUNNING:  # (it may have ended at once)
            self._sink.batch.flow_runs[row.id] = row
            self._run_attempt(active)
            for listener in self.listeners:
                listener(row.id, None)

    @property
    def ops(self) -> OpsWrites:
        """The operations rows of the batch being gathered (stored with the run state
        changes made in this same loop turn)."""
        return self._sink.batch.ops

    def _run_attempt(self, active: ActiveRun) -> None:
        """Record the run attempt the engine is in (started, or ended), and tell the
        flow listeners."""
        engine, row = active.engine, active.row
        started = next(
            (at for state, at, _ in reversed(engine.flow_history) if state is FlowRunState.RUNNING),
            row.started_at or row.created_at,
        )
        sink = self._sink_of(active)
        sink.batch.ops.run_attempts.append(
            RunAttemptRow(row.id, engine.run_attempt, started, row.state, row.ended_at, row.message)
        )
        for listener in self.flow_listeners:
            if active.sink is None:
                listener(row, engine)
            else:  # a run started off the loop: its listeners are told once it is adopted
                sink.effects.append(functools.partial(listener, row, engine))

    # ------------------------------------------------------------------ internals

    def _sink_of(self, active: ActiveRun) -> Sink:
        """Where a run's writes and effects go now."""
        return self._sink if active.sink is None else active.sink

    def _record(self, active: ActiveRun, entry: JournalEntry) -> None:
        active.seq += 1
        sink = self._sink_of(active)
        sink.batch.events.append(encode_entry(active.row.id, active.seq, entry, sink.values))

    def _project(self, active: ActiveRun, run: TaskRunRecord, entry: StateEntry) -> None:
        run_id = active.row.id
        seq = active.state_seqs.get(run.key, 1) + 1
        active.state_seqs[run.key] = seq
        failure = b""
        if entry.failure is not None:
            failure = json.dumps(failure_to_dict(entry.failure)).encode()
        self._sink_of(active).batch.states.append(
            StateRow(
                run_id,
                run.key,
                seq,
                _NUMBER[entry.state],
                entry.timestamp,
                entry.attempt,
                entry.message,
                failure,
            )
        )
        self._project_row(active, run, entry.timestamp)
        if run.state in _TERMINAL:
            self._workers.pop((run_id, run.key), None)
            active.delivered.pop(run.key, None)
        for child in self.children.orphaned(run_id, run):
            # The attempt that started it is over (ended, lost, replaced): so is it.
            why = f"the parent task run {run.key!r} ended {entry.state.name}"
            if active.sink is None:
                self.cancel(child, why)
            else:  # off the loop: the child is another run, cancelled once this is stored
                active.sink.effects.append(functools.partial(self.cancel, child, why))
        if active.sink is None:
            for listener in self.listeners:
                listener(run_id, run)
            return
        note = self.snapshot_aside(run_id, run)
        if note is not None:
            active.sink.notes[run.key] = note
        if run.state in _TERMINAL:  # off the loop: counted for ended_listeners
            ended = active.sink.ended
            ended[run.state] = ended.get(run.state, 0) + 1

    def _project_row(self, active: ActiveRun, run: TaskRunRecord, at: float) -> None:
        run_id = active.row.id
        sink = self._sink_of(active)
        result_id = ""
        if run.state in _SUCCESS and isinstance(run.result, payload_pb2.Value):
            result_id = sink.values.add(run.result)
        worker, holder = self._workers.get((run_id, run.key), _NO_WORKER)
        sink.batch.task_runs[(run_id, run.key)] = TaskRunRow(
            run_id,
            run.key,
            run.spec.id,
            run.map_index,
            _NUMBER[run.state],
            run.attempt,
            at,
            worker,
            run.cache_key or "",
            result_id,
            active.delivered.get(run.key, 0),
            holder,
        )

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
        active = self.runs.pop(flow_run_id, None)
        if active is not None and active.large:
            self.collector.retire(functools.partial(_release, active))

    def discard(self, prepared: PreparedRun) -> None:
        """Forget a prepared run that was not stored (its idempotency key named an
        existing run, or the store refused it)."""
        if prepared.active.large:
            self.collector.large_run_started()
            self.collector.retire(functools.partial(_release, prepared.active))

    def _arm_timer(self, active: ActiveRun) -> None:
        due = active.engine.next_timer_at
        if active.sink is not None:
            return  # armed when adopted: the timer heap belongs to the event loop
        if due is not None and due != active.armed_at:
            active.armed_at = due
            heapq.heappush(self._timers, (due, active.row.id))

    def wide_result(self, width: int) -> bool:
        """Whether a worker's result of ``width`` elements is applied off the loop
        (``WideWork.expand``)."""
        return width >= min(WIDE_RESULT, self.collector.large)

    def _process(
        self, active: ActiveRun, commands: list[Command], *, whole_run: bool = False
    ) -> list[EventIgnored]:
        """Carry out an engine's decisions: writes into its sink, effects after the
        commit. Ready attempts are handed over in groups (one effect per run of
        consecutive RunTasks, grouped by task type) and cancels likewise, so that a
        run making 100,000 attempts ready costs the event loop a few calls."""
        sink = self._sink_of(active)
        run_id = active.row.id
        ignored: list[EventIgnored] = []
        ready: dict[str, list[PendingAssignment]] | None = None
        cancels: dict[tuple[str, int], str] | None = None
        queue = deque(commands)  # a 10,000-task fan-out starts with 10,000 commands
        while queue:
            command = queue.popleft()
            if type(command) is RunTask:
                if command.run.spec.subflow is not None and self.start_subflow is not None:
                    start = subflow_start(active.row, command, active.trace)
                    sink.effects.append(functools.partial(self.start_subflow, start))
                    continue
                pending = self._assignment(active, command)
                wide = self.submit_wide is not None and (
                    input_width(command.inputs) >= min(WIDE_INPUTS, self.collector.large)
                )
                if wide:  # a reduce over a wide map: its own effect, in order
                    assert self.submit_wide is not None
                    ready = cancels = None
                    sink.effects.append(functools.partial(self.submit_wide, pending))
                    continue
                if ready is None:
                    ready, cancels = {}, None
                    sink.effects.append(ReadyAttempts(self.dispatch, run_id, ready))
                ready.setdefault(pending.task_type, []).append(pending)
            elif isinstance(command, CancelTask):
                if cancels is None:
                    ready, cancels = None, {}
                    cancel = functools.partial(self.dispatch.cancel_many, run_id, cancels)
                    # The whole run's attempts (a run cancelled aside): no lookup each.
                    sink.effects.append(
                        functools.partial(cancel, whole_run=True) if whole_run else cancel
                    )
                cancels[(task_run_id(run_id, command.run.key), command.attempt)] = command.reason
            elif isinstance(command, CheckCache):
                split = active.split_nodes.get(command.run.spec.id)
                later = self.check_cache_later
                cache = command.run.spec.cache
                by_function = cache is not None and cache.by_function  # (no store read)
                if later is not None and active.sink is None and not by_function:
                    # On the loop: store reads, and a hit may make a wide map's children.
                    later(run_id, command, split)
                    continue
                queue.extend(active.journal.handle(self.check_cache(command, split)))
            elif isinstance(command, WriteCache):
                value_id = to_stored(command.value, sink.values).value_id
                if value_id:
                    sink.batch.cache.append(
                        CacheRow(command.cache_key, value_id, command.expires_at)
                    )
                    if self.cache_written is not None:
                        written = functools.partial(
                            self.cache_written, command.cache_key, command.value, command.expires_at
                        )
                        if active.sink is None:
                            written()
                        else:  # off the loop (a run set aside): on it, with the effects
                            sink.effects.append(written)
            elif isinstance(command, FlowFinished):
                ready = cancels = None  # what follows comes after the run's end
                self._finish(active, command.state)
            elif isinstance(command, EventIgnored):
                ignored.append(command)
        self._arm_timer(active)
        return ignored

    def _child_ended(self, row: FlowRunRow, engine: FlowRunEngine) -> None:
        """A child run ended: unlink it from its parent and report to a subflow node."""
        self.children.unlink(row)
        self._report_to_parent(row, engine)

    def _report_to_parent(self, row: FlowRunRow, engine: FlowRunEngine) -> None:
        """A child of a subflow node ended: the node's attempt ends the same way, in
        the same batch. (A flow a task started is waited for by the task itself.)"""
        later = self._aside.get(row.parent_flow_run_id)
        if later is not None:
            later.append(functools.partial(self._report_to_parent, row, engine))
            return
        parent = self.runs.get(row.parent_flow_run_id)
        key, attempt = row.parent_task_key, row.parent_attempt
        node = parent.engine.runs.get(key) if parent is not None else None
        if parent is None or node is None or node.spec.subflow is None:
            return
        if not self.children.current(parent.engine, key, attempt):
            return  # the attempt is over already (it timed out, or the parent was cancelled)
        state = FlowRunState(row.state)
        result = result_value(engine) if state is FlowRunState.SUCCESS else None
        event = subflow_event(row, result, self.limits, engine)
        self._process(parent, parent.journal.handle(event))

    def _finish(self, active: ActiveRun, state: FlowRunState) -> None:
        row = active.row
        engine = active.engine
        row.state = state.value
        row.ended_at = self.clock.now()
        row.message = engine.flow_history[-1][2] if engine.flow_history else ""
        sink = self._sink_of(active)
        if state is FlowRunState.SUCCESS and engine.graph.result is not None:
            row.result = to_stored(engine.result, sink.values).SerializeToString()
        sink.batch.flow_runs[row.id] = row
        self._run_attempt(active)
        if active.trace is not None:
            active.trace.finish(state, row.message)
        sink.effects.append(functools.partial(self._deactivate, row.id))
        if row.parent_flow_run_id:
            if active.sink is None:
                self._child_ended(row, engine)
            else:  # started privately, off the loop: the parent is told once it is adopted
                sink.effects.append(functools.partial(self._child_ended, row, engine))
        if active.sink is None:
            for listener in self.listeners:
                listener(row.id, None)


def _release(active: ActiveRun) -> None:
    """Break the reference cycles of a large run the manager is done with (its
    engine's, and the journal and observer closures that point back at the ActiveRun),
    so that reference counting frees it at once, although it is frozen out of the cycle
    collector's sight (_gc.py)."""
    active.engine.release()
    active.journal.record = _forget


def _forget(entry: JournalEntry) -> None:
    """The journal of a released run records nothing."""
