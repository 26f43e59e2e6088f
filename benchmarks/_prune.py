"""Probe ``server-prune``: do a server's writes wait while old runs are pruned?

A SQLite database is filled with ``runs`` finished runs (each: a result value holding a
payload of ``kb`` KB, 40 journal entries, 20 task runs, 20 log records) through the
store, before any server opens it. Then a real ``headwater server`` serves it and this
process creates one-task runs (no worker: they stay queued) one after another on a
thread, after registering their flow: each CreateFlowRun (and the RegisterFlow) returns
once it is committed, so its round trip is how long the server's writes waited.
Phases, each with the round trips that overlapped it:

* ``idle``: 2 s before anything else (the machine's own noise);
* ``dry-run``: ``headwater prune --older-than 1s --dry-run`` beside the server;
* ``prune``: ``headwater prune --older-than 1s`` beside the server;
* ``retention``: the database is filled again, and a server started with
  ``--retention 1s`` prunes it itself at its start (until its "pruned" log line).

``BENCH_SERVER_SRC=DIR`` runs the server and the prune command from another checkout's
source tree, for a before/after pair with the same harness.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

from headwater.v1 import control_plane_pb2 as cp
from headwater.v1 import control_plane_pb2_grpc, graph_pb2

from ._probes import IDLE_S, _env, _stats_ms
from ._server import ROOT, _Proc

CREATE_EVERY = 0.005


def fill(path: Path, runs: int, kb: int, start: int = 0) -> int:
    """``runs`` finished runs, ended long ago, into the SQLite database at ``path``;
    the bytes of the database file after."""
    from headwater.wire import FlowRunState
    from headwater_runtime.store import (
        FlowRunRow,
        LogRow,
        RunEvent,
        SQLiteStore,
        TaskRunRow,
        ValueRow,
        WriteBatch,
    )

    success = FlowRunState.SUCCESS.value
    store = SQLiteStore(path, clock=lambda: 1.0)
    try:
        blob = b"x" * (kb * 1024)
        for n in range(start, start + runs):
            run_id = f"old{n:06d}"
            store.create_flow_run(FlowRunRow(run_id, "old", "1", success, 1.0))
            ref = store.put_payload(iter([blob]), {"encoding": "bytes"}, len(blob)).id
            data = f"result {n}".encode()
            result = ValueRow(hashlib.sha256(data).hexdigest(), data, (ref,))
            batch = WriteBatch()
            batch.flow_runs[run_id] = FlowRunRow(run_id, "old", "1", success, 1.0, ended_at=2.0)
            batch.values[result.id] = result
            for seq in range(40):
                value_id = result.id if seq == 39 else ""
                batch.events.append(RunEvent(run_id, seq, 1.0, "Event", b"e" * 60, value_id))
            for i in range(20):
                key = f"t{i}"
                batch.task_runs[(run_id, key)] = TaskRunRow(run_id, key, "t", -1, success, 1, 1.0)
                batch.logs.append(LogRow(run_id, key, 1, 1.0, "INFO", "task", "a line " * 8))
            store.commit(batch)
    finally:
        store.close()
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


class _Creator:
    """CreateFlowRun of a one-task flow, one after another, on a thread."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = control_plane_pb2_grpc.ControlPlaneServiceStub(self.channel)
        graph = graph_pb2.FlowGraph(name="probe")
        graph.tasks.add(id="t", task_type="bench.noop")
        start = time.monotonic()  # (a write too: it waits like the creations)
        self.version = self.stub.RegisterFlow(
            cp.RegisterFlowRequest(graph=graph), timeout=600
        ).version
        self.samples: list[tuple[float, float]] = [(start, time.monotonic() - start)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        request = cp.CreateFlowRunRequest(flow_name="probe", flow_version=self.version)
        while not self._stop.is_set():
            start = time.monotonic()
            self.stub.CreateFlowRun(request, timeout=600)
            self.samples.append((start, time.monotonic() - start))
            self._stop.wait(CREATE_EVERY)

    def during(self, start: float, end: float) -> list[float]:
        return [d for s, d in list(self.samples) if s <= end and s + d >= start]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(600)
        self.channel.close()


def _server(db: Path, cwd: str, *extra: str) -> tuple[_Proc, str]:
    args = [sys.executable, "-m", "headwater._cli", "server", "--port", "0", "--db", str(db)]
    proc = _Proc([*args, *extra], _env(), cwd)
    line = proc.wait_line("headwater server listening on")
    return proc, line.split("listening on ", 1)[1].split(" ", 1)[0]


def _prune_command(db: Path, *extra: str) -> tuple[float, float, str]:
    args = [sys.executable, "-m", "headwater._cli", "prune", "--db", str(db)]
    start = time.monotonic()
    done = subprocess.run(
        [*args, "--older-than", "1s", "--payload-grace", "1s", *extra],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    end = time.monotonic()
    if done.returncode != 0:
        raise RuntimeError(f"headwater prune failed: {done.stderr.strip()[-500:]}")
    return start, end, done.stdout.strip().splitlines()[0]


def measure_prune(spec: dict[str, Any]) -> dict[str, Any]:
    runs, kb = spec["params"]["runs"], spec["params"]["kb"]
    with tempfile.TemporaryDirectory(prefix="headwater-prune-probe-") as tmp:
        db = Path(tmp) / "headwater.db"
        filled = fill(db, runs, kb)
        phases: dict[str, Any] = {}
        said: dict[str, str] = {}
        proc, address = _server(db, tmp)
        creator: _Creator | None = None
        try:
            creator = _Creator(address)
            time.sleep(IDLE_S)
            end = time.monotonic()
            phases["idle"] = {"call_s": IDLE_S, **_stats_ms(creator.during(end - IDLE_S, end))}
            for phase, extra in (("dry-run", ("--dry-run",)), ("prune", ())):
                start, end, said[phase] = _prune_command(db, *extra)
                time.sleep(0.2)
                phases[phase] = {"call_s": end - start, **_stats_ms(creator.during(start, end))}
        finally:
            if creator is not None:
                creator.close()
            proc.stop()
        refilled = fill(db, runs, kb, start=runs)
        proc, address = _server(db, tmp, "--retention", "1s")
        creator = None
        try:
            start = time.monotonic()
            creator = _Creator(address)
            line = proc.wait_line("pruned ", timeout=1800)
            end = time.monotonic()
            time.sleep(0.2)
            said["retention"] = line.split(": ", 1)[-1]
            phases["retention"] = {"call_s": end - start, **_stats_ms(creator.during(start, end))}
        finally:
            if creator is not None:
                creator.close()
            proc.stop()
    return {
        "system": "server-prune",
        "params": spec["params"],
        "tasks": runs,
        "check": runs,
        "db_bytes": filled,
        "refilled_bytes": refilled,
        "phases": phases,
        "said": said,
        "server_src": _env().get("BENCH_SERVER_SRC", ""),
    }


def format_prune(name: str, data: dict[str, Any]) -> str:
    source = f" (server and prune from {data['server_src']})" if data.get("server_src") else ""
    lines = [
        f"{name}: CreateFlowRun round trips (ms; each returns once its run is committed) "
        f"while {data['tasks']:,} finished runs ({data['db_bytes'] / 2**20:.0f} MiB of "
        f"database) are pruned{source}",
        f"  {'phase':10} {'phase s':>8} {'creates':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>9}",
    ]
    for phase, d in data["phases"].items():
        lines.append(
            f"  {phase:10} {d['call_s']:8.2f} {d['n']:8d} {d['p50']:8.2f} {d['p99']:8.2f} "
            f"{d['max']:9.1f}"
        )
    for phase, text in data["said"].items():
        lines.append(f"  {phase}: {text}")
    return "\n".join(lines)
