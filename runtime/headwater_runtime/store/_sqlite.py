"""SQLite (WAL) implementation of the store.

WAL with ``synchronous=NORMAL``: a committed transaction survives the server process
being killed (SIGKILL), which is the failure the control plane must tolerate; it can
lose the last transactions on power loss or an OS crash. ``durable=True`` selects
``synchronous=FULL`` for that case, at a cost per commit.

Each thread gets its own connection (WAL lets readers run beside the one writer).
``auto_vacuum=INCREMENTAL``: ``prune`` gives the space of what it deletes back to the
file system. Errors that mean "cannot write now" (disk full, I/O error, locked) are
raised as ``StoreUnavailable`` with SQLite's own words, after the transaction is
rolled back, so a caller can keep its batch and try again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

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
    TaskRunRow,
    WriteBatch,
    key_reused,
    retry_gone,
    task_runs_query,
)
from ._builds import build_gone, schedule_build, touch_build
from ._payloads import ChunkSink, DirectoryBlobs, PayloadWriter, write_all
from ._prune import GiveBackStopped, Pruning
from ._sqlite_access import AccessTables, insert_audit
from ._sqlite_ops import OPS_SCHEMA, SQLiteOps, write_ops
from ._sqlite_payloads import SQLiteChunks, publish_payload
from ._sqlite_schema import (
    _IN_TERMINAL,
    _SCHEMA,
    _TERMINAL_FLOW_STATES,
    MIGRATIONS,
    SCHEMA_VERSION,
    _transaction,
)

log = logging.getLogger("headwater.store")
T = TypeVar("T")

#: A claimed database's log is copied back once it holds more than this (bytes; SQLite
#: itself does at 1,000 pages, ~4 MB), by ``checkpoint()`` outside the commits.
WAL_CHECKPOINT = 4 * 1024 * 1024
#: A log this long has not started over for several checkpoints beside writes (each
#: met new writes before the next one began): the next checkpoint runs between writes.
WAL_LAGGING = 4 * WAL_CHECKPOINT
#: The log's file is cut back to this many bytes when the log starts over (SQLite's
#: ``journal_size_limit``). Not less: the log is written over from its start each
#: time, and what goes past the file's end needs new blocks from the file system. Cut
#: back to WAL_CHECKPOINT, a server under load (its log reaching 20-30 MB before it
#: started over) wrote most of its log into new blocks, at about twice the kernel
#: time per write of a log written over in place.
WAL_KEPT = 2 * WAL_LAGGING
#: The first four bytes of a write-ahead log (https://www.sqlite.org/walformat.html).
_WAL_MAGIC = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")


def _no_checkpoints_in_commits(db: sqlite3.Connection) -> None:
    """A server's connection: its commits leave the log to ``checkpoint()``, and a log
    that starts over keeps its file, up to WAL_KEPT bytes of it."""
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute(f"PRAGMA journal_size_limit={WAL_KEPT}")


def logged_bytes(path: str | Path) -> int | None:
    """How many bytes of log the database at ``path`` holds since its log last started
    over (its file may be longer: WAL_KEPT), read from the ``-wal`` file itself: the
    frames whose salts are the log header's (a log that starts over writes a new header
    with new salts, then its frames over the old ones from the start, so they are a
    prefix of the file; found by bisection, a few 24-byte reads). The format is SQLite's
    documented one (https://www.sqlite.org/walformat.html). None when there is no log to
    read. Not from the ``-shm`` file: SQLite holds POSIX locks on it, and closing any
    descriptor of it in this process would drop them all (a server died of SIGBUS when
    another process then took the file for its own)."""
    try:
        with open(f"{path}-wal", "rb") as wal:
            header = wal.read(32)
            if len(header) < 32 or header[:4] not in _WAL_MAGIC:
                return None
            page_size, _, salts = struct.unpack(">I4s8s", header[8:24])
            frame = 24 + page_size
            size = os.fstat(wal.fileno()).st_size

            def ours(i: int) -> bool:  # frame i (from 0) belongs to this log
                return bool(os.pread(wal.fileno(), 8, 32 + i * frame + 8) == salts)

            low, high = 0, (size - 32) // frame  # frames [0, low) are ours, [high, ...) not
            while low < high:
                middle = (low + high) // 2
                if ours(middle):
                    low = middle + 1
                else:
                    high = middle
    except OSError:
        return None
    return 32 + low * frame if low else 0


class SQLiteStore(SQLiteOps, AccessTables):
    """The default store: one SQLite file in WAL mode (the tables and methods of
    day-two operations are in store/_sqlite_ops.py, those of credentials and the
    audit log in store/_sqlite_access.py).

    Args:
        path: database file (parent folders are created); ":memory:" for a private
            database in a temporary file, removed on close.
        durable: fsync every commit (synchronous=FULL) rather than relying on WAL.
        clock: seconds since the epoch (payload creation times), for tests.
        payload_dir: keep the bytes of new payloads as files in this directory
            instead of the database (``_payloads.DirectoryBlobs``).
    """

    #: One connection writes: every write comes from the writer thread.
    concurrent_writes = False

    def __init__(
        self,
        path: str | Path,
        *,
        durable: bool = False,
        clock: Callable[[], float] | None = None,
        payload_dir: str | Path | None = None,
        migrate_schema: bool = True,
        server: str | None = None,
    ) -> None:
        import time

        self._clock = clock or time.time
        self._blobs = None if payload_dir is None else DirectoryBlobs(payload_dir)
        self._temp: tempfile.TemporaryDirectory[str] | None = None
        if str(path) == ":memory:":
            # Threads need their own connections to one database: a temporary file.
            self._temp = tempfile.TemporaryDirectory(prefix="headwater-store-")
            path = Path(self._temp.name) / "store.db"
        self.path = str(Path(path).expanduser())
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        #: Whether opening made the database (a server says so: a mistyped --db or an
        #: unmounted volume looked like a clean start).
        self.created = not Path(self.path).exists()
        self._synchronous = "FULL" if durable else "NORMAL"
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._claim: Any = None  # the open lock file while a server holds the database
        #: Whether ``checkpoint()`` copies the WAL back (a server claimed the database:
        #: its commits then do not, see ``claim``).
        self._checkpoints = False
        self._checkpoint_failing = False
        sides = [f"{self.path}{suffix}" for suffix in ("-wal", "-shm")]
        new_sides = [side for side in sides if not os.path.exists(side)]
        try:
            if server is not None:
                # Claimed before anything is read or migrated: a server started on a file
                # another one serves migrated it under that one (a user trial of an
                # upgrade: both ran the same tasks, and the older one's writes failed).
                self._take_lock(server)
            if not self.created:
                # Read first, write nothing: a file of another program, or one a command
                # is not to migrate, is refused as it was (not switched to WAL first).
                self._check_before_writing(migrate_schema)
                if server is not None and migrate_schema:
                    self._refuse_migrating_in_use()
            db = self._db
            version = self._checked_schema(db, migrate_schema)
            #: The schema version this open migrated the database from (None: none).
            self.migrated_from = version if version in MIGRATIONS else None
            while version in MIGRATIONS:
                version = self._migrate(db, version)
            if version not in (None, SCHEMA_VERSION):
                raise RuntimeError(_other_schema(self.path, version))
            db.executescript(_SCHEMA)
            db.executescript(OPS_SCHEMA)
            if version != SCHEMA_VERSION:  # new, or upgraded by the tables just added
                db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            self._identity = _file_identity(self.path)
        except sqlite3.DatabaseError as exc:
            self.close()
            _remove_empty(new_sides)
            raise RuntimeError(
                f"cannot open the database {self.path}: {exc}{_why(self.path, exc)}"
            ) from exc
        except BaseException:
            self.close()
            _remove_empty(new_sides)
            raise

    def _check_before_writing(self, migrate_schema: bool) -> None:
        """Refuse an existing file that is not a Headwater database (tables of another
        program), or (``migrate_schema=False``) one without this schema version, reading
        it only. An empty file is a new database, unless ``migrate_schema=False``."""
        if os.path.getsize(self.path) == 0:
            if not migrate_schema:
                raise RuntimeError(f"no Headwater database at {self.path} (the file is empty)")
            return
        try:
            probe = sqlite3.connect(f"file:{quote(self.path)}?mode=ro", uri=True)
        except sqlite3.Error:
            return  # the open that follows says why it cannot
        try:
            self._checked_schema(probe, migrate_schema)
        except sqlite3.Error:
            return  # (a WAL file without its -shm on a read-only disk): the open says
        finally:
            probe.close()

    def _checked_schema(self, db: sqlite3.Connection, migrate_schema: bool) -> int | None:
        """The database's schema version (None: no Headwater schema yet); RuntimeError
        for a file with another program's tables, or (``migrate_schema=False``) for one
        without this schema version."""
        version = self._schema_version(db)
        if version is None and db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
            raise RuntimeError(
                f"{self.path} is not a Headwater database (it has tables of another "
                "program and no Headwater schema): give a new path, or a Headwater database"
            )
        if not migrate_schema and version != SCHEMA_VERSION:
            raise RuntimeError(
                f"no Headwater database at {self.path} (no Headwater schema in it)"
                if version is None
                else _other_schema(self.path, version)
            )
        return version

    @staticmethod
    def _migrate(db: sqlite3.Connection, version: int) -> int:
        """Bring the database from ``version`` to the next schema version, in one
        transaction (MIGRATIONS says how)."""

        def work() -> int:
            for statement in MIGRATIONS[version]:
                db.execute(statement)
            db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(version + 1),)
            )
            return version + 1

        return _transaction(db, work)

    @staticmethod
    def _schema_version(db: sqlite3.Connection) -> int | None:
        has_meta = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
        ).fetchone()
        if not has_meta:
            return None
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return None if row is None else int(row[0])

    @property
    def _db(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            if db.execute("PRAGMA page_count").fetchone()[0] == 0:
                # Only an empty database can choose its vacuum mode, before anything
                # (even the switch to WAL) writes its first page.
                db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute("PRAGMA foreign_keys=ON")
            db.execute("PRAGMA busy_timeout=10000")  # another process (headwater prune)
            if self._checkpoints:
                _no_checkpoints_in_commits(db)
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    def claim(self, holder: str) -> None:
        """Claim the database for one server process: an exclusive lock on
        ``DB.server-lock`` (released when this process ends, however it ends). Two
        servers on one SQLite file would each replay and dispatch the same runs; the
        second is refused, naming the first. ``prune`` and ``tokens`` take no claim:
        they run beside a server."""
        if self._claim is None:  # (``server=`` took it when the store was opened)
            self._take_lock(holder)
        # Chunks of uploads that never finished (the server died mid-upload): only now,
        # with the database claimed. On every open, `headwater prune` (even a dry run)
        # or `headwater tokens` beside a server deleted the chunks of uploads under way
        # (committed one per transaction before their payload row): their payloads
        # were then published with chunks missing (a user trial: DATA_LOSS).
        _transaction(
            self._db,
            lambda: self._db.execute(
                "DELETE FROM payload_chunks WHERE id NOT IN (SELECT id FROM payloads)"
            ),
        )
        if self._blobs is not None:
            self._blobs.sweep()
        # SQLite copies the write-ahead log back into the database file inside the
        # commit that makes the log pass 1,000 pages: that commit took several ms, and
        # nothing it covers leaves the server before it is stored. The server calls
        # checkpoint() on a thread of its own instead (StoreIO).
        with self._lock:
            self._checkpoints = True
            for db in self._connections:
                _no_checkpoints_in_commits(db)

    def _take_lock(self, holder: str) -> None:
        """The exclusive lock on ``DB.server-lock`` (``claim``), or RuntimeError naming
        the server process that holds it."""
        import fcntl

        # (Beside the file itself, not beside a symbolic link to it: a second server on
        # a link to a served file took a lock of its own and served it too, a trial.)
        real = os.path.realpath(self.path)
        lock = open(f"{real}.server-lock", "a+")  # noqa: SIM115 (held until close)
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            other = lock.read().strip() or "another process"
            lock.close()
            raise RuntimeError(
                f"the database {self.path} is in use by another headwater server "
                f"({other}); one SQLite database serves one server (several servers: "
                "PostgreSQL, docs/deployment.md)"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}, {holder}")
        lock.flush()
        self._claim = lock

    def _refuse_migrating_in_use(self) -> None:
        """Before a server migrates a database of an older schema: RuntimeError when
        another process has it open. A server of a version before the server lock
        (``claim``) takes no lock a newer one could see, and went on writing to the
        migrated file, failing (a user trial of an upgrade); any other process then
        would read tables changed under it. Seen as SQLite's own lock of the file's
        shared memory (the "dead man switch" every open connection holds), read with
        an open-file-description lock, which leaves this process's own locks alone."""
        try:
            probe = sqlite3.connect(f"file:{quote(self.path)}?mode=ro", uri=True)
            try:
                version = self._schema_version(probe)
            finally:
                probe.close()
        except sqlite3.Error:
            return  # the open that follows says why it cannot
        if version is None or version >= SCHEMA_VERSION:
            return
        pid = _shared_memory_user(f"{os.path.realpath(self.path)}-shm")
        if pid is not None and pid != os.getpid():  # (not this process's own connections)
            raise RuntimeError(
                f"database {self.path} has schema version {version}, which this server "
                f"migrates to {SCHEMA_VERSION}, and another process has it open "
                f"({'pid ' + str(pid) if pid > 0 else 'its pid unknown'}: a Headwater "
                "server of an older version?); stop it, then start this server"
            )

    def checkpoint(self, beside_writes: bool = False) -> bool:
        """Once the database is claimed, and the log holds more than WAL_CHECKPOINT
        bytes since it last started over (``logged_bytes``; the file's size when it
        cannot be read): a PASSIVE checkpoint on this thread's connection.
        Between writes (on the writer thread) the whole log is copied, so the next
        write starts it over (written over in place, in a file of at most WAL_KEPT
        bytes). Beside writes (the server's upkeep thread: the writer thread is not
        held up the several ms a copy takes) what was committed when it began is
        copied, and the log starts over once a checkpoint met no new write; one that
        has not for so long that it passed WAL_LAGGING bytes asks for the next
        checkpoint between writes (returns True). A failure (the disk is full: the
        file cannot grow) is logged once and tried again at the next call; the log
        grows meanwhile, as it would with SQLite's own checkpoints failing."""
        if not self._checkpoints:
            return False
        size = logged_bytes(self.path)
        if size is None:
            try:
                size = os.stat(f"{self.path}-wal").st_size
            except OSError:
                return False  # no log: nothing to copy
        if size <= WAL_CHECKPOINT:
            return False
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            if not self._checkpoint_failing:
                log.warning(
                    "could not copy the write-ahead log into %s (%s); it grows until a "
                    "checkpoint succeeds",
                    self.path,
                    exc,
                )
            self._checkpoint_failing = True
        else:
            if self._checkpoint_failing:
                log.warning("the write-ahead log of %s is copied back again", self.path)
            self._checkpoint_failing = False
        return beside_writes and size > WAL_LAGGING

    def close(self) -> None:
        """Close every thread's connection (and remove a temporary database)."""
        if self._claim is not None:
            self._claim.close()  # (the lock goes with the descriptor)
            self._claim = None
        with self._lock:
            connections, self._connections = self._connections, []
        for db in connections:
            with contextlib.suppress(sqlite3.Error):
                db.close()
        self._local = threading.local()
        if self._temp is not None:
            self._temp.cleanup()
            self._temp = None

    # ------------------------------------------------------------------ flows

    def put_flow(
        self, name: str, digest: str, graph: bytes, version: str, now: float
    ) -> tuple[FlowVersion, bool]:
        """Store a flow version; the same graph (by digest) returns the stored version.

        An empty ``version`` is numbered 1, 2, ... per flow name."""
        db = self._db

        def work() -> tuple[FlowVersion, bool]:
            same = db.execute(
                "SELECT version, created_at FROM flows WHERE name=? AND digest=?"
                + (" AND version=?" if version else " ORDER BY seq DESC LIMIT 1"),
                (name, digest, version) if version else (name, digest),
            ).fetchone()
            if same is not None:
                at = same[1]
                if is_build_version(same[0]):  # used now: a prune keeps it (_builds.py)
                    touch_build(db.execute, "max", "?", name, same[0], now)
                    at = max(at, now)
                return FlowVersion(name, same[0], digest, graph, at), False
            seq = db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM flows WHERE name=?", (name,)
            ).fetchone()[0]
            chosen = version or self._next_number(db, name)
            taken = db.execute(
                "SELECT 1 FROM flows WHERE name=? AND version=?", (name, chosen)
            ).fetchone()
            if taken:
                raise Conflict(
                    f"flow {name!r} version {chosen!r} is already registered with a "
                    "different graph; choose a new version"
                )
            db.execute(
                "INSERT INTO flows VALUES (?, ?, ?, ?, ?, ?)",
                (name, chosen, seq, digest, graph, now),
            )
            return FlowVersion(name, chosen, digest, graph, now), True

        return _transaction(db, work)

    @staticmethod
    def _next_number(db: sqlite3.Connection, name: str) -> str:
        """1, 2, ... counting only numbered-style versions: the graphs of
        value-dependent builds (VERSION@DIGEST) do not use up numbers."""
        (count,) = db.execute(
            "SELECT COUNT(*) FROM flows WHERE name=? AND instr(version, ?) = 0",
            (name, BUILD_SEPARATOR),
        ).fetchone()
        number = count + 1
        while db.execute(
            "SELECT 1 FROM flows WHERE name=? AND version=?", (name, str(number))
        ).fetchone():
            number += 1
        return str(number)

    def get_flow(self, name: str, version: str = "") -> FlowVersion:
        """A flow's version (the latest when ``version`` is empty); NotFound if none."""
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
            if is_build_version(version):
                raise build_gone(name, version)
            what = f"flow {name!r}" + (f" version {version!r}" if version else "")
            raise NotFound(f"{what} is not registered")
        return FlowVersion(name, row[0], row[1], row[2], row[3])

    def list_flows(self) -> list[tuple[str, list[str]]]:
        """Every flow name with its versions, oldest first."""
        flows: dict[str, list[str]] = {}
        for name, version in self._db.execute("SELECT name, version FROM flows ORDER BY name, seq"):
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
        existing run. ``schedule`` (the schedule that fired the run, advanced past this
        fire) is updated in the same transaction: a crash cannot keep one without the
        other. So is ``start``, the new run's first journal entries and projections:
        a run is stored started, or not at all."""
        db = self._db

        def work() -> tuple[str, bool]:
            if schedule is not None:
                # UPDATE, not INSERT: a schedule deleted meanwhile stays deleted; one
                # paused meanwhile stays paused (a fire may wait long for a graph build);
                # and one resumed meanwhile keeps its later next time (only a fire's
                # advance moves the time forward from its fire time).
                db.execute(
                    "UPDATE schedules SET body=?, next_run_at=? "
                    "WHERE id=? AND enabled=1 AND (next_run_at IS NULL OR next_run_at < ?)",
                    (schedule.body, schedule.next_run_at, schedule.id, schedule.next_run_at),
                )
            if row.idempotency_key:
                existing = db.execute(
                    "SELECT id, flow_name, parameters FROM flow_runs WHERE idempotency_key=?",
                    (row.idempotency_key,),
                ).fetchone()
                if existing is not None:
                    if existing[1] != row.flow_name or bytes(existing[2]) != row.parameters:
                        raise key_reused(row.idempotency_key, existing[0], existing[1], row)
                    return str(existing[0]), False
            # (a build a prune deleted meanwhile: NotFound, nothing stored; marked used
            # now, not when the run was made: a prune may have started in between)
            touch_build(db.execute, "max", "?", row.flow_name, row.flow_version, self._clock())
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM flow_runs").fetchone()[0]
            db.execute(
                f"INSERT INTO flow_runs ({_FLOW_RUN_COLS}, seq) "
                f"VALUES ({', '.join('?' * (_FLOW_RUN_NCOLS + 1))})",
                (row.id, *_flow_run_values(row), seq),
            )
            _add_refs(db, f"run:{row.id}", row.payload_ids)
            if start:
                _write_batch(db, start)
            if audit is not None:
                insert_audit(db, audit)
            return row.id, True

        run_id, created = _transaction(db, work)
        return (row, True) if created else (self.get_flow_run(run_id), False)

    def claim_for_retry(self, run_id: str, state: int, now: float) -> None:
        """See ``Store.claim_for_retry`` (SQLite takes one writer at a time)."""
        db = self._db

        def work() -> int:
            cur = db.execute(
                "UPDATE flow_runs SET ended_at=max(ended_at, ?) "
                "WHERE id=? AND state=? AND ended_at IS NOT NULL",
                (now, run_id, state),
            )
            return int(cur.rowcount)

        if not _transaction(db, work):
            raise retry_gone(run_id)

    def get_flow_run(self, run_id: str) -> FlowRunRow:
        """A flow run's row; NotFound if it does not exist."""
        row = self._db.execute(f"SELECT {_FLOW_RUN_COLS} FROM flow_runs WHERE id=?", (run_id,))
        found = row.fetchone()
        if found is None:
            raise NotFound(f"flow run {run_id!r} does not exist")
        return _flow_run_row(found)

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
            where.append("flow_name=?")
            args.append(flow_name)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(states)
        if schedule_id:
            where.append("schedule_id=?")
            args.append(schedule_id)
        if created_after is not None:
            where.append("created_at>=?")
            args.append(created_after)
        if created_before is not None:
            where.append("created_at<?")
            args.append(created_before)
        if before:
            where.append("seq < (SELECT seq FROM flow_runs WHERE id=?)")
            args.append(before)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._db.execute(
            f"SELECT {_FLOW_RUN_COLS} FROM flow_runs {clause} ORDER BY seq DESC LIMIT ?",
            (*args, limit),
        )
        return [_flow_run_row(r) for r in rows]

    def child_flow_runs(self, parent_flow_run_id: str) -> list[FlowRunRow]:
        """The child flow runs of a flow run (subflows, flows its tasks started), oldest
        first."""
        rows = self._db.execute(
            f"SELECT {_FLOW_RUN_COLS} FROM flow_runs WHERE parent_flow_run_id=? ORDER BY seq",
            (parent_flow_run_id,),
        )
        return [_flow_run_row(r) for r in rows]

    def flow_run_ids(self, prefix: str, limit: int = 2) -> list[str]:
        """Ids of flow runs starting with ``prefix`` (at most ``limit``)."""
        # Run ids are hex: a range query on the primary key, no LIKE escaping needed.
        rows = self._db.execute(
            "SELECT id FROM flow_runs WHERE id >= ? AND id < ? ORDER BY id LIMIT ?",
            (prefix, prefix + "\U0010ffff", limit),
        )
        return [r[0] for r in rows]

    def unfinished_flow_runs(self) -> list[FlowRunRow]:
        """Runs not in a terminal state, oldest first (what a restart recovers)."""
        rows = self._db.execute(
            f"SELECT {_FLOW_RUN_COLS} FROM flow_runs WHERE state NOT IN {_IN_TERMINAL} "
            "ORDER BY seq",
            _TERMINAL_FLOW_STATES,
        )
        return [_flow_run_row(r) for r in rows]

    def run_sizes(self, flow_run_ids: Sequence[str]) -> dict[str, int]:
        """Each run's journal entries plus task runs (what replaying it costs)."""
        sizes: dict[str, int] = {}
        for flow_run_id in flow_run_ids:
            (size,) = self._db.execute(
                "SELECT (SELECT COUNT(*) FROM run_events WHERE flow_run_id=?) + "
                "(SELECT COUNT(*) FROM task_runs WHERE flow_run_id=?)",
                (flow_run_id, flow_run_id),
            ).fetchone()
            sizes[flow_run_id] = size
        return sizes

    def events(self, flow_run_id: str) -> list[RunEvent]:
        """A run's journal, in order."""
        rows = self._db.execute(
            "SELECT seq, at, kind, body, value_id FROM run_events WHERE flow_run_id=? ORDER BY seq",
            (flow_run_id,),
        )
        return [RunEvent(flow_run_id, s, at, k, b, v) for s, at, k, b, v in rows]

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
        """A run's task runs (projection), in creation order (see ``Store.task_runs``)."""
        sql, args = task_runs_query("?", flow_run_id, task_id, key, states)
        if offset or limit is not None:
            sql += " ORDER BY rowid LIMIT ? OFFSET ?"
            args = (*args, -1 if limit is None else limit, offset)
        else:
            sql += " ORDER BY rowid"
        return [TaskRunRow(flow_run_id, *r) for r in self._db.execute(sql, args)]

    def count_task_runs(
        self, flow_run_id: str, *, task_id: str = "", key: str = "", states: Collection[int] = ()
    ) -> int:
        """See ``Store.count_task_runs``."""
        sql, args = task_runs_query("?", flow_run_id, task_id, key, states, columns="COUNT(*)")
        return int(self._db.execute(sql, args).fetchone()[0])

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """This thread's reads in one read transaction (WAL: one snapshot of the
        database, taken at the first read; commits go on meanwhile)."""
        db = self._db
        if db.in_transaction:  # inside another snapshot (or a write): that one counts
            yield
            return
        db.execute("BEGIN DEFERRED")
        try:
            yield
        finally:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")  # (it read only: nothing to keep)

    def task_ids_in_states(self, flow_run_id: str, states: Collection[int]) -> list[str]:
        """Task ids of a run's task runs in these states (distinct, sorted)."""
        if not states:
            return []
        marks = ", ".join("?" * len(states))
        rows = self._db.execute(
            f"SELECT DISTINCT task_id FROM task_runs WHERE flow_run_id=? AND state IN ({marks})",
            (flow_run_id, *states),
        )
        return sorted(str(r[0]) for r in rows)  # (by code point, as on PostgreSQL)

    def delivered(self, flow_run_id: str) -> dict[str, Delivery]:
        """Each task run's attempt last delivered to a worker, and to whom (none: not
        listed)."""
        rows = self._db.execute(
            "SELECT key, delivered, worker_id, holder FROM task_runs "
            "WHERE flow_run_id=? AND delivered > 0",
            (flow_run_id,),
        )
        return {key: Delivery(attempt, worker, holder) for key, attempt, worker, holder in rows}

    def task_run_history(self, flow_run_id: str, key: str = "") -> list[StateRow]:
        """State history of a run's task runs (of one, with ``key``)."""
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
        most ``limit`` (0: all). ``seq`` is the row id."""
        sql = (
            "SELECT key, attempt, at, level, logger, message, rowid FROM logs "
            "WHERE flow_run_id=? AND rowid>?"
        )
        args: tuple[object, ...] = (flow_run_id, after)
        if key:
            sql += " AND key=?"
            args += (key,)
        if task_id:
            # A mapped child's key is the node id with [i]: "id" or "id[...]".
            sql += " AND (key=? OR (key>=? AND key<?))"
            args += (task_id, task_id + "[", task_id + "\\")
        sql += " ORDER BY rowid"
        if limit > 0:
            sql += " LIMIT ?"
            args += (limit,)
        return [LogRow(flow_run_id, *r) for r in self._db.execute(sql, args)]

    # ----------------------------------------------------------------- values

    def get_values(self, ids: Iterable[str]) -> dict[str, bytes]:
        """Stored values by id (ids not stored are left out)."""
        wanted = list(dict.fromkeys(i for i in ids if i))
        found: dict[str, bytes] = {}
        for start in range(0, len(wanted), 500):  # SQLite's host-parameter limit
            part = wanted[start : start + 500]
            rows = self._db.execute(
                f"SELECT id, data FROM run_values WHERE id IN ({','.join('?' * len(part))})",
                part,
            )
            found.update((str(i), bytes(d)) for i, d in rows)
        return found

    # ----------------------------------------------------------------- commit

    def commit(self, batch: WriteBatch) -> None:
        """Write a tick's batch in one transaction (all or nothing). StoreUnavailable
        when the database file was deleted or replaced under this process: the writes
        would go to a file nobody can open again (all lost at the next start)."""
        if batch:
            if _file_identity(self.path) != self._identity:
                raise StoreUnavailable(
                    f"the database file {self.path} was deleted or replaced while this "
                    "server used it: put it back, or restart the server on a good copy"
                )
            db = self._db
            _transaction(db, lambda: _write_batch(db, batch))

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
        db = self._db

        def sink_for(payload_id: str) -> ChunkSink:
            if self._blobs is not None:
                return self._blobs.sink(payload_id)
            return SQLiteChunks(db, payload_id)

        return PayloadWriter(
            sink_for,
            lambda meta, at: publish_payload(db, meta, at),
            metadata,
            size,
            sha256,
            self._clock(),
            uploader,
        )

    def payload_meta(self, payload_id: str) -> PayloadMeta:
        """A stored payload's size, metadata and hash; NotFound if it does not exist."""
        row = self._db.execute(
            "SELECT size, metadata, sha256, uploader FROM payloads WHERE id=?", (payload_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"payload {payload_id!r} does not exist")
        return PayloadMeta(payload_id, row[0], json.loads(row[1]), row[2], row[3])

    def read_payload_chunk(self, payload_id: str, index: int) -> bytes:
        """Stored chunk ``index`` of a payload (CHUNK_SIZE bytes; the last may be
        shorter); b"" past the end."""
        if self._blobs is not None:
            data = self._blobs.read_chunk(payload_id, index)
            if data is not None:
                return data
        row = self._db.execute(
            "SELECT data FROM payload_chunks WHERE id=? AND idx=?", (payload_id, index)
        ).fetchone()
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

    # ------------------------------------------------------------------ cache

    def get_cache(self, key: str) -> CacheRow | None:
        """The cache entry under ``key``, expired or not (the caller checks)."""
        row = self._db.execute(
            "SELECT value_id, expires_at FROM cache_entries WHERE key=?", (key,)
        ).fetchone()
        return None if row is None else CacheRow(key, row[0], row[1])

    # -------------------------------------------------------------- schedules

    def put_schedule(self, row: ScheduleRow, replaces: str = "") -> None:
        """Create or replace a schedule (``Store.put_schedule``)."""
        db = self._db

        def work() -> None:
            if replaces:
                db.execute("DELETE FROM schedules WHERE id=?", (replaces,))
                db.execute("DELETE FROM payload_refs WHERE owner=?", (f"schedule:{replaces}",))
            if build := schedule_build(row.body):
                touch_build(db.execute, "max", "?", row.flow_name, build, self._clock())
            db.execute(
                "INSERT OR REPLACE INTO schedules VALUES (?, ?, ?, ?, ?)",
                (row.id, row.flow_name, row.body, row.next_run_at, int(row.enabled)),
            )
            db.execute("DELETE FROM payload_refs WHERE owner=?", (f"schedule:{row.id}",))
            _add_refs(db, f"schedule:{row.id}", row.payload_ids)

        _transaction(db, work)

    def list_schedules(self, flow_name: str = "") -> list[ScheduleRow]:
        """Every schedule (of one flow, if given)."""
        sql = "SELECT id, flow_name, body, next_run_at, enabled FROM schedules"
        rows = (
            self._db.execute(sql + " WHERE flow_name=? ORDER BY id", (flow_name,))
            if flow_name
            else self._db.execute(sql + " ORDER BY id")
        )
        return [ScheduleRow(i, f, b, n, bool(e)) for i, f, b, n, e in rows]

    def get_schedule(self, schedule_id: str) -> ScheduleRow:
        """One schedule; NotFound if it does not exist."""
        found = self._db.execute(
            "SELECT id, flow_name, body, next_run_at, enabled FROM schedules WHERE id=?",
            (schedule_id,),
        ).fetchone()
        if found is None:
            raise NotFound(f"schedule {schedule_id!r} does not exist")
        i, f, b, n, e = found
        return ScheduleRow(i, f, b, n, bool(e))

    def delete_schedule(self, schedule_id: str) -> None:
        """Remove a schedule (its runs stay); NotFound if it does not exist."""
        db = self._db

        def work() -> None:
            cur = db.execute("DELETE FROM schedules WHERE id=?", (schedule_id,))
            if cur.rowcount == 0:
                raise NotFound(f"schedule {schedule_id!r} does not exist")
            db.execute("DELETE FROM payload_refs WHERE owner=?", (f"schedule:{schedule_id}",))

        _transaction(db, work)

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
        expired cache entries; values nothing references any more; and payloads
        nothing references that are older than ``grace`` seconds (younger ones may
        belong to an upload or a result on its way). Then the freed pages go back to
        the file system. Each step is one short transaction on the calling thread's
        connection; ``dry_run`` only reads."""
        return Pruning(
            _SQLitePruning(self),
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
        """Rows per table and the file's size in pages (for tests and benchmarks)."""
        db = self._db
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
        out = {t: int(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in tables}
        out["page_count"] = int(db.execute("PRAGMA page_count").fetchone()[0])
        out["freelist_count"] = int(db.execute("PRAGMA freelist_count").fetchone()[0])
        return out


#: Pages the first step of giving space back frees (256 KB of 4 KB pages): each step
#: holds the write lock while SQLite cuts free pages off the end of the file; later
#: steps take as many as fit in GIVE_BACK_STEP seconds (at most GIVE_BACK_PAGES_MAX).
#: (A first step of 512 pages held a server's commits ~1.4 s on a scattered free
#: list, 2.7 ms a page: a trial's runs waited up to 2.7 s beside `headwater prune`.)
GIVE_BACK_PAGES = 64
GIVE_BACK_PAGES_MAX = 25_600
GIVE_BACK_STEP = 0.025
#: The longest one prune gives space back (seconds of steps); the rest is reused by
#: new rows, and the next prune carries on.
GIVE_BACK_BUDGET = 30.0
#: The longest sleep of SQLite's busy handler between two tries of a waiting writer.
BUSY_RETRY = 0.1
#: The shortest pause between two steps of a prune beside a server: the busy handler's
#: first tries come at most 25 ms apart.
PAUSE_MIN = 0.03


def _held_by_a_server(path: str) -> bool:
    """Whether a server process holds the database (its lock file, ``claim``)."""
    import fcntl

    try:
        with open(f"{os.path.realpath(path)}.server-lock") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    except OSError:
        return False
    return False


class _SQLitePruning:
    """The SQLite side of a prune (``PruneDB``): the calling thread's connection, the
    payload directory, and the file's pages."""

    mark = "?"
    lock_rows = ""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self.blobs = store._blobs
        self._pages: int | None = None  # the file's pages before the prune
        self._page_size = 0
        self._beside_server: bool | None = None
        self._pages_per_step = GIVE_BACK_PAGES
        self._give_back_until: float | None = None

    def _db(self) -> sqlite3.Connection:
        db = self._store._db
        if self._pages is None:
            self._page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
            self._pages = int(db.execute("PRAGMA page_count").fetchone()[0])
        return db

    def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._fast_delete() as db:
            return _transaction(db, lambda: work(db))

    @contextlib.contextmanager
    def _fast_delete(self) -> Iterator[sqlite3.Connection]:
        """The connection with ``secure_delete=FAST`` while a step deletes. Debian's
        SQLite overwrites every freed page with zeros by default, through the log: a
        prune of 300 MB of payloads wrote 340 MB of log, which needed that much free
        space, and the server's writer thread then spent 1.6 s copying it back while
        its commits waited. FAST zeroes only what costs no extra I/O; the pages freed
        are cut off the file or reused by the same prune's incremental vacuum."""
        db = self._db()
        before = db.execute("PRAGMA secure_delete").fetchone()[0]
        db.execute("PRAGMA secure_delete=FAST")
        try:
            yield db
        finally:
            db.execute(f"PRAGMA secure_delete={int(before)}")

    def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return work(self._db())
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"cannot read from the database: {exc}") from exc

    def give_back(self, deleted: bool) -> bool:
        """One step of ``PRAGMA incremental_vacuum``: as many pages as fit in about
        GIVE_BACK_STEP seconds (a step of 512 pages took 2 ms on one file and 1 s on
        another whose free list was long and scattered: SQLite searches the free list
        for each page it cuts off), for at most GIVE_BACK_BUDGET seconds per prune.
        Free pages left in the file are reused by new rows; the next prune gives back
        the rest. A failure (the disk is full, the lock is busy) stops giving back and
        is reported (``Pruning`` records it): what was deleted stays deleted."""
        db = self._db()
        if self._give_back_until is None:
            self._give_back_until = time.monotonic() + GIVE_BACK_BUDGET
        elif time.monotonic() > self._give_back_until:
            raise GiveBackStopped(
                f"gave space back for {GIVE_BACK_BUDGET:g}s, the most one prune does"
            )
        before = int(db.execute("PRAGMA page_count").fetchone()[0])
        start = time.monotonic()
        try:
            self._incremental_vacuum(self._pages_per_step)
        except sqlite3.Error as exc:
            raise GiveBackStopped(str(exc)) from exc
        took = time.monotonic() - start
        self._pages_per_step = max(
            16,
            min(GIVE_BACK_PAGES_MAX, int(self._pages_per_step * GIVE_BACK_STEP / max(took, 1e-4))),
        )
        after = int(db.execute("PRAGMA page_count").fetchone()[0])
        free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
        if free and after < before:
            return True
        with contextlib.suppress(sqlite3.Error):  # readers may hold the WAL: shrink later
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return False

    def _incremental_vacuum(self, pages: int) -> None:
        with self._fast_delete() as db:
            # Through sqlite3_exec: a prepared statement's single step frees one page.
            db.executescript(f"PRAGMA incremental_vacuum({pages});")

    def pause(self, step: float) -> float:
        """Beside a server (another process holds the database's server lock): a
        pause after a step of ``step`` seconds, long enough for the server's writer to
        get in. Its commits wait for the lock in SQLite's busy handler, which sleeps
        longer the longer it waits (up to 100 ms between tries): taking the lock again
        at once starved them (waits of 1.1 s while a prune of 300 MB gave its space
        back). As long as the step, at least PAUSE_MIN, at most BUSY_RETRY."""
        if self._beside_server is None:
            self._beside_server = self._store._claim is None and _held_by_a_server(self._store.path)
        return min(BUSY_RETRY, max(PAUSE_MIN, step)) if self._beside_server else 0.0

    def reclaimed(self, deleted_bytes: int, file_bytes: int) -> int:
        after = int(self._db().execute("PRAGMA page_count").fetchone()[0])
        return max(0, (self._pages or 0) - after) * self._page_size + file_bytes


def _write_batch(db: sqlite3.Connection, batch: WriteBatch) -> None:
    # Rows go to executemany as generators, one made and freed at a time: as lists, a
    # 100,000-task run's start built 100,000-element lists of tuples that the young
    # collections on this thread traversed again and again (up to 22 ms each, seen in
    # an instrumented server, with the GIL held: every other thread waited).
    # (A table without rows in the batch is skipped: an empty executemany still costs
    # its statement's preparation, ~4 µs, and most batches touch half the tables.)
    if batch.values:
        db.executemany(
            "INSERT OR IGNORE INTO run_values VALUES (?, ?, ?)",
            ((v.id, v.data, len(v.data)) for v in batch.values.values()),
        )
        if any(v.payload_ids for v in batch.values.values()):  # (most reference none)
            db.executemany(
                "INSERT OR IGNORE INTO payload_refs VALUES (?, ?)",
                ((f"value:{v.id}", p) for v in batch.values.values() for p in v.payload_ids),
            )
    if batch.events:
        db.executemany(
            "INSERT INTO run_events VALUES (?, ?, ?, ?, ?, ?)",
            ((e.flow_run_id, e.seq, e.at, e.kind, e.body, e.value_id) for e in batch.events),
        )
    if batch.flow_runs:
        db.executemany(_UPDATE_FLOW_RUN, (_flow_run_changes(r) for r in batch.flow_runs.values()))
    # An upsert, not INSERT OR REPLACE: a replaced row gets a new rowid, and a run's
    # task runs are listed by rowid (the order they were first stored, as on
    # PostgreSQL: a map's children by index, not in the order they last changed).
    if batch.task_runs:
        db.executemany(
            "INSERT INTO task_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (flow_run_id, key) DO UPDATE SET task_id=excluded.task_id, "
            "map_index=excluded.map_index, state=excluded.state, attempt=excluded.attempt, "
            "updated_at=excluded.updated_at, worker_id=excluded.worker_id, "
            "cache_key=excluded.cache_key, result_id=excluded.result_id, "
            "delivered=excluded.delivered, holder=excluded.holder",
            (
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
                    t.result_id,
                    t.delivered,
                    t.holder,
                )
                for t in batch.task_runs.values()
            ),
        )
    if batch.states:
        db.executemany(
            "INSERT INTO task_run_states VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                (s.flow_run_id, s.key, s.seq, s.state, s.at, s.attempt, s.message, s.failure)
                for s in batch.states
            ),
        )
    if batch.logs:
        db.executemany(
            "INSERT INTO logs VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                (g.flow_run_id, g.key, g.attempt, g.at, g.level, g.logger, g.message)
                for g in batch.logs
            ),
        )
    if batch.cache:
        db.executemany(
            "INSERT OR REPLACE INTO cache_entries VALUES (?, ?, ?)",
            ((c.key, c.value_id, c.expires_at) for c in batch.cache),
        )
    write_ops(db, batch)


def _add_refs(db: sqlite3.Connection, owner: str, payload_ids: Iterable[str]) -> None:
    refs = [(owner, p) for p in payload_ids]
    if refs:  # (an empty executemany still prepares its statement)
        db.executemany("INSERT OR IGNORE INTO payload_refs VALUES (?, ?)", refs)


def _why(path: str, exc: sqlite3.Error) -> str:
    """What a failed open may come from that SQLite's message does not say."""
    if "not a database" in str(exc) or "malformed" in str(exc):
        return " (it is not a SQLite database, or a damaged one: check the path)"
    if os.path.isdir(path):
        return " (it is a directory: give the path of a database file)"
    if os.path.islink(path) and not os.path.exists(path):
        return " (a symbolic link to nothing: check where it points)"
    directory = os.path.dirname(os.path.abspath(path))
    if not os.access(directory, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return (
            " (the file or its directory is read-only: Headwater writes beside the "
            "database even to read it, since SQLite's WAL mode keeps its -wal and -shm "
            "files there; work on a writable copy)"
        )
    return ""


def _remove_empty(sides: list[str]) -> None:
    """Remove the WAL side files a refused open left beside a database that had none
    (a read-only look leaves an -shm and an empty -wal): only a WAL without content."""
    for side in sides:
        with contextlib.suppress(OSError):
            if side.endswith("-shm") or os.path.getsize(side) == 0:
                os.remove(side)


def _other_schema(path: str, version: int) -> str:
    """Why a database of another schema version is refused, and what to do."""
    said = f"database {path} has schema version {version}, and this Headwater uses {SCHEMA_VERSION}"
    if version > SCHEMA_VERSION:
        return f"{said}: it was written by a newer Headwater; use that version on it"
    if version in MIGRATIONS:
        return (
            f"{said}: use the Headwater whose server runs on it, or start a server of "
            "this version on it, which migrates it"
        )
    return (
        f"{said}: it is too old to migrate; use the Headwater that wrote it to finish "
        "its runs, and start this version with a new --db"
    )


#: Where SQLite's unix VFS locks a database's shared memory file: the byte every open
#: connection holds a shared lock on (``UNIX_SHM_DMS`` in os_unix.c: 120 + 8).
_SHM_DEAD_MAN_SWITCH = 128


def _shared_memory_user(shm: str) -> int | None:
    """The pid of a process that has the database of this ``-shm`` file open (0 when
    the system does not say which), None when none has (or it cannot be told: no
    open-file-description locks, not Linux)."""
    import fcntl
    import struct

    ofd_getlk = getattr(fcntl, "F_OFD_GETLK", None)
    if ofd_getlk is None:
        return None
    try:
        fd = os.open(shm, os.O_RDONLY)
    except OSError:  # no such file: no connection has the database open
        return None
    try:
        layout = "@hhqqi0q"  # struct flock: type, whence, start, len, pid
        asked = struct.pack(layout, fcntl.F_WRLCK, os.SEEK_SET, _SHM_DEAD_MAN_SWITCH, 1, 0)
        kind, _, _, _, pid = struct.unpack(layout, fcntl.fcntl(fd, ofd_getlk, asked))
    except OSError:
        return None
    finally:
        os.close(fd)
    return None if kind == fcntl.F_UNLCK else max(pid, 0)


def _file_identity(path: str) -> tuple[int, int] | None:
    """The file at ``path`` (device, inode), None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


_FLOW_RUN_COLS = (
    "id, flow_name, flow_version, state, created_at, parameters, idempotency_key, "
    "started_at, ended_at, result, message, trace_context, schedule_id, engine_version, "
    "parent_flow_run_id, parent_task_key, parent_attempt"
)
# A batch's update sets only what changes after a run is created: SQLite rewrites an
# index entry of every indexed column an UPDATE sets, changed or not (the idempotency
# key's index page was written again with every change of every run).
_UPDATE_FLOW_RUN = (
    "UPDATE flow_runs SET state=?, started_at=?, ended_at=?, result=?, message=?, "
    "engine_version=? WHERE id=?"
)
_FLOW_RUN_NCOLS = len(_FLOW_RUN_COLS.split(", "))


def _flow_run_changes(r: FlowRunRow) -> tuple[object, ...]:
    """The values of ``_UPDATE_FLOW_RUN``."""
    return (r.state, r.started_at, r.ended_at, r.result, r.message, r.engine_version, r.id)


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
        r.engine_version,
        r.parent_flow_run_id,
        r.parent_task_key,
        r.parent_attempt,
    )


def _flow_run_row(r: tuple[Any, ...]) -> FlowRunRow:
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
