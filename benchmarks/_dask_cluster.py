"""Headwater on a real Dask cluster (``DaskExecutor``) next to raw Dask futures.

One measurement process (``_child``, system ``dask-cluster``) starts one LocalCluster
(2 worker processes x 1 thread, as many as this machine has cores; the client and the
scheduler share them) and measures, in the same run and on the same cluster:

* ``dask-layered``: the ``layered`` DAG (``_dags.Layered``, same functions) as a
  Headwater flow run with ``DaskExecutor(client=...)`` and as the same DAG submitted
  directly with ``client.submit`` futures, then gathered. The two alternate, repeat
  by repeat, so drift on the machine hits both alike. Both include building the graph
  (Headwater: compiling the flow).
* ``dask-handoff``: one task returns a numpy array of ``mb`` MB, a second one takes it
  and returns a small summary. The orchestrator's peak RSS during the run minus its
  RSS before, next to the array's size: the array must stay in the cluster (the
  measurement fails when the increase reaches half the array). As a control, the same
  reading is taken while the array is fetched into this process with ``.result()``.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from ._dags import Layered, combine, noop
from ._measure import current_rss_mb, peak_rss_mb, reset_peak


def _cluster(workers: int) -> tuple[Any, Any]:
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.CRITICAL,
    )
    return cluster, Client(cluster, set_as_default=False)


def _raw_layered(client: Any, dag: Layered) -> list[int]:
    """The DAG as ``client.submit`` futures, submitted all at once, then gathered."""
    prev = [client.submit(noop, j, pure=False) for j in range(dag.width)]
    for layer in dag.parents:
        prev = [client.submit(combine, *[prev[p] for p in ps], pure=False) for ps in layer]
    return list(client.gather(prev))


def _headwater_layered(executor: Any, dag: Layered) -> list[int]:
    run = dag.flow().run(executor=executor)
    if run.state.name != "SUCCESS":
        raise RuntimeError(f"flow run ended {run.state.name}: {run.message}")
    return list(run.result)


def _layered(client: Any, params: dict[str, int], repeats: int) -> dict[str, Any]:
    from headwater_runtime.dask import DaskExecutor

    executor = DaskExecutor(client=client)
    dag = Layered(params["layers"], params["width"])
    warm = Layered(3, 20)
    if _headwater_layered(executor, warm) != _raw_layered(client, warm):
        raise RuntimeError("Headwater and raw Dask disagree on the warm-up DAG")
    walls: dict[str, list[float]] = {"headwater": [], "raw": []}
    checks = set()
    for _ in range(repeats):
        for system, fn in (
            ("headwater", lambda: _headwater_layered(executor, dag)),
            ("raw", lambda: _raw_layered(client, dag)),
        ):
            gc.collect()
            start = time.perf_counter()
            result = fn()
            walls[system].append(time.perf_counter() - start)
            checks.add(dag.check(result))
    if len(checks) != 1:
        raise RuntimeError(f"Headwater and raw Dask computed different results: {checks}")
    return {
        "tasks": dag.tasks,
        "label": dag.label,
        "walls": walls["headwater"],
        "raw_walls": walls["raw"],
        "check": checks.pop(),
    }


def make_array(mb: int) -> Any:
    import numpy as np

    return np.ones(mb * 2**20 // 8, dtype=np.float64)


def summarise(array: Any) -> dict[str, float]:
    return {"nbytes": float(array.nbytes), "sum": float(array.sum())}


def _handoff(client: Any, params: dict[str, int]) -> dict[str, Any]:
    from headwater import flow, task
    from headwater_runtime.dask import DaskExecutor

    make_task, summarise_task = task(make_array), task(summarise)

    @flow(name="dask_handoff")
    def handoff(mb: int) -> dict[str, float]:
        return summarise_task(make_task(mb))

    executor = DaskExecutor(client=client)
    handoff.run(mb=1, executor=executor).raise_for_state()  # warm-up: imports, pickling
    gc.collect()
    base = current_rss_mb()
    reset_ok = reset_peak()
    start = time.perf_counter()
    run = handoff.run(mb=params["mb"], executor=executor)
    wall = time.perf_counter() - start
    peak = peak_rss_mb() - base
    run.raise_for_state()
    if peak >= 0.5 * params["mb"]:  # the point of the workload: asserted, not only shown
        raise RuntimeError(
            f"the orchestrator's RSS grew by {peak:.0f} MB passing a {params['mb']} MB "
            "array between two Dask tasks: it was copied through this process"
        )
    if run.result["nbytes"] != params["mb"] * 2**20:
        raise RuntimeError(f"unexpected result {run.result}")
    # Control: the same reading when the array *is* fetched into this process, to show
    # the measurement sees such a copy.
    gc.collect()
    control_base = current_rss_mb()
    reset_peak()
    fetched = client.submit(make_array, params["mb"], pure=False).result()
    control = peak_rss_mb() - control_base
    del fetched
    return {
        "tasks": 2,
        "label": f"{params['mb']} MB",
        "walls": [wall],
        "raw_walls": [],
        "array_mb": params["mb"],
        "peak_mb": peak,
        "peak_reset": reset_ok,
        "control_peak_mb": control,
        "check": int(run.result["sum"]),
    }


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    cluster, client = _cluster(spec["params"].get("workers", 2))
    try:
        client.wait_for_workers(spec["params"].get("workers", 2), timeout=60)
        if spec["kind"] == "dask-layered":
            data = _layered(client, spec["params"], spec.get("repeats", 1))
        elif spec["kind"] == "dask-handoff":
            data = _handoff(client, spec["params"])
        else:
            raise ValueError(f"unknown Dask cluster workload {spec['kind']!r}")
    finally:
        client.close()
        cluster.close()
    return {"system": "dask-cluster", "kind": spec["kind"], "params": spec["params"], **data}
