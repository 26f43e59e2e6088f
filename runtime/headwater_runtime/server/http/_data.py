"""The JSON objects of the HTTP API, built from stored rows (docs/http-api.md).

Functions named ``*_rows`` run on a store reader thread (they query the store);
the others are pure conversions. Times are seconds since the epoch (floats), states
their contract names (``"SUCCESS"``), results ``ValueSummary`` objects: the API never
carries a value larger than ``LISTED_VALUE_LIMIT`` (docs/http-api.md, Results).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any

from headwater.v1 import graph_pb2, payload_pb2, run_pb2
from headwater.wire import (
    FlowRunState,
    GraphSpec,
    TaskRunState,
    graph_from_proto,
    iter_task_refs,
    seconds,
)
from headwater_runtime.store import (
    AuditRow,
    FlowRunRow,
    LateRow,
    LogRow,
    RunAttemptRow,
    StateRow,
    Store,
    TaskRunRow,
)

from .._previews import summarize
from .._queries import as_one, current, failed_task_ids, flow_result

_RUNNING = TaskRunState.RUNNING.value
_ATTEMPT_ENDS = {
    s.value for s in TaskRunState if s.is_terminal and s is not TaskRunState.MAPPED
} | {TaskRunState.RETRYING.value, TaskRunState.SCHEDULED.value}

JSON = dict[str, Any]


def summary(value: payload_pb2.Value) -> JSON:
    """A value's summary as JSON (size, encoding, preview; never the value)."""
    s = summarize(value)
    return {"size_bytes": s.size_bytes, "encoding": s.encoding, "preview": s.preview}


def _duration(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else max(0.0, end - start)


def flow_run_json(
    row: FlowRunRow,
    result: payload_pb2.Value | None = None,
    attempts: list[RunAttemptRow] | None = None,
    late: LateRow | None = None,
) -> JSON:
    """A flow run (its parameters and result as summaries), with its run attempts (1
    for its first run, one more per retry from failure) and its late mark."""
    params: JSON = {}
    if row.parameters:
        stored = run_pb2.FlowRun.FromString(row.parameters)
        params = {name: summary(value) for name, value in stored.parameters.items()}
    return {
        "id": row.id,
        "flow_name": row.flow_name,
        "flow_version": row.flow_version,
        "state": FlowRunState(row.state).name,
        "created_at": row.created_at,
        "started_at": row.started_at,
        "ended_at": row.ended_at,
        "duration": _duration(row.started_at, row.ended_at),
        "message": row.message,
        "schedule_id": row.schedule_id,
        "idempotency_key": row.idempotency_key,
        "parameters": params,
        "result": summary(result) if result is not None else None,
        "attempt": attempts[-1].attempt if attempts else 1,
        "attempts": [_run_attempt_json(a) for a in attempts or ()],
        "late": late is not None,
        "late_reason": late.reason if late is not None else "",
        "late_at": late.at if late is not None else None,
        # A child flow run (a subflow, or a flow a task started): its parent.
        "parent_run_id": row.parent_flow_run_id,
        "parent_task_run": row.parent_task_key,
    }


def _run_attempt_json(a: RunAttemptRow) -> JSON:
    return {
        "attempt": a.attempt,
        "state": FlowRunState(a.state).name,
        "started_at": a.started_at,
        "ended_at": a.ended_at,
        "message": a.message,
    }


def flow_run_rows(store: Store, row: FlowRunRow, *, with_result: bool = True) -> JSON:
    """A flow run with its result summary, run attempts, late mark, failed tasks, child
    flow runs and audit entries (reads the store)."""

    def read(row: FlowRunRow) -> JSON:
        result = flow_result(store, row) if with_result and row.result else None
        late = store.late_runs([row.id]).get(row.id)
        body = flow_run_json(row, result, store.run_attempts(row.id), late)
        body["failed_task_ids"] = failed_task_ids(store, row)
        return body

    row, body = as_one(store, row, read)  # (a FAILED row read again with its tasks)
    body["child_runs"] = [
        {
            "id": child.id,
            "flow_name": child.flow_name,
            "state": FlowRunState(child.state).name,
            "parent_task_run": child.parent_task_key,
        }
        for child in store.child_flow_runs(row.id)
    ]
    # Who created, cancelled and retried it (docs/security.md#audit), oldest first.
    body["audit"] = [audit_json(e) for e in reversed(store.audit_entries("flow_run", row.id, 1000))]
    return body


def audit_json(row: AuditRow) -> JSON:
    """An audit entry: who (a credential name) did what to which object, and when (the
    row's fields as they are)."""
    return dataclasses.asdict(row)


def flow_runs_rows(store: Store, rows: list[FlowRunRow]) -> list[JSON]:
    """Flow runs as a listing shows them: no result, with attempts and late marks."""
    late = store.late_runs([r.id for r in rows])
    return [flow_run_json(r, None, store.run_attempts(r.id), late.get(r.id)) for r in rows]


def _failure(raw: bytes) -> JSON | None:
    return json.loads(raw) if raw else None


def attempts(history: list[StateRow]) -> list[JSON]:
    """A task run's attempts from its state history: when each started and ended,
    how, and its failure."""
    found: dict[int, JSON] = {}
    for entry in history:
        if entry.attempt < 1:
            continue
        attempt = found.get(entry.attempt)
        if attempt is None:
            attempt = found[entry.attempt] = {
                "number": entry.attempt,
                "scheduled_at": entry.at,
                "started_at": None,
                "ended_at": None,
                "state": TaskRunState(entry.state).name,
                "failure": None,
                "message": "",
            }
        if entry.state == _RUNNING and attempt["started_at"] is None:
            attempt["started_at"] = entry.at
        elif entry.state in _ATTEMPT_ENDS and entry.state != TaskRunState.SCHEDULED.value:
            attempt["ended_at"] = entry.at
            attempt["state"] = TaskRunState(entry.state).name
            attempt["failure"] = _failure(entry.failure)
            attempt["message"] = entry.message
    for attempt in found.values():
        attempt["duration"] = _duration(
            attempt["started_at"] or attempt["scheduled_at"], attempt["ended_at"]
        )
    return [found[n] for n in sorted(found)]


def task_run_json(
    row: TaskRunRow,
    history: list[StateRow],
    values: Mapping[str, bytes],
    *,
    detail: bool = False,
) -> JSON:
    """A task run: state, timing, worker, last failure, result summary; with
    ``detail`` also its full history and attempts."""
    started = next((h.at for h in history if h.state == _RUNNING), None)
    state = TaskRunState(row.state)
    ended = history[-1].at if history and state.is_terminal else None
    failure = next((_failure(h.failure) for h in reversed(history) if h.failure), None)
    data = values.get(row.result_id) if row.result_id else None
    out: JSON = {
        "key": row.key,
        "task_id": row.task_id,
        "map_index": row.map_index,
        "state": state.name,
        "attempts": row.attempt,
        "worker": row.worker_id,
        "created_at": history[0].at if history else None,
        "started_at": started,
        "ended_at": ended,
        "duration": _duration(started, ended),
        "message": history[-1].message if history else "",
        "failure": failure,
        "result": summary(payload_pb2.Value.FromString(data)) if data is not None else None,
        "waiting": "",
    }
    if detail:
        out["history"] = [
            {
                "state": TaskRunState(h.state).name,
                "at": h.at,
                "attempt": h.attempt,
                "message": h.message,
                "failure": _failure(h.failure),
            }
            for h in history
        ]
        out["attempt_list"] = attempts(history)
    return out


#: Up to this many task runs, their histories are read one by one (an indexed lookup
#: each); more, and the whole run's history is read at once.
_HISTORY_BY_KEY = 300


def task_runs_rows(
    store: Store,
    flow_run_id: str,
    *,
    task_id: str = "",
    key: str = "",
    states: frozenset[str] = frozenset(),
    offset: int = 0,
    limit: int | None = None,
    detail: bool = False,
) -> tuple[list[JSON], int]:
    """A page of a run's task runs as JSON (only one task node's, with its mapped
    children, one task run's, or those in ``states``, when given), and how many match;
    reader thread. Only the page's rows, histories and results are read (a page of a
    100,000-child map's read them all: 0.2 s a page)."""
    wanted = {TaskRunState[s].value for s in states if s in TaskRunState.__members__}
    if states and not wanted:
        return [], 0  # (no such state: none match)
    filters: dict[str, Any] = {"task_id": task_id, "key": key, "states": wanted}
    history: dict[str, list[StateRow]] = {}
    with store.snapshot():  # the page, its count and its histories of one commit
        page = store.task_runs(flow_run_id, offset=offset, limit=limit, **filters)
        if offset == 0 and (limit is None or len(page) < limit):
            total = len(page)  # (all of them: nothing more to count)
        else:
            total = store.count_task_runs(flow_run_id, **filters)
        if len(page) <= _HISTORY_BY_KEY:
            for r in page:
                history[r.key] = store.task_run_history(flow_run_id, r.key)
        else:
            for entry in store.task_run_history(flow_run_id):
                history.setdefault(entry.key, []).append(entry)
        values = store.get_values(r.result_id for r in page if r.result_id)
    return [task_run_json(r, history.get(r.key, []), values, detail=detail) for r in page], total


def timeline_rows(store: Store, flow_run_id: str) -> JSON:
    """Every task run's bar for the timeline, as compact columns; reader thread.

    ``rows`` are ``[key, task_id, state, start, end, attempts, worker]``, where start
    is the first RUNNING (else the first SCHEDULED) time and end the terminal time
    (null while it runs)."""
    first: dict[str, float] = {}
    running: dict[str, float] = {}
    last: dict[str, float] = {}
    scheduled = TaskRunState.SCHEDULED.value
    for entry in store.task_run_history(flow_run_id):
        if entry.state == _RUNNING:
            running.setdefault(entry.key, entry.at)
        elif entry.state == scheduled:
            first.setdefault(entry.key, entry.at)
        last[entry.key] = entry.at
    out = []
    for r in store.task_runs(flow_run_id):
        state = TaskRunState(r.state)
        if state is TaskRunState.MAPPED:
            continue
        start = running.get(r.key, first.get(r.key))
        end = last.get(r.key) if state.is_terminal else None
        out.append([r.key, r.task_id, state.name, start, end, r.attempt, r.worker_id])
    return {
        "columns": ["key", "task_id", "state", "start", "end", "attempts", "worker"],
        "rows": out,
    }


def node_counts(rows: Iterable[TaskRunRow]) -> dict[str, dict[str, int]]:
    """Task runs per state for each task node (a mapped node: its children's, once it
    has expanded)."""
    counts: dict[str, dict[str, int]] = {}
    mapped: set[str] = set()
    for r in rows:
        if r.map_index < 0 and r.state == TaskRunState.MAPPED.value:
            mapped.add(r.task_id)
            continue
        by_state = counts.setdefault(r.task_id, {})
        name = TaskRunState(r.state).name
        by_state[name] = by_state.get(name, 0) + 1
    for node in mapped:
        counts.setdefault(node, {})
    return counts


def graph_json(graph: GraphSpec, version: str = "") -> JSON:
    """A flow graph's nodes and edges, for drawing it; ``version`` is the version it is
    registered as (the compiled graph's own may be empty: the server names versions)."""
    nodes = []
    for t in graph.tasks:
        upstream: list[str] = []
        for spec in t.inputs.values():
            upstream.extend(ref.task_id for ref in iter_task_refs(spec))
        upstream.extend(t.wait_for)
        nodes.append(
            {
                "id": t.id,
                "name": t.name,
                "task_type": t.task_type,
                "mapped": t.mapped is not None,
                "upstream": list(dict.fromkeys(upstream)),
                "labels": dict(t.labels),
                "retries": t.retry.max_retries,
                "timeout": t.timeout,
                "trigger": t.trigger.value,
                "cached": t.cache is not None,
            }
        )
    return {
        "name": graph.name,
        "version": version or graph.version,
        "description": graph.description,
        "parameters": [p.name for p in graph.params],
        "nodes": nodes,
    }


def stored_graph(store: Store, name: str, version: str) -> GraphSpec:
    """A registered flow version's graph (NotFound when there is none); reader thread."""
    stored = store.get_flow(name, version)
    return graph_from_proto(graph_pb2.FlowGraph.FromString(stored.graph))


def run_rows(store: Store, row: FlowRunRow) -> JSON:
    """What the run page draws first, but the graph: task runs per state per node, and
    the totals; reader thread (large runs: no per-task-run objects)."""
    rows = store.task_runs(row.id)
    totals: dict[str, int] = {}
    for r in rows:
        if r.state != TaskRunState.MAPPED.value:
            name = TaskRunState(r.state).name
            totals[name] = totals.get(name, 0) + 1
    return {"counts": node_counts(rows), "totals": totals}


def run_page(store: Store, row: FlowRunRow) -> JSON:
    """``run_rows`` and, as ``run``, ``flow_run_rows`` of a run, read again in one
    snapshot of the store: the counts and the run's state are of one commit (a run
    shown SUCCESS with a task still RUNNING, otherwise); reader thread."""
    with store.snapshot():
        row = current(store, row)
        body = run_rows(store, row)
        body["run"] = flow_run_rows(store, row)
    return body


def log_json(log: LogRow) -> JSON:
    """A log record."""
    return {
        "seq": log.seq,
        "key": log.key,
        "attempt": log.attempt,
        "at": log.at,
        "level": log.level,
        "logger": log.logger,
        "message": log.message,
    }


def schedule_json(msg: run_pb2.Schedule) -> JSON:
    """A schedule."""
    spec = msg.WhichOneof("spec")
    return {
        "id": msg.id,
        "name": msg.name,
        "flow_name": msg.flow_name,
        "flow_version": msg.flow_version,
        "every": seconds(msg.interval) if spec == "interval" else None,
        "cron": msg.cron if spec == "cron" else "",
        "timezone": msg.timezone or "UTC",
        "paused": not msg.enabled,
        "catchup": msg.catchup,
        "next_run_at": seconds(msg.next_run_at) if msg.HasField("next_run_at") else None,
        "created_at": seconds(msg.created_at) if msg.HasField("created_at") else None,
        "parameters": {name: summary(value) for name, value in msg.parameters.items()},
    }


__all__ = [
    "attempts",
    "audit_json",
    "flow_run_json",
    "graph_json",
    "log_json",
    "node_counts",
    "run_rows",
    "schedule_json",
    "stored_graph",
    "summary",
    "task_run_json",
    "task_runs_rows",
    "timeline_rows",
]
