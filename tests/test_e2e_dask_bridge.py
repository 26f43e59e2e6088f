"""End to end: a Dask bridge worker (`headwater worker --dask`) next to a plain Python
worker, on a real `headwater server`.

The bridge runs its tasks on a Dask cluster the test starts (two worker processes,
only one declaring GPU), so results stay there: a downstream task on the same bridge
gets the future, one on the plain worker gets the value exported by the bridge.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _backends import BOUND, poll
from test_e2e_server import TOKEN, Proc, cluster, effects, start_server

from headwater import Client
from headwater._client import ServerError
from headwater._loader import load_file
from headwater.wire import FlowRunState

pytestmark = pytest.mark.e2e
__all__ = ["cluster"]  # the fixture, reused from test_e2e_server

BRIDGE_TASKS = """
import os
from pathlib import Path
from headwater import flow, task

LOG = Path(os.environ["HW_TEST_DIR"]) / "effects.log"

def effect(what):
    with LOG.open("a") as f:
        f.write(f"{what} {os.environ.get('HW_WORKER', '?')}\\n")

ON_DASK = {"dask": "yes"}

@task(labels=ON_DASK)
def make(n: int) -> list:
    effect("make")
    return list(range(n))

@task(labels=ON_DASK)
def double_all(xs: list) -> list:
    effect("double_all")
    return [2 * x for x in xs]

@task(labels=ON_DASK, resources={"GPU": 1})
def on_gpu(xs: list) -> str:
    from distributed import get_worker
    effect("on_gpu")
    return f"{get_worker().name}:{sum(xs)}"

@task(labels={"plain": "yes"})
def report(xs: list, gpu: str) -> dict:
    effect("report")
    return {"sum": sum(xs), "gpu": gpu}

@flow
def bridged(n: int = 5) -> dict:
    doubled = double_all(make(n))
    return report(doubled, on_gpu(doubled))

@flow
def in_cluster(n: int = 5) -> list:
    return double_all(make(n))

GATE = Path(os.environ["HW_TEST_DIR"]) / "gate"

@task(labels=ON_DASK)
def held_up(xs: list) -> int:
    import time
    effect("held_up")
    while not GATE.exists():  # until the test opens it
        time.sleep(0.05)
    return len(xs)

@task(labels={"plain": "yes"})
def summary(xs: list, n: int) -> str:
    effect("summary")
    return f"{sum(xs)}/{n}"

@flow
def across_restart(n: int = 4) -> str:
    rows = make(n)
    return summary(rows, held_up(rows))

@task(labels=ON_DASK, cache_key_fn=lambda inputs: f"rows-{sum(inputs['xs'])}")
def counted(xs: list) -> int:
    effect("counted")
    return len(xs)

@task(labels=ON_DASK, cache_key_fn=lambda inputs: f"n-{inputs['n']}")
def by_n(n: int) -> int:
    effect("by_n")
    return n

@flow
def keyed(n: int = 3) -> list:
    return [counted(make(n)), by_n(n)]

@task(labels=ON_DASK)
def a_lock(n: int):
    import threading
    return threading.Lock()

@flow
def unreadable(n: int = 1):
    return a_lock(n)
"""


@pytest.fixture
def dask_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real cluster: worker processes "cpu" and "gpu" (only "gpu" declares GPU=1)."""
    from distributed import Nanny, Scheduler, SpecCluster

    monkeypatch.setenv("HW_TEST_DIR", str(tmp_path))  # the Dask workers write effects
    monkeypatch.setenv("HW_WORKER", "bridge")
    quiet: dict[str, Any] = {"silence_logs": logging.CRITICAL}
    spec = SpecCluster(
        scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
        workers={
            "cpu": {"cls": Nanny, "options": {"nthreads": 1, **quiet}},
            "gpu": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1}, **quiet}},
        },
        silence_logs=logging.CRITICAL,
    )
    try:
        yield spec.scheduler_address
    finally:
        spec.close()


def bridge_and_plain(cluster: Callable[..., Proc], address: str, dask: str) -> tuple[Proc, Proc]:
    """The Dask bridge worker ("bridge", label dask=yes, on the cluster at ``dask``) and
    a plain worker ("plain", label plain=yes), both connected to ``address``."""
    bridge = cluster(
        "worker",
        *("--server", address, "--module", "bridge_tasks", "--name", "bridge"),
        *("--label", "dask=yes", "--dask", dask),
        worker="bridge",
    )
    bridge.wait_line("connected to")
    plain = cluster(
        "worker",
        *("--server", address, "--module", "bridge_tasks", "--name", "plain"),
        *("--label", "plain=yes"),
        worker="plain",
    )
    plain.wait_line("connected to")
    return bridge, plain


def test_bridge_passes_futures_exports_across_workers_and_honours_resources(
    tmp_path: Path, db: str, cluster: Callable[..., Proc], dask_cluster: str
) -> None:
    (tmp_path / "bridge_tasks.py").write_text(textwrap.dedent(BRIDGE_TASKS))
    _, address = start_server(cluster, db)
    bridge, _ = bridge_and_plain(cluster, address, dask_cluster)
    line = bridge.wait_line("connected to")
    assert "2 slots" in line and "Dask cluster" in line, line  # slots: the cluster's threads
    module = load_file(str(tmp_path / "bridge_tasks.py"))
    with Client(address, token=TOKEN) as client:
        run = client.run(module.bridged, {"n": 5})  # type: ignore[attr-defined]
        final = client.wait(run.id)
        assert final.state is FlowRunState.SUCCESS, final.message
        # The GPU task ran on the one Dask worker that declares GPU.
        assert final.result == {"sum": 20, "gpu": "gpu:20"}
        # Results still held in the cluster are exported when a client asks for them.
        assert client.task_result(run.id, "make") == [0, 1, 2, 3, 4]
        assert client.task_result(run.id, "double_all") == [0, 2, 4, 6, 8]
    ran = sorted(effects(tmp_path))
    assert ran == [
        ("double_all", "bridge"),
        ("make", "bridge"),
        ("on_gpu", "bridge"),
        ("report", "plain"),
    ]
    # make -> double_all -> on_gpu stayed in the cluster (futures passed on the same
    # bridge); the two inputs of the plain worker's report task were exported, and
    # make's result when the client asked (double_all's export was reused).
    exported = bridge.wait_lines("exported value", 3)  # logged just after it is sent
    assert len(exported) == 3, bridge.lines


def scheduler_keys(dask: Any) -> set[str]:
    """The keys whose values the Dask cluster keeps in memory (a value no client
    wants stays known to the scheduler without its data while a task that used it
    is in memory: Dask keeps the lineage)."""
    keys = dask.run_on_scheduler(
        lambda dask_scheduler: [k for k, t in dask_scheduler.tasks.items() if t.state == "memory"]
    )
    return {str(k) for k in keys}


def test_the_server_tells_the_bridge_to_let_go_of_a_runs_values(
    tmp_path: Path,
    db: str,
    cluster: Callable[..., Proc],
    dask_cluster: str,
    request: pytest.FixtureRequest,
) -> None:
    """Without releases the bridge kept every result future, so each run's values
    stayed in the Dask workers' memory as long as the bridge ran. With
    --dask-release-after 0 a finished run's task results go at once, its result when
    the run is pruned, and everything when the bridge meets a restarted server."""
    (tmp_path / "bridge_tasks.py").write_text(textwrap.dedent(BRIDGE_TASKS))
    server, address = start_server(cluster, db, 0, "--dask-release-after", "0")
    port = int(address.rsplit(":", 1)[1])
    bridge = cluster(
        "worker",
        *("--server", address, "--module", "bridge_tasks", "--name", "bridge"),
        *("--label", "dask=yes", "--dask", dask_cluster),
        worker="bridge",
    )
    bridge.wait_line("connected to")
    module = load_file(str(tmp_path / "bridge_tasks.py"))
    from distributed import Client as DaskClient

    dask = DaskClient(dask_cluster, timeout=BOUND)
    request.addfinalizer(dask.close)
    with Client(address, token=TOKEN) as client:
        run = client.run(module.in_cluster, {"n": 4})  # type: ignore[attr-defined]
        final = client.wait(run.id)
        assert final.state is FlowRunState.SUCCESS, final.message

        def held(task: str) -> bool:
            return any(k.startswith(f"{task}-{run.id}/") for k in scheduler_keys(dask))

        poll(lambda: not held("make"), what="make's result leaving the cluster's memory")
        assert held("double_all"), "the run's result stays until the run is pruned"
        assert client.wait(run.id).result == [0, 2, 4, 6]
        with pytest.raises(ServerError, match="no longer available") as caught:
            client.task_result(run.id, "make")
        assert "--dask-release-after" in str(caught.value)
    # A restarted server has no record of the values the bridge held: it tells the
    # bridge to let go of all of them when it comes back.
    server.kill()
    start_server(cluster, db, port, "--dask-release-after", "0")
    bridge.wait_line("reconnected to")
    poll(lambda: not held("double_all"), what="the result leaving the cluster after a restart")


def test_a_bridge_value_dask_cannot_serialise_is_said_so_when_read(
    tmp_path: Path, db: str, cluster: Callable[..., Proc], dask_cluster: str
) -> None:
    """A result the cluster holds but cannot serialise (a lock): reading it says why,
    in the bridge's own words; it said the value was "no longer available" because its
    bridge was gone or the server released it (--dask-release-after), a user trial."""
    (tmp_path / "bridge_tasks.py").write_text(textwrap.dedent(BRIDGE_TASKS))
    _, address = start_server(cluster, db)
    bridge_and_plain(cluster, address, dask_cluster)
    module = load_file(str(tmp_path / "bridge_tasks.py"))
    with Client(address, token=TOKEN) as client:
        run = client.run(module.unreadable)  # type: ignore[attr-defined]
        final = client.wait(run.id)
        assert final.state is FlowRunState.SUCCESS, final.message  # (see the note)
        for read in (lambda: client.task_result(run.id, "a_lock"), lambda: final.result):
            with pytest.raises(ServerError) as caught:
                read()
            said = str(caught.value)
            assert "is held in a Dask cluster and cannot be read out of it: the Dask " in said
            assert "bridge worker 'bridge' could not export it: " in said
            assert "pickle" in said and "lock" in said, said
            assert "no longer available" not in said and "--dask-release-after" not in said


def test_a_run_passing_bridge_values_survives_a_server_restart(
    tmp_path: Path, db: str, cluster: Callable[..., Proc], dask_cluster: str
) -> None:
    """The server is SIGKILLed while a run has a value in the Dask cluster that a task
    on another worker still needs. Each Dask ref is stored with its holder, so the
    restarted server knows who holds it, waits for the bridge to reconnect and has it
    exported: the run completes, and nothing runs twice. Before, ownership was in the
    server's memory only, and the consumer failed with headwater.ValueUnavailable."""
    (tmp_path / "bridge_tasks.py").write_text(textwrap.dedent(BRIDGE_TASKS))
    server, address = start_server(cluster, db)
    port = int(address.rsplit(":", 1)[1])
    bridge, _ = bridge_and_plain(cluster, address, dask_cluster)
    module = load_file(str(tmp_path / "bridge_tasks.py"))
    with Client(address, token=TOKEN) as client:
        run = client.run(module.across_restart, {"n": 4})  # type: ignore[attr-defined]
    poll(lambda: ("held_up", "bridge") in effects(tmp_path), what="held_up to start")
    server.kill()
    start_server(cluster, db, port)
    bridge.wait_line("reconnected to")
    (tmp_path / "gate").write_text("open")
    with Client(address, token=TOKEN) as client:
        final = client.wait(run.id)
        assert final.state is FlowRunState.SUCCESS, final.message
        assert final.result == "6/4"
    assert sorted(effects(tmp_path)) == [
        ("held_up", "bridge"),
        ("make", "bridge"),
        ("summary", "plain"),
    ]


def test_a_bridge_task_with_a_cache_key_fn_hits_the_cache(
    tmp_path: Path, cluster: Callable[..., Proc], dask_cluster: str
) -> None:
    """On a bridge a task with a cache_key_fn ran again on every run: the bridge never
    computed the key (a user trial; `cache_for` alone did hit). Now it does, in the
    cluster when an input lives there (`counted` gets `make`'s future)."""
    (tmp_path / "bridge_tasks.py").write_text(textwrap.dedent(BRIDGE_TASKS))
    _, address = start_server(cluster, str(tmp_path / "hw.db"))  # (any store will do)
    bridge = cluster(
        "worker",
        *("--server", address, "--module", "bridge_tasks", "--name", "bridge"),
        *("--label", "dask=yes", "--dask", dask_cluster),
        worker="bridge",
    )
    bridge.wait_line("connected to")
    module = load_file(str(tmp_path / "bridge_tasks.py"))
    with Client(address, token=TOKEN) as client:
        runs = []
        for _ in range(2):
            run = client.wait(client.run(module.keyed, {"n": 3}).id)  # type: ignore[attr-defined]
            assert run.state is FlowRunState.SUCCESS, run.message
            assert run.result == [3, 3]
            runs.append({t.key: t.state.name for t in run.task_runs})
    assert runs[0] == {"make": "SUCCESS", "counted": "SUCCESS", "by_n": "SUCCESS"}
    assert runs[1] == {"make": "SUCCESS", "counted": "CACHED", "by_n": "CACHED"}
    assert sorted(what for what, _ in effects(tmp_path)) == ["by_n", "counted", "make", "make"]
