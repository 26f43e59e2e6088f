"""Server probes: is the event loop free while one client sends a heavy request, and do
downloads stream without loading a payload whole? (issue 12, "bounded, validated
input everywhere").

Both start a real ``headwater server`` subprocess (SQLite in a temporary directory):

* ``loop``: a second process (the *heavy client*) builds a FlowGraph of ``n`` minimal
  tasks and, when told, sends RegisterFlow, CreateFlowRun (no worker is connected: the
  ``n`` attempts stay queued) and CancelFlowRun, one after another. Meanwhile this
  process pings GetServerInfo every 2 ms on its own channel and records each round
  trip. The figures per phase are the round trips that overlapped the call, next to
  the *idle* phase before it (same server, same run): the idle figures are what the
  machine's own noise costs.
* ``download``: upload a payload of ``mb`` MB, then download it chunk by chunk (the
  client keeps no chunk) while a thread samples the server's resident set size every
  5 ms; the server's peak is also read from ``VmHWM`` after resetting it. A server that
  loaded the payload whole would grow by at least its size.

``BENCH_SERVER_SRC=DIR`` runs the server from another checkout's source tree (its
``python_sdk`` and ``runtime`` first on PYTHONPATH), to measure a before/after pair
with the same harness; ``BENCH_LOOP_CALLS=RegisterFlow,CreateFlowRun`` leaves out
the cancel (before this change, cancelling 100,000 queued attempts took hours).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from headwater.v1 import control_plane_pb2 as cp
from headwater.v1 import control_plane_pb2_grpc, payload_pb2, payload_pb2_grpc
from headwater.wire import CHUNK_SIZE, ENV_DB, ENV_TOKEN

from ._server import ROOT, _Proc

#: The heavy client: builds the graph, then runs each call named on stdin, printing
#: "<call> <start> <end>" (time.monotonic, comparable across processes on Linux).
HEAVY_CLIENT = r"""
import sys, time, grpc
from headwater.v1 import control_plane_pb2 as cp, control_plane_pb2_grpc, graph_pb2
address, n = sys.argv[1], int(sys.argv[2])
graph = graph_pb2.FlowGraph(name="heavy")
for i in range(n):
    graph.tasks.add(id=f"t{i}", task_type="bench.noop")
options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
stub = control_plane_pb2_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address, options))
print("ready", graph.ByteSize(), flush=True)
run_id = version = ""
for line in sys.stdin:
    call, start = line.strip(), time.monotonic()
    if call == "RegisterFlow":
        version = stub.RegisterFlow(cp.RegisterFlowRequest(graph=graph), timeout=600).version
    elif call == "CreateFlowRun":
        request = cp.CreateFlowRunRequest(flow_name="heavy", flow_version=version)
        run_id = stub.CreateFlowRun(request, timeout=600).flow_run.id
    elif call == "CancelFlowRun":
        stub.CancelFlowRun(cp.CancelFlowRunRequest(id=run_id), timeout=600)
    print(call, start, time.monotonic(), flush=True)
"""
PHASES = ("RegisterFlow", "CreateFlowRun", "CancelFlowRun")
PING_EVERY = 0.002
IDLE_S = 2.0
#: A download streams when the server's peak grows by a few chunks in flight (gRPC's
#: flow-control window, SQLite's page cache), not by the payload.
DOWNLOAD_TARGET_MB = 32


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_TOKEN, ENV_DB)}
    paths = [str(ROOT)]
    source = os.environ.get("BENCH_SERVER_SRC")
    if source:
        paths = [str(Path(source) / "python_sdk"), str(Path(source) / "runtime"), *paths]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [*paths, env.get("PYTHONPATH")]))
    return env


class _Server:
    """A ``headwater server`` subprocess in a temporary directory."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="headwater-probe-")
        # BENCH_LOOP_DB: another database (a PostgreSQL URL) instead of a new SQLite file.
        db = os.environ.get("BENCH_LOOP_DB") or str(Path(self._tmp.name) / "headwater.db")
        args = [sys.executable, "-m", "headwater._cli", "server", "--port", "0", "--db", db]
        self.proc = _Proc(args, _env(), self._tmp.name)
        line = self.proc.wait_line("headwater server listening on")
        self.address = line.split("listening on ", 1)[1].split(" ", 1)[0]

    def close(self) -> None:
        try:
            self.proc.stop()
        finally:
            self._tmp.cleanup()


def _stats_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))] * 1e3

    return {"n": len(ordered), "p50": rank(0.5), "p99": rank(0.99), "max": ordered[-1] * 1e3}


class _Pinger:
    """GetServerInfo every PING_EVERY seconds on a channel of its own, on a thread."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = control_plane_pb2_grpc.ControlPlaneServiceStub(self.channel)
        self.stub.GetServerInfo(cp.GetServerInfoRequest(), timeout=30)  # connected
        self.samples: list[tuple[float, float]] = []  # (start, round trip)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        request = cp.GetServerInfoRequest()
        while not self._stop.is_set():
            start = time.monotonic()
            self.stub.GetServerInfo(request, timeout=600)
            self.samples.append((start, time.monotonic() - start))
            self._stop.wait(PING_EVERY)

    def during(self, start: float, end: float) -> list[float]:
        """Round trips that overlapped [start, end]."""
        return [d for s, d in list(self.samples) if s <= end and s + d >= start]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(60)
        self.channel.close()


def measure_loop(spec: dict[str, Any]) -> dict[str, Any]:
    n: int = spec["params"]["n"]
    server = _Server()
    heavy: subprocess.Popen[str] | None = None
    pinger: _Pinger | None = None
    try:
        heavy = subprocess.Popen(
            [sys.executable, "-c", HEAVY_CLIENT, server.address, str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
            cwd=ROOT,
        )
        assert heavy.stdin is not None and heavy.stdout is not None
        ready = heavy.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise RuntimeError(f"the heavy client did not start: {ready}")
        pinger = _Pinger(server.address)
        time.sleep(IDLE_S)
        end = time.monotonic()
        phases: dict[str, Any] = {
            "idle": {"call_s": IDLE_S, **_stats_ms(pinger.during(end - IDLE_S, end))}
        }
        calls = os.environ.get("BENCH_LOOP_CALLS", ",".join(PHASES)).split(",")
        for call in [c for c in PHASES if c in calls]:
            heavy.stdin.write(call + "\n")
            heavy.stdin.flush()
            answer = heavy.stdout.readline().split()
            if len(answer) != 3 or answer[0] != call:
                raise RuntimeError(
                    f"{call} failed: {answer}; server: {list(server.proc.lines)[-3:]}"
                )
            start, end = float(answer[1]), float(answer[2])
            time.sleep(0.2)  # round trips still under way when the call returned
            phases[call] = {"call_s": end - start, **_stats_ms(pinger.during(start, end))}
        return {
            "system": "server-loop",
            "params": spec["params"],
            "tasks": n,
            "check": n,
            "graph_bytes": int(ready[1]),
            "phases": phases,
            "server_src": os.environ.get("BENCH_SERVER_SRC", ""),
        }
    finally:
        if pinger is not None:
            pinger.close()
        if heavy is not None:
            heavy.kill()
            heavy.wait(30)
        server.close()


def _rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_download(spec: dict[str, Any]) -> dict[str, Any]:
    mb: int = spec["params"]["mb"]
    size = mb * 1_000_000
    server = _Server()
    pid = server.proc.pid
    channel = grpc.insecure_channel(server.address)
    try:
        stub = payload_pb2_grpc.PayloadServiceStub(channel)
        block = os.urandom(CHUNK_SIZE)
        digest = hashlib.sha256()

        def upload() -> Any:
            header = payload_pb2.UploadPayloadHeader(size_bytes=size, metadata={"encoding": "raw"})
            yield payload_pb2.UploadPayloadRequest(header=header)
            sent = 0
            while sent < size:
                chunk = block[: min(CHUNK_SIZE, size - sent)]
                digest.update(chunk)
                sent += len(chunk)
                yield payload_pb2.UploadPayloadRequest(chunk=chunk)

        ref = stub.UploadPayload(upload(), timeout=600).ref
        time.sleep(0.5)
        before = _rss_mb(pid)
        reset = _reset_peak(pid)
        samples: list[float] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append(_rss_mb(pid))
                done.wait(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        check = hashlib.sha256()
        received = chunks = 0
        started = time.perf_counter()
        request = payload_pb2.DownloadPayloadRequest(payload_id=ref.payload_id)
        for part in stub.DownloadPayload(request, timeout=600):
            check.update(part.chunk)
            received += len(part.chunk)
            chunks += 1
        wall = time.perf_counter() - started
        done.set()
        sampler.join(10)
        if received != size or check.hexdigest() != digest.hexdigest():
            raise RuntimeError(f"downloaded {received} bytes of {size}, or other bytes")
        peak = _rss_mb(pid, "VmHWM") if reset else max(samples)
        return {
            "system": "server-download",
            "params": spec["params"],
            "tasks": 0,
            "check": mb,
            "payload_mb": size / 2**20,
            "chunks": chunks,
            "download_s": wall,
            "rss_before_mb": before,
            "peak_growth_mb": max(peak, *samples) - before,
            "peak_from": "VmHWM" if reset else f"{len(samples)} samples",
            "server_src": os.environ.get("BENCH_SERVER_SRC", ""),
        }
    finally:
        channel.close()
        server.close()


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["system"] == "server-loop":
        return measure_loop(spec)
    if spec["system"] == "server-prune":
        from ._prune import measure_prune

        return measure_prune(spec)
    return measure_download(spec)


def format_probe(name: str, data: dict[str, Any], target_ms: float | None) -> str:
    """The probes' tables."""
    if data["system"] == "server-prune":
        from ._prune import format_prune

        return format_prune(name, data)
    source = f" (server from {data['server_src']})" if data.get("server_src") else ""
    if data["system"] == "server-download":
        growth = data["peak_growth_mb"]
        share = growth / data["payload_mb"]
        return "\n".join(
            [
                f"{name}: downloading a {data['payload_mb']:.0f} MiB payload in "
                f"{data['chunks']:,} chunks{source}",
                f"  server RSS before {data['rss_before_mb']:.0f} MB; peak growth during the "
                f"download {growth:.1f} MB ({share:.1%} of the payload, from "
                f"{data['peak_from']}); {data['download_s']:.2f} s; target: growth under "
                f"{DOWNLOAD_TARGET_MB} MB whatever the payload's size: "
                f"{'yes' if growth < DOWNLOAD_TARGET_MB else 'no'}",
            ]
        )
    lines = [
        f"{name}: GetServerInfo round trips (ms, every {PING_EVERY * 1e3:g} ms) while another "
        f"client sends a {data['tasks']:,}-task flow ({data['graph_bytes'] / 2**20:.1f} MiB)"
        f"{source}",
        f"  {'phase':14} {'call s':>8} {'pings':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}",
    ]
    for phase, d in data["phases"].items():
        lines.append(
            f"  {phase:14} {d['call_s']:8.2f} {d['n']:6d} {d['p50']:8.2f} {d['p99']:8.2f} "
            f"{d['max']:8.1f}"
        )
    if target_ms is not None:
        worst = max(d["max"] for p, d in data["phases"].items() if p != "idle")
        lines.append(
            f"  target: no round trip over {target_ms:g} ms during the calls: "
            f"{'yes' if worst <= target_ms else 'no'} (worst {worst:.1f} ms; idle max "
            f"{data['phases']['idle']['max']:.1f} ms is the machine's own noise)"
        )
    return "\n".join(lines)
