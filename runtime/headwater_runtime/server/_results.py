"""Reading stored results: a task run's, a flow run's (ControlPlane queries; on a
reader thread, never the event loop)."""

from __future__ import annotations

from headwater.v1 import journal_pb2, payload_pb2
from headwater.wire import TaskRunState
from headwater_runtime.store import FlowRunRow, NotFound, Store

from ._journal import from_stored, stored_ids
from ._values import Composite, to_result_value


class NoResult(LookupError):
    """A task run has no result to return (not finished, or it did not succeed)."""


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
    wanted = max(map_index, -1)
    row = next((r for r in rows if r.map_index == wanted), None)
    if row is None:
        raise NotFound(f"task {task_id!r} has no element {wanted}")
    state = TaskRunState(row.state)
    children = sorted((r for r in rows if r.map_index >= 0), key=lambda r: r.map_index)
    if wanted < 0 and children:
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


def flow_result(store: Store, row: FlowRunRow) -> payload_pb2.Value | None:
    """A finished flow run's result as one Value (structural encodings for what the
    engine assembled), or None when it has none."""
    if not row.result:
        return None
    stored = journal_pb2.StoredValue.FromString(row.result)
    loaded = store.get_values(stored_ids(stored))
    return to_result_value(from_stored(stored, loaded))
