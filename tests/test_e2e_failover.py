"""Failover end to end: two `headwater server` processes on one PostgreSQL database,
workers and clients given both addresses.

- A standby answers health NOT_SERVING and refuses calls with UNAVAILABLE, naming the
  leader; a client given both addresses finds the leader.
- SIGKILL of the leader mid-run: the standby takes over, every run completes, and no
  task whose success was stored before the kill runs again.
- SIGSTOP of the leader, takeover, SIGCONT: nothing the old leader writes after the
  takeover lands (its journal rows carry its epoch: their count does not move), it
  steps down and stands by, naming the new leader.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e_helpers import BOUND, Cluster, Proc, poll, start_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pg_cluster import TempPostgres

from headwater import Client, ServerError
from headwater._loader import load_file
from headwater.v1 import control_plane_pb2 as cp
from headwater.v1 import control_plane_pb2_grpc
from headwater.wire import LEADER_METADATA, FlowRunState, TaskRunState

pytestmark = pytest.mark.e2e

TOKEN = "failover-token"
LEASE = "2s"

TASKS = """
import os, time
from pathlib import Path
from headwater import flow, task, unmapped

ROOT = Path(os.environ["HW_TEST_DIR"])

def effect(what):
    with (ROOT / "effects.log").open("a") as f:
        f.write(f"{what} {os.environ.get('HW_WORKER', '?')}\\n")

@task
def step(run: int, i: int) -> int:
    effect(f"start-{run}-{i}")
    if i >= 2:  # the later steps wait for the test to release them
        deadline = time.monotonic() + 90
        while not (ROOT / "release").exists():
            if time.monotonic() > deadline:
                raise TimeoutError("never released")
            time.sleep(0.02)
    effect(f"done-{run}-{i}")
    return i

@task
def total(values: list[int]) -> int:
    return sum(values)

@flow
def fan(run: int = 0) -> int:
    return total(step.map(unmapped(run), [0, 1, 2, 3]))
"""


@pytest.fixture
def url(postgres: TempPostgres) -> str:
    return postgres.schema_url()


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    (tmp_path / "failover_tasks.py").write_text(textwrap.dedent(TASKS))
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


def effects(tmp_path: Path) -> list[str]:
    log = tmp_path / "effects.log"
    return [line.split(" ", 1)[0] for line in log.read_text().splitlines()] if log.exists() else []


def standby(start: Callable[..., Proc], url: str, *extra: str) -> tuple[Proc, str]:
    proc = start("server", "--port", "0", "--db", url, "--lease", LEASE, *extra)
    line = proc.wait_line("headwater server standing by on")
    return proc, line.split("standing by on ", 1)[1].split(": ", 1)[0]


def epoch_of(server: Proc) -> int:
    line = server.wait_line("(leader, lease epoch")
    return int(line.rsplit("lease epoch ", 1)[1].rstrip(")"))


def journal_rows(url: str, epoch: int) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT COUNT(*) FROM run_events WHERE epoch = %s", (epoch,)).fetchone()
    return int(row[0]) if row else 0


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
    return int(reply.status)


def worker(start: Callable[..., Proc], addresses: str, name: str) -> Proc:
    proc = start(
        "worker",
        *("--server", addresses, "--module", "failover_tasks", "--name", name),
        worker=name,
    )
    proc.wait_line("connected to")
    return proc


def test_a_standby_refuses_calls_naming_the_leader_and_clients_find_the_leader(
    url: str, tmp_path: Path, cluster: Callable[..., Proc]
) -> None:
    _, leader = start_server(cluster, url)
    _, spare = standby(cluster, url)
    assert health(leader) == health_pb2.HealthCheckResponse.SERVING
    assert health(spare) == health_pb2.HealthCheckResponse.NOT_SERVING
    with grpc.insecure_channel(spare) as channel:
        stub = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetServerInfo(
                cp.GetServerInfoRequest(), metadata=(("authorization", f"Bearer {TOKEN}"),)
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"the leader is {leader}" in (refused.value.details() or "")
    assert (LEADER_METADATA, leader) in tuple(refused.value.trailing_metadata() or ())
    # The credentials are the database's: one created through the leader is known to
    # the standby (within its poll), which refuses a streaming call with it the same
    # way; a caller without a credential learns nothing about the leader.
    with Client(leader, token=TOKEN) as client:
        _, viewer = client.create_token("viewer-1", "viewer")

    def streaming_refusal(token: str) -> grpc.RpcError:
        with grpc.insecure_channel(spare) as channel:
            stub = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
            metadata = (("authorization", f"Bearer {token}"),) if token else ()
            with pytest.raises(grpc.RpcError) as error:
                for _ in stub.WatchFlowRun(
                    cp.WatchFlowRunRequest(id="nope"), metadata=metadata, timeout=10
                ):
                    pass
        return error.value

    assert streaming_refusal("").code() == grpc.StatusCode.UNAUTHENTICATED
    assert LEADER_METADATA not in dict(streaming_refusal("").trailing_metadata() or ())
    poll(
        lambda: streaming_refusal(viewer).code() == grpc.StatusCode.UNAVAILABLE,
        "the standby to know the new credential",
    )
    assert f"the leader is {leader}" in (streaming_refusal(viewer).details() or "")
    # A client given only the standby says so; given both (standby first), it is
    # redirected to the leader.
    with Client(spare, token=TOKEN) as client, pytest.raises(ServerError, match="standby"):
        client.server_info()
    with Client(f"{spare},{leader}", token=TOKEN) as client:
        assert client.server_info()["protocol_version"] == 1
    # `headwater run` given both says which server took the run (it printed the list).
    (tmp_path / "echo_flow.py").write_text(
        "from headwater import flow\n\n@flow\ndef echo(x: int = 1) -> int:\n    return x\n"
    )
    command = [sys.executable, "-m", "headwater._cli", "run", str(tmp_path / "echo_flow.py")]
    ran = subprocess.run(
        [*command, "--server", f"{spare},{leader}", "-p", "x=7"],
        env={**os.environ, "HEADWATER_TOKEN": TOKEN},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0 and ran.stdout.strip() == "7", (ran.stdout, ran.stderr)
    assert f"created on {leader}\n" in ran.stderr, ran.stderr


def test_sigkill_of_the_leader_mid_run_every_run_completes_and_no_stored_success_reruns(
    url: str, tmp_path: Path, cluster: Callable[..., Proc]
) -> None:
    first, leader = start_server(cluster, url)
    second, spare = standby(cluster, url)
    both = f"{leader},{spare}"
    w1 = worker(cluster, both, "w1")
    worker(cluster, both, "w2")
    module: Any = load_file(str(tmp_path / "failover_tasks.py"))
    with Client(both, token=TOKEN) as client:
        runs = {client.run(module.fan, {"run": r}).id: r for r in range(3)}

        def started() -> bool:
            seen = set(effects(tmp_path))
            return all(
                {f"done-{r}-0", f"done-{r}-1", f"start-{r}-2", f"start-{r}-3"} <= seen
                for r in range(3)
            )

        poll(started, "the first steps to finish and the later ones to start")
        stored = stored_successes(url)
        first.kill()
        second.wait_line("headwater server listening on")  # took the lead
        (tmp_path / "release").write_text("go")
        for run_id in runs:
            final = client.wait(run_id)
            assert final.state is FlowRunState.SUCCESS, final.message
            assert final.result == 6
    # The worker says at most every 10 s that the dead leader cannot be reached, not
    # once per turn between it and the standby (6 lines in this takeover's ~2 s; about
    # 40 in 10 s in a user trial).
    said = [line for line in w1.other + w1.lines if f"cannot connect to {leader}" in line]
    assert 1 <= len(said) <= 2, said
    ran = effects(tmp_path)
    assert stored, "some successes were stored before the kill"
    for run_id, key in stored:
        if key.startswith("step["):
            i = int(key[5:-1])
            assert ran.count(f"start-{runs[run_id]}-{i}") == 1, (run_id, key, ran)


def stored_successes(url: str) -> set[tuple[str, str]]:
    import psycopg

    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT flow_run_id, key FROM task_runs WHERE state = %s",
            (TaskRunState.SUCCESS.value,),
        ).fetchall()
    return {(str(r), str(k)) for r, k in rows}


def test_a_paused_leader_that_resumes_after_a_takeover_writes_nothing_and_stands_by(
    url: str, tmp_path: Path, cluster: Callable[..., Proc]
) -> None:
    first, leader = start_server(cluster, url)
    old_epoch = epoch_of(first)
    second, spare = standby(cluster, url)
    w = worker(cluster, f"{leader},{spare}", "w1")
    module: Any = load_file(str(tmp_path / "failover_tasks.py"))
    with Client(f"{leader},{spare}", token=TOKEN) as client:
        run_id = client.run(module.fan, {"run": 7}).id
        poll(lambda: {"start-7-2", "start-7-3"} <= set(effects(tmp_path)), "steps to start")
        first.popen.send_signal(signal.SIGSTOP)
        try:
            second.wait_line("headwater server listening on")  # took the lead
            new_epoch = epoch_of(second)
            assert new_epoch == old_epoch + 1
            before = journal_rows(url, old_epoch)
            # The worker finishes its steps while the old leader is paused: their
            # results wait in the old leader's socket.
            (tmp_path / "release").write_text("go")
            poll(lambda: {"done-7-2", "done-7-3"} <= set(effects(tmp_path)), "steps to end")
        finally:
            first.popen.send_signal(signal.SIGCONT)
        # It steps down and stands by on its old port, naming the new leader.
        line = first.wait_line(f"headwater server standing by on {leader}")
        assert f"the leader is {spare}" in line
        # (on stderr, read by another thread than the stdout line above: waited for)
        poll(lambda: any("stepped down" in x for x in first.other), "the step-down log line")
        said = "\n".join(first.other)  # an expected hand-over, told without alarm
        assert "Traceback" not in said and " ERROR " not in said, said
        assert journal_rows(url, old_epoch) == before  # nothing it wrote landed
        poll(lambda: health(leader) == health_pb2.HealthCheckResponse.NOT_SERVING, "standby")
        final = client.wait(run_id)
        assert final.state is FlowRunState.SUCCESS and final.result == 6, final.message
    assert journal_rows(url, new_epoch) > 0
    ran = effects(tmp_path)
    assert ran.count("done-7-2") == 1 and ran.count("done-7-3") == 1, ran
    assert w.popen.poll() is None  # the worker followed the leader


@pytest.mark.timeout(240)
def test_a_client_waiting_on_a_frozen_leader_follows_the_new_one(
    url: str, tmp_path: Path, cluster: Callable[..., Proc]
) -> None:
    """``Client.wait`` (and so ``runs watch`` and ``headwater run``) on a leader that
    froze (SIGSTOP: its connections stay open, nothing answers) waited until it
    resumed, although the standby took over and finished the run: the watch's stream
    never failed. gRPC keepalive pings now end it, and the watch goes on on the new
    leader while the old one is still frozen."""
    quick = ("--heartbeat-interval", "1s", "--heartbeat-timeout", "4s")  # the worker moves on
    first, leader = start_server(cluster, url, 0, *quick)
    second, spare = standby(cluster, url, *quick)
    both = f"{leader},{spare}"
    worker(cluster, both, "w1")
    module: Any = load_file(str(tmp_path / "failover_tasks.py"))
    with Client(both, token=TOKEN) as client:
        run_id = client.run(module.fan, {"run": 9}).id
        poll(lambda: {"start-9-2", "start-9-3"} <= set(effects(tmp_path)), "steps to start")
        waited: dict[str, Any] = {}
        waiter = threading.Thread(target=lambda: waited.update(run=client.wait(run_id)))
        waiter.start()  # its stream opens before or after the freeze: it hangs either way
        first.popen.send_signal(signal.SIGSTOP)
        try:
            second.wait_line("headwater server listening on")  # took the lead
            (tmp_path / "release").write_text("go")
            waiter.join(BOUND)
            assert not waiter.is_alive(), "Client.wait still waits on the frozen leader"
        finally:
            first.popen.send_signal(signal.SIGCONT)
            waiter.join(BOUND)
    final = waited["run"]
    assert final.state is FlowRunState.SUCCESS and final.result == 6, final.message


def test_a_leader_stopped_with_sigterm_hands_over_at_once(
    url: str, tmp_path: Path, cluster: Callable[..., Proc]
) -> None:
    """A planned stop (SIGTERM) gives the lease up: the standby takes over without
    waiting for it to run out, and the run goes on. The released lease once read as
    an error on the standby ("cannot subtract infinite timestamps"), which then stood
    by for ever."""
    first, leader = start_server(cluster, url)
    second, spare = standby(cluster, url)
    both = f"{leader},{spare}"
    worker(cluster, both, "w1")
    module: Any = load_file(str(tmp_path / "failover_tasks.py"))
    with Client(both, token=TOKEN) as client:
        run_id = client.run(module.fan, {"run": 5}).id
        poll(lambda: {"start-5-2", "start-5-3"} <= set(effects(tmp_path)), "steps to start")
        first.popen.send_signal(signal.SIGTERM)
        assert first.popen.wait(30) == 0
        second.wait_line("headwater server listening on")  # took the lead
        assert not any("cannot read the leader lease" in x for x in second.other), second.other
        (tmp_path / "release").write_text("go")
        final = client.wait(run_id)
        assert final.state is FlowRunState.SUCCESS and final.result == 6, final.message
    ran = effects(tmp_path)
    assert ran.count("start-5-0") == 1 and ran.count("start-5-1") == 1, ran
