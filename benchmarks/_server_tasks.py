"""The tasks the server benchmarks' workers run (``headwater worker --module`` this).

The fan-out reuses ``_dags``'s task objects, so the server runs the very same task
types as the embedded ``fanout`` workload (a worker collects every Task in a module's
namespace, imported ones included). ``stamp`` is for ``server-latency``: it returns the
wall clock at the moment its function starts on the worker.
"""

from __future__ import annotations

import time

from headwater import flow, task

from ._dags import noop_task, total_task


@task
def stamp() -> float:
    return time.time()


@flow(name="bench_latency")
def latency_flow() -> float:
    return stamp()


__all__ = ["latency_flow", "noop_task", "stamp", "total_task"]
