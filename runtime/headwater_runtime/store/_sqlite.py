"""SQLite (WAL) implementation of the store.

WAL with ``synchronous=NORMAL``: a committed transaction survives the server process
being killed (SIGKILL), which is the failure the control plane must tolerate; it can
lose the last transactions on power loss or an OS crash. ``durable=True`` selects
``synchronous=FULL`` for that case, at a cost per commit.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from headwater.wire import CHUNK_SIZE, TERMINAL_FLOW_STATES

from ._base import (
    CacheRow,
    Conflict,
    FlowRunRow,
    FlowVersion,
    LogRow,
    NotFound,
    PayloadMeta,
    RunEvent,
    ScheduleRow,
    StateRow,
    TaskRunRow,
    WriteBatch,
)

SCHEMA_VERSION = 1

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
    schedule_id TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS flow_runs_idem ON flow_runs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS flow_runs_state ON flow_runs (state);
CREATE TABLE IF NOT EXISTS run_events (
    flow_run_id TEXT NOT NULL, seq INTEGER NOT NULL, at REAL NOT NULL, kind TEXT NOT NULL,
    body BLOB NOT NULL, PRIMARY KEY (flow_run_id, seq));
CREATE TABLE IF NOT EXISTS task_runs (
    flow_run_id TEXT NOT NULL, key TEXT NOT NULL, task_id TEXT NOT NULL,
    map_index INTEGER NOT NULL, state INTEGER NOT NULL, attempt INTEGER NOT NULL,
    updated_at REAL NOT NULL, worker_id TEXT NOT NULL, cache_key TEXT NOT NULL,
    result BLOB NOT NULL, PRIMARY KEY (flow_run_id, key));
CREATE TABLE IF NOT EXISTS task_run_states (
    flow_run_id TEXT NOT NULL, key TEXT NOT NULL, seq INTEGER NOT NULL, state INTEGER NOT NULL,
    at REAL NOT NULL, attempt INTEGER NOT NULL, message TEXT NOT NULL, failure BLOB NOT NULL,
    PRIMARY KEY (flow_run_id, key, seq));
CREATE TABLE IF NOT EXISTS logs (
    flow_run_id TEXT NOT NULL, key TEXT NOT NULL, attempt INTEGER NOT NULL, at REAL NOT NULL,
    level TEXT NOT NULL, logger TEXT NOT NULL, message TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS logs_run ON logs (flow_run_id, key);
CREATE TABLE IF NOT EXISTS payloads (
    id TEXT PRIMARY KEY, size INTEGER NOT NULL, metadata TEXT NOT NULL, sha256 TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS payload_chunks (
    id TEXT NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (id, idx));
CREATE TABLE IF NOT EXISTS cache_entries (
    key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL);
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT PRIMARY KEY, flow_name TEXT NOT NULL, body BLOB NOT NULL, next_run_at REAL,
    enabled INTEGER NOT NULL);
"""

_TERMINAL_FLOW_STATES = tuple(s.value for s in TERMINAL_FLOW_STATES)


class PayloadWriter:
    """One payload upload in progress (see SQLiteStore.begin_payload).

    Args:
        db: the store's connection.
        metadata: the payload's metadata (``encoding`` included).
        size: the declared size in bytes.
        sha256: the declared SHA-256 (hex), or "" to skip the check.
    """

    def __init__(
        self, db: sqlite3.Connection, metadata: dict[str, str], size: int, sha256: str
    ) -> None:
        self._db = db
        self.id = uuid.uuid4().hex
        self.metadata = dict(metadata)
        self.size = size
        self.expected_sha256 = sha256
        self._digest = hashlib.sha256()
        self._buffer = bytearray()
        self._index = 0
        self.received = 0
        self._done = False

    def write(self, chunk: bytes) -> None:
        """Append bytes; ValueError once they exceed the declared size."""
        if self._done:
            raise ValueError("payload upload already finished")
        self.received += len(chunk)
        if self.received > self.size:
            raise ValueError(f"payload is larger than its declared size of {self.size} bytes")
        self._digest.update(chunk)
        self._buffer += chunk
        while len(self._buffer) >= CHUNK_SIZE:
            self._store(bytes(self._buffer[:CHUNK_SIZE]))
            del self._buffer[:CHUNK_SIZE]

    def _store(self, data: bytes) -> None:
        self._db.execute(
            "INSERT INTO payload_chunks VALUES (?, ?, ?)", (self.id, self._index, data)
        )
        self._index += 1

    def finish(self) -> PayloadMeta:
        """Check size and hash, then make the payload visible."""
        if self.received != self.size:
            raise ValueError(f"payload has {self.received} bytes but declared {self.size}")
        actual = self._digest.hexdigest()
        if self.expected_sha256 and self.expected_sha256 != actual:
            raise ValueError("payload bytes do not match the declared sha256")
        if self._buffer:
            self._store(bytes(self._buffer))
            self._buffer.clear()
        self._db.execute(
            "INSERT INTO payloads VALUES (?, ?, ?, ?)",
            (self.id, self.size, json.dumps(self.metadata, sort_keys=True), actual),
        )
        self._done = True
        return PayloadMeta(self.id, self.size, self.metadata, actual)

    def abort(self) -> None:
        """Forget the chunks stored so far."""
        if not self._done:
            self._done = True
            self._db.execute("DELETE FROM payload_chunks WHERE id=?", (self.id,))


class SQLiteStore:
    """The default store: one SQLite file in WAL mode.

    Args:
        path: database file (parent folders are created); ":memory:" for tests.
        durable: fsync every commit (synchronous=FULL) rather than relying on WAL.
    """

    def __init__(self, path: str | Path, *, durable: bool = False) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.path = str(Path(self.path).expanduser())
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise RuntimeError(f"cannot open the database {self.path}: {exc}") from exc
        # Chunks of uploads that never finished (the server died mid-upload).
        self._db.execute("DELETE FROM payload_chunks WHERE id NOT IN (SELECT id FROM payloads)")
        row = self._db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            self._db.execute(
                "INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(row[0]) != SCHEMA_VERSION:
            raise RuntimeError(
                f"database {self.path} has schema version {row[0]}, this server needs "
                f"{SCHEMA_VERSION}"
            )

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    # ------------------------------------------------------------------ flows

    def put_flow(
        self, name: str, digest: str, graph: bytes, version: str, now: float
    ) -> tuple[FlowVersion, bool]:
        """Store a flow version; the same graph (by digest) returns the stored version.

        An empty ``version`` is numbered 1, 2, ... per flow name."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            same = db.execute(
                "SELECT version, created_at FROM flows WHERE name=? AND digest=?"
                + (" AND version=?" if version else " ORDER BY seq DESC LIMIT 1"),
                (name, digest, version) if version else (name, digest),
            ).fetchone()
            if same is not None:
                db.execute("COMMIT")
                return FlowVersion(name, same[0], digest, graph, same[1]), False
            seq = db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM flows WHERE name=?", (name,)
            ).fetchone()[0]
            version = version or str(seq)
            taken = db.execute(
                "SELECT 1 FROM flows WHERE name=? AND version=?", (name, version)
            ).fetchone()
            if taken:
                raise Conflict(
                    f"flow {name!r} version {version!r} is already registered with a "
                    "different graph; choose a new version"
                )
            db.execute(
                "INSERT INTO flows VALUES (?, ?, ?, ?, ?, ?)",
                (name, version, seq, digest, graph, now),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return FlowVersion(name, version, digest, graph, now), True

    def get_flow(self, name: str, version: str = "") -> FlowVersion:
        """A flow version (the latest registered when ``version`` is empty); NotFound."""
        if version:
            row = self._db.execute(
                "SELECT version, digest, graph, created_at FROM flows WHERE name=? AND version=?",
                (name, version),
            ).fetchone()
        else:
            row = self._db.execute(
                "SELECT version, digest, graph, created_at FROM flows WHERE name=? "
                "ORDER BY seq DESC LIMIT 1",
                (name,),
            ).fetchone()
        if row is None:
            what = f"flow {name!r}" + (f" version {version!r}" if version else "")
            raise NotFound(f"{what} is not registered")
        return FlowVersion(name, row[0], row[1], row[2], row[3])

    def list_flows(self) -> list[tuple[str, list[str]]]:
        """Every flow name (sorted) with its versions in registration order."""
        flows: dict[str, list[str]] = {}
        for name, version in self._db.execute("SELECT name, version FROM flows ORDER BY name, seq"):
            flows.setdefault(name, []).append(version)
        return list(flows.items())

    # --------------------------------------------------------------- flow runs

    def create_flow_run(
        self, row: FlowRunRow, schedule: ScheduleRow | None = None
    ) -> tuple[FlowRunRow, bool]:
        """Insert a run, or return the existing run with the same idempotency key.

        ``schedule`` (the schedule that fired the run, advanced past this fire) is
        updated in the same transaction: a crash cannot keep one without the other."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if schedule is not None:
                # UPDATE, not INSERT: a schedule deleted meanwhile stays deleted.
                db.execute(
                    "UPDATE schedules SET body=?, next_run_at=?, enabled=? WHERE id=?",
                    (schedule.body, schedule.next_run_at, int(schedule.enabled), schedule.id),
                )
            if row.idempotency_key:
                existing = db.execute(
                    "SELECT id FROM flow_runs WHERE idempotency_key=?", (row.idempotency_key,)
                ).fetchone()
                if existing is not None:
                    db.execute("COMMIT")
                    return self.get_flow_run(existing[0]), False
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM flow_runs").fetchone()[0]
            db.execute(
                "INSERT INTO flow_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row.id, seq, *_flow_run_values(row)),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return row, True

    def get_flow_run(self, run_id: str) -> FlowRunRow:
        """A flow run by id; NotFound if none."""
        row = self._db.execute(f"SELECT {_FLOW_RUN_COLS} FROM flow_runs WHERE id=?", (run_id,))
        found = row.fetchone()
        if found is None:
            raise NotFound(f"flow run {run_id!r} does not exist")
        return _flow_run_row(found)

    def list_flow_runs(
        self, flow_name: str = "", states: Sequence[int] = (), limit: int = 50, before: str = ""
    ) -> list[FlowRunRow]:
        """Flow runs, newest first: at most ``limit``, filtered by ``flow_name`` and
        ``states`` when given, and older than run ``before`` when given."""
        where: list[str] = []
        args: list[object] = []
        if flow_name:
            where.append("flow_name=?")
            args.append(flow_name)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(states)
        if before:
            where.append("seq < (SELECT seq FROM flow_runs WHERE id=?)")
            args.append(before)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._db.execute(
            f"SELECT {_FLOW_RUN_COLS} FROM flow_runs {clause} ORDER BY seq DESC LIMIT ?",
            (*args, limit),
        )
        return [_flow_run_row(r) for r in rows]

    def unfinished_flow_runs(self) -> list[FlowRunRow]:
        """Every run not in a terminal state, oldest first."""
        rows = self._db.execute(
            f"SELECT {_FLOW_RUN_COLS} FROM flow_runs "
            f"WHERE state NOT IN ({', '.join('?' * len(_TERMINAL_FLOW_STATES))}) ORDER BY seq",
            _TERMINAL_FLOW_STATES,
        )
        return [_flow_run_row(r) for r in rows]

    def events(self, flow_run_id: str) -> list[RunEvent]:
        """A run's journal, by sequence number."""
        rows = self._db.execute(
            "SELECT seq, at, kind, body FROM run_events WHERE flow_run_id=? ORDER BY seq",
            (flow_run_id,),
        )
        return [RunEvent(flow_run_id, s, at, k, b) for s, at, k, b in rows]

    def task_runs(self, flow_run_id: str) -> list[TaskRunRow]:
        """A run's task runs as they are now, in the order they were first stored."""
        rows = self._db.execute(
            "SELECT key, task_id, map_index, state, attempt, updated_at, worker_id, cache_key, "
            "result FROM task_runs WHERE flow_run_id=? ORDER BY rowid",
            (flow_run_id,),
        )
        return [TaskRunRow(flow_run_id, *r) for r in rows]

    def task_run_history(self, flow_run_id: str, key: str = "") -> list[StateRow]:
        """A run's task run state changes in order (only task run ``key``'s if given)."""
        sql = (
            "SELECT key, seq, state, at, attempt, message, failure FROM task_run_states "
            "WHERE flow_run_id=?"
        )
        args: tuple[str, ...] = (flow_run_id,)
        if key:
            sql += " AND key=?"
            args += (key,)
        rows = self._db.execute(sql + " ORDER BY rowid", args)
        return [StateRow(flow_run_id, *r) for r in rows]

    def logs(self, flow_run_id: str, key: str = "") -> list[LogRow]:
        """A run's task run log records in order (only task run ``key``'s if given)."""
        sql = "SELECT key, attempt, at, level, logger, message FROM logs WHERE flow_run_id=?"
        args: tuple[str, ...] = (flow_run_id,)
        if key:
            sql += " AND key=?"
            args += (key,)
        return [LogRow(flow_run_id, *r) for r in self._db.execute(sql + " ORDER BY rowid", args)]

    # ----------------------------------------------------------------- commit

    def commit(self, batch: WriteBatch) -> None:
        """Write a tick's batch in one transaction (all or nothing)."""
        if not batch:
            return
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT INTO run_events VALUES (?, ?, ?, ?, ?)",
                [(e.flow_run_id, e.seq, e.at, e.kind, e.body) for e in batch.events],
            )
            db.executemany(
                "UPDATE flow_runs SET flow_name=?, flow_version=?, state=?, created_at=?, "
                "parameters=?, idempotency_key=?, started_at=?, ended_at=?, result=?, "
                "message=?, trace_context=?, schedule_id=? WHERE id=?",
                [(*_flow_run_values(r), r.id) for r in batch.flow_runs.values()],
            )
            db.executemany(
                "INSERT OR REPLACE INTO task_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        t.flow_run_id,
                        t.key,
                        t.task_id,
                        t.map_index,
                        t.state,
                        t.attempt,
                        t.updated_at,
                        t.worker_id,
                        t.cache_key,
                        t.result,
                    )
                    for t in batch.task_runs.values()
                ],
            )
            db.executemany(
                "INSERT INTO task_run_states VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (s.flow_run_id, s.key, s.seq, s.state, s.at, s.attempt, s.message, s.failure)
                    for s in batch.states
                ],
            )
            db.executemany(
                "INSERT INTO logs VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (g.flow_run_id, g.key, g.attempt, g.at, g.level, g.logger, g.message)
                    for g in batch.logs
                ],
            )
            db.executemany(
                "INSERT OR REPLACE INTO cache_entries VALUES (?, ?, ?)",
                [(c.key, c.value, c.expires_at) for c in batch.cache],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    # --------------------------------------------------------------- payloads

    def put_payload(
        self, chunks: Iterator[bytes], metadata: dict[str, str], size: int, sha256: str = ""
    ) -> PayloadMeta:
        """Store bytes arriving in chunks; checks the declared size (and hash if given)."""
        writer = self.begin_payload(metadata, size, sha256)
        try:
            for chunk in chunks:
                writer.write(chunk)
            return writer.finish()
        except BaseException:
            writer.abort()
            raise

    def begin_payload(self, metadata: dict[str, str], size: int, sha256: str = "") -> PayloadWriter:
        """Start an upload whose chunks arrive over time (e.g. from a gRPC stream).

        Each stored chunk is its own small transaction, so a long upload never holds
        the write lock that state commits need; the payload becomes visible only when
        ``finish()`` writes its ``payloads`` row. Chunks of an upload cut short by a
        crash are removed when the store is next opened.
        """
        if size < 0:
            raise ValueError(f"payload size must be >= 0, got {size}")
        if "encoding" not in metadata:
            raise ValueError("payload metadata must name its 'encoding'")
        return PayloadWriter(self._db, metadata, size, sha256)

    def payload_meta(self, payload_id: str) -> PayloadMeta:
        """A finished payload's size, metadata and SHA-256; NotFound if none."""
        row = self._db.execute(
            "SELECT size, metadata, sha256 FROM payloads WHERE id=?", (payload_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"payload {payload_id!r} does not exist")
        return PayloadMeta(payload_id, row[0], json.loads(row[1]), row[2])

    def read_payload(
        self, payload_id: str, offset: int = 0, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[bytes]:
        """The payload's bytes from ``offset``, in chunks of at most ``chunk_size``."""
        meta = self.payload_meta(payload_id)
        if offset < 0 or offset > meta.size:
            raise ValueError(f"offset {offset} is outside payload of {meta.size} bytes")
        first = offset // CHUNK_SIZE
        skip = offset - first * CHUNK_SIZE
        rows = self._db.execute(
            "SELECT data FROM payload_chunks WHERE id=? AND idx>=? ORDER BY idx",
            (payload_id, first),
        ).fetchall()
        for (data,) in rows:
            view = memoryview(data)[skip:]
            skip = 0
            for start in range(0, len(view), chunk_size):
                yield bytes(view[start : start + chunk_size])

    # ------------------------------------------------------------------ cache

    def get_cache(self, key: str) -> CacheRow | None:
        """The cached result under ``key`` (expired or not), or None."""
        row = self._db.execute(
            "SELECT value, expires_at FROM cache_entries WHERE key=?", (key,)
        ).fetchone()
        return None if row is None else CacheRow(key, row[0], row[1])

    # -------------------------------------------------------------- schedules

    def put_schedule(self, row: ScheduleRow) -> None:
        """Insert or replace a schedule (its own transaction)."""
        self._db.execute(
            "INSERT OR REPLACE INTO schedules VALUES (?, ?, ?, ?, ?)",
            (row.id, row.flow_name, row.body, row.next_run_at, int(row.enabled)),
        )

    def list_schedules(self, flow_name: str = "") -> list[ScheduleRow]:
        """Every schedule (only ``flow_name``'s if given), by id."""
        sql = "SELECT id, flow_name, body, next_run_at, enabled FROM schedules"
        rows = (
            self._db.execute(sql + " WHERE flow_name=? ORDER BY id", (flow_name,))
            if flow_name
            else self._db.execute(sql + " ORDER BY id")
        )
        return [ScheduleRow(i, f, b, n, bool(e)) for i, f, b, n, e in rows]

    def get_schedule(self, schedule_id: str) -> ScheduleRow:
        """A schedule by id; NotFound if none."""
        found = self._db.execute(
            "SELECT id, flow_name, body, next_run_at, enabled FROM schedules WHERE id=?",
            (schedule_id,),
        ).fetchone()
        if found is None:
            raise NotFound(f"schedule {schedule_id!r} does not exist")
        i, f, b, n, e = found
        return ScheduleRow(i, f, b, n, bool(e))

    def delete_schedule(self, schedule_id: str) -> None:
        """Remove a schedule; NotFound if none."""
        cur = self._db.execute("DELETE FROM schedules WHERE id=?", (schedule_id,))
        if cur.rowcount == 0:
            raise NotFound(f"schedule {schedule_id!r} does not exist")


_FLOW_RUN_COLS = (
    "id, flow_name, flow_version, state, created_at, parameters, idempotency_key, "
    "started_at, ended_at, result, message, trace_context, schedule_id"
)


def _flow_run_values(r: FlowRunRow) -> tuple[object, ...]:
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
    )


def _flow_run_row(r: tuple[Any, ...]) -> FlowRunRow:
    (rid, name, version, state, created, params, idem, started, ended, result, msg, tc, sid) = r
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
    )
