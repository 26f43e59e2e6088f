"""A worker stops within its grace period on SIGTERM, whatever its task is doing, and
the server runs the abandoned attempt again (docs/worker-protocol.md §16).

Real processes: a `headwater server`, `headwater worker --grace 2s` subprocesses, and
tasks that get stuck the ways tasks do: sleeping in C code, spinning in Python,
swallowing the interruption, or keeping the interpreter from exiting. Each task is
stuck on its first attempt only (a marker file says so), so the attempt the server
dispatches again, to a second worker, finishes and the run succeeds.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import Cluster, poll, start_server, start_worker

from headwater import Client

TASKS = '''
import os, threading, time
from pathlib import Path
from headwater import flow, task

def first_time(name):
    """True the first time a task of this name starts (in any worker)."""
    marker = Path(os.environ["HW_TEST_DIR"]) / f"{name}.started"
    if marker.exists():
        return False
    marker.touch()
    return True

@task
def c_sleep():
    if first_time("c_sleep"):
        time.sleep(3600)  # in C, without the GIL: no bytecode to interrupt
    return "c_sleep"

@task
def py_spin():
    if first_time("py_spin"):
        while True:  # pure Python: interrupted at its next bytecode
            pass
    return "py_spin"

@task
def swallow():
    if first_time("swallow"):
        while True:  # catches the interruption, and everything else
            try:
                time.sleep(0.01)
            except BaseException:
                pass
    return "swallow"

@task
def keeps_process():
    marker = Path(os.environ["HW_TEST_DIR"]) / "keeps_process.started"
    if not marker.exists():
        # A thread that is not a daemon (as a task thread's would be by default): the
        # interpreter waits for it before exiting. Started before the marker says the
        # task started: a stop that came in between would find no such thread, and
        # the process would end before the test's second signal.
        threading.Thread(
            target=time.sleep, args=(3600,), name="user-thread", daemon=False
        ).start()
        marker.touch()
        time.sleep(3600)
    return "keeps_process"

@task
def long_haul():
    here = Path(os.environ["HW_TEST_DIR"])
    with (here / "long_haul.starts").open("a") as starts:
        starts.write("started\\n")
    while not (here / "finish").exists():  # until the test says so
        time.sleep(0.01)
    return "hauled"

@flow
def haul() -> str:
    return long_haul()

@flow
def stuck(which: str) -> str:
    return {"c_sleep": c_sleep, "py_spin": py_spin, "swallow": swallow,
            "keeps_process": keeps_process}[which]()
'''


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Cluster, str, Any]]:
    (tmp_path / "stuck_tasks.py").write_text(textwrap.dedent(TASKS))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path]),
        "HW_TEST_DIR": str(tmp_path),
    }
    env.pop("HEADWATER_TOKEN", None)
    start = Cluster(env)
    sys.path.insert(0, str(tmp_path))
    try:
        module = importlib.import_module("stuck_tasks")
        _, address = start_server(start, tmp_path / "hw.db")
        yield start, address, module
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("stuck_tasks", None)
        start.stop()


@pytest.mark.e2e
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("which", "status"),
    [("c_sleep", 0), ("py_spin", 0), ("swallow", 0), ("keeps_process", 1)],
)
def test_sigterm_stops_a_worker_within_grace_and_its_attempt_runs_again(
    cluster: tuple[Cluster, str, Any], tmp_path: Path, which: str, status: int
) -> None:
    start, address, module = cluster
    # The grace must run out only where a thread keeps the process alive (status 1);
    # elsewhere it only bounds a hang: a worker that stops on its own is never ended by
    # it, however slowly a loaded machine stops it (the watcher ends one still alive
    # 0.5 s before the grace: with 2 s, a stop slower than 1.5 s exited 1).
    grace = "2s" if status == 1 else "30s"
    first = start_worker(start, address, "first", "--grace", grace, module="stuck_tasks")
    with Client(address) as client:
        run_id = client.run(module.stuck, {"which": which}).id
        marker = tmp_path / f"{which}.started"
        poll(marker.exists, f"the first attempt of {which} to start")  # now it is stuck
        first.popen.send_signal(signal.SIGTERM)
        code = first.wait()  # ended by the worker, not by this bound
        stderr = "\n".join(first.lines)
        assert code == status, stderr
        assert "SIGTERM; stopping" in stderr
        if status == 1:
            # The grace ran out (a thread kept the interpreter alive): the worker
            # wrote every thread's stack (naming the one that waits) and ended.
            assert "still running as its 2s grace after SIGTERM ends" in stderr, stderr
            assert "in _shutdown" in stderr and "Timeout (" not in stderr, stderr
        start_worker(start, address, "second", module="stuck_tasks")
        run = client.wait(run_id)
        assert run.state.name == "SUCCESS", run
        assert run.result == which
        (task_run,) = client.get(run_id, include_task_runs=True).task_runs
        assert task_run.attempts == 2  # the abandoned attempt, then the one that ran


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_second_sigterm_exits_at_once(cluster: tuple[Cluster, str, Any], tmp_path: Path) -> None:
    start, address, module = cluster
    first = start_worker(start, address, "first", "--grace", "60s", module="stuck_tasks")
    with Client(address) as client:
        client.run(module.stuck, {"which": "keeps_process"})
        poll((tmp_path / "keeps_process.started").exists, "the task to start")
    first.popen.send_signal(signal.SIGTERM)
    first.wait_line("SIGTERM; stopping")
    first.popen.send_signal(signal.SIGTERM)
    code = first.wait()  # long before the 60 s grace
    assert code == 128 + signal.SIGTERM, first.lines
    assert "SIGTERM again; exiting now" in "\n".join(first.lines)


def test_a_worker_that_ends_on_its_own_gives_ctrl_c_back_to_the_process() -> None:
    """After ``headwater worker`` run in-process ends without a signal (an application
    or a test run that goes on), SIGINT raises KeyboardInterrupt again: the handlers
    from before are restored, not SIG_DFL (which would kill the process on Ctrl-C and
    make ``_thread.interrupt_main`` do nothing)."""
    import _thread
    import signal
    import time

    from headwater._worker_stop import StopOnSignal

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    stopper = StopOnSignal(lambda: None, grace=5.0)
    stopper.install()
    stopper.uninstall()
    assert {s: signal.getsignal(s) for s in before} == before
    with pytest.raises(KeyboardInterrupt):
        _thread.interrupt_main()
        time.sleep(1)  # the interrupt is raised at the next bytecode boundary


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_rolling_restarts_of_the_workers_never_fail_a_long_task(
    cluster: tuple[Cluster, str, Any], tmp_path: Path
) -> None:
    """Four rolling restarts (a new worker up, then SIGTERM to the old one) while one
    long task runs: each stopping worker says so and gives the attempt back, which
    counts no loss. The fourth restart failed the task with headwater.WorkerLost (a
    task run may be lost 3 times), although no worker had crashed."""
    start, address, module = cluster
    starts = tmp_path / "long_haul.starts"

    def started() -> int:
        return len(starts.read_text().splitlines()) if starts.exists() else 0

    # The grace only bounds a hang: each worker stops on its own, however slowly a
    # loaded machine stops it (the watcher would end one still alive as the grace
    # nears its end, with status 1).
    current = start_worker(start, address, "w0", "--grace", "30s", module="stuck_tasks")
    with Client(address) as client:
        run_id = client.run(module.haul).id
        for restart in range(1, 5):
            poll(lambda n=restart: started() == n, f"attempt {restart} to start")
            successor = start_worker(
                start, address, f"w{restart}", "--grace", "30s", module="stuck_tasks"
            )
            current.popen.send_signal(signal.SIGTERM)
            assert current.wait() == 0, current.lines
            current = successor
        poll(lambda: started() == 5, "the fifth attempt to start")
        (tmp_path / "finish").touch()
        run = client.wait(run_id)
        assert run.state.name == "SUCCESS", run.message
        assert run.result == "hauled"
        (task_run,) = client.get(run_id, include_task_runs=True).task_runs
        assert task_run.attempts == 5  # four given back, one that finished
        assert task_run.failure is None or "gave" in task_run.failure.message
