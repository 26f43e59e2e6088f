"""The highest ``max_nesting`` a server takes (``MAX_NESTING_CEILING``, docs/limits.md).

Protobuf decoders refuse messages nested over 100 levels. A server builds messages
around what ``max_nesting`` lets in: a flow run's result assembles graph inputs (lists
and dicts up to the limit) around workers' values (elements up to the limit), and an
assignment carries an argument's dicts (three message levels each) around the values.
These tests build the deepest of them at the ceiling, with the server's own code, and
decode them as a client or worker does: at the ceiling every one decodes, one level
above it one does not (so the ceiling is the highest that works).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf.message import DecodeError, Message

from headwater.v1 import control_plane_pb2 as cp
from headwater.v1 import graph_pb2, payload_pb2, run_pb2, worker_pb2
from headwater.wire import ENCODING_KEY, LIST, MAX_NESTING_CEILING, LimitExceeded, Limits
from headwater_runtime.server._limits import check_graph, check_value
from headwater_runtime.server._values import Composite, Selected, to_input_value, to_result_value


def deep_value(depth: int) -> payload_pb2.Value:
    """A value nesting elements ``depth`` levels (itself level 1), in a structural
    encoding, so that assignments keep its elements too."""
    value = payload_pb2.Value(
        inline=payload_pb2.Payload(data=b"1", metadata={ENCODING_KEY: "json"})
    )
    for _ in range(depth - 1):
        value = payload_pb2.Value(
            inline=payload_pb2.Payload(metadata={ENCODING_KEY: LIST}), items=[value]
        )
    return value


def deep_input(depth: int) -> graph_pb2.Input:
    """A graph input nesting dicts around a task's output, ``depth`` levels in all."""
    source = graph_pb2.Input(task_output=graph_pb2.TaskOutput(task_id="m"))
    for _ in range(depth - 1):
        source = graph_pb2.Input(
            map=graph_pb2.InputMap(entries=[graph_pb2.InputMapEntry(key="k", value=source)])
        )
    return source


def deep_handle(depth: int) -> Any:
    """What the engine makes of ``deep_input(depth)`` when task ``m`` is mapped, its
    children returned ``deep_value(depth)`` and the output is selected by a key: dicts
    around a selected list of the deepest values."""
    handle: Any = Selected(Composite("list", (deep_value(depth),)), ("rows",))
    for _ in range(depth - 1):
        handle = Composite("dict", (handle,), ("k",))
    return handle


def messages(depth: int) -> dict[str, Callable[[], Message]]:
    """Every message carrying such values, each made by a function (building one may
    already fail in protobuf: the server could not send it either)."""

    def flow_run() -> run_pb2.FlowRun:
        return run_pb2.FlowRun(
            id="r", result=to_result_value(deep_handle(depth)), parameters={"p": deep_value(depth)}
        )

    def task_run() -> run_pb2.TaskRun:
        return run_pb2.TaskRun(id="r/t", task_id="t")

    def assignment() -> worker_pb2.Assignment:
        msg = worker_pb2.Assignment(task_id="t")
        msg.inputs["x"].CopyFrom(to_input_value(deep_handle(depth), elements=False))
        return msg

    def batch() -> worker_pb2.ConnectResponse:
        msg = worker_pb2.ConnectResponse()
        msg.batch.messages.add().assignment.CopyFrom(assignment())
        return msg

    def register() -> cp.RegisterFlowRequest:
        graph = graph_pb2.FlowGraph(name="deep", result=deep_input(depth))
        graph.tasks.add(id="m", task_type="t.m")
        graph.tasks.add(id="t", task_type="t.t").inputs["x"].CopyFrom(deep_input(depth))
        return cp.RegisterFlowRequest(graph=graph)

    return {
        "RegisterFlowRequest": register,
        "GetFlowRunResponse": lambda: cp.GetFlowRunResponse(
            flow_run=flow_run(), task_runs=[task_run()]
        ),
        "WatchFlowRunResponse": lambda: cp.WatchFlowRunResponse(
            flow_run=flow_run(), task_run=task_run()
        ),
        "ListFlowRunsResponse": lambda: cp.ListFlowRunsResponse(flow_runs=[flow_run()]),
        "GetFlowRunResultResponse": lambda: cp.GetFlowRunResultResponse(
            result=to_result_value(deep_handle(depth))
        ),
        "GetTaskRunResultResponse": lambda: cp.GetTaskRunResultResponse(
            result=to_result_value(deep_handle(depth).items[0] if depth > 1 else deep_value(1))
        ),
        "ConnectResponse(assignment)": lambda: worker_pb2.ConnectResponse(assignment=assignment()),
        "ConnectResponse(batch)": batch,
    }


def undecodable(depth: int) -> list[str]:
    """The messages built around values ``depth`` deep that protobuf cannot decode."""
    failed = []
    for name, make in messages(depth).items():
        try:
            msg = make()
            type(msg).FromString(msg.SerializeToString())
        except DecodeError:
            failed.append(name)
    return failed


def test_the_shapes_are_the_deepest_the_checks_let_in() -> None:
    limits = Limits(max_nesting=MAX_NESTING_CEILING)
    assert Limits().max_nesting == MAX_NESTING_CEILING
    check_value(deep_value(MAX_NESTING_CEILING), limits, "result")
    with pytest.raises(LimitExceeded):
        check_value(deep_value(MAX_NESTING_CEILING + 1), limits, "result")
    graph = messages(MAX_NESTING_CEILING)["RegisterFlowRequest"]()
    assert isinstance(graph, cp.RegisterFlowRequest)
    check_graph(graph.graph, limits)
    graph.graph.tasks[1].inputs["x"].CopyFrom(deep_input(MAX_NESTING_CEILING + 1))
    with pytest.raises(LimitExceeded):
        check_graph(graph.graph, limits)


def test_at_the_ceiling_every_message_around_the_deepest_values_decodes() -> None:
    assert undecodable(MAX_NESTING_CEILING) == []


def test_one_level_over_the_ceiling_an_assignment_no_longer_decodes() -> None:
    """The ceiling is the highest that works: one more, and a batched assignment of
    the deepest values is one no worker can decode."""
    assert undecodable(MAX_NESTING_CEILING + 1) == ["ConnectResponse(batch)"]
