"""No stale code (docs/flows.md): a worker whose code for a task differs from the code
a run's graph was built with is not given the task, and the run says why it waits;
``--allow-stale-code`` (or ``code_version``) lets it run anyway. Real server and worker
subprocesses; the task is edited while the worker keeps running."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import Cluster, poll, start_server, start_worker

from headwater import Client
from headwater._cli import main
from headwater._loader import load_file
from headwater.wire import FlowRunState, TaskRunState

pytestmark = pytest.mark.e2e

VERSION = """
from headwater import flow, task

@task
def shout(text: str) -> str:
    return text.upper(){suffix}

@task(code_version="1")
def whisper(text: str) -> str:
    return text.lower(){suffix}

@flow
def loud(text: str = "hi") -> str:
    return shout(text)

@flow
def quiet(text: str = "HI") -> str:
    return whisper(text)
"""


def write(folder: Path, suffix: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "stale_tasks.py"
    path.write_text(textwrap.dedent(VERSION).format(suffix=suffix))
    return path


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    procs = Cluster(dict(os.environ))
    yield procs
    procs.stop()
    sys.modules.pop("stale_tasks", None)


def test_an_edited_task_waits_for_a_worker_with_its_code_unless_overridden(
    tmp_path: Path, cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "app", "")
    _, address = start_server(cluster, tmp_path / "hw.db")
    start_worker(cluster, address, "old-code", module=str(path))
    with Client(address) as client:
        first = client.run(load_file(str(path)).loud)
        assert client.wait(first.id).result == "HI"

        # Edit the task; the worker keeps the code it imported.
        edited = load_file(str(write(tmp_path / "app", ' + "!"')))
        run = client.run(edited.loud)
        reason: list[str] = []

        def waits_with_a_reason() -> bool:
            (task_run,) = client.get(run.id, include_task_runs=True).task_runs
            reason[:] = [task_run.waiting]
            return task_run.state is TaskRunState.SCHEDULED and bool(task_run.waiting)

        poll(waits_with_a_reason, "the task run to wait with a reason")
        assert "worker 'old-code' has other code for task 'stale_tasks.shout'" in reason[0]
        assert "--allow-stale-code" in reason[0]
        capsys.readouterr()
        assert main(["runs", "show", run.id, "--server", address]) == 0
        assert "waiting: worker 'old-code' has other code" in capsys.readouterr().out

        # A task that names its code_version counts as unchanged while the name is:
        # the old worker takes it and runs the code it has (without the "!").
        assert client.wait(client.run(edited.quiet).id).result == "hi"

        # The override: a worker that reports no digests takes the waiting task.
        old_copy = write(tmp_path / "old", "")
        start_worker(cluster, address, "any-code", "--allow-stale-code", module=str(old_copy))
        final = client.wait(run.id)
        assert final.state is FlowRunState.SUCCESS
        assert final.result == "HI"  # the old code ran, as asked
        (task_run,) = final.task_runs
        assert task_run.worker == "any-code" and task_run.waiting == ""
