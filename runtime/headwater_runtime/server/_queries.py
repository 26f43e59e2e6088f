"""Answers read from the store: task run and flow run results, and why an event for a
run whose engine is gone is refused. Called on reader threads; nothing here writes."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import TypeVar

from headwater.v1 import control_plane_pb2, journal_pb2, payload_pb2
from headwater.wire import FlowRunState, TaskRunState
from headwater_runtime.engine import ATTEMPT_EVENTS, WORKER_LOST, Event, stale_reason
from headwater_runtime.store import FlowRunRow, NotFound, Store

from ._journal import from_stored, stored_ids
from ._values import Composite, to_result_value

T = TypeVar("T")


def list_problem(request: control_plane_pb2.ListFlowRunsRequest) -> str | None:
    """What is wrong with a ListFlowRuns request's filters (None: nothing): a state
    that is no flow run state, a timestamp out of range (they matched nothing, or
    anything, without a word)."""
    known = {s.value for s in FlowRunState}
    unknown = sorted(set(request.states) - known)
    if unknown:
        return f"states: {unknown[0]} is not a flow run state ({min(known)}..{max(known)})"
    for field in ("created_after", "created_before"):
        if request.HasField(field) and not 0 <= getattr(request, field).nanos < 1_000_000_000:
            return f"{field}.nanos is out of range"
    return None


class NoResult(LookupError):
    """A task run has no result to return (not finished, or it did not succeed)."""


def refusal(store: Store, flow_run_id: str, event: Event) -> str:
    """Why an event for a flow run whose engine is gone is refused: the run has
    ended, or never existed. A report about an attempt is worded as the engine
    words it (``stale_reason``), from what the store kept of the task run."""
    try:
        flow = FlowRunState(store.get_flow_run(flow_run_id).state)
    except NotFound:
        return f"unknown flow run {flow_run_id!r}"
    if not isinstance(event, ATTEMPT_EVENTS):
        return f"flow run is {flow.name}"
    history = store.task_run_history(flow_run_id, event.key)
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
    store: Store, flow_run_id: str, task_id: str, map_index: int = -1
) -> tuple[payload_pb2.Value, TaskRunState]:
    """A stored task run's result: one run's, or for a mapped task with
    ``map_index`` -1 the list of its children's. NotFound for an unknown task or
    element, NoResult when the run has none (not finished, or did not succeed)."""
    store.get_flow_run(flow_run_id)
    rows = [r for r in store.task_runs(flow_run_id) if r.task_id == task_id]
    if not rows:
        raise NotFound(f"flow run {flow_run_id!r} has no task {task_id!r}")
    wanted = map_index  # (-2 was read as -1, the whole list: a user trial)
    row = next((r for r in rows if r.map_index == wanted), None)
    if row is None:
        raise NotFound(f"task {task_id!r} has no element {wanted}")
    state = TaskRunState(row.state)
    children = sorted((r for r in rows if r.map_index >= 0), key=lambda r: r.map_index)
    if wanted < 0 and children:
        # Every element ended, or no list yet: the list of a map still running read as
        # [None, None, None], like results (a user trial). (An element that failed is
        # None in it, as a reduce over the map gets it.)
        going = [c for c in children if not TaskRunState(c.state).is_terminal]
        if going:
            first = going[0]
            raise NoResult(
                f"task {task_id!r} has no result yet: {len(going):,} of its "
                f"{len(children):,} elements have not ended ({first.key}: "
                f"{TaskRunState(first.state).name})"
            )
        loaded = store.get_values(c.result_id for c in children)
        handles = tuple(
            payload_pb2.Value.FromString(loaded[c.result_id]) if c.result_id else None
            for c in children
        )
        return to_result_value(Composite("list", handles)), state
    if not row.result_id:
        when = "" if state.is_terminal else " yet"
        raise NoResult(f"task run {row.key!r} has no result{when} (state {state.name})")
    data = store.get_values([row.result_id])[row.result_id]
    return payload_pb2.Value.FromString(data), state


#: Task run states of the tasks a failed run lists as failed: the root causes (a task
#: that raised or timed out); the tasks that did not run because of them
#: (TRIGGER_FAILED) or were cancelled are not listed.
FAILED_TASK_STATES = (TaskRunState.FAILED.value, TaskRunState.TIMED_OUT.value)


def as_one(store: Store, row: FlowRunRow, read: Callable[[FlowRunRow], T]) -> tuple[FlowRunRow, T]:
    """``read(row)``: what a run's answer needs besides its row. For a FAILED run, its
    row is read again with it in one snapshot of the store: a retry committed between
    the two reads left a FAILED row beside task runs already reset, and the answer
    said FAILED with no failed task (a user trial). (Other states need no snapshot:
    a row read earlier is older than what is read with it, and says so.)"""
    if row.state != FlowRunState.FAILED.value:
        return row, read(row)
    with store.snapshot():
        row = current(store, row)
        return row, read(row)


def current(store: Store, row: FlowRunRow) -> FlowRunRow:
    """A run's row as the store has it now (inside a snapshot: as of it), or ``row``,
    its last known, when it was deleted since."""
    with contextlib.suppress(NotFound):
        return store.get_flow_run(row.id)
    return row


def failed_task_ids(store: Store, row: FlowRunRow) -> list[str]:
    """The ids of a FAILED run's tasks that raised or timed out (each once, sorted;
    ``FlowRun.failed_task_ids``); [] for a run in any other state."""
    if row.state != FlowRunState.FAILED.value:
        return []
    return store.task_ids_in_states(row.id, FAILED_TASK_STATES)


def flow_result(store: Store, row: FlowRunRow) -> payload_pb2.Value | None:
    """A finished flow run's result as one Value (structural encodings for what the
    engine assembled), or None when it has none."""
    if not row.result:
        return None
    stored = journal_pb2.StoredValue.FromString(row.result)
    loaded = store.get_values(stored_ids(stored))
    return to_result_value(from_stored(stored, loaded))


__all__ = ["NoResult", "as_one", "failed_task_ids", "flow_result", "refusal", "task_result"]
