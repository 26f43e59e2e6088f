"""End to end: a real `headwater server` and real `headwater worker` subprocesses.

Side effects are counted in files so the tests can assert what ran where and how
often, including across a worker SIGKILL and a server SIGKILL + restart.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import BOUND, Cluster, Proc, poll, start_server, start_worker

from headwater import Client, ServerError
from headwater._loader import load_file
from headwater.wire import FlowRunState

pytestmark = pytest.mark.e2e

TOKEN = "e2e-token"

TASKS = """
import os, time
from pathlib import Path
from headwater import flow, task, unmapped

LOG = Path(os.environ["HW_TEST_DIR"]) / "effects.log"

def effect(what):
    with LOG.open("a") as f:
        f.write(f"{what} {os.environ.get('HW_WORKER', '?')}\\n")

def wait_for_release(name):
    release = Path(os.environ["HW_TEST_DIR"]) / name
    deadline = time.monotonic() + 60
    while not release.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} never released")
        time.sleep(0.02)

@task
def extract(n: int) -> list[int]:
    effect("extract")
    return list(range(n))

@task(retries=1)
def transform(x: int, factor: int) -> int:
    effect(f"transform-{x}")
    return x * factor

@task
def load(values: list[int]) -> int:
    effect("load")
    return sum(values)

@task(trigger="all_finished")
def cleanup() -> str:
    effect("cleanup")
    return "ok"

@flow
def etl(n: int = 6, factor: int = 10) -> int:
    total = load(transform.map(extract(n), unmapped(factor)))
    cleanup(wait_for=[total])
    return total

@task
def table(n: int) -> dict:
    return {"name": "t", "rows": [{"id": i} for i in range(n)]}

@task
def row_id(row: dict) -> int:
    return row["id"] * 2

@flow
def parts(n: int = 4) -> dict:
    t = table(n)
    return {"ids": row_id.map(t["rows"]), "name": t["name"], "second": row_id(t["rows"][1])}

@task(cache_key_fn=lambda inputs: f"day={inputs['day']}")
def daily_report(day: str, noise: int) -> str:
    effect(f"report-{day}")
    return f"report for {day}"

@flow
def reports(day: str = "2026-11-25", noise: int = 0) -> str:
    return daily_report(day, noise)

@task(labels={"gpu": "true"})
def train(x: int) -> str:
    effect("train")
    return f"trained {x}"

@flow
def affinity() -> str:
    return train(extract(1)[0])

@task
def blocking(x: int) -> int:
    effect("blocking-start")
    wait_for_release("release")
    effect("blocking-done")
    return x + 1

@flow
def slow(n: int = 1) -> int:
    return blocking(load(extract(n)))

@task(labels={"role": "producer"})
def produce(mb: int):
    import numpy as np
    effect("produce")
    return np.arange(mb * (1 << 20) // 8, dtype=np.int64)

@task(labels={"role": "consumer"})
def consume(array) -> list:
    effect("consume")
    return [int(array.size), int(array[-1]), int(array.nbytes)]

@flow
def big(mb: int = 300) -> list:
    return consume(produce(mb))

@task
def tick(i: int) -> int:
    if i % 1000 == 0:
        effect("tick")
    return i

@task
def tally(values: list[int]) -> int:
    return len(values)

@flow
def wide(n: int = 12_000) -> int:
    return tally([tick(i) for i in range(n)])

@flow
def over_items(items: list[int], factor: int = 10) -> int:
    return load(transform.map(items, unmapped(factor)))

@flow
def summed(values: list[int]) -> int:
    return load(values)

@flow
def over_defaults(items: tuple[int, ...] = (1, 2), factor: int = 10) -> int:
    return load(transform.map(items, unmapped(factor)))

class Labelled:  # what a pandas Series is told by: [i] takes a label, .iloc[i] a position

    def __init__(self, values, labels):
        self.values, self.labels = list(values), list(labels)

    def __len__(self):
        return len(self.values)

    def __getitem__(self, label):
        return self.values[self.labels.index(label)]

    @property
    def iloc(self):
        return self.values

class Table(Labelled):  # what a pandas DataFrame is told by: columns and iloc

    columns = ("a", "b", "c")

@flow
def row_ids(n: int = 3) -> list:
    return row_id.map(table(n)["rows"])

@task
def scalar_array():
    import numpy as np
    return np.array(5)

@flow
def over_scalar() -> list:
    return same.map(scalar_array())

@task
def labelled(table: bool = False):
    kind = Table if table else Labelled
    return kind([10, 20, 30], [2, 1, 0])

@task
def same(x):
    return x

@flow
def by_position(table: bool = False) -> list:
    return same.map(labelled(table))

@task
def blob(kb: int, seed: int) -> bytes:
    return bytes([seed]) * (kb * 1024)

@task(cache_for=3600)
def measure(data: bytes) -> int:
    effect(f"measure-{data[0]}")
    return len(data) + data[0]

@flow
def measured(kb: int = 1200, seed: int = 1) -> int:
    return measure(blob(kb, seed))

class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("str exploded")

@task
def odd() -> int:
    raise Unprintable()

@flow
def unprintable() -> int:
    return odd()
"""


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    (tmp_path / "e2e_tasks.py").write_text(textwrap.dedent(TASKS))
    monkeypatch.setenv("HW_TEST_DIR", str(tmp_path))  # the test imports the module too
    env = {
        **os.environ,
        "HW_TEST_DIR": str(tmp_path),
        "HEADWATER_TOKEN": TOKEN,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    procs = Cluster(env)
    yield procs
    procs.stop()


def effects(tmp_path: Path) -> list[tuple[str, str]]:
    log = tmp_path / "effects.log"
    if not log.exists():
        return []
    return [tuple(line.split(" ", 1)) for line in log.read_text().splitlines()]  # type: ignore[misc]


def flows(tmp_path: Path) -> object:
    return load_file(str(tmp_path / "e2e_tasks.py"))


def two_workers(cluster: Callable[..., Proc], db: str, slots: int) -> str:
    """A server on ``db`` and two workers (w1, w2) of ``slots`` slots; its address."""
    _, address = start_server(cluster, db)
    for name in ("w1", "w2"):
        start_worker(cluster, address, name, "--slots", str(slots))
    return address


def test_etl_through_the_server_with_two_workers(
    tmp_path: Path, db: str, cluster: Callable[..., Proc]
) -> None:
    address = two_workers(cluster, db, slots=2)
    module = flows(tmp_path)
    with Client(address, token=TOKEN) as client:
        run = client.run(module.etl, {"n": 6})  # type: ignore[attr-defined]
        final = client.wait(run.id)
        assert final.state is FlowRunState.SUCCESS, final.message
        assert final.result == sum(x * 10 for x in range(6))
        assert client.task_result(run.id, "transform") == [x * 10 for x in range(6)]
        # Mapping over a part of a result: the worker splits result["rows"] only.
        run = client.run(module.parts, {"n": 4})  # type: ignore[attr-defined]
        final = client.wait(run.id)
        assert final.state is FlowRunState.SUCCESS, final.message
        assert final.result == {"ids": [0, 2, 4, 6], "name": "t", "second": 2}
        # cache_key_fn runs on the worker; the server looks the key up in its store.
        states = []
        for noise in (1, 2):  # different inputs, same key: the second run is a cache hit
            run = client.run(module.reports, {"noise": noise})  # type: ignore[attr-defined]
            final = client.wait(run.id)
            assert final.state is FlowRunState.SUCCESS, final.message
            assert final.result == "report for 2026-11-25"
            states.append({t.key: t.state.name for t in final.task_runs}["daily_report"])
        assert states == ["SUCCESS", "CACHED"]
        run = client.run(module.reports, {"day": "2026-11-26"})  # type: ignore[attr-defined]
        assert client.wait(run.id).result == "report for 2026-11-26"
    ran = effects(tmp_path)
    assert sorted(what for what, _ in ran) == sorted(
        [
            "extract",
            "load",
            "cleanup",
            *[f"transform-{x}" for x in range(6)],
            "report-2026-11-25",
            "report-2026-11-26",
        ]
    )
    assert {worker for _, worker in ran} <= {"w1", "w2"}


def test_a_worker_maps_over_results_as_the_embedded_host_does(
    tmp_path: Path, db: str, cluster: Callable[..., Proc]
) -> None:
    """A worker splits a result to map over as the embedded host maps over it: a
    pandas Series by position, not by its labels (a Series indexed 2, 1, 0 paired the
    children with its elements reversed; one indexed by ids failed with KeyError), and
    a DataFrame not at all (its [i] picks a column: the children got its columns and
    the run succeeded with other results than embedded), a user trial."""
    _, address = start_server(cluster, db)
    start_worker(cluster, address, "w1")
    module = flows(tmp_path)
    embedded = module.by_position.run()  # type: ignore[attr-defined]
    assert embedded.result == [10, 20, 30]
    with Client(address, token=TOKEN) as client:
        final = client.wait(client.run(module.by_position).id, timeout=BOUND)  # type: ignore[attr-defined]
        assert final.state is FlowRunState.SUCCESS, final.message
        assert final.result == [10, 20, 30]
        run = client.run(module.by_position, {"table": True})  # type: ignore[attr-defined]
        final = client.wait(run.id, timeout=BOUND)
    table = module.by_position.run(table=True)  # type: ignore[attr-defined]
    assert table.state is FlowRunState.FAILED and final.state is FlowRunState.FAILED
    (embedded_failure,) = table.failures
    assert embedded_failure.failure is not None
    assert "Table has no elements to map over" in embedded_failure.failure.message
    (failed,) = final.failures
    assert failed.key == "same" and failed.failure is not None
    assert "cannot map over argument 'x': the result has no elements" in failed.failure.message


def test_mapping_over_an_empty_part_or_a_scalar_array_is_as_embedded(
    tmp_path: Path, db: str, cluster: Callable[..., Proc]
) -> None:
    """An empty part of a result (``table(0)["rows"]``) maps to no children, as
    embedded (the server said it had no elements to map over); a 0-d numpy array has
    none, said as for any value without elements (the producing task failed, with
    "len() of unsized object")."""
    _, address = start_server(cluster, db)
    start_worker(cluster, address, "w1")
    module = flows(tmp_path)
    with Client(address, token=TOKEN) as client:
        for n in (0, 2):
            final = client.wait(client.run(module.row_ids, {"n": n}).id, timeout=BOUND)  # type: ignore[attr-defined]
            assert final.state is FlowRunState.SUCCESS, final.message
            assert final.result == [i * 2 for i in range(n)] == module.row_ids(n=n)  # type: ignore[attr-defined]
        final = client.wait(client.run(module.over_scalar).id, timeout=BOUND)  # type: ignore[attr-defined]
    embedded = module.over_scalar.run()  # type: ignore[attr-defined]
    for run in (final, embedded):
        assert run.state is FlowRunState.FAILED
        (failed,) = run.failures
        assert failed.key == "same" and failed.failure is not None, failed
        assert "has no elements to map over" in failed.failure.message, failed.failure.message


def test_a_cached_task_whose_input_travels_by_reference_hits_its_cache(
    tmp_path: Path, db: str, cluster: Callable[..., Proc]
) -> None:
    """An input of more than the inline limit (1 MiB) travels as a reference to a
    payload uploaded again by every run: the server keys the cache by the payload's
    content, so the second run with the same bytes is a hit (it never hit: the key
    held the upload's id), and other bytes are a miss."""
    _, address = start_server(cluster, db)
    start_worker(cluster, address, "w1")
    module = flows(tmp_path)
    states = []
    with Client(address, token=TOKEN) as client:
        for seed in (1, 1, 2):
            run = client.run(module.measured, {"seed": seed})  # type: ignore[attr-defined]
            final = client.wait(run.id, timeout=BOUND)
            assert final.state is FlowRunState.SUCCESS, final.message
            assert final.result == 1200 * 1024 + seed
            states.append({t.key: t.state.name for t in final.task_runs}["measure"])
    assert states == ["SUCCESS", "CACHED", "SUCCESS"]
    assert sorted(what for what, _ in effects(tmp_path)) == ["measure-1", "measure-2"]


def test_an_exception_whose_str_raises_fails_the_run_on_the_server(
    tmp_path: Path, db: str, cluster: Callable[..., Proc]
) -> None:
    """The worker reports a task's exception whose ``__str__`` raises as a failure
    (its run hung RUNNING with the worker's slot taken: the thread describing the
    failure died on it)."""
    _, address = start_server(cluster, db)
    start_worker(cluster, address, "w1")
    module = flows(tmp_path)
    with Client(address, token=TOKEN) as client:
        final = client.wait(client.run(module.unprintable).id, timeout=BOUND)  # type: ignore[attr-defined]
        assert final.state is FlowRunState.FAILED
        (failed,) = final.failures
        assert failed.failure is not None
        assert failed.failure.type == "e2e_tasks.Unprintable"
        assert failed.failure.message == "<exception str() failed>"
        # The worker's slot is free again: the next run is served.
        after = client.wait(client.run(module.etl, {"n": 2}).id, timeout=BOUND)  # type: ignore[attr-defined]
        assert after.state is FlowRunState.SUCCESS, after.message


def test_a_flow_maps_over_a_list_parameter_on_the_server(
    tmp_path: Path, db: str, cluster: Callable[..., Proc]
) -> None:
    """A task mapped over a flow's list parameter runs once per element on the server,
    whether the run is started with the Flow object or by name (the client sends a
    list split into its elements; the server does not decode values)."""
    address = two_workers(cluster, db, slots=2)
    module = flows(tmp_path)
    with Client(address, token=TOKEN) as client:
        run = client.run(module.over_items, {"items": [1, 2, 3]})  # type: ignore[attr-defined]
        final = client.wait(run.id)
        assert final.state is FlowRunState.SUCCESS, final.message
        assert final.result == 60
        client.deploy(module.over_items)  # type: ignore[attr-defined]
        run = client.run("over_items", {"items": (4, 5), "factor": 2})
        final = client.wait(run.id)
        assert final.state is FlowRunState.SUCCESS, final.message
        assert final.result == 18
        assert client.task_result(run.id, "transform") == [8, 10]
        # A long list nothing maps over, by name: sent whole, as before (with its
        # elements, 1.1 MB in all, it would be over the server's max_parameter_bytes).
        client.deploy(module.summed)  # type: ignore[attr-defined]
        values = list(range(10**8, 10**8 + 29_000))
        final = client.wait(client.run("summed", {"values": values}).id)
        assert final.state is FlowRunState.SUCCESS, final.message
        assert final.result == sum(values)
        # Not given: its default (a pickled tuple in the graph) goes with its elements.
        final = client.wait(client.run(module.over_defaults).id)  # type: ignore[attr-defined]
        assert final.state is FlowRunState.SUCCESS, final.message
        assert final.result == 30
        # By name, the client cannot send the default: the run is refused, saying why,
        # rather than failing at the map.
        client.deploy(module.over_defaults)  # type: ignore[attr-defined]
        with pytest.raises(ServerError, match="a task maps over parameter 'items', so the run"):
            client.run("over_defaults")


def test_a_task_that_needs_a_label_runs_only_on_a_labelled_worker(
    tmp_path: Path, db: str, cluster: Callable[..., Proc]
) -> None:
    _, address = start_server(cluster, db)
    start_worker(cluster, address, "cpu", "--slots", "4")
    module = flows(tmp_path)
    with Client(address, token=TOKEN) as client:
        run = client.run(module.affinity)  # type: ignore[attr-defined]
        poll(lambda: ("extract", "cpu") in effects(tmp_path), "extract to run")

        def train_state() -> str | None:
            shown = client.get(run.id, include_task_runs=True)
            return {t.key: t.state.name for t in shown.task_runs}.get("train")

        # (train is stored once extract's result is committed: wait for that)
        poll(lambda: train_state() is not None, "train to be scheduled")
        assert train_state() == "SCHEDULED"  # no worker has the label: it waits
        start_worker(cluster, address, "gpu", "--label", "gpu=true")
        final = client.wait(run.id)
        assert final.state is FlowRunState.SUCCESS and final.result == "trained 0"
        workers = {t.key: t.worker for t in final.task_runs}
        assert workers == {"extract": "cpu", "train": "gpu"}  # TaskRun.worker_id: its name
    assert ("train", "gpu") in effects(tmp_path)
    assert ("train", "cpu") not in effects(tmp_path)


def test_worker_killed_mid_task_is_replaced_and_the_flow_succeeds(
    tmp_path: Path, db: str, cluster: Callable[..., Proc]
) -> None:
    _, address = start_server(cluster, db)
    doomed = start_worker(cluster, address, "doomed")
    module = flows(tmp_path)
    with Client(address, token=TOKEN) as client:
        run = client.run(module.slow, {"n": 3})  # type: ignore[attr-defined]
        poll(lambda: ("blocking-start", "doomed") in effects(tmp_path), "the task to start")
        doomed.kill()
        start_worker(cluster, address, "rescuer")
        poll(lambda: ("blocking-start", "rescuer") in effects(tmp_path), "re-dispatch")
        (tmp_path / "release").write_text("go")
        final = client.wait(run.id)
        assert final.state is FlowRunState.SUCCESS and final.result == 4
        attempts = {t.key: t.attempts for t in final.task_runs}
        assert attempts["blocking"] == 2 and attempts["extract"] == 1
    done = [w for what, w in effects(tmp_path) if what == "blocking-done"]
    assert done == ["rescuer"]


def _slow_run_under_way(
    tmp_path: Path, db: str, cluster: Callable[..., Proc]
) -> tuple[Proc, str, str, Any]:
    """A server and worker w1, and a run of ``slow`` whose blocking task has started
    there: (server, address, port, run)."""
    server, address = start_server(cluster, db)
    port = address.rsplit(":", 1)[1]
    start_worker(cluster, address, "w1")
    module = flows(tmp_path)
    with Client(address, token=TOKEN) as client:
        run = client.run(module.slow, {"n": 2})  # type: ignore[attr-defined]
    poll(lambda: ("blocking-start", "w1") in effects(tmp_path), "the blocking task to start")
    return server, address, port, run


def test_server_killed_mid_run_resumes_without_rerunning_finished_tasks(
    tmp_path: Path, db: str, cluster: Callable[..., Proc]
) -> None:
    server, address, port, run = _slow_run_under_way(tmp_path, db, cluster)
    # A client waiting for the run keeps waiting across the restart (it watches again),
    # and so does `headwater runs watch` (it exited 1 once the server had been away
    # for 2 s: its look at why task runs wait did not ride out the restart).
    watcher = Client(address, token=TOKEN)
    pool = concurrent.futures.ThreadPoolExecutor(4)
    waited = pool.submit(watcher.wait, run.id)
    # So does one following the run's logs (it ended "cannot reach the server": a user
    # trial).
    follower = Client(address, token=TOKEN)
    follower.get(run.id)  # (reached)
    followed = pool.submit(lambda: list(follower.iter_logs(run.id, follow=True)))
    env = {**os.environ, "HEADWATER_TOKEN": TOKEN}
    cli = pool.submit(headwater_cli, "runs", "watch", run.id, "--server", address, env=env)
    # A client that reached the server before waits out its restart in any call (a
    # user trial: `get` right after a restart failed, "cannot reach the server").
    getter = Client(address, token=TOKEN)
    assert getter.get(run.id).state is FlowRunState.RUNNING
    time.sleep(0.5)  # the CLI is watching
    server.kill()
    got = pool.submit(getter.get, run.id)
    time.sleep(3.0)  # away longer than the CLI's 2 s without a change
    server, address = start_server(cluster, db, int(port))
    # It says what it resumed: the run, with its one attempt in flight either sent
    # again or awaited from the worker that holds it.
    resumed = server.wait_line("headwater server resumed")
    found = re.search(r"resumed 1 unfinished flow run in [\d.]+s: (\d+) .*, (\d+) held", resumed)
    assert found is not None and int(found[1]) + int(found[2]) == 1, resumed
    (tmp_path / "release").write_text("go")
    try:
        assert waited.result(timeout=BOUND).state is FlowRunState.SUCCESS
        assert got.result(timeout=BOUND).id == run.id
        watched = cli.result(timeout=BOUND)
        assert watched.returncode == 0, watched.stderr
        assert "SUCCESS" in watched.stderr.splitlines()[-1], watched.stderr
        logged = followed.result(timeout=BOUND)
    finally:
        pool.shutdown(wait=False)
        watcher.close()
        getter.close()
        follower.close()
    with Client(address, token=TOKEN) as client:
        poll(lambda: client.get(run.id).state.is_terminal, "the resumed run to finish")
        final = client.get(run.id, include_task_runs=True)
        assert final.state is FlowRunState.SUCCESS, final.message
        assert final.result == 2
        assert logged == client.logs(run.id)  # every record, each once
    ran = [what for what, _ in effects(tmp_path)]
    assert ran.count("extract") == 1 and ran.count("load") == 1
    assert ran.count("blocking-done") == 1


def test_a_server_stopped_gracefully_keeps_the_attempts_workers_hold(
    tmp_path: Path, db: str, cluster: Callable[..., Proc]
) -> None:
    """SIGTERM stops the server cleanly, closing the workers' streams: that is no loss.
    The attempt the worker runs is awaited by the restarted server, as after a crash,
    and its result taken. It was counted lost at the stop, and run a second time."""
    server, address, port, run = _slow_run_under_way(tmp_path, db, cluster)
    server.stop()  # SIGTERM, and it exits
    server, address = start_server(cluster, db, int(port))
    resumed = server.wait_line("headwater server resumed")
    assert re.search(r": 0 attempts sent again .*, 1 held by workers", resumed), resumed
    (tmp_path / "release").write_text("go")
    with Client(address, token=TOKEN) as client:
        poll(lambda: client.get(run.id).state.is_terminal, "the resumed run to finish")
        final = client.get(run.id, include_task_runs=True)
        assert final.state is FlowRunState.SUCCESS, final.message
        assert {t.key: t.attempts for t in final.task_runs}["blocking"] == 1
        # It still names the worker that ran it (it was stored without one).
        assert {t.key: t.worker for t in final.task_runs}["blocking"] == "w1"
    ran = [what for what, _ in effects(tmp_path)]
    assert ran.count("blocking-start") == 1 and ran.count("blocking-done") == 1


def headwater_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headwater._cli", *args],
        capture_output=True,
        text=True,
        timeout=BOUND,
        env=env,
        check=False,
    )


def test_the_cli_runs_flows_on_a_server_and_inspects_runs(
    tmp_path: Path, db: str, cluster: Callable[..., Proc]
) -> None:
    _, address = start_server(cluster, db)
    script = str(tmp_path / "e2e_tasks.py")
    # The worker takes its file as `headwater run` does, without --module (a newcomer's
    # `headwater worker FILE.py` was refused: unrecognized arguments).
    worker = cluster("worker", script, "--server", address, "--name", "w1", worker="w1")
    worker.wait_line("connected to")
    env = {**os.environ, "HEADWATER_TOKEN": TOKEN, "HW_TEST_DIR": str(tmp_path)}
    ran = headwater_cli("run", f"{script}:etl", "--param", "n=3", "--server", address, env=env)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "30"
    listed = headwater_cli("runs", "list", "--server", address, env=env)
    assert listed.returncode == 0 and "SUCCESS" in listed.stdout and "etl" in listed.stdout
    run_id = listed.stdout.split()[0]
    shown = headwater_cli("runs", "show", run_id, "--server", address, env=env)
    assert shown.returncode == 0 and "transform[2]" in shown.stdout, shown.stderr
    # One clear line, no traceback, for the usual mistakes.
    for args, code, fragment in [
        (("runs", "show", "nope", "--server", address), 2, "'nope'"),
        (("runs", "list", "--server", "127.0.0.1:1"), 3, "cannot reach"),  # (3: try again)
        (("run", f"{script}:etl", "--server", address, "--param", "zzz=1"), 2, "zzz"),
        (("worker", "--server", address), 2, "give at least one module"),
    ]:
        proc = headwater_cli(*args, env=env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == code, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and fragment in lines[-1], proc.stderr
    bad_token = {**env, "HEADWATER_TOKEN": "wrong"}
    proc = headwater_cli("runs", "list", "--server", address, env=bad_token)
    assert proc.returncode == 2 and "refused the credential" in proc.stderr  # (a refusal)


def test_a_300_mb_array_flows_between_workers_by_reference(
    tmp_path: Path, db: str, cluster: Callable[..., Proc]
) -> None:
    """Server and workers keep gRPC's default 4 MiB receive limit, which fails any RPC
    carrying a larger message: success means the array moved in chunks. On PostgreSQL
    the server keeps payload bytes in a directory (--payload-dir): the 300 MB are
    files, not rows (the database chunk path is tested in test_store.py)."""
    folder = tmp_path / "payloads"
    on_postgres = db.startswith("postgresql://")
    extra = ("--payload-dir", str(folder)) if on_postgres else ()
    _, address = start_server(cluster, db, 0, *extra)
    start_worker(cluster, address, "producer", "--label", "role=producer")
    start_worker(cluster, address, "consumer", "--label", "role=consumer")
    module = flows(tmp_path)
    with Client(address, token=TOKEN) as client:
        run = client.run(module.big, {"mb": 300})  # type: ignore[attr-defined]
        final = client.wait(run.id)
        assert final.state is FlowRunState.SUCCESS, final.message
        words = 300 * (1 << 20) // 8
        assert final.result == [words, words - 1, 300 << 20]
    assert effects(tmp_path) == [("produce", "producer"), ("consume", "consumer")]
    if on_postgres:
        stored = [p for p in folder.rglob("*") if p.is_file()]
        assert stored and sum(p.stat().st_size for p in stored) >= 300 << 20


def test_a_large_run_cancelled_mid_run_ends_cancelled_and_the_server_goes_on(
    tmp_path: Path, db: str, cluster: Callable[..., Proc]
) -> None:
    """A run of 12,001 tasks (large: cancelled off the event loop, with workers
    reporting meanwhile) is cancelled while workers run it: it ends CANCELLED, what
    finished before stays SUCCESS, everything else is CANCELLED, and the next run on
    the same server and workers succeeds."""
    address = two_workers(cluster, db, slots=4)
    module = flows(tmp_path)
    with Client(address, token=TOKEN) as client:
        run = client.run(module.wide, {"n": 12_000})  # type: ignore[attr-defined]
        # Cancelled once a task's success is stored (a watch shows only what is): a
        # tick that had only run could still be refused as cancelled.
        for _, changed in client.watch(run.id):
            if changed is not None and changed.state.name == "SUCCESS":
                break
        client.cancel(run.id, "enough")
        final = client.wait(run.id)
        assert final.state is FlowRunState.CANCELLED, final.message
        states = [t.state for t in client.get(run.id, include_task_runs=True).task_runs]
        assert len(states) == 12_001
        assert {s.name for s in states} == {"SUCCESS", "CANCELLED"}
        assert sum(1 for s in states if s.name == "CANCELLED") > 1_000
        again = client.run(module.etl, {"n": 3})  # type: ignore[attr-defined]
        done = client.wait(again.id)
        assert done.state is FlowRunState.SUCCESS, done.message
        assert done.result == sum(x * 10 for x in range(3))


def test_a_second_server_on_a_taken_port_or_a_database_in_use_is_refused(
    tmp_path: Path, cluster: Cluster
) -> None:
    """gRPC's SO_REUSEPORT let a second server listen on the first one's port and take
    half its calls; and two servers on one SQLite file each replayed and dispatched the
    same runs (a stored success ran again). Both are refused now, in one line."""
    first, address = start_server(cluster, tmp_path / "hw.db")
    port = address.rsplit(":", 1)[1]
    for args, expected in [
        (
            ["--port", port, "--db", str(tmp_path / "other.db")],
            f"cannot listen on 127.0.0.1:{port}",
        ),
        (
            ["--port", "0", "--db", str(tmp_path / "hw.db")],
            f"the database {tmp_path / 'hw.db'} is in use by another headwater server (pid "
            f"{first.popen.pid}, started ",
        ),
        (  # a taken metrics port: one line naming it (it was a traceback and errno 98)
            ["--port", "0", "--db", str(tmp_path / "m.db"), "--metrics-port", port],
            f"cannot serve metrics on 127.0.0.1:{port} (Address already in use)",
        ),
        (
            ["--port", "0", "--db", str(tmp_path / "h.db"), "--http-port", port],
            f"cannot serve HTTP on 127.0.0.1:{port} (Address already in use)",
        ),
        (  # a mistyped folder: it was made, and an empty database served (a user trial)
            ["--port", "0", "--db", str(tmp_path / "typo" / "hw.db")],
            f"the folder of --db {tmp_path / 'typo' / 'hw.db'} does not exist",
        ),
    ]:
        http = [] if "--http-port" in args else ["--no-http"]
        second = cluster("server", *args, *http)
        assert second.wait() != 0
        said = second.lines + second.other
        errors = [line for line in said if line.startswith("headwater: error")]
        assert len(errors) == 1 and expected in errors[0], said
    # The taken port was seen before a new database was made (it was left behind, a
    # newcomer's trial), with no log line of gRPC's beside the error.
    assert not any((tmp_path / name).exists() for name in ("other.db", "m.db", "h.db", "typo"))
    with Client(address, token=TOKEN) as client:  # the first one serves on
        assert client.server_info()["server_version"]
    first.popen.terminate()
    assert first.wait() == 0
    # Once the first server has stopped, the database is free again.
    second, again = start_server(cluster, tmp_path / "hw.db")
    with Client(again, token=TOKEN) as client:
        assert client.list_runs() == []
    # The first start said it made the database (a mistyped --db is seen); not again.
    made = f"headwater server: created a new database at {tmp_path / 'hw.db'}"
    assert made in first.other and made not in second.other
