"""Compile cost per run: building a 10,000-task flow's graph, and its digest.

Two flows of the same shape (``n`` no-op tasks and one reduce):

- ``symbolic``: the body loops over a constant, so the symbolic compile succeeds and the
  graph serves every run;
- ``value-dependent``: the body loops over ``range(n)``, so the symbolic attempt stops
  at once and the body runs again with the values (docs/flows.md).

Each is timed as the phases a run pays: ``trace`` (``flow.graph(n=...)``: run the body,
validate the graph), ``proto`` (``graph_to_proto`` plus the parameter types and JSON
Schemas: what ``flow.compile`` adds to the trace) and ``digest`` (deterministic
serialisation and SHA-256, what a server computes to store a graph once). ``first`` is
the very first ``flow.graph()`` of a fresh flow object over new code (for the
value-dependent flow it includes the stopped symbolic attempt).
"""

from __future__ import annotations

import hashlib
import statistics
import time
from typing import Any

from headwater import Flow, flow, task


@task
def noop(i: int) -> int:
    return i


@task
def total(values: list[int]) -> int:
    return sum(values)


def _flows(n: int) -> dict[str, Flow[..., Any]]:
    # Fresh function objects (new code objects) per call: "first" is really the first.
    namespace: dict[str, Any] = {"flow": flow, "noop": noop, "total": total}
    exec(
        f"@flow(name='symbolic_{n}')\n"
        f"def symbolic(n: int = {n}) -> int:\n"
        f"    return total([noop(i) for i in range({n})])\n"
        f"@flow(name='value_dependent_{n}')\n"
        f"def value_dependent(n: int = {n}) -> int:\n"
        f"    return total([noop(i) for i in range(n)])\n",
        namespace,
    )
    return {"symbolic": namespace["symbolic"], "value-dependent": namespace["value_dependent"]}


def _phases(f: Flow[..., Any], n: int) -> dict[str, float]:
    from headwater._graphs import with_types
    from headwater.wire import graph_to_proto

    t0 = time.perf_counter()
    graph = f.graph(n=n)
    t1 = time.perf_counter()
    msg = graph_to_proto(with_types(f, graph))
    t2 = time.perf_counter()
    data = msg.SerializeToString(deterministic=True)
    hashlib.sha256(data).hexdigest()
    t3 = time.perf_counter()
    return {"trace": t1 - t0, "proto": t2 - t1, "digest": t3 - t2, "bytes": float(len(data))}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    n: int = spec["params"]["n"]
    repeats: int = spec.get("repeats", 1)
    out: dict[str, Any] = {
        "system": "compile",
        "params": spec["params"],
        "tasks": n + 1,
        "check": n,
    }
    for name, f in _flows(n).items():
        start = time.perf_counter()
        graph = f.graph(n=n)
        first = time.perf_counter() - start
        assert graph.value_dependent == (name == "value-dependent"), name
        _phases(f, n)  # warm-up: pydantic's first JSON Schema, protobuf's first message
        runs = [_phases(f, n) for _ in range(repeats)]
        out[name] = {
            "first": first,
            **{k: statistics.median(r[k] for r in runs) for k in runs[0]},
        }
    return out


def format_compile(data: dict[str, Any]) -> str:
    """The compile table: one line per flow, ms and µs per task."""
    tasks = data["tasks"]
    lines = [
        f"compile cost of a {tasks:,}-task flow (median of the repeats; first = the first "
        "flow.graph() of new code)",
        f"{'flow':16} {'first ms':>9} {'trace ms':>9} {'proto ms':>9} {'digest ms':>10} "
        f"{'total ms':>9} {'µs/task':>8} {'graph KB':>9}",
    ]
    for name in ("symbolic", "value-dependent"):
        d = data[name]
        total_s = d["trace"] + d["proto"] + d["digest"]
        lines.append(
            f"{name:16} {d['first'] * 1e3:9.1f} {d['trace'] * 1e3:9.1f} "
            f"{d['proto'] * 1e3:9.1f} {d['digest'] * 1e3:10.1f} {total_s * 1e3:9.1f} "
            f"{total_s / tasks * 1e6:8.1f} {d['bytes'] / 1024:9.0f}"
        )
    return "\n".join(lines)
