"""Bounded, validated input: every size a peer can state is checked against the
server's limits (docs/limits.md), over real gRPC channels to an in-process server.

A request over a limit gets RESOURCE_EXHAUSTED naming the limit and its value; a
malformed one INVALID_ARGUMENT; a worker's result over a limit fails its task (the
server goes on). Nothing refused is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import __version__ as protobuf_version
from test_run_manager import FUNCTIONS, numbers, value_of
from test_server_protocol import proto_pipeline

from headwater import task
from headwater.v1 import control_plane_pb2 as cp
from headwater.v1 import (
    control_plane_pb2_grpc,
    graph_pb2,
    payload_pb2,
    run_pb2,
    worker_pb2,
    worker_pb2_grpc,
)
from headwater.wire import (
    LENGTH_KEY,
    LIMIT_SPECS,
    MAX_NESTING_CEILING,
    FlowRunState,
    FromTask,
    GraphError,
    GraphSpec,
    Limits,
    TaskRunState,
    TaskSpec,
    cut_text,
    graph_from_proto,
    limit_flag,
    limit_variable,
)
from headwater_runtime.server import limits_from_env, settings_from_env
from headwater_runtime.server._app import RunningServer, start_server
from headwater_runtime.server._core import ServerSettings
from headwater_runtime.server._reports import REFUSED_RESULT
from headwater_runtime.server._result_refs import REFS_ON_LOOP
from headwater_runtime.store import StoreUnavailable

DOCS = Path(__file__).resolve().parent.parent / "docs"
SERVICES = {
    "ControlPlaneService": cp.DESCRIPTOR,
    "WorkerGatewayService": worker_pb2.DESCRIPTOR,
    "PayloadService": payload_pb2.DESCRIPTOR,
}


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, limits: Limits | None = None) -> AsyncIterator[RunningServer]:
    settings = ServerSettings(
        port=0,
        db=str(tmp_path / "hw.db"),
        heartbeat_interval=0.5,
        heartbeat_timeout=3600.0,
        limits=limits or Limits(),
    )
    running = await start_server(settings)
    try:
        yield running
    finally:
        await asyncio.wait_for(running.stop(None), 30)


def against_server(tmp_path: Path, body: Any, limits: Limits | None = None) -> Any:
    async def main() -> Any:
        async with (
            serving(tmp_path, limits) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            return await asyncio.wait_for(body(channel, running), 60)

    return asyncio.run(main())


async def status_of(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


# ------------------------------------------------------------- the limits themselves


def test_every_limit_is_documented_with_its_default_flag_and_variable() -> None:
    """docs/limits.md has one table row per limit, with what Limits() and the CLI use."""
    text = (DOCS / "limits.md").read_text()
    defaults = Limits()
    lines = text.splitlines()
    rows = [line for line in lines if line.startswith("| `max_")]
    assert len(rows) == len(LIMIT_SPECS)
    first = lines.index(rows[0])  # one table: a blank line in it cut the last row off
    assert lines[first : first + len(rows)] == rows
    for spec, row in zip(LIMIT_SPECS, rows, strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == f"`{spec.name}`", row
        assert cells[1] == f"{getattr(defaults, spec.name):,}", row
        assert cells[2] == f"`{limit_flag(spec.name)}`, `{limit_variable(spec.name)}`", row
    assert "(docs/limits.md)" in (DOCS.parent / "README.md").read_text()


def test_limits_come_from_defaults_then_variables_then_flags() -> None:
    env = {"HEADWATER_MAX_MAP_WIDTH": "50", "HEADWATER_MAX_GRAPH_TASKS": "7"}
    limits = limits_from_env(env, max_graph_tasks=9)
    assert (limits.max_map_width, limits.max_graph_tasks, limits.max_nesting) == (
        50,
        9,
        MAX_NESTING_CEILING,
    )
    assert settings_from_env(env).limits.max_map_width == 50
    with pytest.raises(ValueError, match="HEADWATER_MAX_NESTING must be a whole number"):
        limits_from_env({"HEADWATER_MAX_NESTING": "lots"})
    with pytest.raises(ValueError, match="max_map_width must be a whole number >= 1"):
        Limits(max_map_width=0)


def test_a_bad_limit_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from headwater._cli import main

    assert main(["server", "--port", "0", "--max-map-width", "0"]) == 2
    assert "max_map_width must be a whole number >= 1, got 0" in capsys.readouterr().err


def test_a_nesting_limit_clients_could_not_decode_is_refused_at_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Above MAX_NESTING_CEILING the server would build messages nested deeper than
    protobuf's 100 levels (tests/test_nesting_bound.py): a server given 150 took a
    result nested 97 deep, and every client's GetFlowRun of that run failed."""
    from headwater._cli import main

    refusal = (
        f"max_nesting must be 1 to {MAX_NESTING_CEILING}, got 150 (--max-nesting, "
        "HEADWATER_MAX_NESTING)"
    )
    assert main(["server", "--port", "0", "--max-nesting", "150"]) == 2
    err = capsys.readouterr().err
    assert refusal in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(ValueError, match=re.escape(refusal)):
        limits_from_env({"HEADWATER_MAX_NESTING": "150"})
    with pytest.raises(ValueError, match=f"got {MAX_NESTING_CEILING + 1} "):
        Limits(max_nesting=MAX_NESTING_CEILING + 1)
    assert Limits(max_nesting=MAX_NESTING_CEILING).max_nesting == MAX_NESTING_CEILING


# ------------------------------------------------------------------------- graphs


def _chain(n: int, name: str = "wide") -> graph_pb2.FlowGraph:
    graph = graph_pb2.FlowGraph(name=name)
    for i in range(n):
        node = graph.tasks.add(id=f"t{i}", task_type="m.t")
        if i:
            node.wait_for.append(f"t{i - 1}")
    return graph


def _nested(depth: int) -> graph_pb2.Input:
    nested = graph_pb2.Input(task_output=graph_pb2.TaskOutput(task_id="a"))
    for _ in range(depth - 1):
        nested = graph_pb2.Input(list=graph_pb2.InputList(items=[nested]))
    return nested


def _constants(n: int) -> graph_pb2.Input:
    """A list of ``n`` constants, as a flow body's ``list(range(n))`` compiles."""
    items = [
        graph_pb2.Input(constant=payload_pb2.Payload(data=b"%d" % i, metadata={"encoding": "json"}))
        for i in range(n)
    ]
    return graph_pb2.Input(list=graph_pb2.InputList(items=items))


def test_graphs_over_the_size_limits_are_refused_naming_the_limit(tmp_path: Path) -> None:
    """Too many tasks, upstream references or levels of nesting; and a task mapped over
    a list in the graph itself (``inc.map(list(range(n)))`` in the flow body) with more
    elements than max_map_width: such a map went through, 110,000 children under the
    default limit of 100,000 (a user trial), while the same width from a result or a
    parameter was refused."""
    limits = Limits(max_graph_tasks=10, max_graph_edges=5, max_nesting=4, max_map_width=3)

    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        deep = graph_pb2.FlowGraph(
            name="deep",
            tasks=[
                graph_pb2.TaskNode(id="a", task_type="m.a"),
                graph_pb2.TaskNode(id="b", task_type="m.b", inputs={"x": _nested(8)}),
            ],
        )
        mapped = graph_pb2.FlowGraph(
            name="mapped",
            tasks=[
                graph_pb2.TaskNode(
                    id="inc",
                    task_type="m.inc",
                    inputs={"x": _constants(4), "y": _constants(9)},  # y is not mapped
                    map=graph_pb2.MapSpec(mapped_inputs=["x"]),
                )
            ],
        )
        cases = [
            (_chain(11), "flow 'wide' has 11 tasks, over this server's limit max_graph_tasks = 10"),
            (
                mapped,
                "flow 'mapped', task 'inc', maps argument 'x' over 4 elements, over this "
                "server's limit max_map_width = 3",
            ),
            (_chain(7), "over this server's limit max_graph_edges = 5"),
            (
                deep,
                "task 'b', argument 'x' nests inputs at least 5 levels deep, over this "
                "server's limit "
                "max_nesting = 4 (raise it with --max-nesting or HEADWATER_MAX_NESTING)",
            ),
        ]
        for graph, message in cases:
            code, details = await status_of(
                client.RegisterFlow(cp.RegisterFlowRequest(graph=graph))
            )
            assert (code, message in details) == (grpc.StatusCode.RESOURCE_EXHAUSTED, True), details
        # At the limits, the same shapes are taken.
        deep.tasks[1].inputs["x"].CopyFrom(_nested(4))
        mapped.tasks[0].inputs["x"].CopyFrom(_constants(3))
        for graph in (_chain(6), deep, mapped):
            await client.RegisterFlow(cp.RegisterFlowRequest(graph=graph))
        assert [name for name, _ in running.store.list_flows()] == ["deep", "mapped", "wide"]

    against_server(tmp_path, body, limits)


def test_a_message_over_the_size_limit_is_refused_by_grpc_and_the_limit_can_be_raised(
    tmp_path: Path,
) -> None:
    big = graph_pb2.FlowGraph(name="big")
    node = big.tasks.add(id="a", task_type="m.a")
    node.inputs["x"].constant.data = b"x" * (5 << 20)
    node.inputs["x"].constant.metadata["encoding"] = "pickle"

    async def refused(channel: grpc.aio.Channel, running: RunningServer) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        code, details = await status_of(client.RegisterFlow(cp.RegisterFlowRequest(graph=big)))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "4194304" in details, details

    async def taken(channel: grpc.aio.Channel, running: RunningServer) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        await client.RegisterFlow(cp.RegisterFlowRequest(graph=big))

    against_server(tmp_path / "a", refused)
    against_server(tmp_path / "b", taken, Limits(max_message_bytes=8 << 20))


def test_a_server_names_its_message_limit_and_refuses_a_worker_that_accepts_less(
    tmp_path: Path,
) -> None:
    """A server may send workers messages up to its max_message_bytes: a worker that
    accepts less (0 says gRPC's 4 MiB) is refused with FAILED_PRECONDITION naming the
    flag; one that accepts as much is welcomed with the server's limit."""

    async def connect(channel: grpc.aio.Channel, accepts: int) -> worker_pb2.ConnectResponse:
        stub = worker_pb2_grpc.WorkerGatewayServiceStub(channel)
        hello = worker_pb2.Hello(
            worker_id="w",
            protocol_version=1,
            capabilities=["m.t"],
            slots=1,
            max_message_bytes=accepts,
        )

        async def requests() -> AsyncIterator[worker_pb2.ConnectRequest]:
            yield worker_pb2.ConnectRequest(hello=hello)
            await asyncio.sleep(3600)

        call = stub.Connect(requests())
        try:
            return await anext(aiter(call))
        finally:
            call.cancel()

    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        code, details = await status_of(connect(channel, 0))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "--max-message-bytes 8388608" in details and "accepts 4194304" in details
        first = await connect(channel, 8 << 20)
        assert first.welcome.max_message_bytes == 8 << 20

    against_server(tmp_path, body, Limits(max_message_bytes=8 << 20))


@task(name="a/b")
def slashed() -> int:
    return 1


def test_task_ids_that_clash_with_task_run_keys_are_refused_alike_everywhere(
    tmp_path: Path,
) -> None:
    """A task id with "/" (the task run id separator), or of the form "x[0]" beside a
    mapped "x" (its element's key), is refused by GraphSpec.validate: the compiler,
    the embedded host and a server say the same."""
    mapped = graph_pb2.FlowGraph(
        name="clash",
        tasks=[
            graph_pb2.TaskNode(id="src", task_type="m.s"),
            graph_pb2.TaskNode(
                id="x",
                task_type="m.x",
                inputs={"v": graph_pb2.Input(task_output=graph_pb2.TaskOutput(task_id="src"))},
                map=graph_pb2.MapSpec(mapped_inputs=["v"]),
            ),
            graph_pb2.TaskNode(id="x[0]", task_type="m.y"),
        ],
    )
    slash = graph_pb2.FlowGraph(name="slash", tasks=[graph_pb2.TaskNode(id="a/b", task_type="m")])
    expected = {
        "clash": "task id 'x[0]' is the key of an element of mapped task 'x': rename the task",
        "slash": "task id 'a/b' contains '/', which separates a flow run's id from its task "
        "runs' keys: rename the task",
    }
    for graph in (mapped, slash):
        with pytest.raises(GraphError) as info:
            graph_from_proto(graph)
        assert str(info.value) == expected[graph.name]
    # Beside a task that is not mapped, "x[0]" is an ordinary id.
    GraphSpec("ok", (TaskSpec("x", "x", "t"), TaskSpec("x[0]", "y", "t"))).validate()
    with pytest.raises(GraphError) as info:
        GraphSpec(
            "f",
            (
                TaskSpec("s", "s", "t"),
                TaskSpec("x", "x", "t", inputs={"v": FromTask("s")}, mapped=("v",)),
                TaskSpec("x[12]", "y", "t"),
            ),
        ).validate()
    assert "'x[12]' is the key of an element of mapped task 'x'" in str(info.value)

    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        for graph in (mapped, slash):
            code, details = await status_of(
                client.RegisterFlow(cp.RegisterFlowRequest(graph=graph))
            )
            assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, expected[graph.name])
        assert running.store.list_flows() == []

    against_server(tmp_path, body)


OLD_PROTOBUF = int(protobuf_version.split(".")[0]) < 5


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("backoff", float("inf"), "retry backoff must be a finite number >= 0"),
        ("jitter", float("nan"), "retry jitter must be in [0, 1]"),
        ("jitter", 2.0, "retry jitter must be in [0, 1]"),
        ("backoff", -1.0, "retry backoff must be a finite number >= 0"),
    ],
)
def test_retry_numbers_a_run_cannot_live_with_are_refused(
    field: str, value: float, fragment: str
) -> None:
    node = graph_pb2.TaskNode(id="a", task_type="m")
    setattr(node.retry, "backoff_factor" if field == "backoff" else field, value)
    with pytest.raises(GraphError, match=re.escape(f"task 'a': {fragment}")):
        graph_from_proto(graph_pb2.FlowGraph(name="f", tasks=[node]))


# ---------------------------------------------------------------------- parameters


def _deep_value(depth: int, into: payload_pb2.Value | None = None) -> payload_pb2.Value:
    """A value nesting one element ``depth`` levels deep, built in place (in ``into``
    if given): protobuf copies a message by parsing it, which stops at 100 levels, so a
    message deeper than that must be built from the outside in."""
    value = current = into if into is not None else payload_pb2.Value()
    for level in range(1, depth + 1):
        current.inline.CopyFrom(value_of([1] if level < depth else 1).inline)
        if level < depth:
            current.inline.metadata[LENGTH_KEY] = "1"
            current = current.items.add()
    return value


def test_parameters_over_the_limits_or_contradicting_themselves_are_refused(
    tmp_path: Path,
) -> None:
    limits = Limits(max_parameter_bytes=2_000, max_map_width=50, max_nesting=5)

    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        await client.RegisterFlow(cp.RegisterFlowRequest(graph=proto_pipeline.compile()))
        lying = value_of(3)
        lying.inline.metadata[LENGTH_KEY] = "100000000"
        not_a_number = value_of(3)
        not_a_number.inline.metadata[LENGTH_KEY] = "1e9"
        cases = [
            (
                value_of("x" * 3_000),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "limit max_parameter_bytes = 2000",
            ),
            (
                value_of(["x" * 40] * 40, split=True),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "with its 40 elements (a task maps over it, so every element goes in the request",
            ),
            (
                value_of(list(range(60)), split=True),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "parameter 'n' has 60 elements, over this server's limit max_map_width = 50",
            ),
            (
                lying,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "parameter 'n' declares 100000000 elements, over this server's limit max_map_width",
            ),
            (not_a_number, grpc.StatusCode.INVALID_ARGUMENT, "'1e9', which is not a whole number"),
            (
                _deep_value(9),  # (the walk stops at the first level over the limit)
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "nests elements at least 6 levels deep (the value itself is level 1)",
            ),
        ]
        for value, code, fragment in cases:
            for call in (
                client.CreateFlowRun(
                    cp.CreateFlowRunRequest(flow_name="proto_pipeline", parameters={"n": value})
                ),
                client.CreateSchedule(
                    cp.CreateScheduleRequest(
                        schedule=run_pb2.Schedule(
                            flow_name="proto_pipeline", parameters={"n": value}, cron="* * * * *"
                        )
                    )
                ),
            ):
                got, details = await status_of(call)
                assert (got, fragment in details) == (code, True), details
        assert running.store.list_flow_runs() == []
        assert running.store.list_schedules() == []

    against_server(tmp_path, body, limits)


# ------------------------------------------------------------------ worker results


async def _report_hostile_results(
    channel: grpc.aio.Channel, results: list[payload_pb2.Value]
) -> list[worker_pb2.Ack]:
    """A worker that answers each `numbers` assignment with the next of ``results``
    (and nothing else); the Acks it got."""
    stub = worker_pb2_grpc.WorkerGatewayServiceStub(channel)
    outbox: asyncio.Queue[worker_pb2.ConnectRequest] = asyncio.Queue()
    hello = worker_pb2.Hello(
        worker_id="hostile", protocol_version=1, capabilities=[numbers.task_type], slots=1
    )
    await outbox.put(worker_pb2.ConnectRequest(hello=hello))

    async def requests() -> AsyncIterator[worker_pb2.ConnectRequest]:
        while True:
            yield await outbox.get()

    acks: list[worker_pb2.Ack] = []
    call = stub.Connect(requests())
    pending = list(results)
    async for response in call:
        if response.HasField("assignment"):
            assert response.assignment.split_result  # a mapped task maps over it
            report = worker_pb2.TaskResult(token=response.assignment.token, result=pending.pop(0))
            await outbox.put(worker_pb2.ConnectRequest(result=report))
        elif response.HasField("ack"):
            acks.append(response.ack)
            if len(acks) == len(results):
                break
    call.cancel()
    return acks


def test_a_result_declaring_a_huge_map_width_fails_its_task_and_the_server_goes_on(
    tmp_path: Path,
) -> None:
    """The issue's attack: a result whose metadata says headwater.length "100000000"
    once made the server create 10^8 child task runs. Now the task fails, naming the
    limit; the worker's Ack says why; other clients are served meanwhile."""
    lying = value_of([0, 1, 2], split=True)
    lying.inline.metadata[LENGTH_KEY] = "100000000"
    mismatch = value_of([0, 1, 2], split=True)
    mismatch.inline.metadata[LENGTH_KEY] = "2"
    too_many = value_of(list(range(101)), split=True)

    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        await client.RegisterFlow(cp.RegisterFlowRequest(graph=proto_pipeline.compile()))
        runs = []
        for _ in range(3):
            created = await client.CreateFlowRun(
                cp.CreateFlowRunRequest(flow_name="proto_pipeline")
            )
            runs.append(created.flow_run.id)
        acks = await _report_hostile_results(channel, [lying, mismatch, too_many])
        expected = [
            (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "declares 100000000 elements, over this "
                "server's limit max_map_width = 100 (raise it with --max-map-width or "
                "HEADWATER_MAX_MAP_WIDTH)",
            ),
            (
                grpc.StatusCode.INVALID_ARGUMENT,
                "declares 2 elements (headwater.length) but carries 3",
            ),
            (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "has 101 elements, over this server's limit max_map_width = 100",
            ),
        ]
        assert len(acks) == 3
        for ack, (code, fragment) in zip(acks, expected, strict=True):
            assert (ack.accepted, ack.code) == (False, code.value[0])
            assert fragment in ack.reason, ack.reason
        for run_id, (_, fragment) in zip(runs, expected, strict=True):
            final = None
            async for change in client.WatchFlowRun(cp.WatchFlowRunRequest(id=run_id)):
                final = change.flow_run
            assert final is not None and final.state == FlowRunState.FAILED.value
            got = await client.GetFlowRun(cp.GetFlowRunRequest(id=run_id, include_task_runs=True))
            source = next(t for t in got.task_runs if t.name == "numbers")
            assert source.state == TaskRunState.FAILED.value
            failure = source.history[-1].failure
            assert failure.type == REFUSED_RESULT and fragment in failure.message
            assert not failure.retryable
            # No child task run was created for the mapped task.
            assert [t.name for t in got.task_runs if t.name.startswith("scale[")] == []
        info = await client.GetServerInfo(cp.GetServerInfoRequest())
        assert info.protocol_version == 1

    against_server(tmp_path, body, Limits(max_map_width=100))


def test_a_result_that_carries_no_value_fails_its_task_instead_of_its_readers(
    tmp_path: Path,
) -> None:
    """A TaskResult with no value, or inline bytes with no encoding, was taken: the
    run succeeded and its readers failed ("unknown payload encoding ''"). Now the
    worker's Ack refuses it, saying why, and the task fails."""
    no_encoding = value_of([0, 1, 2], split=True)
    del no_encoding.inline.metadata["encoding"]

    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        await client.RegisterFlow(cp.RegisterFlowRequest(graph=proto_pipeline.compile()))
        for _ in range(2):
            await client.CreateFlowRun(cp.CreateFlowRunRequest(flow_name="proto_pipeline"))
        acks = await _report_hostile_results(channel, [payload_pb2.Value(), no_encoding])
        expected = [
            "carries no value (TaskResult.result needs",
            "has no 'encoding' in its metadata",
        ]
        for ack, fragment in zip(acks, expected, strict=True):
            assert (ack.accepted, ack.code) == (False, grpc.StatusCode.INVALID_ARGUMENT.value[0])
            assert fragment in ack.reason, ack.reason
        listed = await client.ListFlowRuns(cp.ListFlowRunsRequest())
        for run in listed.flow_runs:
            final = None
            async for change in client.WatchFlowRun(cp.WatchFlowRunRequest(id=run.id)):
                final = change.flow_run
            assert final is not None and final.state == FlowRunState.FAILED.value

    against_server(tmp_path, body, Limits())


def _with_ref(obj: list[int], index: int, meta: Any, **fields: Any) -> payload_pb2.Value:
    """A split result whose element ``index`` travels as a reference to ``meta``'s
    payload (a PayloadMeta: its size and hash, or a made-up id); ``fields`` override
    the PayloadRef's."""
    value = value_of(obj, split=True)
    if isinstance(meta, str):
        ref = payload_pb2.PayloadRef(payload_id=meta, size_bytes=2, sha256="0" * 64)
    else:
        ref = payload_pb2.PayloadRef(payload_id=meta.id, size_bytes=meta.size, sha256=meta.sha256)
    for name, given in fields.items():
        setattr(ref, name, given)
    ref.metadata.update(value.items[index].inline.metadata)
    value.items[index].CopyFrom(payload_pb2.Value(ref=ref))
    return value


def test_a_result_referencing_a_payload_that_is_not_stored_is_refused_at_once(
    tmp_path: Path,
) -> None:
    """A result was taken whatever payloads it referenced: a worker that reported
    before its upload ended (or a made-up id, a reference whose size or hash is not the
    payload's, a location the protocol does not define) made the run's readers fail
    later, on a download. Now the Ack refuses it, naming the payload, and its task
    fails; the same result referencing a stored payload is taken, in a narrow value and
    in ones with more elements (wide, or deep) than are searched on the event loop."""

    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        await client.RegisterFlow(cp.RegisterFlowRequest(graph=proto_pipeline.compile()))
        stored = running.store.put_payload(iter([b"42"]), {"encoding": "json"}, 2)
        wide = list(range(REFS_ON_LOOP + 6))
        deep = value_of([0, 1], split=True)  # element 1: a list of REFS_ON_LOOP + 6
        deep.items[1].CopyFrom(_with_ref(wide, 5, "deep-missing"))
        results = [
            _with_ref([0, 1, 2], 1, "no-such-payload"),
            _with_ref(wide, len(wide) - 1, "made-up"),
            deep,
            _with_ref([0, 1, 2], 0, stored, sha256="f" * 64),
            _with_ref([0, 1, 2], 2, "elsewhere", location="s3"),
            _with_ref([0, 1, 2], 1, stored),
            _with_ref(wide, 3, stored),
        ]
        runs = [
            (
                await client.CreateFlowRun(cp.CreateFlowRunRequest(flow_name="proto_pipeline"))
            ).flow_run.id
            for _ in results
        ]
        acks = await _report_hostile_results(channel, results)
        assert len(acks) == len(results)
        refused = {
            m.group(1): a
            for a in acks
            if not a.accepted and (m := re.search(r"(?:payload|location) '([^']*)'", a.reason))
        }
        assert sorted(refused) == sorted(
            ["no-such-payload", "made-up", "deep-missing", stored.id, "s3"]
        ), acks
        precondition = grpc.StatusCode.FAILED_PRECONDITION.value[0]
        invalid = grpc.StatusCode.INVALID_ARGUMENT.value[0]
        for name in ("no-such-payload", "made-up", "deep-missing"):
            assert refused[name].code == precondition
            assert "which is not stored: upload a result's payloads" in refused[name].reason
        assert refused[stored.id].code == invalid
        assert "as 2 bytes with SHA-256 'ffffffffffffffff', but it is stored as 2 bytes" in (
            refused[stored.id].reason
        )
        assert refused["s3"].code == invalid
        assert "which the protocol does not define" in refused["s3"].reason
        states = []
        for run_id in runs:
            got = await client.GetFlowRun(cp.GetFlowRunRequest(id=run_id, include_task_runs=True))
            source = next(t for t in got.task_runs if t.name == "numbers")
            states.append(TaskRunState(source.state).name)
            if source.state == TaskRunState.FAILED.value:
                failure = source.history[-1].failure
                assert failure.type == REFUSED_RESULT and not failure.retryable
        assert sorted(states) == ["FAILED"] * 5 + ["SUCCESS"] * 2

    against_server(tmp_path, body, Limits())


def test_results_are_taken_unchecked_when_the_store_cannot_look_their_payloads_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The lookup is a check, not a condition: when the store cannot be read, the
    result is taken (and the server says so in its log); the worker's stream goes on."""

    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        await client.RegisterFlow(cp.RegisterFlowRequest(graph=proto_pipeline.compile()))
        stored = running.store.put_payload(iter([b"42"]), {"encoding": "json"}, 2)

        def unreadable(payload_id: str) -> Any:
            raise StoreUnavailable("disk I/O error")

        running.store.payload_meta = unreadable  # type: ignore[method-assign]
        for _ in range(2):
            await client.CreateFlowRun(cp.CreateFlowRunRequest(flow_name="proto_pipeline"))
        results = [_with_ref([0, 1, 2], 1, stored), _with_ref([0, 1, 2], 2, stored)]
        acks = await _report_hostile_results(channel, results)
        assert [a.accepted for a in acks] == [True, True], acks

    with caplog.at_level(logging.WARNING, logger="headwater.server"):
        against_server(tmp_path, body, Limits())
    assert "results taken without looking up the payloads they reference: disk I/O error" in (
        caplog.text
    )


def test_a_wide_result_over_the_limit_is_refused_on_the_path_off_the_loop(
    tmp_path: Path,
) -> None:
    """A result of 10,000 elements or more is checked and applied on a reader thread
    (server/_wide.py): over the map width limit it is refused all the same, naming the
    limit, and its task fails; one within the limit is taken."""
    too_wide = value_of(list(range(12_001)), split=True)
    fits = value_of(list(range(12_000)), split=True)

    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        await client.RegisterFlow(cp.RegisterFlowRequest(graph=proto_pipeline.compile()))
        runs = [
            (
                await client.CreateFlowRun(cp.CreateFlowRunRequest(flow_name="proto_pipeline"))
            ).flow_run.id
            for _ in range(2)
        ]
        refused, taken = await _report_hostile_results(channel, [too_wide, fits])
        assert (refused.accepted, refused.code) == (
            False,
            grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
        )
        assert "has 12001 elements, over this server's limit max_map_width = 12000" in (
            refused.reason
        )
        assert taken.accepted, taken.reason
        # Whichever run got which result: one source failed, the other has children.
        sources = {}
        for run_id in runs:
            got = await client.GetFlowRun(cp.GetFlowRunRequest(id=run_id, include_task_runs=True))
            source = next(t for t in got.task_runs if t.name == "numbers")
            children = [r for r in running.store.task_runs(run_id) if r.key.startswith("scale[")]
            sources[TaskRunState(source.state)] = (source, len(children))
        failed, none = sources[TaskRunState.FAILED]
        assert failed.history[-1].failure.type == REFUSED_RESULT and none == 0
        assert sources[TaskRunState.SUCCESS][1] == 12_000

    against_server(tmp_path, body, Limits(max_map_width=12_000))


def test_a_result_at_the_map_width_limit_is_taken(tmp_path: Path) -> None:
    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        await client.RegisterFlow(cp.RegisterFlowRequest(graph=proto_pipeline.compile()))
        created = await client.CreateFlowRun(cp.CreateFlowRunRequest(flow_name="proto_pipeline"))
        (ack,) = await _report_hostile_results(channel, [value_of(list(range(100)), split=True)])
        assert ack.accepted, ack.reason
        got = await client.GetFlowRun(
            cp.GetFlowRunRequest(id=created.flow_run.id, include_task_runs=True)
        )
        assert len([t for t in got.task_runs if t.name.startswith("scale[")]) == 100

    against_server(tmp_path, body, Limits(max_map_width=100))


# ------------------------------------------------------------------ malformed bytes

#: Bytes no request message decodes from: field 1 with a length running past the end,
#: and an invalid wire type (7).
_TRUNCATED = b"\x0a\x7f\x01"
_BAD_WIRE_TYPE = b"\xff" * 5
#: Invalid UTF-8 in field 1 (a string in GetFlowRunRequest, the `id`).
_INVALID_UTF8 = b"\x0a\x02\xff\xfe"
#: The same, 512 KiB long; and a 512 KiB graph (RegisterFlowRequest field 1) whose last
#: task's length runs past the end.
_BIG_INVALID_UTF8 = b"\x0a\x80\x80\x20" + b"\xff" * (1 << 19)
_BIG_TRUNCATED = cp.RegisterFlowRequest(
    graph=graph_pb2.FlowGraph(name="x" * (1 << 19))
).SerializeToString()[:-10]


def _every_method() -> list[tuple[str, Any]]:
    return [
        (f"/headwater.v1.{service}/{method.name}", method)
        for service, descriptor in SERVICES.items()
        for method in descriptor.services_by_name[service].methods
    ]


def test_undecodable_requests_get_invalid_argument_naming_the_method_for_every_rpc(
    tmp_path: Path,
) -> None:
    """Garbage, a truncated field and nesting deeper than 100 once answered UNKNOWN
    "Unexpected DecodeError"; now every RPC, unary or streaming (a worker's Connect
    stream, an upload), answers INVALID_ARGUMENT naming the method."""
    hello = worker_pb2.ConnectRequest(
        hello=worker_pb2.Hello(worker_id="w", protocol_version=1, capabilities=["x"], slots=1)
    ).SerializeToString()

    deep = cp.CreateFlowRunRequest(flow_name="f")
    _deep_value(120, deep.parameters["n"])
    deep_result = worker_pb2.ConnectRequest()
    _deep_value(120, deep_result.result.result)

    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        seen = 0
        for path, method in _every_method():
            for junk in (_TRUNCATED, _BAD_WIRE_TYPE):
                # On the worker stream: as the first message, and after a good Hello.
                prefix = [hello] if method.name == "Connect" and junk == _TRUNCATED else []
                code, details = await _send(channel, path, method, [*prefix, junk])
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (path, code, details)
                assert details.startswith(f"{path}: malformed request message"), details
                seen += 1
        assert seen == 2 * len(_every_method())
        control = "/headwater.v1.ControlPlaneService"
        connect = "/headwater.v1.WorkerGatewayService/Connect"
        connect_method = worker_pb2.DESCRIPTOR.services_by_name["WorkerGatewayService"]
        for path, method, messages, fragment in [
            (f"{control}/GetFlowRun", None, [_INVALID_UTF8], "UTF-8"),
            # Large: decoded off the event loop, in slices (server/_slices.py).
            (f"{control}/GetFlowRun", None, [_BIG_INVALID_UTF8], "UTF-8"),
            (f"{control}/RegisterFlow", None, [_BIG_TRUNCATED], "malformed"),
            (f"{control}/CreateFlowRun", None, [deep.SerializeToString()], "Depth"),
            (
                connect,
                connect_method.methods_by_name["Connect"],
                [hello, deep_result.SerializeToString()],
                "Depth",
            ),
        ]:
            code, details = await _send(channel, path, method, messages)
            # protobuf 4.25 (the oldest supported) names no cause: "Error parsing message".
            named = fragment in details or (OLD_PROTOBUF and "Error parsing message" in details)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and named, details
        # The server is unharmed.
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        assert (await client.GetServerInfo(cp.GetServerInfoRequest())).protocol_version == 1

    against_server(tmp_path, body)


async def _send(
    channel: grpc.aio.Channel, path: str, method: Any, messages: list[bytes]
) -> tuple[grpc.StatusCode, str]:
    """Send raw request bytes to a method of any kind; its status and details."""
    raw = {"request_serializer": None, "response_deserializer": None}
    client_streaming = method is not None and method.client_streaming
    server_streaming = method is not None and method.server_streaming
    try:
        if not client_streaming:
            if server_streaming:
                async for _ in channel.unary_stream(path, **raw)(messages[0], timeout=10):
                    pass
            else:
                await channel.unary_unary(path, **raw)(messages[0], timeout=10)
        else:

            async def stream() -> AsyncIterator[bytes]:
                for message in messages:
                    yield message
                await asyncio.sleep(30)  # the server must end the call, not the client

            if server_streaming:
                async for _ in channel.stream_stream(path, **raw)(stream(), timeout=10):
                    pass
            else:
                await channel.stream_unary(path, **raw)(stream(), timeout=10)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_a_well_formed_worker_stream_with_a_malformed_message_later_is_ended(
    tmp_path: Path,
) -> None:
    """A message of the worker stream that cannot be decoded ends the stream with
    INVALID_ARGUMENT (after the Welcome): the session's attempts are lost and sent
    again, like any broken stream."""

    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        path = "/headwater.v1.WorkerGatewayService/Connect"
        hello = worker_pb2.ConnectRequest(
            hello=worker_pb2.Hello(
                worker_id="w", protocol_version=1, capabilities=list(FUNCTIONS), slots=1
            )
        ).SerializeToString()
        beat = worker_pb2.ConnectRequest(heartbeat=worker_pb2.Heartbeat()).SerializeToString()
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for message in (hello, beat):
            queue.put_nowait(message)

        async def stream() -> AsyncIterator[bytes]:
            while True:
                yield await queue.get()

        call = channel.stream_stream(path, request_serializer=None, response_deserializer=None)(
            stream()
        )
        kinds = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for raw in call:
                response = worker_pb2.ConnectResponse.FromString(raw)
                kinds.append(response.WhichOneof("message"))
                if kinds == ["welcome", "heartbeat_ack"]:
                    queue.put_nowait(_TRUNCATED)
        assert kinds == ["welcome", "heartbeat_ack"]
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed request message" in (info.value.details() or "")
        deadline = asyncio.get_running_loop().time() + 10
        while running.core.dispatcher.sessions:  # the session is gone
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)

    against_server(tmp_path, body)


def test_a_cut_text_says_how_much_was_cut_and_cutting_it_again_changes_nothing() -> None:
    """A 200,000-character log line, cut by the SDK and again by the server: the note
    says how many characters are gone (it said 33: the second cut's), and the result
    fits the limit."""
    text = "L" * 100_000 + "R" * 100_000
    once = cut_text(text, 65_536)
    assert len(once) <= 65_536 and cut_text(once, 65_536) == once
    head, note, tail = once.split("\n")
    assert note == f"... ({200_000 - len(head) - len(tail)} characters cut) ..."
    assert set(head) == {"L"} and set(tail) == {"R"} and len(head) == len(tail)
    assert cut_text("short", 65_536) == "short"


def test_a_workers_too_small_message_limit_names_where_it_came_from(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Set through HEADWATER_MAX_MESSAGE_BYTES, the error named the flag, which the
    user had not given."""
    from headwater._worker import message_bytes

    with pytest.raises(ValueError, match=r"^the worker's --max-message-bytes must be at least"):
        message_bytes(100)
    monkeypatch.setenv("HEADWATER_MAX_MESSAGE_BYTES", "100")
    with pytest.raises(ValueError, match=r"^HEADWATER_MAX_MESSAGE_BYTES must be at least 4194304"):
        message_bytes(None)


@pytest.mark.parametrize(
    ("flow_name", "task_id", "said"),
    [
        ("ok", "new\nline", "task id 'new\\nline' contains the control character '\\n'"),
        ("ok", "tab\there", "task id 'tab\\there' contains the control character '\\t'"),
        ("ok", "esc\x1b[31m", "task id 'esc\\x1b[31m' contains the control character '\\x1b'"),
        ("bell\x07", "t", "flow name 'bell\\x07' contains the control character '\\x07'"),
        # A right-to-left override shows "etl_exe.txt" for "etl_\u202etxt.exe".
        ("etl_\u202etxt.exe", "t", "flow name 'etl_\\u202etxt.exe' contains the control"),
        ("ok", "x\u2067y", "task id 'x\\u2067y' contains the control character '\\u2067'"),
        ("ok", "t" * 201, f"task id {'t' * 40!r}... is 201 characters long (at most 200)"),
        ("f" * 5_000, "t", f"flow name {'f' * 40!r}... is 5,000 characters long (at most 200)"),
    ],
)
def test_names_and_ids_that_are_too_long_or_hold_control_characters_are_refused(
    tmp_path: Path, flow_name: str, task_id: str, said: str
) -> None:
    """A task id with a newline split the rows of `runs show`, and an escape sequence
    could recolour an operator's terminal: refused like a "/" (a user trial), and so is
    a name longer than a worker's may be (200 characters; 10,000 were taken)."""
    graph = graph_pb2.FlowGraph(
        name=flow_name, tasks=[graph_pb2.TaskNode(id=task_id, task_type="m")]
    )
    with pytest.raises(GraphError) as info:
        graph_from_proto(graph)
    assert str(info.value).startswith(said), str(info.value)

    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        code, details = await status_of(client.RegisterFlow(cp.RegisterFlowRequest(graph=graph)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(said), details
        assert running.store.list_flows() == []

    against_server(tmp_path, body)


def test_a_malformed_parent_task_run_id_is_invalid_argument(tmp_path: Path) -> None:
    """CreateFlowRun with a parent_task_run_id that is not FLOW_RUN_ID/KEY is the
    request's fault: INVALID_ARGUMENT naming the field (FAILED_PRECONDITION before, as
    for a parent attempt that is not running, a user trial); no run is created."""

    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        await client.RegisterFlow(cp.RegisterFlowRequest(graph=_chain(1, "one")))
        request = cp.CreateFlowRunRequest(
            flow_name="one", parent_task_run_id="garbage", parent_attempt=1
        )
        code, details = await status_of(client.CreateFlowRun(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert details == (
            "parent_task_run_id: malformed task run id 'garbage' (expected FLOW_RUN_ID/KEY)"
        )
        # Well formed, but no such attempt runs: the server's state says no.
        request.parent_task_run_id = "nope/t0"
        code, _ = await status_of(client.CreateFlowRun(request))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert running.store.list_flow_runs("", [], 10, "") == []

    against_server(tmp_path, body)
