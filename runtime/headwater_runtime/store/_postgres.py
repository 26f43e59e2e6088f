"""PostgreSQL implementation of the store (``headwater server --db postgresql://...``).

Driver: psycopg 3 with psycopg-pool (the ``postgres`` extra). A synchronous driver
fits the store's threads (one writer thread, reader threads) without an event loop of
its own, and the binary wheel needs no compiler or libpq on the host. A commit, and
the creation of a run without an idempotency key, is one statement and one round
trip (store/_postgres_batch.py). Connections come from a pool: each
call takes one for its duration, so reader threads run side by side with the writer;
a connection that broke is dropped by the pool and replaced.

Every write of a leading server first reads the lease row ``FOR SHARE`` and compares
its epoch with the one this server holds (``Fenced`` otherwise, nothing written). A
takeover updates that row, so it waits for a commit under way to finish, and every
commit after it sees the new epoch: nothing the old leader writes lands after the
takeover. The schema is migrated when the store opens (``_postgres_schema``).
Errors that mean "cannot write now" (the server is gone, the disk is full) become
``StoreUnavailable`` with PostgreSQL's own words, so a caller can keep its batch and
try again.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.abc import Buffer
from psycopg.types.string import StrDumperUnknown
from psycopg_pool import ConnectionPool

from headwater.wire import BUILD_SEPARATOR, CHUNK_SIZE, is_build_version

from ._base import (
    AuditRow,
    CacheRow,
    Conflict,
    Delivery,
    FlowRunRow,
    FlowVersion,
    LogRow,
    NotFound,
    PayloadMeta,
    PruneReport,
    RunEvent,
    ScheduleRow,
    StateRow,
    StoreUnavailable,
    StoreUnreachable,
    TaskRunRow,
    WriteBatch,
    key_reused,
    retry_gone,
    task_runs_query,
)
from ._builds import build_gone, schedule_build, touch_build
from ._payloads import ChunkSink, DirectoryBlobs, PayloadWriter, write_all
from ._postgres_access import PostgresAccessTables, insert_audit
from ._postgres_batch import check_lease, write_batch
from ._postgres_ops import PostgresOps
from ._postgres_rows import FLOW_RUN_COLS, FLOW_RUN_NCOLS, flow_run_row, flow_run_values
from ._postgres_schema import TERMINAL, check_current, migrate
from ._prune import Pruning

T = TypeVar("T")
Conn = psycopg.Connection[tuple[Any, ...]]

_FENCE = "SELECT epoch, address FROM leader_lease WHERE id = 1 FOR SHARE"
#: The unique constraint on flow_runs.idempotency_key (PostgreSQL's default name).
_IDEMPOTENCY_KEY = "flow_runs_idempotency_key_key"


def redact(url: str) -> str:
    """A database URL without its password (for messages and logs): one written before
    the ``@`` or given as libpq's ``password`` parameter in the query string. The host
    part is kept as written (several ``host:port`` for a multi-host URL)."""
    scheme, sep, rest = url.partition("://")
    end = next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hosts = netloc.rpartition("@")
    if sep and at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hosts}"
    tail = re.sub(r"([?&]password=)[^&#]*", r"\1***", tail, flags=re.IGNORECASE)
    return f"{scheme}{sep}{netloc}{tail}" if sep else url


class _TextWithoutNul(StrDumperUnknown):
    """Text parameters with U+FFFD in place of NUL, which PostgreSQL text cannot hold
    (commits store such text the same way: _postgres_batch.py). A lookup by a name with
    a NUL (a client's GetFlow with version "\\x00") then finds nothing, as on SQLite,
    where it failed as "cannot read from the database ... try again later"; an audit
    entry whose detail has one is stored."""

    def dump(self, obj: str) -> Buffer | None:
        return super().dump(obj.replace("\x00", "\ufffd") if "\x00" in obj else obj)


def _configure(stalled: float, conn: Conn) -> None:
    """A new pool connection: PostgreSQL ends its transaction (and the session) when
    the transaction waits ``stalled`` seconds for this process between statements. A
    leader paused mid-commit (SIGSTOP, a frozen VM) would otherwise hold its lock on the
    lease row until it resumed, and no standby could take over; its commit fails
    instead (nothing of it is stored) and the batch is tried again, fenced. Text
    parameters go without NUL (``_TextWithoutNul``)."""
    conn.adapters.register_dumper(str, _TextWithoutNul)
    conn.execute(f"SET idle_in_transaction_session_timeout = {max(1, int(stalled * 1000))}")


#: Seconds a call waits for a pooled connection by default (``connection_wait``).
CONNECTION_WAIT = 5.0


class PostgresStore(PostgresOps, PostgresAccessTables):
    """The store in a PostgreSQL database: several servers can share one, one leading
    (the tables and methods of day-two operations are in store/_postgres_ops.py, those
    of credentials and the audit log in store/_postgres_access.py).

    Args:
        url: a libpq connection URL, ``postgresql://user@host:port/dbname`` (a
            password, ``sslmode`` or ``options=-csearch_path=...`` are passed on).
        clock: seconds since the epoch (payload creation times), for tests.
        payload_dir: keep the bytes of new payloads as files in this directory (a
            mount every server sees) instead of the database.
        pool_size: most connections open at once (the writer, readers, the lease).
        stalled_transaction_timeout: seconds a transaction may wait for this process
            between statements before PostgreSQL ends it (``_configure``).
        connection_wait: seconds a call waits for a pooled connection (the database is
            away, or every connection is busy) before it fails with StoreUnavailable:
            a caller then says the database cannot be used right now, well within a
            client's deadline (psycopg_pool's 30 s outlasted it: a bare "Deadline
            Exceeded", a trial).
        migrate_schema: migrate an older schema (a server); False: refuse a database
            of another schema version, or with none (the commands beside a server).
        new_schema: with ``migrate_schema=False``, make the schema where there is
            none (``headwater tokens create``: a new database), still refusing
            another version.
    """

    #: Each call takes a pooled connection: a run may be created from any thread.
    concurrent_writes = True

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] | None = None,
        payload_dir: str | Path | None = None,
        pool_size: int = 10,
        stalled_transaction_timeout: float = 2.0,
        connection_wait: float = CONNECTION_WAIT,
        migrate_schema: bool = True,
        new_schema: bool = False,
    ) -> None:
        self.url = url
        self.where = redact(url)
        self._snapshots = threading.local()  # .conn: this thread's snapshot's connection
        self._clock = clock or time.time
        self._blobs = None if payload_dir is None else DirectoryBlobs(payload_dir)
        #: The lease epoch this server leads with; None: unfenced (a single process
        #: such as ``headwater prune``, or a store used without the server).
        self.epoch: int | None = None
        try:  # one direct connection first: an unreachable database fails at once
            conn = psycopg.connect(url, autocommit=True)
        except psycopg.Error as exc:
            said = f"cannot connect to the database {self.where}: {exc}"
            # No SQLSTATE: the server never answered (refused, no route, a timeout);
            # one that answered refused (a password, no such database: 28P01, 3D000).
            unreachable = isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None
            raise (StoreUnreachable(said) if unreachable else RuntimeError(said)) from None
        try:
            with conn:
                if not migrate_schema:
                    check_current(conn, self.where, none_ok=new_schema)
                #: Whether opening made the schema (the first migration ran now).
                self.created = 1 in migrate(conn, self.where)
        except psycopg.errors.InsufficientPrivilege as exc:
            # (PostgreSQL's message goes on with the statement and a caret: one line)
            raise RuntimeError(
                f"cannot use Headwater's tables in the database {self.where}: "
                f"{_first_line(exc)} (the role in the URL needs privileges on them, or a "
                "database or schema of its own)"
            ) from None
        except psycopg.Error as exc:
            # Connected: making or checking the schema failed (e.g. a table of another
            # program with one of Headwater's names); nothing of it was kept.
            raise RuntimeError(
                f"cannot set up Headwater's tables in the database {self.where}: {_first_line(exc)}"
            ) from None
        self._pool: ConnectionPool[Conn] = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True},
            timeout=connection_wait,
            open=False,
            name="headwater",
            configure=functools.partial(_configure, stalled_transaction_timeout),
        )
        try:
            self._pool.open(wait=True, timeout=30)
        except psycopg.Error as exc:
            self._pool.close()
            raise RuntimeError(f"cannot connect to the database {self.where}: {exc}") from None

    def claim(self, holder: str) -> None:
        """Nothing to claim: several servers share a PostgreSQL database, one leading
        (the lease fences every write of the others)."""

    def checkpoint(self, beside_writes: bool = False) -> bool:
        """Nothing: PostgreSQL checkpoints on its own, outside the server's commits."""
        return False

    def close(self) -> None:
        """Close every connection."""
        self._pool.close()

    # ------------------------------------------------------------------ plumbing

    def _write(
        self, work: Callable[[Conn], T], *, pipeline: bool = False, fenced: bool = True
    ) -> T:
        """Run ``work`` in one transaction, fenced by this server's epoch (or, with
        ``fenced=False``, as it is: one statement that fences itself); errors that
        mean "cannot write now" become StoreUnavailable (nothing of it is stored)."""
        try:
            with self._pool.connection() as conn:
                if not fenced:
                    return work(conn)
                if pipeline:
                    with conn.pipeline(), conn.transaction():
                        fence = conn.execute(_FENCE) if self.epoch is not None else None
                        result = work(conn)
                        self._check(fence)
                        return result
                with conn.transaction():
                    if self.epoch is not None:
                        self._check(conn.execute(_FENCE))
                    return work(conn)
        except (psycopg.IntegrityError, psycopg.ProgrammingError):
            raise
        except psycopg.OperationalError as exc:
            raise _unavailable(exc) from exc
        except psycopg.Error as exc:
            if exc.sqlstate is None:  # not from the server: the connection broke
                raise _unavailable(exc) from exc
            raise

    def _check(self, fence: psycopg.Cursor[tuple[Any, ...]] | None) -> None:
        if fence is not None:
            check_lease(self.epoch, fence.fetchone())

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._reading(lambda conn: conn.execute(sql, args or None).fetchall())

    def _reading(self, work: Callable[[Conn], T]) -> T:
        """``work(connection)`` on a pooled connection (this thread's snapshot's, inside
        ``snapshot``); errors that mean "cannot read now" become StoreUnavailable."""
        try:
            pinned: Conn | None = getattr(self._snapshots, "conn", None)
            if pinned is not None:
                return work(pinned)
            with self._pool.connection() as conn:
                return work(conn)
        except psycopg.OperationalError as exc:
            raise _unavailable(exc, "read from") from exc
        except psycopg.Error as exc:
            if exc.sqlstate is None:  # not from the server: the connection broke
                raise _unavailable(exc, "read from") from exc
            raise

    def _one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = self._read(sql, args)
        return rows[0] if rows else None

    def connection(self, timeout: float | None = None) -> Any:
        """A pooled connection (``with store.connection() as conn``), for the lease
        and for tests; ``timeout``: seconds to wait for one (``connection_wait`` if None)."""
        return self._pool.connection(timeout=timeout)

    # ------------------------------------------------------------------ flows

    def put_flow(
        self, name: str, digest: str, graph: bytes, version: str, now: float
    ) -> tuple[FlowVersion, bool]:
        """Store a flow version; the same graph (by digest) returns the stored version.

        An empty ``version`` is numbered 1, 2, ... per flow name."""

        def work(conn: Conn) -> tuple[FlowVersion, bool]:
            # One registration of a name at a time (numbering reads, then inserts).
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"flow:{name}",))
            same = conn.execute(
                "SELECT version, created_at FROM flows WHERE name=%s AND digest=%s"
                + (" AND version=%s" if version else " ORDER BY seq DESC LIMIT 1"),
                (name, digest, version) if version else (name, digest),
            ).fetchone()
            if same is not None:
                at = same[1]
                if is_build_version(same[0]):  # used now: a prune keeps it (_builds.py)
                    touch_build(conn.execute, "GREATEST", "%s", name, same[0], now)
                    at = max(at, now)
                return FlowVersion(name, same[0], digest, graph, at), False
            row = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM flows WHERE name=%s", (name,)
            ).fetchone()
            seq = int(row[0]) if row else 1
            chosen = version or _next_number(conn, name)
            taken = conn.execute(
                "SELECT 1 FROM flows WHERE name=%s AND version=%s", (name, chosen)
            ).fetchone()
            if taken:
                raise Conflict(
                    f"flow {name!r} version {chosen!r} is already registered with a "
                    "different graph; choose a new version"
                )
            conn.execute(
                "INSERT INTO flows VALUES (%s, %s, %s, %s, %s, %s)",
                (name, chosen, seq, digest, graph, now),
            )
            return FlowVersion(name, chosen, digest, graph, now), True

        return self._write(work)

    def get_flow(self, name: str, version: str = "") -> FlowVersion:
        """A flow's version (the latest when ``version`` is empty); NotFound if none."""
        if version:
            row = self._one(
                "SELECT version, digest, graph, created_at FROM flows WHERE name=%s AND version=%s",
                (name, version),
            )
        else:
            row = self._one(
                "SELECT version, digest, graph, created_at FROM flows WHERE name=%s "
                "ORDER BY seq DESC LIMIT 1",
                (name,),
            )
        if row is None:
            if is_build_version(version):
                raise build_gone(name, version)
            what = f"flow {name!r}" + (f" version {version!r}" if version else "")
            raise NotFound(f"{what} is not registered")
        return FlowVersion(name, row[0], row[1], bytes(row[2]), row[3])

    def list_flows(self) -> list[tuple[str, list[str]]]:
        """Every flow name with its versions, oldest first."""
        flows: dict[str, list[str]] = {}
        for name, version in self._read("SELECT name, version FROM flows ORDER BY name, seq"):
            flows.setdefault(name, []).append(version)
        return list(flows.items())

    # --------------------------------------------------------------- flow runs

    def create_flow_run(
        self,
        row: FlowRunRow,
        schedule: ScheduleRow | None = None,
        start: WriteBatch | None = None,
        audit: AuditRow | None = None,
    ) -> tuple[FlowRunRow, bool]:
        """Insert a run, or return the existing run with the same idempotency key.

        The same key with another flow or other parameters raises Conflict naming the
        existing run; ``schedule`` is updated in the same transaction. So are, for a
        new run, ``start`` (its first journal entries and projections: a run is stored
        started, or not at all) and ``audit`` (who created it)."""

        if schedule is None and not row.idempotency_key and not is_build_version(row.flow_version):
            # The common case, in one statement and one round trip.
            batch = start or WriteBatch()
            self._write(lambda conn: write_batch(conn, batch, self.epoch, row, audit), fenced=False)
            return row, True

        def work(conn: Conn) -> tuple[str, bool]:
            if schedule is not None:
                # UPDATE, not INSERT: a schedule deleted meanwhile stays deleted; one
                # paused meanwhile stays paused (a fire may wait long for a graph build);
                # and one resumed meanwhile keeps its later next time (only a fire's
                # advance moves the time forward from its fire time).
                conn.execute(
                    "UPDATE schedules SET body=%s, next_run_at=%s "
                    "WHERE id=%s AND enabled AND (next_run_at IS NULL OR next_run_at < %s)",
                    (schedule.body, schedule.next_run_at, schedule.id, schedule.next_run_at),
                )
            if row.idempotency_key:
                existing = conn.execute(
                    "SELECT id, flow_name, parameters FROM flow_runs WHERE idempotency_key=%s",
                    (row.idempotency_key,),
                ).fetchone()
                if existing is not None:
                    if existing[1] != row.flow_name or bytes(existing[2]) != row.parameters:
                        raise key_reused(row.idempotency_key, existing[0], existing[1], row)
                    return str(existing[0]), False
            # (a build a prune deleted meanwhile: NotFound, nothing stored; marked used
            # now, not when the run was made: a prune may have started in between)
            touch_build(
                conn.execute, "GREATEST", "%s", row.flow_name, row.flow_version, self._clock()
            )
            conn.execute(
                f"INSERT INTO flow_runs ({FLOW_RUN_COLS}) "
                f"VALUES ({', '.join(['%s'] * FLOW_RUN_NCOLS)})",
                (row.id, *flow_run_values(row)),
            )
            _add_refs(conn, f"run:{row.id}", row.payload_ids)
            if start:
                write_batch(conn, start, self.epoch)
            if audit is not None:
                insert_audit(conn, audit)
            return row.id, True

        try:
            run_id, created = self._write(work)
        except psycopg.errors.UniqueViolation as exc:
            # Another thread created a run with this key between the lookup and the
            # insert (creations run concurrently here): the key names that run.
            if exc.diag.constraint_name != _IDEMPOTENCY_KEY or not row.idempotency_key:
                raise
            run_id, created = self._write(work)  # it finds that run now (or Conflict)
        return (row, True) if created else (self.get_flow_run(run_id), False)

    def claim_for_retry(self, run_id: str, state: int, now: float) -> None:
        """See ``Store.claim_for_retry``: a prune's batch locks its runs as it checks
        them (``FOR UPDATE``), so this waits for it, or it for this."""

        def work(conn: Conn) -> int:
            cur = conn.execute(
                "UPDATE flow_runs SET ended_at=GREATEST(ended_at, %s) "
                "WHERE id=%s AND state=%s AND ended_at IS NOT NULL",
                (now, run_id, state),
            )
            return int(cur.rowcount)

        if not self._write(work):
            raise retry_gone(run_id)

    def get_flow_run(self, run_id: str) -> FlowRunRow:
        """A flow run's row; NotFound if it does not exist."""
        found = self._one(f"SELECT {FLOW_RUN_COLS} FROM flow_runs WHERE id=%s", (run_id,))
        if found is None:
            raise NotFound(f"flow run {run_id!r} does not exist")
        return flow_run_row(found)

    def list_flow_runs(
        self,
        flow_name: str = "",
        states: Sequence[int] = (),
        limit: int = 50,
        before: str = "",
        *,
        schedule_id: str = "",
        created_after: float | None = None,
        created_before: float | None = None,
    ) -> list[FlowRunRow]:
        """Flow runs, newest first, optionally of one flow, in some states, of one
        schedule, created in a time range, and older than the run ``before`` (paging)."""
        where: list[str] = []
        args: list[object] = []
        if flow_name:
            where.append("flow_name=%s")
            args.append(flow_name)
        if states:
            where.append("state = ANY(%s)")
            args.append(list(states))
        if schedule_id:
            where.append("schedule_id=%s")
            args.append(schedule_id)
        if created_after is not None:
            where.append("created_at>=%s")
            args.append(created_after)
        if created_before is not None:
            where.append("created_at<%s")
            args.append(created_before)
        if before:
            where.append("seq < (SELECT seq FROM flow_runs WHERE id=%s)")
            args.append(before)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._read(
            f"SELECT {FLOW_RUN_COLS} FROM flow_runs {clause} ORDER BY seq DESC LIMIT %s",
            (*args, limit),
        )
        return [flow_run_row(r) for r in rows]

    def child_flow_runs(self, parent_flow_run_id: str) -> list[FlowRunRow]:
        """The child flow runs of a flow run (subflows, flows its tasks started), oldest
        first."""
        rows = self._read(
            f"SELECT {FLOW_RUN_COLS} FROM flow_runs WHERE parent_flow_run_id=%s ORDER BY seq",
            (parent_flow_run_id,),
        )
        return [flow_run_row(r) for r in rows]

    def flow_run_ids(self, prefix: str, limit: int = 2) -> list[str]:
        """Ids of flow runs starting with ``prefix`` (at most ``limit``)."""
        pattern = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._read(
            "SELECT id FROM flow_runs WHERE id LIKE %s ORDER BY id LIMIT %s", (pattern, limit)
        )
        return [str(r[0]) for r in rows]

    def unfinished_flow_runs(self) -> list[FlowRunRow]:
        """Runs not in a terminal state, oldest first (what a restart recovers)."""
        rows = self._read(
            f"SELECT {FLOW_RUN_COLS} FROM flow_runs WHERE NOT (state = ANY(%s)) ORDER BY seq",
            (list(TERMINAL),),
        )
        return [flow_run_row(r) for r in rows]

    def run_sizes(self, flow_run_ids: Sequence[str]) -> dict[str, int]:
        """Each run's journal entries plus task runs (what replaying it costs)."""
        rows = self._read(
            "SELECT i.id, (SELECT COUNT(*) FROM run_events e WHERE e.flow_run_id = i.id) + "
            "(SELECT COUNT(*) FROM task_runs t WHERE t.flow_run_id = i.id) "
            "FROM unnest(%s::text[]) AS i(id)",
            (list(flow_run_ids),),
        )
        return {str(i): int(n) for i, n in rows}

    def events(self, flow_run_id: str) -> list[RunEvent]:
        """A run's journal, in order."""
        rows = self._read(
            "SELECT seq, at, kind, body, value_id FROM run_events WHERE flow_run_id=%s "
            "ORDER BY seq",
            (flow_run_id,),
        )
        return [RunEvent(flow_run_id, s, at, k, bytes(b), v) for s, at, k, b, v in rows]

    def task_runs(
        self,
        flow_run_id: str,
        *,
        task_id: str = "",
        key: str = "",
        states: Collection[int] = (),
        offset: int = 0,
        limit: int | None = None,
    ) -> list[TaskRunRow]:
        """A run's task runs (projection), in the order they were first stored (see
        ``Store.task_runs``)."""
        sql, args = task_runs_query("%s", flow_run_id, task_id, key, states)
        sql += " ORDER BY ord"
        if offset or limit is not None:
            sql += " LIMIT %s OFFSET %s"  # (LIMIT NULL: no limit)
            args = (*args, limit, offset)
        return [TaskRunRow(flow_run_id, *r) for r in self._read(sql, args)]

    def count_task_runs(
        self, flow_run_id: str, *, task_id: str = "", key: str = "", states: Collection[int] = ()
    ) -> int:
        """See ``Store.count_task_runs``."""
        sql, args = task_runs_query("%s", flow_run_id, task_id, key, states, columns="COUNT(*)")
        return int(self._read(sql, args)[0][0])

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """This thread's reads on one pooled connection, in one REPEATABLE READ,
        READ ONLY transaction: one snapshot of the database."""
        if getattr(self._snapshots, "conn", None) is not None:
            yield  # inside another snapshot: that one counts
            return
        try:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                self._snapshots.conn = conn
                try:
                    yield
                finally:
                    self._snapshots.conn = None
        except psycopg.OperationalError as exc:
            raise _unavailable(exc, "read from") from exc

    def task_ids_in_states(self, flow_run_id: str, states: Collection[int]) -> list[str]:
        """Task ids of a run's task runs in these states (distinct, sorted)."""
        if not states:
            return []
        rows = self._read(
            "SELECT DISTINCT task_id FROM task_runs WHERE flow_run_id=%s AND state = ANY(%s)",
            (flow_run_id, list(states)),
        )
        # Sorted here: ORDER BY would follow the database's collation (an ICU one puts
        # "alpha" before "Zeta"), SQLite by code point.
        return sorted(str(r[0]) for r in rows)

    def delivered(self, flow_run_id: str) -> dict[str, Delivery]:
        """Each task run's attempt last delivered to a worker, and to whom (none: not
        listed)."""
        rows = self._read(
            "SELECT key, delivered, worker_id, holder FROM task_runs "
            "WHERE flow_run_id=%s AND delivered > 0",
            (flow_run_id,),
        )
        return {str(k): Delivery(int(a), str(w), h) for k, a, w, h in rows}

    def task_run_history(self, flow_run_id: str, key: str = "") -> list[StateRow]:
        """State history of a run's task runs (of one, with ``key``)."""
        sql = (
            "SELECT key, seq, state, at, attempt, message, failure FROM task_run_states "
            "WHERE flow_run_id=%s"
        )
        args: tuple[str, ...] = (flow_run_id,)
        if key:
            sql += " AND key=%s"
            args += (key,)
        rows = self._read(sql + " ORDER BY ord", args)
        return [
            StateRow(flow_run_id, k, s, st, at, a, m, bytes(f)) for k, s, st, at, a, m, f in rows
        ]

    def logs(
        self,
        flow_run_id: str,
        key: str = "",
        *,
        after: int = 0,
        limit: int = 0,
        task_id: str = "",
    ) -> list[LogRow]:
        """Log records of a run's task runs (of one, with ``key``; of a task node and
        its mapped children, with ``task_id``), in order, after ``seq`` ``after``, at
        most ``limit`` (0: all). ``seq`` is the row's ``ord``."""
        sql = (
            "SELECT key, attempt, at, level, logger, message, ord FROM logs "
            "WHERE flow_run_id=%s AND ord>%s"
        )
        args: tuple[object, ...] = (flow_run_id, after)
        if key:
            sql += " AND key=%s"
            args += (key,)
        if task_id:
            # A mapped child's key is the node id with [i]: "id" or "id[...]" (by
            # starts_with, not a range: a range would depend on the collation).
            sql += " AND (key=%s OR starts_with(key, %s))"
            args += (task_id, task_id + "[")
        sql += " ORDER BY ord"
        if limit > 0:
            sql += " LIMIT %s"
            args += (limit,)
        return [LogRow(flow_run_id, *r) for r in self._read(sql, args)]

    # ----------------------------------------------------------------- values

    def get_values(self, ids: Iterable[str]) -> dict[str, bytes]:
        """Stored values by id (ids not stored are left out)."""
        wanted = list(dict.fromkeys(i for i in ids if i))
        if not wanted:
            return {}
        rows = self._read("SELECT id, data FROM run_values WHERE id = ANY(%s)", (wanted,))
        return {str(i): bytes(d) for i, d in rows}

    # ----------------------------------------------------------------- commit

    def commit(self, batch: WriteBatch) -> None:
        """Write a tick's batch, all or nothing, as one statement that fences itself
        (store/_postgres_batch.py): one round trip, no transaction around it."""
        if batch:
            self._write(lambda conn: write_batch(conn, batch, self.epoch), fenced=False)

    # --------------------------------------------------------------- payloads

    def put_payload(
        self,
        chunks: Iterator[bytes],
        metadata: dict[str, str],
        size: int,
        sha256: str = "",
        uploader: str = "",
    ) -> PayloadMeta:
        """Store bytes arriving in chunks; checks the declared size (and hash if given)."""
        return write_all(self.begin_payload(metadata, size, sha256, uploader), chunks)

    def begin_payload(
        self, metadata: dict[str, str], size: int, sha256: str = "", uploader: str = ""
    ) -> PayloadWriter:
        """Start an upload whose chunks arrive over time: each chunk is stored as it
        comes (its own transaction, or a file in the payload directory); the payload
        becomes visible when ``finish()`` stores its row."""
        if size < 0:
            raise ValueError(f"payload size must be >= 0, got {size}")
        if "encoding" not in metadata:
            raise ValueError("payload metadata must name its 'encoding'")

        def sink_for(payload_id: str) -> ChunkSink:
            if self._blobs is not None:
                return self._blobs.sink(payload_id)
            return _DatabaseChunks(self, payload_id)

        def publish(meta: PayloadMeta, created_at: float) -> None:
            self._write(
                lambda conn: conn.execute(
                    "INSERT INTO payloads (id, size, metadata, sha256, created_at, uploader) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    (
                        meta.id,
                        meta.size,
                        json.dumps(meta.metadata, sort_keys=True),
                        meta.sha256,
                        created_at,
                        meta.uploader,
                    ),
                )
            )

        return PayloadWriter(sink_for, publish, metadata, size, sha256, self._clock(), uploader)

    def payload_meta(self, payload_id: str) -> PayloadMeta:
        """A stored payload's size, metadata and hash; NotFound if it does not exist."""
        row = self._one(
            "SELECT size, metadata, sha256, uploader FROM payloads WHERE id=%s", (payload_id,)
        )
        if row is None:
            raise NotFound(f"payload {payload_id!r} does not exist")
        return PayloadMeta(payload_id, int(row[0]), json.loads(row[1]), row[2], row[3])

    def read_payload_chunk(self, payload_id: str, index: int) -> bytes:
        """Stored chunk ``index`` of a payload (CHUNK_SIZE bytes; the last may be
        shorter); b"" past the end."""
        if self._blobs is not None:
            data = self._blobs.read_chunk(payload_id, index)
            if data is not None:
                return data
        try:
            with self._pool.connection() as conn:
                # Binary results: a chunk arrives as its bytes, not as 2 MiB of hex.
                row = conn.execute(
                    "SELECT data FROM payload_chunks WHERE id=%s AND idx=%s",
                    (payload_id, index),
                    binary=True,
                ).fetchone()
        except psycopg.OperationalError as exc:
            raise _unavailable(exc, "read from") from exc
        return b"" if row is None else bytes(row[0])

    def read_payload(
        self, payload_id: str, offset: int = 0, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[bytes]:
        """The payload's bytes from ``offset``, in pieces of at most ``chunk_size``,
        reading one stored chunk at a time (never the whole payload)."""
        meta = self.payload_meta(payload_id)
        if offset < 0 or offset > meta.size:
            raise ValueError(f"offset {offset} is outside payload of {meta.size} bytes")
        index, skip = divmod(offset, CHUNK_SIZE)
        while True:
            data = self.read_payload_chunk(payload_id, index)
            if not data:
                return
            view = memoryview(data)[skip:]
            skip = 0
            for start in range(0, len(view), chunk_size):
                yield bytes(view[start : start + chunk_size])
            index += 1

    def sweep_uploads(self) -> None:
        """Remove the chunks of uploads that never finished (a leader died mid-upload).
        Only the leader calls this, when it takes the lead: then no upload is under way."""
        self._write(
            lambda conn: conn.execute(
                "DELETE FROM payload_chunks c WHERE NOT EXISTS "
                "(SELECT 1 FROM payloads p WHERE p.id = c.id)"
            )
        )
        if self._blobs is not None:
            self._blobs.sweep()

    # ------------------------------------------------------------------ cache

    def get_cache(self, key: str) -> CacheRow | None:
        """The cache entry under ``key``, expired or not (the caller checks)."""
        row = self._one("SELECT value_id, expires_at FROM cache_entries WHERE key=%s", (key,))
        return None if row is None else CacheRow(key, row[0], row[1])

    # -------------------------------------------------------------- schedules

    def put_schedule(self, row: ScheduleRow, replaces: str = "") -> None:
        """Create or replace a schedule (``Store.put_schedule``)."""

        def work(conn: Conn) -> None:
            if replaces:
                conn.execute("DELETE FROM schedules WHERE id=%s", (replaces,))
                conn.execute("DELETE FROM payload_refs WHERE owner=%s", (f"schedule:{replaces}",))
            if build := schedule_build(row.body):
                touch_build(conn.execute, "GREATEST", "%s", row.flow_name, build, self._clock())
            conn.execute(
                "INSERT INTO schedules VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO UPDATE "
                "SET flow_name=EXCLUDED.flow_name, body=EXCLUDED.body, "
                "next_run_at=EXCLUDED.next_run_at, enabled=EXCLUDED.enabled",
                (row.id, row.flow_name, row.body, row.next_run_at, row.enabled),
            )
            conn.execute("DELETE FROM payload_refs WHERE owner=%s", (f"schedule:{row.id}",))
            _add_refs(conn, f"schedule:{row.id}", row.payload_ids)

        self._write(work)

    def list_schedules(self, flow_name: str = "") -> list[ScheduleRow]:
        """Every schedule (of one flow, if given)."""
        sql = "SELECT id, flow_name, body, next_run_at, enabled FROM schedules"
        rows = (
            self._read(sql + " WHERE flow_name=%s ORDER BY id", (flow_name,))
            if flow_name
            else self._read(sql + " ORDER BY id")
        )
        return [ScheduleRow(i, f, bytes(b), n, bool(e)) for i, f, b, n, e in rows]

    def get_schedule(self, schedule_id: str) -> ScheduleRow:
        """One schedule; NotFound if it does not exist."""
        found = self._one(
            "SELECT id, flow_name, body, next_run_at, enabled FROM schedules WHERE id=%s",
            (schedule_id,),
        )
        if found is None:
            raise NotFound(f"schedule {schedule_id!r} does not exist")
        i, f, b, n, e = found
        return ScheduleRow(i, f, bytes(b), n, bool(e))

    def delete_schedule(self, schedule_id: str) -> None:
        """Remove a schedule (its runs stay); NotFound if it does not exist."""

        def work(conn: Conn) -> None:
            cur = conn.execute("DELETE FROM schedules WHERE id=%s", (schedule_id,))
            if cur.rowcount == 0:
                raise NotFound(f"schedule {schedule_id!r} does not exist")
            conn.execute("DELETE FROM payload_refs WHERE owner=%s", (f"schedule:{schedule_id}",))

        self._write(work)

    # -------------------------------------------------------------- retention

    def pruning(
        self,
        ended_before: float | None,
        now: float,
        *,
        grace: float,
        dry_run: bool = False,
        keep: Callable[[str], bool] | None = None,
        workers_before: float | None = None,
    ) -> Pruning:
        """A prune in steps (``Pruning``): finished runs that ended before
        ``ended_before`` (none when None) with their journal, projections and logs;
        expired cache entries; values nothing references; payloads nothing references
        older than ``grace`` seconds. Then VACUUM the tables it deleted from, so their
        space is reused (PostgreSQL keeps the files' size; ``bytes_reclaimed`` counts
        the bytes of what was deleted). Each step is one short transaction, fenced by
        this server's epoch; ``dry_run`` only reads."""
        from ._postgres_prune import PostgresPruning

        return Pruning(
            PostgresPruning(self, self._pool, self._blobs),
            ended_before,
            now,
            grace=grace,
            dry_run=dry_run,
            keep=keep,
            workers_before=workers_before,
        )

    def prune(
        self, ended_before: float | None, now: float, *, grace: float, dry_run: bool = False
    ) -> PruneReport:
        """``pruning(...)``, every step of it: what went (or would go)."""
        return self.pruning(ended_before, now, grace=grace, dry_run=dry_run).run()

    def stats(self) -> dict[str, int]:
        """Rows per table and the database's size in bytes (for tests and benchmarks)."""
        tables = [
            "flow_runs",
            "run_events",
            "run_values",
            "task_runs",
            "task_run_states",
            "logs",
            "payloads",
            "payload_chunks",
            "payload_refs",
            "cache_entries",
        ]
        out = {t: int(self._read(f"SELECT COUNT(*) FROM {t}")[0][0]) for t in tables}
        out["bytes"] = int(
            self._read(
                "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
            )[0][0]
        )
        return out


class _DatabaseChunks:
    """The chunks of one upload as ``payload_chunks`` rows, each in a fenced
    transaction of its own (a long upload holds no transaction open)."""

    def __init__(self, store: PostgresStore, payload_id: str) -> None:
        self._store = store
        self._id = payload_id

    def put(self, index: int, data: bytes) -> None:
        self._store._write(
            lambda conn: conn.execute(
                # %b: the chunk travels as binary, not as text-escaped bytes
                "INSERT INTO payload_chunks VALUES (%s, %s, %b)",
                (self._id, index, data),
            )
        )

    def done(self) -> None:
        """Nothing to do: every chunk was committed as it came."""

    def discard(self) -> None:
        self._store._write(
            lambda conn: conn.execute("DELETE FROM payload_chunks WHERE id=%s", (self._id,))
        )


def _first_line(exc: psycopg.Error) -> str:
    """PostgreSQL's message without the statement and caret lines it may add."""
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]


def _unavailable(exc: psycopg.Error, doing: str = "write to") -> StoreUnavailable:
    text = str(exc).strip() or type(exc).__name__
    full = isinstance(exc, psycopg.errors.DiskFull | psycopg.errors.OutOfMemory)
    return StoreUnavailable(f"cannot {doing} the database: {text}", full=full)


def _next_number(conn: Conn, name: str) -> str:
    """1, 2, ... counting only numbered-style versions: the graphs of value-dependent
    builds (VERSION@DIGEST) do not use up numbers."""
    row = conn.execute(
        "SELECT COUNT(*) FROM flows WHERE name=%s AND strpos(version, %s) = 0",
        (name, BUILD_SEPARATOR),
    ).fetchone()
    number = (int(row[0]) if row else 0) + 1
    while conn.execute(
        "SELECT 1 FROM flows WHERE name=%s AND version=%s", (name, str(number))
    ).fetchone():
        number += 1
    return str(number)


def _add_refs(conn: Conn, owner: str, payload_ids: Iterable[str]) -> None:
    ids = list(payload_ids)
    if ids:
        conn.execute(
            "INSERT INTO payload_refs SELECT %s, p FROM unnest(%s::text[]) AS p "
            "ON CONFLICT DO NOTHING",
            (owner, ids),
        )
