"""remote_task: tasks implemented in another language inside Python-authored flows."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from headwater import (
    FlowDefinitionError,
    ParameterError,
    RemoteTask,
    flow,
    remote_task,
    task,
    unmapped,
)
from headwater._worker import collect_tasks
from headwater.v1 import graph_pb2, payload_pb2
from headwater.wire import FlowRunState, encode, json_consumers
from headwater_runtime.engine import TaskSucceeded
from headwater_runtime.server._runs import RunManager, split_task_run_id
from headwater_runtime.store import SQLiteStore

resize = remote_task(
    "images.resize",
    parameters=["image", "width"],
    retries=2,
    retry_delay=0.5,
    no_retry_on=["TypeError"],
    timeout=5,
    labels={"runtime": "node"},
    cache=True,
    cache_version="v2",
)
describe = remote_task("images.describe", name="describe")


@task
def list_images(n: int) -> list[str]:
    return [f"img-{i}" for i in range(n)]


@task
def pair(x: Any) -> tuple[Any, Any]:
    return (x, x)


@task
def count(values: list[Any]) -> int:
    return len(values)


@flow
def thumbnails(n: int = 2, width: int = 64) -> int:
    small = resize.map(list_images(n), width=unmapped(width))
    described = describe(summary=small, at=datetime(2024, 1, 1, tzinfo=UTC))
    return count(small, wait_for=[described])


def nodes(f: Any) -> dict[str, graph_pb2.TaskNode]:
    return {n.id: n for n in f.compile().tasks}


def test_a_remote_task_compiles_like_any_task_with_json_inputs() -> None:
    compiled = nodes(thumbnails)
    node = compiled["images.resize"]
    assert (node.task_type, node.portable) == ("images.resize", True)
    assert list(node.argument_order) == ["image", "width"]
    assert list(node.map.mapped_inputs) == ["image"]
    assert node.inputs["width"].parameter == "width"
    assert dict(node.required_labels) == {"runtime": "node"}
    assert node.retry.max_retries == 2 and list(node.retry.non_retryable_errors) == ["TypeError"]
    assert node.timeout.seconds == 5
    assert node.cache.key_source == graph_pb2.CACHE_KEY_SOURCE_INPUTS
    assert node.cache.version == "v2"
    at = compiled["describe"].inputs["at"].constant
    assert at.metadata["encoding"] == "json"
    assert json.loads(at.data) == {"$datetime": "2024-01-01T00:00:00Z"}
    assert list(compiled["count"].wait_for) == ["describe"]


def test_positional_arguments_need_declared_parameters() -> None:
    @flow
    def positional() -> Any:
        return resize("img", 32)  # declared: image, width

    node = nodes(positional)["images.resize"]
    assert set(node.inputs) == {"image", "width"}

    @flow
    def undeclared() -> Any:
        return describe("img")

    with pytest.raises(FlowDefinitionError, match=r"'describe'.*keyword arguments"):
        undeclared.graph()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [((1, 2), "a tuple cannot be json"), (datetime(2024, 1, 1), "replace(tzinfo=")],
)
def test_a_constant_that_cannot_be_json_fails_compilation(value: Any, fragment: str) -> None:
    @flow
    def bad() -> Any:
        return describe(image=value)

    with pytest.raises(FlowDefinitionError) as info:
        bad.graph()
    message = str(info.value)
    assert "test_remote_task.py:" in message  # the flow and the line first, then:
    assert message.split(": ", 1)[1].startswith("task 'describe', argument 'image': ")
    assert fragment in message


def test_a_parameter_default_read_as_json_must_be_json() -> None:
    @flow
    def defaults(when: Any = datetime(2024, 1, 1)) -> Any:
        return describe(at=when)

    with pytest.raises(TypeError, match=r"parameter 'when'.*'describe'.*replace\(tzinfo="):
        defaults.compile()


def test_flows_with_remote_tasks_need_a_server() -> None:
    with pytest.raises(FlowDefinitionError, match=r"'images.resize'.*--server HOST:PORT"):
        thumbnails(n=1)
    with pytest.raises(FlowDefinitionError, match="call it inside a @flow"):
        resize(image="x", width=1)


def test_with_options_keeps_it_remote_and_workers_do_not_offer_it() -> None:
    patient = resize.with_options(retries=5, name="patient")
    assert isinstance(patient, RemoteTask)
    assert (patient.task_type, patient.retry.max_retries, patient.name) == (
        "images.resize",
        5,
        "patient",
    )
    module = type("M", (), {})()
    module.__dict__.update({"resize": resize, "list_images": list_images})
    module.__name__ = "m"  # type: ignore[attr-defined]
    offered = collect_tasks([module])  # type: ignore[list-item]
    assert "images.resize" not in offered and list_images.task_type in offered


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"task_type": "has space"}, "without spaces"),
        ({"task_type": "t", "parameters": "image"}, "list of argument names"),
        ({"task_type": "t", "no_retry_on": [ValueError]}, "error type names"),
    ],
)
def test_bad_declarations_are_clear(kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(FlowDefinitionError, match=fragment):
        remote_task(**kwargs)


# --------------------------------------------------------------------- on the server


@flow
def crossing(when: Any = None) -> Any:
    return describe(images=pair(list_images(1)), at=when)


def value(obj: Any, portable: bool = False) -> payload_pb2.Value:
    encoded = encode(obj, portable=portable)
    return payload_pb2.Value(
        inline=payload_pb2.Payload(data=encoded.data, metadata=encoded.metadata)
    )


class _Clock:
    def now(self) -> float:
        return 1_000.0


class _Dispatch:
    def __init__(self) -> None:
        self.submitted: list[Any] = []

    def submit(self, pending: Any) -> None:
        self.submitted.append(pending)

    def submit_many(self, flow_run_id: str, by_type: dict[str, list[Any]]) -> None:
        for pendings in by_type.values():
            self.submitted.extend(pendings)

    def submit_queued(self, queued: Any) -> None:
        self.submit_many(queued.flow_run_id, queued.by_type)

    def cancel(self, *args: Any) -> None:
        pass

    def cancel_many(self, *args: Any, **options: Any) -> None:
        pass


def test_the_server_asks_producers_of_remote_inputs_for_json(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "hw.db")
    try:
        dispatch = _Dispatch()
        manager = RunManager(store, dispatch, _Clock())
        manager.register_flow(crossing.compile())
        when = datetime(2024, 1, 1, tzinfo=UTC)
        manager.create_run("crossing", "", {"when": value(when, portable=True)})
        manager.flush()
        (first,) = dispatch.submitted
        assert first.assignment.task_name == "list_images"
        assert (first.assignment.result_encoding, first.assignment.result_consumer) == ("", "")
        run_id, key = split_task_run_id(first.assignment.token.task_run_id)
        manager.handle(run_id, TaskSucceeded(key, 1, value(["img-0"])))
        manager.flush()
        second = dispatch.submitted[-1].assignment
        assert second.task_name == "pair"
        assert (second.result_encoding, second.result_consumer) == (
            "json",
            "task 'describe', argument 'images'",
        )
        readers = json_consumers(manager.graph("crossing")[1])
        assert readers.producers == {"pair": ("describe", "images")}
        assert readers.params == {"when": ("describe", "at")}
        with pytest.raises(ParameterError) as info:
            manager.create_run("crossing", "", {"when": value(datetime(2024, 1, 1))})
        assert str(info.value).startswith(
            "task 'describe', argument 'at': parameter 'when' is encoded as pickle"
        )
    finally:
        store.close()


cached_stats = remote_task("text.stats", name="cached_stats", cache=True)


@flow
def cached() -> Any:
    return cached_stats(text="same input")


def test_a_cached_remote_task_is_not_dispatched_again_for_the_same_inputs(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(tmp_path / "hw.db")
    try:
        dispatch = _Dispatch()
        manager = RunManager(store, dispatch, _Clock())
        manager.register_flow(cached.compile())
        first, _ = manager.create_run("cached", "", {})
        manager.flush()
        (pending,) = dispatch.submitted
        assert pending.assignment.task_type == "text.stats"
        run_id, key = split_task_run_id(pending.assignment.token.task_run_id)
        manager.handle(run_id, TaskSucceeded(key, 1, value({"words": 2})))
        manager.flush()
        second, _ = manager.create_run("cached", "", {})
        manager.flush()
        assert len(dispatch.submitted) == 1  # served from the cache
        for row in (first, second):
            assert store.get_flow_run(row.id).state == FlowRunState.SUCCESS.value
    finally:
        store.close()
