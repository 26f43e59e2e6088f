"""Rows of the PostgreSQL store: a commit's batch as a few statements, and flow run
rows to and from their columns."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from ._base import FlowRunRow, WriteBatch
from ._postgres_ops import write_ops

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


def write_batch(conn: Conn, batch: WriteBatch, epoch: int) -> None:
    """One statement per table, the rows as arrays (``unnest``): a 10k-row batch costs
    a few statements, not 10k."""
    values = list(batch.values.values())
    if values:
        conn.execute(
            "INSERT INTO run_values SELECT * FROM unnest(%s::text[], %b::bytea[], %s::int8[]) "
            "ON CONFLICT (id) DO NOTHING",
            ([v.id for v in values], [v.data for v in values], [len(v.data) for v in values]),
        )
        refs = [(f"value:{v.id}", p) for v in values for p in v.payload_ids]
        if refs:
            conn.execute(
                "INSERT INTO payload_refs SELECT * FROM unnest(%s::text[], %s::text[]) "
                "ON CONFLICT DO NOTHING",
                ([o for o, _ in refs], [p for _, p in refs]),
            )
    if batch.events:
        e = batch.events
        conn.execute(
            "INSERT INTO run_events (flow_run_id, seq, at, kind, body, value_id, epoch) "
            "SELECT *, %s FROM unnest(%s::text[], %s::int8[], %s::float8[], %s::text[], "
            "%b::bytea[], %s::text[])",
            (
                epoch,
                [x.flow_run_id for x in e],
                [x.seq for x in e],
                [x.at for x in e],
                [x.kind for x in e],
                [x.body for x in e],
                [x.value_id for x in e],
            ),
        )
    for r in batch.flow_runs.values():
        conn.execute(
            f"UPDATE flow_runs SET {_FLOW_RUN_SET} WHERE id=%s",
            (*flow_run_values(r), r.id),
        )
    if batch.task_runs:
        t = list(batch.task_runs.values())
        conn.execute(
            "INSERT INTO task_runs (flow_run_id, key, task_id, map_index, state, attempt, "
            "updated_at, worker_id, cache_key, result_id, delivered) SELECT * FROM unnest("
            "%s::text[], %s::text[], %s::text[], %s::int4[], %s::int4[], %s::int4[], "
            "%s::float8[], %s::text[], %s::text[], %s::text[], %s::int4[]) "
            "ON CONFLICT (flow_run_id, key) DO UPDATE SET task_id=EXCLUDED.task_id, "
            "map_index=EXCLUDED.map_index, state=EXCLUDED.state, attempt=EXCLUDED.attempt, "
            "updated_at=EXCLUDED.updated_at, worker_id=EXCLUDED.worker_id, "
            "cache_key=EXCLUDED.cache_key, result_id=EXCLUDED.result_id, "
            "delivered=EXCLUDED.delivered",
            (
                [x.flow_run_id for x in t],
                [x.key for x in t],
                [x.task_id for x in t],
                [x.map_index for x in t],
                [x.state for x in t],
                [x.attempt for x in t],
                [x.updated_at for x in t],
                [x.worker_id for x in t],
                [x.cache_key for x in t],
                [x.result_id for x in t],
                [x.delivered for x in t],
            ),
        )
    if batch.states:
        s = batch.states
        conn.execute(
            "INSERT INTO task_run_states (flow_run_id, key, seq, state, at, attempt, message, "
            "failure) SELECT * FROM unnest(%s::text[], %s::text[], %s::int4[], %s::int4[], "
            "%s::float8[], %s::int4[], %s::text[], %b::bytea[])",
            (
                [x.flow_run_id for x in s],
                [x.key for x in s],
                [x.seq for x in s],
                [x.state for x in s],
                [x.at for x in s],
                [x.attempt for x in s],
                [x.message for x in s],
                [x.failure for x in s],
            ),
        )
    if batch.logs:
        g = batch.logs
        conn.execute(
            "INSERT INTO logs (flow_run_id, key, attempt, at, level, logger, message) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::int4[], %s::float8[], "
            "%s::text[], %s::text[], %s::text[])",
            (
                [x.flow_run_id for x in g],
                [x.key for x in g],
                [x.attempt for x in g],
                [x.at for x in g],
                [x.level for x in g],
                [x.logger for x in g],
                [x.message for x in g],
            ),
        )
    if batch.cache:
        latest = {c.key: c for c in batch.cache}  # one row per key in one statement
        c = list(latest.values())
        conn.execute(
            "INSERT INTO cache_entries SELECT * FROM unnest(%s::text[], %s::text[], "
            "%s::float8[]) ON CONFLICT (key) DO UPDATE SET value_id=EXCLUDED.value_id, "
            "expires_at=EXCLUDED.expires_at",
            ([x.key for x in c], [x.value_id for x in c], [x.expires_at for x in c]),
        )
    write_ops(conn, batch)


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
