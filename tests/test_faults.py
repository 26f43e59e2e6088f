"""The fault suite (issue 12): real `headwater server` and `headwater worker` processes,
faults injected at seeded points, and every outcome counted.

* Server SIGKILLs across several runs of a few-hundred-task flow, each time restarted
  on the same database: 0 failed runs, 0 re-executed recorded successes, duplicates
  only of attempts in flight and not yet recorded as delivered (fault_helpers.py
  states the rules and why they prove it).
* Worker SIGKILL, and SIGSTOP (continued after the heartbeat window, or never): runs
  complete, the faulted worker's attempts are dispatched again, its late results
  count for nothing.
* A real full disk (a small tmpfs, mounted by the test as root): commits fail, the
  server keeps everything and sends nothing it has not stored, and every run
  completes once space returns, also across a SIGKILL while the disk is full.

Faults happen at points counted in task starts (seeded: ``HW_FAULT_SEED``), never
after sleeps. The sizes come from ``HW_FAULT_*`` variables; ``make soak`` runs the
same suite bigger. A table of figures is printed at the end of the session
(conftest.py).
"""

from __future__ import annotations

import errno
import functools
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import BOUND, Cluster, Proc, poll, start_server, start_worker
from fault_helpers import (
    FIGURES,
    Figures,
    Line,
    Snapshot,
    count_effects,
    judge,
    read_effects,
    snapshot,
)
from fault_tasks import chaos, expected, hold_path, workers

from headwater import Client
from headwater.wire import FlowRunState

pytestmark = pytest.mark.e2e

TOKEN = "fault-token"
TESTS = Path(__file__).resolve().parent


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


SEED = _env_int("HW_FAULT_SEED", 20261125)
#: Server kills: rounds, runs created together per round, kills per round, map width
#: (a run has 2 * WIDTH + 2 task runs).
ROUNDS = _env_int("HW_FAULT_ROUNDS", 2)
RUNS = _env_int("HW_FAULT_RUNS", 2)
KILLS = _env_int("HW_FAULT_KILLS", 4)
WIDTH = _env_int("HW_FAULT_WIDTH", 150)
#: Worker faults: task runs per run; full disk: rounds of fill / free.
WORKER_TASKS = _env_int("HW_FAULT_WORKER_TASKS", 60)
WORKER_ROUNDS = _env_int("HW_FAULT_WORKER_ROUNDS", 1)
DISK_ROUNDS = _env_int("HW_FAULT_DISK_ROUNDS", 2)
WORKERS, SLOTS = 2, 4
#: Each test's bound (seconds); pytest's default of 120 s is for ordinary tests.
BOUND_S = _env_int("HW_FAULT_TIMEOUT", 300)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}
    env.update(
        HW_FAULT_DIR=str(tmp_path),
        HEADWATER_TOKEN=TOKEN,
        PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    )
    procs = Cluster(env)
    try:
        yield procs
    finally:
        for proc in procs.procs:  # a stopped process ignores SIGTERM: let it go first
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGCONT)
        procs.stop()


def _workers(cluster: Cluster, address: str, names: list[str]) -> list[Proc]:
    return [
        start_worker(cluster, address, name, "--slots", str(SLOTS), module="fault_tasks")
        for name in names
    ]


def _wait_starts(tmp_path: Path, tags: list[str], count: int) -> None:
    poll(
        lambda: count_effects(tmp_path, "START", tags) >= count,
        f"{count} task starts of runs {tags}",
    )


def _wait_ended(client: Client, run_ids: list[str]) -> dict[str, FlowRunState]:
    ended: dict[str, FlowRunState] = {}

    def all_ended() -> bool:
        for run_id in run_ids:
            if run_id not in ended:
                state = client.get(run_id).state
                if state.is_terminal:
                    ended[run_id] = state
        return len(ended) == len(run_ids)

    poll(all_ended, f"runs {run_ids} to end", timeout=3 * BOUND)
    return ended


# --------------------------------------------------------------- server SIGKILLs


@pytest.mark.timeout(BOUND_S)
def test_server_sigkills_lose_nothing_and_rerun_nothing_recorded(
    tmp_path: Path, cluster: Cluster
) -> None:
    """ROUNDS rounds of RUNS concurrent runs (2 * WIDTH + 2 task runs each) on 2
    workers x 4 slots; in each round the server is SIGKILLed at KILLS seeded points
    and restarted on the same database and port at once."""
    rng = random.Random(f"{SEED}/server-kills")
    db = tmp_path / "hw.db"
    server, address = start_server(cluster, db)
    port = int(address.rsplit(":", 1)[1])
    _workers(cluster, address, [f"w{i + 1}" for i in range(WORKERS)])
    tags: dict[str, str] = {}  # flow run id -> tag
    kills: list[Snapshot] = []
    restarts: list[tuple[float, float, int]] = []  # (killed at, ready at, lines at ready)
    results: dict[str, object] = {}
    states: dict[str, FlowRunState] = {}
    per_run = 2 * WIDTH + 2
    since = 0  # effect lines when the current server process became ready
    for round_ in range(ROUNDS):
        round_tags = [f"r{round_}x{i}" for i in range(RUNS)]
        with Client(address, token=TOKEN) as client:
            for tag in round_tags:
                run = client.run(chaos, {"n": WIDTH, "tag": tag})
                tags[run.id] = tag
        points = sorted(rng.sample(range(10, RUNS * per_run - 10), KILLS))
        for point in points:
            _wait_starts(tmp_path, round_tags, point)
            server.kill()
            killed = time.time()
            pos = len(read_effects(tmp_path))
            kills.append(snapshot(db, tags, pos, since))
            server, address = start_server(cluster, db, port)
            since = len(read_effects(tmp_path))
            restarts.append((killed, time.time(), since))
        round_ids = [i for i, t in tags.items() if t in round_tags]
        with Client(address, token=TOKEN) as client:
            states.update(_wait_ended(client, round_ids))
            for run_id in round_ids:
                results[run_id] = client.get(run_id).result
    server.stop()
    lines = read_effects(tmp_path)
    final = snapshot(db, tags, len(lines))
    tally = judge(lines, kills, final)
    waits = _first_starts(lines, restarts, kills)
    figures = Figures(
        "server SIGKILL",
        SEED,
        kills=len(kills),
        runs=len(tags),
        failed_runs=sum(1 for s in states.values() if s is not FlowRunState.SUCCESS),
        tasks=tally.tasks,
        executions=tally.executions,
        reexecuted=len(tally.reexecuted_successes) + len(tally.reexecuted_held),
        duplicates=tally.in_flight_duplicates,
        max_dup_per_kill=tally.max_duplicates_per_kill,
        slots=WORKERS * SLOTS,
        restart_s=[k for k, _ in waits],
        extra=f"worst kill (in flight, recorded delivered, started again): "
        f"{max(tally.per_kill, key=lambda x: x[2], default=None)}; "
        f"{tally.proven_deliveries} deliveries proven from the side effects, "
        f"{len(tally.false_deliveries)} of them not recorded; {len(tally.losses)} losses "
        "charged; kill -> first task start after the restart (server ready -> first "
        "start) s: " + ", ".join(f"{k:.2f} ({r:.2f})" for k, r in waits),
    )
    FIGURES.append(figures)
    assert figures.failed_runs == 0, states
    assert all(results[i] == expected(WIDTH, tag) for i, tag in tags.items()), results
    assert tally.problems() == []
    assert tally.tasks == len(tags) * per_run
    assert tally.max_duplicates_per_kill <= WORKERS * SLOTS
    # Rule 3 must have been exercised, or a broken delivery record would go unseen.
    assert tally.proven_deliveries > 0


def _first_starts(
    lines: list[Line], restarts: list[tuple[float, float, int]], kills: list[Snapshot]
) -> list[tuple[float, float]]:
    """Per restart: seconds from the kill, and from the restarted server being ready, to
    the first task start after that (before the next kill): what queued work waited."""
    out = []
    for i, (killed, ready, pos) in enumerate(restarts):
        end = kills[i + 1].pos if i + 1 < len(kills) else len(lines)
        # A start stamped before the new server was ready ran an assignment the old
        # one sent: not a dispatch after the restart.
        after = [x.t for x in lines[pos:end] if x.kind == "START" and x.t > ready]
        if after:
            out.append((min(after) - killed, min(after) - ready))
    return out


# ---------------------------------------------------------------- worker faults

HEARTBEAT_INTERVAL, HEARTBEAT_TIMEOUT = 0.5, 4.0


def _stopped(proc: Proc) -> bool:
    """Whether the process is stopped (state T in /proc/PID/stat)."""
    stat = Path(f"/proc/{proc.popen.pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


def _victim_in_flight(
    lines: list[Line], victim: str, tag: str, until: int
) -> set[tuple[str, str, int]]:
    """Keys the victim had started and not finished before line ``until``."""
    open_: set[tuple[str, str, int]] = set()
    for line in lines[:until]:
        if line.worker != victim or line.key[0] != tag:
            continue
        if line.kind == "START":
            open_.add(line.key)
        else:
            open_.discard(line.key)
    return open_


class Fault:
    """A signal sent to a worker at a seeded point of a run, and what it caught."""

    def __init__(self, kind: str, victim: Proc, name: str, tag: str) -> None:
        self.kind, self.victim, self.name, self.tag = kind, victim, name, tag
        self.pos = 0  # effect lines when the fault took hold
        self.caught: set[tuple[str, str, int]] = set()  # in flight on the victim then
        self.until: int | None = None  # the victim's lines from here on are a new session
        #: Executions the victim had finished but whose success the store did not have
        #: when the fault took hold: the result was still on its way (in the worker, a
        #: socket or the server's next commit) and may be lost with the worker, so the
        #: task may rightly run again elsewhere.
        self.unrecorded: set[tuple[str, str, int]] = set()

    def strike(self, tmp_path: Path, point: int, db: Path, tags: dict[str, str]) -> None:
        """Send the signal once the victim runs a task held past the run's first
        ``point`` starts (``hold``: the run was started held there, so such a task
        cannot end before the signal), then let the run go on."""
        sig = signal.SIGKILL if self.kind == "SIGKILL" else signal.SIGSTOP

        def ready() -> bool:
            lines = read_effects(tmp_path)
            starts = [x for x in lines if x.kind == "START" and x.key[0] == self.tag]
            held = {x.key for x in starts[point:] if x.worker == self.name}
            return bool(held & _victim_in_flight(lines, self.name, self.tag, len(lines)))

        poll(ready, f"{self.name} to run a task of {self.tag} held after {point} starts")
        self.victim.popen.send_signal(sig)
        if sig == signal.SIGKILL:
            self.victim.popen.wait(BOUND)
        else:
            poll(lambda: _stopped(self.victim), f"{self.name} to stop")
        lines = read_effects(tmp_path)
        self.pos = len(lines)
        self.caught = _victim_in_flight(lines, self.name, self.tag, self.pos)
        recorded = snapshot(db, tags, self.pos).succeeded
        self.unrecorded = {
            x.key
            for x in lines
            if x.kind == "END"
            and x.worker == self.name
            and x.key[0] == self.tag
            and x.key not in recorded
        }
        hold_path(tmp_path, self.tag).unlink()


def hold(tmp_path: Path, tag: str, point: int) -> None:
    """Hold run ``tag``'s tasks after its first ``point`` starts (fault_tasks.py),
    written whole (a rename) so that no task reads half of it."""
    part = tmp_path / f".hold-{tag}"
    part.write_text(str(point))
    part.replace(hold_path(tmp_path, tag))


@pytest.mark.timeout(BOUND_S)
def test_worker_sigkill_and_sigstop_redispatch_and_refuse_late_results(
    tmp_path: Path, cluster: Cluster
) -> None:
    """WORKER_ROUNDS rounds of three runs of WORKER_TASKS tasks that return the name of
    the worker that ran them: a worker SIGKILLed mid-run (a new one joins); one
    SIGSTOPped past the heartbeat window and then continued; one SIGSTOPped for good."""
    rng = random.Random(f"{SEED}/worker-faults")
    db = tmp_path / "hw.db"
    script = [sys.executable, str(TESTS / "fault_server.py"), "--db", str(db)]
    heartbeat = ["--heartbeat-interval", str(HEARTBEAT_INTERVAL)]
    heartbeat += ["--heartbeat-timeout", str(HEARTBEAT_TIMEOUT)]
    server = cluster.spawn([*script, *heartbeat], "stdout")
    address = server.wait_line("headwater server listening on").rsplit(" ", 1)[1]
    faults: list[Fault] = []
    tags: dict[str, str] = {}
    ended: dict[str, FlowRunState] = {}
    results: dict[str, list[str]] = {}

    def point() -> int:
        return rng.randrange(WORKER_TASKS // 4, WORKER_TASKS // 2)

    with Client(address, token=TOKEN) as client:

        def start(tag: str, point: int) -> str:
            hold(tmp_path, tag, point)
            run = client.run(workers, {"n": WORKER_TASKS, "tag": tag})
            tags[run.id] = tag
            return run.id

        def finish(run_id: str) -> None:
            ended.update(_wait_ended(client, [run_id]))
            results[tags[run_id]] = client.get(run_id).result

        for r in range(WORKER_ROUNDS):
            a, b = _workers(cluster, address, [f"a{r}", f"b{r}"])

            # 1. SIGKILL: the stream breaks, its attempts are lost and sent elsewhere.
            at = point()
            run = start(f"kill{r}", at)
            fault = Fault("SIGKILL", a, f"a{r}", f"kill{r}")
            fault.strike(tmp_path, at, db, tags)
            faults.append(fault)
            (c,) = _workers(cluster, address, [f"c{r}"])
            finish(run)

            # 2. SIGSTOP past the heartbeat window, then SIGCONT: the server has dropped
            # the session and sent its attempts elsewhere; what it finishes late is
            # not kept.
            at = point()
            run = start(f"stop{r}", at)
            stop = Fault("SIGSTOP+SIGCONT", b, f"b{r}", f"stop{r}")
            stop.strike(tmp_path, at, db, tags)
            faults.append(stop)

            def redispatched(stop: Fault = stop) -> bool:
                others = {
                    x.key
                    for x in read_effects(tmp_path)
                    if x.kind == "START" and x.worker != stop.name
                }
                return stop.caught <= others

            poll(redispatched, "the stopped worker's attempts to start on another worker")
            b.popen.send_signal(signal.SIGCONT)
            b.wait_line("reconnected to")
            stop.until = len(read_effects(tmp_path))
            finish(run)

            # 3. SIGSTOP for good: the run completes without it.
            at = point()
            run = start(f"never{r}", at)
            fault = Fault("SIGSTOP", c, f"c{r}", f"never{r}")
            fault.strike(tmp_path, at, db, tags)
            faults.append(fault)
            finish(run)
            c.popen.send_signal(signal.SIGKILL)
            c.popen.wait(BOUND)
            b.stop()  # the next round starts with fresh workers
    lines = read_effects(tmp_path)
    final = snapshot(db, tags, len(lines))
    problems: list[str] = list(final.broken)
    starts: dict[tuple[str, str, int], list[Line]] = {}
    for line in lines:
        if line.kind == "START":
            starts.setdefault(line.key, []).append(line)
    late = 0
    for fault in faults:
        recorded = results[fault.tag]
        for key in sorted(fault.caught):
            row = final.rows[key]
            if recorded[key[2]] == fault.name:
                problems.append(f"{key}: the result kept is the {fault.kind} worker's")
            if row.attempt < 2:
                problems.append(
                    f"{key}: held by {fault.name} at its {fault.kind}, not redispatched"
                )
        if fault.until is not None:  # ENDs of caught attempts once it was continued
            late += sum(
                1
                for x in lines[fault.pos :]
                if x.kind == "END" and x.worker == fault.name and x.key in fault.caught
            )
    duplicates = 0
    for key, runs in starts.items():
        if len(runs) < 2:
            continue
        duplicates += len(runs) - 1
        explained = any(
            x.worker == f.name
            and x.key[0] == f.tag
            and (
                key in f.caught
                or key in f.unrecorded
                or (x.pos >= f.pos and (f.until is None or x.pos < f.until))
            )
            for f in faults
            for x in runs
        )
        if not explained:
            problems.append(f"{key} ran {len(runs)} times: " + ", ".join(x.worker for x in runs))
    figures = Figures(
        "worker SIGKILL/SIGSTOP",
        SEED,
        kills=len(faults),
        runs=len(tags),
        failed_runs=sum(1 for s in ended.values() if s is not FlowRunState.SUCCESS),
        tasks=len(final.succeeded),
        executions=sum(len(v) for v in starts.values()),
        reexecuted=0,
        duplicates=duplicates,
        slots=3 * SLOTS,
        extra=f"{len(faults)} faults: "
        + "; ".join(
            f"{f.kind} of {f.name}: {len(f.caught)} attempts in flight, all sent again"
            for f in faults[:6]
        )
        + f"; late results of the continued worker: {late}, kept: 0",
    )
    FIGURES.append(figures)
    assert figures.failed_runs == 0, ended
    assert all(len(r) == WORKER_TASKS for r in results.values())
    assert problems == []
    assert all(f.caught for f in faults[1:])  # a SIGSTOP always caught work in flight


# -------------------------------------------------------------------- full disk

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mount") is None,
    reason="mounting a small tmpfs needs root (CI runs as root)",
)
COMMIT_FAILED = "could not store the server's state"


def _failed_commits(server: Proc) -> int:
    return sum(COMMIT_FAILED in line for line in server.other)


def _truncate_wal(db: Path) -> None:
    """Checkpoint the WAL into the database and truncate it (PRAGMA wal_checkpoint: it
    changes no data). Otherwise a WAL reset by an earlier checkpoint has room left in
    its file, and commits would succeed on a full disk until that room is used up."""
    conn = sqlite3.connect(db, timeout=BOUND)
    try:
        poll(
            lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0,
            "a checkpoint of the WAL",
        )
    finally:
        conn.close()


def _fill(directory: Path) -> int:
    """Write a file until the file system is full; its size."""
    size = 0
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (1 << 20, 1 << 12, 1):
            while True:
                try:
                    size += os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return size


@pytest.mark.timeout(BOUND_S)
@needs_root
def test_a_full_disk_is_survived_and_every_run_finishes_when_space_returns(
    tmp_path: Path, cluster: Cluster
) -> None:
    """The server's database on a small tmpfs that the test fills at seeded points of
    DISK_ROUNDS rounds of runs: commits fail, the server says why and keeps what it
    could not store; space comes back and every run finishes. Every second round the
    server is also SIGKILLed while the disk is full, and restarted once space is back."""
    rng = random.Random(f"{SEED}/full-disk")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)], check=True)
    try:
        db = mount / "hw.db"
        server, address = start_server(cluster, db)
        port = int(address.rsplit(":", 1)[1])
        _workers(cluster, address, [f"w{i + 1}" for i in range(WORKERS)])
        tags: dict[str, str] = {}
        kills: list[Snapshot] = []
        states: dict[str, FlowRunState] = {}
        results: dict[str, object] = {}
        failures = 0
        since = 0
        width = max(10, WIDTH // 2)
        per_run = 2 * width + 2
        for round_ in range(DISK_ROUNDS):
            round_tags = [f"d{round_}x{i}" for i in range(RUNS)]
            with Client(address, token=TOKEN) as client:
                for tag in round_tags:
                    tags[client.run(chaos, {"n": width, "tag": tag}).id] = tag
            _wait_starts(tmp_path, round_tags, rng.randrange(10, RUNS * per_run // 2))
            seen = _failed_commits(server)
            _truncate_wal(db)
            _fill(mount)
            # Failed, and failed again when retried (the disk is still full).
            poll(
                functools.partial(lambda s, n: _failed_commits(s) >= n, server, seen + 3),
                "commits to fail on the full disk",
            )
            failures += _failed_commits(server) - seen
            if round_ % 2:
                server.kill()
                kills.append(snapshot(db, tags, len(read_effects(tmp_path)), since))
            (mount / "filler").unlink()
            if round_ % 2:
                server, address = start_server(cluster, db, port)
                since = len(read_effects(tmp_path))
            round_ids = [i for i, t in tags.items() if t in round_tags]
            with Client(address, token=TOKEN) as client:
                states.update(_wait_ended(client, round_ids))
                for run_id in round_ids:
                    results[run_id] = client.get(run_id).result
        failures += _failed_commits(server)
        server.stop()
        lines = read_effects(tmp_path)
        final = snapshot(db, tags, len(lines))
    finally:
        cluster.stop()
        subprocess.run(["umount", "-l", str(mount)], check=False)
    tally = judge(lines, kills, final)
    figures = Figures(
        "full disk (tmpfs)",
        SEED,
        kills=len(kills),
        runs=len(tags),
        failed_runs=sum(1 for s in states.values() if s is not FlowRunState.SUCCESS),
        tasks=tally.tasks,
        executions=tally.executions,
        reexecuted=len(tally.reexecuted_successes) + len(tally.reexecuted_held),
        duplicates=tally.in_flight_duplicates,
        max_dup_per_kill=tally.max_duplicates_per_kill,
        slots=WORKERS * SLOTS,
        extra=f"{DISK_ROUNDS} times full, {failures} failed commits logged",
    )
    FIGURES.append(figures)
    assert figures.failed_runs == 0, states
    assert all(results[i] == expected(width, tag) for i, tag in tags.items()), results
    assert tally.problems() == []
    assert tally.tasks == len(tags) * per_run
    assert tally.max_duplicates_per_kill <= WORKERS * SLOTS
