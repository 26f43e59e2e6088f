"""Map/reduce over a generated dataset on a Dask cluster.

Each partition (a numpy array of ``rows`` x 4 floats) is generated *inside* the
cluster, summarised where it lives, and only the small per-partition statistics are
combined: the partitions themselves never travel to this process. Progress is printed
here as task runs finish. Needs numpy (on the workers too).

    python examples/dask_pipeline.py                      # a LocalCluster, 8 partitions
    python examples/dask_pipeline.py 16 tcp://HOST:8786   # 16 partitions, your cluster
    headwater run examples/dask_pipeline.py --dask local -p partitions=4
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from headwater import DaskExecutor, StateEntry, TaskRunRecord, flow, task, unmapped

COLUMNS = ("a", "b", "c", "d")


@task
def partition_seeds(partitions: int) -> list[int]:
    """One seed per partition, so the dataset is the same on every run."""
    return [1000 + i for i in range(partitions)]


@task
def generate(seed: int, rows: int) -> np.ndarray:
    """A partition of synthetic measurements (column j centred on j)."""
    rng = np.random.default_rng(seed)
    return rng.normal(loc=np.arange(len(COLUMNS)), scale=1.0, size=(rows, len(COLUMNS)))


@task(retries=2)
def summarise(part: np.ndarray) -> dict[str, list[float]]:
    """Count, sums, sums of squares, min and max per column, for one partition."""
    return {
        "count": [float(part.shape[0])],
        "sum": part.sum(axis=0).tolist(),
        "sumsq": (part**2).sum(axis=0).tolist(),
        "min": part.min(axis=0).tolist(),
        "max": part.max(axis=0).tolist(),
    }


@task
def combine(stats: list[dict[str, list[float]]]) -> dict[str, Any]:
    """Merge the partitions' statistics into the dataset's mean, std, min, max."""
    count = sum(s["count"][0] for s in stats)
    total = np.sum([s["sum"] for s in stats], axis=0)
    total_sq = np.sum([s["sumsq"] for s in stats], axis=0)
    mean = total / count
    std = np.sqrt(total_sq / count - mean**2)
    return {
        "rows": int(count),
        "partitions": len(stats),
        "columns": {
            name: {
                "mean": round(float(mean[j]), 6),
                "std": round(float(std[j]), 6),
                "min": round(min(s["min"][j] for s in stats), 6),
                "max": round(max(s["max"][j] for s in stats), 6),
            }
            for j, name in enumerate(COLUMNS)
        },
    }


@flow
def dask_pipeline(partitions: int = 8, rows: int = 200_000) -> dict[str, Any]:
    """Generate ``partitions`` partitions, summarise each, combine the summaries."""
    parts = generate.map(partition_seeds(partitions), rows=unmapped(rows))
    return combine(summarise.map(parts))


def main(partitions: int, address: str | None) -> int:
    done: list[str] = []

    def progress(run: TaskRunRecord, entry: StateEntry) -> None:
        if run.children is None and entry.state.is_terminal:  # a mapped parent is no task
            done.append(run.key)
            print(f"  [{len(done):>3}] {run.key:<16} {entry.state.name}", flush=True)

    if address is None:  # a LocalCluster for this run, closed after it
        executor = DaskExecutor(n_workers=2, threads_per_worker=1)
    else:
        executor = DaskExecutor(address)
    print(f"dask_pipeline: {partitions} partitions on {address or 'a LocalCluster'}")
    run = dask_pipeline.run(partitions=partitions, executor=executor, on_transition=progress)
    print(f"dask_pipeline: {run.state.name} in {run.duration or 0:.2f}s")
    if not run.ok:
        for failure in run.failures:
            print(f"  {failure.key}: {failure.failure}")
        return 1
    summary = run.result
    print(f"  {summary['rows']:,} rows in {summary['partitions']} partitions")
    for name, col in summary["columns"].items():
        print(
            f"  {name}: mean {col['mean']:+.4f}  std {col['std']:.4f}  "
            f"min {col['min']:+.3f}  max {col['max']:+.3f}"
        )
    return 0


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    raise SystemExit(main(count, sys.argv[2] if len(sys.argv) > 2 else None))
