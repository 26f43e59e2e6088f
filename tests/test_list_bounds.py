"""Lists and maps a peer sends are bounded (``max_list_items``, names of at most 200
characters), and a worker stream cannot make the server queue without bound: its
batches are handled a slice at a time, and a worker that does not read its responses
is not read either until it does (server/_gateway.py, docs/limits.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import pytest
from test_limits import against_server, status_of

from headwater import flow, task
from headwater.v1 import control_plane_pb2 as cp
from headwater.v1 import (
    control_plane_pb2_grpc,
    graph_pb2,
    payload_pb2,
    payload_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from headwater.wire import BATCH, PROTOCOL_VERSION, Limits
from headwater_runtime.server import _gateway
from headwater_runtime.server._app import RunningServer

LIMITS = Limits(max_list_items=50)


def _hello(**fields: Any) -> worker_pb2.ConnectRequest:
    hello = worker_pb2.Hello(
        worker_id="w", protocol_version=PROTOCOL_VERSION, slots=1, capabilities=["t"]
    )
    for name, value in fields.items():
        field = getattr(hello, name)
        field.update(value) if isinstance(value, dict) else field.extend(value)
    return worker_pb2.ConnectRequest(hello=hello)


def _runtime_hello(hostname: str) -> worker_pb2.ConnectRequest:
    message = _hello()
    message.hello.runtime.hostname = hostname
    return message


async def _queue_stream(
    queue: asyncio.Queue[worker_pb2.ConnectRequest | None],
) -> AsyncIterator[worker_pb2.ConnectRequest]:
    while (item := await queue.get()) is not None:
        yield item


def _heartbeats(n: int) -> worker_pb2.ConnectRequest:
    beats = [worker_pb2.ConnectRequest(heartbeat=worker_pb2.Heartbeat()) for _ in range(n)]
    return worker_pb2.ConnectRequest(batch=worker_pb2.ConnectRequestBatch(messages=beats))


def test_a_hello_with_too_many_or_too_long_entries_is_refused(tmp_path: Path) -> None:
    """A Hello of 350,000 capabilities held every other client 0.65 s (a user trial)."""

    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        stub = worker_pb2_grpc.WorkerGatewayServiceStub(channel)
        cases = [
            (_hello(capabilities=[f"c{i}" for i in range(60)]), "max_list_items = 50"),
            (_hello(labels={f"k{i}": "v" for i in range(51)}), "Hello.labels has 51 entries"),
            (_hello(capabilities=["x" * 201]), "Hello.capabilities has a name of 201"),
            (_hello(labels={"gpu": "y" * 201}), "Hello.labels['gpu'] is 201 characters"),
            (_runtime_hello("h" * 1025), "Hello.runtime.hostname is 1025 characters"),
        ]
        for hello, said in cases:

            async def one(message: worker_pb2.ConnectRequest) -> AsyncIterator[Any]:
                yield message
                await asyncio.sleep(30)

            code, details = await status_of(_drain(stub.Connect(one(hello), timeout=10)))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and said in details, details
        assert not running.core.dispatcher.sessions

    against_server(tmp_path, body, LIMITS)


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


def test_a_batch_over_the_limit_ends_the_stream_and_one_under_it_is_handled_whole(
    tmp_path: Path,
) -> None:
    """A batch of 700,000 heartbeats held every other client 5 s (a user trial): over
    ``max_list_items`` the stream ends (RESOURCE_EXHAUSTED naming the limit); under
    it, every message is handled, a slice at a time."""

    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        stub = worker_pb2_grpc.WorkerGatewayServiceStub(channel)
        queue: asyncio.Queue[worker_pb2.ConnectRequest | None] = asyncio.Queue()
        queue.put_nowait(_hello(features=[BATCH]))
        call = stub.Connect(_queue_stream(queue), timeout=30)
        acks = 0
        with mock.patch.object(_gateway, "BATCH_SLICE", 7):  # several slices
            queue.put_nowait(_heartbeats(50))  # (the limit: handled)
            async for response in call:
                kind = response.WhichOneof("message")
                if kind == "batch":
                    acks += sum(m.HasField("heartbeat_ack") for m in response.batch.messages)
                acks += kind == "heartbeat_ack"
                if acks == 50:
                    break
        queue.put_nowait(_heartbeats(51))
        code, details = await status_of(_drain(call))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "a batch of 51 messages, over this server's limit max_list_items = 50" in details
        queue.put_nowait(None)

    against_server(tmp_path, body, LIMITS)


def test_a_stream_paused_for_its_unread_answers_goes_on_once_they_are_read(
    tmp_path: Path,
) -> None:
    """A worker that sends without reading made the server queue acknowledgements
    without bound (3 GB in 30 s, a user trial): the server stops reading a stream
    while too many answers wait for it (OUTBOX_HIGH). Here the bound is 0, so the
    stream pauses after nearly every message, and resumes each time its answers are
    sent: every message still gets its answer, in order, with nothing lost or stuck."""
    sent = 400

    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        stub = worker_pb2_grpc.WorkerGatewayServiceStub(channel)
        queue: asyncio.Queue[worker_pb2.ConnectRequest | None] = asyncio.Queue()
        queue.put_nowait(_hello())
        for _ in range(sent):
            queue.put_nowait(worker_pb2.ConnectRequest(heartbeat=worker_pb2.Heartbeat()))
        answers = 0
        call = stub.Connect(_queue_stream(queue), timeout=60)
        async for response in call:
            answers += response.HasField("heartbeat_ack")
            if answers == sent:
                break
        assert answers == sent
        queue.put_nowait(None)

    with mock.patch.multiple(_gateway, OUTBOX_HIGH=0, OUTBOX_LOW=1):
        against_server(tmp_path, body)


def test_trace_contexts_graph_entries_and_upload_metadata_are_bounded(tmp_path: Path) -> None:
    """A 4 MiB trace context was taken, and every task of the run then failed with
    InputsTooLarge; 100,000 tags, a 3 MB task type and 50,000 metadata keys were taken
    too (a user trial)."""

    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        many = {f"k{i}": "v" for i in range(51)}
        code, details = await status_of(
            client.CreateFlowRun(cp.CreateFlowRunRequest(flow_name="f", trace_context=many))
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "trace_context has 51 entries" in details and "max_list_items" in details
        code, details = await status_of(
            client.CreateFlowRun(
                cp.CreateFlowRunRequest(flow_name="f", trace_context={"baggage": "b" * 8193})
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "trace_context['baggage'] is 8193 characters long (at most 8192)" in details

        def graph(**node: Any) -> cp.RegisterFlowRequest:
            task = graph_pb2.TaskNode(id="a", task_type=node.pop("task_type", "t"), **node)
            return cp.RegisterFlowRequest(graph=graph_pb2.FlowGraph(name="g", tasks=[task]))

        code, details = await status_of(client.RegisterFlow(graph(task_type="t" * 201)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "task_type of 201" in details
        code, details = await status_of(
            client.RegisterFlow(graph(tags=[f"t{i}" for i in range(51)]))
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "tags has 51 entries" in details
        code, details = await status_of(client.RegisterFlow(graph(required_labels={"k" * 201: ""})))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "a key of 201" in details
        assert running.store.list_flows() == []

        payloads = payload_pb2_grpc.PayloadServiceStub(channel)
        for metadata, expected, said in (
            ({"encoding": "json", **many}, grpc.StatusCode.RESOURCE_EXHAUSTED, "52 entries"),
            ({"encoding": "json", "x" * 201: ""}, grpc.StatusCode.INVALID_ARGUMENT, "key of 201"),
        ):
            header = payload_pb2.UploadPayloadHeader(size_bytes=2, metadata=metadata)

            async def upload(
                header: payload_pb2.UploadPayloadHeader = header,
            ) -> AsyncIterator[payload_pb2.UploadPayloadRequest]:
                yield payload_pb2.UploadPayloadRequest(header=header)
                yield payload_pb2.UploadPayloadRequest(chunk=b"[]")

            code, details = await status_of(payloads.UploadPayload(upload(), timeout=10))
            assert code == expected and said in details, details

    against_server(tmp_path, body, LIMITS)


def test_log_answers_are_bounded_in_bytes_and_records_and_page_on(tmp_path: Path) -> None:
    """ListTaskRunLogs with page_size 0 ("as many as fit") built one answer of all of an
    attempt's logs (66 MB, a user trial): an answer now holds about LOG_ANSWER_BYTES
    and at most LOG_PAGE_MAX records, and its next_page_token leads on to the rest.
    The SDK's logs() follows it; so does a watch, in answers of that size."""
    from headwater import Client
    from headwater.wire import FlowRunState
    from headwater_runtime.server import _control_reads, _reads
    from headwater_runtime.store import FlowRunRow, LogRow, WriteBatch

    records = [f"{i:03d}" + "x" * 300 for i in range(12)]

    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        store = running.store
        store.create_flow_run(FlowRunRow("r1", "f", "1", FlowRunState.SUCCESS.value, 1.0))
        batch = WriteBatch()
        batch.logs.extend(LogRow("r1", "a", 1, 1.0, "INFO", "t", text) for text in records)
        store.commit(batch)
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        pages: list[list[str]] = []
        token = ""
        while True:
            answer = await client.ListTaskRunLogs(
                cp.ListTaskRunLogsRequest(flow_run_id="r1", page_token=token)
            )
            pages.append([e.message for e in answer.entries])
            token = answer.next_page_token
            if not token:
                break
        assert [m for page in pages for m in page] == records  # all, in order, once
        # LOG_PAGE_MAX records each (a full last page leads to an empty one, as ever).
        assert [len(page) for page in pages] == [2] * 6 + [0]
        watch = client.WatchTaskRunLogs(cp.WatchTaskRunLogsRequest(flow_run_id="r1"))
        watched = [[e.message for e in answer.entries] async for answer in watch]
        # ~1,000 bytes each: three 300-byte records (the watch reads 1,000 at a time).
        assert [len(page) for page in watched] == [3, 3, 3, 3]

        def sdk() -> list[str]:
            with Client(f"127.0.0.1:{running.port}") as sdk_client:
                return [entry.message for entry in sdk_client.logs("r1")]

        assert await asyncio.to_thread(sdk) == records

    with (
        mock.patch.object(_reads, "LOG_ANSWER_BYTES", 1000),
        mock.patch.object(_control_reads, "LOG_PAGE_MAX", 2),
    ):
        against_server(tmp_path, body)


def test_a_large_runs_answer_with_its_task_runs_is_encoded_off_the_loop_alike(
    tmp_path: Path,
) -> None:
    """GetFlowRun with the task runs of a 200,000-task run held every other client ~1 s
    while its 34 MB answer was made on the event loop (a user trial): over VIEW_ON_LOOP
    the task runs are encoded on the reader thread, and why queued ones wait is worked
    out a part at a time. The answer is the one made the usual way (why each task run
    waits included), for raw stubs and the SDK alike."""
    from headwater import Client
    from headwater_runtime.server import _reads, _waiting

    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        tasks = [graph_pb2.TaskNode(id=f"t{i}", task_type="nobody") for i in range(30)]
        graph = graph_pb2.FlowGraph(name="wide", tasks=tasks)
        await client.RegisterFlow(cp.RegisterFlowRequest(graph=graph))
        created = await client.CreateFlowRun(cp.CreateFlowRunRequest(flow_name="wide"))
        run_id = created.flow_run.id
        request = cp.GetFlowRunRequest(id=run_id, include_task_runs=True)
        usual = await client.GetFlowRun(request)
        varint = mock.Mock(wraps=_reads.length_delimited)  # (only the encoding path)
        with (
            mock.patch.object(_reads, "VIEW_ON_LOOP", 10),
            mock.patch.object(_reads, "length_delimited", varint),
            mock.patch.object(_waiting, "REASONS_TURN", 7),  # several turns
        ):
            encoded = await client.GetFlowRun(request)
            assert varint.call_count == 30  # encoded off the loop, a task run at a time

            def sdk() -> list[str]:
                with Client(f"127.0.0.1:{running.port}") as sdk_client:
                    run = sdk_client.get(run_id, include_task_runs=True)
                    return [t.key for t in run.task_runs]

            keys = await asyncio.to_thread(sdk)
        assert len(usual.task_runs) == 30
        assert all("no connected worker" in t.waiting for t in usual.task_runs), usual
        assert encoded == usual
        assert sorted(keys) == sorted(f"t{i}" for i in range(30))

    against_server(tmp_path, body)


def test_a_child_flows_result_nested_over_the_limit_fails_its_subflow_node() -> None:
    """A child flow's result nests its graph's inputs around its tasks' values: each
    level of subflows could nest deeper, up to answers no client decodes (read in the
    code by a helper). It is checked as a worker's result is when it becomes the
    subflow node's."""
    from headwater.wire import FlowRunState
    from headwater_runtime.engine import TaskFailed, TaskSucceeded
    from headwater_runtime.server._children import RESULT_REFUSED, subflow_event
    from headwater_runtime.store import FlowRunRow

    def nested(depth: int) -> payload_pb2.Value:
        value = payload_pb2.Value()
        inner = value
        for _ in range(depth - 1):
            inner = inner.items.add()
        return value

    row = FlowRunRow("c1", "child", "1", FlowRunState.SUCCESS.value, 1.0)
    row.parent_task_key, row.parent_attempt = "sub", 2
    limits = Limits(max_nesting=5)
    taken = subflow_event(row, nested(5), limits)
    assert isinstance(taken, TaskSucceeded) and (taken.key, taken.attempt) == ("sub", 2)
    refused = subflow_event(row, nested(6), limits)
    assert isinstance(refused, TaskFailed) and refused.failure.type == RESULT_REFUSED
    assert "the result of child flow run c1" in refused.failure.message
    assert "max_nesting = 5" in refused.failure.message and not refused.failure.retryable


@task
def enrich(x: int) -> int:
    raise AssertionError("never called: no worker offers it")


@task
def lonely() -> int:
    raise AssertionError("never called: no worker offers it")


@task
def gather(xs: list[int], other: int) -> int:
    raise AssertionError("never called: no worker offers it")


@flow(name="waits_wide")
def waits_wide(xs: list[int]) -> int:
    return gather(enrich.map(xs), lonely())


def test_why_task_runs_wait_comes_a_line_per_task_and_reason(tmp_path: Path) -> None:
    """`headwater run` looks every 2 s at why a run's task runs wait: it read every
    task run for that, 22 MB for a wide map's 100,000 waiting children (an answer
    whose sending held every other client ~0.1 s), and printed a line per child.
    GetFlowRun's include_waiting says it a line per task and reason, counted, in
    turns of the loop: the same reasons and counts as the task runs' own."""
    from headwater import Client, ServerError
    from headwater_runtime.server import _waiting

    async def body(channel: grpc.aio.Channel, running: RunningServer) -> None:
        address = f"127.0.0.1:{running.port}"

        def look() -> tuple[list[Any], dict[tuple[str, str], int], list[Any]]:
            with Client(address) as client:
                run = client.run(waits_wide, {"xs": list(range(40))})
                grouped = client.waiting(run.id)
                every = client.get(run.id, include_task_runs=True).task_runs
                counted: dict[tuple[str, str], int] = {}
                for t in every:
                    if t.waiting:
                        counted[(t.task_id, t.waiting)] = counted.get((t.task_id, t.waiting), 0) + 1
                client.cancel(run.id)
                after = client.waiting(run.id)
                with pytest.raises(ServerError) as missing:
                    client.waiting("no-such-run")
                assert missing.value.code is grpc.StatusCode.NOT_FOUND
                return grouped, counted, after

        with mock.patch.object(_waiting, "REASONS_TURN", 7):  # several turns
            grouped, counted, after = await asyncio.to_thread(look)
        by_task = {w.task_id: w for w in grouped}
        assert sorted(by_task) == ["enrich", "lonely"], grouped  # (gather is not ready)
        enriching, alone = by_task["enrich"], by_task["lonely"]
        assert (enriching.count, enriching.first_key) == (40, "enrich[0]")
        assert (alone.count, alone.first_key) == (1, "lonely")
        assert enriching.reason.startswith("waiting: no connected worker offers "), grouped
        assert {(w.task_id, w.reason): w.count for w in grouped} == counted
        assert after == []  # cancelled: nothing waits

    against_server(tmp_path, body)
