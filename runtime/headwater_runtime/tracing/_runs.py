"""The spans of one flow run, built by observing the engine from outside.

The engine stays pure: a host (embedded or server) owns a RunTracer, passes its
``on_transition`` to the engine and calls ``dispatched`` for every RunTask command.

Tree: ``flow <name>`` (child of the caller's context, or a root) -> one
``task <name>`` span per attempt. A task run that ends without an attempt of its own
(cache hit, skipped by its upstreams, trigger failed, cancelled before it ran, mapped
parent, inputs that could not be assembled) gets one span that starts and ends at
that moment, with ``headwater.attempt`` the run's attempt counter (0: never ran).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode, Tracer

from headwater.wire import FailureInfo, FlowRunState, TaskRunState, task_run_id
from headwater_runtime.engine import (
    DELAY_RULE,
    WORKER_LOST,
    StateEntry,
    TaskRunRecord,
    retry_delay,
)

from . import names as n
from ._spans import record_failure, w3c

S = TaskRunState
Caller = Callable[[dict[str, Any]], Any]
#: Attempt outcomes (and run states) that mark the span as an error. CANCELLED is not
#: an error of the task: someone asked for it.
_ERROR_STATES = frozenset({S.FAILED, S.TIMED_OUT, S.TRIGGER_FAILED})


class RunTracer:
    """Spans of one flow run. Not thread-safe: call it from the host's loop only.

    Args:
        tracer: where spans go (see ``active_tracer``).
        flow_name: the flow's name.
        flow_run_id: the run's id (task run ids are ``<flow_run_id>/<key>``).
        parent: the flow span's parent context; None means the current context (an
            embedded run called from traced code), an empty Context means a root.
        resumed: the run was recovered after a server restart (its first flow span
            was lost with the old process).
        attempt: the run attempt this span covers; a run retried from its failure gets
            a new flow span per attempt, in the same trace.
    """

    def __init__(
        self,
        tracer: Tracer,
        flow_name: str,
        flow_run_id: str,
        parent: Context | None = None,
        *,
        resumed: bool = False,
        attempt: int = 1,
    ) -> None:
        self.tracer = tracer
        self.flow_name = flow_name
        self.flow_run_id = flow_run_id
        self.seed = flow_run_id  # the engine's jitter seed (hosts pass the run's id)
        self.delay_rule = DELAY_RULE  # and its delay rule (a new run's)
        attributes: dict[str, Any] = {n.FLOW_NAME: flow_name, n.FLOW_RUN_ID: flow_run_id}
        if resumed:
            attributes[n.RESUMED] = True
        if attempt > 1:
            attributes[n.FLOW_RUN_ATTEMPT] = attempt
        self.flow_span = tracer.start_span(
            n.flow_span_name(flow_name), context=parent, attributes=attributes
        )
        self._flow_context = trace.set_span_in_context(self.flow_span)
        self._attempts: dict[tuple[str, int], Span] = {}
        #: Each open attempt's task run's losses when it was dispatched: an attempt
        #: given back adds none (a worker stopping on purpose, not a loss).
        self._losses: dict[tuple[str, int], int] = {}

    # ------------------------------------------------------------------ attempts

    @staticmethod
    def in_span(
        caller: Callable[[dict[str, Any]], Any], span: Span
    ) -> Callable[[dict[str, Any]], Any]:
        """``caller`` run with ``span`` current (see ``in_span``)."""
        return in_span(caller, span)

    @staticmethod
    def span_context(span: Span) -> Context:
        """A context whose current span is ``span`` (the parent of a child flow run's
        flow span: the span of the task run that stands for it)."""
        return trace.set_span_in_context(span)

    def dispatched(self, run: TaskRunRecord, attempt: int, *, resumed: bool = False) -> Span:
        """Open the span of attempt ``attempt`` of ``run`` (a RunTask command)."""
        attributes = self._task_attributes(run, attempt)
        if resumed:
            attributes[n.RESUMED] = True
        span = self.tracer.start_span(
            n.task_span_name(run.spec.name), context=self._flow_context, attributes=attributes
        )
        previous = self._attempts.pop((run.key, attempt), None)
        if previous is not None:  # dispatched twice: keep the newest open
            previous.end()
        self._attempts[(run.key, attempt)] = span
        self._losses[(run.key, attempt)] = run.lost_count
        return span

    def on_transition(self, run: TaskRunRecord, entry: StateEntry) -> None:
        """Engine observer: close attempt spans, and mark runs that never ran."""
        state = entry.state
        key = (run.key, entry.attempt)
        if state is S.RUNNING:
            span = self._attempts.get(key)
            if span is not None:  # hosts without auto_start: the worker began
                span.add_event(n.EVENT_STARTED)
            return
        span = self._attempts.pop(key, None)
        losses = self._losses.pop(key, None)
        if span is not None:
            self._end_attempt(span, run, entry, given_back=losses == run.lost_count)
        elif state.is_terminal:
            self._instant(run, entry)

    def _end_attempt(
        self, run_span: Span, run: TaskRunRecord, entry: StateEntry, *, given_back: bool = False
    ) -> None:
        record = run.attempts[-1] if run.attempts else None
        if record is not None and record.number == entry.attempt and record.outcome is not None:
            outcome, failure = record.outcome, record.failure or entry.failure
        else:  # ended before it started (cancelled while queued)
            outcome, failure = entry.state, entry.failure
        run_span.set_attribute(n.STATE, outcome.name)
        # An error when the attempt failed, or when it made the run fail (a worker lost
        # once too often: the attempt itself is CANCELLED, the run FAILED).
        error = outcome in _ERROR_STATES or entry.state in _ERROR_STATES
        if failure is not None and failure.type == WORKER_LOST:
            # (A worker that stopped on purpose gave it back: no loss, said as such; it
            # read as a lost worker, a trial.)
            event = n.EVENT_GIVEN_BACK if given_back else n.EVENT_LOST
            run_span.add_event(event, {n.MESSAGE: failure.message})
            if error:
                run_span.set_status(Status(StatusCode.ERROR, str(failure)))
        elif failure is not None:
            _record(run_span, failure, error=error)
        if entry.state is S.RETRYING:
            delay = retry_delay(
                run.spec.retry, run.retries_used, run.key, self.seed, self.delay_rule
            )
            retry = {n.RETRY_DELAY: delay, n.RETRY_NUMBER: run.retries_used}
            run_span.add_event(n.EVENT_RETRY, retry)
        run_span.end()

    def _instant(self, run: TaskRunRecord, entry: StateEntry) -> None:
        state = entry.state
        attributes = self._task_attributes(run, run.attempt)
        attributes[n.STATE] = state.name
        if entry.message:
            attributes[n.MESSAGE] = entry.message
        if state is S.CACHED:
            attributes[n.CACHE_HIT] = True
            attributes[n.CACHE_KEY] = run.cache_key or ""
        span = self.tracer.start_span(
            n.task_span_name(run.spec.name), context=self._flow_context, attributes=attributes
        )
        if state is S.CACHED:
            span.add_event(n.EVENT_CACHE_HIT, {n.CACHE_KEY: run.cache_key or ""})
        if entry.failure is not None:
            _record(span, entry.failure, error=state in _ERROR_STATES)
        elif state in _ERROR_STATES:
            span.set_status(Status(StatusCode.ERROR, entry.message or state.name))
        span.end()

    def _task_attributes(self, run: TaskRunRecord, attempt: int) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            n.FLOW_NAME: self.flow_name,
            n.FLOW_RUN_ID: self.flow_run_id,
            n.TASK_NAME: run.spec.name,
            n.TASK_RUN_ID: task_run_id(self.flow_run_id, run.key),
            n.ATTEMPT: attempt,
        }
        if run.map_index >= 0:
            attributes[n.MAP_INDEX] = run.map_index
        return attributes

    # ---------------------------------------------------------------------- flow

    def finish(self, state: FlowRunState, message: str = "") -> None:
        """End the flow span (and any attempt span a crashed host left open)."""
        for span in self._attempts.values():
            span.end()
        self._attempts.clear()
        span = self.flow_span
        span.set_attribute(n.STATE, state.name)
        if message:
            span.set_attribute(n.MESSAGE, message)
        if state is FlowRunState.FAILED:
            span.set_status(Status(StatusCode.ERROR, message or "flow run failed"))
        span.end()


def _record(span: Span, failure: FailureInfo, *, error: bool) -> None:
    record_failure(span, failure.type, failure.message, failure.traceback, error=error)


def in_span(caller: Callable[[dict[str, Any]], Any], span: Span) -> Callable[[dict[str, Any]], Any]:
    """``caller`` run with ``span`` current, so spans the task makes nest under it."""
    return _InSpan(caller, trace.set_span_in_context(span))


class _InSpan:
    """A task caller that makes a span current while it runs. Picklable (an executor
    may ship callers to other processes): it then travels as W3C context."""

    __slots__ = ("caller", "context")

    def __init__(self, caller: Callable[[dict[str, Any]], Any], context: Context) -> None:
        self.caller = caller
        self.context = context

    def __call__(self, inputs: dict[str, Any]) -> Any:
        token = otel_context.attach(self.context)
        try:
            return self.caller(inputs)
        finally:
            otel_context.detach(token)

    def __reduce__(self) -> tuple[Any, ...]:
        carrier: dict[str, str] = {}
        w3c().inject(carrier, context=self.context)
        return (_from_carrier, (self.caller, carrier))


def _from_carrier(caller: Callable[[dict[str, Any]], Any], carrier: dict[str, str]) -> _InSpan:
    return _InSpan(caller, w3c().extract(carrier))
