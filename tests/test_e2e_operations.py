"""End to end, day-two operations: a real `headwater server` and real workers.

Retry from failure across server restarts (side effects counted), a concurrency limit
under contention with a worker SIGKILL and a server SIGKILL (the bound measured by the
tasks themselves), workers listed and drained, late runs, webhooks delivered to a real
local HTTP receiver across a restart, and /metrics. Each runs on both stores (the db
fixture: SQLite, PostgreSQL), except the configuration file's (SQLite paths).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import subprocess
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from e2e_helpers import BOUND, Cluster, Proc, poll, start_server, start_worker

from headwater import Client
from headwater._loader import load_file
from headwater.wire import FlowRunState

pytestmark = pytest.mark.e2e

TASKS = """
import fcntl, os, time
from pathlib import Path
from headwater import flow, task

DIR = Path(os.environ["HW_TEST_DIR"])

def effect(what):
    with (DIR / "effects.log").open("a") as f:
        f.write(f"{what} {os.environ.get('HW_WORKER', '?')}\\n")

def wait_for(name):
    deadline = time.monotonic() + 60
    while not (DIR / name).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} never appeared")
        time.sleep(0.02)

@task
def numbers(n: int) -> list[int]:
    effect("numbers")
    return list(range(n))

@task
def square(x: int) -> int:
    effect(f"square-start-{x}")
    if (DIR / "broken").exists() and x == 2:
        raise ValueError("element 2 is broken")
    if (DIR / "hold").exists() and x == 2:
        wait_for("release")
    return x * x

@task
def plus_one(x: int) -> int:
    effect(f"plus_one-{x}")
    return x + 1

@task
def total(xs: list[int]) -> int:
    effect("total")
    return sum(xs)

@flow
def pipeline(n: int = 4) -> int:
    return total(plus_one.map(square.map(numbers(n))))

def _alive(pid):
    # Not a zombie, and not exiting: a SIGKILLed worker's sockets close (and the server
    # hands its slot on) before the kernel marks it a zombie; counted then, its marker
    # made a legitimate 4th start look like a 4th at once (seen once in CI).
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    status = Path(f"/proc/{pid}/stat")
    if not status.exists():
        return True
    fields = status.read_text().split(") ")[-1].split()
    return fields[0] != "Z" and not int(fields[6]) & 0x4  # PF_EXITING

@task(tags=["db"])
def query(x: int) -> int:
    # Measure how many tasks tagged db run at once, across every worker process: a
    # marker per running attempt (of a live process), counted under a file lock.
    running = DIR / "running"
    running.mkdir(exist_ok=True)
    me = running / f"{os.getpid()}-{x}-{time.monotonic_ns()}"
    with open(DIR / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        live = [m for m in running.iterdir() if _alive(int(m.name.split("-")[0]))]
        me.touch()
        with (DIR / "concurrency.log").open("a") as log:
            log.write(f"{len(live) + 1}\\n")
    time.sleep(0.4)  # the work
    deadline = time.monotonic() + 60
    while (DIR / "pause").exists():  # the test holds the running attempts here
        if time.monotonic() > deadline:
            raise TimeoutError("paused for too long")
        time.sleep(0.02)
    with open(DIR / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        me.unlink()
        effect(f"query-{x}")
    return x

@flow
def queries(n: int = 12) -> list[int]:
    return query.map(numbers(n))

@task
def blocked(x: int) -> int:
    wait_for("release")
    return x

@flow
def held(x: int = 1) -> int:
    return blocked(x)
"""


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    (tmp_path / "ops_tasks.py").write_text(textwrap.dedent(TASKS))
    monkeypatch.setenv("HW_TEST_DIR", str(tmp_path))  # the test imports the module too
    env = {
        **os.environ,
        "HW_TEST_DIR": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    procs = Cluster(env)
    yield procs
    procs.stop()


def server(cluster: Cluster, db: str, *extra: str, port: int = 0) -> tuple[Proc, str]:
    """A server on ``db`` (the db fixture) and its ``HOST:PORT`` once it serves."""
    return start_server(cluster, db, port, *extra)


def worker(cluster: Cluster, address: str, name: str, *extra: str) -> Proc:
    return start_worker(cluster, address, name, *extra, module="ops_tasks")


def effects(tmp_path: Path) -> list[str]:
    log = tmp_path / "effects.log"
    return [line.split(" ", 1)[0] for line in log.read_text().splitlines()] if log.exists() else []


def running_pids(tmp_path: Path) -> list[int]:
    """The processes of the queries running now (markers of live processes)."""
    pids = []
    for marker in (tmp_path / "running").glob("*"):
        pid = int(marker.name.split("-")[0])
        try:
            os.kill(pid, 0)
        except OSError:
            continue
        stat = Path(f"/proc/{pid}/stat")
        if stat.exists() and stat.read_text().split(") ")[-1][:1] == "Z":
            continue
        pids.append(pid)
    return pids


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headwater._cli", *args],
        capture_output=True,
        text=True,
        timeout=BOUND,
        check=False,
    )


def module(tmp_path: Path) -> object:
    return load_file(str(tmp_path / "ops_tasks.py"))


def test_a_failed_mapped_child_is_retried_from_the_cli_across_restarts(
    tmp_path: Path, db: str, cluster: Cluster
) -> None:
    """The run fails on one mapped child; the server is killed and restarted; `headwater
    runs retry` reruns only that child and its downstream, and the retried attempt
    survives another server SIGKILL. Every task's side effects are counted."""
    srv, address = server(cluster, db)
    port = int(address.rsplit(":", 1)[1])
    worker(cluster, address, "w1", "--slots", "4")
    (tmp_path / "broken").touch()
    with Client(address) as client:
        run = client.run(module(tmp_path).pipeline, {"n": 4})  # type: ignore[attr-defined]
        failed = client.wait(run.id)
    assert failed.state is FlowRunState.FAILED
    states = {t.key: t.state.name for t in failed.task_runs}
    assert states["square[2]"] == "FAILED" and states["plus_one[2]"] == "TRIGGER_FAILED"
    assert states["total"] == "TRIGGER_FAILED" and states["square[1]"] == "SUCCESS"
    assert failed.failed_task_ids == ["square"]  # what failed it, not what did not run

    srv.kill()  # the failed run is stored; the next server retries it from its journal
    (tmp_path / "broken").unlink()
    (tmp_path / "hold").touch()  # the retried square(2) waits for "release"
    srv, address = server(cluster, db, port=port)
    retried = cli("runs", "retry", run.id, "--server", address, "--reason", "fixed element 2")
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.split() == [run.id, "RUNNING", "run", "attempt", "2"]
    poll(lambda: effects(tmp_path).count("square-start-2") == 2, "the retried child to start")

    srv.kill()  # mid-retry: the retry was journaled, the child is held by the worker
    srv, address = server(cluster, db, port=port)
    (tmp_path / "release").touch()
    with Client(address) as client:
        poll(lambda: client.get(run.id).state.is_terminal, "the retried run to finish")
        final = client.get(run.id, include_task_runs=True)
    assert final.state is FlowRunState.SUCCESS, final.message
    assert final.id == run.id and final.attempt == 2 and final.failed_task_ids == []
    assert final.result == 1 + 2 + 5 + 10
    ran = effects(tmp_path)
    assert ran.count("numbers") == 1
    assert [ran.count(f"square-start-{x}") for x in range(4)] == [1, 1, 2, 1]
    assert sorted(e for e in ran if e.startswith("plus_one")) == [
        "plus_one-0",
        "plus_one-1",
        "plus_one-4",
        "plus_one-9",
    ]
    assert ran.count("total") == 1
    attempts = {t.key: t.attempts for t in final.task_runs}
    assert attempts["square[2]"] == 2 and attempts["square[1]"] == 1
    shown = cli("runs", "show", run.id, "--server", address)
    assert "run attempt 2" in shown.stdout.splitlines()[0], shown.stdout
    # How long the retried attempt took, not the time since the first attempt started.
    assert final.attempt_started_at is not None and final.started_at is not None
    assert final.attempt_started_at > final.started_at
    assert final.attempt_duration is not None and final.duration is not None
    assert final.attempt_duration < final.duration
    watched = cli("runs", "watch", run.id, "--server", address)
    assert "(run attempt 2; " in watched.stderr and "since the first started)" in watched.stderr
    refused = cli("runs", "retry", run.id, "--server", address)
    assert refused.returncode == 2 and "only a FAILED or CANCELLED run" in refused.stderr


def test_a_concurrency_limit_holds_under_contention_a_worker_kill_and_a_server_kill(
    tmp_path: Path, db: str, cluster: Cluster
) -> None:
    """Three workers with 12 slots between them run 30 tasks tagged db under `limits set
    db --concurrency 3`. A worker is SIGKILLed while it runs one of them; then, with
    three of them held running (a pause file), the server is SIGKILLed and restarted.
    The tasks themselves count how many of them run at once (a marker per running
    attempt of a live process, under a file lock): the count never exceeds 3."""
    srv, address = server(cluster, db)
    port = int(address.rsplit(":", 1)[1])
    limit = cli("limits", "set", "db", "--concurrency", "3", "--server", address)
    assert limit.returncode == 0 and "concurrency 3" in limit.stdout, limit.stderr
    doomed = worker(cluster, address, "doomed", "--slots", "4")
    worker(cluster, address, "w2", "--slots", "4")
    worker(cluster, address, "w3", "--slots", "4")
    flows = module(tmp_path)
    with Client(address) as client:
        runs = [client.run(flows.queries, {"n": 15}) for _ in range(2)]  # type: ignore[attr-defined]
        poll(lambda: len(effects(tmp_path)) >= 5, "some queries to finish")
        waiting = {t.waiting for r in runs for t in client.get(r.id, True).task_runs if t.waiting}
        assert "waiting on limit db (3/3)" in waiting, waiting
        assert client.list_limits()[0].running == 3
    # Kill the worker while it runs a query; hold the others where they run (pause).
    poll(lambda: doomed.popen.pid in running_pids(tmp_path), "the doomed worker to run one")
    on_doomed = running_pids(tmp_path).count(doomed.popen.pid)
    doomed.kill()
    (tmp_path / "pause").touch()
    worker(cluster, address, "replacement", "--slots", "4")
    poll(lambda: len(running_pids(tmp_path)) == 3, "three queries to run after the kill")
    srv.kill()  # with three attempts held by workers and the rest waiting
    srv, address = server(cluster, db, port=port)
    (tmp_path / "pause").unlink()
    with Client(address) as client:
        for run in runs:
            final = client.wait(run.id)
            failed = client.get(run.id, include_task_runs=True).failures
            why = [(t.key, t.failure.message if t.failure else t.message) for t in failed]
            assert final.state is FlowRunState.SUCCESS, (final.message, why)
        assert client.list_limits()[0].concurrency == 3, "the limit survived the restart"
    observed = [int(n) for n in (tmp_path / "concurrency.log").read_text().split()]
    figures = {
        "max_observed": max(observed),
        "limit": 3,
        "starts": len(observed),
        "running_on_the_killed_worker": on_doomed,
        "running_at_the_server_kill": 3,
    }
    (tmp_path / "figures.json").write_text(json.dumps(figures))
    print("limit figures:", figures)
    assert max(observed) <= 3, figures
    assert max(observed) == 3, "under contention the limit is reached"
    assert sorted(e for e in effects(tmp_path) if e.startswith("query")) == sorted(
        [f"query-{x}" for x in range(15)] * 2
    )


def test_workers_are_listed_drained_and_exit_when_idle(
    tmp_path: Path, db: str, cluster: Cluster
) -> None:
    _, address = server(cluster, db)
    busy = worker(cluster, address, "busy", "--slots", "2", "--label", "zone=eu")
    flows = module(tmp_path)
    with Client(address) as client:
        run = client.run(flows.held)  # type: ignore[attr-defined]
        poll(lambda: client.list_workers()[0].slots_used == 1, "the task to be assigned")
        listed = cli("workers", "list", "--server", address)
        assert listed.returncode == 0, listed.stderr
        line = listed.stdout.strip()
        assert line.startswith("busy  online  slots 1/2  heartbeat "), line
        assert "labels zone=eu" in line and "ops_tasks.query" in line and "python" in line
        listed = cli("workers", "list", "--json", "--server", address)
        (busy_json,) = json.loads(listed.stdout)
        assert (busy_json["name"], busy_json["online"], busy_json["slots_used"]) == (
            "busy",
            True,
            1,
        )
        assert busy_json["labels"] == {"zone": "eu"} and busy_json["last_heartbeat"]
        drained = cli("workers", "drain", "busy", "--exit", "--server", address)
        assert "draining (exit when idle)" in drained.stdout, drained.stderr
        second = client.run(flows.held, {"x": 2})  # type: ignore[attr-defined]
        poll(
            lambda: any("drained" in t.waiting for t in client.get(second.id, True).task_runs),
            "the second run to wait: its only worker is drained",
        )
        (tmp_path / "release").touch()
        assert client.wait(run.id).state is FlowRunState.SUCCESS
        assert busy.popen.wait(BOUND) == 0, "the drained worker exits once idle"
        poll(lambda: not client.list_workers()[0].online, "the server to see it leave")
        assert [(w.name, w.online) for w in client.list_workers()] == [("busy", False)]
        fresh = worker(cluster, address, "fresh")
        assert client.wait(second.id).result == 2
        fresh.stop()
    assert cli("workers", "drain", "nobody", "--server", address).returncode == 2


class Receiver:
    """A local HTTP server that records webhook bodies; answers 500 while ``failing``."""

    def __init__(self, port: int = 0) -> None:
        self.bodies: list[dict[str, object]] = []
        self.headers: list[dict[str, str]] = []
        self.failing = 0  # answer 500 to this many more requests
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.failing > 0:
                    receiver.failing -= 1
                    self.send_response(500)
                else:
                    # Headers first: the test polls for a body, then reads both.
                    receiver.headers.append(dict(self.headers))
                    receiver.bodies.append(json.loads(data))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_webhooks_reach_a_local_receiver_at_least_once_across_a_restart(
    tmp_path: Path, db: str, cluster: Cluster
) -> None:
    fast = ("--ui-url", "http://ui.example")
    env_backoff = {"HEADWATER_CONFIG": str(tmp_path / "headwater.toml")}
    (tmp_path / "headwater.toml").write_text(
        '[webhook_delivery]\nbackoff = "0.2s"\nbackoff_max = "1s"\nmax_attempts = 50\n'
    )
    configured = functools.partial(cluster, env=env_backoff)
    srv, address = start_server(configured, db, 0, *fast)
    port = int(address.rsplit(":", 1)[1])
    receiver = Receiver()
    receiver.failing = 2  # the first two tries fail: delivered on the third
    created = cli(
        "webhooks", "create", receiver.url, "--flow", "pipeline", "--state", "FAILED",
        "--state", "SUCCESS", "--secret", "s3cret", "--server", address,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    hook_id = created.stdout.split()[0]
    worker(cluster, address, "w1")
    flows = module(tmp_path)
    (tmp_path / "broken").touch()
    with Client(address) as client:
        run = client.run(flows.pipeline, {"n": 3})  # type: ignore[attr-defined]
        assert client.wait(run.id).state is FlowRunState.FAILED
        poll(lambda: len(receiver.bodies) == 1, "the FAILED notice to be delivered")
    body = receiver.bodies[0]
    assert body["event"] == "flow_run.state_changed" and body["state"] == "FAILED"
    assert body["flow_run_id"] == run.id and body["flow_name"] == "pipeline"
    assert "square[2]" in str(body["message"]) and body["url"] == f"http://ui.example/runs/{run.id}"
    signed = hmac.new(b"s3cret", json.dumps(body, sort_keys=True).encode(), hashlib.sha256)
    assert receiver.headers[0]["X-Headwater-Signature"] == signed.hexdigest()

    # The receiver goes away; the next notice waits in the outbox through a restart.
    receiver.close()
    (tmp_path / "broken").unlink()
    with Client(address) as client:
        client.retry(run.id)
        assert client.wait(run.id).state is FlowRunState.SUCCESS
        poll(
            lambda: client.list_webhooks()[0].pending >= 1 and client.list_webhooks()[0].last_error,
            "a failed try of the SUCCESS notice",
        )
    srv.kill()
    srv, _ = start_server(configured, db, port, *fast)
    again = Receiver(receiver.port)
    try:
        poll(lambda: len(again.bodies) >= 1, "the SUCCESS notice after the restart")
        assert again.bodies[0]["state"] == "SUCCESS" and again.bodies[0]["attempt"] == 2
        with Client(address) as client:
            poll(lambda: client.list_webhooks()[0].pending == 0, "the outbox to empty")
            listed = cli("webhooks", "list", "--server", address)
            assert hook_id in listed.stdout and "pending 0" in listed.stdout
            # by a unique prefix, as schedules and runs (it needed the whole id: a trial)
            deleted = cli("webhooks", "delete", hook_id[:8], "--server", address)
            assert (deleted.returncode, deleted.stdout) == (0, f"webhook {hook_id} deleted\n")
            assert client.list_webhooks() == []
    finally:
        again.close()


def test_a_run_that_cannot_start_is_marked_late_with_the_reason(
    tmp_path: Path, db: str, cluster: Cluster
) -> None:
    _, address = server(cluster, db, "--late-after", "0.5s", "--metrics-port", "0")
    flows = module(tmp_path)
    with Client(address) as client:
        run = client.run(flows.pipeline)  # type: ignore[attr-defined]  # no worker at all
        poll(lambda: client.get(run.id).late_reason != "", "the run to be marked late")
        late = client.get(run.id)
        assert late.state is FlowRunState.RUNNING
        assert late.late_reason == "waiting: no connected worker offers ops_tasks.numbers"
        listed = cli("runs", "list", "--server", address)
        assert "LATE (waiting: no connected worker offers ops_tasks.numbers)" in listed.stdout


def test_metrics_are_served_in_the_prometheus_format(
    tmp_path: Path, db: str, cluster: Cluster
) -> None:
    srv, address = server(cluster, db, "--metrics-port", "0")
    url = srv.wait_line("headwater metrics on").rsplit(" ", 1)[1]

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(url, timeout=BOUND) as answer:
            assert answer.headers["Content-Type"].startswith("text/plain")
            text = answer.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    depth = 'headwater_queue_depth{capability="ops_tasks.numbers"}'
    with Client(address) as client:
        run = client.run(module(tmp_path).pipeline, {"n": 3})  # type: ignore[attr-defined]
        poll(lambda: scrape().get(depth) == 1.0, "the queue depth of a task with no worker")
        assert scrape()["headwater_workers_online"] == 0.0
        worker(cluster, address, "w1")
        assert client.wait(run.id).state is FlowRunState.SUCCESS
    poll(lambda: scrape().get("headwater_workers_online") == 1.0, "the worker gauge")
    values = scrape()
    assert values['headwater_flow_runs{state="SUCCESS"}'] == 1.0
    assert values["headwater_task_runs_started_total"] == 1 + 3 + 3 + 1
    assert values['headwater_task_runs_finished_total{state="SUCCESS"}'] == 8
    assert values['headwater_task_runs_finished_total{state="MAPPED"}'] == 2
    assert values["headwater_ready_to_start_seconds_count"] == 8
    assert values["headwater_commit_seconds_count"] >= 1
    poll(lambda: scrape()[depth] == 0.0, "the queue to empty")


def test_the_server_reads_a_configuration_file_below_env_and_flags(
    tmp_path: Path, cluster: Cluster
) -> None:
    config = tmp_path / "headwater.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [server]
            db = "{tmp_path / "from-file.db"}"
            port = 1
            late_after = "0.5s"

            [limits.db]
            concurrency = 2
            rate = "100/m"
            """
        )
    )
    # HEADWATER_PORT beats the file's port 1; the --db flag beats the file's db.
    srv = cluster(
        "server", "--config", str(config), "--db", str(tmp_path / "flag.db"),
        env={"HEADWATER_PORT": "0"},
    )  # fmt: skip
    address = srv.wait_line("listening on").rsplit(" ", 1)[1]
    assert (tmp_path / "flag.db").exists() and not (tmp_path / "from-file.db").exists()
    with Client(address) as client:
        (limit,) = client.list_limits()
        assert (limit.tag, limit.concurrency, limit.rate, limit.rate_period) == ("db", 2, 100, 60)
        run = client.run(module(tmp_path).pipeline)  # type: ignore[attr-defined]
        poll(lambda: client.get(run.id).late_reason != "", "the file's late_after")
    (tmp_path / "bad.toml").write_text("[server]\nprot = 1\n")
    bad = cli("server", "--config", str(tmp_path / "bad.toml"))
    assert bad.returncode == 2 and "unknown key [server] prot" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
