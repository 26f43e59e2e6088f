"""A prune in short transactions (store/_prune.py), the same tests on SQLite and
PostgreSQL: a dry run counts exactly what the prune then deletes and writes nothing;
the prune goes in batches of whole families, each checking its runs again, and others
write between its steps; a server's retention runs each step as a write of its own."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from headwater.wire import FlowRunState
from headwater_runtime.store import (
    CacheRow,
    FlowRunRow,
    LogRow,
    NotFound,
    RunEvent,
    ScheduleRow,
    SQLiteStore,
    Store,
    TaskRunRow,
    WorkerRow,
    WriteBatch,
    _prune,
    open_store,
)

RUNNING = FlowRunState.RUNNING.value
SUCCESS = FlowRunState.SUCCESS.value
FAILED = FlowRunState.FAILED.value
NOW = 100_000.0
OLD = 1_000.0  # when the old runs ended
CUTOFF = 50_000.0  # prune runs that ended before this


@pytest.fixture
def store(db: str) -> Iterator[Any]:
    s = open_store(db, clock=lambda: 10.0)  # when payloads are uploaded
    yield s
    s.close()


def value(text: str, payloads: tuple[str, ...] = ()) -> Any:
    from headwater_runtime.store import ValueRow

    data = text.encode()
    return ValueRow(hashlib.sha256(data).hexdigest(), data, payloads)


def payload(store: Store, text: str) -> str:
    return store.put_payload(iter([text.encode()]), {"encoding": "json"}, len(text)).id


def add_run(
    store: Store,
    run_id: str,
    *,
    state: int = SUCCESS,
    ended: float | None = OLD,
    parent: str = "",
    values: tuple[Any, ...] = (),
    tasks: int = 1,
) -> None:
    """A run with a journal entry per value, ``tasks`` task runs and a log record."""
    store.create_flow_run(FlowRunRow(run_id, "etl", "1", RUNNING, 1.0, parent_flow_run_id=parent))
    batch = WriteBatch()
    batch.flow_runs[run_id] = FlowRunRow(
        run_id, "etl", "1", state, 1.0, ended_at=ended, parent_flow_run_id=parent
    )
    for seq, v in enumerate(values):
        batch.values[v.id] = v
        batch.events.append(RunEvent(run_id, seq, 1.0, "TaskSucceeded", b"", v.id))
    for i in range(tasks):
        batch.task_runs[(run_id, f"t{i}")] = TaskRunRow(run_id, f"t{i}", "t", -1, SUCCESS, 1, 1.0)
    batch.logs.append(LogRow(run_id, "t0", 1, 1.0, "INFO", "etl", "hello"))
    store.commit(batch)


def populate(store: Store) -> dict[str, str]:
    """Old runs, kept runs, shared values, cache entries and payloads in every case a
    prune tells apart. The names of what must survive."""
    shared = value("shared")  # an old run's value that a kept run also references
    cached = value("cached")  # an old run's value an unexpired cache entry holds
    old_only_payload = payload(store, "old-only")
    with_payload = value("with-payload", (old_only_payload,))  # goes: so does its payload
    for i in range(6):
        add_run(store, f"old{i}", values=(value(f"old{i}"), shared, cached, with_payload))
    add_run(store, "old.child", parent="old0", values=(value("child"),))
    add_run(store, "recent", ended=NOW - 10, values=(shared,))
    add_run(store, "running", state=RUNNING, ended=None, values=(value("running"),))
    expired, unexpired = value("expired-cache"), value("unexpired-cache")
    batch = WriteBatch()
    batch.values.update({v.id: v for v in (expired, unexpired, cached)})
    batch.cache += [
        CacheRow("k-expired", expired.id, NOW - 1),
        CacheRow("k-unexpired", unexpired.id, NOW + 3600),
        CacheRow("k-cached", cached.id, None),
    ]
    store.commit(batch)
    scheduled = payload(store, "scheduled")
    store.put_schedule(ScheduleRow("s1", "etl", b"", None, True, (scheduled,)))
    payload(store, "unreferenced")
    return {
        "shared": shared.id,
        "cached": cached.id,
        "unexpired": unexpired.id,
        "scheduled": scheduled,
        "old_only_payload": old_only_payload,
    }


def report_counts(report: Any) -> dict[str, int]:
    fields = ("runs", "journal_entries", "task_runs", "logs", "values", "payloads")
    more = (
        "payload_bytes",
        "cache_entries",
        "payloads_kept",
        "payloads_waiting",
        "payload_bytes_waiting",
    )
    return {name: getattr(report, name) for name in (*fields, *more)}


def test_a_dry_run_counts_exactly_what_the_prune_then_deletes(store: Store) -> None:
    kept = populate(store)
    before = store.stats()  # type: ignore[attr-defined]
    dry = store.prune(CUTOFF, NOW, grace=0, dry_run=True)
    assert dry.dry_run and dry.bytes_reclaimed == 0
    assert store.stats() == before  # type: ignore[attr-defined]
    real = store.prune(CUTOFF, NOW, grace=0)
    assert report_counts(dry) == report_counts(real)
    # 6 old runs and the child; values: old0..5, child, with-payload, expired-cache;
    # payloads: the one only an old value held, and the unreferenced upload.
    assert (real.runs, real.values, real.payloads, real.cache_entries) == (7, 9, 2, 1)
    assert real.journal_entries == 6 * 4 + 1 and real.task_runs == 7 and real.logs == 7
    for run_id in ("recent", "running"):
        assert store.get_flow_run(run_id).id == run_id
    assert store.get_cache("k-unexpired") is not None and store.get_cache("k-cached") is not None
    assert store.get_cache("k-expired") is None
    assert store.payload_meta(kept["scheduled"]).size == len("scheduled")
    with pytest.raises(NotFound):
        store.payload_meta(kept["old_only_payload"])
    again = store.prune(CUTOFF, NOW, grace=0, dry_run=True)
    assert report_counts(again) == report_counts(store.prune(CUTOFF, NOW, grace=0))
    assert again.runs == again.values == again.payloads == 0


def test_payloads_younger_than_the_grace_are_counted_as_waiting(store: Store) -> None:
    """Unreferenced payloads inside the grace are kept, and the report says how many
    and how large (a trial: `0 payload(s)` gave no hint of 411 MB waiting a day). A
    payload that only what the prune deleted referenced goes whatever its age: it was
    referenced, so its upload had finished (a trial: with --retention 30s a server kept
    a day of the pruned runs' results, 14 GB in 12 minutes)."""
    populate(store)
    dry = store.prune(CUTOFF, NOW, grace=NOW, dry_run=True)  # every upload is younger
    real = store.prune(CUTOFF, NOW, grace=NOW)
    assert report_counts(dry) == report_counts(real)
    assert real.runs == 7
    # the payload only an old run's value held goes; the upload nothing ever held waits
    assert (real.payloads, real.payload_bytes) == (1, len("old-only"))
    assert (real.payloads_waiting, real.payload_bytes_waiting) == (1, 12)
    again = store.prune(CUTOFF, NOW, grace=0, dry_run=True)
    assert (again.payloads, again.payloads_waiting) == (1, 0)


def test_headwater_prune_says_what_waits_out_the_grace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from headwater._cli import main

    path = tmp_path / "hw.db"
    store = SQLiteStore(path)
    store.put_payload(iter([b"z" * 1000]), {"encoding": "json"}, 1000)
    store.close()
    for dry, verb in ((["--dry-run"], "would keep"), ([], "kept")):
        assert main(["prune", "--db", str(path), *dry]) == 0
        out = capsys.readouterr().out
        assert f"{verb} 1 unreferenced payload(s) (1000 bytes) younger than " in out, out
        assert "--payload-grace 1d" in out and "0 payload(s)" in out, out


def test_a_dry_run_takes_no_write_lock(tmp_path: Path) -> None:
    """A dry run used to delete and roll back: it needed free space and held the
    database's write lock (a server's commits waited) as long as a real prune."""
    path = tmp_path / "hw.db"
    store = SQLiteStore(path, clock=lambda: 10.0)
    populate(store)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock throughout
    try:
        store._db.execute("PRAGMA busy_timeout=0")
        dry = store.prune(CUTOFF, NOW, grace=0, dry_run=True)
        assert dry.runs == 7
        with pytest.raises(Exception, match="locked"):
            store.prune(CUTOFF, NOW, grace=0)  # the real one needs the lock
    finally:
        other.execute("ROLLBACK")
        other.close()
        store.close()


def test_each_step_is_a_transaction_of_its_own_and_others_write_between(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_prune, "RUN_BATCH", 2)
    for i in range(6):
        add_run(store, f"old{i}", values=(value(f"v{i}"),))
    pruning = store.pruning(CUTOFF, NOW, grace=0)
    left = []
    while pruning.step():
        left.append(len(store.list_flow_runs(limit=100)))
        add_run(store, f"new{len(left)}", ended=None, state=RUNNING)  # a commit between
    # Three batches of two runs, each committed on its own, the new runs untouched.
    assert left[:3] == [4 + 0, 2 + 1, 0 + 2]
    report = pruning.report()
    assert report.runs == 6 and report.values == 6
    assert {r.id for r in store.list_flow_runs(limit=100)} == {
        f"new{n}" for n in range(1, len(left) + 1)
    }


def test_a_family_goes_in_one_batch(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_prune, "RUN_BATCH", 1)
    add_run(store, "parent")
    add_run(store, "parent.a", parent="parent")
    add_run(store, "parent.a.x", parent="parent.a")
    add_run(store, "alone")
    pruning = store.pruning(CUTOFF, NOW, grace=0)
    seen = []
    while pruning.step():
        seen.append({r.id for r in store.list_flow_runs(limit=100)})
    assert {"parent", "alone"} - seen[0] in ({"parent"}, {"alone"})
    family = {"parent", "parent.a", "parent.a.x"}
    assert family <= seen[0] or not family & seen[0]  # all of it or none of it
    assert seen[1] == set() and pruning.report().runs == 4


def test_a_run_retried_after_the_plan_is_kept(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch checks its runs again in its own transaction: a run that was retried
    (running again) since the prune listed it stays, with its journal."""
    monkeypatch.setattr(_prune, "RUN_BATCH", 1)
    add_run(store, "a", values=(value("a"),))
    add_run(store, "b", values=(value("b"),))
    pruning = store.pruning(CUTOFF, NOW, grace=0)
    assert pruning.step()  # the plan (both runs), and the first batch
    (left,) = [r.id for r in store.list_flow_runs(limit=10)]
    batch = WriteBatch()
    batch.flow_runs[left] = FlowRunRow(left, "etl", "1", RUNNING, 1.0)  # a retry
    store.commit(batch)
    while pruning.step():
        pass
    assert pruning.report().runs == 1
    assert store.get_flow_run(left).state == RUNNING
    assert len(store.events(left)) == 1


def test_a_run_claimed_for_a_retry_is_no_longer_old_to_a_prune(store: Store) -> None:
    """A retry claims its run before anything of it is stored (``claim_for_retry``): a
    prune beside the server, which does not know of the retry, keeps the run; a claim
    on a run a prune deleted, or that changed since it was read, is NotFound."""
    add_run(store, "retried", state=FAILED)
    add_run(store, "other", state=FAILED)
    store.claim_for_retry("retried", FAILED, NOW)
    assert store.get_flow_run("retried").ended_at == NOW
    report = store.prune(CUTOFF, NOW, grace=0)
    assert report.runs == 1 and store.get_flow_run("retried").state == FAILED
    with pytest.raises(NotFound, match="a prune deleted it, or it changed meanwhile"):
        store.claim_for_retry("other", FAILED, NOW)  # the prune deleted it
    with pytest.raises(NotFound, match="no longer stored as it was read to be retried"):
        store.claim_for_retry("retried", SUCCESS, NOW)  # not in the state read


def test_a_large_run_goes_alone_and_small_ones_together(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_prune, "TASK_RUN_BATCH", 10)
    add_run(store, "big", tasks=25)
    for i in range(4):
        add_run(store, f"small{i}", tasks=2)
    pruning = store.pruning(CUTOFF, NOW, grace=0)
    sizes = []
    before = 5
    while pruning.step():
        now = len(store.list_flow_runs(limit=100))
        sizes.append(before - now)
        before = now
    assert sorted(s for s in sizes if s) == [1, 4]


def test_a_servers_prune_runs_each_step_as_a_write_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention on a server: the steps go to the writer thread one by one, so the
    commits of runs go between them (one transaction held every commit as long as it
    deleted); a dry run, and the scan of the runs for the builds they use, leave the
    writer thread alone."""
    from test_durability import served

    monkeypatch.setattr(_prune, "RUN_BATCH", 1)
    store = SQLiteStore(tmp_path / "hw.db")
    for i in range(4):
        add_run(store, f"old{i}")
    order: list[str] = []
    real_step = _prune.Pruning.step

    def step(self: _prune.Pruning) -> bool:
        more = real_step(self)
        order.append(f"{'dry' if self.dry_run else 'prune'} on {threading.current_thread().name}")
        return more

    monkeypatch.setattr(_prune.Pruning, "step", step)

    async def scenario() -> tuple[Any, Any]:
        async with served(store) as running:
            core = running.core

            async def commits() -> None:
                for n in range(4):
                    await core.io.write(order.append, f"commit{n}")
                    await asyncio.sleep(0)

            dry = await core.prune(0.5, dry_run=True, grace=0)
            real, _ = await asyncio.gather(core.prune(0.5, grace=0), commits())
            return dry, real

    try:
        dry, real = asyncio.run(scenario())
    finally:
        store.close()
    assert dry.runs == real.runs == 4
    dry_steps = [o for o in order if o.startswith("dry")]
    assert dry_steps and all("reader" in o for o in dry_steps), order
    steps = [i for i, o in enumerate(order) if o.startswith("prune")]
    # Every step on the writer thread but the one that only reads (the scan of the
    # runs for the builds they use, Pruning.reads_next), on a reader thread.
    on_readers = [i for i in steps if "reader" in order[i]]
    assert len(on_readers) == 1, order
    assert len(steps) >= 5 and all("writer" in order[i] for i in steps if i not in on_readers)
    assert any(o.startswith("commit") for o in order[steps[0] : steps[-1]]), order


def test_a_servers_prune_forgets_the_workers_gone_since_its_cut_off_not_connected_ones(
    tmp_path: Path,
) -> None:
    """Retention on a server forgets the workers last heard from before its cut-off,
    also from the list it keeps in memory (ListWorkers, the web UI); a worker connected
    now stays listed, however old its stored record (it is stored again at the next
    flush)."""
    from test_durability import one_slot_worker

    store = SQLiteStore(tmp_path / "hw.db")
    hour_ago = time.time() - 3600  # (not yet forgotten by forget_workers_after's 7 days)
    store.put_worker(
        WorkerRow("host-101", "id-101", ("etl.x",), {}, 2, "0.1.0", "python", "h", 1.0, hour_ago)
    )

    async def scenario() -> tuple[list[str], int, list[str]]:
        async with one_slot_worker(store) as (running, _, worker):
            workers = running.core.ops.workers
            before = sorted(i.name for i in workers.infos())
            # A cut-off a minute from now: the connected worker's record is as old.
            report = await running.core.prune(-60.0, grace=0)
            after = sorted(i.name for i in workers.infos())
            await worker.close()
            return before, report.workers, after

    try:
        before, forgotten, after = asyncio.run(scenario())
    finally:
        store.close()
    assert before == ["host-101", "w"]
    assert forgotten >= 1  # (and "w" too if its record was flushed already)
    assert after == ["w"]


@pytest.mark.parametrize("forget", [None, 0.0])
def test_a_server_forgets_workers_gone_longer_than_forget_workers_after(
    tmp_path: Path, forget: float | None
) -> None:
    """Workers are recorded by name and the default name host-pid is new at every
    start: without run retention, ListWorkers and the web UI listed every worker ever
    started. A server forgets a worker 7 days after its last message by default (its
    first automatic prune, at start), from the store and from what it lists; 0 keeps
    every record."""
    from test_durability import one_slot_worker

    store = SQLiteStore(tmp_path / "hw.db")
    day = 86400.0
    for name, days in (("host-8d", 8), ("host-6d", 6)):
        seen = time.time() - days * day
        store.put_worker(WorkerRow(name, f"id-{name}", ("etl.x",), {}, 2, "0.1.0", "python",
                                   "h", seen - 60, seen))  # fmt: skip
    settings = {} if forget is None else {"forget_workers_after": forget}

    async def scenario() -> tuple[list[str], list[str], int]:
        async with one_slot_worker(store, **settings) as (running, _, worker):
            core = running.core
            for _ in range(200):  # the automatic prune at start
                if core.last_prune is not None:
                    break
                await asyncio.sleep(0.05)
            assert core.last_prune is not None, "no automatic prune within 10 s"
            listed = sorted(i.name for i in core.ops.workers.infos())
            stored = await core.io.read(store.list_workers)
            await worker.close()
            return listed, sorted(w.name for w in stored), core.last_prune.workers

    try:
        listed, stored, forgotten = asyncio.run(scenario())
    finally:
        store.close()
    if forget is None:  # the default: 7 days
        assert (listed, forgotten) == (["host-6d", "w"], 1)
        assert "host-6d" in stored and "host-8d" not in stored  # ("w": at its flush)
    else:
        assert listed == ["host-6d", "host-8d", "w"] and forgotten == 0
        assert set(stored) >= {"host-6d", "host-8d"}


def test_a_prune_beside_a_server_pauses_between_steps(tmp_path: Path) -> None:
    """``headwater prune`` beside a server leaves the lock free between its steps for
    long enough that the server's waiting commits get in (SQLite's busy handler sleeps
    longer the longer a writer waits: taking the lock again at once starved them for
    over a second); alone, or inside the server, it does not pause."""
    from headwater_runtime.store._sqlite import BUSY_RETRY, PAUSE_MIN

    path = tmp_path / "hw.db"
    alone = SQLiteStore(path)
    assert alone.pruning(None, NOW, grace=0)._db.pause(0.001) == 0.0  # type: ignore[attr-defined]
    server = SQLiteStore(path)
    server.claim("a test server")
    try:
        beside = alone.pruning(None, NOW, grace=0)._db  # type: ignore[attr-defined]
        assert beside.pause(0.001) == PAUSE_MIN and beside.pause(0.05) == 0.05
        assert beside.pause(3.0) == BUSY_RETRY
        assert server.pruning(None, NOW, grace=0)._db.pause(0.001) == 0.0  # type: ignore[attr-defined]
    finally:
        server.close()
        alone.close()


def test_giving_space_back_stops_without_losing_the_prune(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A full disk (or a busy lock) while the space goes back ended `headwater prune`
    with a traceback, after its deletions were committed (a user trial). Now it says
    so in one line and exits 0; and one prune gives back for at most
    GIVE_BACK_BUDGET seconds (a long, scattered free list took 1 s per 2 MB): the
    next prune carries on."""
    from headwater._cli import main
    from headwater_runtime.store import _sqlite

    path = tmp_path / "hw.db"
    store = SQLiteStore(path, clock=lambda: 10.0)
    for i in range(3):
        add_run(store, f"old{i}", values=(value(f"v{i}", (payload(store, "p" * 300_000),)),))
    store.close()

    def full(self: Any, pages: int) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    with monkeypatch.context() as patch:
        patch.setattr(_sqlite._SQLitePruning, "_incremental_vacuum", full)
        store = SQLiteStore(path)
        pruning = store.pruning(CUTOFF, NOW, grace=0)
        while True:
            try:
                if not pruning.step():
                    break
            except sqlite3.OperationalError:
                pytest.fail("giving space back raised")
        report = pruning.report()
        store.close()
    assert report.runs == 3 and report.payloads == 3
    assert report.give_back_stopped == "database or disk is full"
    monkeypatch.setattr(_sqlite, "GIVE_BACK_BUDGET", 0.0)
    monkeypatch.setattr(_sqlite, "GIVE_BACK_PAGES", 16)
    assert main(["prune", "--db", str(path)]) == 0
    out = capsys.readouterr().out
    assert "stopped giving space back to the file system (gave space back for 0s" in out, out
    monkeypatch.setattr(_sqlite, "GIVE_BACK_BUDGET", 30.0)
    store = SQLiteStore(path)
    assert store.prune(None, NOW, grace=0).give_back_stopped == ""
    assert store.stats()["freelist_count"] == 0
    store.close()
