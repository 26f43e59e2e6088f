"""The benchmark harness runs end to end (``make bench`` stays usable).

This checks the harness works, not how fast anything is: timings are reported by
``python -m benchmarks``, never asserted in tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
# A bound, not a target: --quick took ~1 min on a quiet 2-core machine and ~3.5 min
# when half a dozen other test runs shared it, before the import, chain, map-1m and
# dask.distributed measurements of issue 18 were added (about a minute more); the
# PostgreSQL rows (a server started for the run, the failover round) add a minute or two.
@pytest.mark.timeout(900)
def test_quick_benchmarks_run_and_print_the_table() -> None:
    import pg_cluster

    if not pg_cluster.available() and not os.environ.get("CI"):
        pytest.skip("the PostgreSQL rows need PostgreSQL (apt-get install postgresql)")
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=840,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    header = next((line for line in proc.stdout.splitlines() if line.startswith("| workload")), "")
    for column in (
        "headwater s",
        "plain s",
        "dask s",
        "dask-raw s",
        "distributed s",
        "overhead µs/task",
        "peak MB",
        "met?",
    ):
        assert column in header, proc.stdout
    for workload in (
        "fanout",
        "layered",
        "chain",
        "tracing",
        "memory-fanout",
        "memory-layered",
        "map",
        "map-1m",
    ):
        assert f"| {workload} " in proc.stdout, proc.stdout
    assert "import: `from headwater import flow, task` takes" in proc.stdout, proc.stdout
    assert "tracing: " in proc.stdout and "tracing on (in-memory exporter" in proc.stdout
    # The server workloads' own table (a real server and worker processes).
    headers = [line for line in proc.stdout.splitlines() if line.startswith("| workload")]
    assert len(headers) == 3, proc.stdout
    for column in ("setup s", "server s", "tasks/s", "embedded s", "latency median ms", "met?"):
        assert column in headers[1], proc.stdout
    for workload in ("server-fanout", "server-map", "server-latency"):
        assert f"| {workload} " in proc.stdout, proc.stdout
    # The same on PostgreSQL (one server for the run), and the failover time.
    for workload in ("server-fanout-pg", "server-latency-pg", "server-failover"):
        assert f"| {workload} " in proc.stdout, proc.stdout
    assert "leader SIGKILL -> first task dispatched by the new leader" in proc.stdout
    # The same fan-out with TLS, against the plaintext one of the same run.
    assert "server-fanout with TLS: " in proc.stdout and "TLS costs " in proc.stdout, proc.stdout
    # The Dask cluster workloads' table (a real LocalCluster, Headwater vs raw futures).
    for column in ("headwater s", "client.submit s", "ratio", "array MB", "peak MB"):
        assert column in headers[2], proc.stdout
    for workload in ("dask-layered", "dask-handoff"):
        assert f"| {workload} " in proc.stdout, proc.stdout
    # The durability workloads' lines (a server SIGKILLed and restarted; retention).
    assert "server-restart / server " in proc.stdout and "ready -> first start" in proc.stdout
    assert "server-growth / server " in proc.stdout and "bytes of files per run" in proc.stdout
    assert "server-growth-builds / server " in proc.stdout
    # A restart mid-way through a wide map, with a small run beside it: both end, no
    # task twice, the small run's work started again, and the restarted server said
    # what it resumed.
    (wide,) = [line for line in proc.stdout.splitlines() if "server-restart-wide / server " in line]
    assert "ended SUCCESS after 5000 attempts of 5000 tasks" in wide, wide
    assert "ready -> first start of the 200-task run beside median" in wide, wide
    assert "it ended SUCCESS after 200 attempts" in wide and "starved" not in wide, wide
    assert "resumed 2 unfinished flow runs in" in wide, wide
    # The compile-cost table: a symbolic and a value-dependent flow.
    assert "compile cost of a 2,001-task flow" in proc.stdout, proc.stdout
    for flow_kind in ("symbolic ", "value-dependent "):
        assert any(line.startswith(flow_kind) for line in proc.stdout.splitlines())
    # The server probes: other clients' round trips during a heavy request, and the
    # server's memory while it streams a download.
    assert "server-loop: GetServerInfo round trips" in proc.stdout, proc.stdout
    for phase in ("idle ", "RegisterFlow ", "CreateFlowRun ", "CancelFlowRun "):
        assert any(line.strip().startswith(phase) for line in proc.stdout.splitlines())
    assert "server-download: downloading a 48 MiB payload" in proc.stdout, proc.stdout
    # The server's writes while old runs are pruned (beside it, and by its retention).
    assert "server-prune: CreateFlowRun round trips" in proc.stdout, proc.stdout
    for phase in ("dry-run ", "prune ", "retention "):
        assert any(line.strip().startswith(phase) for line in proc.stdout.splitlines())
    assert "prune: deleted 200 finished run(s)" in proc.stdout, proc.stdout
    assert "retention: pruned 200 finished runs" in proc.stdout, proc.stdout
    # The Dask bridge's cluster memory across runs.
    assert "server-bridge-memory: 4 runs, each passing 1 MiB" in proc.stdout, proc.stdout
    assert "cluster memory held after each run (MiB):" in proc.stdout, proc.stdout
