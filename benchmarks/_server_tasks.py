"""The tasks the server benchmarks' workers run (``headwater worker --module`` this).

The fan-out reuses ``_dags``'s task objects, so the server runs the very same task
types as the embedded ``fanout`` workload (a worker collects every Task in a module's
namespace, imported ones included). ``stamp`` is for ``server-latency``: it returns the
wall clock at the moment its function starts on the worker. ``handoff_flow`` is for
``server-failover`` (``_failover``): ``held`` waits for a file in HW_BENCH_DIR, then
``stamp_after`` returns the wall clock when it starts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from headwater import flow, task

from ._dags import noop_task, total_task


@task
def stamp() -> float:
    return time.time()


@flow(name="bench_latency")
def latency_flow() -> float:
    return stamp()


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
    "handoff_flow",
    "held",
    "latency_flow",
    "noop_task",
    "stamp",
    "stamp_after",
    "total_task",
]
