"""The PostgreSQL schema as numbered migrations, applied by the server at start.

``MIGRATIONS[n - 1]`` takes a database from version ``n - 1`` to ``n``; the versions
applied are recorded in ``schema_migrations``. Every server (leader or standby)
migrates when it starts, one at a time (a transaction-scoped advisory lock per
schema), each migration in the same transaction as its record, so a crash mid-way
leaves the previous version. A database of a version newer than this server knows is
refused, naming both versions, and nothing is changed. Migrations only add: a server
of the previous version keeps working on a migrated database until it is replaced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from headwater.wire import TERMINAL_FLOW_STATES

from ._open import StoreNotFound


@dataclass(frozen=True)
class Migration:
    """One step of the schema: its version, what it does, its SQL."""

    version: int
    description: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "flows, runs, journal, projections, values, payloads, cache, schedules",
        """
CREATE TABLE flows (
    name TEXT NOT NULL, version TEXT NOT NULL, seq BIGINT NOT NULL, digest TEXT NOT NULL,
    graph BYTEA NOT NULL, created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (name, version));
CREATE INDEX flows_digest ON flows (name, digest);
CREATE TABLE flow_runs (
    id TEXT PRIMARY KEY, seq BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    flow_name TEXT NOT NULL, flow_version TEXT NOT NULL, state INTEGER NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, parameters BYTEA NOT NULL,
    idempotency_key TEXT UNIQUE, started_at DOUBLE PRECISION, ended_at DOUBLE PRECISION,
    result BYTEA NOT NULL, message TEXT NOT NULL, trace_context TEXT NOT NULL,
    schedule_id TEXT NOT NULL, engine_version TEXT NOT NULL);
CREATE INDEX flow_runs_state ON flow_runs (state);
CREATE INDEX flow_runs_ended ON flow_runs (ended_at);
CREATE INDEX flow_runs_name ON flow_runs (flow_name, seq);
CREATE TABLE run_events (
    flow_run_id TEXT NOT NULL, seq BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL, body BYTEA NOT NULL, value_id TEXT NOT NULL,
    PRIMARY KEY (flow_run_id, seq));
CREATE INDEX run_events_value ON run_events (value_id) WHERE value_id <> '';
CREATE TABLE run_values (id TEXT PRIMARY KEY, data BYTEA NOT NULL, size BIGINT NOT NULL);
CREATE TABLE task_runs (
    flow_run_id TEXT NOT NULL, key TEXT NOT NULL,
    ord BIGINT GENERATED ALWAYS AS IDENTITY, task_id TEXT NOT NULL,
    map_index INTEGER NOT NULL, state INTEGER NOT NULL, attempt INTEGER NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL, worker_id TEXT NOT NULL, cache_key TEXT NOT NULL,
    result_id TEXT NOT NULL, delivered INTEGER NOT NULL, PRIMARY KEY (flow_run_id, key));
CREATE INDEX task_runs_order ON task_runs (flow_run_id, ord);
CREATE TABLE task_run_states (
    ord BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    flow_run_id TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, state INTEGER NOT NULL,
    at DOUBLE PRECISION NOT NULL, attempt INTEGER NOT NULL, message TEXT NOT NULL,
    failure BYTEA NOT NULL, UNIQUE (flow_run_id, key, seq));
CREATE TABLE logs (
    ord BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    flow_run_id TEXT NOT NULL, key TEXT NOT NULL, attempt INTEGER NOT NULL,
    at DOUBLE PRECISION NOT NULL, level TEXT NOT NULL, logger TEXT NOT NULL,
    message TEXT NOT NULL);
CREATE INDEX logs_run ON logs (flow_run_id, key);
CREATE TABLE payloads (
    id TEXT PRIMARY KEY, size BIGINT NOT NULL, metadata TEXT NOT NULL, sha256 TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL);
CREATE TABLE payload_chunks (
    id TEXT NOT NULL, idx INTEGER NOT NULL, data BYTEA NOT NULL, PRIMARY KEY (id, idx));
-- Payload bytes are stored as they come: PostgreSQL's compression (pglz) of a 1 MiB
-- chunk costs ~0.5 s of its CPU, more than it ever saves (pickles of arrays, archives).
ALTER TABLE payload_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE payload_refs (
    owner TEXT NOT NULL, payload_id TEXT NOT NULL, PRIMARY KEY (owner, payload_id));
CREATE INDEX payload_refs_payload ON payload_refs (payload_id);
CREATE TABLE cache_entries (
    key TEXT PRIMARY KEY, value_id TEXT NOT NULL, expires_at DOUBLE PRECISION);
CREATE INDEX cache_entries_value ON cache_entries (value_id);
CREATE TABLE schedules (
    id TEXT PRIMARY KEY, flow_name TEXT NOT NULL, body BYTEA NOT NULL,
    next_run_at DOUBLE PRECISION, enabled BOOLEAN NOT NULL);
""",
    ),
    Migration(
        2,
        "the leader lease (several servers, one leading), and the epoch of every journal "
        "entry's writer",
        """
CREATE TABLE leader_lease (
    id INTEGER PRIMARY KEY CHECK (id = 1), holder TEXT NOT NULL, address TEXT NOT NULL,
    epoch BIGINT NOT NULL, expires_at TIMESTAMPTZ NOT NULL);
INSERT INTO leader_lease VALUES (1, '', '', 0, '-infinity');
ALTER TABLE run_events ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
""",
    ),
    Migration(
        3,
        "child flow runs linked to their parent; credentials and the audit log; log paging",
        """
ALTER TABLE flow_runs ADD COLUMN parent_flow_run_id TEXT NOT NULL DEFAULT '';
ALTER TABLE flow_runs ADD COLUMN parent_task_key TEXT NOT NULL DEFAULT '';
ALTER TABLE flow_runs ADD COLUMN parent_attempt INTEGER NOT NULL DEFAULT 0;
CREATE INDEX flow_runs_parent ON flow_runs (parent_flow_run_id)
    WHERE parent_flow_run_id <> '';
-- Run ids by prefix (the CLI's short ids): a range scan whatever the collation.
CREATE INDEX flow_runs_id_prefix ON flow_runs (id text_pattern_ops);
CREATE INDEX logs_run_ord ON logs (flow_run_id, ord);
CREATE TABLE credentials (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name TEXT NOT NULL,
    role TEXT NOT NULL, secret_hash TEXT NOT NULL, subject TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, created_by TEXT NOT NULL,
    revoked_at DOUBLE PRECISION);
CREATE UNIQUE INDEX credentials_name ON credentials (name) WHERE revoked_at IS NULL;
CREATE UNIQUE INDEX credentials_subject ON credentials (subject)
    WHERE revoked_at IS NULL AND subject <> '';
CREATE INDEX credentials_hash ON credentials (secret_hash);
-- A number every credential change increments: a server polls it (a cheap read) to
-- notice changes made by another server or by `headwater tokens --db`.
CREATE TABLE credentials_generation (
    id INTEGER PRIMARY KEY CHECK (id = 1), generation BIGINT NOT NULL);
INSERT INTO credentials_generation VALUES (1, 0);
CREATE TABLE audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL, action TEXT NOT NULL, object_kind TEXT NOT NULL,
    object_id TEXT NOT NULL, detail TEXT NOT NULL);
CREATE INDEX audit_object ON audit (object_kind, object_id);
""",
    ),
    Migration(
        4,
        "day-two operations: flow run attempts, late runs, tag limits, workers and drains, "
        "webhooks and their delivery outbox",
        """
CREATE TABLE run_attempts (
    flow_run_id TEXT NOT NULL, attempt INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL, state INTEGER NOT NULL,
    ended_at DOUBLE PRECISION, message TEXT NOT NULL, PRIMARY KEY (flow_run_id, attempt));
CREATE TABLE late_runs (
    flow_run_id TEXT PRIMARY KEY, at DOUBLE PRECISION NOT NULL, reason TEXT NOT NULL);
CREATE TABLE concurrency_limits (
    tag TEXT PRIMARY KEY, concurrency INTEGER NOT NULL, rate INTEGER NOT NULL,
    rate_period DOUBLE PRECISION NOT NULL);
-- capabilities and labels: JSON text, as the SQLite store keeps them.
CREATE TABLE workers (
    name TEXT PRIMARY KEY, worker_id TEXT NOT NULL, capabilities TEXT NOT NULL,
    labels TEXT NOT NULL, slots INTEGER NOT NULL, version TEXT NOT NULL,
    language TEXT NOT NULL, hostname TEXT NOT NULL,
    connected_at DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL);
CREATE TABLE worker_drains (
    name TEXT PRIMARY KEY, exit_when_idle BOOLEAN NOT NULL, at DOUBLE PRECISION NOT NULL);
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY, url TEXT NOT NULL, flow_names TEXT NOT NULL, states TEXT NOT NULL,
    late BOOLEAN NOT NULL, secret TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL);
-- next_at NULL: given up (kept, counted as failed).
CREATE TABLE webhook_outbox (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, webhook_id TEXT NOT NULL,
    body BYTEA NOT NULL, attempts INTEGER NOT NULL, next_at DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL, last_error TEXT NOT NULL);
CREATE INDEX webhook_outbox_due ON webhook_outbox (next_at) WHERE next_at IS NOT NULL;
CREATE INDEX webhook_outbox_webhook ON webhook_outbox (webhook_id);
""",
    ),
    Migration(
        5,
        "the credential that uploaded each payload (a worker-only credential reads and "
        "references its own uploads)",
        """
-- NULL: the payloads stored before, whose uploader nobody knows.
ALTER TABLE payloads ADD COLUMN uploader TEXT;
""",
    ),
    Migration(
        6,
        "the worker holding each task run's delivered attempt (after a restart, only "
        "that worker keeps it)",
        """
-- NULL: deliveries stored before, whose holder nobody knows.
ALTER TABLE task_runs ADD COLUMN holder TEXT;
""",
    ),
)

#: The schema version this server writes (the last migration's).
PG_SCHEMA_VERSION = MIGRATIONS[-1].version

TERMINAL = tuple(s.value for s in TERMINAL_FLOW_STATES)


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer Headwater than this server."""


#: The columns of Headwater's own ``schema_migrations`` table, and its version's type.
_OUR_MIGRATIONS_TABLE = [
    ("applied_at", "timestamp with time zone"),
    ("description", "text"),
    ("version", "integer"),
]


def schema_version(conn: psycopg.Connection[tuple[Any, ...]], where: str = "") -> int:
    """The version of the schema the connection's search path sees (0: none).
    RuntimeError for a ``schema_migrations`` table that is not Headwater's (other
    migration tools name theirs so too): its versions mean nothing here."""
    # From the catalog, which shows every table: information_schema shows only those
    # the role has privileges on, and a role without them read "no Headwater schema"
    # where there was one (then failed creating its tables: "already exists").
    columns = conn.execute(
        "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass('schema_migrations') AND attnum > 0 "
        "AND NOT attisdropped ORDER BY 1"
    ).fetchall()
    if not columns:
        return 0
    if [tuple(c) for c in columns] != _OUR_MIGRATIONS_TABLE:
        raise RuntimeError(
            f"the database {where or '(this one)'} has a table schema_migrations that is "
            "not Headwater's (another program's migrations): give Headwater a database or a "
            "schema of its own (e.g. options=-csearch_path%3Dheadwater in the URL)"
        )
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row is not None else 0


def check_current(
    conn: psycopg.Connection[tuple[Any, ...]], where: str, *, none_ok: bool = False
) -> None:
    """Refuse a database whose schema is not this version's (older or newer, and none
    unless ``none_ok``): the commands beside a server (prune, tokens) never migrate
    one, and only ``tokens create`` makes one where there is none; a dry run upgraded
    the database an older server still ran on."""
    current, latest = schema_version(conn, where), MIGRATIONS[-1].version
    if current == 0:
        if none_ok:
            return
        raise StoreNotFound(f"no Headwater database at {where} (no Headwater schema in it)")
    if current == latest:
        return
    said = f"database {where} has schema version {current}, and this Headwater uses {latest}"
    if current > latest:
        raise RuntimeError(f"{said}: it was migrated by a newer Headwater; use that version on it")
    raise RuntimeError(
        f"{said}: use the Headwater whose server runs on it, or start a server of this "
        "version on it, which migrates it"
    )


def migrate(
    conn: psycopg.Connection[tuple[Any, ...]],
    where: str,
    migrations: tuple[Migration, ...] = MIGRATIONS,
) -> list[int]:
    """Bring the schema up to the last of ``migrations``; the versions applied.

    Raises SchemaTooNew, changing nothing, when the database is newer. ``where`` names
    the database in messages (its URL without a password)."""
    latest = migrations[-1].version
    applied: list[int] = []
    with conn.transaction():
        # One migrating server at a time per schema (others wait, then find it done).
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('headwater:' || current_schema()))")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
            "description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        current = schema_version(conn, where)
        if current > latest:
            raise SchemaTooNew(
                f"database {where} has schema version {current}, newer than the "
                f"{latest} this server knows: it was migrated by a newer Headwater. "
                "Upgrade this server (every server on one database runs the same version)"
            )
        for step in migrations:
            if step.version <= current:
                continue
            conn.execute(step.sql.encode())  # bytes: several statements, no parameters
            conn.execute(
                "INSERT INTO schema_migrations (version, description) VALUES (%s, %s)",
                (step.version, step.description),
            )
            applied.append(step.version)
    return applied
