"""Quickstart: a small flow run embedded (in this process, no server).

python examples/quickstart.py        # or: headwater run examples/quickstart.py
"""

from __future__ import annotations

from headwater import flow, task, unmapped


@task
def numbers(n: int) -> list[int]:
    """The inputs: 0 .. n-1."""
    return list(range(n))


@task(retries=2, retry_delay=0.1)
def scale(x: int, factor: int) -> int:
    """Runs once per number (a mapped task)."""
    return x * factor


@task
def total(values: list[int]) -> int:
    """Receives every scaled value as one list (a reduce)."""
    return sum(values)


@flow
def quickstart(n: int = 10, factor: int = 3) -> dict[str, object]:
    """Scale n numbers in parallel, then add them up."""
    values = numbers(n)
    scaled = scale.map(values, unmapped(factor))
    return {"scaled": scaled, "total": total(scaled)}


if __name__ == "__main__":
    run = quickstart.run(n=10, factor=3)
    print(f"flow run {run.flow_name}: {run.state.name} in {run.duration:.3f}s")
    for key in ("numbers", "scale", "total"):
        record = run.task_run(key)
        children = len(record.children or ())
        detail = f" ({children} mapped runs)" if record.children is not None else ""
        print(f"  {key:8} {record.state.name}{detail}")
    print("result:", run.result)
