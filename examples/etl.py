"""An ETL-style flow: extract -> map transform -> load, with a flaky, retried step and a
cleanup task that runs whatever happened.

    headwater run examples/etl.py --param batches=5
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

from headwater import flow, task, unmapped

WORKDIR = Path(tempfile.gettempdir()) / "headwater-etl-example"

# The "flaky API": every third batch times out on its first call, then recovers.
_calls_lock = threading.Lock()
_first_calls: set[int] = set()


@task
def extract(batches: int) -> list[dict[str, object]]:
    """Pretend to read batches from a source system."""
    WORKDIR.mkdir(parents=True, exist_ok=True)
    return [{"batch": i, "rows": list(range(i * 10, i * 10 + 10))} for i in range(batches)]


@task(retries=3, retry_delay=0.05, backoff=2.0)
def transform(batch: dict[str, object], flaky: bool) -> dict[str, object]:
    """Clean one batch. A flaky API fails some first calls; retries with backoff fix it."""
    number = int(batch["batch"])  # type: ignore[call-overload]
    with _calls_lock:
        first_call = number not in _first_calls
        _first_calls.add(number)
    if flaky and first_call and number % 3 == 1:
        raise ConnectionError(f"upstream API timed out for batch {number}")
    rows = [r * 2 for r in batch["rows"]]  # type: ignore[attr-defined]
    return {"batch": batch["batch"], "rows": rows, "sum": sum(rows)}


@task
def load(batches: list[dict[str, object]]) -> int:
    """Write the cleaned batches; returns the number of rows written."""
    out = WORKDIR / "output.csv"
    lines = [f"{b['batch']},{b['sum']}" for b in batches]
    out.write_text("batch,sum\n" + "\n".join(lines) + "\n")
    return sum(len(b["rows"]) for b in batches)  # type: ignore[arg-type]


@task(trigger="all_finished")
def cleanup() -> str:
    """Always runs, after load finished (succeeded or not)."""
    for tmp in WORKDIR.glob("*.tmp"):
        tmp.unlink()
    return "cleaned"


@flow
def etl(batches: int = 5, flaky: bool = True) -> int:
    """Extract batches, transform each in parallel, load them, clean up."""
    raw = extract(batches)
    cleaned = transform.map(raw, flaky=unmapped(flaky))
    written = load(cleaned)
    cleanup(wait_for=[written])
    return written


if __name__ == "__main__":
    run = etl.run()
    retried = [
        r.key for r in run.task_runs.values() if any(e.state.name == "RETRYING" for e in r.history)
    ]
    print(f"etl: {run.state.name}; rows written: {run.result}; retried: {retried or 'none'}")
