"""Retention for every store: a prune as a series of short transactions.

A prune used to be one transaction. On SQLite it held the database's only write lock
for as long as it deleted: a prune of 870 MB held a server's commits for 33 s, and a
server's own ``--retention`` ran it on its writer thread, so every run stalled
meanwhile. Its dry run deleted and rolled back, so it needed free space and held the
lock as long. Now ``Pruning`` does the work in steps, one short transaction each, and
a server's writes go in between (its retention runs each step as a write of its own;
``headwater prune`` beside a server releases the lock between steps):

1. finished runs, in batches of whole families (at most RUN_BATCH runs and about
   TASK_RUN_BATCH task runs; a larger run goes alone), each batch checking again in
   its transaction that its runs are still finished and old enough (a run retried
   since the plan is kept);
2. with a cut-off, the value-dependent builds (``VERSION@DIGEST12`` flow versions) no
   run and no schedule uses and none has used since the cut-off (``_builds.py``), and
   the webhook deliveries given up that were made before it;
3. expired cache entries, values nothing references and payloads nothing references
   (older than the grace), each batch found and deleted in one transaction, in key
   order so no row is looked at twice; then the payloads that only the runs and values
   this prune deleted referenced, whatever their age (the grace keeps uploads not
   referenced yet; these were referenced, so their uploads had finished);
4. the store gives the space back (``PruneDB.give_back``, in steps on SQLite).

A dry run only reads, so it needs no free space and takes no write lock: it counts
what the steps would delete, with what references values and payloads now and which
of those references the prune would remove.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from headwater.wire import TERMINAL_FLOW_STATES

from ._base import PruneReport
from ._builds import BUILD_VERSIONS, schedule_build
from ._ops import PAYLOAD_IN_A_DIRECTORY, PER_RUN_TABLES, whole_families
from ._payloads import DirectoryBlobs

T = TypeVar("T")

#: At most this many runs per transaction.
RUN_BATCH = 50
#: A worker record whose name is not drained (a drained one is kept while drained).
_UNDRAINED = "name NOT IN (SELECT name FROM worker_drains)"
#: A batch of runs closes once its runs hold this many task runs (a run holding more
#: goes alone: its rows are deleted in one transaction).
TASK_RUN_BATCH = 20_000
#: Values or expired cache entries per transaction.
ROW_BATCH = 2_000
#: Payloads per transaction, and the bytes after which a batch closes early.
PAYLOAD_BATCH = 200
PAYLOAD_BATCH_BYTES = 64 * 1024 * 1024
#: Ids per ``IN (...)`` list.
IN_LIST = 500

TERMINAL = tuple(s.value for s in TERMINAL_FLOW_STATES)
#: A value nothing refers to: no journal entry and no cache entry ("value_id != ''"
#: lets both databases use the partial index run_events_value; without it each value
#: scanned the whole journal: 18 s for 7,000 values).
ORPHAN_VALUE = (
    "NOT EXISTS (SELECT 1 FROM run_events e WHERE e.value_id = v.id AND e.value_id != '') "
    "AND NOT EXISTS (SELECT 1 FROM cache_entries c WHERE c.value_id = v.id)"
)
#: A payload nothing refers to.
UNREFERENCED_PAYLOAD = "NOT EXISTS (SELECT 1 FROM payload_refs r WHERE r.payload_id = p.id)"
#: The tables with rows per run, and the report's name for each count ("" uncounted).
RUN_TABLES = (
    ("run_events", "journal_entries"),
    ("task_runs", "task_runs"),
    ("task_run_states", ""),
    ("logs", "logs"),
    *((table, "") for table in PER_RUN_TABLES),
)


class GiveBackStopped(Exception):
    """``PruneDB.give_back`` stopped before all the space was given back (why: the
    message). What was deleted stays deleted; new rows reuse the space."""


class PruneDB(Protocol):
    """What a store gives ``Pruning``: connections in transactions, and its own ways
    of freeing files and giving space back. A connection has ``execute(sql, params)``
    returning a cursor (``fetchall``, ``fetchone``, ``rowcount``): sqlite3's and
    psycopg's both do."""

    #: The parameter placeholder: "?" (sqlite3) or "%s" (psycopg).
    mark: str
    #: What locks the rows a SELECT reads until the transaction ends: " FOR UPDATE"
    #: (PostgreSQL), "" where a write transaction excludes every other writer (SQLite).
    lock_rows: str
    #: The store's payload directory (None: it was not given one, and payloads whose
    #: bytes are in one are kept).
    blobs: DirectoryBlobs | None

    def write(self, work: Callable[[Any], T]) -> T:
        """``work(connection)`` in one transaction (StoreUnavailable when it cannot)."""
        ...

    def read(self, work: Callable[[Any], T]) -> T:
        """``work(connection)`` reading only."""
        ...

    def give_back(self, deleted: bool) -> bool:
        """One step of giving the space of deleted rows back (``deleted``: whether the
        prune deleted any row); True while more remains."""
        ...

    def pause(self, step: float) -> float:
        """Seconds ``Pruning.run`` waits after a step that took ``step`` seconds (so
        that writers of other processes waiting for a lock get in)."""
        ...

    def reclaimed(self, deleted_bytes: int, file_bytes: int) -> int:
        """The bytes the prune gave back, once it is done."""
        ...


@dataclass
class _Counts:
    runs: int = 0
    journal_entries: int = 0
    task_runs: int = 0
    logs: int = 0
    values: int = 0
    value_bytes: int = 0
    payloads: int = 0
    payload_bytes: int = 0
    payloads_kept: int = 0
    payloads_waiting: int = 0
    payload_bytes_waiting: int = 0
    cache_entries: int = 0
    workers: int = 0
    builds: int = 0
    deliveries: int = 0
    file_bytes: int = 0
    reclaimed: int = 0
    give_back_stopped: str = ""
    pruned: list[str] = field(default_factory=list)  # runs (of a dry run)


class Pruning:
    """One prune (``Store.pruning``): call ``step()`` until it returns False, then
    ``report()``. Each step is one short transaction (or, in a dry run, reads), so a
    server runs each as a write of its own and commits go in between.

    Args:
        db: the store's side (``PruneDB``).
        ended_before: delete finished runs that ended before this (None: no run).
        now: the time expired cache entries and the payloads' grace are measured at.
        grace: payloads nothing references younger than this many seconds are kept.
        dry_run: count, delete nothing.
        keep: run ids to keep whatever the store says of them, asked as each batch is
            deleted (a server's runs under way: a run retried in memory is stored as
            ended until its retry's first commit).
        workers_before: also forget the workers last heard from before this (a
            server's ``forget_workers_after``); the records of workers gone since
            before ``ended_before`` go in any case.
    """

    def __init__(
        self,
        db: PruneDB,
        ended_before: float | None,
        now: float,
        *,
        grace: float,
        dry_run: bool = False,
        keep: Callable[[str], bool] | None = None,
        workers_before: float | None = None,
    ) -> None:
        self._db = db
        self._keep = keep
        self._ended_before = ended_before
        cuts = [cut for cut in (ended_before, workers_before) if cut is not None]
        #: The workers last heard from before this are forgotten (the later cut-off).
        self.workers_before = max(cuts) if cuts else None
        self._now = now
        self._grace = grace
        self.dry_run = dry_run
        #: The builds deleted, (flow name, version): a server lets go of their graphs.
        self.builds_deleted: list[tuple[str, str]] = []
        #: The next step only reads (a scan of the runs): a server runs it on a reader
        #: thread, not holding its commits meanwhile.
        self.reads_next = dry_run
        self._counts = _Counts()
        #: Payloads the runs and values this prune deleted referenced: finished uploads,
        #: deleted once nothing references them, whatever their age (the grace is for
        #: uploads not referenced yet: with it, a server with --retention 30s kept a
        #: day of pruned runs' results, 14 GB in 12 minutes of a trial).
        self._released: set[str] = set()
        self._steps = self._dry() if dry_run else self._work()

    def step(self) -> bool:
        """Do the next step; False once the prune is done (nothing was left to do)."""
        return next(self._steps, False)

    def run(self) -> PruneReport:
        """Every step, then the report (a prune outside a server: ``headwater prune``,
        which pauses between steps when the store says so)."""
        while True:
            start = time.monotonic()
            if not self.step():
                break
            if not self.dry_run and (pause := self._db.pause(time.monotonic() - start)) > 0:
                time.sleep(pause)
        return self.report()

    def report(self) -> PruneReport:
        """What went (or, in a dry run, would go); reads nothing (a server calls it on
        its event loop)."""
        c = self._counts
        return PruneReport(
            runs=c.runs,
            journal_entries=c.journal_entries,
            task_runs=c.task_runs,
            logs=c.logs,
            values=c.values,
            payloads=c.payloads,
            payload_bytes=c.payload_bytes,
            cache_entries=c.cache_entries,
            bytes_reclaimed=c.reclaimed,
            dry_run=self.dry_run,
            workers=c.workers,
            builds=c.builds,
            deliveries=c.deliveries,
            payloads_kept=c.payloads_kept,
            payloads_waiting=c.payloads_waiting,
            payload_bytes_waiting=c.payload_bytes_waiting,
            give_back_stopped=c.give_back_stopped,
        )

    # ------------------------------------------------------------------ SQL

    def _marks(self, count: int) -> str:
        return ", ".join([self._db.mark] * count)

    def _each(self, conn: Any, sql: str, ids: Sequence[str | int], *extra: Any) -> Iterator[Any]:
        """``sql`` (``{within}`` stands for the list) run per slice of ``ids``: the cursors."""
        for start in range(0, len(ids), IN_LIST):
            part = list(ids[start : start + IN_LIST])
            yield conn.execute(sql.format(within=self._marks(len(part))), (*part, *extra))

    def _rows(self, conn: Any, sql: str, ids: Sequence[str | int], *extra: Any) -> list[Any]:
        return [row for cur in self._each(conn, sql, ids, *extra) for row in cur.fetchall()]

    def _delete(self, conn: Any, sql: str, ids: Sequence[str | int], *extra: Any) -> int:
        return sum(max(0, cur.rowcount) for cur in self._each(conn, sql, ids, *extra))

    def _finished(self, conn: Any, among: Sequence[str] | None = None) -> list[str]:
        """The runs a prune may delete now (of ``among``, when given: checked and
        locked in the deleting transaction, so a retry's ``claim_for_retry`` waits for
        it or it for the claim): finished before ``ended_before``, in whole families."""
        finished = (
            f"state IN ({self._marks(len(TERMINAL))}) AND ended_at IS NOT NULL "
            f"AND ended_at < {self._db.mark}"
        )
        if among is None:
            rows = conn.execute(
                f"SELECT id, parent_flow_run_id FROM flow_runs WHERE {finished}",
                (*TERMINAL, self._ended_before),
            ).fetchall()
        else:
            rows = self._rows(
                conn,
                f"SELECT id, parent_flow_run_id FROM flow_runs WHERE id IN ({{within}}) "
                f"AND {finished}{self._db.lock_rows}",
                among,
                *TERMINAL,
                self._ended_before,
            )
        keep = self._keep
        candidates = {
            str(run): parent or "" for run, parent in rows if keep is None or not keep(str(run))
        }

        def existing(ids: list[str]) -> set[str]:
            found = self._rows(conn, "SELECT id FROM flow_runs WHERE id IN ({within})", ids)
            return {str(r[0]) for r in found}

        return whole_families(candidates, existing)

    def _batches(self, conn: Any, runs: list[str]) -> list[list[str]]:
        """``runs`` in batches of whole families (a child run goes with its parent)."""
        parents = dict(
            self._rows(
                conn, "SELECT id, parent_flow_run_id FROM flow_runs WHERE id IN ({within})", runs
            )
        )
        sizes = dict(
            self._rows(
                conn,
                "SELECT flow_run_id, count(*) FROM task_runs WHERE flow_run_id IN ({within}) "
                "GROUP BY flow_run_id",
                runs,
            )
        )

        def root(run: str) -> str:
            seen = {run}
            while (parent := parents.get(run) or "") in parents and parent not in seen:
                run = parent
                seen.add(run)
            return run

        families: dict[str, list[str]] = {}
        for run in runs:
            families.setdefault(root(run), []).append(run)
        batches: list[list[str]] = []
        batch: list[str] = []
        tasks = 0
        for family in families.values():
            weight = sum(int(sizes.get(run, 0)) for run in family)
            if batch and (len(batch) + len(family) > RUN_BATCH or tasks + weight > TASK_RUN_BATCH):
                batches.append(batch)
                batch, tasks = [], 0
            batch.extend(family)
            tasks += weight
        if batch:
            batches.append(batch)
        return batches

    # ------------------------------------------------------------------ deleting

    def _work(self) -> Iterator[bool]:
        c = self._counts
        db = self._db
        if self._ended_before is not None:
            for batch in db.read(lambda conn: self._batches(conn, self._finished(conn))):
                db.write(functools.partial(self._delete_runs, batch=batch))
                yield True
        if self.workers_before is not None:
            c.workers = db.write(self._forget_workers)
            yield True
        if self._ended_before is not None:
            self.reads_next = True
            yield True
            in_use = db.read(self._builds_in_use)  # (45 ms for 200,000 runs on SQLite)
            self.reads_next = False
            yield True
            after = [("", "")]
            while in_use is not None and db.write(
                lambda conn: self._delete_builds(conn, in_use, after)
            ):
                yield True
            while db.write(self._delete_given_up):
                yield True
        while db.write(self._delete_cache_entries):
            yield True
        last: list[str] = [""]
        while db.write(lambda conn: self._delete_values(conn, last)):
            yield True
        last[0] = ""
        while True:
            more, gone = db.write(lambda conn: self._delete_payloads(conn, last))
            if gone and db.blobs is not None:  # the rows are gone: now their files
                c.file_bytes += db.blobs.size_of(gone)
                db.blobs.delete(gone)
            if not more:
                break
            yield True
        released = sorted(self._released)
        for start in range(0, len(released), PAYLOAD_BATCH):
            batch = released[start : start + PAYLOAD_BATCH]
            gone = db.write(functools.partial(self._delete_released, ids=batch))
            if gone and db.blobs is not None:
                c.file_bytes += db.blobs.size_of(gone)
                db.blobs.delete(gone)
            yield True
        c.payloads_kept = db.read(self._kept_payloads)
        c.payloads_waiting, c.payload_bytes_waiting = db.read(self._waiting_payloads)
        if db.blobs is not None:  # uploads a crash cut short
            db.blobs.sweep(older_than=self._grace)
        deleted = any((c.runs, c.cache_entries, c.values, c.payloads))
        try:
            while db.give_back(deleted):
                yield True
        except GiveBackStopped as exc:
            c.give_back_stopped = str(exc)
        c.reclaimed = db.reclaimed(c.value_bytes + c.payload_bytes, c.file_bytes)

    def _delete_runs(self, conn: Any, batch: list[str]) -> None:
        runs = self._finished(conn, batch)  # still finished, still old enough
        c = self._counts
        for table, key in RUN_TABLES:
            removed = self._delete(
                conn, f"DELETE FROM {table} WHERE flow_run_id IN ({{within}})", runs
            )
            if key:
                setattr(c, key, getattr(c, key) + removed)
        self._released.update(
            str(p)
            for (p,) in self._rows(
                conn,
                "DELETE FROM payload_refs WHERE owner IN ({within}) RETURNING payload_id",
                [f"run:{r}" for r in runs],
            )
        )
        self._delete(
            conn, "DELETE FROM audit WHERE object_kind='flow_run' AND object_id IN ({within})", runs
        )
        c.runs += self._delete(conn, "DELETE FROM flow_runs WHERE id IN ({within})", runs)

    def _forget_workers(self, conn: Any, dry_run: bool = False) -> int:
        """The workers last heard from before the cut-off (recorded by name, so every
        start under a new name, such as the default host-pid, adds one): forgotten, as
        their runs are, or sooner (``workers_before``). A drained worker's record stays
        while its drain does (listed offline and drained, so the drain can be seen and
        lifted). A connected worker's record is rewritten every few seconds, so only one
        gone for that long goes (or, with a cut-off of seconds, comes back at the next
        rewrite)."""
        m = self._db.mark
        if dry_run:
            found = conn.execute(
                f"SELECT count(*) FROM workers WHERE last_seen < {m} AND {_UNDRAINED}",
                (self.workers_before,),
            ).fetchone()
            return int(found[0])
        cur = conn.execute(
            f"DELETE FROM workers WHERE last_seen < {m} AND {_UNDRAINED}", (self.workers_before,)
        )
        return max(0, int(cur.rowcount))

    def _old_builds(self) -> str:
        """The builds old enough to go (``f``; used by nothing: checked apart)."""
        m = self._db.mark
        return f"f.version LIKE {m} AND f.created_at < {m}"

    def _builds_in_use(self, conn: Any, dying: Collection[str] = ()) -> set[tuple[str, str]] | None:
        """The builds runs (but ``dying`` ones) or schedules use; None when no build is
        old enough to go (the runs are not scanned then). One scan of the runs: they
        have no index by flow, which would cost every run's creation a page write."""
        m = self._db.mark
        old = conn.execute(
            f"SELECT 1 FROM flows f WHERE {self._old_builds()} LIMIT 1",
            (BUILD_VERSIONS, self._ended_before),
        ).fetchone()
        if old is None:
            return None
        # (The cursor read row by row: only the distinct builds are held.)
        if dying:
            rows = conn.execute(
                f"SELECT id, flow_name, flow_version FROM flow_runs WHERE flow_version LIKE {m}",
                (BUILD_VERSIONS,),
            )
            used = {(str(n), str(v)) for run, n, v in rows if run not in dying}
        else:
            rows = conn.execute(
                f"SELECT DISTINCT flow_name, flow_version FROM flow_runs "
                f"WHERE flow_version LIKE {m}",
                (BUILD_VERSIONS,),
            )
            used = {(str(n), str(v)) for n, v in rows}
        for name, body in conn.execute("SELECT flow_name, body FROM schedules").fetchall():
            if build := schedule_build(bytes(body)):
                used.add((str(name), build))
        return used

    def _old_unused_builds(
        self, conn: Any, in_use: set[tuple[str, str]], after: list[tuple[str, str]]
    ) -> tuple[list[tuple[str, str]], bool]:
        """One batch of builds old enough to go, after ``after[0]`` in key order: those
        not ``in_use``, and whether more may follow."""
        m = self._db.mark
        name, version = after[0]
        found = [
            (str(n), str(v))
            for n, v in conn.execute(
                f"SELECT f.name, f.version FROM flows f WHERE {self._old_builds()} AND "
                f"(f.name > {m} OR (f.name = {m} AND f.version > {m})) "
                f"ORDER BY f.name, f.version LIMIT {ROW_BATCH}",
                (BUILD_VERSIONS, self._ended_before, name, name, version),
            ).fetchall()
        ]
        if found:
            after[0] = found[-1]
        return [key for key in found if key not in in_use], len(found) == ROW_BATCH

    def _delete_builds(
        self, conn: Any, in_use: set[tuple[str, str]], after: list[tuple[str, str]]
    ) -> bool:
        """One batch of builds no run or schedule uses, unused since the cut-off. The
        delete checks ``created_at`` again: a run or schedule stored with a build since
        ``in_use`` was read moved it past the cut-off (``touch_build``)."""
        m = self._db.mark
        going, more = self._old_unused_builds(conn, in_use, after)
        for name, version in going:
            cur = conn.execute(
                f"DELETE FROM flows WHERE name = {m} AND version = {m} AND created_at < {m}",
                (name, version, self._ended_before),
            )
            if cur.rowcount > 0:
                self.builds_deleted.append((name, version))
                self._counts.builds += 1
                conn.execute(  # (its deploy: entries about an object go with it)
                    f"DELETE FROM audit WHERE object_kind = 'flow' AND object_id = {m}",
                    (f"{name}:{version}",),
                )
        return more

    #: A webhook delivery given up (after its tries) and made before the cut-off.
    _GIVEN_UP = "next_at IS NULL AND created_at < {m}"

    def _delete_given_up(self, conn: Any, dry_run: bool = False) -> bool:
        """One batch of webhook deliveries given up before the cut-off (kept to be
        counted as failed in ``headwater webhooks list``; a receiver gone for good left
        a row per state change for ever). A dry run counts them all."""
        m = self._db.mark
        given_up = self._GIVEN_UP.format(m=m)
        if dry_run:
            row = conn.execute(
                f"SELECT count(*) FROM webhook_outbox WHERE {given_up}", (self._ended_before,)
            ).fetchone()
            self._counts.deliveries = int(row[0]) if row is not None else 0
            return False
        found, deleted = self._delete_batch(
            conn, "webhook_outbox", "id", given_up, self._ended_before
        )
        self._counts.deliveries += deleted
        return found == ROW_BATCH

    def _delete_cache_entries(self, conn: Any) -> bool:
        where = f"expires_at IS NOT NULL AND expires_at <= {self._db.mark}"
        found, deleted = self._delete_batch(conn, "cache_entries", "key", where, self._now)
        self._counts.cache_entries += deleted
        return found == ROW_BATCH

    def _delete_batch(
        self, conn: Any, table: str, key: str, where: str, *params: Any
    ) -> tuple[int, int]:
        """The keys of at most ROW_BATCH rows of ``table`` matching ``where``, then
        those rows deleted, ``where`` checked again (others may write meanwhile): how
        many were found, how many deleted."""
        found = [
            k
            for (k,) in conn.execute(
                f"SELECT {key} FROM {table} WHERE {where} LIMIT {ROW_BATCH}", params
            ).fetchall()
        ]
        deleted = self._delete(
            conn, f"DELETE FROM {table} WHERE {key} IN ({{within}}) AND {where}", found, *params
        )
        return len(found), deleted

    def _delete_values(self, conn: Any, last: list[str]) -> bool:
        """One batch of values nothing references, after ``last[0]`` in key order (the
        delete checks again, for databases where others write meanwhile)."""
        m = self._db.mark
        found = [
            str(v)
            for (v,) in conn.execute(
                f"SELECT v.id FROM run_values v WHERE v.id > {m} AND {ORPHAN_VALUE} "
                f"ORDER BY v.id LIMIT {ROW_BATCH}",
                (last[0],),
            ).fetchall()
        ]
        if not found:
            return False
        last[0] = found[-1]
        gone = self._rows(
            conn,
            f"DELETE FROM run_values AS v WHERE v.id IN ({{within}}) AND {ORPHAN_VALUE} "
            "RETURNING id, size",
            found,
        )
        c = self._counts
        c.values += len(gone)
        c.value_bytes += sum(int(size) for _, size in gone)
        self._released.update(
            str(p)
            for (p,) in self._rows(
                conn,
                "DELETE FROM payload_refs WHERE owner IN ({within}) RETURNING payload_id",
                [f"value:{v}" for v, _ in gone],
            )
        )
        return len(found) == ROW_BATCH

    def _unreferenced(self) -> str:
        """The payloads a prune deletes (``p``): nothing references them, older than the
        grace, and not in a payload directory the store cannot delete from."""
        where = f"p.created_at < {self._db.mark} AND {UNREFERENCED_PAYLOAD}"
        return where if self._db.blobs is not None else f"{where} AND NOT {PAYLOAD_IN_A_DIRECTORY}"

    def _delete_payloads(self, conn: Any, last: list[str]) -> tuple[bool, list[str]]:
        """One batch of payloads (at most PAYLOAD_BATCH, closing after
        PAYLOAD_BATCH_BYTES): whether more may remain, and the ids deleted."""
        m = self._db.mark
        found = conn.execute(
            f"SELECT p.id, p.size FROM payloads p WHERE p.id > {m} AND {self._unreferenced()} "
            f"ORDER BY p.id LIMIT {PAYLOAD_BATCH}",
            (last[0], self._now - self._grace),
        ).fetchall()
        taken: list[str] = []
        size = 0
        for payload, nbytes in found:
            taken.append(str(payload))
            size += int(nbytes)
            if size >= PAYLOAD_BATCH_BYTES:
                break
        if not taken:
            return False, []
        last[0] = taken[-1]
        gone = self._rows(
            conn,
            f"DELETE FROM payloads AS p WHERE p.id IN ({{within}}) AND {self._unreferenced()} "
            "RETURNING id, size",
            taken,
            self._now - self._grace,
        )
        ids = [str(i) for i, _ in gone]
        self._delete(conn, "DELETE FROM payload_chunks WHERE id IN ({within})", ids)
        c = self._counts
        c.payloads += len(ids)
        c.payload_bytes += sum(int(nbytes) for _, nbytes in gone)
        return len(found) == PAYLOAD_BATCH or len(taken) < len(found), ids

    def _delete_released(self, conn: Any, *, ids: list[str]) -> list[str]:
        """Of payloads this prune's deletes left unreferenced, those still so (others
        may write meanwhile), whatever their age: the ids deleted."""
        where = UNREFERENCED_PAYLOAD
        if self._db.blobs is None:
            where = f"{where} AND NOT {PAYLOAD_IN_A_DIRECTORY}"
        gone = self._rows(
            conn,
            f"DELETE FROM payloads AS p WHERE p.id IN ({{within}}) AND {where} RETURNING id, size",
            ids,
        )
        deleted = [str(i) for i, _ in gone]
        self._delete(conn, "DELETE FROM payload_chunks WHERE id IN ({within})", deleted)
        c = self._counts
        c.payloads += len(deleted)
        c.payload_bytes += sum(int(nbytes) for _, nbytes in gone)
        return deleted

    def _kept_payloads(self, conn: Any) -> int:
        """Payloads nothing references whose bytes are in a payload directory this
        store was not given (deleting the rows would leave the files for ever)."""
        if self._db.blobs is not None:
            return 0
        row = conn.execute(
            f"SELECT count(*) FROM payloads p WHERE p.created_at < {self._db.mark} AND "
            f"{UNREFERENCED_PAYLOAD} AND {PAYLOAD_IN_A_DIRECTORY}",
            (self._now - self._grace,),
        ).fetchone()
        return int(row[0]) if row is not None else 0

    def _waiting_payloads(self, conn: Any) -> tuple[int, int]:
        """Payloads nothing references that are younger than the grace: how many,
        and their bytes."""
        row = conn.execute(
            f"SELECT count(*), coalesce(sum(p.size), 0) FROM payloads p "
            f"WHERE p.created_at >= {self._db.mark} AND {UNREFERENCED_PAYLOAD}",
            (self._now - self._grace,),
        ).fetchone()
        return (0, 0) if row is None else (int(row[0]), int(row[1]))

    # ------------------------------------------------------------------ counting

    def _dry(self) -> Iterator[bool]:
        """The dry run: the counts, by reads only (one step per batch of runs)."""
        db = self._db
        dying: set[str] = set()
        if self._ended_before is not None:
            for batch in db.read(lambda conn: self._batches(conn, self._finished(conn))):
                db.read(functools.partial(self._count_runs, batch=batch))
                dying.update(batch)
                yield True
        if self.workers_before is not None:
            self._counts.workers = db.read(functools.partial(self._forget_workers, dry_run=True))
        if self._ended_before is not None:
            in_use = db.read(lambda conn: self._builds_in_use(conn, dying))
            after = [("", "")]
            more = in_use is not None
            while in_use is not None and more:
                going, more = db.read(lambda conn: self._old_unused_builds(conn, in_use, after))
                self._counts.builds += len(going)
            db.read(functools.partial(self._delete_given_up, dry_run=True))
        values = db.read(lambda conn: self._count_values(conn, dying))
        yield True
        db.read(lambda conn: self._count_payloads(conn, dying, values))

    def _count_runs(self, conn: Any, batch: list[str]) -> None:
        c = self._counts
        c.runs += len(batch)
        for table, key in RUN_TABLES:
            if key:
                found = self._rows(
                    conn, f"SELECT count(*) FROM {table} WHERE flow_run_id IN ({{within}})", batch
                )
                setattr(c, key, getattr(c, key) + sum(int(n) for (n,) in found))

    def _count_values(self, conn: Any, dying: set[str]) -> set[str]:
        """Count the expired cache entries and the values that would go; those values."""
        m = self._db.mark
        c = self._counts
        expired = conn.execute(
            f"SELECT value_id FROM cache_entries WHERE expires_at IS NOT NULL "
            f"AND expires_at <= {m}",
            (self._now,),
        ).fetchall()
        c.cache_entries = len(expired)
        candidates = {str(v) for (v,) in expired}
        candidates.update(
            str(v)
            for (v,) in self._rows(
                conn,
                "SELECT DISTINCT value_id FROM run_events WHERE flow_run_id IN ({within}) "
                "AND value_id != ''",
                sorted(dying),
            )
        )
        candidates.update(
            str(v) for (v,) in conn.execute(f"SELECT v.id FROM run_values v WHERE {ORPHAN_VALUE}")
        )
        ids = sorted(candidates)
        held = {
            str(v)
            for v, run in self._rows(
                conn,
                "SELECT DISTINCT value_id, flow_run_id FROM run_events WHERE value_id IN "
                "({within})",
                ids,
            )
            if run not in dying
        }
        held.update(
            str(v)
            for (v,) in self._rows(
                conn,
                f"SELECT value_id FROM cache_entries WHERE value_id IN ({{within}}) AND "
                f"(expires_at IS NULL OR expires_at > {m})",
                ids,
                self._now,
            )
        )
        going = [v for v in ids if v not in held]
        sizes = self._rows(conn, "SELECT id, size FROM run_values WHERE id IN ({within})", going)
        c.values = len(sizes)
        return {str(v) for v, _ in sizes}

    def _count_payloads(self, conn: Any, dying: set[str], values: set[str]) -> None:
        c = self._counts
        owners = [f"run:{r}" for r in sorted(dying)] + [f"value:{v}" for v in sorted(values)]
        going_owners = set(owners)
        candidates = {
            str(p)
            for (p,) in self._rows(
                conn, "SELECT payload_id FROM payload_refs WHERE owner IN ({within})", owners
            )
        }
        candidates.update(
            str(p)
            for (p,) in conn.execute(f"SELECT p.id FROM payloads p WHERE {UNREFERENCED_PAYLOAD}")
        )
        ids = sorted(candidates)
        held = {
            str(p)
            for p, owner in self._rows(
                conn,
                "SELECT payload_id, owner FROM payload_refs WHERE payload_id IN ({within})",
                ids,
            )
            if owner not in going_owners
        }
        rows = self._rows(
            conn,
            f"SELECT p.id, p.size, {PAYLOAD_IN_A_DIRECTORY}, p.created_at FROM payloads p "
            f"WHERE p.id IN ({{within}})",
            [p for p in ids if p not in held],
        )
        released = {
            str(p)
            for (p,) in self._rows(
                conn, "SELECT payload_id FROM payload_refs WHERE owner IN ({within})", owners
            )
        }
        for payload, size, in_directory, created_at in rows:
            if created_at >= self._now - self._grace and str(payload) not in released:
                c.payloads_waiting += 1
                c.payload_bytes_waiting += int(size)
            elif in_directory and not self._db.blobs is not None:
                c.payloads_kept += 1
            else:
                c.payloads += 1
                c.payload_bytes += int(size)
