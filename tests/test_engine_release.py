"""FlowRunEngine.release: a finished run's objects are freed by reference counting
alone. The server freezes a large run out of the cycle collector's sight
(server/_gc.py), so whatever a released run still kept in reference cycles would stay
in memory for good."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from engine_helpers import Driver, flow, task

from headwater.wire import Const
from headwater_runtime.engine import TaskRunRecord
from headwater_runtime.engine._nodes import Node


@pytest.fixture
def no_collector() -> Iterator[None]:
    """Only reference counting frees anything while the test runs."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _alive(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if type(o) is kind)


def _graph() -> object:
    """A source, a map over a constant (mapped children), a map over the source's
    result, a reduce: every kind of link between nodes and task runs."""
    return flow(
        task("src"),
        task("each", inputs={"x": Const(list(range(20)))}, mapped=["x"]),
        task("again", "src", mapped=["src"]),
        task("total", "each", "again"),
    )


@pytest.mark.parametrize("ending", ["success", "cancel"])
def test_a_released_engine_leaves_no_node_or_task_run_behind(
    no_collector: None, ending: str
) -> None:
    nodes, records = _alive(Node), _alive(TaskRunRecord)
    driver = Driver(_graph(), register=False)
    driver.succeed("src", [1, 2, 3])
    if ending == "success":
        for key in [k for k, r in driver.engine.runs.items() if r.dispatched]:
            driver.succeed(key, 1)
        for key in [k for k, r in driver.engine.runs.items() if r.dispatched]:
            driver.succeed(key, 1)
    else:
        driver.cancel()
    assert driver.engine.state.name == ("SUCCESS" if ending == "success" else "CANCELLED")
    assert _alive(TaskRunRecord) - records > 20  # the mapped children exist
    engine = weakref.ref(driver.engine)
    driver.engine.release()
    del driver
    assert engine() is None
    assert (_alive(Node), _alive(TaskRunRecord)) == (nodes, records)


def test_without_release_the_same_run_is_kept_by_its_cycles(no_collector: None) -> None:
    """What release() is for: the test above would pass without it otherwise."""
    records = _alive(TaskRunRecord)
    driver = Driver(_graph(), register=False)
    driver.cancel()
    engine = weakref.ref(driver.engine)
    del driver
    assert engine() is not None or _alive(TaskRunRecord) > records
