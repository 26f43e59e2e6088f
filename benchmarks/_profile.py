"""``python -m benchmarks --profile NAME``: where Headwater spends its time.

cProfile sees the calling thread only: that is the compiler and the engine loop, where
orchestration overhead lives. The worker threads' side (queue hand-off, ``execute``)
does not show up here.

``--profile server-fanout`` profiles the server process instead (``_server``).
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time

from ._dags import WARMUP, make_dag
from ._workloads import Workload


def profile(workload: Workload, quick: bool, max_workers: int | None, top: int) -> int:
    if workload.server:
        if workload.kind != "fanout":
            print(f"--profile supports server-fanout, not {workload.name}")
            return 2
        from ._server import profile_fanout

        return profile_fanout(workload.params(quick)["n"], top)
    warm = make_dag(workload.kind, WARMUP[workload.kind]).flow()
    warm.run(max_workers=max_workers)
    dag = make_dag(workload.kind, workload.params(quick))
    the_flow = dag.flow()
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    flow_run = the_flow.run(max_workers=max_workers)
    profiler.disable()
    wall = time.perf_counter() - start
    if flow_run.state.name != "SUCCESS":
        print(f"flow run ended {flow_run.state.name}: {flow_run.message}")
        return 1
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime")
    print(
        f"{workload.name} ({dag.label}, {dag.tasks:,} tasks): {wall:.3f} s under the "
        f"profiler ({wall / dag.tasks * 1e6:.0f} µs/task); main thread, by own time"
    )
    print(f"\n-- top {top} Headwater functions --")
    stats.print_stats(r"headwater", top)
    print(_body(out))
    out.seek(0)
    out.truncate()
    print(f"-- top {top} overall --")
    stats.print_stats(top)
    print(_body(out))
    return 0


def _body(out: io.StringIO) -> str:
    """The stats listing without pstats's preamble of file names and totals."""
    text = out.getvalue()
    start = text.find("   ncalls")
    return (text[start:] if start >= 0 else text).rstrip() + "\n"
