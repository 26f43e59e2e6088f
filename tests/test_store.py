"""The stores (SQLite and PostgreSQL, the same tests on both): flows, idempotent runs,
batched commits, payload chunks (in the database or a directory), cache, schedules."""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from headwater.wire import CHUNK_SIZE, FlowRunState
from headwater_runtime.store import (
    AuditRow,
    CacheRow,
    Conflict,
    Delivery,
    FlowRunRow,
    LogRow,
    NotFound,
    RunEvent,
    ScheduleRow,
    SQLiteStore,
    StateRow,
    Store,
    StoreUnavailable,
    TaskRunRow,
    WriteBatch,
    open_store,
)
from headwater_runtime.store._sqlite import WAL_CHECKPOINT, WAL_KEPT, WAL_LAGGING, logged_bytes


@pytest.fixture
def store(db: str) -> Iterator[Any]:
    s = open_store(db)
    yield s
    s.close()


def count(store: Any, table: str) -> int:
    """Rows in one of a store's tables (either kind of store)."""
    if isinstance(store, SQLiteStore):
        return int(store._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    return int(store.stats()[table])


def test_text_with_nul_characters_is_looked_up_and_stored_on_either_store(store: Any) -> None:
    """PostgreSQL text cannot hold NUL: a lookup by such a name (a client's GetFlow with
    version "\\x00", found by fuzzing the server on PostgreSQL) failed as "cannot read
    from the database ... try again later" (UNAVAILABLE), and so did storing an audit
    entry whose detail (a cancel's reason) held one. Now a lookup finds nothing, as on
    SQLite, and the text is stored with U+FFFD in place of NUL, as commits store it."""
    with pytest.raises(NotFound):
        store.get_flow("flow\x00", "1")
    with pytest.raises(NotFound):
        store.get_flow_run("run\x00")
    assert store.list_flow_runs("flow\x00", [], 10, "") == []
    assert store.list_schedules("flow\x00") == []
    store.add_audit(AuditRow(1.0, "me", "cancel", "flow_run", "r1", "why\x00not"))
    (entry,) = store.audit_entries("flow_run", "r1")
    assert entry.detail in ("why\x00not", "why\ufffdnot")  # SQLite keeps it; PostgreSQL cannot


def test_database_is_in_wal_mode(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "a.db").close()
    db = sqlite3.connect(tmp_path / "a.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _fill(store: SQLiteStore, payloads: int) -> None:
    """Commit ``payloads`` MiB of distinct bytes (one transaction per chunk)."""
    for i in range(payloads):
        data = hashlib.sha256(str(i).encode()).digest() * (CHUNK_SIZE // 32)
        store.put_payload(iter([data]), {"encoding": "raw"}, len(data))


def _wal_pages(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return wal.stat().st_size // 4096 if wal.exists() else 0


def _logged(path: Path) -> int:
    """Bytes of log since the log last started over, as SQLite counts them: the log
    frames a PASSIVE checkpoint of another connection reports (it copies them too)."""
    db = sqlite3.connect(path)
    try:
        _, frames, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        db.close()
    return 32 + int(frames) * (4096 + 24) if frames else 0  # (the log's header: 32 bytes)


def test_a_claimed_database_is_checkpointed_between_writes_not_in_commits(
    tmp_path: Path,
) -> None:
    # Unclaimed (prune, the CLI): SQLite checkpoints inside the commit that passes
    # 1,000 pages, so 12 MiB of commits leave a log of about that size, and
    # checkpoint() has nothing to do.
    path = tmp_path / "a.db"
    plain = SQLiteStore(path)
    _fill(plain, 12)
    assert _wal_pages(path) < 2000
    plain.checkpoint()
    plain.close()
    # Claimed by a server: no commit checkpoints (every connection, also one opened
    # later on another thread), so the log holds all 12 MiB ...
    path = tmp_path / "b.db"
    store = SQLiteStore(path)
    store.claim("test")
    other: list[tuple[int, int]] = []

    def settings() -> tuple[int, int]:
        db = store._db
        pragma = (
            db.execute(f"PRAGMA {name}").fetchone()[0]
            for name in ("wal_autocheckpoint", "journal_size_limit")
        )
        return next(pragma), next(pragma)

    thread = threading.Thread(target=lambda: other.append(settings()))
    thread.start()
    thread.join()
    assert settings() == other[0] == (0, WAL_KEPT)
    _fill(store, 12)
    assert _wal_pages(path) >= 12 * 256
    # ... until checkpoint() copies it all back; the next writes start the log over,
    # and with a checkpoint() between writes it stays about WAL_CHECKPOINT bytes
    # however much is written.
    for _ in range(10):
        store.checkpoint()
        _fill(store, 2)
    assert _logged(path) <= WAL_CHECKPOINT + 3 * CHUNK_SIZE
    # A log under WAL_CHECKPOINT bytes since it started over is left as it is: a
    # server writing a little at a time does not pay a checkpoint per write.
    store.checkpoint()
    store._db.execute("INSERT INTO meta VALUES ('filler', 'x')")
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    store.checkpoint()
    assert statements == []
    store.close()


def test_a_checkpoint_beside_writes_asks_for_one_between_them_once_the_log_lags(
    tmp_path: Path,
) -> None:
    """The server checkpoints beside its writes (StoreIO's upkeep thread); a log that
    has not started over for so long that it passed WAL_LAGGING bytes (each checkpoint
    met new writes) asks for the next checkpoint between writes, which lets it start
    over: it stays bounded however the two threads meet."""
    path = tmp_path / "a.db"
    store = SQLiteStore(path)
    store.claim("test")
    _fill(store, 6)  # over WAL_CHECKPOINT, under WAL_LAGGING
    assert store.checkpoint(beside_writes=True) is False
    _fill(store, 1)  # (the log started over: under WAL_CHECKPOINT again)
    assert logged_bytes(path) == _logged(path) <= 2 * CHUNK_SIZE
    assert store.checkpoint(beside_writes=True) is False
    # A reader holding the log's first frames is what a write during each checkpoint
    # does too: the log cannot start over, and grows.
    reader = sqlite3.connect(path)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM payloads").fetchone()
    _fill(store, WAL_LAGGING // CHUNK_SIZE + 2)
    assert store.checkpoint(beside_writes=True) is True
    assert store.checkpoint(beside_writes=False) is False  # (between writes: not asked)
    reader.rollback()
    reader.close()
    store.checkpoint(beside_writes=False)  # all copied: the next write starts it over
    _fill(store, 1)
    assert logged_bytes(path) == _logged(path) <= 2 * CHUNK_SIZE
    assert store.checkpoint(beside_writes=True) is False
    store.close()


def test_the_log_is_written_over_in_its_file_and_cut_back_to_wal_kept(tmp_path: Path) -> None:
    """A log that starts over keeps its file (its blocks are written over rather than
    taken from the file system again), up to WAL_KEPT bytes; checkpoint() goes by what
    was logged since it started over (the wal-index), not by the file's size."""
    path = tmp_path / "a.db"
    store = SQLiteStore(path)
    store.claim("test")
    _fill(store, 12)
    assert logged_bytes(path) == _logged(path) >= 12 * CHUNK_SIZE
    store.checkpoint()
    _fill(store, 1)  # the log starts over, in the same file
    assert logged_bytes(path) == _logged(path) <= 2 * CHUNK_SIZE
    assert _wal_pages(path) * 4096 >= 12 * CHUNK_SIZE
    # A file that long with little logged since: nothing to copy, no statement.
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    assert store.checkpoint() is False
    assert statements == []
    store._db.set_trace_callback(None)
    # A log longer than WAL_KEPT: its file is cut back to WAL_KEPT when it starts over.
    _fill(store, WAL_KEPT // CHUNK_SIZE + 4)
    assert _wal_pages(path) * 4096 > WAL_KEPT + 2 * CHUNK_SIZE
    store.checkpoint()
    _fill(store, 1)
    assert _wal_pages(path) * 4096 <= WAL_KEPT
    store.close()


def test_logged_bytes_without_a_log(tmp_path: Path) -> None:
    assert logged_bytes(tmp_path / "none.db") is None
    (tmp_path / "odd.db-wal").write_bytes(b"\x00" * 64)  # not a log SQLite wrote
    assert logged_bytes(tmp_path / "odd.db") is None


# Another process: can it lock the whole -shm file (it cannot while SQLite's locks on
# it are held)?
_PROBE_LOCKS = """
import fcntl, sys
with open(sys.argv[1] + "-shm", "r+b") as shm:
    try:
        fcntl.lockf(shm, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        print("held")
    else:
        print("free")
"""
# Another process's read-only connection (as `headwater prune --dry-run` or a backup).
_READ_ONLY = """
import sqlite3, sys
db = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
db.execute("SELECT count(*) FROM payloads").fetchone()
db.close()
"""


def test_checkpoints_leave_sqlites_locks_alone(tmp_path: Path) -> None:
    """SQLite holds POSIX locks on a WAL database's files; closing any descriptor of a
    locked file drops all of a process's locks on it. A server that read the ``-shm``
    file to size its log lost them, and another process's connection then took that
    file over as its first user: the server died of SIGBUS. In a child process (so a
    failure cannot take the test run with it)."""
    script = f"""
import subprocess, sys
from headwater.wire import CHUNK_SIZE
from headwater_runtime.store import SQLiteStore
path = {str(tmp_path / "a.db")!r}
store = SQLiteStore(path)
store.claim("test")
for round in range(3):
    for i in range(20):
        data = bytes([round, i]) * (CHUNK_SIZE // 2)
        store.put_payload(iter([data]), {{"encoding": "raw"}}, len(data))
        if i % 5 == 4:
            store.checkpoint(beside_writes=True)
    probe = subprocess.run(
        [sys.executable, "-c", {_PROBE_LOCKS!r}, path], capture_output=True, text=True, timeout=60
    )
    assert probe.stdout.strip() == "held", (round, probe.stdout, probe.stderr)
    subprocess.run([sys.executable, "-c", {_READ_ONLY!r}, path], check=True, timeout=60)
assert store.stats()["payloads"] == 60, store.stats()
store.close()
print("ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr[-2000:]


def test_flow_versions_are_numbered_and_identical_graphs_deduplicated(store: Store) -> None:
    v1, created = store.put_flow("etl", "d1", b"g1", "", 1.0)
    assert (v1.version, created) == ("1", True)
    again, created = store.put_flow("etl", "d1", b"g1", "", 2.0)
    assert (again.version, created) == ("1", False)
    v2, _ = store.put_flow("etl", "d2", b"g2", "", 3.0)
    assert v2.version == "2"
    assert store.get_flow("etl").graph == b"g2"
    assert store.get_flow("etl", "1").graph == b"g1"
    assert store.list_flows() == [("etl", ["1", "2"])]
    with pytest.raises(Conflict, match="already registered"):
        store.put_flow("etl", "d3", b"g3", "1", 4.0)
    with pytest.raises(NotFound, match="'nope' is not registered"):
        store.get_flow("nope")


def test_idempotency_key_returns_the_first_run(store: Store) -> None:
    row = FlowRunRow("r1", "etl", "1", 1, 10.0, idempotency_key="k")
    first, created = store.create_flow_run(row)
    assert created and first.id == "r1"
    second, created = store.create_flow_run(
        FlowRunRow("r2", "etl", "1", 1, 11.0, idempotency_key="k")
    )
    assert not created and second.id == "r1"
    with pytest.raises(NotFound):
        store.get_flow_run("r2")
    # Reused for another flow, or other parameters: refused, naming the run and why.
    with pytest.raises(Conflict) as other_flow:
        store.create_flow_run(FlowRunRow("r3", "load", "1", 1, 12.0, idempotency_key="k"))
    assert str(other_flow.value) == (
        "idempotency key 'k' was already used for flow run r1 of flow 'etl', not 'load'; "
        "use a new key"
    )
    with pytest.raises(Conflict) as other_values:
        store.create_flow_run(
            FlowRunRow("r4", "etl", "1", 1, 12.0, parameters=b"{}", idempotency_key="k")
        )
    assert "flow run r1 of flow 'etl' with other parameters; use a new key" in str(
        other_values.value
    )


def test_commit_writes_a_batch_atomically_and_survives_reopen(db: str) -> None:
    store = open_store(db)
    store.create_flow_run(FlowRunRow("r1", "etl", "1", 1, 10.0))
    batch = WriteBatch()
    batch.events.append(RunEvent("r1", 1, 10.5, "start", b""))
    batch.flow_runs["r1"] = FlowRunRow("r1", "etl", "1", 3, 10.0, started_at=10.5)
    batch.task_runs[("r1", "a")] = TaskRunRow("r1", "a", "a", -1, 3, 1, 10.6)
    batch.states.append(StateRow("r1", "a", 1, 3, 10.6, 1, "started"))
    batch.logs.append(LogRow("r1", "a", 1, 10.7, "INFO", "t", "hello"))
    batch.cache.append(CacheRow("key", "value", None))
    store.commit(batch)
    # A failing batch leaves nothing behind (duplicate event seq violates the key).
    bad = WriteBatch()
    bad.logs.append(LogRow("r1", "a", 1, 11.0, "INFO", "t", "must not persist"))
    bad.events.append(RunEvent("r1", 1, 11.0, "event", b"dup"))
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        store.commit(bad)
    store.close()

    reopened = open_store(db)
    assert reopened.get_flow_run("r1").state == 3
    assert [e.kind for e in reopened.events("r1")] == ["start"]
    assert reopened.task_runs("r1")[0].state == 3
    assert [s.message for s in reopened.task_run_history("r1", "a")] == ["started"]
    assert [g.message for g in reopened.logs("r1")] == ["hello"]
    assert reopened.get_cache("key") == CacheRow("key", "value", None)
    assert [r.id for r in reopened.unfinished_flow_runs()] == ["r1"]
    reopened.close()


@pytest.mark.parametrize("older_rows, newer_rows", [(1, 5), (5, 1), (3, 3)])
def test_a_batch_absorbing_a_later_one_keeps_order_and_the_later_rows(
    older_rows: int, newer_rows: int
) -> None:
    """Whichever batch is larger (absorb works in the larger one's containers), the
    result holds the earlier batch's rows first and a row both wrote as the later
    one wrote it."""

    def made(seqs: range, state: int) -> WriteBatch:
        b = WriteBatch()
        for seq in seqs:
            b.events.append(RunEvent("r", seq, 1.0, "e", b""))
            b.task_runs[("r", f"t{seq}")] = TaskRunRow("r", f"t{seq}", "t", -1, state, 1, 1.0)
        b.task_runs[("r", "shared")] = TaskRunRow("r", "shared", "t", -1, state, 1, 1.0)
        return b

    older = made(range(0, older_rows), 1)
    newer = made(range(older_rows, older_rows + newer_rows), 2)
    older.absorb(newer)
    assert [e.seq for e in older.events] == list(range(older_rows + newer_rows))
    assert len(older.task_runs) == older_rows + newer_rows + 1
    assert older.task_runs[("r", "shared")].state == 2
    assert older.task_runs[("r", "t0")].state == 1


def test_delivered_lists_the_attempts_delivered_to_workers_by_key(store: Store) -> None:
    store.create_flow_run(FlowRunRow("r1", "etl", "1", 1, 1.0))
    store.create_flow_run(FlowRunRow("r2", "etl", "1", 1, 1.0))
    b = WriteBatch()
    rows = (("r1", "a", 2, "h/w1"), ("r1", "b", 0, ""), ("r1", "c", 1, None), ("r2", "a", 3, "w2"))
    for run, key, delivered, holder in rows:
        b.task_runs[(run, key)] = TaskRunRow(
            run, key, key, -1, 3, 2, 1.0, f"name-{key}", delivered=delivered, holder=holder
        )
    store.commit(b)
    assert store.delivered("r1") == {
        "a": Delivery(2, "name-a", "h/w1"),
        "c": Delivery(1, "name-c", None),  # (stored by a version before holders)
    }
    assert store.delivered("r2") == {"a": Delivery(3, "name-a", "w2")}
    assert store.delivered("nope") == {}
    assert [r.holder for r in store.task_runs("r1")] == ["h/w1", "", None]


def test_task_runs_are_listed_in_the_order_first_stored_not_last_changed(
    store: Store,
) -> None:
    """A map's children stay in index order however their rows change later (SQLite's
    INSERT OR REPLACE gave a changed row a new rowid: `runs show` listed load[2] before
    load[0] once load[0] had ended last)."""
    store.create_flow_run(FlowRunRow("r1", "etl", "1", 1, 1.0))
    keys = ["load", *(f"load[{i}]" for i in range(4)), "total"]
    first = WriteBatch()
    for key in keys:
        index = int(key[5:-1]) if "[" in key else -1
        first.task_runs[("r1", key)] = TaskRunRow("r1", key, key.split("[")[0], index, 1, 1, 1.0)
    store.commit(first)
    for key, state in (("load[2]", 5), ("load[0]", 5), ("total", 3), ("load", 5)):
        later = WriteBatch()
        index = int(key[5:-1]) if "[" in key else -1
        later.task_runs[("r1", key)] = TaskRunRow(
            "r1", key, key.split("[")[0], index, state, 2, 2.0
        )
        store.commit(later)
    rows = store.task_runs("r1")
    assert [r.key for r in rows] == keys
    assert {r.key: (r.state, r.attempt) for r in rows}["load[0]"] == (5, 2)
    assert {r.key: r.state for r in rows}["load[1]"] == 1
    # One task's (its mapped children included), or one task run, in the same order.
    assert [r.key for r in store.task_runs("r1", task_id="load")] == keys[:-1]
    (one,) = store.task_runs("r1", key="load[2]")
    assert (one.key, one.state, one.attempt) == ("load[2]", 5, 2)
    assert store.task_runs("r1", task_id="total", key="load[2]") == []
    assert store.task_runs("r2", key="load[2]") == []
    # A page of them, in that order, and how many match without a page.
    paged = store.task_runs("r1", task_id="load", offset=1, limit=3)
    assert [r.key for r in paged] == ["load[0]", "load[1]", "load[2]"]
    assert [r.key for r in store.task_runs("r1", offset=4)] == ["load[3]", "total"]
    done = store.task_runs("r1", states={5})
    assert [r.key for r in done] == ["load", "load[0]", "load[2]"]
    assert [r.key for r in store.task_runs("r1", states={5, 3}, offset=2, limit=1)] == ["load[2]"]
    assert store.count_task_runs("r1") == 6
    assert store.count_task_runs("r1", task_id="load", states={1}) == 2
    assert store.count_task_runs("r1", key="total", states={3}) == 1
    assert store.count_task_runs("r2") == 0


def test_task_ids_in_states_lists_each_task_once_in_order(store: Store) -> None:
    store.create_flow_run(FlowRunRow("r1", "etl", "1", 1, 1.0))
    store.create_flow_run(FlowRunRow("r2", "etl", "1", 1, 1.0))
    b = WriteBatch()
    rows = (
        ("r1", "load", "load", -1, 7),
        ("r1", "Zeta", "Zeta", -1, 7),  # before "load" by code point, after by ICU rules
        ("r1", "scale[0]", "scale", 0, 7),
        ("r1", "scale[1]", "scale", 1, 8),
        ("r1", "extract", "extract", -1, 5),
        ("r2", "other", "other", -1, 7),
    )
    for run, key, task_id, index, state in rows:
        b.task_runs[(run, key)] = TaskRunRow(run, key, task_id, index, state, 1, 1.0)
    store.commit(b)
    assert store.task_ids_in_states("r1", (7, 8)) == ["Zeta", "load", "scale"]
    assert store.task_ids_in_states("r1", (5,)) == ["extract"]
    assert store.task_ids_in_states("r1", ()) == []
    assert store.task_ids_in_states("nope", (7,)) == []


def _failed_run(store: Store) -> int:
    """Run r1, FAILED by its task run "load" (TIMED_OUT); the FAILED state's value."""
    failed = FlowRunState.FAILED.value
    store.create_flow_run(FlowRunRow("r1", "etl", "1", failed, 1.0))
    b = WriteBatch()
    b.task_runs[("r1", "load")] = TaskRunRow("r1", "load", "load", -1, 7, 1, 2.0)
    store.commit(b)
    return failed


def _retry_on_another_thread(store: Store) -> None:
    """Commit what a retry of run r1 commits (the run RUNNING again, its failed task
    run reset), from another thread: another connection."""
    b = WriteBatch()
    b.flow_runs["r1"] = FlowRunRow("r1", "etl", "1", FlowRunState.RUNNING.value, 1.0)
    b.task_runs[("r1", "load")] = TaskRunRow("r1", "load", "load", -1, 2, 2, 3.0)
    thread = threading.Thread(target=store.commit, args=(b,))
    thread.start()
    thread.join(30)


def test_a_snapshot_reads_the_database_as_of_one_moment(store: Store) -> None:
    """Reads inside ``snapshot`` agree with each other although a commit lands between
    them; after it, the commit is seen. A FAILED run answered while it was retried said
    FAILED with no failed task: its row and its task runs came from either side of the
    retry's commit (a user trial)."""
    failed = _failed_run(store)
    with store.snapshot():
        assert store.get_flow_run("r1").state == failed
        _retry_on_another_thread(store)
        assert store.task_ids_in_states("r1", (7,)) == ["load"]  # as of the first read
        with store.snapshot():  # (inside another: the same snapshot)
            assert store.get_flow_run("r1").state == failed
    assert store.get_flow_run("r1").state == FlowRunState.RUNNING.value
    assert store.task_ids_in_states("r1", (7,)) == []


def test_a_failed_runs_answer_reads_its_row_again_with_its_failed_tasks(store: Store) -> None:
    """``as_one``: the row of a FAILED run, read before a retry committed, is read again
    in the snapshot its failed tasks are read in: the answer is the run as it is
    (RUNNING, no failed task), never FAILED without its failed task."""
    from headwater_runtime.server._queries import as_one, failed_task_ids

    _failed_run(store)
    old = store.get_flow_run("r1")
    _retry_on_another_thread(store)
    row, ids = as_one(store, old, lambda row: failed_task_ids(store, row))
    assert (row.state, ids) == (FlowRunState.RUNNING.value, [])
    unchanged, ids = as_one(store, store.get_flow_run("r1"), lambda row: ["read"])
    assert ids == ["read"] and unchanged.state == FlowRunState.RUNNING.value


def test_a_run_with_its_task_runs_is_read_in_one_snapshot(store: Store) -> None:
    """GetFlowRun with ``include_task_runs`` (``RunReads.view``): the run's row and its
    task runs are of one commit, though a retry commits between the reads. Read one
    after the other, the answer said FAILED beside a task run already reset."""
    import asyncio
    import types

    from headwater_runtime.server._io import StoreIO
    from headwater_runtime.server._reads import RunReads

    failed = _failed_run(store)
    history = store.task_run_history

    def history_after_a_retry(flow_run_id: str) -> Any:
        _retry_on_another_thread(store)  # lands after the row was read
        return history(flow_run_id)

    store.task_run_history = history_after_a_retry  # type: ignore[method-assign]
    io = StoreIO()
    core = types.SimpleNamespace(
        store=store, io=io, waiting=lambda _run_id: {}, not_resumed_message=lambda *_: None
    )
    try:
        _, message, _, task_runs, _ = asyncio.run(RunReads(core).view("r1", task_runs=True))  # type: ignore[arg-type]
    finally:
        io.close()
    assert message.state == failed and list(message.failed_task_ids) == ["load"]
    assert [(t.task_id, t.state, t.attempts) for t in task_runs] == [("load", 7, 1)]
    assert store.get_flow_run("r1").state == FlowRunState.RUNNING.value  # (it did land)


def test_the_run_pages_counts_and_state_are_read_in_one_snapshot(store: Store) -> None:
    """The web UI's run (``_data.run_page``): the counts per state and the run's row
    are of one commit, though a retry commits while they are read."""
    from headwater_runtime.server.http._data import run_page

    _failed_run(store)
    old = store.get_flow_run("r1")
    task_runs = store.task_runs

    def task_runs_after_a_retry(flow_run_id: str) -> Any:
        rows = task_runs(flow_run_id)
        _retry_on_another_thread(store)  # lands between the counts and the run's row
        return rows

    store.task_runs = task_runs_after_a_retry  # type: ignore[method-assign]
    body = run_page(store, old)
    assert body["totals"] == {"TIMED_OUT": 1}
    assert body["run"]["state"] == "FAILED" and body["run"]["failed_task_ids"] == ["load"]
    store.task_runs = task_runs  # type: ignore[method-assign]
    again = run_page(store, old)  # (the retry landed: read again, the run as it is now)
    assert again["totals"] == {"SCHEDULED": 1} and again["run"]["state"] == "RUNNING"


def test_run_sizes_count_journal_entries_and_task_runs(store: Store) -> None:
    store.create_flow_run(FlowRunRow("big", "etl", "1", 1, 1.0))
    store.create_flow_run(FlowRunRow("small", "etl", "1", 1, 1.0))
    b = WriteBatch()
    for seq in range(3):
        b.events.append(RunEvent("big", seq, 1.0, "event", b"x", ""))
    b.events.append(RunEvent("small", 0, 1.0, "start", b"x", ""))
    for key in ("a", "b"):
        b.task_runs[("big", key)] = TaskRunRow("big", key, key, -1, 3, 1, 1.0)
    store.commit(b)
    assert store.run_sizes(["small", "big", "none"]) == {"small": 1, "big": 5, "none": 0}
    assert store.run_sizes([]) == {}


def test_list_flow_runs_filters_and_pages_newest_first(store: Store) -> None:
    for i in range(5):
        store.create_flow_run(FlowRunRow(f"r{i}", "a" if i % 2 else "b", "1", 4 if i < 2 else 3, i))
    assert [r.id for r in store.list_flow_runs()] == ["r4", "r3", "r2", "r1", "r0"]
    assert [r.id for r in store.list_flow_runs(flow_name="a")] == ["r3", "r1"]
    assert [r.id for r in store.list_flow_runs(states=[4])] == ["r1", "r0"]
    assert [r.id for r in store.list_flow_runs(limit=2, before="r3")] == ["r2", "r1"]


def test_list_flow_runs_by_schedule_and_creation_time(store: Store) -> None:
    for i in range(5):
        row = FlowRunRow(f"r{i}", "a", "1", 3, 10.0 * i, schedule_id="s" if i % 2 else "")
        store.create_flow_run(row)
    assert [r.id for r in store.list_flow_runs(schedule_id="s")] == ["r3", "r1"]
    window = store.list_flow_runs(created_after=10.0, created_before=30.0)
    assert [r.id for r in window] == ["r2", "r1"]  # [after, before)
    assert [r.id for r in store.list_flow_runs(states=[3], created_after=35.0)] == ["r4"]


def test_flow_run_ids_by_prefix(store: Store) -> None:
    for run_id in ("ab12", "ab34", "ac56", "a%_x"):
        store.create_flow_run(FlowRunRow(run_id, "a", "1", 3, 1.0))
    assert store.flow_run_ids("ab") == ["ab12", "ab34"]
    assert store.flow_run_ids("ab", limit=1) == ["ab12"]
    assert store.flow_run_ids("ac5") == ["ac56"]
    assert store.flow_run_ids("zz") == []
    assert store.flow_run_ids("a%") == ["a%_x"]  # no wildcards in a prefix
    assert store.flow_run_ids("a_") == []


def test_child_runs_name_their_parent_and_survive_reopen(db: str) -> None:
    store = open_store(db)
    store.create_flow_run(FlowRunRow("p", "parent", "1", 3, 1.0))
    for i in range(2):
        child = FlowRunRow(
            f"c{i}",
            "child",
            "1",
            3,
            2.0 + i,
            parent_flow_run_id="p",
            parent_task_key=f"child[{i}]",
            parent_attempt=1,
        )
        store.create_flow_run(child)
    store.create_flow_run(FlowRunRow("other", "child", "1", 3, 5.0))
    # A commit that rewrites the run's row keeps its link to the parent.
    row = store.get_flow_run("c0")
    store.commit(WriteBatch(flow_runs={"c0": dataclasses.replace(row, state=4, ended_at=9.0)}))
    store.close()
    store = open_store(db)
    children = store.child_flow_runs("p")
    assert [(c.id, c.parent_task_key, c.parent_attempt) for c in children] == [
        ("c0", "child[0]", 1),
        ("c1", "child[1]", 1),
    ]
    assert children[0].state == 4 and children[0].parent_flow_run_id == "p"
    assert store.child_flow_runs("other") == []
    assert store.get_flow_run("other").parent_flow_run_id == ""
    store.close()


def test_a_new_run_is_stored_with_its_start_and_audit_entry_or_not_at_all(store: Store) -> None:
    row = FlowRunRow("r1", "a", "1", 3, 1.0, idempotency_key="k")
    start = WriteBatch(
        events=[RunEvent("r1", 1, 1.0, "start", b"{}", "")],
        task_runs={("r1", "t"): TaskRunRow("r1", "t", "t", -1, 2, 0, 1.0, "", "", "", 0)},
    )
    audit = AuditRow(1.0, "op", "flow_run.create", "flow_run", "r1", "a:1")
    stored, created = store.create_flow_run(row, start=start, audit=audit)
    assert created and stored.id == "r1"
    assert [e.kind for e in store.events("r1")] == ["start"]
    assert [t.key for t in store.task_runs("r1")] == ["t"]
    assert store.audit_entries("flow_run", "r1") == [audit]
    # The same idempotency key: the first run, and nothing of the second start.
    again = dataclasses.replace(row, id="r2")
    other_start = WriteBatch(events=[RunEvent("r2", 1, 2.0, "start", b"{}", "")])
    first, created = store.create_flow_run(again, start=other_start, audit=audit)
    assert not created and first.id == "r1"
    assert store.events("r2") == [] and len(store.audit_entries("flow_run")) == 1


def test_a_new_run_without_a_key_is_stored_as_its_first_batch_left_it(store: Store) -> None:
    """The common creation (no idempotency key, no schedule): the run, its start, its
    payload references and its audit entry land together, and a run that changed in
    its first batch (it ended at once) is stored as it ended."""
    payload = store.put_payload(iter([b"[1]"]), {"encoding": "json"}, 3)
    row = FlowRunRow("r1", "a", "1", 3, 1.0, payload_ids=(payload.id,))
    start = WriteBatch(
        events=[RunEvent("r1", 1, 1.0, "start", b"{}", "")],
        flow_runs={"r1": dataclasses.replace(row, state=4, ended_at=1.5, result=b"\x00r")},
        task_runs={("r1", "t"): TaskRunRow("r1", "t", "t", -1, 5, 1, 1.5, "", "", "", 0)},
        states=[StateRow("r1", "t", 1, 5, 1.5, 1, "done", b"\x01\x02")],
    )
    audit = AuditRow(1.0, "op", "flow_run.create", "flow_run", "r1", "a:1")
    assert store.create_flow_run(row, start=start, audit=audit) == (row, True)
    stored = store.get_flow_run("r1")
    assert (stored.state, stored.ended_at, stored.result) == (4, 1.5, b"\x00r")
    assert [e.kind for e in store.events("r1")] == ["start"]
    assert [(t.key, t.state) for t in store.task_runs("r1")] == [("t", 5)]
    assert [(h.message, h.failure) for h in store.task_run_history("r1", "t")] == [
        ("done", b"\x01\x02")
    ]
    assert store.audit_entries("flow_run", "r1") == [audit]
    # The run holds its parameter payload: nothing to collect even an hour later.
    assert store.prune(None, time.time() + 3600, grace=0, dry_run=True).payloads == 0
    # The same id again is refused, and nothing of the second start lands.
    again = WriteBatch(events=[RunEvent("r1", 2, 2.0, "start", b"{}", "")])
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        store.create_flow_run(FlowRunRow("r1", "a", "1", 3, 2.0), start=again, audit=audit)
    assert len(store.events("r1")) == 1 and len(store.audit_entries("flow_run")) == 1


def test_text_with_nul_characters_does_not_fail_a_commit(store: Store) -> None:
    """A log line or failure message with binary garbage in it is stored; PostgreSQL
    text cannot hold NUL, so there it reads U+FFFD (a failing commit would hold back
    every run behind it)."""
    store.create_flow_run(FlowRunRow("r1", "a", "1", 3, 1.0))
    store.commit(
        WriteBatch(
            logs=[LogRow("r1", "t", 1, 1.0, "INFO", "x", "a\x00b \\u0000 c")],
            states=[StateRow("r1", "t", 1, 6, 1.0, 1, "bad\x00", b"\x00")],
        )
    )
    store.commit(WriteBatch(cache=[CacheRow("forever", "v", float("inf"))]))
    assert store.get_cache("forever") == CacheRow("forever", "v", float("inf"))
    nul = "\x00" if isinstance(store, SQLiteStore) else "\ufffd"
    assert [g.message for g in store.logs("r1")] == [f"a{nul}b \\u0000 c"]
    assert [(h.message, h.failure) for h in store.task_run_history("r1", "t")] == [
        (f"bad{nul}", b"\x00")
    ]


def test_a_batch_of_thousands_of_rows_lands_whole_and_in_order(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large batches are encoded a slice at a time, and written as several statements
    in one transaction (PostgreSQL; here 1,000 rows a statement): every row lands, in
    the order given, a NUL in one of them included; a failure anywhere writes nothing."""
    from headwater_runtime.store import _postgres_batch

    monkeypatch.setattr(_postgres_batch, "STATEMENT_ROWS", 1_000)
    store.create_flow_run(FlowRunRow("r1", "a", "1", 3, 1.0))
    # All or nothing: the duplicate journal entry is in the third statement.
    events = [RunEvent("r1", i, 1.0, "e", b"") for i in range(2_500)] + [
        RunEvent("r1", 2_100, 1.0, "dup", b"")
    ]
    bad = WriteBatch(events=events, logs=[LogRow("r1", "t", 1, 1.0, "INFO", "x", "no")])
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        store.commit(bad)
    assert store.events("r1") == [] and store.logs("r1") == []
    n = 2_500
    store.commit(
        WriteBatch(
            logs=[
                LogRow("r1", f"t{i}", 1, float(i), "INFO", "x", "\x00" if i == 1_234 else f"m{i}")
                for i in range(n)
            ],
            task_runs={
                ("r1", f"t{i}"): TaskRunRow("r1", f"t{i}", "t", i, 2, 0, float(i)) for i in range(n)
            },
        )
    )
    messages = [g.message for g in store.logs("r1", limit=n)]
    assert len(messages) == n and messages[:3] == ["m0", "m1", "m2"] and messages[-1] == f"m{n - 1}"
    assert messages[1_234] in ("\x00", "\ufffd")
    assert [t.key for t in store.task_runs("r1")] == [f"t{i}" for i in range(n)]


def test_logs_page_by_sequence_and_select_a_task_with_its_mapped_children(store: Store) -> None:
    store.create_flow_run(FlowRunRow("r1", "a", "1", 3, 1.0))
    keys = ["t", "t[0]", "t[1]", "tx", "u", "t[2]"]
    logs = [LogRow("r1", k, 1, float(i), "INFO", "x", f"m{i}") for i, k in enumerate(keys)]
    store.commit(WriteBatch(logs=logs))
    every = store.logs("r1")
    assert [g.message for g in every] == [f"m{i}" for i in range(6)]
    seqs = [g.seq for g in every]
    assert seqs == sorted(seqs) and len(set(seqs)) == 6 and seqs[0] > 0
    page = store.logs("r1", after=seqs[1], limit=2)
    assert [g.message for g in page] == ["m2", "m3"]
    assert [g.key for g in store.logs("r1", task_id="t")] == ["t", "t[0]", "t[1]", "t[2]"]
    assert [g.key for g in store.logs("r1", "u")] == ["u"]
    assert store.logs("r1", after=seqs[-1]) == []


@pytest.fixture(params=["database", "directory"])
def payload_store(request: pytest.FixtureRequest, db: str, tmp_path: Path) -> Iterator[Any]:
    """A store keeping payload bytes in the database, or in a directory."""
    folder = tmp_path / "payloads" if request.param == "directory" else None
    s = open_store(db, payload_dir=folder)
    yield s
    s.close()


def test_payloads_are_stored_and_read_back_in_chunks(payload_store: Store) -> None:
    store = payload_store
    data = bytes(range(256)) * 10_000  # 2.56 MB, three storage chunks
    sha = hashlib.sha256(data).hexdigest()
    pieces = (data[i : i + 300_000] for i in range(0, len(data), 300_000))
    meta = store.put_payload(pieces, {"encoding": "pickle"}, len(data), sha)
    assert meta.sha256 == sha and meta.size == len(data)
    chunks = list(store.read_payload(meta.id, chunk_size=1 << 20))
    assert max(len(c) for c in chunks) <= 1 << 20
    assert b"".join(chunks) == data
    assert b"".join(store.read_payload(meta.id, offset=1_500_001)) == data[1_500_001:]
    assert store.payload_meta(meta.id).metadata == {"encoding": "pickle"}


def test_a_payload_keeps_the_credential_that_uploaded_it(payload_store: Store) -> None:
    """What a worker-only credential may read and reference (its own uploads) is
    decided from the store, so it holds across server restarts."""
    store = payload_store
    own = store.put_payload(iter([b"[1]"]), {"encoding": "json"}, 3, uploader="worker-a")
    upload = store.begin_payload({"encoding": "json"}, 3, uploader="worker-b")
    upload.write(b"[2]")
    streamed = upload.finish()
    server = store.put_payload(iter([b"[3]"]), {"encoding": "json"}, 3)
    assert (own.uploader, streamed.uploader, server.uploader) == ("worker-a", "worker-b", "")
    assert store.payload_meta(own.id).uploader == "worker-a"
    assert store.payload_meta(streamed.id).uploader == "worker-b"
    assert store.payload_meta(server.id).uploader == ""


@pytest.mark.parametrize(
    ("chunks", "size", "sha", "message"),
    [
        ([b"abc"], 2, "", "larger than its declared size"),
        ([b"abc"], 5, "", "has 3 bytes but declared 5"),
        ([b"abc"], 3, "0" * 64, "do not match the declared sha256"),
    ],
)
def test_bad_payload_uploads_are_refused_and_leave_nothing(
    store: Store, chunks: list[bytes], size: int, sha: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.put_payload(iter(chunks), {"encoding": "json"}, size, sha)
    assert count(store, "payload_chunks") == 0
    assert count(store, "payloads") == 0


def test_unknown_payload_and_run_raise_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="payload 'x'"):
        store.payload_meta("x")
    with pytest.raises(NotFound, match="flow run 'x'"):
        store.get_flow_run("x")


def test_schedules_round_trip(store: Store) -> None:
    store.put_schedule(ScheduleRow("s1", "etl", b"body", 100.0, True))
    assert store.list_schedules("etl") == [ScheduleRow("s1", "etl", b"body", 100.0, True)]
    store.delete_schedule("s1")
    assert store.list_schedules() == []
    with pytest.raises(NotFound):
        store.delete_schedule("s1")


def test_a_schedule_replaced_by_another_goes_in_the_same_write(store: Store) -> None:
    """A named schedule replaces the one of its name (``put_schedule(replaces=)``): the
    old row and its payload references go with the new one's storing, so a prune
    collects the payload of a parameter only the old schedule had."""
    import time

    old_only = store.put_payload(iter([b'"old"']), {"encoding": "json"}, 5).id
    kept = store.put_payload(iter([b'"kept"']), {"encoding": "json"}, 6).id
    store.put_schedule(ScheduleRow("s1", "etl", b"old", 100.0, True, (old_only, kept)))
    new = ScheduleRow("s2", "etl", b"new", 100.0, True, (kept,))
    store.put_schedule(new, replaces="s1")
    assert store.list_schedules() == [dataclasses.replace(new, payload_ids=())]
    store.prune(None, time.time() + 86_400, grace=0.0)
    with pytest.raises(NotFound):
        store.payload_meta(old_only)
    assert store.payload_meta(kept).size == 6
    store.put_schedule(ScheduleRow("s3", "etl", b"gone", None, True), replaces="nope")
    assert [r.id for r in store.list_schedules()] == ["s2", "s3"]


def test_a_fire_advances_its_schedule_unless_deleted_or_paused_meanwhile(store: Store) -> None:
    """A fire stores its run and its schedule advanced past it in one transaction. A
    fire may wait long for a worker to build its graph: a schedule paused meanwhile was
    resumed in the store by it (fired again after a restart), one deleted stays so, and
    one paused and resumed keeps the resume's next time."""
    store.put_schedule(ScheduleRow("s1", "etl", b"v1", 100.0, True))
    advanced = ScheduleRow("s1", "etl", b"v2", 160.0, True)
    store.create_flow_run(FlowRunRow("r1", "etl", "1", 3, 1.0, schedule_id="s1"), advanced)
    assert store.get_schedule("s1") == advanced
    store.put_schedule(ScheduleRow("s1", "etl", b"paused", 160.0, False))
    later = ScheduleRow("s1", "etl", b"v3", 220.0, True)
    store.create_flow_run(FlowRunRow("r2", "etl", "1", 3, 2.0, schedule_id="s1"), later)
    assert store.get_schedule("s1") == ScheduleRow("s1", "etl", b"paused", 160.0, False)
    # Paused and resumed while a fire waited: the resume's later time stands (the fire
    # stored its own, older one over it, and a restart caught up the paused times).
    resumed = ScheduleRow("s1", "etl", b"resumed", 280.0, True)
    store.put_schedule(resumed)
    store.create_flow_run(FlowRunRow("r3", "etl", "1", 3, 3.0, schedule_id="s1"), later)
    assert store.get_schedule("s1") == resumed
    onwards = ScheduleRow("s1", "etl", b"v4", 340.0, True)
    store.create_flow_run(FlowRunRow("r4", "etl", "1", 3, 4.0, schedule_id="s1"), onwards)
    assert store.get_schedule("s1") == onwards
    store.delete_schedule("s1")
    store.create_flow_run(FlowRunRow("r5", "etl", "1", 3, 5.0, schedule_id="s1"), later)
    assert store.list_schedules() == []
    ids = [r.id for r in store.list_flow_runs(schedule_id="s1")]
    assert ids == ["r5", "r4", "r3", "r2", "r1"]


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hw.db"
    SQLiteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    db.commit()
    db.close()
    with pytest.raises(RuntimeError, match="schema version 99"):
        SQLiteStore(path)


def test_an_upload_cut_short_leaves_nothing_visible_and_is_swept_by_the_next_server(
    tmp_path: Path,
) -> None:
    """Only a server claiming the database sweeps: a store opened beside a running
    server (`headwater prune`, even a dry run, or `headwater tokens`) swept the chunks
    of the server's uploads under way, whose payloads then lacked them (a user trial:
    DATA_LOSS for runs with large results)."""
    path = tmp_path / "hw.db"
    store = SQLiteStore(path)
    store.claim("the server")
    writer = store.begin_payload({"encoding": "pickle"}, 3 << 20)
    writer.write(b"x" * (2 << 20))  # two chunks stored: an upload under way
    with pytest.raises(NotFound):
        store.payload_meta(writer.id)
    beside = SQLiteStore(path)  # headwater prune --dry-run, beside the server
    beside.prune(None, 1e12, grace=0, dry_run=True)
    beside.close()
    writer.write(b"x" * (1 << 20))
    assert store.payload_meta(writer.finish().id).size == 3 << 20  # every chunk there
    assert b"".join(store.read_payload(writer.id)) == b"x" * (3 << 20)
    second = store.begin_payload({"encoding": "pickle"}, 3 << 20)
    second.write(b"y" * (2 << 20))  # then the server "dies" mid-upload
    store.close()
    reopened = SQLiteStore(path)
    assert reopened._db.execute("SELECT COUNT(*) FROM payload_chunks").fetchone()[0] == 5
    reopened.claim("the next server")
    assert reopened._db.execute("SELECT COUNT(*) FROM payload_chunks").fetchone()[0] == 3
    reopened.close()


def test_an_aborted_upload_removes_its_chunks(store: Store) -> None:
    writer = store.begin_payload({"encoding": "json"}, 5 << 20)
    writer.write(b"y" * (2 << 20))
    writer.abort()
    assert count(store, "payload_chunks") == 0


def test_payload_metadata_must_name_its_encoding(store: Store) -> None:
    with pytest.raises(ValueError, match="'encoding'"):
        store.begin_payload({}, 1)


def test_payload_bytes_in_a_directory_are_files_not_rows(db: str, tmp_path: Path) -> None:
    folder = tmp_path / "payloads"
    store = open_store(db, payload_dir=folder)
    data = b"z" * (CHUNK_SIZE * 2 + 5)
    meta = store.put_payload(iter([data]), {"encoding": "pickle"}, len(data))
    assert count(store, "payload_chunks") == 0
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert [p.name for p in files] == [meta.id] and files[0].stat().st_size == len(data)
    assert store.read_payload_chunk(meta.id, 2) == b"z" * 5
    assert store.read_payload_chunk(meta.id, 3) == b""
    # An upload cut short leaves a file in .uploads, never a readable payload.
    writer = store.begin_payload({"encoding": "json"}, CHUNK_SIZE + 3)
    writer.write(b"a" * CHUNK_SIZE)
    assert list((folder / ".uploads").iterdir()) and writer.id not in {p.name for p in files}
    writer.abort()
    assert not list((folder / ".uploads").iterdir())
    # A prune that was not given the directory keeps the payload's row: deleting it
    # would leave its file for ever (`headwater prune` without --payload-dir did).
    store.close()
    blind = open_store(db)
    report = blind.prune(None, now=10**10, grace=0)
    assert (report.payloads, report.payloads_kept) == (0, 1)
    blind.close()
    store = open_store(db, payload_dir=folder)
    # Retention removes the files of payloads nothing references.
    report = store.prune(None, now=10**10, grace=0)
    assert report.payloads == 1 and report.payload_bytes == len(data)
    assert not [p for p in folder.rglob("*") if p.is_file()]
    store.close()


def test_payloads_stored_in_the_database_stay_readable_with_a_directory(
    db: str, tmp_path: Path
) -> None:
    store = open_store(db)
    meta = store.put_payload(iter([b"old"]), {"encoding": "json"}, 3)
    store.close()
    store = open_store(db, payload_dir=tmp_path / "payloads")
    assert b"".join(store.read_payload(meta.id)) == b"old"
    store.close()


def test_a_sqlite_file_deleted_under_the_store_refuses_commits_until_it_is_back(
    tmp_path: Path,
) -> None:
    """A server whose database file was deleted went on acknowledging commits into the
    deleted file, all lost at its next start. Commits now fail (StoreUnavailable: the
    server keeps them and retries) until the file is back."""
    path = tmp_path / "hw.db"
    store = SQLiteStore(path)
    assert store.created
    store.create_flow_run(FlowRunRow("r1", "etl", "1", 1, 1.0))
    aside = tmp_path / "aside.db"
    path.rename(aside)
    batch = WriteBatch()
    batch.flow_runs["r1"] = FlowRunRow("r1", "etl", "1", 5, 1.0, ended_at=2.0)
    with pytest.raises(StoreUnavailable, match="was deleted or replaced while this server"):
        store.commit(batch)
    aside.rename(path)  # put back
    store.commit(batch)
    assert store.get_flow_run("r1").state == 5
    store.close()
    assert not SQLiteStore(path).created
