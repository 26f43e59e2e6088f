"""Subflows, flows started by tasks and graphs built by workers, on a real server with
worker subprocesses (docs/flows.md, docs/worker-protocol.md §16).

- A parent flow with two subflows and a task that starts a flow runs on a server with
  the same states and results as embedded, and the links show in ``headwater runs``.
- A value-dependent flow runs by name from a process without its code, and from a
  schedule: a worker that offers the flow builds its graph for the values.
- Cancelling the parent, or a subflow node timing out, cancels the children.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_helpers import BOUND, Cluster, poll, start_server, start_worker

from headwater import Client, ServerError
from headwater._cli import main
from headwater._loader import load_file
from headwater.wire import FlowRunState, TaskRunState

pytestmark = pytest.mark.e2e

FLOWS = """
import time
from headwater import flow, task

@task
def add(x: int, y: int) -> int:
    return x + y

@task
def double(x: int) -> int:
    return 2 * x

@flow
def child(x: int, y: int = 1) -> int:
    return double(add(x, y))

@flow
def squares(n: int) -> list[int]:
    return [double(i) for i in range(n)]

@task
def sum_squares(n: int) -> int:
    return sum(squares(n))

@flow
def flows_in_every_slot(k: int = 4, n: int = 3) -> list[int]:
    return sum_squares.map([n] * k)

@flow
def parent(a: int = 3) -> dict:
    first = child(a)
    second = child(first, y=10)
    third = sum_squares(first)
    return {"first": first, "second": second, "third": third}

@task
def ready() -> str:
    return "ready"

@task
def wait_forever(after: str = "") -> str:
    for _ in range(6000):  # interrupted when cancelled; bounded either way
        time.sleep(0.01)
    return "never"

@flow
def blocked() -> str:
    return wait_forever()

@task
def starts_blocked() -> str:
    return blocked()

@flow
def holding() -> list:
    return [blocked(), starts_blocked()]

@flow
def impatient() -> str:
    return blocked.with_options(timeout=1)()

@flow(timeout=1)
def hurried() -> str:
    return wait_forever(ready())

@flow
def each_doubled(items: list) -> list:
    return double.map(items)

@task
def numbers(n: int) -> list:
    return list(range(n))

@task
def table(n: int) -> dict:
    return {"rows": list(range(n)), "name": "t"}

@flow
def doubled_defaults(items: tuple = (5, 6)) -> list:
    return double.map(items)

@flow
def mapping_children(n: int, given: list) -> dict:
    return {
        "result": each_doubled(numbers(n)),
        "part": each_doubled(table(n)["rows"]),
        "constant": each_doubled([1, 2]),
        "parameter": each_doubled(given),
        "empty": each_doubled([]),
        "built": each_doubled_and_more(numbers(n), 1),
        "default": doubled_defaults(),
    }

@flow
def produced(n: int) -> list:
    return numbers(n)

@flow
def produced_table(n: int) -> dict:
    return {"table": table(n), "n": n}

@flow
def each_doubled_and_more(items: list, k: int) -> list:
    more = [double(i) for i in range(k)]  # value-dependent: built for each run's values
    return [double.map(items), more]

@flow
def produced_by_a_child(n: int) -> list:
    return produced(n)

@flow
def over_children(n: int) -> dict:
    return {
        "whole": double.map(produced(n)),
        "grandchild": double.map(produced_by_a_child(n)),
        "part": double.map(produced_table(n)["table"]["rows"]),
        "mapped": double.map(each_doubled(numbers(n))),
    }
"""


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    (tmp_path / "nested_flows.py").write_text(textwrap.dedent(FLOWS))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]),
    }
    procs = Cluster(env)
    yield procs
    procs.stop()
    sys.modules.pop("nested_flows", None)


def _child_runs(client: Client, run_id: str) -> dict[str, Any]:
    """A run's child runs (with task runs) by the key of the task run they belong to."""
    final = client.get(run_id, include_task_runs=True)
    found: dict[str, Any] = {}
    for task_run in final.task_runs:
        for child_id in task_run.child_run_ids:
            found[task_run.key] = client.get(child_id, include_task_runs=True)
    return found


def _states(task_runs: Any) -> dict[str, list[TaskRunState]]:
    """Each task run's state history (a server does not list the initial PENDING)."""
    return {t.key: t.states for t in task_runs}


def _embedded_states(task_runs: Any) -> dict[str, list[TaskRunState]]:
    return {key: r.states[1:] for key, r in task_runs.items()}


def test_subflows_and_a_flow_started_by_a_task_run_alike_embedded_and_on_a_server(
    tmp_path: Path, cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    module = load_file(str(tmp_path / "nested_flows.py"))
    embedded = module.parent.run(a=3)
    assert embedded.state is FlowRunState.SUCCESS

    _, address = start_server(cluster, tmp_path / "hw.db")
    start_worker(cluster, address, "w1", module=str(tmp_path / "nested_flows.py"))
    start_worker(cluster, address, "w2", module=str(tmp_path / "nested_flows.py"))
    with Client(address) as client:
        run = client.run(module.parent, {"a": 3})
        final = client.wait(run.id)
        assert final.state is FlowRunState.SUCCESS, final.message
        assert final.result == embedded.result
        assert _states(final.task_runs) == _embedded_states(embedded.task_runs)

        children = _child_runs(client, run.id)
        assert sorted(children) == ["child", "child-2", "sum_squares"]
        for c in embedded.children:
            remote = children[c.parent_task_run]
            assert (remote.flow_name, remote.state, remote.result) == (
                c.flow_name,
                c.state,
                c.result,
            )
            assert (remote.parent_id, remote.parent_task_run_id) == (
                run.id,
                f"{run.id}/{c.parent_task_run}",
            )
            assert _states(remote.task_runs) == _embedded_states(c.task_runs)
        listed = {r.id: r for r in client.list_runs()}
        assert {listed[c.id].parent_task_run_id for c in children.values()} == {
            f"{run.id}/child",
            f"{run.id}/child-2",
            f"{run.id}/sum_squares",
        }

    capsys.readouterr()
    assert main(["runs", "show", run.id, "--server", address]) == 0
    shown = capsys.readouterr().out
    for c in children.values():
        assert f"child flow run {c.id}" in shown, shown
    assert main(["runs", "show", children["sum_squares"].id, "--server", address]) == 0
    shown = capsys.readouterr().out
    assert f"parent: flow run {run.id}, task run {run.id}/sum_squares" in shown
    assert main(["runs", "list", "--server", address]) == 0
    assert f"child of {run.id[:8]}/child-2" in capsys.readouterr().out  # (as run ids show)


def test_tasks_that_call_flows_in_every_slot_of_a_worker_lend_their_slots(
    tmp_path: Path, cluster: Cluster
) -> None:
    """Four tasks that each call a flow, on a worker with two slots: each waits for its
    child run, whose tasks need a slot of that same worker. The waiting tasks lend
    their slots (the server's count and the worker's), so the children run; before,
    the run hung forever with the children's tasks "waiting for a free slot"."""
    module = load_file(str(tmp_path / "nested_flows.py"))
    embedded = module.flows_in_every_slot(k=4, n=3)
    _, address = start_server(cluster, tmp_path / "hw.db")
    start_worker(cluster, address, "w1", "--slots", "2", module=str(tmp_path / "nested_flows.py"))
    with Client(address) as client:
        run = client.run(module.flows_in_every_slot, {"k": 4, "n": 3})
        poll(lambda: client.get(run.id).state.is_terminal, "the run to end")
        final = client.get(run.id, include_task_runs=True)
        assert final.state is FlowRunState.SUCCESS, final.message
        assert final.result == embedded == [6, 6, 6, 6]
        children = _child_runs(client, run.id)
        assert len(children) == 4
        assert all(c.state is FlowRunState.SUCCESS for c in children.values())
        (worker,) = client.list_workers()
        assert worker.slots == 2


def test_a_subflow_maps_over_its_parameter_on_a_server_as_embedded(
    tmp_path: Path, cluster: Cluster
) -> None:
    """A child flow whose task maps over its parameter, given a task's result, a part
    of one, a constant list, the parent's own parameter, an empty list or its own
    default (which the parent's node then passes). The server
    maps over a value's elements without decoding it, so the parent's graph names the
    child's mapped parameters (SubflowCall.mapped_parameters) and their inputs come
    with their elements. On a server each child failed with "parameter 'items' is not
    a sequence"; embedded they always ran. A value-dependent child ("built") needs
    none of it: its graph, built for the child run's values, holds them as constants."""
    module = load_file(str(tmp_path / "nested_flows.py"))
    expected = {"result": [0, 2, 4], "part": [0, 2, 4], "constant": [2, 4], "parameter": [14, 16]}
    expected |= {"empty": [], "built": [[0, 2, 4], [0]], "default": [10, 12]}
    assert module.mapping_children(n=3, given=[7, 8]) == expected
    _, address = start_server(cluster, tmp_path / "hw.db")
    start_worker(cluster, address, "w1", module=str(tmp_path / "nested_flows.py"))
    with Client(address) as client:
        run = client.run(module.mapping_children, {"n": 3, "given": [7, 8]})
        final = client.wait(run.id)
        assert final.state is FlowRunState.SUCCESS, final.message
        assert final.result == expected
        children = _child_runs(client, run.id)
        assert {c.state for c in children.values()} == {FlowRunState.SUCCESS}
        mapped = children["each_doubled"].task_runs  # each element ran as its own task run
        assert sorted(t.key for t in mapped) == ["double", "double[0]", "double[1]", "double[2]"]


def test_a_flow_maps_over_a_subflow_result_on_a_server_as_embedded(
    tmp_path: Path, cluster: Cluster
) -> None:
    """A parent mapping over a child flow's result, or a part of it: the child's task
    that the result comes from is split by its worker, as for a task the parent maps
    over. On a server the parent's map failed with "the result is not a sequence"
    unless the child's result was a mapped task's list."""
    module = load_file(str(tmp_path / "nested_flows.py"))
    expected = {"whole": [0, 2, 4], "part": [0, 2, 4], "mapped": [0, 4, 8], "grandchild": [0, 2, 4]}
    assert module.over_children(n=3) == expected
    _, address = start_server(cluster, tmp_path / "hw.db")
    start_worker(cluster, address, "w1", module=str(tmp_path / "nested_flows.py"))
    with Client(address) as client:
        final = client.wait(client.run(module.over_children, {"n": 3}).id)
        assert final.state is FlowRunState.SUCCESS, final.message
        assert final.result == expected


BY_NAME = """
import json, sys
from headwater import Client

with Client(sys.argv[1]) as client:
    results = []
    for n in ("4", 2, 4):
        run = client.run("squares", {"n": n})
        final = client.wait(run.id)
        results.append([final.state.name, final.result, final.flow_version])
    print(json.dumps(results))
"""


def test_a_value_dependent_flow_runs_by_name_from_a_process_without_its_code(
    tmp_path: Path, cluster: Cluster
) -> None:
    _, address = start_server(cluster, tmp_path / "hw.db")
    start_worker(cluster, address, "builder", module=str(tmp_path / "nested_flows.py"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "by_name.py").write_text(BY_NAME)
    env = {k: v for k, v in cluster.env.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "by_name.py", address],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=BOUND,
    )
    assert proc.returncode == 0, proc.stderr
    (four, two, four_again) = json.loads(proc.stdout)
    assert four[:2] == ["SUCCESS", [0, 2, 4, 6]]  # "4" converted by the worker
    assert two[:2] == ["SUCCESS", [0, 2]]
    assert four_again == four  # the same values: the same stored graph
    assert four[2].startswith("@") and four[2] != two[2]
    with (
        Client(address) as client,
        pytest.raises(ServerError, match=r"parameter 'n' expects int, got 'abc'"),
    ):
        client.run("squares", {"n": "abc"})


def test_a_schedule_of_a_value_dependent_flow_by_name(tmp_path: Path, cluster: Cluster) -> None:
    _, address = start_server(cluster, tmp_path / "hw.db")
    start_worker(cluster, address, "builder", module=str(tmp_path / "nested_flows.py"))
    with Client(address) as client:
        schedule = client.create_schedule("squares", every=1, params={"n": "3"})
        assert schedule.parameters == {"n": 3}  # checked and converted by the worker
        fired: list[Any] = []

        def scheduled_run_ended() -> bool:
            runs = [r for r in client.list_runs("squares") if r.schedule_id == schedule.id]
            fired[:] = [r for r in runs if r.state.is_terminal]
            return bool(fired)

        poll(scheduled_run_ended, "a run of the schedule")
        client.delete_schedule(schedule.id)
        assert fired[0].state is FlowRunState.SUCCESS, fired[0].message
        assert client.get(fired[0].id).result == [0, 2, 4]


def test_cancelling_the_parent_or_a_subflow_timeout_cancels_the_children(
    tmp_path: Path, cluster: Cluster
) -> None:
    module = load_file(str(tmp_path / "nested_flows.py"))
    _, address = start_server(cluster, tmp_path / "hw.db")
    start_worker(cluster, address, "w1", module=str(tmp_path / "nested_flows.py"))
    with Client(address) as client:
        run = client.run(module.holding)

        def both_children_running() -> bool:
            children = _child_runs(client, run.id)
            return len(children) == 2 and all(
                any(t.state is TaskRunState.RUNNING for t in c.task_runs) for c in children.values()
            )

        poll(both_children_running, "both children to run their task")
        client.cancel(run.id, "enough")
        final = client.wait(run.id)
        assert final.state is FlowRunState.CANCELLED
        children = _child_runs(client, run.id)
        for key in ("blocked", "starts_blocked"):
            child_run = client.wait(children[key].id)
            assert child_run.state is FlowRunState.CANCELLED, (key, child_run.message)
            assert "ended CANCELLED" in child_run.message
            assert {t.state for t in child_run.task_runs} == {TaskRunState.CANCELLED}

        timed = client.run(module.impatient)
        final = client.wait(timed.id)
        assert final.state is FlowRunState.FAILED
        (node,) = final.task_runs
        assert node.state is TaskRunState.TIMED_OUT
        assert node.failure is not None and node.failure.timed_out, node.failure
        assert node.failure.type == "headwater.TaskTimeout"
        (only,) = _child_runs(client, timed.id).values()
        assert client.wait(only.id).state is FlowRunState.CANCELLED

        # A top-level run of a flow with a timeout of its own: stopped at its deadline.
        hurried = client.wait(client.run(module.hurried).id)
        assert hurried.state is FlowRunState.FAILED
        assert hurried.message == "the flow run exceeded its timeout of 1s"
        runs = {t.task_id: t for t in hurried.task_runs}
        assert runs["wait_forever"].state is TaskRunState.CANCELLED
        # What ended before the deadline stays SUCCESS: `ready` had ended when
        # wait_forever (its consumer) started, which is what happens unless a loaded
        # machine spends the whole second before `ready` runs (then both are
        # cancelled). The engine's test of the same rule has a fake clock
        # (test_engine_retries_timeouts.py).
        if runs["wait_forever"].attempts:
            assert runs["ready"].state is TaskRunState.SUCCESS
        else:
            assert runs["ready"].state in (TaskRunState.SUCCESS, TaskRunState.CANCELLED)


OUTER = """
from headwater import flow, task
import inner_flows

@task
def count(n: int) -> int:
    return n + 1

@flow
def outer(n: int = 2) -> list:
    return inner_flows.squares(count(n))
"""

INNER = """
from headwater import flow, task

@task
def triple(x: int) -> int:
    return 3 * x

@flow
def squares(n: int) -> list:
    return [triple(i) for i in range(n)]
"""


def test_a_subflow_waits_for_a_worker_that_can_build_its_graph(
    tmp_path: Path, cluster: Cluster
) -> None:
    (tmp_path / "outer_flows.py").write_text(textwrap.dedent(OUTER))
    (tmp_path / "inner_flows.py").write_text(textwrap.dedent(INNER))
    _, address = start_server(cluster, tmp_path / "hw.db")
    # This worker runs outer's tasks but offers no flow 'squares' (it is not in its
    # module's namespace), and cannot run 'triple'.
    start_worker(cluster, address, "outer", module=str(tmp_path / "outer_flows.py"))
    module = load_file(str(tmp_path / "outer_flows.py"))
    try:
        with Client(address) as client:
            run = client.run(module.outer, {"n": 2})
            waiting: list[str] = []

            def subflow_waits() -> bool:
                runs = client.get(run.id, include_task_runs=True).task_runs
                waiting[:] = [t.waiting for t in runs if t.key == "squares" and t.waiting]
                return bool(waiting)

            poll(subflow_waits, "the subflow to wait for a builder")
            assert "waiting for a worker that offers flow 'squares'" in waiting[0]
            start_worker(cluster, address, "inner", module=str(tmp_path / "inner_flows.py"))
            final = client.wait(run.id)
            assert final.state is FlowRunState.SUCCESS, final.message
            assert final.result == [0, 3, 6]
            (node,) = [t for t in final.task_runs if t.key == "squares"]
            assert node.waiting == "" and len(node.child_run_ids) == 1
    finally:
        sys.modules.pop("outer_flows", None)
        sys.modules.pop("inner_flows", None)
