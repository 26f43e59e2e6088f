"""Parameters as values on a real server with a worker (subprocesses): the README's
first example, f-strings and ``if n > 8`` through ``headwater run --server``,
``Client.run(flow, ...)`` and a schedule; bad values refused before a run exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import BOUND, Cluster, poll, start_server, start_worker

from headwater import Client, FlowRunState, ParameterError
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


def test_parameters_are_values_on_a_server(tmp_path: Path, cluster: Cluster) -> None:
    _, address = start_server(cluster, tmp_path / "hw.db")
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
