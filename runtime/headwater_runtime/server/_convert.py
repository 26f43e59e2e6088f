"""Stored rows and engine records as contract messages (for the ControlPlane API).

Results larger than a listing may carry are left out and described instead
(``_previews``): reading a run never fails on its size.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from headwater.v1 import payload_pb2, run_pb2, state_pb2
from headwater.wire import failure_from_dict, failure_to_proto, task_run_id, timestamp
from headwater_runtime.engine import TaskRunRecord
from headwater_runtime.store import FlowRunRow, StateRow, TaskRunRow

from ._previews import bounded


def flow_run_message(row: FlowRunRow, result: payload_pb2.Value | None = None) -> run_pb2.FlowRun:
    """A stored flow run as the contract's FlowRun (with its result, when given)."""
    msg = run_pb2.FlowRun(
        id=row.id,
        flow_name=row.flow_name,
        flow_version=row.flow_version,
        state=state_pb2.FlowRunState.ValueType(row.state),
        idempotency_key=row.idempotency_key,
        trace_context=row.trace_context,
        schedule_id=row.schedule_id,
        parent_flow_run_id=row.parent_flow_run_id,
        parent_task_run_id=(
            task_run_id(row.parent_flow_run_id, row.parent_task_key)
            if row.parent_flow_run_id
            else ""
        ),
    )
    if row.parameters:
        for name, param in run_pb2.FlowRun.FromString(row.parameters).parameters.items():
            msg.parameters[name].CopyFrom(param)
    for field, value in (
        ("created_at", row.created_at),
        ("started_at", row.started_at),
        ("ended_at", row.ended_at),
    ):
        if value is not None:
            getattr(msg, field).CopyFrom(timestamp(value))
    if result is not None:
        listed, summary = bounded(result)
        if listed is not None:
            msg.result.CopyFrom(listed)
        msg.result_summary.CopyFrom(summary)
    if row.message:
        msg.history.add(state=row.state, message=row.message)
    return msg


def task_run_from_row(
    row: TaskRunRow, history: list[StateRow], values: Mapping[str, bytes]
) -> run_pb2.TaskRun:
    """A stored task run (its state history, its result from ``values`` by id) as the
    contract's TaskRun."""
    msg = run_pb2.TaskRun(
        id=task_run_id(row.flow_run_id, row.key),
        flow_run_id=row.flow_run_id,
        task_id=row.task_id,
        name=row.key,
        map_index=row.map_index,
        state=state_pb2.TaskRunState.ValueType(row.state),
        attempts=row.attempt,
        worker_id=row.worker_id,
        cache_key=row.cache_key,
    )
    if row.map_index >= 0:
        msg.parent_task_run_id = task_run_id(row.flow_run_id, row.task_id)
    for entry in history:
        h = msg.history.add(state=entry.state, attempt=entry.attempt, message=entry.message)
        h.timestamp.CopyFrom(timestamp(entry.at))
        if entry.failure:  # as a watcher saw it (task_run_from_record)
            h.failure.CopyFrom(failure_to_proto(failure_from_dict(json.loads(entry.failure))))
    data = values.get(row.result_id) if row.result_id else None
    if data is not None and msg.history:
        listed, summary = bounded(payload_pb2.Value.FromString(data))
        if listed is not None:
            msg.history[-1].result.CopyFrom(listed)
        msg.result_summary.CopyFrom(summary)
    return msg


def task_run_from_record(flow_run_id: str, run: TaskRunRecord) -> run_pb2.TaskRun:
    """An engine task run record (its latest state) as the contract's TaskRun."""
    msg = run_pb2.TaskRun(
        id=task_run_id(flow_run_id, run.key),
        flow_run_id=flow_run_id,
        task_id=run.spec.id,
        name=run.name,
        map_index=run.map_index,
        state=state_pb2.TaskRunState.ValueType(run.state.value),
        attempts=run.attempt,
    )
    entry = run.history[-1]
    h = msg.history.add(state=entry.state.value, attempt=entry.attempt, message=entry.message)
    h.timestamp.CopyFrom(timestamp(entry.timestamp))
    if entry.failure is not None:
        h.failure.CopyFrom(failure_to_proto(entry.failure))
    return msg


__all__ = ["flow_run_message", "task_run_from_record", "task_run_from_row"]
