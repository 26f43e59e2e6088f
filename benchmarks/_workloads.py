"""The workloads: which DAG, at which size, on which systems, against which target."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Workload:
    """One row of the table.

    Attributes:
        name: what ``--only`` takes.
        kind: the DAG kind in ``_dags``.
        full / quick: the DAG's size parameters for a full and a ``--quick`` run.
        systems: what runs it (``headwater`` always, first).
        repeats / quick_repeats: timed runs per system; the table shows the median.
            ``dask`` (delayed) runs once: at these sizes one run takes ~10 s.
        dask_params: a smaller size for the ``dask`` (delayed) run, when the full size
            would take minutes there; the table says so.
        max_overhead_us / max_peak_mb: the issue's targets (reported, never asserted).
        server: a server workload (``_server``): its ``server`` system runs on a real
            ``headwater server`` with worker processes; it has a table of its own.
        min_tasks_per_s / max_latency_ms: the server workloads' targets.
        cluster: a Dask cluster workload (``_dask_cluster``): Headwater with the
            DaskExecutor next to raw Dask futures on one LocalCluster; a table of its own.
        max_ratio: target of Headwater-on-Dask wall / raw-futures wall.
        max_peak_fraction: target of the orchestrator's peak RSS increase / array size.
        compile: the compile-cost workload (``_compile``): graph build and digest of a
            flow, symbolic and value-dependent; a table of its own.
        store: the server workloads' store: "sqlite" (a file in a temporary directory),
            "postgres" (a PostgreSQL server started for the measurement) or
            "postgres-async" (the same, commits at synchronous_commit=off).
        max_failover_s: target of the failover workload's median (leader SIGKILL ->
            first dispatch by the new leader).
        in_quick: part of a ``--quick`` run without ``--only`` (the smoke test's).
        durability: a durability workload (``_durability``): a server SIGKILLed and
            restarted, or the database size under retention; lines of their own.
        probe: a server probe (``_probes``): event-loop responsiveness during a heavy
            request, or the server's memory while it streams a download; a table of
            its own. ``max_delay_ms`` is the responsiveness target.
        max_tls_cost: target of the throughput lost to TLS, 1 - (server-tls tasks/s) /
            (server tasks/s), both measured in the same run.
    """

    name: str
    title: str
    kind: str
    full: dict[str, int]
    quick: dict[str, int]
    systems: tuple[str, ...]
    repeats: int = 1
    quick_repeats: int = 1
    dask_params: dict[str, int] | None = None
    dask_quick_params: dict[str, int] | None = None
    max_overhead_us: float | None = None
    max_peak_mb: float | None = None
    server: bool = False
    min_tasks_per_s: float | None = None
    max_latency_ms: float | None = None
    cluster: bool = False
    max_ratio: float | None = None
    max_peak_fraction: float | None = None
    compile: bool = False
    store: str = "sqlite"
    max_failover_s: float | None = None
    in_quick: bool = True
    distributed_params: dict[str, int] | None = None
    distributed_quick_params: dict[str, int] | None = None
    max_wall_s: float | None = None
    #: the import-cost workload (``_imports``): printed as a line of its own.
    imports: bool = False
    max_import_ms: float | None = None
    #: this workload's measurement processes may take this long (default: --timeout).
    timeout_s: float | None = None
    durability: bool = False
    probe: bool = False
    max_delay_ms: float | None = None
    max_tls_cost: float | None = None

    def params(self, quick: bool) -> dict[str, int]:
        return self.quick if quick else self.full

    def repeats_for(self, system: str, quick: bool) -> int:
        if quick or system in CAPPED:
            return self.quick_repeats
        return self.repeats

    def params_for(self, system: str, quick: bool) -> dict[str, Any]:
        if system == "dask":
            capped = self.dask_quick_params if quick else self.dask_params
            if capped is not None:
                return capped
        if system == "distributed":
            capped = self.distributed_quick_params if quick else self.distributed_params
            if capped is not None:
                return capped
        return self.params(quick)


ALL_SYSTEMS = ("headwater", "plain", "dask", "dask-raw", "distributed")
#: Systems that run once (and may run a smaller size): one run takes seconds there.
CAPPED = ("dask", "distributed")

WORKLOADS: tuple[Workload, ...] = (
    Workload(
        name="import",
        title="4 import: from headwater import flow, task in a new process",
        kind="import",
        full={"runs": 15},
        quick={"runs": 5},
        systems=("import",),
        imports=True,
        max_import_ms=100,
    ),
    Workload(
        name="compile",
        title="compile cost per run: graph build + digest of a 10k-task flow",
        kind="compile",
        full={"n": 10_000},
        quick={"n": 2_000},
        systems=("compile",),
        repeats=5,
        compile=True,
    ),
    Workload(
        name="fanout",
        title="1a overhead: fan-out + reduce",
        kind="fanout",
        full={"n": 10_000},
        quick={"n": 2_000},
        systems=ALL_SYSTEMS,
        repeats=5,
        # dask.distributed costs ~1-5 ms per task here: 10,000 would take a minute.
        distributed_params={"n": 2_000},
        distributed_quick_params={"n": 500},
        max_overhead_us=20,
    ),
    Workload(
        name="layered",
        title="1b overhead: layered DAG",
        kind="layered",
        full={"layers": 20, "width": 500},
        quick={"layers": 10, "width": 200},
        systems=ALL_SYSTEMS,
        repeats=5,
        distributed_params={"layers": 4, "width": 500},
        distributed_quick_params={"layers": 4, "width": 100},
        max_overhead_us=20,
    ),
    Workload(
        name="chain",
        title="1c overhead per dependent step: a chain",
        kind="chain",
        full={"n": 200},
        quick={"n": 100},
        systems=ALL_SYSTEMS,
        repeats=5,
        max_overhead_us=50,
    ),
    Workload(
        name="tracing",
        title="tracing overhead: fan-out with tracing off (headwater) and on",
        kind="fanout",
        full={"n": 10_000},
        quick={"n": 2_000},
        # headwater: no TracerProvider, tracing off; headwater-traced: an SDK provider
        # exporting to memory. The notes give on - off per task.
        systems=("headwater", "headwater-traced", "plain"),
        repeats=5,
    ),
    Workload(
        name="memory-fanout",
        title="2 memory: 100k fan-out + reduce",
        kind="fanout",
        full={"n": 100_000},
        quick={"n": 20_000},
        systems=("headwater", "plain"),
        max_peak_mb=300,
    ),
    Workload(
        name="memory-layered",
        title="2 memory: 200x500 layered",
        kind="layered",
        full={"layers": 200, "width": 500},
        quick={"layers": 40, "width": 500},
        systems=("headwater", "plain"),
        max_peak_mb=300,
    ),
    Workload(
        name="map",
        title="3 large map: map -> map -> reduce",
        kind="map",
        full={"n": 100_000},
        quick={"n": 10_000},
        systems=ALL_SYSTEMS,
        # A dask.delayed reduce over N delayed values is quadratic in N in current Dask
        # (each of the N graph layers is culled against all keys, when the call is built
        # and again in compute: ~11 s at N = 10,000 on 2 cores), so the full 100k would
        # take many minutes: its size is capped, and dask-raw runs the full size on the
        # same threaded scheduler.
        dask_params={"n": 10_000},
        dask_quick_params={"n": 2_000},
        distributed_params={"n": 1_000},
        distributed_quick_params={"n": 250},
        max_peak_mb=1024,
    ),
    Workload(
        name="map-1m",
        title="3 scale: map -> map -> reduce over a million elements (2M task runs)",
        kind="map",
        full={"n": 1_000_000},
        quick={"n": 20_000},
        systems=("headwater", "plain"),
        max_peak_mb=2048,
        max_wall_s=60,
        timeout_s=1200,
    ),
    Workload(
        name="server-fanout",
        title="server throughput: fan-out + reduce on a server with 2 workers",
        kind="fanout",
        full={"n": 10_000},
        quick={"n": 1_000},
        # "headwater" is the embedded run of the very same DAG, measured again here so
        # the row compares within one run even with --only; "server-tls" is the same
        # server run with TLS on every connection (target: at most 15% slower).
        systems=("server", "server-tls", "headwater", "dask-raw"),
        repeats=3,
        server=True,
        min_tasks_per_s=2_000,
        max_tls_cost=0.15,
    ),
    Workload(
        name="server-map",
        title="server scale: one map over 100,000 elements (100,002 task runs)",
        kind="server-map",
        full={"n": 100_000},
        quick={"n": 2_000},
        systems=("server",),
        server=True,
        timeout_s=1200,
    ),
    Workload(
        name="server-map-mid",
        title="server responsiveness: other clients' round trips while a map over "
        "5,000 elements (below a large run's 10,000) makes its children",
        kind="server-map",
        full={"n": 5_000},
        quick={"n": 1_000},
        systems=("server",),
        server=True,
    ),
    Workload(
        name="server-map-1m",
        title="server scale: one map over 1,000,000 elements (1,000,002 task runs)",
        kind="server-map",
        full={"n": 1_000_000},
        # Still over gRPC's 4 MiB: the raised message limit is what this run checks.
        quick={"n": 150_000},
        systems=("server",),
        server=True,
        in_quick=False,
        timeout_s=3600,
    ),
    Workload(
        name="server-runs",
        title="server throughput: one-task runs created back to back, 1 worker",
        kind="runs",
        full={"runs": 600},
        quick={"runs": 60},
        systems=("server",),
        repeats=3,
        server=True,
    ),
    Workload(
        name="server-latency",
        title="server latency: ready -> task starts on an idle server with 1 worker",
        kind="latency",
        full={"runs": 200},
        quick={"runs": 50},
        systems=("server",),
        server=True,
        max_latency_ms=2,
    ),
    Workload(
        name="server-fanout-pg",
        title="server throughput on PostgreSQL: fan-out + reduce, 2 workers",
        kind="fanout",
        full={"n": 10_000},
        quick={"n": 1_000},
        systems=("server",),
        repeats=3,
        server=True,
        min_tasks_per_s=2_000,
        store="postgres",
    ),
    Workload(
        name="server-latency-pg",
        title="server latency on PostgreSQL: ready -> task starts, 1 worker",
        kind="latency",
        full={"runs": 200},
        quick={"runs": 50},
        systems=("server",),
        server=True,
        max_latency_ms=2,
        store="postgres",
    ),
    Workload(
        name="server-fanout-pg-async",
        title="server throughput on PostgreSQL, synchronous_commit=off",
        kind="fanout",
        full={"n": 10_000},
        quick={"n": 1_000},
        systems=("server",),
        repeats=3,
        server=True,
        min_tasks_per_s=2_000,
        store="postgres-async",
        in_quick=False,
    ),
    Workload(
        name="server-latency-pg-async",
        title="server latency on PostgreSQL, synchronous_commit=off",
        kind="latency",
        full={"runs": 200},
        quick={"runs": 50},
        systems=("server",),
        server=True,
        max_latency_ms=2,
        store="postgres-async",
        in_quick=False,
    ),
    Workload(
        name="server-failover",
        title="failover: leader SIGKILL -> first dispatch by the new leader (2 servers)",
        kind="failover",
        full={"rounds": 5, "lease": 10},
        quick={"rounds": 1, "lease": 2},
        systems=("server",),
        server=True,
        store="postgres",
        max_failover_s=10,
    ),
)

WORKLOADS += (
    Workload(
        name="server-restart",
        title="restart: queued work after a server SIGKILL and restart on its database",
        kind="restart",
        full={"n": 400, "kills": 3},
        quick={"n": 60, "kills": 1},
        systems=("server",),
        durability=True,
    ),
    Workload(
        name="server-restart-wide",
        title="restart with a wide map in flight: a SIGKILL a third into a 100,000-element map",
        kind="restart",
        full={"n": 100_000, "kills": 1, "nap": 0, "slots": 6, "beside": 200},
        quick={"n": 5_000, "kills": 1, "nap": 0, "slots": 6, "beside": 200},
        systems=("server",),
        durability=True,
    ),
    Workload(
        name="server-growth",
        title="retention: database growth per finished one-task run",
        kind="growth",
        full={"batches": 5, "runs": 100},
        quick={"batches": 2, "runs": 10},
        systems=("server",),
        durability=True,
    ),
    Workload(
        name="server-growth-builds",
        title="retention: database growth per finished run of a value-dependent flow, "
        "each run a new build (VERSION@DIGEST)",
        kind="growth",
        full={"batches": 5, "runs": 100, "builds": True},
        quick={"batches": 2, "runs": 10, "builds": True},
        systems=("server",),
        durability=True,
    ),
    Workload(
        name="dask-layered",
        title="Dask: a 1,000-task layered DAG, Headwater DaskExecutor vs client.submit",
        kind="dask-layered",
        full={"layers": 10, "width": 100},
        quick={"layers": 5, "width": 40},
        systems=("dask-cluster",),
        repeats=5,
        cluster=True,
        max_ratio=1.5,
    ),
    Workload(
        name="dask-handoff",
        title="Dask: a large array passed between two tasks stays in the cluster",
        kind="dask-handoff",
        full={"mb": 200},
        quick={"mb": 50},
        systems=("dask-cluster",),
        cluster=True,
        max_peak_fraction=0.25,
    ),
)

WORKLOADS += (
    Workload(
        name="server-loop",
        title="server responsiveness: other clients' round trips during a 100k-task "
        "RegisterFlow, CreateFlowRun and CancelFlowRun",
        kind="loop",
        full={"n": 100_000},
        quick={"n": 10_000},
        systems=("server-loop",),
        probe=True,
        max_delay_ms=10,
    ),
    Workload(
        name="server-download",
        title="server memory while a 200 MB payload is downloaded",
        kind="download",
        full={"mb": 200},
        quick={"mb": 50},
        systems=("server-download",),
        probe=True,
    ),
    Workload(
        name="server-prune",
        title="server writes while old runs are pruned (headwater prune beside it, and "
        "--retention)",
        kind="prune",
        full={"runs": 1500, "kb": 200},
        quick={"runs": 200, "kb": 50},
        systems=("server-prune",),
        probe=True,
        timeout_s=3600,
    ),
    Workload(
        name="server-bridge-memory",
        title="Dask bridge: cluster memory across runs (a run's values released at its end)",
        kind="bridge",
        full={"runs": 30, "mb": 8},
        quick={"runs": 4, "mb": 1},
        systems=("server-bridge",),
        probe=True,
    ),
)

BY_NAME = {w.name: w for w in WORKLOADS}
