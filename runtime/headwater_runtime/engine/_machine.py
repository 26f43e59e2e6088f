"""The flow run state machine: events in, commands out. No I/O, no threads, no clock
reads other than the injected one.

Hosts (the embedded thread pool, the Dask executor, the gRPC server) feed it events
and carry out its commands. It knows nothing about how tasks execute.

Bookkeeping is per node (a task of the graph) and per run (a node's single run, or a
mapped node's parent run plus one child run per element):

* a node waits for its *whole* upstreams to complete (single run terminal, or mapped
  parent expanded and every child terminal);
* a mapped node that maps over another mapped node's output is *element-wise*: it
  expands as soon as that node has expanded, and child i waits only for upstream
  child i, so chains of maps stream without waiting for a whole level.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from headwater.wire import (
    TERMINAL_TASK_STATES,
    FailureInfo,
    FlowRunState,
    FromTask,
    GraphSpec,
    InputSpec,
    Param,
    TaskRunState,
    bind_params,
    child_key,
    iter_task_refs,
)

from ._events import (
    ATTEMPT_EVENTS,
    MAX_GIVEN_BACK,
    WORKER_LOST,
    AttemptEvent,
    CacheChecked,
    CancelRequested,
    CancelTask,
    CheckCache,
    Command,
    Event,
    EventIgnored,
    FlowFinished,
    RunRetried,
    RunTask,
    TaskFailed,
    TaskLost,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
    WriteCache,
    stale_reason,
)
from ._inputs import attempt_inputs, resolve
from ._nodes import Clock, FlowRunFailure, Node, final_states, unmappable
from ._policies import DELAY_RULE, Tally, Verdict, evaluate_trigger, retry_delay
from ._records import AttemptRecord, StateEntry, TaskRunRecord
from ._rerun import carry_over, reopen
from ._states import REOPENED, TRANSITIONS, IllegalTransition
from ._values import PYTHON_VALUES, ValueOps

S = TaskRunState
_RUN = Verdict.RUN


_TIMEOUT = 0
_RETRY = 1
_RUN_TIMEOUT = 2  # the run's own time limit (key "", attempt: the run attempt)

#: A StateEntry made without its Python-level ``__new__`` (a named tuple's): four
#: per task run, on the engine's hottest path.
_new_entry = tuple.__new__
_RUNNING = FlowRunState.RUNNING


class FlowRunEngine:
    """Drives one flow run of a validated GraphSpec.

    Args:
        graph: the compiled flow (validated here).
        params: parameter values by name (defaults are filled in; unknown or missing
            ones raise ParameterError).
        clock: the time source.
        values: operations on result values (live Python objects by default).
        max_concurrency: most task runs in flight at once (None: unbounded; the host's
            own capacity also bounds it).
        auto_start: dispatching an attempt also marks it RUNNING (hosts that start
            work immediately); otherwise the host reports TaskStarted.
        max_lost: how many times a run may be re-dispatched after losing its worker.
        on_transition: observer called with (run, entry) for every state change.
        timeout: seconds each run attempt may take from its start; then its unfinished
            task runs are cancelled and it ends FAILED (None: no limit). A host passes
            the graph's ``timeout`` for a top-level run, nothing for a child run (its
            node's timeout bounds it).
        seed: what spreads this run's retry delays (``RetryPolicy.jitter``) apart from
            other runs': hosts pass the flow run's id (journaled with START, so a
            replay keeps it).

    ``delay_rule`` (``retry_delay``'s ``rule``) is the current one for a new run; a
    replay sets the one its START entry recorded.
    """

    def __init__(
        self,
        graph: GraphSpec,
        params: Mapping[str, Any] | None = None,
        *,
        clock: Clock,
        values: ValueOps = PYTHON_VALUES,
        max_concurrency: int | None = None,
        auto_start: bool = True,
        max_lost: int = 3,
        on_transition: Callable[[TaskRunRecord, StateEntry], None] | None = None,
        timeout: float | None = None,
        seed: str = "",
    ) -> None:
        graph.validate()
        graph = graph.topological()
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.graph = graph
        self.clock = clock
        self.values = values
        self.max_concurrency = max_concurrency
        self.auto_start = auto_start
        self.max_lost = max_lost
        self.on_transition = on_transition
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.timeout = timeout
        self.seed = seed
        self.delay_rule = DELAY_RULE
        self.params = bind_params(graph, params or {})
        self.state = FlowRunState.PENDING
        #: The run attempt: 1, then one more each time the run is retried (RunRetried).
        self.run_attempt = 1
        self.flow_history: list[tuple[FlowRunState, float, str]] = []
        self.result: Any = None
        self.cancel_reason: str | None = None
        #: Why the run was stopped for taking longer than ``timeout`` (None: it was not).
        self.timed_out: str | None = None
        #: The task runs that were running when it was (what it was waiting for).
        self.interrupted: list[str] = []
        self.runs: dict[str, TaskRunRecord] = {}
        self._nodes: dict[str, Node] = {}
        self._out: list[Command] = []
        self._ready: deque[TaskRunRecord] = deque()
        self._settle: deque[TaskRunRecord] = deque()
        self._timers: list[tuple[float, int, int, str, int]] = []
        self._timer_seq = 0
        # Task runs given back by their workers, how many times (TaskLost.given_back).
        self._given_back: dict[str, int] = {}
        # Task runs whose CheckCache went out and whose CacheChecked has not come (a host
        # may look the cache up later, off its event loop: ``pending_cache_checks``).
        self._checking: set[str] = set()
        self._in_flight = 0
        self._unfinished = 0
        # Mapped children dropped by a flow run retry, by key: their successors take over
        # their attempts and history, so attempt numbers (the fencing tokens) never
        # repeat (engine/_rerun.py).
        self._prior: dict[str, TaskRunRecord] = {}
        self._build()

    # ------------------------------------------------------------------ public API

    def start(self) -> list[Command]:
        """Begin the run: returns the first commands (ready tasks, cache checks)."""
        if self.state is not FlowRunState.PENDING:
            raise RuntimeError("flow run already started")
        self._set_flow_state(FlowRunState.RUNNING, "")
        if self.cancel_reason is not None:
            self._cancel(self.cancel_reason)
            return self._flush()
        self.arm_run_timeout()
        for node in self._nodes.values():
            if node.whole_remaining == 0 and node.elem_remaining == 0:
                self._evaluate_node(node)
        return self._flush()

    def handle(self, event: Event) -> list[Command]:
        """Apply one event; returns the resulting commands."""
        self._apply(event)
        return self._flush()

    def handle_many(self, events: Iterable[Event]) -> list[Command]:
        """Apply several events in order; returns the resulting commands."""
        for event in events:
            self._apply(event)
        return self._flush()

    def resend(self, key: str) -> RunTask:
        """The RunTask of an attempt already dispatched, again: same attempt number, same
        inputs; it changes nothing. For a host that cannot know whether the attempt
        reached a worker (a server restarted before recording its delivery)."""
        run = self.runs[key]
        if not run.dispatched:
            raise ValueError(f"task run {key!r} has no attempt in flight")
        deadline = None
        if self.auto_start and run.spec.timeout is not None and run.attempts:
            deadline = run.attempts[-1].started_at + run.spec.timeout
        return RunTask(run, run.attempt, self._inputs(run), deadline)

    def pending_cache_checks(self) -> list[CheckCache]:
        """The CheckCache of every task run still waiting for its CacheChecked, again
        (same inputs; it changes nothing). For a host that looks the cache up after
        the event that asked for it, and restarted before that lookup's CacheChecked
        was journaled: replayed, those task runs would wait for it for good."""
        checks = []
        for key in sorted(self._checking):
            run = self.runs.get(key)
            if run is not None and run.state is S.SCHEDULED and not run.dispatched:
                checks.append(CheckCache(run, self._inputs(run)))
        return checks

    def unlink(self) -> None:
        """Break the cycles among this run's nodes and task runs, keeping what a reader
        of the ended run sees: every task run in ``runs``, with its history, attempts,
        result and mapped children (a task run no longer names its node, nor a child
        its parent). For an embedded run's last FlowRun going: reference counting then
        frees the run at once, without the cycle collector. The engine is unusable
        afterwards."""
        self.on_transition = None
        for node in self._nodes.values():
            node.whole_sources = node.elem_sources = []
            node.whole_dependents = node.elem_dependents = []
            node.shared_inputs = node.whole_tally = None
        for run in self.runs.values():
            run.unlink()
        self._ready.clear()
        self._settle.clear()
        self._checking.clear()
        self._prior = {}

    def release(self) -> None:
        """Break the references that tie this run's nodes and task runs into cycles
        (node <-> task run, upstream <-> downstream node, mapped parent <-> child), so
        that reference counting frees them as soon as the engine is dropped, without
        the cycle collector (which scans the whole heap: ~0.4 s for a 100,000-task
        run). For a host done with a finished run; the engine is unusable afterwards:
        its task runs and nodes are let go of one at a time (``runs`` ends empty; a
        record someone else holds keeps its state, history and result), so that a host
        can free a 100,000-task run on a thread of its own without holding the GIL for
        the whole cascade. ``result`` and ``flow_history`` stay."""
        self.unlink()
        for run in self.runs.values():
            run.release()  # (its children too)
        runs, nodes = self.runs, self._nodes
        while runs:
            runs.popitem()
        while nodes:
            nodes.popitem()

    @property
    def next_timer_at(self) -> float | None:
        """When the earliest retry or timeout timer is due (None: no timers)."""
        return self._timers[0][0] if self._timers else None

    def fire_due_timers(self) -> list[Command]:
        """Fire every timer due at the clock's current time."""
        now = self.clock.now()
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, key, attempt = heapq.heappop(self._timers)
            if kind == _RUN_TIMEOUT:
                if self.state is FlowRunState.RUNNING and attempt == self.run_attempt:
                    self._time_out()
                continue
            run = self.runs[key]
            if run.attempt != attempt:
                continue
            if kind == _TIMEOUT and run.state is S.RUNNING:
                self._out.append(CancelTask(run, attempt, "timed out"))
                timeout = run.spec.timeout
                what = "subflow" if run.spec.subflow is not None else "task"
                failure = FailureInfo(
                    type="headwater.TaskTimeout",
                    message=f"{what} {run.name!r} exceeded its timeout of {timeout:g}s",
                    timed_out=True,
                )
                self._attempt_failed(run, failure)
            elif kind == _RETRY and run.state is S.RETRYING:
                self._schedule(run, f"retry {run.retries_used} of {run.spec.retry.max_retries}")
        return self._flush()

    @property
    def finished(self) -> bool:
        """Whether the flow run has ended (SUCCESS, FAILED or CANCELLED)."""
        return self.state.is_terminal

    @property
    def in_flight(self) -> int:
        """Attempts dispatched and not yet finished."""
        return self._in_flight

    def failed_runs(self) -> list[FlowRunFailure]:
        """Why the run failed: every task run that raised or timed out (root causes),
        the task runs its own timeout stopped while they ran, then reference task runs
        that did not succeed for another reason (their trigger failed, they were
        cancelled)."""
        roots = [
            FlowRunFailure(r.key, r.state, r.failure)
            for r in self.runs.values()
            if r.state is S.FAILED or r.state is S.TIMED_OUT
        ]
        seen = {f.key for f in roots}
        for key in self.interrupted:
            run = self.runs.get(key)
            if run is not None and run.state.is_failure and key not in seen:
                roots.append(FlowRunFailure(key, run.state, run.failure))
                seen.add(key)
        for node in self._reference_nodes():
            runs = node.run.children if node.run.state is S.MAPPED else [node.run]
            for run in runs or ():
                if run.state.is_failure and run.key not in seen:
                    roots.append(FlowRunFailure(run.key, run.state, run.failure))
        return roots

    def _reference_failed(self) -> bool:
        for node in self._reference_nodes():
            run = node.run
            if run.state.is_failure:
                return True
            if run.state is S.MAPPED and any(c.state.is_failure for c in run.children or ()):
                return True
        return False

    def validate(self) -> None:
        """Check the engine's invariants; raises AssertionError describing a breach."""
        in_flight = unfinished = 0
        for run in self.runs.values():
            assert run.history[-1].state is run.state, f"{run.key}: history/state mismatch"
            for before, after in zip(run.history, run.history[1:], strict=False):
                reopened = before.state.is_terminal and after.state is REOPENED
                assert reopened or after.state in TRANSITIONS[before.state], (
                    f"{run.key}: illegal {before.state.name} -> {after.state.name} in history"
                )
            if not run.state.is_terminal:
                unfinished += 1
            if run.dispatched:
                in_flight += 1
                assert run.state in (S.SCHEDULED, S.RUNNING), f"{run.key} dispatched but {run}"
            if run.state is S.MAPPED:
                assert run.children is not None, f"{run.key}: MAPPED without children"
            started = len(run.attempts)
            assert started == run.attempt if self.auto_start else started <= run.attempt, (
                f"{run.key}: attempt counter {run.attempt} vs {started} attempt records"
            )
        assert in_flight == self._in_flight, f"in flight {self._in_flight} != {in_flight}"
        assert unfinished == self._unfinished, f"unfinished {self._unfinished} != {unfinished}"
        if self.max_concurrency is not None:
            assert self._in_flight <= self.max_concurrency, "max_concurrency exceeded"
        if self.state.is_terminal:
            assert unfinished == 0, f"flow {self.state.name} with {unfinished} unfinished runs"
            assert not self._ready, "flow finished with runs still queued"

    # ------------------------------------------------------------------- building

    def _build(self) -> None:
        now = self.clock.now()
        pending = _new_entry(StateEntry, (S.PENDING, now, 0, "", None))  # shared: immutable
        for index, spec in enumerate(self.graph.tasks):
            node = Node(spec, index)
            node.run = TaskRunRecord(spec.id, spec, node, -1, None, now, pending)
            self.runs[spec.id] = node.run
            self._nodes[spec.id] = node
        self._unfinished = len(self._nodes)
        upstreams = self.graph.upstreams()
        nodes = self._nodes
        for node in nodes.values():
            spec = node.spec
            if spec.mapped is None:
                # The common case: every upstream is a whole one (computed by validate()).
                sources = node.whole_sources
                for dep_id in upstreams[spec.id]:
                    upstream = nodes[dep_id]
                    sources.append(upstream)
                    upstream.whole_dependents.append(node)
                node.whole_remaining = len(sources)
                continue
            elementwise: set[str] = set()
            if spec.mapped is not None:
                for arg in spec.mapped:
                    src = spec.inputs[arg]
                    # ``b.map(a)`` over a mapped ``a`` is element-wise; ``b.map(a[0])``
                    # indexes the list of a's results, like any other consumer.
                    if (
                        isinstance(src, FromTask)
                        and not src.path
                        and self._nodes[src.task_id].spec.mapped is not None
                    ):
                        elementwise.add(src.task_id)
            whole: dict[str, None] = {}
            for arg, src in spec.inputs.items():
                if (
                    spec.mapped is not None
                    and arg in spec.mapped
                    and isinstance(src, FromTask)
                    and src.task_id in elementwise
                ):
                    continue  # element-wise: child i waits for upstream child i only
                for ref in iter_task_refs(src):
                    whole[ref.task_id] = None
            for dep in spec.wait_for:
                whole[dep] = None
            for dep_id in whole:
                upstream = self._nodes[dep_id]
                node.whole_sources.append(upstream)
                upstream.whole_dependents.append(node)
            for dep_id in sorted(elementwise):
                upstream = self._nodes[dep_id]
                node.elem_sources.append(upstream)
                upstream.elem_dependents.append(node)
            node.whole_remaining = len(node.whole_sources)
            node.elem_remaining = len(node.elem_sources)

    # ----------------------------------------------------------------- transitions

    def _transition(
        self,
        run: TaskRunRecord,
        state: TaskRunState,
        message: str = "",
        failure: FailureInfo | None = None,
        *,
        reopen: bool = False,
        at: float | None = None,
    ) -> None:
        # ``reopen``: a flow run retry sends a terminal run back to PENDING (_rerun.py).
        # ``at``: the state's time, when not now (an attempt's reported start).
        allowed = reopen and run.state.is_terminal and state is REOPENED
        if not allowed and state not in TRANSITIONS[run.state]:
            history = ", ".join(f"{e.state.name}@{e.attempt}" for e in run.history)
            raise IllegalTransition(
                f"task run {run.key!r}: {run.state.name} -> {state.name} is not allowed "
                f"(history: {history})"
            )
        when = self.clock.now() if at is None else at
        entry = _new_entry(StateEntry, (state, when, run.attempt, message, failure))
        retrying = run.state is S.RETRYING
        run.state = state
        run._history.append(entry)
        if self._checking and state is not S.SCHEDULED:
            self._checking.discard(run.key)  # (a check it waited for is moot: cancelled)
        if state in TERMINAL_TASK_STATES:
            self._unfinished -= 1
            if failure is not None:
                run.failure = failure
            elif retrying and run._attempts:
                # Cancelled while it waited to be retried: the run reports the failure
                # it waited after (it said only "CANCELLED", where a server shows the
                # error; a user trial). Its history entry stays as it was.
                run.failure = run._attempts[-1].failure
            self._settle.append(run)
        if self.on_transition is not None:
            self.on_transition(run, entry)

    # ------------------------------------------------------------------- events

    def _apply(self, event: Event) -> None:
        if type(event) is TaskSucceeded and self.state is _RUNNING:
            # The common report, in short: the current attempt of a dispatched run
            # succeeded (anything unusual takes the general path below).
            run = self.runs.get(event.key)
            if (
                run is not None
                and run.dispatched
                and run.attempt == event.attempt
                and run.state is S.RUNNING
                and not event.cached
                and not event.cache_key
                and run.spec.cache is None
            ):
                end = self._ended_at(run, event.ended_at)
                self._attempt_done(run, at=end)
                run.result = event.value
                self._transition(run, S.SUCCESS, at=end)
                run.compact()
                return
        if isinstance(event, RunRetried):
            reopen(self, event)  # engine/_rerun.py: this module is large enough
            return
        if self.state is FlowRunState.PENDING and isinstance(event, CancelRequested):
            self.cancel_reason = event.reason  # applied by start()
            return
        if self.state is not FlowRunState.RUNNING and not isinstance(event, ATTEMPT_EVENTS):
            self._out.append(EventIgnored(event, f"flow run is {self.state.name}"))
            return
        if isinstance(event, CancelRequested):
            self._cancel(event.reason)
            return
        run = self.runs.get(event.key)
        if run is None:
            self._out.append(EventIgnored(event, f"unknown task run {event.key!r}"))
            return
        if isinstance(event, CacheChecked):
            self._cache_checked(run, event)
            return
        if self.state is not FlowRunState.RUNNING or not (
            run.attempt == event.attempt and run.dispatched
        ):
            self._out.append(self._stale(run, event))
            return
        if run.state is S.SCHEDULED:
            if type(event) is TaskFailed and event.never_started:
                # No worker took the attempt (a schedule_to_start_timeout): it fails
                # from SCHEDULED, with no RUNNING state and no attempt record.
                self._attempt_failed(run, event.failure)
                return
            # An outcome may arrive without its TaskStarted (lost, or never sent by a
            # minimal worker): the attempt evidently started.
            at = event.at if type(event) is TaskStarted else getattr(event, "started_at", None)
            self._start_attempt(run, at)
        if isinstance(event, TaskStarted):
            pass
        elif isinstance(event, TaskSucceeded):
            end = self._ended_at(run, event.ended_at)
            self._attempt_done(run, at=end)
            run.result = event.value
            if event.cache_key:
                run.cache_key = event.cache_key
            if event.cached:
                self._transition(run, S.CACHED, f"cache hit for key {run.cache_key}", at=end)
                return
            self._transition(run, S.SUCCESS, at=end)
            run.compact()
            cache = run.spec.cache
            if cache is not None and run.cache_key:  # "" = no key could be derived
                expires = None if cache.expiry is None else self.clock.now() + cache.expiry
                self._out.append(WriteCache(run, run.cache_key, event.value, expires))
        elif isinstance(event, TaskFailed):
            self._attempt_failed(run, event.failure, self._ended_at(run, event.ended_at))
        elif isinstance(event, TaskSkipped):
            end = self._ended_at(run, event.ended_at)
            self._attempt_done(run, S.SKIPPED, at=end)
            self._transition(run, S.SKIPPED, event.reason, at=end)
        elif isinstance(event, TaskLost):
            self._lost(run, event.reason, given_back=event.given_back)

    def _stale(self, run: TaskRunRecord, event: AttemptEvent) -> EventIgnored:
        """Refuse a report about an attempt that is not the current, dispatched one,
        saying what became of that attempt."""
        flow = None if self.state is FlowRunState.RUNNING else self.state
        last = run.history[-1]
        ended: TaskRunState | None
        if run.state.is_terminal and last.attempt == event.attempt:
            # What a host whose engine is gone tells from the stored history alone.
            ended, failure = run.state, last.failure
        else:
            # An attempt that ended while the flow ran has a record (an outcome without
            # TaskStarted, a loss included, starts it first), unless it failed before
            # any worker started it (TaskFailed.never_started).
            record = next((a for a in run.attempts if a.number == event.attempt), None)
            ended, failure = (record.outcome, record.failure) if record else (None, None)
        lost = failure is not None and failure.type == WORKER_LOST
        reason = stale_reason(
            run.key, event.attempt, ended=ended, lost=lost, current=run.attempt, flow=flow
        )
        return EventIgnored(event, reason)

    def _start_attempt(self, run: TaskRunRecord, at: float | None = None) -> float | None:
        """Mark the current attempt RUNNING (at ``at``, TaskStarted's, kept between its
        SCHEDULED state and now); returns its deadline (None: no timeout), which counts
        from now: the worker times the attempt itself, this is the backstop."""
        now = self.clock.now()
        at = now if at is None else min(max(at, run._history[-1].timestamp), now)
        self._transition(run, S.RUNNING, at=at)
        run._attempts.append(AttemptRecord(run.attempt, at))
        timeout = run.spec.timeout
        if timeout is None:
            return None
        self._push_timer(now + timeout, _TIMEOUT, run)
        return now + timeout

    def _ended_at(self, run: TaskRunRecord, at: float | None) -> float:
        """When the current (RUNNING) attempt ended: ``at``, its reporter's clock, kept
        between its RUNNING state and now; now when not given. An outcome a worker held
        while the server was away arrives late: its attempt ended when it says."""
        now = self.clock.now()
        return now if at is None else min(max(at, run._history[-1].timestamp), now)

    def _attempt_done(
        self,
        run: TaskRunRecord,
        outcome: TaskRunState = S.SUCCESS,
        failure: FailureInfo | None = None,
        *,
        at: float | None = None,
    ) -> None:
        """Close the current attempt's record (ended ``at``, else now) and free its
        slot."""
        run.dispatched = False
        self._in_flight -= 1
        attempts = run._attempts  # in progress: the list itself (never compacted yet)
        if attempts and attempts[-1].ended_at is None:
            record = attempts[-1]
            record.ended_at = self.clock.now() if at is None else at
            record.outcome = outcome
            record.failure = failure

    def _attempt_failed(
        self, run: TaskRunRecord, failure: FailureInfo, at: float | None = None
    ) -> None:
        outcome = S.TIMED_OUT if failure.timed_out else S.FAILED
        self._attempt_done(run, outcome, failure, at=at)
        policy = run.spec.retry
        retryable = failure.retryable and failure.type not in policy.non_retryable
        if retryable and run.retries_used < policy.max_retries:
            run.retries_used += 1
            delay = retry_delay(policy, run.retries_used, run.key, self.seed, self.delay_rule)
            what = "timed out" if failure.timed_out else "failed"
            self._transition(
                run,
                S.RETRYING,
                f"attempt {run.attempt} {what}: {failure}; retrying in {delay:g}s",
                failure,
                at=at,
            )
            if delay > 0:
                self._push_timer(self.clock.now() + delay, _RETRY, run)
            else:
                self._schedule(run, f"retry {run.retries_used} of {policy.max_retries}")
        else:
            self._transition(run, outcome, str(failure), failure, at=at)

    def _lost(self, run: TaskRunRecord, reason: str = "", *, given_back: bool = False) -> None:
        """Re-dispatch an attempt whose worker vanished (or gave it back), without
        using up a retry. Losses count towards ``max_lost``; give-backs only towards
        ``MAX_GIVEN_BACK`` (a worker that gives back whatever it gets)."""
        if given_back:
            count = self._given_back[run.key] = self._given_back.get(run.key, 0) + 1
            why = reason or f"the worker running {run.name!r} gave it back"
            over = count > MAX_GIVEN_BACK
        else:
            count = run.lost_count = run.lost_count + 1
            why = reason or f"the worker running {run.name!r} was lost"
            over = count > self.max_lost
        failure = FailureInfo(
            type=WORKER_LOST,
            message=f"{why} ({count} time(s))",
            retryable=False,
        )
        self._attempt_done(run, S.CANCELLED, failure)
        if over:
            self._transition(run, S.FAILED, str(failure), failure)
            return
        if run.state is S.RUNNING:
            self._transition(run, S.SCHEDULED, f"{why}; dispatching again")
        self._ready.appendleft(run)

    def _cache_checked(self, run: TaskRunRecord, event: CacheChecked) -> None:
        self._checking.discard(run.key)
        if run.state is not S.SCHEDULED or run.dispatched:
            self._out.append(EventIgnored(event, f"no cache check pending for {run.key!r}"))
            return
        run.cache_key = event.cache_key
        entry = event.entry
        if entry is not None and (entry.expires_at is None or entry.expires_at > self.clock.now()):
            run.result = entry.value
            self._transition(run, S.CACHED, f"cache hit for key {event.cache_key}")
        else:
            self._ready.append(run)

    def arm_run_timeout(self) -> None:
        """Start the clock of the run's ``timeout`` for its current run attempt (at its
        start, and when it is retried)."""
        if self.timeout is not None:
            self._timer_seq += 1
            at = self.clock.now() + self.timeout
            heapq.heappush(self._timers, (at, self._timer_seq, _RUN_TIMEOUT, "", self.run_attempt))

    def _time_out(self) -> None:
        """The run took longer than its timeout: stop everything; it ends FAILED."""
        assert self.timeout is not None
        self.timed_out = f"the flow run exceeded its timeout of {self.timeout:g}s"
        self.interrupted = [k for k, r in self.runs.items() if r.dispatched]
        self._stop_all(self.timed_out)

    def _cancel(self, reason: str) -> None:
        self.cancel_reason = reason
        self._stop_all(reason)

    def _stop_all(self, reason: str) -> None:
        """Cancel every unfinished task run (telling running attempts to stop)."""
        self._ready.clear()
        self._timers.clear()
        for run in list(self.runs.values()):
            if run.state.is_terminal:
                continue
            if run.dispatched:
                self._out.append(CancelTask(run, run.attempt, reason))
                self._attempt_done(run, S.CANCELLED)
            self._transition(run, S.CANCELLED, reason)

    # ------------------------------------------------------------ scheduling logic

    def _push_timer(self, at: float, kind: int, run: TaskRunRecord) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (at, self._timer_seq, kind, run.key, run.attempt))

    def _schedule(self, run: TaskRunRecord, message: str = "") -> None:
        """The run may execute: check the cache first, else queue it for a slot."""
        self._transition(run, S.SCHEDULED, message)
        cache = run.spec.cache
        if cache is not None and run.retries_used == 0 and run.lost_count == 0:
            try:
                inputs = self._inputs(run)
            except Exception as exc:
                self._input_error(run, exc)
                return
            self._checking.add(run.key)
            self._out.append(CheckCache(run, inputs))
        else:
            self._ready.append(run)

    def _input_error(self, run: TaskRunRecord, exc: Exception) -> None:
        failure = FailureInfo(
            type="headwater.InputError",
            message=f"could not assemble the inputs of {run.name!r}: {exc!r}",
            retryable=False,
            exception=exc,
        )
        self._transition(run, S.FAILED, str(failure), failure)

    def _pump(self) -> None:
        limit = self.max_concurrency
        ready = self._ready
        out = self._out
        auto_start = self.auto_start
        nodes, params, values = self._nodes, self.params, self.values
        while ready and (limit is None or self._in_flight < limit):
            run = ready.popleft()
            if run.state is not S.SCHEDULED or run.dispatched:
                continue
            try:
                inputs = attempt_inputs(run, nodes, params, values)
            except Exception as exc:
                self._input_error(run, exc)
                continue
            run.attempt += 1
            run.dispatched = True
            self._in_flight += 1
            # Without auto_start the timeout clock starts at TaskStarted, and the worker
            # enforces its own deadline from the assignment's timeout.
            deadline = self._start_attempt(run) if auto_start else None
            out.append(RunTask(run, run.attempt, inputs, deadline))

    def _evaluate_node(self, node: Node) -> None:
        """All of a node's upstream requirements are met: decide what it does."""
        run = node.run
        if run.state is not S.PENDING:
            return
        gates = node.spec.gates
        if gates:  # called inside case blocks: a case that did not match skips it
            closed = next((g for g in gates if self._nodes[g].run.state is S.SKIPPED), None)
            if closed is not None:
                self._transition(run, S.SKIPPED, f"its case ({closed!r}) did not match")
                return
        node.whole_tally = None  # counted now, and kept for a mapped node's children
        tally = self._whole_tally(node)
        unmapped = [src.run.state for src in node.elem_sources if src.run.state is not S.MAPPED]
        if not self._apply_trigger(run, tally.plus(unmapped) if unmapped else tally):
            return
        if node.spec.mapped is None:
            self._schedule(run)
        else:
            self._expand(node)

    def _apply_trigger(self, run: TaskRunRecord, tally: Tally) -> bool:
        verdict = evaluate_trigger(run.spec.trigger, tally)
        if verdict is Verdict.RUN:
            return True
        if verdict is Verdict.SKIP:
            self._transition(run, S.SKIPPED, "an upstream task was skipped")
        else:
            trigger = run.spec.trigger.value
            failure = FailureInfo(
                type="headwater.TriggerFailed",
                message=f"trigger {trigger} did not pass (upstream task runs: {tally})",
                retryable=False,
            )
            self._transition(run, S.TRIGGER_FAILED, failure.message, failure)
        return False

    def _expand(self, node: Node) -> None:
        spec = node.spec
        run = node.run
        assert spec.mapped is not None
        shared: dict[str, Any] = {}
        length: int | None = None
        lengths: dict[str, int] = {}
        try:
            for arg, src in spec.inputs.items():
                if arg in spec.mapped and self._is_elementwise(node, src):
                    assert isinstance(src, FromTask)
                    upstream = self._nodes[src.task_id].run
                    if upstream.children is None:
                        raise ValueError(unmappable(arg, upstream))
                    n = len(upstream.children)
                else:
                    value = self._resolve(src)
                    shared[arg] = value
                    if arg not in spec.mapped:
                        continue
                    if isinstance(src, FromTask):
                        upstream = self._nodes[src.task_id].run
                        if not upstream.state.is_success or upstream.state is S.SKIPPED:
                            raise ValueError(unmappable(arg, upstream))
                    maybe = self.values.length(value)
                    if maybe is None:
                        what = (
                            f"parameter {src.name!r} ({self.values.describe(value)})"
                            if isinstance(src, Param)
                            else self.values.describe(value)
                        )
                        raise TypeError(
                            f"cannot map over argument {arg!r}: {what} has no elements to "
                            "map over (strings, bytes, dicts, sets, DataFrames and single "
                            "values have none); pass a list"
                        )
                    n = maybe
                lengths[arg] = n
        except Exception as exc:
            self._input_error(run, exc)
            return
        if len(set(lengths.values())) > 1:
            order = {arg: i for i, arg in enumerate(spec.argument_order)}  # (not map order)
            named = sorted(lengths.items(), key=lambda item: order.get(item[0], len(order)))
            detail = ", ".join(f"{a}={n}" for a, n in named)
            failure = FailureInfo(
                type="headwater.MapLengthMismatch",
                message=f"mapped arguments of {spec.name!r} have different lengths: {detail}",
                retryable=False,
            )
            self._transition(run, S.FAILED, failure.message, failure)
            return
        length = next(iter(lengths.values()), 0)
        node.shared_inputs = shared
        now = self.clock.now()
        # One PENDING entry for every child (a tuple: immutable, so it can be shared).
        created = _new_entry(StateEntry, (S.PENDING, now, 0, "", None))
        children = [
            TaskRunRecord(child_key(spec.id, i), spec, node, i, run, now, created)
            for i in range(length)
        ]
        if self._prior:  # expanded again after a flow run retry: attempt numbers go on
            carry_over(self._prior, children)
        run.children = children
        node.unfinished_children = length
        self._unfinished += length
        runs = self.runs
        elem_sources = node.elem_sources
        for child in children:
            runs[child.key] = child
            pending = 0
            for source in elem_sources:
                src_children = source.run.children
                assert src_children is not None
                # "settled", not "terminal": an upstream child that just finished but
                # whose completion is still queued will decrement this count itself.
                if not src_children[child.map_index].settled:
                    pending += 1
            child.pending = pending
        self._transition(run, S.MAPPED, f"{length} child runs")
        # Children with only whole upstreams have the same ones: one verdict for all.
        if not elem_sources and evaluate_trigger(spec.trigger, self._whole_tally(node)) is _RUN:
            for child in children:
                self._schedule(child)
            return
        for child in children:
            if child.pending == 0:
                self._evaluate_child(child)

    def _is_elementwise(self, node: Node, src: InputSpec) -> bool:
        if not isinstance(src, FromTask):
            return False
        return any(s.spec.id == src.task_id for s in node.elem_sources)

    def _evaluate_child(self, child: TaskRunRecord) -> None:
        if child.state is not S.PENDING:
            return
        node: Node = child._node
        tally = self._whole_tally(node)
        if node.elem_sources:
            i = child.map_index
            own: list[TaskRunState] = []
            for src in node.elem_sources:
                src_children = src.run.children
                assert src_children is not None
                own.append(src_children[i].state)
            tally = tally.plus(own)
        if self._apply_trigger(child, tally):
            self._schedule(child)

    def _whole_tally(self, node: Node) -> Tally:
        """The final states of a node's whole upstreams, counted once when the node is
        evaluated and kept for a mapped node's children (the upstreams are complete,
        and stay so, while the node is expanded): a child adds its own element-wise
        ones. Counting them per child took quadratic time when a whole upstream is
        itself a wide map."""
        tally = node.whole_tally
        if tally is None:
            states: list[TaskRunState] = []
            for src in node.whole_sources:
                final_states(src, states)
            tally = node.whole_tally = Tally.of(states)
        return tally

    # --------------------------------------------------------------- propagation

    def _propagate(self) -> None:
        """Process runs that became terminal, unblocking what depends on them."""
        settle = self._settle
        while settle:
            run = settle.popleft()
            run.settled = True
            node: Node = run._node
            if run.parent is None:
                if run.state is S.MAPPED:
                    for dep in node.elem_dependents:
                        self._elem_source_ready(dep)
                    if node.unfinished_children == 0:
                        self._node_complete(node)
                else:
                    for dep in node.elem_dependents:
                        self._elem_source_ready(dep)
                    self._node_complete(node)
            else:
                node.unfinished_children -= 1
                i = run.map_index
                for dep in node.elem_dependents:
                    dep_children = dep.run.children
                    if dep_children is None:
                        continue
                    child = dep_children[i]
                    child.pending -= 1
                    if child.pending == 0 and dep.whole_remaining == 0:
                        self._evaluate_child(child)
                if node.unfinished_children == 0 and node.run.state is S.MAPPED:
                    self._node_complete(node)

    def _elem_source_ready(self, node: Node) -> None:
        node.elem_remaining -= 1
        if node.elem_remaining == 0 and node.whole_remaining == 0:
            self._evaluate_node(node)

    def _node_complete(self, node: Node) -> None:
        if node.complete:
            return
        node.complete = True
        node.shared_inputs = None if node.spec.mapped is not None else node.shared_inputs
        node.whole_tally = None
        for dep in node.whole_dependents:
            dep.whole_remaining -= 1
            if dep.whole_remaining == 0 and dep.elem_remaining == 0:
                self._evaluate_node(dep)

    def _flush(self) -> list[Command]:
        while True:
            self._propagate()
            if self.state is FlowRunState.RUNNING:
                self._pump()
            if not self._settle:
                break
        if self.state is FlowRunState.RUNNING and self._unfinished == 0:
            self._finish()
        out, self._out = self._out, []
        return out

    def result_unavailable(self, exc: Exception) -> None:
        """The host could not deliver the result of a SUCCESS run (e.g. a part of a
        value held remotely did not exist): the run FAILED, as if assembling it here had."""
        if self.state is not FlowRunState.SUCCESS:
            raise RuntimeError(f"flow run is {self.state.name}, not SUCCESS")
        self.result = None
        # One line: a Dask serialisation error's text carries a whole traceback (2 KB
        # of escaped lines in the CLI's last line, a user trial).
        try:
            lines = str(exc).strip().splitlines()
        except Exception:
            lines = []
        said = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
        self._set_flow_state(FlowRunState.FAILED, f"could not assemble the result: {said}")

    def _finish(self) -> None:
        self._timers.clear()  # (all task runs have ended; and the run's own timeout)
        if self.timed_out is not None:
            state, message = FlowRunState.FAILED, self.timed_out
        elif self.cancel_reason is not None:
            state, message = FlowRunState.CANCELLED, self.cancel_reason
        elif self._reference_failed():
            state = FlowRunState.FAILED
            message = failed_message(self.failed_runs())
        else:
            state, message = FlowRunState.SUCCESS, ""
            if self.graph.result is not None:
                try:
                    self.result = self._resolve(self.graph.result)
                except Exception as exc:
                    state, message = FlowRunState.FAILED, f"could not assemble the result: {exc!r}"
        self._set_flow_state(state, message)
        self._out.append(FlowFinished(state))

    def _set_flow_state(self, state: FlowRunState, message: str) -> None:
        self.state = state
        self.flow_history.append((state, self.clock.now(), message))

    def _reference_nodes(self) -> list[Node]:
        ids = self.graph.reference_task_ids
        if not ids:
            return list(self._nodes.values())
        return [self._nodes[i] for i in ids]

    # ------------------------------------------------------------------- inputs

    def _inputs(self, run: TaskRunRecord) -> dict[str, Any]:
        return attempt_inputs(run, self._nodes, self.params, self.values)

    def _resolve(self, src: InputSpec) -> Any:
        return resolve(src, self._nodes, self.params, self.values)


#: Failed task runs a failed run's message names (the rest are counted).
FAILURES_NAMED = 5
#: Characters of each one's error kept in that message.
FAILURE_TEXT = 100


def failed_message(failed: list[FlowRunFailure]) -> str:
    """A failed run's message: its first failed task runs, each with its state and its
    error's first line (``load[2]: FAILED (ValueError: bad row 7); and 95 more``); the
    listings and the web UI show it, where the state alone did not say why."""
    parts = []
    for f in failed[:FAILURES_NAMED]:
        part = f"{f.key}: {f.state.name}"
        if f.failure is not None:
            text = str(f.failure).removeprefix("builtins.").split("\n", 1)[0]
            if len(text) > FAILURE_TEXT:
                text = text[: FAILURE_TEXT - 3] + "..."
            part += f" ({text})"
        parts.append(part)
    if len(failed) > FAILURES_NAMED:
        parts.append(f"and {len(failed) - FAILURES_NAMED} more")
    return "; ".join(parts)
