"""``server-failover``: how long a leader's SIGKILL interrupts dispatching.

Two ``headwater server`` processes on one PostgreSQL database (fsync on) with the
default lease (10 s; 2 s with ``--quick``), one ``headwater worker`` given both
addresses. Each round:

1. a run of ``handoff_flow`` starts; its first task (``held``) runs on the worker and
   waits for a file;
2. the file is written and, at once, the leader is SIGKILLed (``t_kill``): the
   worker's result goes to a dead server;
3. the standby takes the lead when the lease runs out, recovers the run, the worker
   reconnects and hands the held attempt's result over, and the new leader dispatches
   ``stamp``, which returns the wall clock when it starts on the worker.

The figure is ``stamp``'s start minus ``t_kill``: leader SIGKILL to the first task
dispatched (and started) by the new leader. Takeover alone (SIGKILL to the standby
printing its listening line) is reported beside it. The killed server is started
again, as the standby, for the next round, so the roles alternate.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from headwater import Client
from headwater.wire import ENV_DB, ENV_TOKEN, FlowRunState

from ._server import ROOT, START_TIMEOUT, TASKS_MODULE, _Proc, new_database

#: Longest a round may take (the lease is 10 s).
ROUND_TIMEOUT = 120.0


def _server(env: dict[str, str], tmp: str, db: str, lease: int, port: int = 0) -> _Proc:
    cli = [sys.executable, "-m", "headwater._cli"]
    args = ["server", "--port", str(port), "--db", db, "--lease", f"{lease}s"]
    return _Proc([*cli, *args], env, tmp)


def _address(proc: _Proc, fragment: str) -> str:
    line = proc.wait_line(fragment)
    return line.split(fragment, 1)[1].strip().split(" ", 1)[0].rstrip(":")


def measure_failover(spec: dict[str, Any]) -> dict[str, Any]:
    from ._server_tasks import handoff_flow

    rounds, lease = spec["params"]["rounds"], spec["params"]["lease"]
    failover: list[float] = []
    takeover: list[float] = []
    db, postgres = new_database(spec)
    procs: list[_Proc] = []
    with tempfile.TemporaryDirectory(prefix="headwater-bench-failover-") as tmp:
        try:
            env = {k: v for k, v in os.environ.items() if k not in (ENV_TOKEN, ENV_DB)}
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
            env["HW_BENCH_DIR"] = tmp
            leader = _server(env, tmp, db, lease)
            procs.append(leader)
            lead_at = _address(leader, "headwater server listening on ")
            standby = _server(env, tmp, db, lease)
            procs.append(standby)
            stand_at = _address(standby, "headwater server standing by on ")
            both = f"{lead_at},{stand_at}"
            cli = [sys.executable, "-m", "headwater._cli"]
            worker = _Proc(
                [*cli, "worker", "--server", both, "--module", TASKS_MODULE, "--slots", "2"],
                env,
                tmp,
            )
            procs.append(worker)
            worker.wait_line("connected to")
            release = Path(tmp) / "release"
            with Client(both, timeout=ROUND_TIMEOUT) as client:
                version = client.deploy(handoff_flow)
                for i in range(rounds):
                    release.unlink(missing_ok=True)
                    run_id = client.run(handoff_flow.name, version=version).id
                    _wait_for(lambda: (Path(tmp) / "held-started").exists(), "held to start")
                    (Path(tmp) / "held-started").unlink()
                    release.write_text("go")
                    t_kill = time.time()
                    leader.popen.kill()
                    leader.popen.wait(10)
                    standby.wait_line("headwater server listening on", ROUND_TIMEOUT)
                    took = time.time()
                    final = client.wait(run_id)
                    if final.state is not FlowRunState.SUCCESS:
                        raise RuntimeError(f"round {i + 1}: the run ended {final.state.name}")
                    failover.append(float(final.result) - t_kill)
                    takeover.append(took - t_kill)
                    # The killed server comes back on its port, as the standby.
                    port = int(lead_at.rsplit(":", 1)[1])
                    leader, standby = standby, _server(env, tmp, db, lease, port)
                    procs.append(standby)
                    lead_at, stand_at = stand_at, lead_at
                    _address(standby, "headwater server standing by on ")
        finally:
            for proc in reversed(procs):
                try:
                    proc.stop()
                except Exception as exc:
                    print(f"could not stop pid {proc.pid}: {exc}", file=sys.stderr)
            if postgres is not None:
                postgres.stop()
    return {
        "system": "server",
        "kind": "failover",
        "params": spec["params"],
        "tasks": 0,
        "label": f"{rounds} rounds, lease {lease} s",
        "walls": failover,
        "compiles": [],
        "setup_s": None,
        "failover_s": failover,
        "takeover_s": takeover,
        "check": rounds,
        "cpu_s": [],
        "peak_rss_mb": {},
        "workers": 1,
        "worker_slots": [2],
        "median_failover_s": statistics.median(failover),
    }


def _wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.005)
