"""End to end across languages: a Python-authored flow whose tasks run on a real server,
one Python worker subprocess and one Node.js worker subprocess
(examples/node_worker, installed by ``make setup``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import BOUND, NODE_WORKER, Proc, node_worker_args, poll, start_server
from pg_cluster import STORES, database_for

from headwater import Client, ParameterError
from headwater._loader import load_file
from headwater.wire import FlowRunState

pytestmark = pytest.mark.e2e

TOKEN = "polyglot-token"
EXAMPLE = str(NODE_WORKER / "flow.py")

FLOWS = """
import hashlib
from datetime import datetime
from headwater import flow, remote_task, task, unmapped

resize = remote_task("images.resize", parameters=["image", "width"])
stats = remote_task("text.stats", parameters=["text", "at"])
scale = remote_task("math.scale")
flaky = remote_task("flaky.once", retries=1)
digest = remote_task("blob.digest", parameters=["data"])
wait_cancel = remote_task("wait.cancel")
await_file = remote_task("files.await", parameters=["path"])

@task
def make_image(w: int, h: int) -> dict:
    return {"width": w, "height": h, "pixels": bytes(range(w * h))}

@task
def make_text(n: int) -> str:
    return " ".join(["polyglot"] * n)

@task
def numbers(n: int) -> list[int]:
    return list(range(n))

@task
def gather(image: dict, text: dict, scaled: list, retried: dict) -> dict:
    return {
        "image": [image["width"], image["height"], image["pixels"]],
        "text": text,
        "scaled": scaled,
        "retried": retried,
        "types": [type(text["at"]).__name__, type(image["pixels"]).__name__],
    }

@flow
def crossing(n: int, when: datetime) -> dict:
    image = resize(make_image(4, 2), 2)
    text = stats(make_text(n), at=when)
    scaled = scale.map(x=numbers(n), factor=unmapped(2**60))
    return gather(image, text, scaled, flaky(value=n))

@task
def make_blob(mib: float) -> bytes:
    return bytes(i % 251 for i in range(int(mib * (1 << 20))))

@task
def check_blob(original: bytes, report: dict) -> list:
    return [
        report["sha256"] == hashlib.sha256(original).hexdigest(),
        report["size"],
        report["reversed"] == original[::-1],
    ]

@flow
def big(mib: float = 3.5) -> list:
    blob = make_blob(mib)
    return check_blob(blob, digest(blob))

@task(retries=2)
def make_pair() -> tuple:
    return ("not", "json")

@flow
def not_json() -> dict:
    return stats(text=make_pair())

@flow
def cancellable() -> None:
    wait_cancel()

@flow
def scaled(n: int = 3) -> list:
    return scale.map(x=numbers(n), factor=unmapped(3))

@flow
def sensor(path: str) -> str:
    return await_file(path)
"""


class Cluster:
    """A server plus one Python and one Node worker, all subprocesses."""

    def __init__(self, root: Path, db: str) -> None:
        self.root = root
        self.db = db
        self.procs: list[Proc] = []
        self.env = {
            **os.environ,
            "HEADWATER_TOKEN": TOKEN,
            "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
        }
        self.address = ""
        self.server: Proc | None = None
        self.node: Proc | None = None

    def start(self, args: list[str], stream: str) -> Proc:
        proc = Proc(args, self.env, stream)
        self.procs.append(proc)
        return proc

    def headwater(self, *args: str) -> Proc:
        stream = "stdout" if args[0] == "server" else "stderr"
        return self.start([sys.executable, "-m", "headwater._cli", *args], stream)

    def start_server(self, port: int = 0) -> None:
        self.server, self.address = start_server(self.headwater, self.db, port)

    def start_workers(self) -> None:
        python = self.headwater(
            "worker", "--server", self.address, "--module", "polyglot_flows", "--module", EXAMPLE
        )
        python.wait_line("connected to")
        args = node_worker_args(self.address, "node-e2e", "--slots", "1")
        self.node = self.start(args, "stderr")
        self.node.wait_line("connected to")

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()


@pytest.fixture(scope="module", params=STORES)
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """One server (on each store in turn) with a Python and a Node worker."""
    root = tmp_path_factory.mktemp("polyglot")
    (root / "polyglot_flows.py").write_text(textwrap.dedent(FLOWS))
    running = Cluster(root, database_for(request, request.param, root))
    try:
        running.start_server()
        running.start_workers()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def flows(cluster: Cluster) -> Any:
    return load_file(str(cluster.root / "polyglot_flows.py"))


def run(cluster: Cluster, flow: Any, params: dict[str, Any] | None = None) -> Any:
    with Client(cluster.address, token=TOKEN) as client:
        created = client.run(flow, params or {})
        return client.wait(created.id), client.logs(created.id)


def test_python_node_python_with_a_mapped_node_step_and_a_retried_one(
    cluster: Cluster, flows: Any
) -> None:
    when = datetime(2024, 2, 29, 12, 30, 15, 250000, tzinfo=UTC)
    final, logs = run(cluster, flows.crossing, {"n": 3, "when": when})
    assert final.state is FlowRunState.SUCCESS, final.message
    result = final.result
    # Python bytes -> Node Buffer (resized) -> Python bytes.
    assert result["image"] == [2, 1, bytes([0, 2])]
    # A Python str and an aware datetime parameter in, a Node object back.
    assert result["text"] == {
        "words": 3,
        "chars": len("polyglot") * 3 + 2,
        "upper": "POLYGLOT POLYGLOT POLYGLOT",
        "at": when,
    }
    assert result["types"] == ["datetime", "bytes"]
    # Mapped on Node, with an integer beyond 2^53 exact both ways ($int <-> BigInt).
    assert result["scaled"] == [i * 2**60 for i in range(3)]
    # Failed on attempt 1 (deterministically), succeeded on the retry.
    assert result["retried"] == {"value": 3, "attempt": 2}
    attempts = {t.key: t.attempts for t in final.task_runs}
    assert attempts["flaky.once"] == 2
    assert attempts["math.scale[2]"] == 1
    assert "resized 4x2 to 2x1" in [entry.message for entry in logs]


def test_the_example_flow_runs_with_the_cli(cluster: Cluster) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "headwater._cli", "run", EXAMPLE, "--server", cluster.address],
        capture_output=True,
        text=True,
        timeout=BOUND,
        env=cluster.env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [
        "32x32 (1024 bytes)",
        "16x16 (256 bytes)",
        "8x8 (64 bytes)",
    ]


def test_large_json_values_travel_by_reference_both_ways(cluster: Cluster, flows: Any) -> None:
    """3.5 MiB of bytes is over 4.6 MiB of json: gRPC's 4 MiB limit on the server means
    both the input and Node's result can only have moved as chunked references."""
    final, _ = run(cluster, flows.big, {"mib": 3.5})
    assert final.state is FlowRunState.SUCCESS, [t.message for t in final.task_runs]
    assert final.result == [True, int(3.5 * (1 << 20)), True]


def test_a_python_result_a_node_task_cannot_read_fails_clearly_without_retries(
    cluster: Cluster, flows: Any
) -> None:
    final, _ = run(cluster, flows.not_json)
    assert final.state is FlowRunState.FAILED
    producer = next(t for t in final.task_runs if t.key == "make_pair")
    assert producer.attempts == 1  # retries=2, but retrying cannot make a tuple json
    assert "the result of task 'make_pair' must be json because task 'text.stats', " in (
        producer.message
    )
    assert "argument 'text' reads it" in producer.message
    assert "a tuple cannot be json" in producer.message
    # A parameter a Node task reads is checked before the run is created.
    with Client(cluster.address, token=TOKEN) as client, pytest.raises(ParameterError) as info:
        client.run(flows.crossing, {"n": 1, "when": datetime(2024, 1, 1)})
    assert str(info.value).startswith(
        "task 'text.stats', argument 'at': parameter 'when' must be json"
    )
    assert "replace(tzinfo=" in str(info.value)


def test_cancelling_a_running_node_task_aborts_it_and_frees_its_slot(
    cluster: Cluster, flows: Any
) -> None:
    assert cluster.node is not None
    with Client(cluster.address, token=TOKEN) as client:
        created = client.run(flows.cancellable)
        started = cluster.node.wait_line("wait.cancel started")
        client.cancel(created.id, "no longer needed")
        task_run_id = started.rsplit(" ", 1)[1]
        cluster.node.wait_line(f"wait.cancel aborted {task_run_id}")
        final = client.wait(created.id)
    assert final.state is FlowRunState.CANCELLED
    # The Node worker has one slot: this runs only if TaskCancelled gave it back.
    after, _ = run(cluster, flows.scaled, {"n": 3})
    assert after.state is FlowRunState.SUCCESS and after.result == [0, 3, 6]


@pytest.mark.timeout(240)
def test_rolling_restarts_of_node_workers_never_fail_a_long_node_task(tmp_path: Path) -> None:
    """Four rolling restarts of Node workers (a new one up, then SIGTERM to the old
    one) while one long Node task runs: each stopping worker says so and gives the
    attempt back, which counts no loss. Before, a stopping Node worker cancelled its
    stream: four stops were four losses, and the task failed with headwater.WorkerLost
    (a task run may be lost 3 times). A server of its own, with Node workers only."""
    env = {**os.environ, "HEADWATER_TOKEN": TOKEN}
    procs: list[Proc] = []

    def start(args: list[str], stream: str) -> Proc:
        procs.append(Proc(args, env, stream))
        return procs[-1]

    def node(name: str) -> Proc:
        worker = start(node_worker_args(address, name, "--slots", "1"), "stderr")
        worker.wait_line("connected to")
        return worker

    (tmp_path / "rolling_flows.py").write_text(textwrap.dedent(FLOWS))
    flows = load_file(str(tmp_path / "rolling_flows.py"))
    release = tmp_path / "release.txt"
    try:
        _, address = start_server(
            lambda *args, **_: start([sys.executable, "-m", "headwater._cli", *args], "stdout"),
            tmp_path / "rolling.db",
        )
        starts: list[Proc] = []
        current = node("node-0")
        with Client(address, token=TOKEN) as client:
            run_id = client.run(flows.sensor, {"path": str(release)}).id
            for restart in range(1, 5):
                current.wait_line(f"attempt {restart}")
                starts.append(current)
                successor = node(f"node-{restart}")
                current.popen.send_signal(signal.SIGTERM)
                assert current.wait() == 0, current.lines
                said = "SIGTERM; stopping (1 running attempt(s) given back to the server"
                assert any(said in line for line in current.lines), current.lines
                current = successor
            current.wait_line("attempt 5")
            # Atomically: the Node task polls for the file and reads it as soon as it
            # exists, so a plain write_text could be read while still empty.
            (tmp_path / "release.tmp").write_text("hauled")
            (tmp_path / "release.tmp").replace(release)
            final = client.wait(run_id)
            assert final.state is FlowRunState.SUCCESS, final.message
            assert final.result == "hauled"
            (task_run,) = client.get(run_id, include_task_runs=True).task_runs
            assert task_run.attempts == 5  # four given back, one that finished
    finally:
        for proc in procs:
            proc.stop()


def test_the_node_worker_survives_a_server_restart_and_keeps_its_running_task(
    cluster: Cluster, flows: Any
) -> None:
    """Runs last in this module: it restarts the shared server on the same port."""
    assert cluster.server is not None and cluster.node is not None
    release = cluster.root / "release.txt"
    with Client(cluster.address, token=TOKEN) as client:
        created = client.run(flows.sensor, {"path": str(release)})
    cluster.node.wait_line("files.await started")
    cluster.server.kill()
    port = int(cluster.address.rsplit(":", 1)[1])
    cluster.start_server(port)
    poll(lambda: any("reconnected" in line for line in cluster.node.lines), "Node to reconnect")
    # Atomically: the Node task polls for the file and reads it as soon as it exists.
    (cluster.root / "release.tmp").write_text("released")
    (cluster.root / "release.tmp").replace(release)
    with Client(cluster.address, token=TOKEN) as client:
        poll(lambda: client.get(created.id).state.is_terminal, "the resumed run to finish")
        final = client.get(created.id, include_task_runs=True)
    assert final.state is FlowRunState.SUCCESS, final.message
    assert final.result == "released"
    # Kept through the restart (Hello.running -> Welcome.keep_running), not re-run.
    assert {t.key: t.attempts for t in final.task_runs}["files.await"] == 1
    assert sum("files.await started" in line for line in cluster.node.lines) == 1
