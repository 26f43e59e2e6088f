"""Flow run rows of the PostgreSQL store to and from their columns."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from ._base import FlowRunRow

Conn = psycopg.Connection[tuple[Any, ...]]

#: The flow_runs columns, in the order ``flow_run_values`` gives them (after ``id``).
FLOW_RUN_COLS = (
    "id, flow_name, flow_version, state, created_at, parameters, idempotency_key, "
    "started_at, ended_at, result, message, trace_context, schedule_id, engine_version, "
    "parent_flow_run_id, parent_task_key, parent_attempt"
)
#: How many columns ``FLOW_RUN_COLS`` names.
FLOW_RUN_NCOLS = len(FLOW_RUN_COLS.split(", "))


_FLOW_RUN_SET = ", ".join(f"{c}=%s" for c in FLOW_RUN_COLS.split(", ")[1:])


def flow_run_values(r: FlowRunRow) -> tuple[object, ...]:
    """A run's column values after ``id``, in ``FLOW_RUN_COLS`` order."""
    return (
        r.flow_name,
        r.flow_version,
        r.state,
        r.created_at,
        r.parameters,
        r.idempotency_key or None,
        r.started_at,
        r.ended_at,
        r.result,
        r.message,
        json.dumps(r.trace_context, sort_keys=True),
        r.schedule_id,
        r.engine_version,
        r.parent_flow_run_id,
        r.parent_task_key,
        r.parent_attempt,
    )


def flow_run_row(r: tuple[Any, ...]) -> FlowRunRow:
    """A FlowRunRow from a row of ``FLOW_RUN_COLS``."""
    (rid, name, version, state, created, params, idem, started, ended, result, msg) = r[:11]
    tc, sid, ev, parent_id, parent_key, parent_attempt = r[11:]
    return FlowRunRow(
        id=str(rid),
        flow_name=str(name),
        flow_version=str(version),
        state=int(state),
        created_at=float(created),
        parameters=bytes(params),
        idempotency_key=str(idem or ""),
        started_at=None if started is None else float(started),
        ended_at=None if ended is None else float(ended),
        result=bytes(result),
        message=str(msg),
        trace_context=json.loads(str(tc)),
        schedule_id=str(sid),
        engine_version=str(ev),
        parent_flow_run_id=str(parent_id),
        parent_task_key=str(parent_key),
        parent_attempt=int(parent_attempt),
    )
