"""The message limit a server and its workers share (docs/limits.md, max_message_bytes),
with a real `headwater server` and `headwater worker` subprocesses.

A server may send workers messages up to its ``--max-message-bytes``, so it refuses a
worker that accepts less; an assignment whose inputs still cannot fit after the large
ones were spilled to the store fails its task, naming the limit, instead of being sent
to a worker that would refuse it (which would end the stream and send it again).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import Cluster, start_server, start_worker

from headwater import Client
from headwater._loader import load_file
from headwater.wire import FlowRunState, TaskRunState

pytestmark = pytest.mark.e2e

TOKEN = "limit-token"

TASKS = """
from headwater import flow, task, unmapped


@task
def numbers(n: int) -> list[int]:
    return list(range(n))


@task
def label(i: int, width: int) -> str:
    return f"{i:0{width}d}"


@task
def count(labels: list[str]) -> int:
    return len(labels)


@flow
def labels(n: int = 3_000, width: int = 200) -> int:
    return count(label.map(numbers(n), width=unmapped(width)))
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    (tmp_path / "limit_tasks.py").write_text(textwrap.dedent(TASKS))
    env = {
        **os.environ,
        "HEADWATER_TOKEN": TOKEN,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("HEADWATER_MAX_MESSAGE_BYTES", None)
    procs = Cluster(env)
    yield procs
    procs.stop()


def test_a_server_refuses_a_worker_that_accepts_smaller_messages_than_it_sends(
    tmp_path: Path, cluster: Cluster
) -> None:
    eight = str(8 << 20)
    _, address = start_server(cluster, tmp_path / "hw.db", 0, "--max-message-bytes", eight)
    refused = cluster("worker", "--server", address, "--module", "limit_tasks")
    assert refused.wait() == 2  # (refused for good: a refused request)
    said = "\n".join(refused.other + refused.lines)
    assert "refused this worker" in said
    assert f"start the worker with --max-message-bytes {eight}" in said, said
    # At the server's limit (or above), the same worker is taken and runs tasks.
    start_worker(cluster, address, "w", "--max-message-bytes", eight, module="limit_tasks")
    flows = load_file(str(tmp_path / "limit_tasks.py"))
    with Client(address, token=TOKEN) as client:
        final = client.wait(client.run(flows.labels, {"n": 5, "width": 3}).id)
    assert final.state is FlowRunState.SUCCESS, [t.failure for t in final.task_runs]
    assert final.result == 5


def test_inputs_too_many_to_send_fail_their_task_naming_the_limit_and_large_ones_are_spilled(
    tmp_path: Path, cluster: Cluster
) -> None:
    """3,000 mapped results into one reduce, on a server whose messages are 512 KiB at
    most. At 300 bytes each (over the 256 that make a stored copy worth it) the large
    ones go to the store and the reduce runs; at 200 bytes each (~700 KB together)
    nothing is worth storing and the reduce fails, not retried, naming the limit."""
    limit = str(512 << 10)
    _, address = start_server(
        cluster,
        tmp_path / "hw.db",
        0,
        "--max-message-bytes",
        limit,
        "--max-chunk-bytes",
        str(256 << 10),
    )
    start_worker(cluster, address, "w", "--slots", "8", module="limit_tasks")
    flows = load_file(str(tmp_path / "limit_tasks.py"))
    with Client(address, token=TOKEN) as client:
        spilled = client.wait(client.run(flows.labels, {"width": 300}).id)
        assert spilled.state is FlowRunState.SUCCESS, spilled.message
        assert spilled.result == 3_000
        small = client.wait(client.run(flows.labels, {"width": 200}).id)
    assert small.state is FlowRunState.FAILED
    reduce = {t.key: t for t in small.task_runs}["count"]
    assert reduce.state is TaskRunState.FAILED and reduce.attempts <= 1
    assert reduce.failure is not None
    assert reduce.failure.type == "headwater.InputsTooLarge"
    assert "over this server's limit max_message_bytes = 524288" in reduce.failure.message
    assert "--max-message-bytes" in reduce.failure.message
