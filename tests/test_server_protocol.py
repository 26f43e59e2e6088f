"""The control plane over real gRPC channels: a flow run end to end with an in-test
worker speaking the worker protocol, bad input answered with the right status codes,
auth, health. (tests/test_worker.py covers the SDK's real worker.)"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_run_manager import (
    FUNCTIONS,
    cached_rows,
    decode_input,
    numbers,
    scale,
    total,
    value_of,
)

from headwater import flow, task, unmapped
from headwater._flow import Flow
from headwater.v1 import (
    control_plane_pb2 as cp,
)
from headwater.v1 import (
    control_plane_pb2_grpc,
    graph_pb2,
    operations_pb2,
    operations_pb2_grpc,
    run_pb2,
    worker_pb2,
    worker_pb2_grpc,
)
from headwater.wire import (
    MAX_NESTING_CEILING,
    FlowRunState,
    TaskRunState,
    decode_value,
    seconds,
    timestamp,
)
from headwater_runtime.server._app import RunningServer, start_server
from headwater_runtime.server._core import ServerSettings

TOKEN = "t0ken"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


@flow
def proto_pipeline(n: int = 3, factor: int = 10) -> dict[str, Any]:
    scaled = scale.map(numbers(n), unmapped(factor))
    return {"scaled": scaled, "total": total(scaled)}


FUNCS = FUNCTIONS


@contextlib.asynccontextmanager
async def serving(db: str, **settings: Any) -> AsyncIterator[RunningServer]:
    """An in-process server on an ephemeral port, stopped on the way out; ``db`` is the
    ``db`` fixture (SQLite or PostgreSQL: every test here runs on both)."""
    running = await start_server(ServerSettings(port=0, db=db, **settings))
    try:
        yield running
    finally:
        await asyncio.wait_for(running.stop(None), 30)


def run_against_server(
    db: str, body: Callable[[grpc.aio.Channel], Awaitable[Any]], token: str | None = TOKEN
) -> Any:
    async def main() -> Any:
        # The in-test worker sends no heartbeats: keep the loss window out of reach.
        async with (
            serving(db, token=token, heartbeat_interval=0.5, heartbeat_timeout=3600.0) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            return await asyncio.wait_for(body(channel), 60)

    return asyncio.run(main())


async def fake_worker(channel: grpc.aio.Channel, stop: asyncio.Event, slots: int = 2) -> int:
    """A minimal worker: Hello, then run every assignment with the test's functions."""
    stub = worker_pb2_grpc.WorkerGatewayServiceStub(channel)
    outbox: asyncio.Queue[worker_pb2.ConnectRequest | None] = asyncio.Queue()
    hello = worker_pb2.Hello(
        worker_id="fake", name="fake", protocol_version=1, capabilities=list(FUNCS), slots=slots
    )
    await outbox.put(worker_pb2.ConnectRequest(hello=hello))

    async def requests() -> AsyncIterator[worker_pb2.ConnectRequest]:
        while (item := await outbox.get()) is not None:
            yield item

    call = stub.Connect(requests(), metadata=AUTH)
    done = 0
    most_running = running = 0
    async for response in call:
        if response.HasField("batch"):  # never sent: this worker's Hello lists no features
            raise AssertionError("the server sent a batch to a worker that cannot read one")
        if response.HasField("assignment"):
            a = response.assignment
            running += 1
            most_running = max(most_running, running)
            assert most_running <= slots, "the server exceeded the worker's slots"
            args = {name: decode_input(v) for name, v in a.inputs.items()}
            value = value_of(FUNCS[a.task_type](**args), a.split_result)
            running -= 1  # the slot is free once the result is sent
            # Started and result in one batch message (the server applies them in order).
            batch = worker_pb2.ConnectRequestBatch(
                messages=[
                    worker_pb2.ConnectRequest(started=worker_pb2.TaskStarted(token=a.token)),
                    worker_pb2.ConnectRequest(
                        result=worker_pb2.TaskResult(token=a.token, result=value)
                    ),
                ]
            )
            await outbox.put(worker_pb2.ConnectRequest(batch=batch))
        elif response.HasField("ack"):
            assert response.ack.accepted, response.ack.reason
            done += 1
        if stop.is_set():
            break
    await outbox.put(None)
    call.cancel()
    return done


@contextlib.asynccontextmanager
async def served(
    db: str, **settings: Any
) -> AsyncIterator[
    tuple[RunningServer, grpc.aio.Channel, control_plane_pb2_grpc.ControlPlaneServiceStub]
]:
    """``serving`` with the test token and no loss window (the in-test worker sends no
    heartbeats), a channel to it and a ControlPlane client on that channel."""
    async with (
        serving(db, token=TOKEN, heartbeat_timeout=3600.0, **settings) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        yield running, channel, control_plane_pb2_grpc.ControlPlaneServiceStub(channel)


def start_worker(channel: grpc.aio.Channel) -> Callable[[], None]:
    """The in-test worker (``fake_worker``) on ``channel``; what it returns stops it."""
    stop = asyncio.Event()
    worker = asyncio.create_task(fake_worker(channel, stop))

    def stopped() -> None:
        stop.set()
        worker.cancel()

    return stopped


def test_a_flow_runs_end_to_end_through_the_server(db: str) -> None:
    async def body(channel: grpc.aio.Channel) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        registered = await client.RegisterFlow(
            cp.RegisterFlowRequest(graph=proto_pipeline.compile()), metadata=AUTH
        )
        assert (registered.version, registered.created) == ("1", True)
        created = await client.CreateFlowRun(
            cp.CreateFlowRunRequest(
                flow_name="proto_pipeline", parameters={"n": value_of(5)}, idempotency_key="k1"
            ),
            metadata=AUTH,
        )
        run_id = created.flow_run.id
        again = await client.CreateFlowRun(
            cp.CreateFlowRunRequest(
                flow_name="proto_pipeline", parameters={"n": value_of(5)}, idempotency_key="k1"
            ),
            metadata=AUTH,
        )
        assert (again.flow_run.id, again.created) == (run_id, False)
        # The same key with other parameters is refused, naming the run it belongs to.
        code, details = await status_of(
            client.CreateFlowRun(
                cp.CreateFlowRunRequest(flow_name="proto_pipeline", idempotency_key="k1"),
                metadata=AUTH,
            )
        )
        assert code == grpc.StatusCode.ALREADY_EXISTS and run_id in details
        stop = asyncio.Event()
        only_flow = client.WatchFlowRun(
            cp.WatchFlowRunRequest(id=run_id, flow_run_only=True), metadata=AUTH
        )
        assert (await only_flow.read()).flow_run.state == 3  # subscribed while RUNNING
        # The full watch answers its first message once it is subscribed: only then
        # may a worker change anything (else a change could come before it).
        watch = client.WatchFlowRun(cp.WatchFlowRunRequest(id=run_id), metadata=AUTH)
        first = await watch.read()
        worker = asyncio.create_task(fake_worker(channel, stop))
        states = [first.flow_run.state]
        task_states: dict[str, list[int]] = {}
        while (change := await watch.read()) is not grpc.aio.EOF:
            states.append(change.flow_run.state)
            if change.HasField("task_run"):
                task_states.setdefault(change.task_run.name, []).append(change.task_run.state)
        stop.set()
        assert states[-1] == 4  # FLOW_RUN_STATE_SUCCESS
        # A flow-run-only watch gets just the end: no task run changes.
        rest = []
        while (change := await only_flow.read()) is not grpc.aio.EOF:
            rest.append(change)
        assert [(c.flow_run.state, c.HasField("task_run")) for c in rest] == [(4, False)]
        # Every transition once, in order: SCHEDULED, RUNNING, SUCCESS.
        assert task_states["scale[3]"] == [2, 3, 5]
        got = await client.GetFlowRun(
            cp.GetFlowRunRequest(id=run_id, include_task_runs=True), metadata=AUTH
        )
        assert decode_value(got.flow_run.result) == {"scaled": [0, 10, 20, 30, 40], "total": 100}
        by_name = {t.name: t for t in got.task_runs}
        assert by_name["scale"].state == 12  # MAPPED
        assert [h.state for h in by_name["scale[3]"].history][-3:] == [2, 3, 5]
        result = await client.GetTaskRunResult(
            cp.GetTaskRunResultRequest(flow_run_id=run_id, task_id="scale", map_index=-1),
            metadata=AUTH,
        )
        assert decode_value(result.result) == [0, 10, 20, 30, 40]
        listed = await client.ListFlowRuns(cp.ListFlowRunsRequest(), metadata=AUTH)
        assert [r.id for r in listed.flow_runs] == [run_id]
        worker.cancel()

    run_against_server(db, body)


async def status_of(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


def test_bad_requests_get_clear_status_codes(db: str) -> None:
    async def body(channel: grpc.aio.Channel) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        cycle = graph_pb2.FlowGraph(
            name="loop",
            tasks=[
                graph_pb2.TaskNode(id="a", task_type="m.a", wait_for=["b"]),
                graph_pb2.TaskNode(id="b", task_type="m.b", wait_for=["a"]),
            ],
        )
        cases = [
            (
                client.RegisterFlow(cp.RegisterFlowRequest(graph=cycle), metadata=AUTH),
                grpc.StatusCode.INVALID_ARGUMENT,
                "cycle",
            ),
            (
                client.RegisterFlow(cp.RegisterFlowRequest(), metadata=AUTH),
                grpc.StatusCode.INVALID_ARGUMENT,
                "no graph",
            ),
            (
                client.CreateFlowRun(cp.CreateFlowRunRequest(flow_name="nope"), metadata=AUTH),
                grpc.StatusCode.NOT_FOUND,
                "'nope'",
            ),
            (
                client.GetFlowRun(cp.GetFlowRunRequest(id="missing"), metadata=AUTH),
                grpc.StatusCode.NOT_FOUND,
                "'missing'",
            ),
            (
                client.CancelFlowRun(cp.CancelFlowRunRequest(id="missing"), metadata=AUTH),
                grpc.StatusCode.NOT_FOUND,
                "'missing'",
            ),
            (
                client.ListFlowRuns(cp.ListFlowRunsRequest(page_size=5000), metadata=AUTH),
                grpc.StatusCode.INVALID_ARGUMENT,
                "page_size",
            ),
            (
                client.CreateSchedule(cp.CreateScheduleRequest(), metadata=AUTH),
                grpc.StatusCode.INVALID_ARGUMENT,
                "no schedule",
            ),
        ]
        for call, code, fragment in cases:
            got, details = await status_of(call)
            assert (got, fragment in details) == (code, True), details
        await client.RegisterFlow(
            cp.RegisterFlowRequest(graph=proto_pipeline.compile()), metadata=AUTH
        )
        for params, fragment in [
            ({"zzz": value_of(1)}, "'zzz'"),
            ({"n": worker_pb2.Assignment().inputs.get_or_create("x").value}, "no value"),
        ]:
            got, details = await status_of(
                client.CreateFlowRun(
                    cp.CreateFlowRunRequest(flow_name="proto_pipeline", parameters=params),
                    metadata=AUTH,
                )
            )
            assert got == grpc.StatusCode.INVALID_ARGUMENT and fragment in details, details
        # The server still works after all that.
        info = await client.GetServerInfo(cp.GetServerInfoRequest(), metadata=AUTH)
        assert info.protocol_version == 1

    run_against_server(db, body)


def test_worker_streams_must_start_with_a_supported_hello(db: str) -> None:
    async def body(channel: grpc.aio.Channel) -> None:
        stub = worker_pb2_grpc.WorkerGatewayServiceStub(channel)

        async def first_only(msg: worker_pb2.ConnectRequest) -> AsyncIterator[Any]:
            yield msg
            await asyncio.sleep(30)  # keep the stream open; the server must end it

        async def drain(msg: worker_pb2.ConnectRequest) -> None:
            async for _ in stub.Connect(first_only(msg), metadata=AUTH):
                pass

        heartbeat = worker_pb2.ConnectRequest(heartbeat=worker_pb2.Heartbeat())
        code, details = await status_of(drain(heartbeat))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "Hello" in details
        future = worker_pb2.Hello(worker_id="w", protocol_version=99, capabilities=["x"], slots=1)
        code, details = await status_of(drain(worker_pb2.ConnectRequest(hello=future)))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "version 99" in details
        # Each field that is wrong is named (a worker the server cannot use is refused).
        ok: dict[str, Any] = {"worker_id": "w", "protocol_version": 1, "slots": 1}
        for fields, fragment in [
            ({"capabilities": ["x"], "slots": 0}, "Hello.slots must be at least 1, got 0"),
            ({"worker_id": "", "capabilities": ["x"]}, "Hello needs a worker_id"),
            ({}, "Hello needs at least one capability (a task type the worker runs)"),
            ({"capabilities": ["x", ""]}, "Hello.capabilities has an empty task type"),
            (
                {"capabilities": ["x"], "labels": {"": "gpu"}},
                "Hello.labels has a label with an empty name",
            ),
            (
                {"capabilities": ["x"], "max_message_bytes": -1},
                "Hello.max_message_bytes must be 0 (gRPC's default) or more, got -1",
            ),
            (
                # (on PostgreSQL no worker's record could be stored after such a worker
                # connected: its slots overflowed the column, found by a fuzz)
                {"capabilities": ["x"], "slots": 2**32 - 1},
                "Hello.slots is 4294967295, over this server's limit max_worker_slots = "
                "100000 (raise it with --max-worker-slots or HEADWATER_MAX_WORKER_SLOTS)",
            ),
        ]:
            bad = worker_pb2.Hello(**{**ok, **fields})
            code, details = await status_of(drain(worker_pb2.ConnectRequest(hello=bad)))
            assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, fragment), fields
        # A name is shown in `headwater workers list`: no escape sequence may forge
        # what an operator reads, and no 3 MB name sits in the workers table.
        for name, fragment in [
            ("evil\x1b[2J\nw1  online  FAKE", "must not contain control characters"),
            ("w" * 300, "300 characters long (at most 200)"),
        ]:
            hello = worker_pb2.Hello(
                worker_id="w", name=name, protocol_version=1, capabilities=["x"], slots=1
            )
            code, details = await status_of(drain(worker_pb2.ConnectRequest(hello=hello)))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and fragment in details, details

    run_against_server(db, body)


def test_list_filters_that_match_nothing_by_mistake_are_refused(db: str) -> None:
    """A state number that is no state, an out-of-range timestamp or a page token the
    server never gave: INVALID_ARGUMENT naming it (OK with nothing, or NOT_FOUND)."""

    async def body(channel: grpc.aio.Channel) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        after = cp.ListFlowRunsRequest(states=[99])
        bad_time = cp.ListFlowRunsRequest()
        bad_time.created_after.nanos = -5
        for request, fragment in [
            (after, "states: 99 is not a flow run state (1..6)"),
            (bad_time, "created_after.nanos is out of range"),
            (cp.ListFlowRunsRequest(page_token="junk"), "page_token 'junk' is not one"),
        ]:
            code, details = await status_of(client.ListFlowRuns(request, metadata=AUTH))
            assert (code, fragment in details) == (grpc.StatusCode.INVALID_ARGUMENT, True), details

    run_against_server(db, body)


def test_token_is_required_but_health_is_open(db: str) -> None:
    async def body(channel: grpc.aio.Channel) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        code, _ = await status_of(client.ListFlows(cp.ListFlowsRequest()))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    run_against_server(db, body)


def test_a_stream_that_never_says_hello_is_dropped(db: str) -> None:
    """It stayed open as long as the client kept it; now it ends after the heartbeat
    timeout, as a silent worker's does."""

    async def main() -> None:
        async with (
            serving(db, heartbeat_interval=0.2, heartbeat_timeout=0.6) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            stub = worker_pb2_grpc.WorkerGatewayServiceStub(channel)

            async def nothing() -> AsyncIterator[worker_pb2.ConnectRequest]:
                await asyncio.sleep(30)
                yield worker_pb2.ConnectRequest()

            async def drain() -> None:
                async for _ in stub.Connect(nothing()):
                    pass

            code, details = await asyncio.wait_for(status_of(drain()), 20)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED, details
            assert details == "no Hello within 0.6s of connecting"

    asyncio.run(main())


def test_a_silent_worker_is_dropped_and_its_attempt_dispatched_again(db: str) -> None:
    async def main() -> None:
        async with (
            serving(db, heartbeat_interval=0.2, heartbeat_timeout=1.0) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
            await client.RegisterFlow(cp.RegisterFlowRequest(graph=proto_pipeline.compile()))
            created = await client.CreateFlowRun(
                cp.CreateFlowRunRequest(flow_name="proto_pipeline")
            )
            # A worker that takes an assignment and then goes silent (no heartbeats).
            stub = worker_pb2_grpc.WorkerGatewayServiceStub(channel)
            hello = worker_pb2.Hello(
                worker_id="silent", protocol_version=1, capabilities=list(FUNCS), slots=1
            )
            release = asyncio.Event()

            async def silent_requests() -> AsyncIterator[worker_pb2.ConnectRequest]:
                yield worker_pb2.ConnectRequest(hello=hello)
                await release.wait()

            silent = stub.Connect(silent_requests())
            got_assignment = False
            async for response in silent:  # ends when the server drops the worker
                got_assignment |= response.HasField("assignment")
            assert got_assignment
            release.set()
            stop = asyncio.Event()
            rescuer = asyncio.create_task(fake_worker_no_auth(channel, stop))
            final = None
            async for change in client.WatchFlowRun(cp.WatchFlowRunRequest(id=created.flow_run.id)):
                final = change.flow_run
            stop.set()
            rescuer.cancel()
            assert final is not None and final.state == 4
            got = await client.GetFlowRun(
                cp.GetFlowRunRequest(id=created.flow_run.id, include_task_runs=True)
            )
            numbers_run = next(t for t in got.task_runs if t.name == "numbers")
            assert numbers_run.attempts == 2  # lost once, dispatched again
            assert 4 not in [h.state for h in numbers_run.history]  # no retry was used

    asyncio.run(asyncio.wait_for(main(), 60))


async def fake_worker_no_auth(channel: grpc.aio.Channel, stop: asyncio.Event) -> int:
    global AUTH
    saved, AUTH = AUTH, ()
    try:
        return await fake_worker(channel, stop)
    finally:
        AUTH = saved


def test_hostile_bytes_do_not_crash_the_server_or_touch_the_store(db: str) -> None:
    import random

    rng = random.Random(7)
    methods = [
        m.name
        for m in cp.DESCRIPTOR.services_by_name["ControlPlaneService"].methods
        if not m.server_streaming
    ]

    async def body(channel: grpc.aio.Channel) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        await client.RegisterFlow(
            cp.RegisterFlowRequest(graph=proto_pipeline.compile()), metadata=AUTH
        )
        before = await client.ListFlows(cp.ListFlowsRequest(), metadata=AUTH)
        for name in methods:
            call = channel.unary_unary(
                f"/headwater.v1.ControlPlaneService/{name}",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            for _ in range(20):
                junk = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300)))
                try:
                    await call(junk, metadata=AUTH, timeout=10)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() not in (
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.UNKNOWN,
                    ), (name, exc.details())
        # Deeply nested input lists are refused cleanly (protobuf itself caps the depth
        # at 100; this one parses, but nests deeper than the server's max_nesting).
        nested = graph_pb2.Input(parameter="n")
        for _ in range(45):
            nested = graph_pb2.Input(list=graph_pb2.InputList(items=[nested]))
        bomb = graph_pb2.FlowGraph(
            name="bomb", tasks=[graph_pb2.TaskNode(id="a", task_type="m.a", inputs={"x": nested})]
        )
        code, details = await status_of(
            client.RegisterFlow(cp.RegisterFlowRequest(graph=bomb), metadata=AUTH)
        )
        assert (
            code == grpc.StatusCode.RESOURCE_EXHAUSTED
            and f"max_nesting = {MAX_NESTING_CEILING}" in details
        )
        info = await client.GetServerInfo(cp.GetServerInfoRequest(), metadata=AUTH)
        assert info.protocol_version == 1
        after = await client.ListFlows(cp.ListFlowsRequest(), metadata=AUTH)
        assert [f.name for f in after.flows] == [f.name for f in before.flows]

    run_against_server(db, body)


def test_a_watcher_subscribing_between_a_change_and_its_commit_is_woken(db: str) -> None:
    """WatchFlowRun reads the run after subscribing; a change the engine made before
    the subscription but committed after it must still wake the watcher."""

    async def main() -> None:
        async with serving(db) as running:
            core = running.core
            await core.register_flow(proto_pipeline.compile())
            row, _ = await core.create_run("proto_pipeline", "", {})
            await core.durable()
            core.runs.cancel(row.id, "changed in memory, not committed yet")
            queue = core.watch(row.id)
            assert running.store.get_flow_run(row.id).state == FlowRunState.RUNNING.value
            await core.durable()
            assert not queue.empty(), "the commit did not wake the late watcher"
            assert running.store.get_flow_run(row.id).state == FlowRunState.CANCELLED.value

    asyncio.run(main())


def turns_of(core: Any, failing: int = 0) -> list[int]:
    """Count the turns of ``core``'s timer loop (its calls of ``fire_timers``); the
    first ``failing`` of them raise OSError."""
    turns: list[int] = []
    real = core.runs.fire_timers

    def counted() -> None:
        turns.append(1)
        if len(turns) <= failing:
            raise OSError("disk full")
        real()

    core.runs.fire_timers = counted
    return turns


def wake_timer_loop(core: Any) -> None:
    """A timer due now (of a run that is gone: fire_timers drops it), and the touch
    that tells the timer loop."""
    core.runs._timers.append((core.clock.now() - 1.0, "gone"))
    core.touch()


def test_a_failing_tick_does_not_end_the_timer_loop(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        async with serving(db) as running:
            core = running.core
            turns = turns_of(core, failing=1)
            deadline = asyncio.get_running_loop().time() + 30
            while len(turns) < 3:
                assert asyncio.get_running_loop().time() < deadline, "the loop stopped"
                wake_timer_loop(core)
                await asyncio.sleep(0.01)
            assert core._background is not None and not core._background.done()

    asyncio.run(main())
    assert "timer loop failed" in caplog.text and "disk full" in caplog.text


def test_a_touch_wakes_the_timer_loop_only_for_what_is_due_before_its_wait_ends(
    db: str,
) -> None:
    """Every change of a run touches the server (two or three per one-task run); the
    timer loop turns for a touch only when something is now due before the end of
    its wait (a retry, a timeout), not to find nothing due; the touches of one turn
    of the event loop look at what is due once."""

    async def main() -> None:
        async with serving(db) as running:
            core = running.core
            turns = turns_of(core)
            for _ in range(10_000):
                if core._waits_until is not None:
                    break
                await asyncio.sleep(0)
            assert core._waits_until is not None, "the timer loop never waited"
            before = len(turns)
            for _ in range(50):
                core.touch()
                await asyncio.sleep(0)
            assert len(turns) - before < 5  # (woken at every touch: 50)
            # The touches of one turn of the event loop (a worker's batch of results)
            # share one look at what is due.
            looks: list[int] = []
            look = core._next_due
            core._next_due = lambda: looks.append(1) or look()
            for _ in range(100):
                core.touch()
            for _ in range(3):
                await asyncio.sleep(0)
            assert 1 <= len(looks) < 5  # (a look per touch: 100)
            wake_timer_loop(core)  # a timer due now wakes it
            for _ in range(10_000):
                if core.runs.next_timer_at is None:
                    break
                await asyncio.sleep(0)
            assert core.runs.next_timer_at is None, "the touch did not wake the timer loop"

    asyncio.run(main())


@task(timeout=0.3)
def sleepy() -> int:
    raise AssertionError("never called: the in-test worker runs nothing")


@flow
def sleepy_flow() -> int:
    return sleepy()


@task
def unhurried() -> int:
    raise AssertionError("never called: the in-test worker runs nothing")


@flow
def unhurried_flow() -> int:
    return unhurried()


async def sleepy_run(
    running: RunningServer, channel: grpc.aio.Channel, which: Flow[[], int] = sleepy_flow
) -> tuple[Any, asyncio.Queue[worker_pb2.ConnectRequest], Any]:
    """A run of ``which`` (sleepy_flow, or unhurried_flow: the same without a timeout)
    and an in-test worker's stream (its Hello sent): the run's row, the worker's outbox
    and its call."""
    running.core.runs.register_flow(which.compile())
    row, _ = running.core.runs.create_run(which.name, "", {})
    running.core.touch()
    outbox: asyncio.Queue[worker_pb2.ConnectRequest] = asyncio.Queue()
    hello = worker_pb2.Hello(
        worker_id="w",
        protocol_version=1,
        capabilities=[sleepy.task_type, unhurried.task_type],
        slots=1,
    )
    await outbox.put(worker_pb2.ConnectRequest(hello=hello))

    async def requests() -> AsyncIterator[worker_pb2.ConnectRequest]:
        while True:
            yield await outbox.get()

    return row, outbox, worker_pb2_grpc.WorkerGatewayServiceStub(channel).Connect(requests())


def test_the_server_timeout_cancels_and_a_crossing_failure_gets_a_stale_ack(
    db: str,
) -> None:
    """docs/worker-protocol.md §9: the server's timer runs from TaskStarted; when it
    fires first, the worker gets CancelTaskRun("timed out"), and a TaskFailure that
    crossed it is refused with an Ack naming the stale attempt and why."""

    async def main() -> None:
        async with (
            serving(db, heartbeat_interval=0.5, heartbeat_timeout=3600.0) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            row, outbox, call = await sleepy_run(running, channel)
            seen: list[str] = []
            async for response in call:
                kind = response.WhichOneof("message")
                seen.append(kind)
                if kind == "assignment":
                    token = response.assignment.token
                    assert response.assignment.timeout.ToTimedelta().total_seconds() == 0.3
                    started = worker_pb2.TaskStarted(token=token)
                    await outbox.put(worker_pb2.ConnectRequest(started=started))
                elif kind == "cancel":
                    assert response.cancel.reason == "timed out"
                    # This worker's own timer fired just as late: its report crosses.
                    report = worker_pb2.TaskFailure(token=token, timed_out=True)
                    await outbox.put(worker_pb2.ConnectRequest(failure=report))
                elif kind == "ack":
                    ack = response.ack
                    break
            call.cancel()
            assert seen == ["welcome", "assignment", "cancel", "ack"]
            assert (ack.token, ack.accepted) == (token, False)
            assert ack.reason == (
                "stale attempt 1 of task run 'sleepy': the attempt timed out; "
                "the flow run ended FAILED"
            )
            (stored,) = running.store.task_runs(row.id)
            assert stored.state == TaskRunState.TIMED_OUT.value
            # and a reader sees the failure as a timeout, not as any failure
            got = await control_plane_pb2_grpc.ControlPlaneServiceStub(channel).GetFlowRun(
                cp.GetFlowRunRequest(id=row.id, include_task_runs=True), metadata=AUTH
            )
            failure = got.task_runs[0].history[-1].failure
            assert (failure.type, failure.timed_out) == ("headwater.TaskTimeout", True)
            assert got.flow_run.state == FlowRunState.FAILED.value
            assert list(got.flow_run.failed_task_ids) == ["sleepy"]  # the task that failed it

    asyncio.run(asyncio.wait_for(main(), 60))


@flow
def wide_flow() -> list[list[int]]:
    return [numbers(i) for i in range(100)]


async def watched_wide_run(
    client: control_plane_pb2_grpc.ControlPlaneServiceStub,
) -> tuple[str, Any]:
    """A run of wide_flow (100 queued task runs) and a watch of it that has read its
    first response (it is subscribed)."""
    await client.RegisterFlow(cp.RegisterFlowRequest(graph=wide_flow.compile()), metadata=AUTH)
    created = await client.CreateFlowRun(
        cp.CreateFlowRunRequest(flow_name="wide_flow"), metadata=AUTH
    )
    run_id = created.flow_run.id
    watch = client.WatchFlowRun(cp.WatchFlowRunRequest(id=run_id), metadata=AUTH)
    await watch.read()
    return run_id, watch


def test_a_watch_reads_the_flow_run_once_for_the_changes_of_one_commit(db: str) -> None:
    """Cancelling a run of 100 queued task runs is one commit of 100 changes: the watch
    yields one response per task run, each with the flow run as that commit left it,
    read once (once per change, a watch of a 30,000-element map took 40 s to deliver
    its changes, for a run of 11 s: a user trial)."""

    async def main() -> None:
        async with (
            serving(db, token=TOKEN) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
            run_id, watch = await watched_wide_run(client)
            store = running.store
            reads: list[str] = []
            real = store.get_flow_run

            def counted(flow_run_id: str) -> Any:
                reads.append(flow_run_id)
                return real(flow_run_id)

            store.get_flow_run = counted  # type: ignore[method-assign]
            await client.CancelFlowRun(cp.CancelFlowRunRequest(id=run_id), metadata=AUTH)
            changes = []
            while (change := await watch.read()) is not grpc.aio.EOF:
                changes.append(change)
            cancelled = FlowRunState.CANCELLED.value
            assert [c.task_run.state for c in changes] == [TaskRunState.CANCELLED.value] * 100
            assert len({c.task_run.id for c in changes}) == 100
            assert all(c.flow_run.state == cancelled for c in changes)
            # CancelFlowRun reads the run twice (to find it, to answer), the watch once.
            assert len(reads) <= 3, len(reads)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_watch_sees_the_task_runs_a_run_changed_off_the_loop(db: str) -> None:
    """A large run is worked on off the event loop when a wide result is expanded or
    the run is cancelled; the task runs changed there reach its watchers too, as they
    were when the run rejoined (a user trial: a 10,000-element map's children never
    showed SCHEDULED, and a cancelled 20,000-task run's CANCELLED never showed)."""

    async def main() -> None:
        async with served(db) as (running, channel, client):
            running.core.runs.collector.large = 3  # 5 mapped children: off the loop
            await client.RegisterFlow(
                cp.RegisterFlowRequest(graph=proto_pipeline.compile()), metadata=AUTH
            )
            created = await client.CreateFlowRun(
                cp.CreateFlowRunRequest(flow_name="proto_pipeline", parameters={"n": value_of(5)}),
                metadata=AUTH,
            )
            watch = client.WatchFlowRun(
                cp.WatchFlowRunRequest(id=created.flow_run.id), metadata=AUTH
            )
            await watch.read()  # subscribed
            stop_worker = start_worker(channel)
            states: dict[str, list[int]] = {}
            while (change := await watch.read()) is not grpc.aio.EOF:
                if change.HasField("task_run"):
                    states.setdefault(change.task_run.name, []).append(change.task_run.state)
            stop_worker()
            scheduled, running_, success = (
                TaskRunState.SCHEDULED.value,
                TaskRunState.RUNNING.value,
                TaskRunState.SUCCESS.value,
            )
            for i in range(5):
                assert states[f"scale[{i}]"] == [scheduled, running_, success], states
            assert states["scale"][-1] == TaskRunState.MAPPED.value
            assert states["numbers"][-1] == success  # (its result was expanded off the loop)

            # Cancelling a large run: every queued task run's CANCELLED is seen.
            run_id, watch = await watched_wide_run(client)
            await client.CancelFlowRun(cp.CancelFlowRunRequest(id=run_id), metadata=AUTH)
            cancelled = set()
            while (change := await watch.read()) is not grpc.aio.EOF:
                if change.task_run.state == TaskRunState.CANCELLED.value:
                    cancelled.add(change.task_run.id)
            assert len(cancelled) == 100

    asyncio.run(asyncio.wait_for(main(), 60))


def threads_of(owner: Any, method: str) -> list[str]:
    """The names of the threads ``owner.method`` runs on from now on (it is wrapped)."""
    import threading

    called: list[str] = []
    inner = getattr(owner, method)

    def recorded(*args: Any) -> Any:
        called.append(threading.current_thread().name)
        return inner(*args)

    setattr(owner, method, recorded)
    return called


async def end_of(client: control_plane_pb2_grpc.ControlPlaneServiceStub, run_id: str) -> Any:
    """The flow run as it ended (watched until its watch ends)."""
    watch = client.WatchFlowRun(
        cp.WatchFlowRunRequest(id=run_id, flow_run_only=True), metadata=AUTH
    )
    last = None
    while (change := await watch.read()) is not grpc.aio.EOF:
        last = change.flow_run
    return last


async def run_of(client: control_plane_pb2_grpc.ControlPlaneServiceStub, graph: Any) -> str:
    """Register ``graph`` and start a run of it: its id."""
    await client.RegisterFlow(cp.RegisterFlowRequest(graph=graph), metadata=AUTH)
    created = await client.CreateFlowRun(
        cp.CreateFlowRunRequest(flow_name=graph.name), metadata=AUTH
    )
    return str(created.flow_run.id)


async def with_task_runs(
    client: control_plane_pb2_grpc.ControlPlaneServiceStub, run_id: str
) -> Any:
    """GetFlowRun of ``run_id`` with its task runs."""
    return await client.GetFlowRun(
        cp.GetFlowRunRequest(id=run_id, include_task_runs=True), metadata=AUTH
    )


def flat_graph(name: str, n: int) -> graph_pb2.FlowGraph:
    """``n`` independent tasks of a type no worker offers (they stay queued)."""
    graph = graph_pb2.FlowGraph(name=name)
    for i in range(n):
        graph.tasks.add(id=f"t{i}", task_type="none.offers.this")
    return graph


def test_a_mid_size_result_makes_its_mapped_children_off_the_loop(db: str) -> None:
    """A result of fewer than 10,000 elements (Collector.large) made its mapped children
    on the event loop: a 5,000-element map stopped every other call for ~0.12 s in one
    callback, ~0.26 s for a cached task (a cache lookup each). From WIDE_RESULT
    elements on it is applied on a reader thread, the run set aside (and not counted as
    large); below that, on the loop as before. Both runs end with every child's result."""
    from headwater_runtime.server._aside import WIDE_RESULT

    async def main() -> None:
        async with served(db) as (running, channel, client):
            runs = running.core.runs
            applied = threads_of(runs, "handle_aside")
            counted_large = threads_of(runs.collector, "large_run_started")
            await client.RegisterFlow(
                cp.RegisterFlowRequest(graph=proto_pipeline.compile()), metadata=AUTH
            )
            stop_worker = start_worker(channel)
            for n in (WIDE_RESULT, WIDE_RESULT - 1):
                created = await client.CreateFlowRun(
                    cp.CreateFlowRunRequest(
                        flow_name="proto_pipeline", parameters={"n": value_of(n)}
                    ),
                    metadata=AUTH,
                )
                ended = await end_of(client, created.flow_run.id)
                assert ended.state == FlowRunState.SUCCESS.value
                got = await client.GetFlowRun(
                    cp.GetFlowRunRequest(id=created.flow_run.id), metadata=AUTH
                )
                assert decode_value(got.flow_run.result)["total"] == 10 * n * (n - 1) // 2
            stop_worker()
            (only,) = applied  # the first run's result; not the second's
            assert only.startswith("headwater-store-reader")
            assert counted_large == []

    asyncio.run(asyncio.wait_for(main(), 60))


@flow
def cached_after(n: int = 3) -> int:
    # cached_rows is no root task: its cache is looked up once total has ended.
    return total(scale.map(cached_rows(total(numbers(n))), unmapped(2)))


async def start_cached_after(client: control_plane_pb2_grpc.ControlPlaneServiceStub) -> str:
    """Start a run of ``cached_after`` (registered) whose cached_rows makes 136 rows
    (total(numbers(17))): its id."""
    created = await client.CreateFlowRun(
        cp.CreateFlowRunRequest(flow_name="cached_after", parameters={"n": value_of(17)}),
        metadata=AUTH,
    )
    return str(created.flow_run.id)


async def cached_after_end(
    client: control_plane_pb2_grpc.ControlPlaneServiceStub, run_id: str
) -> tuple[Any, TaskRunState]:
    """A ``cached_after`` run, once it ended SUCCESS: its result and its cached_rows
    task run's state."""
    ended = await end_of(client, run_id)
    assert ended.state == FlowRunState.SUCCESS.value, ended.message
    got = await with_task_runs(client, run_id)
    (rows,) = [t for t in got.task_runs if t.task_id == "cached_rows"]
    return decode_value(got.flow_run.result), TaskRunState(rows.state)


def test_a_cache_hit_of_a_task_that_is_no_root_is_looked_up_and_applied_off_the_loop(
    db: str,
) -> None:
    """A cached task that waits for another is looked up when that one ends: the store
    reads were made on the event loop, and a hit's mapped children too (a hit of a
    100,000-element list held every other call for seconds). The lookup is made on a
    reader thread; a hit a map makes WIDE_RESULT children of or more is applied on one,
    its run set aside, as a worker's wide result."""

    async def main() -> None:
        async with served(db) as (running, channel, client):
            runs = running.core.runs
            looked_up = threads_of(runs, "check_cache")
            applied = threads_of(runs, "handle_aside")
            await client.RegisterFlow(
                cp.RegisterFlowRequest(graph=cached_after.compile()), metadata=AUTH
            )
            stop_worker = start_worker(channel)
            ends = []
            for _ in range(2):  # 136 rows, doubled, summed
                ends.append(await cached_after_end(client, await start_cached_after(client)))
            stop_worker()
            assert ends == [(136 * 135, TaskRunState.SUCCESS), (136 * 135, TaskRunState.CACHED)]
            assert len(looked_up) == 2  # a miss, then the hit
            assert all(name.startswith("headwater-store-reader") for name in looked_up)
            # The first run's worker result, then the second's hit: both off the loop.
            assert len(applied) == 2
            assert all(name.startswith("headwater-store-reader") for name in applied)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_wide_cache_hit_whose_run_is_worked_on_off_the_loop_waits_until_it_rejoins(
    db: str,
) -> None:
    """A lookup that comes back while its run is set aside (a timer, a retry, another
    wide result) is applied once the run rejoins, and a wide hit then still off the
    loop (applied as the run's waiting call, its children were made on the loop)."""
    import threading

    async def main() -> None:
        async with served(db) as (running, channel, client):
            runs = running.core.runs
            looking, may_answer = threading.Event(), threading.Event()
            look_up = runs.check_cache

            def held_lookup(command: Any, split: Any) -> Any:
                looking.set()
                assert may_answer.wait(30)
                return look_up(command, split)

            runs.check_cache = held_lookup  # type: ignore[method-assign]
            applied = threads_of(runs, "handle_aside")
            await client.RegisterFlow(
                cp.RegisterFlowRequest(graph=cached_after.compile()), metadata=AUTH
            )
            stop_worker = start_worker(channel)
            ends = []
            for first in (True, False):
                may_answer.set() if first else may_answer.clear()
                looking.clear()
                run_id = await start_cached_after(client)
                if not first:  # the hit's lookup is under way: the run goes aside
                    assert await asyncio.to_thread(looking.wait, 30)
                    active = runs.set_aside(run_id, expanding=1)
                    assert active is not None
                    may_answer.set()
                    for _ in range(3000):  # until the lookup's outcome waits for the run
                        if runs._aside.get(run_id):
                            break
                        await asyncio.sleep(0.01)
                    assert runs._aside.get(run_id), "the lookup did not come back"
                    assert len(applied) == 1  # (the first run's result): the hit waits
                    runs.rejoin(active)
                ends.append(await cached_after_end(client, run_id))
            stop_worker()
            assert ends == [(136 * 135, TaskRunState.SUCCESS), (136 * 135, TaskRunState.CACHED)]
            assert len(applied) == 2  # the hit too, after the rejoin
            assert all(name.startswith("headwater-store-reader") for name in applied)

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_cache_lookup_the_server_stopped_before_is_made_when_the_run_resumes(
    db: str,
) -> None:
    """The outcome of a lookup made off the loop is stored once it is applied: a server
    that stopped first has a task run SCHEDULED with no lookup under way. Resumed, the
    run looks it up again (FlowRunEngine.pending_cache_checks) and ends."""

    async def main() -> str:
        async with served(db) as (running, channel, client):
            held = asyncio.Event()
            # (Never applied: as if the server stopped during the lookup.)
            running.core.runs.check_cache_later = lambda run_id, command, split: held.set()
            run_id = await run_of(client, cached_after.compile())
            stop_worker = start_worker(channel)
            await held.wait()
            await running.core.durable()
            stop_worker()
            got = await with_task_runs(client, run_id)
            rows = {t.task_id: TaskRunState(t.state) for t in got.task_runs}
            assert rows["cached_rows"] is TaskRunState.SCHEDULED
            assert rows["total"] is TaskRunState.SUCCESS  # (the first total: no map yet)
        async with served(db) as (running, channel, client):
            stop_worker = start_worker(channel)
            ended = await end_of(client, run_id)
            stop_worker()
            assert ended.state == FlowRunState.SUCCESS.value, ended.message
            got = await client.GetFlowRun(cp.GetFlowRunRequest(id=run_id), metadata=AUTH)
            assert decode_value(got.flow_run.result) == 3 * 2  # rows [0, 1, 2], doubled
        return run_id

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_run_of_a_thousand_task_runs_is_cancelled_off_the_loop(db: str) -> None:
    """Below 10,000 task runs (a large run) a cancel ran on the event loop: a 9,000-task
    run's held it ~0.1 s in one callback (asyncio's slow-callback log). From
    CANCEL_ASIDE task runs on it runs on a reader thread, the run set aside; below, on
    the loop as before. Either way every task run ends CANCELLED, and so does the run."""
    from headwater_runtime.server._aside import CANCEL_ASIDE

    async def main() -> None:
        async with served(db) as (running, _, client):
            threads = threads_of(running.core.runs, "cancel_aside")
            for n in (CANCEL_ASIDE, CANCEL_ASIDE - 1):
                run_id = await run_of(client, flat_graph(f"flat{n}", n))
                await client.CancelFlowRun(cp.CancelFlowRunRequest(id=run_id), metadata=AUTH)
                got = await with_task_runs(client, run_id)
                assert got.flow_run.state == FlowRunState.CANCELLED.value
                states = {t.state for t in got.task_runs}
                assert (len(got.task_runs), states) == (n, {TaskRunState.CANCELLED.value})
            (only,) = threads  # the first run's cancel; not the second's
            assert only.startswith("headwater-store-reader")

    asyncio.run(asyncio.wait_for(main(), 60))


def test_the_timeout_of_a_run_of_a_thousand_task_runs_fires_off_the_loop(db: str) -> None:
    """A run's timeout cancels every unfinished task run; it fired on the event loop
    for every run (a 20,000-task run's held the loop 0.13 s in one callback). From
    CANCEL_ASIDE task runs on, a run's due timers are fired on a reader thread, the run
    set aside; it ends FAILED with the timeout's message, every task run CANCELLED."""
    from headwater_runtime.server._aside import CANCEL_ASIDE

    async def main() -> None:
        async with served(db) as (running, channel, client):
            runs = running.core.runs
            threads = threads_of(runs, "fire_timers_aside")
            graph = flat_graph("timed", CANCEL_ASIDE)
            graph.timeout.FromMilliseconds(300)
            run_id = await run_of(client, graph)
            assert (await end_of(client, run_id)).state == FlowRunState.FAILED.value
            got = await with_task_runs(client, run_id)
            assert {t.state for t in got.task_runs} == {TaskRunState.CANCELLED.value}
            why = {t.history[-1].message for t in got.task_runs}
            assert why == {"the flow run exceeded its timeout of 0.3s"}, why
            assert threads and all(t.startswith("headwater-store-reader") for t in threads)
            assert run_id not in running.core.dispatcher._queued  # all dropped

            # Its retry (every task run scheduled again) is made off the loop too (a
            # 20,000-task run's held the loop 0.38 s), and the run times out again.
            retried = threads_of(runs, "retry_aside")
            ops = operations_pb2_grpc.OperationsServiceStub(channel)
            await ops.RetryFlowRun(
                operations_pb2.RetryFlowRunRequest(id=run_id, reason="again"),
                metadata=AUTH,
            )
            got = await with_task_runs(client, run_id)
            assert got.flow_run.state == FlowRunState.RUNNING.value
            assert {t.state for t in got.task_runs} == {TaskRunState.SCHEDULED.value}
            (only,) = retried
            assert only.startswith("headwater-store-reader")
            assert (await end_of(client, run_id)).state == FlowRunState.FAILED.value

    asyncio.run(asyncio.wait_for(main(), 60))


def test_attempts_past_their_start_timeout_fail_a_few_hundred_a_turn(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every attempt no worker took within its schedule_to_start_timeout failed in one
    turn of the timer loop: 20,000 at once held the loop 0.28 s (asyncio's
    slow-callback log). Now at most EXPIRE_PER_TURN a turn (here 10, for 35 attempts),
    the next turn at once: every one still fails, never started, and the run ends."""
    from headwater_runtime.server import _core

    monkeypatch.setattr(_core, "EXPIRE_PER_TURN", 10)

    async def main() -> None:
        async with served(db) as (running, _, client):
            dispatcher = running.core.dispatcher
            turns: list[int] = []
            overdue = dispatcher.overdue

            def counted(now: float, at_most: int | None = None) -> Any:
                expired = overdue(now, at_most)
                if expired:
                    turns.append(len(expired))
                return expired

            dispatcher.overdue = counted  # type: ignore[method-assign]
            graph = flat_graph("unstarted", 35)
            for task in graph.tasks:
                task.schedule_to_start_timeout.FromMilliseconds(200)
            run_id = await run_of(client, graph)
            assert (await end_of(client, run_id)).state == FlowRunState.FAILED.value
            got = await with_task_runs(client, run_id)
            assert {t.state for t in got.task_runs} == {TaskRunState.FAILED.value}
            assert all(
                "schedule_to_start_timeout of 0.2s" in t.history[-1].message for t in got.task_runs
            )
            assert sum(turns) == 35 and max(turns) == 10, turns

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_run_worked_on_off_the_loop_when_it_is_due_late_is_checked_once_it_rejoins(
    db: str,
) -> None:
    """The late check scans the run's task runs on the loop; a run set aside at that
    moment has its engine changed on a reader thread (a wide result, a cancel, a timer,
    a retry), so it is checked when it rejoins: marked late then, not skipped."""

    async def main() -> None:
        async with served(db, late_after=0.2) as (running, _, client):
            run_id = await run_of(client, flat_graph("unoffered", 3))
            runs = running.core.runs
            runs.collector.large = 1  # (a 3-task run may be set aside)
            active = runs.set_aside(run_id, working=True)
            assert active is not None
            await asyncio.sleep(0.6)  # its late time passes while it is aside

            async def late() -> bool:
                got = await client.GetFlowRun(cp.GetFlowRunRequest(id=run_id), metadata=AUTH)
                return bool(got.flow_run.late_reason)

            assert not await late()
            runs.rejoin(active)
            running.core.touch()
            for _ in range(100):
                if await late():
                    break
                await asyncio.sleep(0.05)
            assert await late()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_watcher_that_stops_reading_holds_about_one_note_per_task_run(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watcher that never reads (a client stalled behind flow control) makes the
    server keep a bounded backlog, not every change: with a backlog of 50, 100 task
    runs each scheduled, started and finished (300 changes) leave at most 2 x 101
    notes, and what the watcher reads at last is each task run's final state once."""
    from headwater_runtime.server import _core

    monkeypatch.setattr(_core, "WATCH_BACKLOG", 50)

    async def main() -> None:
        async with served(db) as (running, channel, client):
            core = running.core
            await core.register_flow(wide_flow.compile())
            row, _ = await core.create_run("wide_flow", "", {})
            queue = core.watch(row.id)
            # Another watcher, over gRPC, reads to the end while this one stalls.
            reader = client.WatchFlowRun(cp.WatchFlowRunRequest(id=row.id), metadata=AUTH)
            stop_worker = start_worker(channel)
            last = None
            while (change := await reader.read()) is not grpc.aio.EOF:
                last = change
            assert last is not None and last.flow_run.state == FlowRunState.SUCCESS.value
            stop_worker()
            notes = []
            while not queue.empty():
                notes.append(queue.get_nowait())
            assert len(notes) <= 2 * 101, len(notes)
            final = {n.id: n.state for n in notes if n is not None}  # (the newest wins)
            assert len(final) == 100 and set(final.values()) == {TaskRunState.SUCCESS.value}
            last_of = {n.id: i for i, n in enumerate(notes) if n is not None}
            assert all(notes[i].state == TaskRunState.SUCCESS.value for i in last_of.values())

            # However many changes a commit delivers, the backlog stays bounded.
            from headwater_runtime.server._commits import Release

            changes = [
                (row.id, run_pb2.TaskRun(id=f"{row.id}/t{i % 10}", state=i % 7))
                for i in range(5000)
            ]
            core._deliver(Release(notes=changes))
            assert queue.qsize() <= max(50, 2 * 10), queue.qsize()
            newest = {n.id: n.state for n in (queue.get_nowait() for _ in range(queue.qsize()))}
            assert newest == {f"{row.id}/t{i}": (4990 + i) % 7 for i in range(10)}

    asyncio.run(asyncio.wait_for(main(), 60))


def test_coalescing_queues_collapse_a_backlog_to_the_newest_per_key_and_merge_sets() -> None:
    from headwater_runtime.server._notices import LatestPerKey, MergedSets, Notices

    def key(note: tuple[str, int] | None) -> str | None:
        return None if note is None else note[0]

    async def main() -> None:
        # Within the backlog every item is kept, in order.
        kept: LatestPerKey[tuple[str, int] | None] = LatestPerKey(key, backlog=10)
        for note in [("a", 1), ("a", 2), None, None]:
            kept.put_nowait(note)
        assert [kept.get_nowait() for _ in range(4)] == [("a", 1), ("a", 2), None, None]
        # Over it, the pending items collapse to the newest per key, in the order of
        # each key's newest put.
        latest: LatestPerKey[tuple[str, int] | None] = LatestPerKey(key, backlog=4)
        for note in [("a", 1), ("b", 1), None, ("a", 2), None]:
            latest.put_nowait(note)
        assert [latest.get_nowait() for _ in range(3)] == [("b", 1), ("a", 2), None]
        # However long the reader stalls, 3 keys never hold more than the backlog or
        # twice their number; what it reads at last ends with each key's newest.
        for i in range(1000):
            latest.put_nowait((("x", "y", "z")[i % 3], i))
            assert latest.qsize() <= max(4, 2 * 3)
        drained = [latest.get_nowait() for _ in range(latest.qsize())]
        assert drained[-3:] == [("y", 997), ("z", 998), ("x", 999)]
        # A getter waiting is woken by a put.
        waiting = asyncio.create_task(latest.get())
        await asyncio.sleep(0)
        latest.put_nowait(("d", 1))
        assert await asyncio.wait_for(waiting, 5) == ("d", 1)

        merged: MergedSets[str] = MergedSets()
        given = {"r1"}
        merged.put_nowait(given)
        merged.put_nowait({"r2"})
        merged.put_nowait({"r1", "r3"})
        assert merged.qsize() == 1 and given == {"r1"}  # (the caller's set is not touched)
        assert merged.get_nowait() == {"r1", "r2", "r3"}
        assert merged.empty()
        # The live views' subscriptions are such queues: a stalled browser costs one set.
        notices = Notices()
        runs = notices.subscribe_runs()
        for i in range(1000):
            notices.runs_changed({f"run{i % 5}"})
        assert runs.qsize() == 1 and runs.get_nowait() == {f"run{i}" for i in range(5)}

    asyncio.run(asyncio.wait_for(main(), 10))


def test_grpc_s_error_for_a_response_to_a_peer_that_went_away_is_not_logged() -> None:
    """gRPC logs an ERROR traceback (ExecuteBatchError) when a response cannot be sent
    because the client hung up (a stalled watcher that then disconnects: a user trial
    saw one per watcher); the server drops that record, and only that one."""
    import logging
    import sys

    from grpc._cython import cygrpc

    import headwater_runtime.server._app  # noqa: F401 (installs the filter)

    logger = logging.getLogger("grpc._cython.cygrpc")

    def record(error: BaseException) -> logging.LogRecord:
        try:
            raise error
        except BaseException:
            info = sys.exc_info()
        return logger.makeRecord(
            logger.name, logging.ERROR, __file__, 1, "raised by servicer method", (), info
        )

    gone = cygrpc.ExecuteBatchError('Failed "execute_batch": (SendMessageOperation,)')
    assert not logger.filter(record(gone))
    assert logger.filter(record(RuntimeError("a servicer's own bug")))


@pytest.mark.parametrize("clock", ["same", "ahead", "outcome-only"])
def test_a_task_runs_running_time_is_its_workers_reported_start(db: str, clock: str) -> None:
    """TaskStarted.started_at is the task run's RUNNING time (docs/worker-protocol.md,
    TaskStarted): the Python worker reports a start 50 ms late, and every task's time
    on a server showed 50 ms short (a 1 s sleep as 0.95 s, a user trial). A worker's
    clock ahead of the server's gives the report's arrival instead. A short attempt's
    worker sends no TaskStarted: its result says when it started (it showed ~0 s)."""

    async def main() -> None:
        async with (
            serving(db, heartbeat_interval=0.5, heartbeat_timeout=3600.0) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            # A task without a timeout: sleepy's 0.3 s, counted from TaskStarted, could
            # pass before the server read the result on a loaded machine.
            row, outbox, call = await sleepy_run(running, channel, unhurried_flow)
            async for response in call:
                if response.HasField("assignment"):
                    token = response.assignment.token
                    began = time.time() + (3600.0 if clock == "ahead" else 0.0)
                    await asyncio.sleep(0.1)  # (it reports the start later, as workers do)
                    result = worker_pb2.TaskResult(token=token, result=value_of(1))
                    if clock == "outcome-only":
                        result.started_at.CopyFrom(timestamp(began))
                    else:
                        started = worker_pb2.TaskStarted(token=token, started_at=timestamp(began))
                        await outbox.put(worker_pb2.ConnectRequest(started=started))
                    await outbox.put(worker_pb2.ConnectRequest(result=result))
                elif response.HasField("ack"):
                    break
            call.cancel()
            got = await control_plane_pb2_grpc.ControlPlaneServiceStub(channel).GetFlowRun(
                cp.GetFlowRunRequest(id=row.id, include_task_runs=True), metadata=AUTH
            )
            at = {h.state: seconds(h.timestamp) for h in got.task_runs[0].history}
            running_at = at[TaskRunState.RUNNING.value]
            if clock != "ahead":
                assert abs(running_at - began) < 1e-6
                assert at[TaskRunState.SUCCESS.value] - running_at >= 0.1
            else:  # its arrival: after the 0.1 s the worker waited, before the result's
                assert running_at - at[TaskRunState.SCHEDULED.value] >= 0.1
                assert running_at <= at[TaskRunState.SUCCESS.value]

    asyncio.run(asyncio.wait_for(main(), 60))
