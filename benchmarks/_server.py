"""Server workloads: a real ``headwater server`` and ``headwater worker`` processes.

Runs inside one measurement process (``_child``), which is the client. The server and
workers are its own subprocesses, started with ``[sys.executable, "-m",
"headwater._cli", ...]`` and always stopped in ``finally`` (SIGTERM, then SIGKILL, by
pid). The harness also starts each measurement process in a process group of its
own and kills that group if the measurement times out or is interrupted.

* ``fanout``: one server, two workers (default slots), the ``_dags`` fan-out at N with
  the server's durable state in SQLite in a temporary directory, or (``store:
  postgres``) in a PostgreSQL server started for the measurement (Debian's package,
  ``tests/pg_cluster.py``, with PostgreSQL's durable defaults: fsync on, each commit
  waits for its WAL flush), or (``postgres-async``) the same server with the store's
  sessions at ``synchronous_commit=off`` (docs/deployment.md, Durability). The timed part goes from
  just before ``client.run`` to the run's ``ended_at`` as the server records it (same
  machine, same clock). Registering the flow (compile + RegisterFlow) is ``setup``.
* ``fanout`` with ``tls``: the same, with the server speaking TLS (``--tls-cert``,
  ``--tls-key``; certificates made with trustme in the temporary directory) and the
  workers and the client verifying it with ``--tls-ca``: the ``server-tls`` system,
  measured in the same run as ``server`` so that the cost of TLS is a same-run ratio.
* ``latency``: one server, one worker, sequential runs of a one-task flow whose task
  returns ``time.time()`` at its first line. Per run, ``ready_to_start`` is that value
  minus the SCHEDULED timestamp the server gave the task run (the moment its engine
  made the task ready). See README.md for what that includes.
* ``runs``: one server, one worker, a burst of one-task runs created back to back by
  one client; the wall runs from the first ``client.run`` to the last run's
  ``ended_at``, and server CPU per run includes about one GetFlowRun poll per run.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from headwater import Client
from headwater.v1 import control_plane_pb2 as cp
from headwater.v1 import control_plane_pb2_grpc, run_pb2
from headwater.wire import FlowRunState, TaskRunState, decode_value, seconds

from ._dags import FanOut

# The harness also measures an older checkout's server in that checkout's interpreter
# (--baseline): only names every version has are imported at module level; the
# variables a cluster must not inherit are spelled out for the same reason.
_OUR_VARIABLES = (
    "HEADWATER_TOKEN",
    "HEADWATER_DB",
    "HEADWATER_TLS",
    "HEADWATER_TLS_CA",
    "HEADWATER_TLS_CERT",
    "HEADWATER_TLS_KEY",
    "HEADWATER_TLS_CLIENT_CA",
)

ROOT = Path(__file__).resolve().parent.parent
TASKS_MODULE = "benchmarks._server_tasks"
#: How long a server or worker gets to print its ready line.
START_TIMEOUT = 30.0
#: How long one flow run may take before the measurement gives up.
RUN_TIMEOUT = 240.0
WARMUP_FANOUT = 50
WARMUP_LATENCY_RUNS = 10


# ------------------------------------------------------------------ subprocesses


class _Proc:
    """A subprocess whose stdout and stderr are drained by reader threads (the last
    lines are kept for error messages)."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: str) -> None:
        self.args = args
        self.popen = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        self.pid = self.popen.pid
        self.lines: collections.deque[str] = collections.deque(maxlen=200)
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(pipe,), daemon=True)
            for pipe in (self.popen.stdout, self.popen.stderr)
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, pipe: Any) -> None:
        for line in pipe:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_line(self, fragment: str, timeout: float = START_TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if fragment in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.popen.poll() is not None:
                    break
                self._cond.wait(min(left, 0.1))
        tail = " / ".join(list(self.lines)[-5:])
        raise RuntimeError(f"{' '.join(self.args[2:4])}: no {fragment!r} line; output: {tail}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; by pid, and only while it is still ours."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        for reader in self._readers:
            reader.join(2)
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()


def _pg_cluster() -> Any:
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import pg_cluster

    return pg_cluster


def start_postgres() -> Any:
    """A PostgreSQL server for the server workloads (``tests/pg_cluster.py``), with its
    durable defaults (fsync on): the figure is what a deployment would see. The
    harness starts one per benchmark run; each measurement gets a database of its own."""
    return _pg_cluster().TempPostgres(durable=True)


def new_database(spec: dict[str, Any]) -> tuple[str, Any]:
    """A fresh database on the run's PostgreSQL server (``spec["pg_url"]``), or on one
    started for this measurement (returned, to stop); its URL."""
    if spec.get("pg_url"):
        return _pg_cluster().create_database(spec["pg_url"]), None
    server = start_postgres()
    return server.database(), server


def _proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux only)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_peak_mb(pid: int) -> float | None:
    """Peak resident set size of a process (VmHWM; Linux only)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


class Cluster:
    """``headwater server`` plus ``workers`` worker processes, in a temporary directory
    that holds the SQLite database. Use as a context manager: everything it started is
    stopped on exit, whatever happened."""

    def __init__(
        self,
        workers: int,
        slots: int | None = None,
        profile_to: str | None = None,
        env: dict[str, str] | None = None,
        tls: bool = False,
        store: str = "sqlite",
        spec: dict[str, Any] | None = None,
        server_args: tuple[str, ...] = (),
        worker_args: tuple[str, ...] = (),
    ) -> None:
        self.n_workers = workers
        self.server_args = server_args  # more flags for ``headwater server``
        self.worker_args = worker_args  # more flags for each ``headwater worker``
        self.tls = tls
        self.ca: str | None = None
        self.store = store
        self.spec = spec or {}
        self.postgres: Any = None
        self._db_arg = ""  # --db: the SQLite file, or the PostgreSQL database's URL
        self.slots = slots
        self.profile_to = profile_to  # run the server under cProfile, stats to this file
        self.extra_env = env or {}
        self.server: _Proc | None = None
        self.workers: list[_Proc] = []
        self.address = ""
        self.tmp = ""  # the temporary directory (database, and HW_BENCH_DIR)
        self._env: dict[str, str] = {}
        self._secure_server: list[str] = []  # --tls-cert/--tls-key when tls
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> Cluster:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def db(self) -> Path:
        return Path(self.tmp) / "headwater.db"

    def _start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="headwater-bench-")
        tmp = self.tmp = self._tmp.name
        env = {k: v for k, v in os.environ.items() if k not in _OUR_VARIABLES}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env.update(self.extra_env)
        self._env = env
        cli = [sys.executable, "-m", "headwater._cli"]
        secure: list[str] = []
        if self.tls:
            cert, key, self.ca = _certificates(Path(tmp))
            self._secure_server = ["--tls-cert", cert, "--tls-key", key]
            secure = ["--tls-ca", self.ca]
        self._db_arg = str(self.db)
        if self.store.startswith("postgres"):
            self._db_arg, self.postgres = new_database(self.spec)
            if self.store == "postgres-async":  # commits do not wait for the WAL flush
                self._db_arg += "?options=-csynchronous_commit%3Doff"
        self.start_server("0")
        for i in range(self.n_workers):
            args = [*cli, "worker", "--server", self.address, "--module", TASKS_MODULE, *secure]
            args += ["--name", f"bench-w{i + 1}", *self.worker_args]
            if self.slots is not None:
                args += ["--slots", str(self.slots)]
            self.workers.append(_Proc(args, env, tmp))
        self.worker_slots = [
            int(w.wait_line("connected to").rsplit("capabilities, ", 1)[1].split()[0])
            for w in self.workers
        ]

    def start_server(self, port: str) -> None:
        """Start the server (on ``port``, "0": any) on the cluster's database and wait
        until it listens."""
        cli = [sys.executable, "-m", "headwater._cli"]
        profiler = ["-m", "cProfile", "-o", self.profile_to] if self.profile_to else []
        server = [sys.executable, *profiler, *cli[1:], "server", "--port", port]
        server += [*self._secure_server, *self.server_args]
        self.server = _Proc([*server, "--db", self._db_arg], self._env, self.tmp)
        line = self.server.wait_line("headwater server listening on")
        self.address = line.split("listening on ", 1)[1].split(" ", 1)[0]

    def kill_server(self) -> None:
        """SIGKILL the server and wait until it is gone."""
        assert self.server is not None
        self.server.popen.kill()
        self.server.popen.wait(START_TIMEOUT)
        self.server.stop()  # joins its readers, closes its pipes

    def client(self) -> Client:
        """A Client of this server (verifying its certificate when it speaks TLS)."""
        if self.ca is None:  # a baseline's Client may not take tls_ca
            return Client(self.address)
        return Client(self.address, tls_ca=self.ca)

    def close(self) -> None:
        procs = [*self.workers, *([self.server] if self.server else [])]
        for proc in procs:  # workers first, so they do not log reconnect attempts
            try:
                proc.stop()
            except Exception as exc:  # keep stopping the others
                print(f"could not stop pid {proc.pid}: {exc}", file=sys.stderr)
        if self.postgres is not None:
            self.postgres.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def cpu(self) -> dict[str, float | None]:
        assert self.server is not None
        out = {"server": _proc_cpu_s(self.server.pid)}
        for i, worker in enumerate(self.workers):
            out[f"worker{i + 1}"] = _proc_cpu_s(worker.pid)
        out["client"] = time.process_time()
        return out

    def peaks(self) -> dict[str, float | None]:
        assert self.server is not None
        out = {"server": _proc_peak_mb(self.server.pid)}
        for i, worker in enumerate(self.workers):
            out[f"worker{i + 1}"] = _proc_peak_mb(worker.pid)
        return out


# ------------------------------------------------------------------------ client


def _seconds(ts: Any) -> float:
    return seconds(ts)


def _certificates(folder: Path) -> tuple[str, str, str]:
    """A CA and a server certificate for 127.0.0.1 (trustme, a development dependency):
    the certificate, key and CA files."""
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = (str(folder / n) for n in ("server.crt", "server.key", "ca.pem"))
    leaf.cert_chain_pems[0].write_to_path(cert)
    leaf.private_key_pem.write_to_path(key)
    ca.cert_pem.write_to_path(ca_file)
    return cert, key, ca_file


class _Raw:
    """GetFlowRun through the generated stub: the Client does not expose timestamps."""

    def __init__(self, address: str, ca: str | None = None) -> None:
        if ca is None:  # a baseline's wire may have no TLS helpers
            # A 100,000-task run with its task runs is ~25 MB (server-restart-wide).
            options = [("grpc.max_receive_message_length", -1)]
            self.channel = grpc.insecure_channel(address, options)
        else:
            from headwater.wire import TLSSettings, open_channel

            self.channel = open_channel(address, TLSSettings(ca=ca))
        self.stub = control_plane_pb2_grpc.ControlPlaneServiceStub(self.channel)

    def get(self, run_id: str, task_runs: bool = False) -> cp.GetFlowRunResponse:
        request = cp.GetFlowRunRequest(id=run_id, include_task_runs=task_runs)
        return self.stub.GetFlowRun(request, timeout=60)

    def wait_end(self, run_id: str, poll: float, timeout: float = RUN_TIMEOUT) -> run_pb2.FlowRun:
        """Poll until the run is terminal; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            time.sleep(poll)  # not at once: a poll must not race the run it waits for
            run = self.get(run_id).flow_run
            if FlowRunState(run.state).is_terminal:
                return run
            if time.monotonic() > deadline:
                raise RuntimeError(f"flow run {run_id} not finished after {timeout:g} s")

    def close(self) -> None:
        self.channel.close()


def _deltas(
    after: dict[str, float | None], before: dict[str, float | None]
) -> dict[str, float | None]:
    deltas: dict[str, float | None] = {}
    for key, end in after.items():
        start = before.get(key)
        deltas[key] = None if end is None or start is None else end - start
    return deltas


def measure_fanout(spec: dict[str, Any]) -> dict[str, Any]:
    n = spec["params"]["n"]
    dag = FanOut(n)
    flow = dag.flow()
    with (
        Cluster(
            workers=2, tls=spec.get("tls", False), store=spec.get("store", "sqlite"), spec=spec
        ) as cluster,
        cluster.client() as client,
    ):
        raw = _Raw(cluster.address, cluster.ca)
        try:
            warm = client.run(FanOut(WARMUP_FANOUT).flow())  # imports, connections
            if raw.wait_end(warm.id, 0.01).state != FlowRunState.SUCCESS.value:
                raise RuntimeError("the warm-up run did not succeed")
            start = time.perf_counter()
            version = client.deploy(flow)
            setup = time.perf_counter() - start
            walls: list[float] = []
            seen: list[float] = []
            returned: list[float] = []
            cpu: list[dict[str, Any]] = []
            run_id = ""
            for _ in range(spec.get("repeats", 1)):
                cpu_before = cluster.cpu()
                t0 = time.time()
                run_id = client.run(flow.name, version=version).id
                returned.append(time.time() - t0)
                ended = raw.wait_end(run_id, 0.01)
                seen.append(time.time() - t0)
                cpu.append(_deltas(cluster.cpu(), cpu_before))
                if ended.state != FlowRunState.SUCCESS.value:
                    raise RuntimeError(f"flow run ended {FlowRunState(ended.state).name}")
                walls.append(_seconds(ended.ended_at) - t0)
            final = client.get(run_id, include_task_runs=True)
            states = collections.Counter(t.state.name for t in final.task_runs)
            if states.get("SUCCESS") != dag.tasks:
                raise RuntimeError(f"expected {dag.tasks} successful task runs, got {states}")
            check = dag.check(final.result)
            attempts = sum(t.attempts for t in final.task_runs)
            peaks = cluster.peaks()
        finally:
            raw.close()
    return {
        "system": spec["system"],
        "kind": "fanout",
        "params": spec["params"],
        "tasks": dag.tasks,
        "label": dag.label,
        "walls": walls,
        "compiles": [],
        "setup_s": setup,
        "client_run_s": returned,
        "client_seen_s": seen,
        "check": check,
        "attempts": attempts,
        "cpu_s": cpu,
        "peak_rss_mb": peaks,
        "workers": cluster.n_workers,
        "worker_slots": cluster.worker_slots,
        "tls": cluster.tls,
    }


@contextlib.contextmanager
def _latency_cluster(spec: dict[str, Any]) -> Iterator[tuple[Cluster, Client, _Raw, str, float]]:
    """A server and one worker with ``bench_latency`` deployed: the cluster, a client,
    a raw stub, the flow's version and the seconds deploying it took."""
    from ._server_tasks import latency_flow

    with (
        Cluster(workers=1, store=spec.get("store", "sqlite"), spec=spec) as cluster,
        Client(cluster.address) as client,
    ):
        raw = _Raw(cluster.address)
        try:
            start = time.perf_counter()
            version = client.deploy(latency_flow)
            yield cluster, client, raw, version, time.perf_counter() - start
        finally:
            raw.close()


def measure_runs(spec: dict[str, Any]) -> dict[str, Any]:
    """``runs``: one-task runs created back to back by one client (as a burst of
    webhook- or API-triggered runs arrives), 1 worker; the wall is from the first
    ``client.run`` to the last run's ``ended_at``. Per-run costs (a run's creation, its
    first assignment, its end) dominate here, where the fan-out spreads them over
    10,000 tasks."""
    from ._server_tasks import latency_flow

    runs, name = spec["params"]["runs"], latency_flow.name
    with _latency_cluster(spec) as (cluster, client, raw, version, setup):
        for _ in range(WARMUP_LATENCY_RUNS):
            raw.wait_end(client.run(name, version=version).id, 0.002)
        walls: list[float] = []
        returned: list[float] = []
        cpu: list[dict[str, Any]] = []
        for _ in range(spec.get("repeats", 1)):
            cpu_before = cluster.cpu()
            t0 = time.time()
            ids = [client.run(name, version=version).id for _ in range(runs)]
            returned.append((time.time() - t0) / runs)
            ended = [raw.wait_end(run_id, 0.002) for run_id in ids]
            cpu.append(_deltas(cluster.cpu(), cpu_before))
            failed = [e.id for e in ended if e.state != FlowRunState.SUCCESS.value]
            if failed:
                raise RuntimeError(f"{len(failed)} of {runs} runs did not succeed")
            walls.append(max(_seconds(e.ended_at) for e in ended) - t0)
        peaks = cluster.peaks()
    return {
        "system": spec["system"],
        "kind": "runs",
        "params": spec["params"],
        "tasks": runs,
        "label": f"{runs} runs",
        "walls": walls,
        "compiles": [],
        "setup_s": setup,
        "client_run_s": returned,
        "check": runs,
        "attempts": runs,
        "cpu_s": cpu,
        "peak_rss_mb": peaks,
        "workers": cluster.n_workers,
        "worker_slots": cluster.worker_slots,
    }


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "p95": _percentile(values, 95),
        "min": min(values),
        "max": max(values),
    }


def measure_latency(spec: dict[str, Any]) -> dict[str, Any]:
    from ._server_tasks import latency_flow

    runs = spec["params"]["runs"]
    scheduled, running = TaskRunState.SCHEDULED.value, TaskRunState.RUNNING.value
    series: dict[str, list[float]] = {
        "ready_to_start": [],  # SCHEDULED (server) -> task function starts (worker)
        "ready_to_running": [],  # SCHEDULED -> RUNNING, both server timestamps
        "returned_to_start": [],  # client.run returned (client) -> task starts (worker)
        "called_to_start": [],  # client.run called (client) -> task starts (worker)
        "run_wall": [],  # client.run called -> the run's ended_at (server)
    }
    with _latency_cluster(spec) as (cluster, client, raw, version, setup):
        cpu_before = cluster.cpu()
        for i in range(WARMUP_LATENCY_RUNS + runs):
            time.sleep(0.005)  # let the previous run's last messages settle: idle
            called = time.time()
            run_id = client.run(latency_flow.name, version=version).id
            returned = time.time()
            ended = raw.wait_end(run_id, 0.002)
            if ended.state != FlowRunState.SUCCESS.value:
                raise RuntimeError(f"flow run ended {FlowRunState(ended.state).name}")
            started = float(decode_value(ended.result))
            (task_run,) = raw.get(run_id, task_runs=True).task_runs
            history = {h.state: _seconds(h.timestamp) for h in task_run.history}
            if i < WARMUP_LATENCY_RUNS:
                continue
            series["ready_to_start"].append(started - history[scheduled])
            series["ready_to_running"].append(history[running] - history[scheduled])
            series["returned_to_start"].append(started - returned)
            series["called_to_start"].append(started - called)
            series["run_wall"].append(_seconds(ended.ended_at) - called)
        cpu = _deltas(cluster.cpu(), cpu_before)
        peaks = cluster.peaks()
    return {
        "system": spec["system"],
        "kind": "latency",
        "params": spec["params"],
        "tasks": runs,
        "label": f"{runs} runs",
        "walls": [],
        "compiles": [],
        "setup_s": setup,
        "latency_s": series["ready_to_start"],
        "stats_ms": {k: {s: x * 1e3 for s, x in _stats(v).items()} for k, v in series.items()},
        "check": runs,
        "cpu_s": [cpu],
        "peak_rss_mb": peaks,
        "workers": cluster.n_workers,
        "worker_slots": cluster.worker_slots,
    }


def profile_fanout(n: int, top: int) -> int:
    """``--profile server-fanout``: one fan-out run at ``n`` with the server under
    cProfile (its main thread: the asyncio loop, where the engine, the SQLite commits
    and the gRPC servicers run). The profile covers the server's whole life, so it
    includes start-up, a warm-up run at 50 and registering the flow."""
    import io
    import pstats

    dag = FanOut(n)
    with tempfile.TemporaryDirectory(prefix="headwater-bench-prof-") as tmp:
        out = str(Path(tmp) / "server.prof")
        with Cluster(workers=2, profile_to=out) as cluster, Client(cluster.address) as client:
            raw = _Raw(cluster.address)
            try:
                raw.wait_end(client.run(FanOut(WARMUP_FANOUT).flow()).id, 0.01)
                version = client.deploy(dag.flow())
                cpu_before = cluster.cpu()
                t0 = time.time()
                ended = raw.wait_end(client.run(dag.flow().name, version=version).id, 0.01)
                wall = _seconds(ended.ended_at) - t0
                cpu = _deltas(cluster.cpu(), cpu_before)
            finally:
                raw.close()
        stats = pstats.Stats(out, stream=(text := io.StringIO()))
    state = FlowRunState(ended.state).name
    print(
        f"server-fanout ({dag.label}, {dag.tasks:,} tasks): {state} in {wall:.3f} s under the "
        f"profiler ({dag.tasks / wall:,.0f} tasks/s); CPU s: "
        + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if v is not None)
    )
    print("server main thread, whole life; by own time, then by cumulative time\n")
    for order in ("tottime", "cumulative"):
        stats.sort_stats(order)
        stats.print_stats(top)
        body = text.getvalue()
        start = body.find("   ncalls")
        print(f"-- top {top} by {order} --")
        print((body[start:] if start >= 0 else body).rstrip() + "\n")
        text.seek(0)
        text.truncate()
    return 0 if state == "SUCCESS" else 1


class _Pinger:
    """Another client's GetServerInfo round trips, every 10 ms on a thread of its own:
    how long the server keeps everyone else waiting while it runs a wide map."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = control_plane_pb2_grpc.ControlPlaneServiceStub(self.channel)
        self.rtts: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            t = time.perf_counter()
            self.stub.GetServerInfo(cp.GetServerInfoRequest(), timeout=600)
            self.rtts.append((time.perf_counter() - t) * 1e3)

    def stop(self) -> dict[str, float]:
        """Stop; the round trips' median, p99 and max (ms)."""
        if not self._stop.is_set():
            self._stop.set()
            if self._thread.is_alive():
                self._thread.join(600)
            self.channel.close()
        rtts = sorted(self.rtts) or [0.0]
        return {
            "n": len(self.rtts),
            "p50": rtts[len(rtts) // 2],
            "p99": rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))],
            "max": rtts[-1],
        }


#: The widest map that runs at the default message limit (4 MiB); wider ones raise it.
MAP_AT_DEFAULT_MESSAGE = 100_000


def measure_map(spec: dict[str, Any]) -> dict[str, Any]:
    """One run of ``src(n) -> noop.map -> total`` (n + 2 task runs) on a server whose
    map width limit is ``n``: that a large run completes, how long it takes and how
    much memory the server holds (issue 18's "1M-task server run": a map that wide
    cannot run yet, see README.md)."""
    from ._server_tasks import map_flow

    n = spec["params"]["n"]
    server_args: tuple[str, ...] = ("--max-map-width", str(n))
    worker_args: tuple[str, ...] = ()
    if n > MAP_AT_DEFAULT_MESSAGE:
        # The source's elements travel in one result, and the reduce's inputs in one
        # assignment: ~30 bytes each, over gRPC's 4 MiB past ~100,000 (docs/limits.md).
        message = ("--max-message-bytes", str(max(64 << 20, n * 64)))
        server_args += message
        worker_args += message
    with (
        Cluster(
            workers=2,
            store=spec.get("store", "sqlite"),
            spec=spec,
            server_args=server_args,
            worker_args=worker_args,
        ) as cluster,
        cluster.client() as client,
    ):
        raw = _Raw(cluster.address)
        pinger = _Pinger(cluster.address)
        try:
            start = time.perf_counter()
            version = client.deploy(map_flow)
            setup = time.perf_counter() - start
            cpu_before = cluster.cpu()
            pinger.start()
            t0 = time.time()
            run_id = client.run(map_flow.name, {"n": n}, version=version).id
            returned = time.time() - t0
            ended = raw.wait_end(run_id, 0.5, timeout=spec.get("timeout_s") or 1200)
            seen = time.time() - t0
            pings = pinger.stop()
            cpu = _deltas(cluster.cpu(), cpu_before)
            if ended.state != FlowRunState.SUCCESS.value:
                raise RuntimeError(f"flow run ended {FlowRunState(ended.state).name}")
            wall = _seconds(ended.ended_at) - t0
            check = int(decode_value(ended.result))
            if check != n * (n - 1) // 2:
                raise RuntimeError(f"the run's result is {check}, not the sum of range({n})")
            peaks = cluster.peaks()
        finally:
            pinger.stop()
            raw.close()
    return {
        "system": spec["system"],
        "kind": "fanout",  # the same row and notes as the fan-out
        "pings_ms": pings,
        "params": spec["params"],
        "tasks": n + 2,
        "label": f"map of {n:,}",
        "walls": [wall],
        "compiles": [],
        "setup_s": setup,
        "client_run_s": [returned],
        "client_seen_s": [seen],
        "check": check,
        "attempts": n + 2,
        "cpu_s": [cpu],
        "peak_rss_mb": peaks,
        "workers": cluster.n_workers,
        "worker_slots": cluster.worker_slots,
        "tls": False,
    }


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["kind"] == "fanout":
        return measure_fanout(spec)
    if spec["kind"] == "runs":
        return measure_runs(spec)
    if spec["kind"] == "server-map":
        return measure_map(spec)
    if spec["kind"] == "latency":
        return measure_latency(spec)
    if spec["kind"] == "failover":
        from ._failover import measure_failover

        return measure_failover(spec)
    raise ValueError(f"no server workload of kind {spec['kind']!r}")
