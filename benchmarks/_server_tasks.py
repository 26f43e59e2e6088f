"""The tasks the server benchmarks' workers run (``headwater worker --module`` this).

The fan-out reuses ``_dags``'s task objects, so the server runs the very same task
types as the embedded ``fanout`` workload (a worker collects every Task in a module's
namespace, imported ones included). ``stamp`` is for ``server-latency`` and ``server-
growth``: it returns the wall clock at the moment its function starts on the worker.
``builds_flow`` is for ``server-growth-builds``: its graph depends on its parameter's
value, so every run with a new tag registers a new build. ``nap`` is for ``server-
restart``: it appends the wall clock at its start to ``$HW_BENCH_DIR/starts.log`` (one
``os.write``, so lines from all threads land whole), then sleeps 20 ms; ``beside``
does the same in ``beside.log`` and sleeps 50 ms (the small run beside ``server-
restart-wide``'s wide one). ``map_flow`` is for ``server-map``: one map over ``n``
elements. ``handoff_flow`` is for ``server-failover`` (``_failover``): ``held`` waits
for a file in HW_BENCH_DIR, then ``stamp_after`` returns the wall clock when it
starts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from headwater import flow, task

from ._dags import noop_task, source_task, total_task

#: Where ``nap`` records its starts (in ``$HW_BENCH_DIR``).
STARTS = "starts.log"
#: Where ``beside`` records its starts, and how long it sleeps (seconds).
BESIDE_STARTS, BESIDE_NAP = "beside.log", 0.05


@task
def stamp() -> float:
    return time.time()


@flow(name="bench_latency")
def latency_flow() -> float:
    return stamp()


@task
def label(text: str) -> str:
    return text


@flow(name="bench_builds")
def builds_flow(tag: str = "") -> str:
    """Value-dependent (its body formats its parameter): one build per distinct tag."""
    return label(f"run {tag}")


@flow(name="bench_map")
def map_flow(n: int = 1_000) -> int:
    return total_task(noop_task.map(source_task(n)))


def _log_start(name: str, i: int) -> None:
    directory = os.environ.get("HW_BENCH_DIR")
    if directory:
        fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{time.time():.6f} {i}\n".encode())
        finally:
            os.close(fd)


@task
def nap(i: int) -> int:
    _log_start(STARTS, i)
    time.sleep(float(os.environ.get("HW_BENCH_NAP", "0.02")))
    return i


@flow(name="bench_restart")
def restart_flow(n: int = 400) -> int:
    return total_task(nap.map(source_task(n)))


@task
def beside(i: int) -> int:
    _log_start(BESIDE_STARTS, i)
    time.sleep(BESIDE_NAP)
    return i


@flow(name="bench_beside")
def beside_flow(n: int = 200) -> int:
    return total_task(beside.map(source_task(n)))


@task
def held() -> int:
    folder = Path(os.environ["HW_BENCH_DIR"])
    (folder / "held-started").write_text("")
    deadline = time.monotonic() + 120
    while not (folder / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    return 1


@task
def stamp_after(_: int) -> float:
    return time.time()


@flow(name="bench_handoff")
def handoff_flow() -> float:
    return stamp_after(held())


__all__ = [
    "beside",
    "beside_flow",
    "builds_flow",
    "handoff_flow",
    "held",
    "label",
    "latency_flow",
    "nap",
    "noop_task",
    "restart_flow",
    "source_task",
    "stamp",
    "stamp_after",
    "total_task",
]
