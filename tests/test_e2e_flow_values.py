"""Parameters as values on a real server with a worker (subprocesses): the README's
first example, f-strings and ``if n > 8`` through ``headwater run --server``,
``Client.run(flow, ...)`` and a schedule; bad values refused before a run exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from e2e_helpers import BOUND, Cluster, poll, start_server, start_worker

from headwater import Client, FlowRunState, ParameterError, ServerError
from headwater._loader import load_file

pytestmark = pytest.mark.e2e

FLOWS = """
from headwater import flow, task, unmapped


@task(retries=2, retry_delay=0.1)
def scale(x: int, factor: int) -> int:
    return x * factor


@task
def total(values: list[int]) -> int:
    return sum(values)


@flow
def pipeline(n: int = 10, factor: int = 3) -> int:
    return total(scale.map(list(range(n)), unmapped(factor)))


@task
def write(path: str) -> str:
    return "wrote " + path


@flow
def paths(out_dir: str = "/tmp", n: int = 1) -> list[str]:
    if n > 8:
        return [write(f"{out_dir}/big.sqlite")]
    return [write(f"{out_dir}/small-{i}.sqlite") for i in range(n)]
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    (tmp_path / "vflows.py").write_text(textwrap.dedent(FLOWS))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    procs = Cluster(env)
    yield procs
    procs.stop()


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headwater._cli", *args],
        capture_output=True,
        text=True,
        timeout=BOUND,
        cwd=cwd,
        check=False,
    )


def test_parameters_are_values_on_a_server(tmp_path: Path, db: str, cluster: Cluster) -> None:
    _, address = start_server(cluster, db)
    start_worker(cluster, address, "w1", module="vflows")
    script = str(tmp_path / "vflows.py")

    ran = cli("run", f"{script}:pipeline", "-p", "n=5", "--server", address, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == 30
    ran = cli(
        "run", f"{script}:paths", "-p", "n=9", "-p", "out_dir=/d", "--server", address, cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == ["wrote /d/big.sqlite"]
    ran = cli(
        "run", f"{script}:paths", "-p", "n=2", "-p", "out_dir=/d", "--server", address, cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout) == ["wrote /d/small-0.sqlite", "wrote /d/small-1.sqlite"]

    # A bad value: one line, exit code 2, and no run is created.
    bad = cli("run", f"{script}:pipeline", "-p", "n=abc", "--server", address, cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip() == (
        "headwater: error: flow 'pipeline': parameter 'n' expects int, got 'abc' "
        "(Input should be a valid integer, unable to parse string as an integer)"
    )

    module = load_file(script)
    with Client(address) as client:
        assert len(client.list_runs()) == 3
        run = client.run(module.pipeline, {"n": "4", "factor": 2})  # type: ignore[attr-defined]
        final = client.wait(run.id)
        assert final.state is FlowRunState.SUCCESS, final.message
        assert final.result == 12
        assert run.flow_version.startswith("@")
        # The same values again: the same stored graph (one per distinct digest).
        again = client.run(module.pipeline, {"n": 4, "factor": 2})  # type: ignore[attr-defined]
        assert again.flow_version == run.flow_version
        with pytest.raises(ParameterError, match=r"'n' expects int"):
            client.run(module.pipeline, {"n": "many"})  # type: ignore[attr-defined]
        # By name, with the values a stored graph was built for: runs; others: refused.
        assert client.wait(client.run("pipeline", {"n": 4, "factor": 2}).id).result == 12

        # A schedule of a value-dependent flow: its graph for the schedule's values.
        schedule = client.create_schedule(
            module.paths,  # type: ignore[attr-defined]
            every=0.2,
            params={"n": 2, "out_dir": "/s"},
        )
        poll(lambda: len(client.list_runs(flow_name="paths")) >= 4, "two scheduled runs")
        client.delete_schedule(schedule.id)
        scheduled = [r for r in client.list_runs(flow_name="paths") if r.schedule_id]
        for r in scheduled[:2]:
            done = client.wait(r.id)
            assert done.state is FlowRunState.SUCCESS, done.message
            assert done.result == ["wrote /s/small-0.sqlite", "wrote /s/small-1.sqlite"]

    ran = cli("graph", f"{script}:paths", "-p", "n=9", "--format", "json", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    graph = json.loads(ran.stdout)
    assert graph["valueDependent"] is True
    assert [t["id"] for t in graph["tasks"]] == ["write"]


def test_a_prune_deletes_the_builds_nothing_uses(tmp_path: Path, db: str, cluster: Cluster) -> None:
    """``headwater prune --older-than`` beside a server deletes the value-dependent builds
    (one per distinct set of values, never deleted before) that no run or schedule uses;
    a run pinned to one is refused naming why, and the flow's code registers it again."""
    _, address = start_server(cluster, db)
    start_worker(cluster, address, "w1", module="vflows")
    module = load_file(str(tmp_path / "vflows.py"))
    with Client(address) as client:
        unused = client.deploy(module.pipeline, {"n": 2})  # type: ignore[attr-defined]
        scheduled = client.create_schedule(
            module.pipeline,  # type: ignore[attr-defined]
            every=3600,
            params={"n": 3},
        )
        assert unused.startswith("@") and scheduled.flow_version.startswith("@")
        time.sleep(1.1)  # both builds registered more than --older-than 1s ago
        pruned = cli("prune", "--db", db, "--older-than", "1s", cwd=tmp_path)
        assert pruned.returncode == 0, pruned.stderr
        assert "1 flow build(s) (VERSION@DIGEST) unused since the cut-off" in pruned.stdout
        # Its deploy went with it (an entry per build, a build per run, for good before).
        deploys = {e.object_id for e in client.audit("flow")}
        assert deploys == {f"pipeline:{scheduled.flow_version}"}, deploys
        with pytest.raises(ServerError, match="is not registered: a build for particular") as e:
            client.run("pipeline", {"n": 2}, version=unused)
        assert e.value.code == grpc.StatusCode.NOT_FOUND
        run = client.run(module.pipeline, {"n": 2})  # type: ignore[attr-defined]
        assert run.flow_version == unused
        assert client.wait(run.id).result == 3
        # The schedule's build stays while the schedule does.
        fired = client.run("pipeline", {"n": 3}, version=scheduled.flow_version)
        assert client.wait(fired.id).result == 9
