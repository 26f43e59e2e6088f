"""``python -m benchmarks``: run the workloads, each system in a fresh process, and print
the table. Targets are reported (``met?``), never asserted: the exit status is non-zero
only when a measurement could not be taken or systems disagreed on a result."""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ._child import RESULT_PREFIX
from ._table import Outcome, Row, format_table
from ._workloads import BY_NAME, WORKLOADS, Workload

ROOT = Path(__file__).resolve().parent.parent


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Headwater benchmarks: embedded orchestration overhead and memory, "
        "against plain Python and Dask measured in the same run.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one repeat")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only these workloads (repeatable or comma-separated): {', '.join(BY_NAME)}",
    )
    parser.add_argument(
        "--max-workers",
        type=int,
        metavar="N",
        help="Headwater thread pool size (default: the ThreadExecutor default)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="S",
        help="seconds allowed per measurement process (default 300, 120 with --quick)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the raw measurements here")
    parser.add_argument(
        "--profile",
        metavar="NAME",
        help="instead of the table, cProfile one Headwater run of workload NAME and "
        "print the top Headwater functions by own time",
    )
    parser.add_argument("--top", type=int, default=15, help="rows to show with --profile")
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run the server and durability workloads on the Headwater checked out "
        "in DIR (with its own DIR/.venv), as system server-base, in the same run: "
        "e.g. `git worktree add /tmp/hw-base COMMIT`, then a venv there with "
        "`pip install -e '.[server]'`",
    )
    return parser.parse_args(argv)


def _select(only: list[str] | None) -> list[Workload]:
    if not only:
        return list(WORKLOADS)
    names = [n.strip() for item in only for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        print(
            f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(BY_NAME)}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    return [w for w in WORKLOADS if w.name in names]


def _spawn(spec: dict[str, Any], timeout: float, python: str = sys.executable) -> Outcome:
    env = dict(os.environ)
    # Run from the repo root so `benchmarks` imports the same way as under `make bench`.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    # A process group of its own: a server measurement starts a server and workers,
    # and on a timeout or Ctrl-C the whole group (that process's id) is killed.
    group = hasattr(os, "killpg")
    proc = subprocess.Popen(
        [python, "-m", "benchmarks._child", json.dumps(spec)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=group,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except BaseException as exc:
        _kill_group(proc, group)
        proc.communicate()
        if isinstance(exc, subprocess.TimeoutExpired):
            return Outcome(spec["system"], error=f"timeout: over {timeout:g} s")
        raise
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return Outcome(spec["system"], data=json.loads(line[len(RESULT_PREFIX) :]))
    tail = (stderr or stdout).strip().splitlines()[-5:]
    return Outcome(spec["system"], error=f"error: exit {proc.returncode}: " + " / ".join(tail))


def _kill_group(proc: subprocess.Popen[str], group: bool) -> None:
    """Stop a measurement process and, where it has one, its process group: SIGTERM
    first (a server measurement then stops its server and workers and removes its
    temporary directory), SIGKILL whatever is left after 5 s."""
    if not group:
        proc.kill()
        return
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break  # the group is gone
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            continue
        if sig == signal.SIGTERM:
            time.sleep(0.5)  # let the group's other members finish stopping


def _revision(root: Path = ROOT) -> str:
    """The commit measured, marked ``+dirty`` when the tree has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def _machine() -> dict[str, Any]:
    from headwater_runtime.embedded import default_thread_count

    return {
        "revision": _revision(),
        "date": datetime.date.today().isoformat(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "headwater_pool": default_thread_count(),
        "load_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def _notes(rows: list[Row]) -> list[str]:
    notes = []
    for row in rows:
        if row.workload.durability:
            continue  # its lines say it all
        if row.workload.server:
            notes.extend(_server_notes(row))
            if row.get("server-base") is not None:
                notes.extend(_server_notes(row, "server-base"))
            continue
        if row.workload.cluster:
            notes.append(_cluster_note(row))
            continue
        if row.workload.compile or row.workload.imports or row.workload.probe:
            continue
        w = row.workload
        bits = []
        for system, outcome in row.outcomes.items():
            if outcome.data is None:
                bits.append(f"{system} {outcome.error}")
                continue
            d = outcome.data
            per_task = outcome.wall / d["tasks"] * 1e6 if outcome.wall is not None else 0
            size = ""
            if system in ("dask", "distributed") and row.capped(system):
                size = f" at {d['label']} ({d['tasks']:,} tasks)"
            bits.append(
                f"{system}{size} {per_task:.1f} µs/task, peak +{d['peak_mb']:.0f} MB, "
                f"{d['pool']} thread(s)"
            )
        hw, plain, raw = row.get("headwater"), row.get("plain"), row.get("dask-raw")
        if (
            hw
            and hw.wall
            and raw
            and raw.wall
            and hw.data
            and raw.data
            and hw.data["tasks"] == raw.data["tasks"]
        ):
            bits.append(f"headwater/dask-raw = {hw.wall / raw.wall:.2f}x")
        if hw and hw.wall and plain and plain.wall:
            bits.append(f"headwater/plain = {hw.wall / plain.wall:.0f}x")
        traced = row.get("headwater-traced")
        if hw and hw.wall and traced and traced.wall and traced.data and row.tasks:
            extra = (traced.wall - hw.wall) / row.tasks * 1e6
            bits.append(
                f"tracing on (in-memory exporter, {traced.data['spans']:,} spans per run) "
                f"- off = {extra:+.1f} µs/task ({traced.wall / hw.wall - 1:+.0%})"
            )
        notes.append(f"{w.name}: " + "; ".join(bits))
    if any(r.dask_capped for r in rows):
        notes.append(
            "* dask (dask.delayed) ran at a smaller size there: a reduce over N delayed "
            "values is quadratic in N in current Dask (graph culls per layer); dask-raw "
            "is the full size on the same threaded scheduler."
        )
    if any(r.capped("distributed") for r in rows):
        notes.append(
            "* distributed (dask.distributed, an in-process Client(processes=False) running "
            "the dask-raw graph) ran at a smaller size there (its size is in the note): "
            "at 1-5 ms per task the full size would take minutes."
        )
    return notes


def _import_line(row: Row) -> str:
    outcome = row.get("import")
    if outcome is None or outcome.data is None:
        return f"import: {outcome.error if outcome else 'not run'}"
    d = outcome.data
    ms = d["walls"][0] * 1000
    target = row.workload.max_import_ms
    met = "" if target is None else f"; target < {target:g} ms: {'yes' if ms < target else 'NO'}"
    return (
        f"import: `from headwater import flow, task` takes {ms:.0f} ms in a new process "
        f"(beyond a bare interpreter start of {d['bare_s'] * 1000:.0f} ms; "
        f"{d['label']}, bytecode compiled as installed; gRPC and protobuf not loaded){met}"
    )


def _cluster_note(row: Row) -> str:
    outcome = row.get("dask-cluster")
    if outcome is None or outcome.data is None:
        return f"{row.workload.name}: {outcome.error if outcome else 'not run'}"
    d = outcome.data
    walls = ", ".join(f"{w:.3f}" for w in d["walls"])
    if d.get("array_mb"):
        return (
            f"{row.workload.name}: {d['array_mb']} MB array made by one task, summed by "
            f"another: orchestrator peak RSS +{d['peak_mb']:.1f} MB during the run "
            f"({d['peak_mb'] / d['array_mb']:.1%} of the array), run {walls} s; control: "
            f"fetching the array into this process instead raises it by "
            f"{d['control_peak_mb']:.0f} MB"
        )
    raw = ", ".join(f"{w:.3f}" for w in d["raw_walls"])
    return (
        f"{row.workload.name}: headwater {walls} s; client.submit {raw} s "
        f"({d['tasks']:,} tasks; alternating runs on one cluster)"
    )


def _ms(stats: dict[str, float]) -> str:
    return f"median {stats['median']:.2f} ms, p95 {stats['p95']:.2f} ms"


def _median_cpu(data: dict[str, Any]) -> dict[str, Any]:
    """The CPU seconds of the run whose wall time was the median one."""
    if not data.get("cpu_s"):
        return {}
    walls = data.get("walls") or [0] * len(data["cpu_s"])
    order = sorted(range(len(data["cpu_s"])), key=lambda i: walls[i])
    return dict(data["cpu_s"][order[len(order) // 2]])


def _workers_cpu(cpu: dict[str, Any]) -> float:
    return sum(v for k, v in cpu.items() if k.startswith("worker") and v is not None)


def _server_notes(row: Row, system: str = "server") -> list[str]:
    name = row.workload.name if system == "server" else f"{row.workload.name} ({system})"
    server = row.get(system)
    if server is None or server.data is None:
        return [f"{name}: {system} {server.error if server else 'not run'}"]
    d = server.data
    cpu: dict[str, Any] = {}
    if d["cpu_s"]:  # that of the median run
        order = sorted(
            range(len(d["cpu_s"])), key=lambda i: (d["walls"] or [0] * len(d["cpu_s"]))[i]
        )
        cpu = d["cpu_s"][order[len(order) // 2]]
    cpu_text = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if v is not None)
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in d["peak_rss_mb"].items() if v is not None)
    slots = "/".join(str(s) for s in d["worker_slots"])
    if d["kind"] == "failover":
        times = ", ".join(f"{x:.2f}" for x in d["failover_s"])
        took = ", ".join(f"{x:.2f}" for x in d["takeover_s"])
        return [
            f"{name}: leader SIGKILL -> first task dispatched by the new leader starts on "
            f"the worker: median {statistics.median(d['failover_s']):.2f} s ({times}); "
            f"SIGKILL -> the standby leads (its listening line): median "
            f"{statistics.median(d['takeover_s']):.2f} s ({took}); 2 servers on one "
            f"PostgreSQL, lease {d['params']['lease']} s, 1 worker given both addresses"
        ]
    if d["kind"] == "latency":
        s = d["stats_ms"]
        return [
            f"{name}: {d['label']} one after another, 1 worker ({slots} slots); "
            f"server SCHEDULED -> task function starts on the worker: {_ms(s['ready_to_start'])} "
            f"(min {s['ready_to_start']['min']:.2f}, max {s['ready_to_start']['max']:.2f}); "
            f"SCHEDULED -> RUNNING (server clock; when the worker's first report came back): "
            f"{_ms(s['ready_to_running'])}; client.run returned -> task starts: "
            f"{_ms(s['returned_to_start'])} (negative when the task starts before the "
            f"client has the response); client.run called -> task starts: "
            f"{_ms(s['called_to_start'])}; whole run (call -> ended_at): {_ms(s['run_wall'])}; "
            f"CPU s over all runs: {cpu_text}; peak RSS MB: {peaks}"
        ]
    walls = ", ".join(f"{w:.3f}" for w in d["walls"])
    burst = d["kind"] == "runs"
    span = (
        "from the first client.run to the last run's ended_at"
        if burst
        else ("from client.run to the run's ended_at")
    )
    bits = [
        f"server {server.wall:.3f} s (median of {walls}) {span}, {d['workers']} workers "
        f"({slots} slots)",
        f"setup (compile + register) {d['setup_s']:.3f} s",
        f"client.run returned after {statistics.median(d['client_run_s']):.3f} s"
        + (" per call" if burst else ""),
    ]
    if cpu.get("server") is not None and row.tasks:
        per = "run (a one-task run, about one GetFlowRun poll)" if burst else "task"
        bits.append(
            f"CPU s in the median run: {cpu_text} "
            f"({cpu['server'] / row.tasks * 1e6:.0f} µs of server CPU per {per})"
        )
    bits.append(f"peak RSS MB: {peaks}; {d['attempts']:,} attempts")
    pings = d.get("pings_ms")
    if pings and pings["n"]:
        bits.append(
            f"another client's GetServerInfo every 10 ms meanwhile: median {pings['p50']:.1f} "
            f"ms, p99 {pings['p99']:.1f} ms, worst {pings['max']:.0f} ms"
        )
    embedded, raw = row.get("headwater"), row.get("dask-raw")
    if embedded and embedded.wall and server.wall:
        bits.append(
            f"embedded {embedded.wall:.3f} s (server/embedded = {server.wall / embedded.wall:.0f}x)"
        )
    if raw and raw.wall and server.wall:
        bits.append(f"dask-raw {raw.wall:.3f} s (server/dask-raw = {server.wall / raw.wall:.0f}x)")
    notes = [f"{name}: " + "; ".join(bits)]
    # The TLS run is made with this checkout only: it is compared with this checkout's
    # plaintext run, never with the baseline's.
    tls = row.get("server-tls") if system == "server" else None
    if tls is not None:
        if tls.wall and server.wall and tls.data:
            cost = 1 - server.wall / tls.wall  # 1 - (tasks/s with TLS) / (tasks/s without)
            target = row.workload.max_tls_cost
            verdict = (
                ""
                if target is None
                else f" (target <= {target:.0%}: {'met' if cost <= target else 'MISSED'})"
            )
            tls_walls = ", ".join(f"{w:.3f}" for w in tls.data["walls"])
            cpu_text = ""
            plain_cpu, tls_cpu = _median_cpu(d), _median_cpu(tls.data)
            if plain_cpu.get("server") and tls_cpu.get("server"):
                more = tls_cpu["server"] / plain_cpu["server"] - 1
                cpu_text = (
                    f"; server CPU in the median run {tls_cpu['server']:.2f} s against "
                    f"{plain_cpu['server']:.2f} s ({more:+.1%}), workers "
                    f"{_workers_cpu(tls_cpu):.2f} s against {_workers_cpu(plain_cpu):.2f} s"
                )
            notes.append(
                f"{name} with TLS: {tls.wall:.3f} s (median of {tls_walls}) against "
                f"{server.wall:.3f} s without, in this run: TLS costs {cost:.1%} of server "
                f"throughput{verdict}{cpu_text}"
            )
        else:
            notes.append(f"{name} with TLS: {tls.error or 'not run'}")
    return notes


def _disagreements(rows: list[Row], quick: bool) -> list[str]:
    problems = []
    for row in rows:
        size = row.workload.params(quick)
        checks = {
            s: o.data["check"]
            for s, o in row.outcomes.items()
            if o.data is not None and o.data["params"] == size
        }
        if len(set(checks.values())) > 1:
            problems.append(f"{row.workload.name}: systems disagree on the result: {checks}")
    return problems


def _measure(
    workloads: list[Workload],
    args: argparse.Namespace,
    timeout: float,
    pg_url: str | None,
    baseline_python: str = "",
) -> list[Row]:
    """Measure every workload on each of its systems, one child process at a time
    (``server-base`` too, in ``baseline_python``, for server and durability rows)."""
    rows: list[Row] = []
    for workload in workloads:
        outcomes: dict[str, Outcome] = {}
        systems = workload.systems
        # The baseline is an older checkout: it may not know PostgreSQL, so it is
        # measured on the PostgreSQL rows only when it has the PostgreSQL store.
        server_row = workload.server or workload.durability
        on_base = workload.store == "sqlite" or _knows_postgres(baseline_python)
        if baseline_python and server_row and on_base:
            systems = (*systems, "server-base")
        for system in systems:
            spec = {
                "kind": workload.kind,
                "params": workload.params_for(system, args.quick),
                "system": system,
                "repeats": workload.repeats_for(system, args.quick),
                "max_workers": args.max_workers if system.startswith("headwater") else None,
                "store": workload.store,
                "pg_url": pg_url,
                "timeout_s": workload.timeout_s,
            }
            t0 = time.perf_counter()
            print(f"  {workload.name} / {system} ...", end="", file=sys.stderr, flush=True)
            python = baseline_python if system == "server-base" else sys.executable
            outcomes[system] = _spawn(spec, max(timeout, workload.timeout_s or 0), python)
            status = outcomes[system].error or "ok"
            print(f" {status} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
        rows.append(Row(workload, outcomes, args.quick))
    return rows


@functools.cache
def _knows_postgres(python: str) -> bool:
    """Whether the checkout of ``python`` (a baseline's venv) has the PostgreSQL store."""
    if not python:
        return False
    check = [python, "-c", "import psycopg, headwater_runtime.store._postgres"]
    return subprocess.run(check, capture_output=True, timeout=120).returncode == 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # SIGTERM unwinds like Ctrl-C, so a running measurement's process group is stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")  # "µs" on a non-UTF-8 terminal
    workloads = _select(args.only)
    if args.quick and not args.only:
        workloads = [w for w in workloads if w.in_quick]
    if args.profile:
        from ._profile import profile

        (workload,) = _select([args.profile])
        return profile(workload, args.quick, args.max_workers, args.top)
    timeout = args.timeout or (120.0 if args.quick else 300.0)
    machine = _machine()
    pool = args.max_workers or machine["headwater_pool"]
    load = machine["load_1min"]
    print(
        f"Headwater benchmarks {machine['date']}: {machine['nproc']} CPUs, "
        f"Python {machine['python']}, {machine['platform']}; commit {machine['revision']}; "
        f"{'quick' if args.quick else 'full'} sizes"
        + ("" if load is None else f"; load average {load:.2f}")
    )
    print(
        f"thread pools: headwater {pool} (ThreadExecutor"
        f"{'' if args.max_workers else ' default'}), dask threaded scheduler "
        f"{machine['nproc']}; times are medians of the repeats, incl. compile / graph build",
        flush=True,
    )
    started = time.perf_counter()
    baseline_python = ""
    revisions = {"server": machine["revision"]}
    if args.baseline:
        base = Path(args.baseline).resolve()
        baseline_python = str(base / ".venv" / "bin" / "python")
        if not os.path.exists(baseline_python):
            print(f"--baseline: no {baseline_python} (make a venv there)", file=sys.stderr)
            return 2
        revisions["server-base"] = _revision(base)
        machine["baseline_revision"] = revisions["server-base"]
        print(f"baseline: {base} at commit {revisions['server-base']} (system server-base)")
    # One PostgreSQL server for the run (initdb takes seconds); a database per row.
    postgres = None
    if any(w.store.startswith("postgres") for w in workloads):
        from ._server import start_postgres

        postgres = start_postgres()
    try:
        rows = _measure(
            workloads,
            args,
            timeout,
            None if postgres is None else postgres.url,
            baseline_python,
        )
    finally:
        if postgres is not None:
            postgres.stop()
    compiled = [r for r in rows if r.workload.compile]
    probes = [r for r in rows if r.workload.probe]
    embedded = [
        r
        for r in rows
        if not r.workload.server
        and not r.workload.cluster
        and not r.workload.compile
        and not r.workload.imports
        and not r.workload.probe
        and not r.workload.durability
    ]
    durable = [r for r in rows if r.workload.durability]
    for row in rows:
        if row.workload.imports:
            print()
            print(_import_line(row))
    clustered = [r for r in rows if r.workload.cluster]
    served = [r for r in rows if r.workload.server]
    if embedded:
        print()
        print(format_table(embedded))
    if served:
        print()
        print(
            "server workloads: `headwater server` (SQLite in a temporary directory, or a "
            "PostgreSQL server started for the row: -pg, failover) and "
            "`headwater worker` processes on this machine; embedded s / dask-raw s: the "
            "same DAG in-process, measured in this run"
        )
        print(format_table(served))
        compared = [r for r in served if r.get("server-base") is not None]
        if compared:
            from ._durability import format_comparison

            print()
            print(format_comparison(compared, revisions))
    if durable:
        from ._durability import format_durability

        print()
        print("durability workloads (issue 12), same run:")
        print(format_durability(durable, revisions))
    if compiled:
        from ._compile import format_compile

        for row in compiled:
            outcome = row.outcomes["compile"]
            print()
            print(format_compile(outcome.data) if outcome.data else f"compile: {outcome.error}")
    if probes:
        from ._probes import format_probe

        for row in probes:
            (outcome,) = row.outcomes.values()
            print()
            if outcome.data is None:
                print(f"{row.workload.name}: {outcome.error}")
            elif outcome.data["system"] == "server-bridge":
                from ._bridge import format_bridge

                print(format_bridge(row.workload.name, outcome.data))
            else:
                print(format_probe(row.workload.name, outcome.data, row.workload.max_delay_ms))
    if clustered:
        print()
        print(
            "Dask cluster workloads: one LocalCluster (2 worker processes x 1 thread) per "
            "workload; headwater s = flow.run(executor=DaskExecutor(client=...)), "
            "client.submit s = the same DAG as raw futures, alternating on the same cluster; "
            "peak MB = this process's peak RSS increase during the run"
        )
        print(format_table(clustered))
    print()
    for note in _notes(rows):
        print(note)
    problems = _disagreements(rows, args.quick)
    failed = [
        f"{r.workload.name} / {s}: {o.error}"
        for r in rows
        for s, o in r.outcomes.items()
        if o.error is not None
    ]
    for problem in problems + failed:
        print(f"PROBLEM: {problem}")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": machine,
                    "quick": args.quick,
                    "results": {
                        r.workload.name: {
                            s: o.data if o.data is not None else {"error": o.error}
                            for s, o in r.outcomes.items()
                        }
                        for r in rows
                    },
                },
                indent=2,
            )
        )
    return 1 if problems or failed else 0
