"""SQLite tables and methods of day-two operations (store/_ops.py).

The tables are created with ``IF NOT EXISTS`` when the store opens, beside the core
schema: they only add, so a database of the same ``SCHEMA_VERSION`` written before
them gains them, and a server that does not know them ignores them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence

from ._base import NotFound, WriteBatch
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
from ._sqlite_schema import _transaction

OPS_SCHEMA = """
CREATE TABLE IF NOT EXISTS run_attempts (
    flow_run_id TEXT NOT NULL, attempt INTEGER NOT NULL, started_at REAL NOT NULL,
    state INTEGER NOT NULL, ended_at REAL, message TEXT NOT NULL,
    PRIMARY KEY (flow_run_id, attempt));
CREATE TABLE IF NOT EXISTS late_runs (
    flow_run_id TEXT PRIMARY KEY, at REAL NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS concurrency_limits (
    tag TEXT PRIMARY KEY, concurrency INTEGER NOT NULL, rate INTEGER NOT NULL,
    rate_period REAL NOT NULL);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY, worker_id TEXT NOT NULL, capabilities TEXT NOT NULL,
    labels TEXT NOT NULL, slots INTEGER NOT NULL, version TEXT NOT NULL,
    language TEXT NOT NULL, hostname TEXT NOT NULL, connected_at REAL NOT NULL,
    last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS worker_drains (
    name TEXT PRIMARY KEY, exit_when_idle INTEGER NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS webhooks (
    id TEXT PRIMARY KEY, url TEXT NOT NULL, flow_names TEXT NOT NULL, states TEXT NOT NULL,
    late INTEGER NOT NULL, secret TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, webhook_id TEXT NOT NULL, body BLOB NOT NULL,
    attempts INTEGER NOT NULL, next_at REAL, created_at REAL NOT NULL,
    last_error TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (next_at)
    WHERE next_at IS NOT NULL;
"""


def write_ops(db: sqlite3.Connection, batch: WriteBatch) -> None:
    """Write a batch's operations rows (inside its transaction)."""
    ops = batch.ops
    if ops.run_attempts:
        db.executemany(
            # (an upsert: REPLACE deletes and inserts, writing the key's index again)
            "INSERT INTO run_attempts VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (flow_run_id, "
            "attempt) DO UPDATE SET started_at=excluded.started_at, state=excluded.state, "
            "ended_at=excluded.ended_at, message=excluded.message",
            [
                (a.flow_run_id, a.attempt, a.started_at, a.state, a.ended_at, a.message)
                for a in ops.run_attempts
            ],
        )
    if ops.late:
        db.executemany(
            "INSERT OR REPLACE INTO late_runs VALUES (?, ?, ?)",
            [(m.flow_run_id, m.at, m.reason) for m in ops.late],
        )
    if ops.deliveries:
        db.executemany(
            "INSERT INTO webhook_outbox (webhook_id, body, attempts, next_at, created_at, "
            "last_error) SELECT ?, ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM webhooks WHERE id=?)",
            [
                (
                    d.webhook_id,
                    d.body,
                    d.attempts,
                    d.next_at,
                    d.created_at,
                    d.last_error,
                    d.webhook_id,
                )
                for d in ops.deliveries
            ],
        )


class SQLiteOps:
    """The OpsStore methods of SQLiteStore (a mixin: it needs the store's ``_db``)."""

    @property
    def _db(self) -> sqlite3.Connection:
        raise NotImplementedError  # SQLiteStore's own property comes first in the MRO

    # ---------------------------------------------------- run attempts, late marks

    def run_attempts(self, flow_run_id: str) -> list[RunAttemptRow]:
        """A flow run's attempts, oldest first."""
        rows = self._db.execute(
            "SELECT attempt, started_at, state, ended_at, message FROM run_attempts "
            "WHERE flow_run_id=? ORDER BY attempt",
            (flow_run_id,),
        )
        return [RunAttemptRow(flow_run_id, a, s, st, e, m) for a, s, st, e, m in rows]

    def late_runs(self, flow_run_ids: Sequence[str]) -> dict[str, LateRow]:
        """The late marks of these runs, by run id."""
        found: dict[str, LateRow] = {}
        ids = list(flow_run_ids)
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            rows = self._db.execute(
                "SELECT flow_run_id, at, reason FROM late_runs "
                f"WHERE flow_run_id IN ({','.join('?' * len(part))})",
                part,
            )
            found.update((str(i), LateRow(str(i), float(at), str(r))) for i, at, r in rows)
        return found

    def count_flow_runs(self) -> dict[int, int]:
        """Flow runs per state."""
        rows = self._db.execute("SELECT state, COUNT(*) FROM flow_runs GROUP BY state")
        return {int(state): int(count) for state, count in rows}

    # ------------------------------------------------------------------ limits

    def put_limit(self, row: LimitRow) -> None:
        """Create or replace a tag's limit."""
        db = self._db
        _transaction(
            db,
            lambda: db.execute(
                "INSERT OR REPLACE INTO concurrency_limits VALUES (?, ?, ?, ?)",
                (row.tag, row.concurrency, row.rate, row.rate_period),
            ),
        )

    def delete_limit(self, tag: str) -> None:
        """Remove a tag's limit; NotFound if it has none."""
        db = self._db

        def work() -> None:
            if db.execute("DELETE FROM concurrency_limits WHERE tag=?", (tag,)).rowcount == 0:
                raise NotFound(f"tag {tag!r} has no limit")

        _transaction(db, work)

    def list_limits(self) -> list[LimitRow]:
        """Every limit, by tag."""
        rows = self._db.execute(
            "SELECT tag, concurrency, rate, rate_period FROM concurrency_limits"
        )
        return sorted((LimitRow(*r) for r in rows), key=lambda r: r.tag)

    # ----------------------------------------------------------------- workers

    def put_worker(self, row: WorkerRow) -> None:
        """Record a worker under its name."""
        db = self._db
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
        _transaction(
            db,
            lambda: db.execute(
                "INSERT OR REPLACE INTO workers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values
            ),
        )

    def list_workers(self) -> list[WorkerRow]:
        """Every worker recorded, by name."""
        rows = self._db.execute("SELECT * FROM workers ORDER BY name")
        return [
            WorkerRow(n, w, tuple(json.loads(c)), json.loads(lb), s, v, lg, h, ca, ls)
            for n, w, c, lb, s, v, lg, h, ca, ls in rows
        ]

    def put_drain(self, row: DrainRow) -> None:
        """Drain the workers of a name."""
        db = self._db
        _transaction(
            db,
            lambda: db.execute(
                "INSERT OR REPLACE INTO worker_drains VALUES (?, ?, ?)",
                (row.name, int(row.exit_when_idle), row.at),
            ),
        )

    def delete_drain(self, name: str) -> None:
        """Lift the drain of a name."""
        db = self._db
        _transaction(db, lambda: db.execute("DELETE FROM worker_drains WHERE name=?", (name,)))

    def list_drains(self) -> list[DrainRow]:
        """Every drain, by name."""
        rows = self._db.execute("SELECT name, exit_when_idle, at FROM worker_drains ORDER BY name")
        return [DrainRow(n, bool(e), at) for n, e, at in rows]

    # ---------------------------------------------------------------- webhooks

    def put_webhook(self, row: WebhookRow) -> None:
        """Create a webhook."""
        db = self._db
        values = (
            row.id,
            row.url,
            json.dumps(list(row.flow_names)),
            json.dumps(list(row.states)),
            int(row.late),
            row.secret,
            row.created_at,
        )
        _transaction(
            db, lambda: db.execute("INSERT INTO webhooks VALUES (?, ?, ?, ?, ?, ?, ?)", values)
        )

    def delete_webhook(self, webhook_id: str) -> None:
        """Remove a webhook and its deliveries; NotFound if it does not exist."""
        db = self._db

        def work() -> None:
            if db.execute("DELETE FROM webhooks WHERE id=?", (webhook_id,)).rowcount == 0:
                raise NotFound(f"webhook {webhook_id!r} does not exist")
            db.execute("DELETE FROM webhook_outbox WHERE webhook_id=?", (webhook_id,))

        _transaction(db, work)

    def list_webhooks(self) -> list[WebhookRow]:
        """Every webhook, oldest first."""
        rows = self._db.execute("SELECT * FROM webhooks ORDER BY created_at, id")
        return [
            WebhookRow(i, u, tuple(json.loads(f)), tuple(json.loads(s)), bool(lt), sec, c)
            for i, u, f, s, lt, sec, c in rows
        ]

    def delivery_counts(self) -> dict[str, DeliveryCounts]:
        """Pending and failed deliveries per webhook."""
        counts: dict[str, DeliveryCounts] = {}
        for webhook_id, pending, failed in self._db.execute(
            "SELECT webhook_id, SUM(next_at IS NOT NULL), SUM(next_at IS NULL) "
            "FROM webhook_outbox GROUP BY webhook_id"
        ):
            last = self._db.execute(
                "SELECT last_error FROM webhook_outbox WHERE webhook_id=? AND last_error != '' "
                "ORDER BY id DESC LIMIT 1",
                (webhook_id,),
            ).fetchone()
            counts[str(webhook_id)] = DeliveryCounts(
                int(pending), int(failed), str(last[0]) if last else ""
            )
        return counts

    def due_deliveries(self, now: float, limit: int) -> list[DeliveryRow]:
        """Each webhook's oldest delivery due at ``now``, oldest first."""
        rows = self._db.execute(
            "SELECT id, webhook_id, body, attempts, next_at, created_at, last_error FROM ("
            "SELECT *, ROW_NUMBER() OVER (PARTITION BY webhook_id ORDER BY next_at, id) AS n "
            "FROM webhook_outbox WHERE next_at IS NOT NULL AND next_at <= ?) AS due "
            "WHERE n = 1 ORDER BY next_at, id LIMIT ?",
            (now, limit),
        )
        return [DeliveryRow(w, bytes(b), n, c, a, i, e) for i, w, b, a, n, c, e in rows.fetchall()]

    def next_delivery_at(self) -> float | None:
        """When the earliest pending delivery is due."""
        row = self._db.execute(
            "SELECT MIN(next_at) FROM webhook_outbox WHERE next_at IS NOT NULL"
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def delivery_done(self, delivery_id: int) -> None:
        """Remove a delivery that was made."""
        db = self._db
        _transaction(
            db, lambda: db.execute("DELETE FROM webhook_outbox WHERE id=?", (delivery_id,))
        )

    def delivery_failed(
        self, delivery_id: int, attempts: int, next_at: float | None, error: str
    ) -> None:
        """Record a failed try: due again at ``next_at``, or given up (None)."""
        db = self._db
        _transaction(
            db,
            lambda: db.execute(
                "UPDATE webhook_outbox SET attempts=?, next_at=?, last_error=? WHERE id=?",
                (attempts, next_at, error, delivery_id),
            ),
        )
