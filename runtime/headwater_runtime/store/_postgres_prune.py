"""Retention for the PostgreSQL store: what ``PostgresStore.prune`` deletes."""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from ._base import PruneReport
from ._ops import PAYLOAD_IN_A_DIRECTORY, PER_RUN_TABLES, whole_families
from ._postgres_schema import TERMINAL

Conn = psycopg.Connection[tuple[Any, ...]]

#: Tables a prune deletes from (VACUUMed after, so their space is reused).
PRUNED_TABLES = (
    "flow_runs",
    "run_events",
    "task_runs",
    "task_run_states",
    "logs",
    "run_values",
    "payload_refs",
    "payloads",
    "payload_chunks",
    "cache_entries",
    "audit",
    *PER_RUN_TABLES,
)


def prune(
    conn: Conn,
    ended_before: float | None,
    now: float,
    grace: float,
    deleted: list[str],
    *,
    files: bool,
) -> PruneReport:
    """Delete, in the caller's transaction, finished runs that ended before
    ``ended_before`` with their journal, projections, logs and audit entries; expired
    cache entries; values nothing references; payloads nothing references older than
    ``grace`` (``files``: the store has the payload directory; without it, payloads
    whose bytes are in one are kept, ``payloads_kept``).
    ``deleted`` receives the ids of the payloads deleted (their files, if any, go
    after the commit). ``bytes_reclaimed``: the bytes of the values and payloads."""
    runs: list[str] = []
    if ended_before is not None:
        rows = conn.execute(
            "SELECT id, parent_flow_run_id FROM flow_runs WHERE state = ANY(%s) "
            "AND ended_at IS NOT NULL AND ended_at < %s",
            (list(TERMINAL), ended_before),
        )
        candidates = {r[0]: r[1] or "" for r in rows}

        def existing(ids: list[str]) -> set[str]:
            found = conn.execute("SELECT id FROM flow_runs WHERE id = ANY(%s)", (ids,))
            return {r[0] for r in found}

        runs = whole_families(candidates, existing)
    counts: dict[str, int] = {"runs": len(runs)}
    for table, key in (
        ("run_events", "journal_entries"),
        ("task_runs", "task_runs"),
        ("task_run_states", ""),
        ("logs", "logs"),
        *((table, "") for table in PER_RUN_TABLES),
    ):
        removed = conn.execute(f"DELETE FROM {table} WHERE flow_run_id = ANY(%s)", (runs,)).rowcount
        if key:
            counts[key] = removed
    conn.execute("DELETE FROM payload_refs WHERE owner = ANY(%s)", ([f"run:{r}" for r in runs],))
    conn.execute(
        "DELETE FROM audit WHERE object_kind = 'flow_run' AND object_id = ANY(%s)", (runs,)
    )
    conn.execute("DELETE FROM flow_runs WHERE id = ANY(%s)", (runs,))
    counts["cache_entries"] = conn.execute(
        "DELETE FROM cache_entries WHERE expires_at IS NOT NULL AND expires_at <= %s", (now,)
    ).rowcount
    orphans = conn.execute(
        "DELETE FROM run_values v WHERE NOT EXISTS "
        # "value_id <> ''" matches the partial index run_events_value, so each value
        # is an index probe, not a scan of the journal.
        "(SELECT 1 FROM run_events e WHERE e.value_id = v.id AND e.value_id <> '') "
        "AND NOT EXISTS "
        "(SELECT 1 FROM cache_entries c WHERE c.value_id = v.id) RETURNING id, size"
    ).fetchall()
    counts["values"] = len(orphans)
    value_bytes = sum(int(size) for _, size in orphans)
    conn.execute(
        "DELETE FROM payload_refs WHERE owner = ANY(%s)", ([f"value:{v}" for v, _ in orphans],)
    )
    unreferenced = (
        "FROM payloads p WHERE created_at < %s AND NOT EXISTS "
        "(SELECT 1 FROM payload_refs r WHERE r.payload_id = p.id)"
    )
    kept = 0
    if not files:  # bytes in a directory this store cannot delete from: keep the rows
        row = conn.execute(
            f"SELECT count(*) {unreferenced} AND {PAYLOAD_IN_A_DIRECTORY}", (now - grace,)
        ).fetchone()
        kept = int(row[0]) if row is not None else 0
        unreferenced += f" AND NOT {PAYLOAD_IN_A_DIRECTORY}"
    unused = conn.execute(f"DELETE {unreferenced} RETURNING id, size", (now - grace,)).fetchall()
    ids = [str(i) for i, _ in unused]
    conn.execute("DELETE FROM payload_chunks WHERE id = ANY(%s)", (ids,))
    deleted.extend(ids)
    payload_bytes = sum(int(size) for _, size in unused)
    return PruneReport(
        runs=counts["runs"],
        journal_entries=counts["journal_entries"],
        task_runs=counts["task_runs"],
        logs=counts["logs"],
        values=counts["values"],
        payloads=len(unused),
        payload_bytes=payload_bytes,
        cache_entries=counts["cache_entries"],
        bytes_reclaimed=payload_bytes + value_bytes,
        payloads_kept=kept,
    )


def vacuum(pool: ConnectionPool[Conn]) -> None:
    """VACUUM what a prune deleted from, so new rows reuse the space (autovacuum would
    too, later). Best effort: a failure here loses nothing."""
    with contextlib.suppress(psycopg.Error), pool.connection() as conn:
        conn.execute(f"VACUUM {', '.join(PRUNED_TABLES)}")
