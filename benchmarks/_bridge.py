"""The Dask bridge's cluster memory across runs (issue 16, "large intermediate results
stay in the Dask cluster"): are a run's values let go of once it ended?

One ``headwater server`` (SQLite in a temporary directory, ``--dask-release-after 0``)
and one ``headwater worker --dask local`` (the bridge starts its own LocalCluster), as
subprocesses. ``runs`` flow runs one after another; in each, a task returns ``mb`` MiB
of bytes and a second task on the bridge takes it (the value stays in the cluster).
After each run this process asks the cluster's scheduler how many bytes its workers
hold (``TaskState.nbytes`` of the keys in state ``memory``), waiting up to
``SETTLE_S`` for them to drop below half of one run's value (the run's result, an int,
stays until the run is pruned). A bridge that keeps every result (before values were
released) holds ``runs`` x ``mb`` MiB at the end.
"""

from __future__ import annotations

import re
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from ._probes import _env
from ._server import _Proc

FLOWS = """
from headwater import flow, task

@task
def big(i: int, mb: int) -> bytes:
    return bytes([i % 256]) * (mb * 2**20)

@task
def size(data: bytes) -> int:
    return len(data)

@flow
def churn(i: int = 0, mb: int = 1) -> int:
    return size(big(i, mb))
"""
#: Longest wait after a run for the cluster to let go of its values (seconds).
SETTLE_S = 10.0


def _held(dask: Any) -> int:
    return int(
        dask.run_on_scheduler(
            lambda dask_scheduler: sum(
                t.nbytes for t in dask_scheduler.tasks.values() if t.state == "memory"
            )
        )
    )


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    from distributed import Client as DaskClient

    from headwater import Client
    from headwater._loader import load_file

    runs, mb = spec["params"]["runs"], spec["params"]["mb"]
    tmp = tempfile.TemporaryDirectory(prefix="headwater-bridge-")
    procs: list[_Proc] = []
    dask = None
    try:
        module = Path(tmp.name) / "bridge_flows.py"
        module.write_text(textwrap.dedent(FLOWS))
        cli = [sys.executable, "-m", "headwater._cli"]
        db = str(Path(tmp.name) / "headwater.db")
        server = _Proc(
            [*cli, "server", "--port", "0", "--db", db, "--no-http", "--dask-release-after", "0"],
            _env(),
            tmp.name,
        )
        procs.append(server)
        line = server.wait_line("headwater server listening on")
        address = line.split("listening on ", 1)[1].split(" ", 1)[0]
        bridge = _Proc(
            [*cli, "worker", "--server", address, "--module", str(module), "--dask", "local"],
            _env(),
            tmp.name,
        )
        procs.append(bridge)
        found = re.search(r"Dask cluster at (\S+?)\)", bridge.wait_line("connected to"))
        if found is None:
            raise RuntimeError("the bridge did not say where its Dask cluster is")
        dask = DaskClient(found[1], timeout=60)
        flows: Any = load_file(str(module))
        gone = mb * 2**20 // 2  # below this, the run's bytes have left the cluster
        held: list[int] = []
        settled: list[float] = []
        with Client(address) as client:
            for i in range(runs):
                final = client.wait(client.run(flows.churn, {"i": i, "mb": mb}).id)
                if final.state.name != "SUCCESS":
                    raise RuntimeError(f"run {i} ended {final.state.name}: {final.message}")
                ended = time.monotonic()
                while _held(dask) >= gone and time.monotonic() - ended < SETTLE_S:
                    time.sleep(0.05)
                settled.append(time.monotonic() - ended)
                held.append(_held(dask))
        return {
            "system": "server-bridge",
            "params": spec["params"],
            "tasks": 2 * runs,
            "check": runs,
            "held_mib": [h / 2**20 for h in held],
            "settle_median_s": statistics.median(settled),
            "one_run_mib": mb,
        }
    finally:
        if dask is not None:
            dask.close()
        for proc in reversed(procs):
            proc.stop()
        tmp.cleanup()


def format_bridge(name: str, data: dict[str, Any]) -> str:
    """The probe's lines: memory held after each run, and whether it stayed bounded."""
    held = data["held_mib"]
    shown = ", ".join(f"{h:.1f}" for h in held[:3]) + (
        f" ... {held[-1]:.1f}" if len(held) > 3 else ""
    )
    kept = max(held)
    return "\n".join(
        [
            f"{name}: {len(held)} runs, each passing {data['one_run_mib']} MiB between two tasks "
            "on a Dask bridge (server --dask-release-after 0)",
            f"  cluster memory held after each run (MiB): {shown}; released a median "
            f"{data['settle_median_s']:.2f} s after a run ended",
            f"  target: no run's bytes left in the cluster once it ended: "
            f"{'yes' if kept < data['one_run_mib'] / 2 else 'no'} (max {kept:.1f} MiB; a bridge "
            f"that kept every result would hold {len(held) * data['one_run_mib']} MiB)",
        ]
    )
