"""Durability workloads (issue 12): a real ``headwater server`` SIGKILLed and restarted
on its database, and a database kept from growing by retention.

* ``restart``: one worker (2 slots) works through ``bench_restart`` (N tasks of 20 ms,
  so almost all of them wait queued in the server at any moment). K times, after a
  share of the tasks started, the server is SIGKILLed and at once started again on the
  same database and port. Per restart: kill -> the new server listens (``ready``),
  ready -> the worker has reconnected (its own log line), and ready -> the first task
  start after that (the task's first line writes the wall clock to a file), that is,
  how long queued work waited. Before issue 12 the server held every attempt that was
  in flight, queued ones included, for the heartbeat window (20 s).
* ``restart-wide`` (``server-restart-wide``): the same with a 100,000-element map of
  tasks that do not sleep, on 6 slots, killed once a third of them started: how long a
  run in the middle of a wide map takes to replay (~20,000-30,000 journal entries and
  its 100,000 children; the server listens first, since 2026-12-01, and the run's
  queued work starts once it is replayed). Its row also quotes what the restarted
  server printed it resumed. A small run beside it (``beside_flow``, 200 tasks of
  50 ms, started just before the kill): how long its queued work waits after the
  restart (since 2026-12-01 the smallest runs are replayed first, and a worker's
  report on a run still replayed frees its slot at once).
* ``growth``: B batches of R one-task runs, one after another (``server-growth-builds``:
  runs of a value-dependent flow, each with a new value, so each registers a new
  build, which retention deletes once no run uses it); after each batch
  ``headwater prune --older-than 0.001s`` (every finished run is past retention) runs
  beside the server. Growth per run = (database bytes after the last batch - after
  the first) / runs in between. Measured without the prune too, in a fresh cluster in
  the same process: what a run costs when nothing is deleted (a server from before
  issue 12 has no prune at all).

``server-base`` runs the very same code in the baseline checkout's interpreter (``python
-m benchmarks --baseline DIR``): its server, worker and client.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from headwater import Client
from headwater.wire import FlowRunState

from ._server import RUN_TIMEOUT, Cluster, _Raw
from ._server_tasks import BESIDE_STARTS, STARTS, beside_flow, latency_flow, restart_flow

#: How long queued work may wait after a restart before the measurement gives up.
FIRST_START_TIMEOUT = 90.0
#: How long the small run beside the wide one has to start before the kill.
BESIDE_WAIT = 10.0


class _StartLog:
    """The task start times the tasks append to ``STARTS``, read as they come: each
    call reads only what was appended since the last (the log of a 100,000-task run,
    read whole at every 5 ms poll, would load the machine being measured)."""

    def __init__(self, directory: str, name: str = STARTS) -> None:
        self.path = Path(directory) / name
        self.times: list[float] = []
        self._offset = 0
        self._partial = b""

    def read(self) -> list[float]:
        """Every start logged so far, oldest first."""
        if self.path.exists():
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = self._partial + f.read()
            self._offset += len(data) - len(self._partial)
            *lines, self._partial = data.split(b"\n")
            self.times += [float(line.split(b" ", 1)[0]) for line in lines if line]
        return self.times


def _within(condition: Any, timeout: float) -> bool:
    """Whether ``condition()`` came true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _wait(condition: Any, what: str, timeout: float) -> None:
    if not _within(condition, timeout):
        raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")


def _reconnected_at(lines: list[str], after: float) -> float | None:
    """When the worker logged that it reconnected (after ``after``), from its log line's
    timestamp (``%(asctime)s``: local time, milliseconds)."""
    for line in lines:
        if "reconnected to" not in line:
            continue
        stamp = " ".join(line.split(" ", 2)[:2])
        try:
            at = datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if at >= after - 0.001:
            return at
    return None


def measure_restart(spec: dict[str, Any]) -> dict[str, Any]:
    n, kills = spec["params"]["n"], spec["params"]["kills"]
    points = [n * (i + 1) // (kills + 2) for i in range(kills)]
    series: dict[str, list[float]] = {
        "kill_to_ready": [],
        "ready_to_reconnect": [],
        "reconnect_to_first": [],
        "ready_to_first": [],
        "kill_to_first": [],
        "ready_to_beside": [],
    }
    directory = tempfile.mkdtemp(prefix="headwater-bench-starts-")
    try:
        return _restart(spec, n, points, series, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _restart(
    spec: dict[str, Any],
    n: int,
    points: list[int],
    series: dict[str, list[float]],
    directory: str,
) -> dict[str, Any]:
    params = spec["params"]
    env = {"HW_BENCH_DIR": directory, "HW_BENCH_NAP": str(params.get("nap", 0.02))}
    resumed: list[str] = []
    log = _StartLog(directory)
    starved = 0  # small runs beside that did not start before the kill
    beside = params.get("beside", 0)  # tasks of a small run beside (restart-wide)
    beside_log = _StartLog(directory, BESIDE_STARTS)
    beside_runs: list[str] = []
    with Cluster(workers=1, slots=params.get("slots", 2), env=env) as cluster:
        port = cluster.address.rsplit(":", 1)[1]
        with Client(cluster.address) as client:
            run_id = client.run(restart_flow, {"n": n}).id
        for point in points:
            _wait(lambda p=point: len(log.read()) >= p, f"{point} task starts", 300)
            if beside:  # a small run beside, under way when the server is killed
                with Client(cluster.address) as client:
                    beside_runs.append(client.run(beside_flow, {"n": beside}).id)
                began = len(beside_log.read())
                # Before 2026-12-01 a run of another task type got no slot while a wide
                # map had attempts queued: it did not start at all (starved).
                if not _within(lambda b=began: len(beside_log.read()) > b, BESIDE_WAIT):
                    starved += 1
            cluster.kill_server()
            killed = time.time()
            seen = len(log.read())
            seen_beside = len(beside_log.read())
            cluster.start_server(port)
            ready = time.time()
            worker = cluster.workers[0]
            _wait(
                lambda r=ready, k=seen: any(t > r for t in log.read()[k:]),
                "a task to start after the restart",
                FIRST_START_TIMEOUT,
            )
            first = min(t for t in log.read()[seen:] if t > ready)
            if beside and not starved:
                _wait(
                    lambda r=ready, k=seen_beside: any(t > r for t in beside_log.read()[k:]),
                    "a task of the small run to start after the restart",
                    FIRST_START_TIMEOUT,
                )
                started = min(t for t in beside_log.read()[seen_beside:] if t > ready)
                series["ready_to_beside"].append(started - ready)
            server = cluster.server
            assert server is not None  # it prints the line once the run is live again
            _wait(
                lambda s=server: any(" resumed " in line for line in s.lines),
                "the server's resumed line",
                FIRST_START_TIMEOUT,
            )
            resumed += [line for line in server.lines if " resumed " in line]
            back = _reconnected_at(list(worker.lines), killed)
            series["kill_to_ready"].append(ready - killed)
            series["ready_to_first"].append(first - ready)
            series["kill_to_first"].append(first - killed)
            if back is not None:
                series["ready_to_reconnect"].append(back - ready)
                series["reconnect_to_first"].append(first - back)
        raw = _Raw(cluster.address)
        try:
            ended = raw.wait_end(run_id, 0.05)
            final = raw.get(run_id, task_runs=True)
            besides = []  # (state, attempts of its tasks) of each small run
            for beside_id in beside_runs:
                state = FlowRunState(raw.wait_end(beside_id, 0.05).state).name
                got = raw.get(beside_id, task_runs=True)
                tried = sum(t.attempts for t in got.task_runs if t.name.startswith("beside["))
                besides.append((state, tried))
        finally:
            raw.close()
    attempts = sum(t.attempts for t in final.task_runs if t.name.startswith("nap["))
    return {
        "system": spec["system"],
        "kind": "restart",
        "params": spec["params"],
        "tasks": n,
        "label": f"{n} tasks, {len(points)} kills"
        + (f", a {beside}-task run beside" if beside else ""),
        "walls": [],
        "compiles": [],
        "series": series,
        "state": FlowRunState(ended.state).name,
        "attempts": attempts,
        "check": n,
        "resumed": resumed,  # what each restarted server printed it resumed
        "beside": besides,
        "starved": starved,
    }


def _db_bytes(db: Path) -> tuple[int, int]:
    """(bytes of the database and WAL files, bytes of the pages in use)."""
    files = sum(
        os.path.getsize(f"{db}{suffix}")
        for suffix in ("", "-wal")
        if os.path.exists(f"{db}{suffix}")
    )
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    return files, (pages - free) * size


def _growth(spec: dict[str, Any], prune: bool) -> dict[str, Any]:
    from ._server_tasks import builds_flow

    batches, runs = spec["params"]["batches"], spec["params"]["runs"]
    builds = spec["params"].get("builds", False)
    sizes: list[int] = []  # database + WAL files
    used: list[int] = []  # pages in use
    with Cluster(workers=1) as cluster, Client(cluster.address) as client:
        raw = _Raw(cluster.address)
        try:
            version = client.deploy(latency_flow)
            for batch in range(batches):
                for i in range(runs):
                    if builds:  # a new tag: a new build, registered by client.run
                        run_id = client.run(builds_flow, {"tag": f"{batch}-{i}"}).id
                    else:
                        run_id = client.run(latency_flow.name, version=version).id
                    if raw.wait_end(run_id, 0.002).state != FlowRunState.SUCCESS.value:
                        raise RuntimeError("a one-task run did not succeed")
                if prune:
                    cli = [sys.executable, "-m", "headwater._cli", "prune"]
                    subprocess.run(
                        [*cli, "--db", str(cluster.db), "--older-than", "0.001s"],
                        check=True,
                        capture_output=True,
                        timeout=RUN_TIMEOUT,
                    )
                files, in_use = _db_bytes(cluster.db)
                sizes.append(files)
                used.append(in_use)
        finally:
            raw.close()
    between = runs * (batches - 1) or 1
    return {
        "sizes": sizes,
        "used": used,
        "per_run": (sizes[-1] - sizes[0]) / between,
        "used_per_run": (used[-1] - used[0]) / between,
    }


def measure_growth(spec: dict[str, Any]) -> dict[str, Any]:
    batches, runs = spec["params"]["batches"], spec["params"]["runs"]
    row = {
        "system": spec["system"],
        "kind": "growth",
        "params": spec["params"],
        "tasks": batches * runs,
        "label": f"{batches} x {runs} runs",
        "walls": [],
        "compiles": [],
        "check": batches * runs,
    }
    if spec["params"].get("builds") and importlib.util.find_spec("headwater._graphs") is None:
        # (A Headwater from before value-dependent flows stores no builds.)
        return {**row, "kept": None, "pruned": None}
    kept = _growth(spec, prune=False)
    # A Headwater from before issue 12 has no `headwater prune`.
    has_prune = importlib.util.find_spec("headwater._cli_prune") is not None
    pruned = _growth(spec, prune=True) if has_prune else None
    return {**row, "kept": kept, "pruned": pruned}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    if spec["kind"] == "restart":
        return measure_restart(spec)
    if spec["kind"] == "growth":
        return measure_growth(spec)
    raise ValueError(f"no durability workload of kind {spec['kind']!r}")


# ------------------------------------------------------------------ the tables


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}" if values else "-"


def _max(values: list[float]) -> str:
    return f"{max(values):.2f}" if values else "-"


def format_durability(rows: list[Any], revisions: dict[str, str]) -> str:
    """One table per durability workload, a line per system (this tree, the baseline)."""
    out: list[str] = []
    for row in rows:
        for system, outcome in row.outcomes.items():
            rev = revisions.get(system, "?")
            if outcome.data is None:
                out.append(f"{row.workload.name} / {system} ({rev}): {outcome.error}")
                continue
            d = outcome.data
            if d["kind"] == "restart":
                s = d["series"]
                out.append(
                    f"{row.workload.name} / {system} ({rev}), {d['label']}: ready -> first "
                    f"start of queued work median {_median(s['ready_to_first'])} s, max "
                    f"{_max(s['ready_to_first'])} s (target < 1 s); kill -> ready median "
                    f"{_median(s['kill_to_ready'])} s; ready -> worker reconnected median "
                    f"{_median(s['ready_to_reconnect'])} s; reconnected -> first start "
                    f"median {_median(s['reconnect_to_first'])} s; kill -> first start "
                    f"median {_median(s['kill_to_first'])} s, max {_max(s['kill_to_first'])} "
                    f"s; the run ended {d['state']} after {d['attempts']} attempts of "
                    f"{d['tasks']} tasks"
                    + "".join(
                        f"; ready -> first start of the {d['params']['beside']}-task run "
                        f"beside median {_median(s['ready_to_beside'])} s, max "
                        f"{_max(s['ready_to_beside'])} s, it ended {state} after {tried} "
                        "attempts"
                        + (
                            f" (it had not started {BESIDE_WAIT:g} s after it was created, "
                            "before the kill: starved by the wide map)"
                            if d.get("starved")
                            else ""
                        )
                        for state, tried in d.get("beside", [])[:1]
                    )
                    + "".join(
                        f"; {line.split('headwater server ', 1)[-1]}"
                        for line in d.get("resumed", [])
                    )
                )
            elif d["kept"] is None:
                out.append(
                    f"{row.workload.name} / {system} ({rev}): no value-dependent flows in "
                    "this version"
                )
            else:
                kept, pruned = d["kept"], d["pruned"]
                text = (
                    f"{row.workload.name} / {system} ({rev}), {d['label']}: without retention "
                    f"{kept['used_per_run']:,.0f} bytes of pages in use per finished run "
                    f"({kept['per_run']:,.0f} of database + WAL files: "
                    f"{kept['sizes'][0]:,} -> {kept['sizes'][-1]:,} bytes)"
                )
                if pruned is not None:
                    text += (
                        f"; with `headwater prune --older-than 0.001s` after each batch "
                        f"{pruned['per_run']:,.0f} bytes of files per run (target 0; "
                        f"{pruned['used_per_run']:,.0f} of pages in use; database + WAL after "
                        f"each batch: {', '.join(f'{x:,}' for x in pruned['sizes'])} bytes)"
                    )
                else:
                    text += "; no retention in this version"
                out.append(text)
    return "\n".join(out)


def format_comparison(rows: list[Any], revisions: dict[str, str]) -> str:
    """The server workloads on this tree and on the baseline, measured in this run."""
    lines = [
        "server workloads before (server-base) and after (server), same run:",
        f"{'workload':15} {'system':12} {'commit':10} {'tasks/s':>8} {'server CPU µs/task':>19} "
        f"{'latency median ms':>18} {'p95 ms':>7}",
    ]
    for row in rows:
        for system in ("server-base", "server"):
            outcome = row.get(system)
            if outcome is None:
                continue
            rev = revisions.get(system, "?")
            if outcome.data is None:
                lines.append(f"{row.workload.name:15} {system:12} {rev:10} {outcome.error}")
                continue
            d = outcome.data
            rate = cpu = median = p95 = "-"
            if d["kind"] in ("fanout", "runs"):
                wall = statistics.median(d["walls"])
                rate = f"{d['tasks'] / wall:,.0f}"
                order = sorted(range(len(d["walls"])), key=lambda i: d["walls"][i])
                server_cpu = d["cpu_s"][order[len(order) // 2]].get("server")
                if server_cpu is not None:
                    cpu = f"{server_cpu / d['tasks'] * 1e6:,.0f}"
            else:
                stats = d["stats_ms"]["ready_to_start"]
                median, p95 = f"{stats['median']:.2f}", f"{stats['p95']:.2f}"
            lines.append(
                f"{row.workload.name:15} {system:12} {rev:10} {rate:>8} {cpu:>19} "
                f"{median:>18} {p95:>7}"
            )
    return "\n".join(lines)
