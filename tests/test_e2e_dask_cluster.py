"""Dask across processes, end to end: a real ``dask scheduler`` and two ``dask worker``
processes (only "gpu" declares ``GPU=1``), a ``headwater server`` and a Dask bridge
``headwater worker --dask tcp://...``, every one its own OS process.

- Tasks tagged ``resources={"GPU": 1}`` run only on the worker with the resource.
- A large intermediate result stays in the cluster: the next task on the bridge gets
  the future; the control plane stores no payload for it.
- One Dask worker is SIGKILLed while tasks run on it: Dask itself runs them again on
  the other worker (the scheduler reschedules what a dead worker was running, and
  recomputes results that lived only there), so the Headwater attempt is still attempt
  1 and the run succeeds. Headwater's own retries come in only when Dask gives up on a
  task (``KilledWorker``: it took down too many workers), as a failed attempt.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import BOUND, Cluster, Proc, poll, start_server

from headwater import Client
from headwater._loader import load_file
from headwater.wire import FlowRunState

pytestmark = pytest.mark.e2e

TOKEN = "dask-cluster-token"
DASK = str(Path(sys.executable).parent / "dask")

TASKS = """
import os, time
from pathlib import Path
from headwater import flow, task

ROOT = Path(os.environ["HW_TEST_DIR"])
ON_DASK = {"dask": "yes"}

def effect(what):
    from distributed import get_worker
    with (ROOT / "effects.log").open("a") as f:
        f.write(f"{what} {get_worker().name}\\n")

@task(labels=ON_DASK)
def produce(mb: int):
    import numpy as np
    effect("produce")
    return np.ones(mb << 17, dtype=np.float64)  # mb MiB

@task(labels=ON_DASK)
def consume(array) -> int:
    effect("consume")
    return int(array.nbytes)

@task(labels=ON_DASK, resources={"GPU": 1})
def on_gpu(i: int) -> str:
    from distributed import get_worker
    effect(f"gpu-{i}")
    return get_worker().name

@task(labels=ON_DASK)
def slow(i: int) -> int:
    effect(f"slow-start-{i}")
    deadline = time.monotonic() + 90
    while not (ROOT / "release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.02)
    effect(f"slow-done-{i}")
    return i

@task(labels=ON_DASK)
def total(values: list) -> int:
    return sum(values)

@flow
def across(mb: int = 64) -> dict:
    return {
        "bytes": consume(produce(mb)),
        "gpu": on_gpu.map([0, 1, 2]),
        "slow": total(slow.map([0, 1, 2, 3, 4, 5])),
    }
"""


@pytest.fixture
def processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    (tmp_path / "cluster_tasks.py").write_text(textwrap.dedent(TASKS))
    monkeypatch.setenv("HW_TEST_DIR", str(tmp_path))
    env = {
        **os.environ,
        "HW_TEST_DIR": str(tmp_path),
        "HEADWATER_TOKEN": TOKEN,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    procs = Cluster(env)
    yield procs
    procs.stop()


def dask_scheduler(procs: Cluster, folder: Path) -> str:
    """``dask scheduler`` on a free port; its address (from its scheduler file)."""
    info = folder / "scheduler.json"
    procs.spawn(
        [
            DASK,
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(info),
        ],
        "stderr",
    )
    poll(info.exists, "the Dask scheduler to start")
    deadline = time.monotonic() + BOUND
    while True:  # the file is written in one go, but may be seen before it is complete
        try:
            return str(json.loads(info.read_text())["address"])
        except (ValueError, KeyError):
            assert time.monotonic() < deadline, "unreadable scheduler file"
            time.sleep(0.05)


def dask_worker(procs: Cluster, scheduler: str, name: str, *extra: str) -> Proc:
    """``dask worker`` without a nanny (a SIGKILL kills the worker itself)."""
    worker = procs.spawn(
        [
            DASK,
            "worker",
            scheduler,
            "--name",
            name,
            "--nthreads",
            "2",
            "--no-nanny",
            "--no-dashboard",
            "--memory-limit",
            "0",
            *extra,
        ],
        "stderr",
    )
    worker.wait_line("Registered to")
    return worker


def effects(tmp_path: Path) -> list[tuple[str, str]]:
    log = tmp_path / "effects.log"
    if not log.exists():
        return []
    return [tuple(line.split(" ", 1)) for line in log.read_text().splitlines()]  # type: ignore[misc]


def test_a_flow_on_a_dask_cluster_of_separate_processes_survives_losing_a_worker(
    tmp_path: Path, db: str, processes: Cluster
) -> None:
    scheduler = dask_scheduler(processes, tmp_path)
    cpu = dask_worker(processes, scheduler, "cpu")
    dask_worker(processes, scheduler, "gpu", "--resources", "GPU=1")
    _, address = start_server(processes, db)
    bridge: Callable[..., Proc] = processes
    proc = bridge(
        "worker",
        *("--server", address, "--module", "cluster_tasks", "--name", "bridge"),
        *("--label", "dask=yes", "--dask", scheduler),
        worker="bridge",
    )
    line = proc.wait_line("connected to")
    assert "4 slots" in line and scheduler in line, line  # 2 workers x 2 threads
    module: Any = load_file(str(tmp_path / "cluster_tasks.py"))
    with Client(address, token=TOKEN) as client:
        run = client.run(module.across, {"mb": 64})
        poll(
            lambda: any(
                what.startswith("slow-start") and where == "cpu"
                for what, where in effects(tmp_path)
            ),
            "a slow task to start on the cpu worker",
        )
        cpu.popen.send_signal(signal.SIGKILL)
        cpu.popen.wait(BOUND)
        (tmp_path / "release").write_text("go")
        final = client.wait(run.id)
        assert final.state is FlowRunState.SUCCESS, final.message
        assert final.result == {"bytes": 64 << 20, "gpu": ["gpu", "gpu", "gpu"], "slow": 15}
        # (a mapped task's parent run has no attempt of its own)
        attempts = {t.key: t.attempts for t in final.task_runs if t.attempts}
    ran = effects(tmp_path)
    # GPU-tagged tasks ran only where the resource is.
    assert sorted(w for what, w in ran if what.startswith("gpu-")) == ["gpu"] * 3
    # A slow task that the dead worker was running ran again on the other one, and it
    # was Dask that re-ran it: Headwater saw one attempt of every task.
    lost = {
        what[len("slow-start-") :]
        for what, w in ran
        if what.startswith("slow-start") and w == "cpu"
    }
    assert lost
    for i in lost:
        assert (f"slow-done-{i}", "gpu") in ran, ran
    assert set(attempts.values()) == {1}, attempts
    # The 64 MiB array never reached the control plane: no payload was stored.
    from headwater_runtime.store import open_store

    store = open_store(db)
    try:
        stats = store.stats()  # type: ignore[attr-defined]
    finally:
        store.close()
    assert stats["payloads"] == 0 and stats["payload_chunks"] == 0, stats


HELD = """
import os, time
from pathlib import Path
from headwater import flow, task

ROOT = Path(os.environ["HW_TEST_DIR"])

@task(retries=3)
def held(i: int) -> int:
    (ROOT / f"held-{i}-{os.getpid()}").write_text("started")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # never released: the scheduler goes first
        time.sleep(0.05)
    return i

@flow
def waits() -> list:
    return held.map([0, 1])
"""


@pytest.mark.timeout(240)
def test_a_run_and_a_bridge_whose_scheduler_dies_end_saying_so(
    tmp_path: Path, processes: Cluster
) -> None:
    """The scheduler is SIGKILLed while tasks run: once the Dask client gives up
    (its 10 s reconnect time), an embedded `run --dask ADDRESS` waited forever (its
    futures never end) and a bridge said "stopping" but its stop failed on the closed
    client (ClosedClientError) and it stayed online holding its attempts: its runs
    hung (a user trial). Now the run fails (headwater.DaskUnavailable) and the CLI
    exits 3; the bridge exits 3 and the server dispatches its attempts again."""
    (tmp_path / "held_tasks.py").write_text(textwrap.dedent(HELD))

    def started() -> bool:
        return any(p.name.startswith("held-") for p in tmp_path.iterdir())

    def clear() -> None:
        for p in tmp_path.iterdir():
            if p.name.startswith("held-"):
                p.unlink()

    # an embedded run
    folder = tmp_path / "first"
    folder.mkdir()
    scheduler = dask_scheduler(processes, folder)
    dask_worker(processes, scheduler, "one")
    run: Callable[..., Proc] = processes
    embedded = run("run", str(tmp_path / "held_tasks.py:waits"), "--dask", scheduler)
    poll(started, "a task to start on the Dask worker")
    processes.procs[0].popen.send_signal(signal.SIGKILL)  # the scheduler
    assert embedded.wait(90) == 3, embedded.lines
    said = "\n".join(embedded.lines)
    assert "headwater.DaskUnavailable: the Dask client closed: the scheduler at" in said
    assert said.splitlines()[-1] == (
        f"headwater: error: the Dask client closed: the scheduler at {scheduler} went "
        "away (restart the scheduler and its workers, then run the flow again)"
    ), said
    assert "Traceback" not in said, said

    # a bridge worker
    clear()
    folder = tmp_path / "second"
    folder.mkdir()
    scheduler = dask_scheduler(processes, folder)
    dask_worker(processes, scheduler, "two")
    dask = processes.procs[-2]
    _, address = start_server(processes, str(tmp_path / "hw.db"))  # (any store will do)
    bridge = run(
        "worker",
        *("--server", address, "--module", "held_tasks", "--name", "bridge"),
        *("--dask", scheduler),
        worker="bridge",
    )
    bridge.wait_line("connected to")
    module: Any = load_file(str(tmp_path / "held_tasks.py"))
    with Client(address, token=TOKEN) as client:
        flow_run = client.run(module.waits)
        poll(started, "a task to start on the bridge's Dask worker")
        dask.popen.send_signal(signal.SIGKILL)
        assert bridge.wait(90) == 3, bridge.lines
        said = "\n".join(bridge.lines)
        assert "ClosedClientError" not in said and "Traceback" not in said, said
        assert said.splitlines()[-1].startswith(
            f"headwater: error: the Dask client closed: the scheduler at {scheduler} went away"
        ), said

        states: dict[str, str] = {}

        def given_back() -> bool:
            runs = client.get(flow_run.id, include_task_runs=True).task_runs
            states.update({t.key: f"{t.state.name} {t.message}" for t in runs})
            return all(t.state.name == "SCHEDULED" for t in runs if t.key != "held")

        try:
            poll(given_back, "the bridge's attempts to be given back")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {states}") from None


AGAIN = """
import os, time
from pathlib import Path
from headwater import flow, task

ROOT = Path(os.environ["HW_TEST_DIR"])

@task
def held(i: int) -> int:
    (ROOT / f"again-{i}-{os.getpid()}").write_text("started")
    deadline = time.monotonic() + 120
    while not (ROOT / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return i

@flow
def once() -> int:
    return held(1)
"""


@pytest.mark.timeout(240)
def test_an_attempt_sent_again_after_the_scheduler_restarted_reports_its_start(
    tmp_path: Path, processes: Cluster
) -> None:
    """The scheduler SIGKILLed and started again on its port within the client's
    reconnect time: the attempt sent again ran on a new worker, but the restarted
    scheduler knew nothing of the run's subscription to start reports, so the task run
    stayed SCHEDULED while it ran and its attempt took 0 s (a trial). The executor
    subscribes again once its client is on the new scheduler."""
    import socket
    import threading

    from headwater import DaskExecutor, TaskRunState

    (tmp_path / "again_tasks.py").write_text(textwrap.dedent(AGAIN))
    module: Any = load_file(str(tmp_path / "again_tasks.py"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    scheduler = f"tcp://127.0.0.1:{port}"

    def start_scheduler() -> Proc:
        proc = processes.spawn(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            "stderr",
        )
        proc.wait_line("Scheduler at")
        return proc

    first = start_scheduler()
    dask_worker(processes, scheduler, "before")
    running: list[int] = []  # the attempts seen RUNNING
    outcome: list[Any] = []

    def on_transition(record: Any, entry: Any) -> None:
        if entry.state is TaskRunState.RUNNING:
            running.append(entry.attempt)

    def drive() -> None:
        executor = DaskExecutor(scheduler, connect_timeout=60)
        outcome.append(module.once.run(executor=executor, on_transition=on_transition))

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    poll(lambda: running == [1], "the first attempt to run")
    first.popen.send_signal(signal.SIGKILL)
    first.popen.wait(BOUND)
    start_scheduler()
    dask_worker(processes, scheduler, "after")  # ("before" went with its scheduler)
    poll(lambda: 2 in running, "the attempt sent again to be reported running")
    (tmp_path / "release").write_text("go")
    driver.join(BOUND)
    (run,) = outcome
    assert run.state.name == "SUCCESS", run.message
    last = run.task_run("held").attempts[-1]
    assert last.number == 2 and last.duration is not None and last.duration > 0.001
