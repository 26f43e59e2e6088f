"""SQLite schema and transaction helpers shared by the SQLite store's modules."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from typing import TypeVar

from headwater.wire import TERMINAL_FLOW_STATES

from ._base import StoreUnavailable

SCHEMA_VERSION = 5

#: Statements that bring a database of an older schema version to the next one, by
#: the version they start from. 2 -> 3: the links of child flow runs to their parent
#: (version 3 also has the ``credentials`` and ``audit`` tables, which the schema script
#: creates when they are missing). 3 -> 4: the credential that uploaded each payload.
#: 4 -> 5: the worker holding each task run's delivered attempt.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "ALTER TABLE flow_runs ADD COLUMN parent_flow_run_id TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE flow_runs ADD COLUMN parent_task_key TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE flow_runs ADD COLUMN parent_attempt INTEGER NOT NULL DEFAULT 0",
    ),
    # (NULL: the payloads stored before, whose uploader nobody knows.)
    3: ("ALTER TABLE payloads ADD COLUMN uploader TEXT",),
    # (NULL: deliveries stored before, whose holder nobody knows.)
    4: ("ALTER TABLE task_runs ADD COLUMN holder TEXT",),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS flows (
    name TEXT NOT NULL, version TEXT NOT NULL, seq INTEGER NOT NULL, digest TEXT NOT NULL,
    graph BLOB NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (name, version));
CREATE INDEX IF NOT EXISTS flows_digest ON flows (name, digest);
CREATE TABLE IF NOT EXISTS flow_runs (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, flow_name TEXT NOT NULL,
    flow_version TEXT NOT NULL, state INTEGER NOT NULL, created_at REAL NOT NULL,
    parameters BLOB NOT NULL, idempotency_key TEXT, started_at REAL, ended_at REAL,
    result BLOB NOT NULL, message TEXT NOT NULL, trace_context TEXT NOT NULL,
    schedule_id TEXT NOT NULL, engine_version TEXT NOT NULL,
    parent_flow_run_id TEXT NOT NULL DEFAULT '', parent_task_key TEXT NOT NULL DEFAULT '',
    parent_attempt INTEGER NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX IF NOT EXISTS flow_runs_idem ON flow_runs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS flow_runs_state ON flow_runs (state);
CREATE INDEX IF NOT EXISTS flow_runs_ended ON flow_runs (ended_at);
CREATE INDEX IF NOT EXISTS flow_runs_parent ON flow_runs (parent_flow_run_id)
    WHERE parent_flow_run_id != '';
CREATE TABLE IF NOT EXISTS run_events (
    flow_run_id TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, kind TEXT NOT NULL,
    body BLOB NOT NULL, value_id TEXT NOT NULL, PRIMARY KEY (flow_run_id, seq));
CREATE INDEX IF NOT EXISTS run_events_value ON run_events (value_id) WHERE value_id != '';
CREATE TABLE IF NOT EXISTS run_values (
    id TEXT PRIMARY KEY, data BLOB NOT NULL, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS task_runs (
    flow_run_id TEXT NOT NULL, key TEXT NOT NULL, task_id TEXT NOT NULL,
    map_index INTEGER NOT NULL, state INTEGER NOT NULL, attempt INTEGER NOT NULL,
    updated_at REAL NOT NULL, worker_id TEXT NOT NULL, cache_key TEXT NOT NULL,
    result_id TEXT NOT NULL, delivered INTEGER NOT NULL, holder TEXT,
    PRIMARY KEY (flow_run_id, key));
CREATE TABLE IF NOT EXISTS task_run_states (
    flow_run_id TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, state INTEGER NOT NULL,
    at REAL NOT NULL, attempt INTEGER NOT NULL, message TEXT NOT NULL, failure BLOB NOT NULL,
    PRIMARY KEY (flow_run_id, key, seq));
CREATE TABLE IF NOT EXISTS logs (
    flow_run_id TEXT NOT NULL, key TEXT NOT NULL, attempt INTEGER NOT NULL, at REAL NOT NULL,
    level TEXT NOT NULL, logger TEXT NOT NULL, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS logs_run ON logs (flow_run_id, key);
CREATE TABLE IF NOT EXISTS payloads (
    id TEXT PRIMARY KEY, size INTEGER NOT NULL, metadata TEXT NOT NULL, sha256 TEXT NOT NULL,
    created_at REAL NOT NULL, uploader TEXT);
CREATE TABLE IF NOT EXISTS payload_chunks (
    id TEXT NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (id, idx));
CREATE TABLE IF NOT EXISTS payload_refs (
    owner TEXT NOT NULL, payload_id TEXT NOT NULL, PRIMARY KEY (owner, payload_id));
CREATE INDEX IF NOT EXISTS payload_refs_payload ON payload_refs (payload_id);
CREATE TABLE IF NOT EXISTS cache_entries (
    key TEXT PRIMARY KEY, value_id TEXT NOT NULL, expires_at REAL);
CREATE INDEX IF NOT EXISTS cache_entries_value ON cache_entries (value_id);
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT PRIMARY KEY, flow_name TEXT NOT NULL, body BLOB NOT NULL, next_run_at REAL,
    enabled INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS credentials (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, role TEXT NOT NULL,
    secret_hash TEXT NOT NULL, subject TEXT NOT NULL, created_at REAL NOT NULL,
    created_by TEXT NOT NULL, revoked_at REAL);
CREATE UNIQUE INDEX IF NOT EXISTS credentials_name ON credentials (name)
    WHERE revoked_at IS NULL;
CREATE INDEX IF NOT EXISTS credentials_hash ON credentials (secret_hash);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL,
    action TEXT NOT NULL, object_kind TEXT NOT NULL, object_id TEXT NOT NULL,
    detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_object ON audit (object_kind, object_id);
"""

_TERMINAL_FLOW_STATES = tuple(s.value for s in TERMINAL_FLOW_STATES)
_IN_TERMINAL = f"({', '.join('?' * len(_TERMINAL_FLOW_STATES))})"

T = TypeVar("T")


def _unavailable(exc: sqlite3.Error) -> StoreUnavailable:
    text = str(exc)
    full = "full" in text.lower()
    return StoreUnavailable(f"cannot write to the database: {text}", full=full)


def _transaction(db: sqlite3.Connection, work: Callable[[], T]) -> T:
    """Run ``work`` in one IMMEDIATE transaction; roll back on any error. SQLite errors
    that mean "cannot write now" become StoreUnavailable (SQLite may already have rolled
    back by itself, e.g. when the disk is full: then there is nothing left to undo)."""
    try:
        db.execute("BEGIN IMMEDIATE")
        result = work()
        db.execute("COMMIT")
        return result
    except BaseException as exc:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
            exc, sqlite3.IntegrityError
        ):
            raise _unavailable(exc) from exc
        raise
