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
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_helpers import BOUND, Cluster, Proc, poll, start_server, start_worker
from fault_helpers import (
    FIGURES,
    Figures,
    Line,
    Snapshot,
    Tally,
    count_effects,
    judge,
    read_effects,
    snapshot,
)
from fault_tasks import chaos, expected, workers

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
DISK_ROUNDS = _env_int("HW_FAULT_DISK_ROUNDS", 2)
WORKERS, SLOTS = 2, 4


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
            kills.append(snapshot(db, tags, pos))
            server, address = start_server(cluster, db, port)
            restarts.append((killed, time.time(), len(read_effects(tmp_path))))
        round_ids = [i for i, t in tags.items() if t in round_tags]
        with Client(address, token=TOKEN) as client:
            states.update(_wait_ended(client, round_ids))
            for run_id in round_ids:
                results[run_id] = client.get(run_id).result
    server.stop()
    lines = read_effects(tmp_path)
    final = snapshot(db, tags, len(lines))
    tally = judge(lines, kills, final)
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
        restart_s=_first_starts(lines, restarts),
        extra=f"{tally.proven_deliveries} deliveries proven from the side effects and "
        f"found recorded; {len(tally.losses)} losses charged; restarts (kill -> first "
        "task start): " + ", ".join(f"{s:.2f}" for s in _first_starts(lines, restarts)),
    )
    FIGURES.append(figures)
    assert figures.failed_runs == 0, states
    assert all(results[i] == expected(WIDTH) for i in tags), results
    assert tally.problems() == []
    assert tally.tasks == len(tags) * per_run
    assert tally.max_duplicates_per_kill <= WORKERS * SLOTS
    # Rule 3 must have been exercised, or a broken delivery record would go unseen.
    assert tally.proven_deliveries > 0


def _first_starts(lines: list[Line], restarts: list[tuple[float, float, int]]) -> list[float]:
    """Per restart: seconds from the kill to the first task start after the restarted
    server was ready (what queued work waited)."""
    out = []
    for killed, _ready, pos in restarts:
        after = [x.t for x in lines if x.pos >= pos and x.kind == "START"]
        if after:
            out.append(min(after) - killed)
    return out
