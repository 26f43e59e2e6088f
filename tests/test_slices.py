"""Large requests are decoded off the event loop, a slice at a time: the slices merge
into exactly the message a one-call decode gives (server/_slices.py)."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st
from test_run_manager import value_of

from headwater.v1 import control_plane_pb2 as cp
from headwater.v1 import graph_pb2, worker_pb2
from headwater_runtime.server._slices import parse_in_slices, serialize_in_slices, slices

pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")


def _merged(cls: Any, data: bytes, size: int) -> Any:
    message = cls()
    for part in slices(cls.DESCRIPTOR, data, size):
        assert part  # every slice holds something
        message.MergeFromString(part)
    return message


@st.composite
def register_requests(draw: st.DrawFn) -> cp.RegisterFlowRequest:
    request = cp.RegisterFlowRequest()
    graph = request.graph
    graph.name = draw(st.text(max_size=8))
    graph.version = draw(st.text(max_size=4))
    for i in range(draw(st.integers(0, 40))):
        node = graph.tasks.add(id=f"t{i}", task_type=draw(st.sampled_from(["a", "b.c"])))
        if i and draw(st.booleans()):
            node.wait_for.append(f"t{i - 1}")
        if draw(st.booleans()):
            node.inputs["x"].task_output.task_id = f"t{max(0, i - 1)}"
            node.inputs["y"].list.items.add().parameter = "p"
        if draw(st.booleans()):
            node.retry.max_retries = draw(st.integers(0, 5))
            node.timeout.seconds = draw(st.integers(0, 100))
    if draw(st.booleans()):
        graph.result.task_output.task_id = "t0"
    graph.description = draw(st.text(max_size=20))  # after the tasks: order matters
    return request


@settings(derandomize=True, max_examples=200, deadline=None)
@given(request=register_requests(), size=st.sampled_from([1, 7, 64, 1000]))
def test_slices_merge_into_the_message(request: cp.RegisterFlowRequest, size: int) -> None:
    data = request.SerializeToString()
    assert _merged(cp.RegisterFlowRequest, data, size) == cp.RegisterFlowRequest.FromString(data)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(request=register_requests(), size=st.sampled_from([1, 3, 1000]), extra=st.booleans())
def test_a_graph_encoded_in_pieces_is_its_deterministic_encoding_byte_for_byte(
    request: cp.RegisterFlowRequest, size: int, extra: bool
) -> None:
    """The stored form of a large graph and its digest (RunManager.check_flow) come
    from ``serialize_in_slices``: they must be what one deterministic call gives."""
    graph = request.graph
    if extra:  # the fields after the tasks, set before the fields ahead of them
        graph.reference_task_ids.append("t0")
        graph.value_dependent = True
        graph.parameters_digest = "d"
        graph.parameters.add(name="n", required=True)
    expected = graph.SerializeToString(deterministic=True)
    assert serialize_in_slices(graph, "tasks", size) == expected


def test_a_graph_with_unknown_fields_of_its_own_is_encoded_whole() -> None:
    """Unknown fields sit at the end of an encoding: one call keeps them there."""
    graph = cp.RegisterFlowRequest().graph
    graph.tasks.add(id="a", task_type="m")
    graph.name = "g"
    unknown = graph_pb2.FlowGraph.FromString(graph.SerializeToString() + b"\xa0\x06\x01")
    pieces = serialize_in_slices(unknown, "tasks", 1)
    assert pieces == unknown.SerializeToString(deterministic=True)
    assert pieces.endswith(b"\xa0\x06\x01")


def test_a_100k_task_graph_is_decoded_in_slices_into_the_same_message() -> None:
    request = cp.RegisterFlowRequest()
    for i in range(100_000):
        request.graph.tasks.add(id=f"t{i}", task_type="noop")
    request.graph.name = "big"
    data = request.SerializeToString()
    parts = list(slices(cp.RegisterFlowRequest.DESCRIPTOR, data))
    assert len(parts) > 40 and max(map(len, parts)) < 64 * 1024  # the graph was cut
    assert parse_in_slices(cp.RegisterFlowRequest, data) == request


def test_worker_results_with_many_elements_and_maps_slice_too() -> None:
    message = worker_pb2.ConnectRequest()
    message.result.result.CopyFrom(value_of(list(range(5_000)), split=True))
    message.result.token.task_run_id = "r/t"
    data = message.SerializeToString()
    assert _merged(worker_pb2.ConnectRequest, data, 500) == message
    create = cp.CreateFlowRunRequest(flow_name="f")
    for i in range(200):
        create.parameters[f"p{i}"].CopyFrom(value_of("x" * 300))
    data = create.SerializeToString()
    assert _merged(cp.CreateFlowRunRequest, data, 1000) == create


@pytest.mark.parametrize(
    "data",
    [b"\x0a\x7f\x01", b"\xff" * 5, b"\x0a\x02\xff\xfe", b"\x0a\x05\x22\x03\x0a\x01"],
)
def test_bytes_that_are_not_the_message_fail_as_a_whole_decode_does(data: bytes) -> None:
    with pytest.raises(Exception) as sliced:
        parse_in_slices(cp.RegisterFlowRequest, data)
    with pytest.raises(Exception) as whole:
        cp.RegisterFlowRequest.FromString(data)
    assert type(sliced.value) is type(whole.value)


def test_a_graph_nested_deeper_than_protobuf_decodes_is_refused_in_slices_too() -> None:
    request = cp.RegisterFlowRequest()
    nested = request.graph.tasks.add(id="a", task_type="m").inputs["x"]
    for _ in range(60):
        nested = nested.list.items.add()
    nested.parameter = "p"
    data = request.SerializeToString()
    # Newer protobuf says "Depth"; the oldest supported (4.25) "Error parsing message".
    with pytest.raises(DecodeError):
        parse_in_slices(cp.RegisterFlowRequest, data)
