"""Child flow runs in the server's run manager, without a network: a subflow node's
start is handed over after the commit, the child's end is the node's outcome in the
same batch, a parent's ended attempt cancels its children, and a restart neither loses
nor doubles a child (docs/worker-protocol.md §18). On both stores."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_run_manager import FUNCTIONS, Clock, FakeDispatch, drain, value_of

from headwater import flow, task
from headwater.wire import FlowRunState, TaskRunState, decode_value
from headwater_runtime.engine import TaskStarted
from headwater_runtime.server._queries import flow_result
from headwater_runtime.server._runs import NotRunning, RunManager, SubflowStart
from headwater_runtime.server._values import SERVER_VALUES, Composite, Selected
from headwater_runtime.server._values import to_result_value as stored
from headwater_runtime.store import Store, open_store


@task
def inc(x: int) -> int:
    return x + 1


FUNCTIONS[inc.task_type] = inc.fn  # what the in-test worker of test_run_manager runs


@flow
def child(x: int) -> int:
    return inc(x)


@flow
def parent(a: int = 1) -> int:
    return inc(child.with_options(timeout=30)(inc(a)))


@pytest.fixture
def store(db: str) -> Any:
    s = open_store(db)  # SQLite and PostgreSQL
    yield s
    s.close()


def setup(store: Store) -> tuple[RunManager, FakeDispatch, list[SubflowStart]]:
    dispatch = FakeDispatch()
    manager = RunManager(store, dispatch, Clock())
    starts: list[SubflowStart] = []
    manager.start_subflow = starts.append
    return manager, dispatch, starts


def start_child(manager: RunManager, start: SubflowStart) -> str:
    """What the server core does with a SubflowStart: create the child, mark the
    node's attempt started."""
    row, created = manager.create_run(
        start.flow_name,
        start.flow_version,
        start.parameters,
        start.idempotency_key,
        parent=(start.parent_id, start.key, start.attempt),
    )
    assert created
    manager.handle(start.parent_id, TaskStarted(start.key, start.attempt))
    return row.id


def registered(manager: RunManager) -> None:
    version, _ = manager.register_flow(child.compile())
    message = parent.compile()
    (node,) = [t for t in message.tasks if t.HasField("subflow")]
    node.subflow.flow_version = version
    manager.register_flow(message)


def test_the_child_ends_and_the_parent_goes_on_in_the_same_batch(store: Store) -> None:
    manager, dispatch, starts = setup(store)
    registered(manager)
    row, _ = manager.create_run("parent", "", {"a": value_of(1)})
    drain(manager, dispatch)  # runs inc (a + 1), then hands the subflow node over
    (start,) = starts
    assert (start.parent_id, start.key, start.attempt, start.flow_version) == (
        row.id,
        "child",
        1,
        "1",
    )
    assert decode_value(start.parameters["x"]) == 2
    child_id = start_child(manager, start)
    manager.flush()
    assert store.get_flow_run(child_id).parent_flow_run_id == row.id
    drain(manager, dispatch)  # the child's inc, then the parent's last inc
    assert FlowRunState(store.get_flow_run(child_id).state) is FlowRunState.SUCCESS
    final = store.get_flow_run(row.id)
    assert FlowRunState(final.state) is FlowRunState.SUCCESS
    assert decode_value(flow_result(store, final)) == 4
    (linked,) = store.child_flow_runs(row.id)
    assert (linked.id, linked.parent_task_key, linked.parent_attempt) == (child_id, "child", 1)


def test_cancelling_the_parent_cancels_the_child_even_after_a_restart(
    store: Store,
) -> None:
    manager, dispatch, starts = setup(store)
    registered(manager)
    row, _ = manager.create_run("parent", "", {})
    drain(manager, dispatch)
    child_id = start_child(manager, starts.pop())
    manager.flush()
    assert dispatch.submitted  # the child's task waits for a worker

    # The server dies; a new one recovers both runs and starts the node again.
    again, _, starts2 = setup(store)
    again.recover()
    again.flush()
    (restart,) = starts2
    assert restart.idempotency_key == f"subflow:{row.id}/child#1"  # finds the same child
    again.cancel(row.id, "enough")
    again.flush()
    assert FlowRunState(store.get_flow_run(row.id).state) is FlowRunState.CANCELLED
    cancelled = store.get_flow_run(child_id)
    assert FlowRunState(cancelled.state) is FlowRunState.CANCELLED
    assert "the parent task run 'child' ended CANCELLED" in cancelled.message
    states = {t.key: TaskRunState(t.state) for t in store.task_runs(child_id)}
    assert states == {"inc": TaskRunState.CANCELLED}


def test_a_child_can_be_started_only_by_a_running_attempt(store: Store) -> None:
    manager, dispatch, _ = setup(store)
    registered(manager)
    row, _ = manager.create_run("parent", "", {})
    manager.flush()
    assert manager.check_parent(f"{row.id}/inc", 1) == (row.id, "inc", 1)
    with pytest.raises(NotRunning, match=r"attempt 2 of task run '.*/inc' is not running"):
        manager.check_parent(f"{row.id}/inc", 2)
    drain(manager, dispatch)  # inc is over
    with pytest.raises(NotRunning, match=r"attempt 1 of task run '.*/inc' is not running"):
        manager.check_parent(f"{row.id}/inc", 1)
    with pytest.raises(NotRunning, match=r"malformed task run id"):
        manager.check_parent("no-slash", 1)


@task
def upto(n: int) -> list[int]:
    return list(range(n))


FUNCTIONS[upto.task_type] = upto.fn


@flow
def listed(n: int) -> list[int]:
    return upto(n)


@flow
def over_listed(n: int = 2) -> list[int]:
    return inc.map(listed(n))


def test_a_child_whose_result_the_parent_maps_over_splits_it_also_after_a_restart(
    store: Store,
) -> None:
    """The server maps over a value's elements without decoding it: when a parent maps
    over a subflow's result, the child's run has the task its result comes from split
    by its worker, also when a restart replays the child before its parent is live."""
    manager, dispatch, starts = setup(store)
    version, _ = manager.register_flow(listed.compile())
    message = over_listed.compile()
    (node,) = [t for t in message.tasks if t.HasField("subflow")]
    node.subflow.flow_version = version
    manager.register_flow(message)
    row, _ = manager.create_run("over_listed", "", {"n": value_of(2)})
    drain(manager, dispatch)
    child_id = start_child(manager, starts.pop())
    manager.flush()
    (producer,) = dispatch.submitted
    assert producer.assignment.task_type == upto.task_type
    assert producer.assignment.split_result

    fresh = RunManager(store, FakeDispatch(), Clock())  # the server died
    assert fresh.rebuild(store.get_flow_run(child_id)).split_nodes == {"upto": ()}
    drain(manager, dispatch)  # upto, then the parent maps over the child's two elements
    final = store.get_flow_run(row.id)
    assert FlowRunState(final.state) is FlowRunState.SUCCESS, final.message
    assert decode_value(flow_result(store, final)) == [1, 2]


@flow
def failing_parent() -> int:
    return child(1)


def test_a_failed_child_says_why_in_the_parent(store: Store) -> None:
    """The node's failure names the child's first failed task and has its failure as
    cause, so the parent says why without opening the child run (as embedded)."""
    manager, dispatch, starts = setup(store)
    version, _ = manager.register_flow(child.compile())
    message = failing_parent.compile()
    (node,) = message.tasks
    node.subflow.flow_version = version
    manager.register_flow(message)
    row, _ = manager.create_run("failing_parent", "", {})
    manager.flush()
    start_child(manager, starts.pop())
    drain(manager, dispatch, fail_first={"inc"})  # the child's only task fails
    assert FlowRunState(store.get_flow_run(row.id).state) is FlowRunState.FAILED
    last = store.task_run_history(row.id, "child")[-1]
    assert TaskRunState(last.state) is TaskRunState.FAILED
    assert last.message.endswith("ended FAILED: inc: FAILED (OSError: flaky)"), last.message
    failure = json.loads(last.failure)  # (the projection's form)
    assert (failure["type"], failure["cause"]["type"]) == (
        "headwater.SubflowFailed",
        "builtins.OSError",
    )


def test_the_server_maps_over_the_elements_of_a_list_but_not_of_a_dict_or_a_part() -> None:
    """A value's items are its elements only for a split result or an assembled list;
    an assembled dict's items are its values, and a part its consumer selects holds
    the value it is selected from: neither can be mapped over without decoding."""
    element = value_of(1)
    assert SERVER_VALUES.length(stored(Composite("list", (element, element)))) == 2
    assert SERVER_VALUES.length(stored(Composite("list", ()))) == 0
    assert SERVER_VALUES.length(stored(Composite("dict", (element,), ("a",)))) is None
    assert SERVER_VALUES.length(stored(Selected(element, ("rows",)))) is None
