"""PostgreSQL tables and methods of day-two operations (a mixin of PostgresStore).

The same behaviour as ``_sqlite_ops`` (store/_ops.py says what each method does); the
tables are created by migration 4 (``_postgres_schema``). Every write goes through
``PostgresStore._write``, so it is fenced by the leader's lease epoch like the rest;
the rows of a ``WriteBatch`` (run attempts, late marks, deliveries) are written by the
commit's own statement (store/_postgres_batch.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg

from ._base import NotFound
from ._ops import (
    DeliveryCounts,
    DeliveryRow,
    DrainRow,
    LateRow,
    LimitRow,
    RunAttemptRow,
    WebhookRow,
    WorkerRow,
)

T = TypeVar("T")
Conn = psycopg.Connection[tuple[Any, ...]]

_WORKER_COLS = (
    "name, worker_id, capabilities, labels, slots, version, language, hostname, "
    "connected_at, last_seen"
)
_WEBHOOK_COLS = "id, url, flow_names, states, late, secret, created_at"


class PostgresOps:
    """The OpsStore methods of PostgresStore (see store/_ops.py for each)."""

    # Provided by PostgresStore.
    def _write(
        self, work: Callable[[Conn], T], *, pipeline: bool = False, fenced: bool = True
    ) -> T:
        raise NotImplementedError

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _run(self, sql: str, args: Sequence[Any]) -> int:
        """One fenced write statement; the rows it changed."""
        return self._write(lambda conn: conn.execute(sql, args).rowcount)

    # ---------------------------------------------------- run attempts, late marks

    def run_attempts(self, flow_run_id: str) -> list[RunAttemptRow]:
        """A flow run's attempts, oldest first."""
        rows = self._read(
            "SELECT attempt, started_at, state, ended_at, message FROM run_attempts "
            "WHERE flow_run_id=%s ORDER BY attempt",
            (flow_run_id,),
        )
        return [
            RunAttemptRow(
                flow_run_id, int(a), float(s), int(st), None if e is None else float(e), str(m)
            )
            for a, s, st, e, m in rows
        ]

    def late_runs(self, flow_run_ids: Sequence[str]) -> dict[str, LateRow]:
        """The late marks of these runs, by run id."""
        ids = list(flow_run_ids)
        if not ids:
            return {}
        rows = self._read(
            "SELECT flow_run_id, at, reason FROM late_runs WHERE flow_run_id = ANY(%s)", (ids,)
        )
        return {str(i): LateRow(str(i), float(at), str(r)) for i, at, r in rows}

    def count_flow_runs(self) -> dict[int, int]:
        """Flow runs per state."""
        rows = self._read("SELECT state, COUNT(*) FROM flow_runs GROUP BY state")
        return {int(state): int(count) for state, count in rows}

    # ------------------------------------------------------------------ limits

    def put_limit(self, row: LimitRow) -> None:
        """Create or replace a tag's limit."""
        self._run(
            "INSERT INTO concurrency_limits VALUES (%s, %s, %s, %s) ON CONFLICT (tag) DO "
            "UPDATE SET concurrency=EXCLUDED.concurrency, rate=EXCLUDED.rate, "
            "rate_period=EXCLUDED.rate_period",
            (row.tag, row.concurrency, row.rate, row.rate_period),
        )

    def delete_limit(self, tag: str) -> None:
        """Remove a tag's limit; NotFound if it has none."""
        if self._run("DELETE FROM concurrency_limits WHERE tag=%s", (tag,)) == 0:
            raise NotFound(f"tag {tag!r} has no limit")

    def list_limits(self) -> list[LimitRow]:
        """Every limit, by tag."""
        rows = self._read(
            "SELECT tag, concurrency, rate, rate_period FROM concurrency_limits ORDER BY tag"
        )
        return [LimitRow(str(t), int(c), int(r), float(p)) for t, c, r, p in rows]

    # ----------------------------------------------------------------- workers

    def put_worker(self, row: WorkerRow) -> None:
        """Record a worker under its name."""
        values = (
            row.name,
            row.worker_id,
            json.dumps(list(row.capabilities)),
            json.dumps(row.labels, sort_keys=True),
            row.slots,
            row.version,
            row.language,
            row.hostname,
            row.connected_at,
            row.last_seen,
        )
        updates = ", ".join(f"{c}=EXCLUDED.{c}" for c in _WORKER_COLS.split(", ")[1:])
        self._run(
            f"INSERT INTO workers ({_WORKER_COLS}) VALUES "
            f"(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (name) DO UPDATE SET {updates}",
            values,
        )

    def list_workers(self) -> list[WorkerRow]:
        """Every worker recorded, by name."""
        rows = self._read(f"SELECT {_WORKER_COLS} FROM workers ORDER BY name")
        return [
            WorkerRow(
                str(n),
                str(w),
                tuple(json.loads(c)),
                json.loads(lb),
                int(s),
                str(v),
                str(lg),
                str(h),
                float(ca),
                float(ls),
            )
            for n, w, c, lb, s, v, lg, h, ca, ls in rows
        ]

    def put_drain(self, row: DrainRow) -> None:
        """Drain the workers of a name."""
        self._run(
            "INSERT INTO worker_drains VALUES (%s, %s, %s) ON CONFLICT (name) DO UPDATE SET "
            "exit_when_idle=EXCLUDED.exit_when_idle, at=EXCLUDED.at",
            (row.name, row.exit_when_idle, row.at),
        )

    def delete_drain(self, name: str) -> None:
        """Lift the drain of a name."""
        self._run("DELETE FROM worker_drains WHERE name=%s", (name,))

    def list_drains(self) -> list[DrainRow]:
        """Every drain, by name."""
        rows = self._read("SELECT name, exit_when_idle, at FROM worker_drains ORDER BY name")
        return [DrainRow(str(n), bool(e), float(at)) for n, e, at in rows]

    # ---------------------------------------------------------------- webhooks

    def put_webhook(self, row: WebhookRow) -> None:
        """Create a webhook."""
        self._run(
            f"INSERT INTO webhooks ({_WEBHOOK_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                row.id,
                row.url,
                json.dumps(list(row.flow_names)),
                json.dumps(list(row.states)),
                row.late,
                row.secret,
                row.created_at,
            ),
        )

    def delete_webhook(self, webhook_id: str) -> None:
        """Remove a webhook and its deliveries; NotFound if it does not exist."""

        def work(conn: Conn) -> None:
            if conn.execute("DELETE FROM webhooks WHERE id=%s", (webhook_id,)).rowcount == 0:
                raise NotFound(f"webhook {webhook_id!r} does not exist")
            conn.execute("DELETE FROM webhook_outbox WHERE webhook_id=%s", (webhook_id,))

        self._write(work)

    def list_webhooks(self) -> list[WebhookRow]:
        """Every webhook, oldest first."""
        rows = self._read(f"SELECT {_WEBHOOK_COLS} FROM webhooks ORDER BY created_at, id")
        return [
            WebhookRow(
                str(i),
                str(u),
                tuple(json.loads(f)),
                tuple(json.loads(s)),
                bool(lt),
                str(sec),
                float(c),
            )
            for i, u, f, s, lt, sec, c in rows
        ]

    def delivery_counts(self) -> dict[str, DeliveryCounts]:
        """Pending and failed deliveries per webhook."""
        rows = self._read(
            "SELECT o.webhook_id, COUNT(*) FILTER (WHERE o.next_at IS NOT NULL), "
            "COUNT(*) FILTER (WHERE o.next_at IS NULL), "
            "(SELECT e.last_error FROM webhook_outbox e WHERE e.webhook_id = o.webhook_id "
            "AND e.last_error <> '' ORDER BY e.id DESC LIMIT 1) "
            "FROM webhook_outbox o GROUP BY o.webhook_id"
        )
        return {
            str(w): DeliveryCounts(int(pending), int(failed), str(last or ""))
            for w, pending, failed, last in rows
        }

    def due_deliveries(self, now: float, limit: int) -> list[DeliveryRow]:
        """Each webhook's oldest delivery due at ``now``, oldest first."""
        rows = self._read(
            "SELECT id, webhook_id, body, attempts, next_at, created_at, last_error FROM ("
            "SELECT *, ROW_NUMBER() OVER (PARTITION BY webhook_id ORDER BY next_at, id) AS n "
            "FROM webhook_outbox WHERE next_at IS NOT NULL AND next_at <= %s) AS due "
            "WHERE n = 1 ORDER BY next_at, id LIMIT %s",
            (now, limit),
        )
        return [
            DeliveryRow(str(w), bytes(b), float(n), float(c), int(a), int(i), str(e))
            for i, w, b, a, n, c, e in rows
        ]

    def next_delivery_at(self) -> float | None:
        """When the earliest pending delivery is due."""
        rows = self._read("SELECT MIN(next_at) FROM webhook_outbox WHERE next_at IS NOT NULL")
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    def delivery_done(self, delivery_id: int) -> None:
        """Remove a delivery that was made."""
        self._run("DELETE FROM webhook_outbox WHERE id=%s", (delivery_id,))

    def delivery_failed(
        self, delivery_id: int, attempts: int, next_at: float | None, error: str
    ) -> None:
        """Record a failed try: due again at ``next_at``, or given up (None)."""
        self._run(
            "UPDATE webhook_outbox SET attempts=%s, next_at=%s, last_error=%s WHERE id=%s",
            (attempts, next_at, error, delivery_id),
        )
