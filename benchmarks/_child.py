"""One measurement in a fresh process: ``python -m benchmarks._child SPEC_JSON``.

SPEC_JSON names the DAG kind, its size, the system to run it on and how many times.
The process imports, builds the DAG's inputs, runs a tiny warm-up instance, then takes
its RSS as the baseline and resets the peak mark, so ``peak_mb`` is what running the
workload added. It prints one line ``RESULT_PREFIX + json`` on stdout.

The ``server`` system is different: this process is the client of a ``headwater
server`` and worker processes it starts and stops itself (``_server``).
"""

from __future__ import annotations

import gc
import json
import signal
import sys
import time
from typing import Any

from ._dags import WARMUP, Dag, make_dag
from ._measure import current_rss_mb, peak_rss_mb, reset_peak

RESULT_PREFIX = "BENCHMARK-RESULT "

SYSTEMS = (
    "headwater",
    "headwater-traced",
    "plain",
    "dask",
    "dask-raw",
    "distributed",
    "server",
    "server-base",
    "server-tls",
    "dask-cluster",
    "compile",
    "import",
    "server-loop",
    "server-download",
    "server-bridge",
    "server-prune",
)
#: Systems that are a Headwater embedded run (with tracing off, or on).
HEADWATER = ("headwater", "headwater-traced")


def _run_headwater(dag: Dag, max_workers: int | None) -> tuple[Any, float, float]:
    """(result, compile seconds, wall seconds incl. compile) for one Headwater run."""
    the_flow = dag.flow()
    start = time.perf_counter()
    the_flow.graph()  # timed on its own: run() compiles again, and that is in its wall
    compiled = time.perf_counter()
    flow_run = the_flow.run(max_workers=max_workers)
    finished = time.perf_counter()
    if flow_run.state.name != "SUCCESS":
        raise RuntimeError(f"flow run ended {flow_run.state.name}: {flow_run.message}")
    return flow_run.result, compiled - start, finished - compiled


_DISTRIBUTED: Any = None


def _distributed_get() -> Any:
    """``client.get`` of an in-process dask.distributed cluster (threads, no worker
    processes), started once per measurement process, before anything is timed."""
    global _DISTRIBUTED
    if _DISTRIBUTED is None:
        from distributed import Client

        _DISTRIBUTED = Client(processes=False, dashboard_address=None)
    return _DISTRIBUTED.get


def _run_once(system: str, dag: Dag, max_workers: int | None) -> tuple[Any, float | None, float]:
    if system in HEADWATER:
        return _run_headwater(dag, max_workers)
    if system == "distributed":
        get = _distributed_get()
        start = time.perf_counter()
        result = dag.dask_graph(get)
        return result, None, time.perf_counter() - start
    fn = {"plain": dag.plain, "dask": dag.dask_delayed, "dask-raw": dag.dask_graph}[system]
    start = time.perf_counter()
    result = fn()
    return result, None, time.perf_counter() - start


def _pool_size(system: str, max_workers: int | None) -> int:
    if system in HEADWATER:
        from headwater_runtime.embedded import default_thread_count

        return max_workers or default_thread_count()
    if system in ("dask", "dask-raw"):
        from dask.system import CPU_COUNT  # the threaded scheduler's default pool size

        return CPU_COUNT
    if system == "distributed":
        return sum(_DISTRIBUTED.nthreads().values()) if _DISTRIBUTED is not None else 0
    return 1


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    system: str = spec["system"]
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; use one of {', '.join(SYSTEMS)}")
    if system in (
        "server",
        "server-base",
        "server-tls",
    ):  # server-base: in the baseline's interpreter
        if spec["kind"] in ("restart", "growth"):
            from ._durability import measure as measure_durability

            return measure_durability(spec)
        from ._server import measure as measure_server

        return measure_server({**spec, "tls": system == "server-tls"})
    if system == "dask-cluster":
        from ._dask_cluster import measure as measure_cluster

        return measure_cluster(spec)
    if system == "import":
        from ._imports import measure as measure_import

        return measure_import(spec)
    if system == "compile":
        from ._compile import measure as measure_compile

        return measure_compile(spec)
    if system in ("server-loop", "server-download", "server-prune"):
        from ._probes import measure as measure_probe

        return measure_probe(spec)
    if system == "server-bridge":
        from ._bridge import measure as measure_bridge

        return measure_bridge(spec)
    max_workers: int | None = spec.get("max_workers")
    kind: str = spec["kind"]
    dag = make_dag(kind, spec["params"])
    spans = _install_tracing() if system == "headwater-traced" else None
    _run_once(system, make_dag(kind, WARMUP[kind]), max_workers)
    gc.collect()
    base = current_rss_mb()
    reset_ok = reset_peak()
    walls: list[float] = []
    compiles: list[float] = []
    check = None
    exported = 0
    for _ in range(spec.get("repeats", 1)):
        if spans is not None:
            spans.clear()
        result, compile_s, wall = _run_once(system, dag, max_workers)
        walls.append(wall)
        if compile_s is not None:
            compiles.append(compile_s)
        check = dag.check(result)
        if spans is not None:
            exported = len(spans.get_finished_spans())
        del result
        gc.collect()
    return {
        "system": system,
        "kind": kind,
        "params": spec["params"],
        "tasks": dag.tasks,
        "label": dag.label,
        "walls": walls,
        "compiles": compiles,
        "check": check,
        "rss_base_mb": base,
        "peak_mb": peak_rss_mb() - base,
        "peak_reset": reset_ok,
        "pool": _pool_size(system, max_workers),
        "spans": exported,  # per run, headwater-traced only
    }


def _install_tracing() -> Any:
    """Tracing on, as an application would turn it on: a global SDK TracerProvider,
    here exporting synchronously to memory (so export cost is in the timed run)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m benchmarks._child SPEC_JSON", file=sys.stderr)
        return 2
    # SIGTERM unwinds like an exception, so the server workloads' finally blocks stop
    # the processes they started.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    out = measure(json.loads(argv[0]))
    print(RESULT_PREFIX + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
