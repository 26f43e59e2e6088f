"""The wire contract: messages survive the wire intact, enums and services are what
the product promises, and buf lint passes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, TypeVar

import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

import headwater
from headwater.v1 import (
    control_plane_pb2,
    control_plane_pb2_grpc,
    graph_pb2,
    payload_pb2,
    payload_pb2_grpc,
    state_pb2,
    worker_pb2,
    worker_pb2_grpc,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
BUF = REPO_ROOT / "node_modules" / ".bin" / "buf"
M = TypeVar("M", bound=Message)


def entries(m: Any) -> dict[str, Any]:
    """An ordered InputMap / InputValueMap as a dict."""
    return {e.key: e.value for e in m.entries}


def imap(entries: dict[str, graph_pb2.Input]) -> graph_pb2.InputMap:
    """An InputMap from a dict, keeping its order."""
    return graph_pb2.InputMap(
        entries=[graph_pb2.InputMapEntry(key=k, value=v) for k, v in entries.items()]
    )


def ivmap(entries: dict[str, worker_pb2.InputValue]) -> worker_pb2.InputValueMap:
    """An InputValueMap from a dict, keeping its order."""
    return worker_pb2.InputValueMap(
        entries=[worker_pb2.InputValueMapEntry(key=k, value=v) for k, v in entries.items()]
    )


def roundtrip(msg: M) -> M:
    """Serialise and parse back through the wire format."""
    data = msg.SerializeToString()
    assert data, "a message with fields set must not serialise to nothing"
    back = type(msg).FromString(data)
    assert back == msg
    return back


def set_field_names(msg: Message) -> set[str]:
    return {field.name for field, _ in msg.ListFields()}


def all_field_names(msg: Message) -> set[str]:
    return {f.name for f in msg.DESCRIPTOR.fields}


def json_payload(value: object) -> payload_pb2.Payload:
    return payload_pb2.Payload(data=json.dumps(value).encode(), metadata={"encoding": "json"})


def dur(seconds: int, nanos: int = 0) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=seconds, nanos=nanos)


def ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=123)


# ---------------------------------------------------------------- FlowGraph


def full_flow_graph() -> graph_pb2.FlowGraph:
    """A FlowGraph with every field of every graph message set."""
    path = [payload_pb2.PathElement(key="rows"), payload_pb2.PathElement(index=-1)]
    inputs = {
        "from_task": graph_pb2.Input(
            task_output=graph_pb2.TaskOutput(task_id="extract", path=path)
        ),
        "const": graph_pb2.Input(constant=json_payload([1, 2, 3])),
        "param": graph_pb2.Input(parameter="n"),
        "nested_list": graph_pb2.Input(
            list=graph_pb2.InputList(
                items=[
                    graph_pb2.Input(parameter="n"),
                    graph_pb2.Input(
                        map=imap(
                            entries={
                                "inner": graph_pb2.Input(
                                    list=graph_pb2.InputList(
                                        items=[graph_pb2.Input(constant=json_payload("x"))]
                                    )
                                ),
                                "ref": graph_pb2.Input(
                                    task_output=graph_pb2.TaskOutput(task_id="extract")
                                ),
                            }
                        )
                    ),
                ],
                tuple=True,
            )
        ),
        "nested_map": graph_pb2.Input(
            map=imap(entries={"a": graph_pb2.Input(constant=json_payload({"k": None}))})
        ),
    }
    transform = graph_pb2.TaskNode(
        id="transform",
        name="transform",
        task_type="etl.transform",
        inputs=inputs,
        wait_for=["extract"],
        case_gates=["extract"],
        retry=graph_pb2.RetryPolicy(
            max_retries=3,
            delay=dur(1, 500_000_000),
            backoff_factor=2.0,
            max_delay=dur(60),
            jitter=0.25,
            non_retryable_errors=["builtins.KeyError", "etl.BadInput"],
        ),
        timeout=dur(30),
        trigger=graph_pb2.TRIGGER_NONE_FAILED,
        cache=graph_pb2.CachePolicy(
            key_source=graph_pb2.CACHE_KEY_SOURCE_FUNCTION, expiry=dur(3600), version="v2"
        ),
        map=graph_pb2.MapSpec(mapped_inputs=["from_task", "param"]),
        tags=["io", "db"],
        required_labels={"gpu": "true", "zone": "eu"},
        resources={"GPU": 1.0, "MEMORY": 8e9},
        version="1.2.3",
        portable=True,
        argument_order=["from_task", "const", "param", "nested_list", "nested_map"],
        code_digest="0123456789abcdef",
        schedule_to_start_timeout=dur(90),
    )
    extract = graph_pb2.TaskNode(id="extract", name="extract", task_type="etl.extract")
    report = graph_pb2.TaskNode(
        id="report",
        name="report",
        task_type="headwater.subflow",
        inputs={"rows": graph_pb2.Input(task_output=graph_pb2.TaskOutput(task_id="transform"))},
        subflow=graph_pb2.SubflowCall(
            flow_name="report", flow_version="3", mapped_parameters=["rows"]
        ),
    )
    return graph_pb2.FlowGraph(
        name="etl",
        version="7",
        parameters=[
            graph_pb2.ParameterSpec(
                name="n",
                default_value=json_payload(5),
                required=False,
                type="int",
                json_schema='{"type":"integer"}',
            ),
            graph_pb2.ParameterSpec(name="source", required=True),
        ],
        tasks=[extract, transform, report],
        result=graph_pb2.Input(
            map=imap(
                entries={
                    "out": graph_pb2.Input(task_output=graph_pb2.TaskOutput(task_id="transform"))
                }
            )
        ),
        reference_task_ids=["transform"],
        description="Extract and transform.",
        value_dependent=True,
        parameters_digest="ab" * 32,
        code_digest="cd" * 32,
        timeout=dur(3600, 500_000_000),
    )


def test_flow_graph_with_every_field_round_trips() -> None:
    graph = full_flow_graph()
    # The fixture really does set every field, so a field added to the contract
    # without a round-trip check makes this test fail.
    assert set_field_names(graph) == all_field_names(graph)
    node = graph.tasks[1]
    # A subflow node cannot be mapped or cached: the two nodes set every field together.
    assert set_field_names(node) | set_field_names(graph.tasks[2]) == all_field_names(node)
    assert set_field_names(graph.tasks[2].subflow) == all_field_names(graph.tasks[2].subflow)
    assert set_field_names(node.retry) == all_field_names(node.retry)
    assert set_field_names(node.cache) == all_field_names(node.cache)
    param_fields = set_field_names(graph.parameters[0]) | set_field_names(graph.parameters[1])
    assert param_fields == all_field_names(graph.parameters[0])
    source_kinds = {i.WhichOneof("source") for i in node.inputs.values()}
    assert source_kinds == {
        f.name for f in graph_pb2.Input.DESCRIPTOR.oneofs_by_name["source"].fields
    }

    back = roundtrip(graph)

    assert back.name == "etl"
    assert back.version == "7"
    assert back.description == "Extract and transform."
    assert list(back.reference_task_ids) == ["transform"]
    assert [t.id for t in back.tasks] == ["extract", "transform", "report"]
    sub = back.tasks[2].subflow
    assert (back.tasks[2].task_type, sub.flow_name, sub.flow_version) == (
        "headwater.subflow",
        "report",
        "3",
    )
    assert list(sub.mapped_parameters) == ["rows"]
    assert back.value_dependent is True
    assert back.parameters_digest == "ab" * 32
    assert back.code_digest == "cd" * 32
    assert (back.parameters[0].type, back.parameters[0].json_schema) == (
        "int",
        '{"type":"integer"}',
    )

    n, source = back.parameters
    assert (n.name, n.required) == ("n", False)
    assert json.loads(n.default_value.data) == 5
    assert n.default_value.metadata["encoding"] == "json"
    assert (source.name, source.required) == ("source", True)
    assert not source.HasField("default_value")

    t = back.tasks[1]
    assert (t.id, t.name, t.task_type) == ("transform", "transform", "etl.transform")
    assert list(t.wait_for) == ["extract"]
    assert t.retry.max_retries == 3
    assert t.retry.delay.ToNanoseconds() == 1_500_000_000
    assert t.retry.backoff_factor == 2.0
    assert t.retry.max_delay.ToSeconds() == 60
    assert t.retry.jitter == 0.25
    assert list(t.retry.non_retryable_errors) == ["builtins.KeyError", "etl.BadInput"]
    assert t.timeout.ToSeconds() == 30
    assert t.trigger == graph_pb2.TRIGGER_NONE_FAILED
    assert t.cache.key_source == graph_pb2.CACHE_KEY_SOURCE_FUNCTION
    assert t.cache.expiry.ToSeconds() == 3600
    assert t.cache.version == "v2"
    assert list(t.map.mapped_inputs) == ["from_task", "param"]
    assert list(t.tags) == ["io", "db"]
    assert dict(t.required_labels) == {"gpu": "true", "zone": "eu"}
    assert dict(t.resources) == {"GPU": 1.0, "MEMORY": 8e9}
    assert t.version == "1.2.3"
    assert t.portable is True
    assert list(t.argument_order) == ["from_task", "const", "param", "nested_list", "nested_map"]
    assert t.code_digest == "0123456789abcdef"

    from_task = t.inputs["from_task"].task_output
    assert from_task.task_id == "extract"
    assert [p.WhichOneof("selector") for p in from_task.path] == ["key", "index"]
    assert (from_task.path[0].key, from_task.path[1].index) == ("rows", -1)
    assert json.loads(t.inputs["const"].constant.data) == [1, 2, 3]
    assert t.inputs["param"].parameter == "n"
    nested = t.inputs["nested_list"].list
    assert nested.tuple is True
    assert nested.items[0].parameter == "n"
    inner_map = entries(nested.items[1].map)
    assert json.loads(inner_map["inner"].list.items[0].constant.data) == "x"
    assert inner_map["ref"].task_output.task_id == "extract"
    assert json.loads(entries(t.inputs["nested_map"].map)["a"].constant.data) == {"k": None}
    assert entries(back.result.map)["out"].task_output.task_id == "transform"


def test_unset_optional_graph_fields_stay_unset_on_the_wire() -> None:
    """Unset retry/timeout/cache/map mean "none" and must stay distinguishable."""
    node = roundtrip(graph_pb2.TaskNode(id="a", task_type="m.a"))
    for name in ("retry", "timeout", "cache", "map"):
        assert not node.HasField(name), name
    assert node.trigger == graph_pb2.TRIGGER_UNSPECIFIED


# ---------------------------------------------------------------- worker protocol


def test_hello_envelope_round_trips() -> None:
    hello = worker_pb2.Hello(
        worker_id="w-1",
        name="worker one",
        protocol_version=1,
        capabilities=["etl.extract", "etl.transform"],
        labels={"gpu": "true", "zone": "eu"},
        slots=4,
        runtime=worker_pb2.RuntimeInfo(
            language="python",
            language_version="3.12.1",
            sdk_version="0.1.0",
            hostname="host-a",
            pid=4242,
        ),
        running=[worker_pb2.FencingToken(task_run_id="tr-9", attempt=2)],
        resources={"GPU": 2.0},
        features=["batch", "graph-builds"],
        code_digests={"etl.extract": "0123456789abcdef"},
        flows=[worker_pb2.FlowOffer(name="etl", code_digest="fedcba9876543210")],
        max_message_bytes=64 << 20,
    )
    assert set_field_names(hello) == all_field_names(hello)
    back = roundtrip(worker_pb2.ConnectRequest(hello=hello))
    assert back.WhichOneof("message") == "hello"
    h = back.hello
    assert h.protocol_version == 1
    assert h.slots == 4
    assert dict(h.labels) == {"gpu": "true", "zone": "eu"}
    assert list(h.capabilities) == ["etl.extract", "etl.transform"]
    assert (h.runtime.language, h.runtime.language_version) == ("python", "3.12.1")
    assert (h.runtime.sdk_version, h.runtime.hostname, h.runtime.pid) == ("0.1.0", "host-a", 4242)
    assert (h.running[0].task_run_id, h.running[0].attempt) == ("tr-9", 2)
    assert dict(h.resources) == {"GPU": 2.0}
    assert list(h.features) == ["batch", "graph-builds"]
    assert dict(h.code_digests) == {"etl.extract": "0123456789abcdef"}
    assert [(f.name, f.code_digest) for f in h.flows] == [("etl", "fedcba9876543210")]


def test_assignment_envelope_round_trips() -> None:
    token = worker_pb2.FencingToken(task_run_id="tr-1", attempt=3)
    value = payload_pb2.Value(inline=json_payload({"rows": [1, 2]}))
    inputs = {
        "x": worker_pb2.InputValue(
            value=value,
            path=[payload_pb2.PathElement(key="rows"), payload_pb2.PathElement(index=0)],
        ),
        "xs": worker_pb2.InputValue(
            list=worker_pb2.InputValueList(items=[worker_pb2.InputValue(value=value)], tuple=True)
        ),
        "kw": worker_pb2.InputValue(map=ivmap(entries={"a": worker_pb2.InputValue(value=value)})),
    }
    assignment = worker_pb2.Assignment(
        token=token,
        flow_run_id="fr-1",
        task_id="transform",
        task_type="etl.transform",
        task_name="transform",
        inputs=inputs,
        argument_order=["x", "xs", "kw"],
        map_index=7,
        deadline=ts(1_700_000_000),
        timeout=dur(30),
        trace_context={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
        result_encoding="json",
        split_result=True,
        cache=graph_pb2.CachePolicy(key_source=graph_pb2.CACHE_KEY_SOURCE_INPUTS, version="1"),
        split_path=[payload_pb2.PathElement(key="rows")],
        result_consumer="task 'resize', argument 'image'",
    )
    assert set_field_names(assignment) == all_field_names(assignment)
    back = roundtrip(worker_pb2.ConnectResponse(assignment=assignment))
    assert back.WhichOneof("message") == "assignment"
    a = back.assignment
    assert (a.token.task_run_id, a.token.attempt) == ("tr-1", 3)
    assert (a.flow_run_id, a.task_id, a.task_type) == ("fr-1", "transform", "etl.transform")
    assert a.map_index == 7
    assert a.deadline == ts(1_700_000_000)
    assert a.timeout.ToSeconds() == 30
    assert a.trace_context["traceparent"].startswith("00-0af7651916cd43dd")
    assert list(a.argument_order) == ["x", "xs", "kw"]
    assert a.split_result is True
    assert a.result_consumer == "task 'resize', argument 'image'"
    x = a.inputs["x"]
    assert x.WhichOneof("kind") == "value"
    assert json.loads(x.value.inline.data) == {"rows": [1, 2]}
    assert [p.WhichOneof("selector") for p in x.path] == ["key", "index"]
    assert a.inputs["xs"].list.tuple is True
    assert a.inputs["xs"].list.items[0].WhichOneof("kind") == "value"
    assert entries(a.inputs["kw"].map)["a"].value == value


def test_heartbeat_and_ack_with_cancel_round_trip() -> None:
    running = [worker_pb2.FencingToken(task_run_id=f"tr-{i}", attempt=1) for i in range(3)]
    beat = roundtrip(
        worker_pb2.ConnectRequest(
            heartbeat=worker_pb2.Heartbeat(used_slots=3, free_slots=1, running=running)
        )
    )
    assert beat.WhichOneof("message") == "heartbeat"
    assert (beat.heartbeat.used_slots, beat.heartbeat.free_slots) == (3, 1)
    assert [t.task_run_id for t in beat.heartbeat.running] == ["tr-0", "tr-1", "tr-2"]

    ack = roundtrip(
        worker_pb2.ConnectResponse(heartbeat_ack=worker_pb2.HeartbeatAck(cancel=running[1:]))
    )
    assert ack.WhichOneof("message") == "heartbeat_ack"
    assert [(t.task_run_id, t.attempt) for t in ack.heartbeat_ack.cancel] == [
        ("tr-1", 1),
        ("tr-2", 1),
    ]


def test_result_and_failure_envelopes_round_trip() -> None:
    token = worker_pb2.FencingToken(task_run_id="tr-1", attempt=2)
    result = roundtrip(
        worker_pb2.ConnectRequest(
            result=worker_pb2.TaskResult(
                token=token,
                result=payload_pb2.Value(inline=json_payload(42)),
                cache_key="k-1",
            )
        )
    )
    assert result.WhichOneof("message") == "result"
    assert result.result.token == token
    assert json.loads(result.result.result.inline.data) == 42
    assert result.result.cache_key == "k-1"

    root = state_pb2.Failure(type="builtins.OSError", message="disk full", language="python")
    failure = state_pb2.Failure(
        type="etl.LoadError",
        message="could not write batch 3",
        stack_trace='Traceback (most recent call last):\n  File "etl.py"...',
        cause=root,
        retryable=True,
        language="python",
        timed_out=True,
    )
    assert set_field_names(failure) == all_field_names(failure)
    back = roundtrip(
        worker_pb2.ConnectRequest(
            failure=worker_pb2.TaskFailure(token=token, failure=failure, timed_out=True)
        )
    )
    assert back.WhichOneof("message") == "failure"
    f = back.failure.failure
    assert back.failure.timed_out is True
    assert (f.type, f.message, f.retryable) == ("etl.LoadError", "could not write batch 3", True)
    assert f.timed_out and not f.cause.timed_out
    assert f.stack_trace.startswith("Traceback")
    assert f.HasField("cause")
    assert (f.cause.type, f.cause.message, f.cause.retryable) == (
        "builtins.OSError",
        "disk full",
        False,
    )
    assert not f.cause.HasField("cause")


def test_envelopes_have_the_promised_message_kinds() -> None:
    request = {
        f.name for f in worker_pb2.ConnectRequest.DESCRIPTOR.oneofs_by_name["message"].fields
    }
    response = {
        f.name for f in worker_pb2.ConnectResponse.DESCRIPTOR.oneofs_by_name["message"].fields
    }
    assert {"hello", "started", "heartbeat", "log", "result", "failure"} <= request
    assert {"welcome", "assignment", "cancel", "heartbeat_ack"} <= response
    # Every field of the envelopes is in the oneof: a message is exactly one kind.
    assert request == {f.name for f in worker_pb2.ConnectRequest.DESCRIPTOR.fields}
    assert response == {f.name for f in worker_pb2.ConnectResponse.DESCRIPTOR.fields}


def test_setting_one_envelope_kind_clears_the_other() -> None:
    msg = worker_pb2.ConnectRequest(hello=worker_pb2.Hello(worker_id="w"))
    msg.heartbeat.used_slots = 1
    back = roundtrip(msg)
    assert back.WhichOneof("message") == "heartbeat"
    assert not back.HasField("hello")


# ---------------------------------------------------------------- payloads


def test_payload_ref_and_value_round_trip() -> None:
    payload = payload_pb2.Payload(data=b"\x80\x05K\x01.", metadata={"encoding": "pickle"})
    assert roundtrip(payload).data == b"\x80\x05K\x01."

    ref = payload_pb2.PayloadRef(
        payload_id="p-1",
        size_bytes=500 * 1024 * 1024,
        metadata={"encoding": "pickle", "codec": "zstd"},
        sha256="ab" * 32,
        location="dask",
        dask_key="transform-abc123",
    )
    assert set_field_names(ref) == all_field_names(ref)
    back_ref = roundtrip(ref)
    assert back_ref.size_bytes == 500 * 1024 * 1024
    assert dict(back_ref.metadata) == {"encoding": "pickle", "codec": "zstd"}
    assert (back_ref.location, back_ref.dask_key) == ("dask", "transform-abc123")

    inline = roundtrip(payload_pb2.Value(inline=json_payload([1, 2])))
    assert inline.WhichOneof("kind") == "inline"
    assert json.loads(inline.inline.data) == [1, 2]

    by_ref = roundtrip(
        payload_pb2.Value(
            ref=ref,
            items=[payload_pb2.Value(inline=json_payload(i)) for i in range(3)],
        )
    )
    assert by_ref.WhichOneof("kind") == "ref"
    assert by_ref.ref.payload_id == "p-1"
    assert [json.loads(v.inline.data) for v in by_ref.items] == [0, 1, 2]


# ---------------------------------------------------------------- states

TASK_STATES = [
    "PENDING",
    "SCHEDULED",
    "RUNNING",
    "RETRYING",
    "SUCCESS",
    "FAILED",
    "TIMED_OUT",
    "CANCELLED",
    "SKIPPED",
    "CACHED",
    "TRIGGER_FAILED",
    "MAPPED",
]
FLOW_STATES = ["PENDING", "SCHEDULED", "RUNNING", "SUCCESS", "FAILED", "CANCELLED"]


def _unprefixed(enum_type: object, prefix: str) -> dict[str, int]:
    names = dict(enum_type.items())  # type: ignore[attr-defined]
    assert names.pop(f"{prefix}UNSPECIFIED") == 0
    assert all(name.startswith(prefix) for name in names)
    return {name.removeprefix(prefix): number for name, number in names.items()}


def test_task_run_states_are_the_promised_ones() -> None:
    proto = _unprefixed(state_pb2.TaskRunState, "TASK_RUN_STATE_")
    assert set(proto) == set(TASK_STATES)
    engine = {s.name: s.value for s in headwater.TaskRunState}
    assert engine == proto


def test_flow_run_states_are_the_promised_ones() -> None:
    proto = _unprefixed(state_pb2.FlowRunState, "FLOW_RUN_STATE_")
    assert set(proto) == set(FLOW_STATES)
    engine = {s.name: s.value for s in headwater.FlowRunState}
    assert engine == proto


def test_triggers_match_the_sdk_trigger_names() -> None:
    proto = _unprefixed(graph_pb2.Trigger, "TRIGGER_")
    assert set(proto) == {t.name for t in headwater.Trigger}
    assert {t.value for t in headwater.Trigger} == {
        "all_successful",
        "all_finished",
        "all_failed",
        "any_successful",
        "any_failed",
        "none_failed",
    }


# ---------------------------------------------------------------- services


def _methods(module: object, service: str) -> dict[str, object]:
    desc = module.DESCRIPTOR.services_by_name[service]  # type: ignore[attr-defined]
    assert desc.full_name == f"headwater.v1.{service}"
    return dict(desc.methods_by_name)


def _assert_own_request_response(name: str, method: object) -> None:
    assert method.input_type.name == f"{name}Request", name  # type: ignore[attr-defined]
    assert method.output_type.name == f"{name}Response", name  # type: ignore[attr-defined]


def test_control_plane_service_rpcs() -> None:
    methods = _methods(control_plane_pb2, "ControlPlaneService")
    expected = {
        "RegisterFlow",
        "CreateFlowRun",
        "GetFlowRun",
        "ListFlowRuns",
        "WatchFlowRun",
        "CancelFlowRun",
        "GetTaskRunResult",
        "CreateSchedule",
        "ListSchedules",
        "DeleteSchedule",
        "PauseSchedule",
        "ResumeSchedule",
    }
    assert expected <= set(methods)
    for name, method in methods.items():
        _assert_own_request_response(name, method)
        assert not method.client_streaming, name  # type: ignore[attr-defined]
        streams = name in ("WatchFlowRun", "WatchTaskRunLogs")
        assert method.server_streaming == streams, name  # type: ignore[attr-defined]
    assert (
        control_plane_pb2.RegisterFlowRequest.DESCRIPTOR.fields_by_name["graph"].message_type
        is graph_pb2.FlowGraph.DESCRIPTOR
    )
    for name in expected:
        assert hasattr(control_plane_pb2_grpc.ControlPlaneServiceServicer, name), name
    assert hasattr(control_plane_pb2_grpc, "add_ControlPlaneServiceServicer_to_server")


def test_worker_gateway_connect_is_bidi_streaming() -> None:
    methods = _methods(worker_pb2, "WorkerGatewayService")
    connect = methods["Connect"]
    assert connect.client_streaming and connect.server_streaming  # type: ignore[attr-defined]
    assert connect.input_type is worker_pb2.ConnectRequest.DESCRIPTOR  # type: ignore[attr-defined]
    assert connect.output_type is worker_pb2.ConnectResponse.DESCRIPTOR  # type: ignore[attr-defined]
    assert hasattr(worker_pb2_grpc.WorkerGatewayServiceServicer, "Connect")


def test_payload_service_streams_chunks() -> None:
    methods = _methods(payload_pb2, "PayloadService")
    assert {"UploadPayload", "DownloadPayload"} <= set(methods)
    upload, download = methods["UploadPayload"], methods["DownloadPayload"]
    _assert_own_request_response("UploadPayload", upload)
    _assert_own_request_response("DownloadPayload", download)
    assert upload.client_streaming and not upload.server_streaming  # type: ignore[attr-defined]
    assert download.server_streaming and not download.client_streaming  # type: ignore[attr-defined]
    assert hasattr(payload_pb2_grpc.PayloadServiceServicer, "UploadPayload")
    assert hasattr(payload_pb2_grpc.PayloadServiceServicer, "DownloadPayload")


# ---------------------------------------------------------------- buf lint


def test_buf_lint_passes() -> None:
    buf = str(BUF) if BUF.exists() else shutil.which("buf")
    if buf is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"buf is required in CI but {BUF} is missing; run `npm ci`")
        pytest.skip(f"buf not installed ({BUF} missing); run `npm ci` or `make setup`")
    proc = subprocess.run(
        [buf, "lint"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"buf lint failed:\n{proc.stdout}{proc.stderr}"


def test_dict_key_order_survives_the_contract() -> None:
    from headwater import flow, task
    from headwater.wire import graph_from_proto

    @task
    def one() -> int:
        return 1

    @flow
    def ordered() -> dict[str, int]:
        return {"e": one(), "c": one(), "a": one()}

    back = graph_from_proto(graph_pb2.FlowGraph.FromString(ordered.compile().SerializeToString()))
    assert [key for key, _ in back.result.entries] == ["e", "c", "a"]
