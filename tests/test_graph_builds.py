"""Graph builds over the worker protocol (docs/worker-protocol.md §16), against an
in-process server and in-test workers: who is asked, what is sent, and what each
answer (a graph, an error, silence, leaving) means for the run's creator."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from headwater import flow, task
from headwater._graphs import compile_graph
from headwater.v1 import control_plane_pb2 as cp
from headwater.v1 import control_plane_pb2_grpc, payload_pb2, state_pb2, worker_pb2, worker_pb2_grpc
from headwater.wire import GRAPH_BUILDS, Limits, decode_value, encode
from headwater_runtime.server._app import RunningServer, start_server
from headwater_runtime.server._core import ServerSettings


@task
def double(x: int) -> int:
    return 2 * x


@flow
def doubled(n: int) -> list[int]:
    return [double(i) for i in range(n)]


def value(obj: Any) -> payload_pb2.Value:
    encoded = encode(obj)
    return payload_pb2.Value(
        inline=payload_pb2.Payload(data=encoded.data, metadata=encoded.metadata)
    )


def built(request: worker_pb2.BuildGraph) -> worker_pb2.GraphBuilt:
    """What the Python worker answers: the graph for the converted values."""
    given = doubled.validate(**{k: decode_value(v) for k, v in request.parameters.items()})
    graph, params = compile_graph(doubled, given, doubled.complete(given))
    return worker_pb2.GraphBuilt(build_id=request.build_id, graph=graph, parameters=params)


Answer = Callable[[worker_pb2.BuildGraph], worker_pb2.GraphBuilt | None]


class Builder:
    """An in-test worker that offers flow 'doubled' and answers BuildGraph with
    ``answer`` (None: never answers)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        name: str,
        answer: Answer,
        *,
        feature: bool = True,
        metadata: tuple[tuple[str, str], ...] = (),
        digest: str = "",
    ):
        self.requests: list[worker_pb2.BuildGraph] = []
        self.outbox: asyncio.Queue[worker_pb2.ConnectRequest | None] = asyncio.Queue()
        self.welcomed = asyncio.Event()
        hello = worker_pb2.Hello(
            worker_id=name,
            name=name,
            protocol_version=1,
            capabilities=[double.task_type],
            slots=1,
            features=[GRAPH_BUILDS] if feature else [],
            flows=[worker_pb2.FlowOffer(name="doubled", code_digest=digest or doubled.code_digest)],
        )
        self.outbox.put_nowait(worker_pb2.ConnectRequest(hello=hello))
        stub = worker_pb2_grpc.WorkerGatewayServiceStub(channel)
        self.call = stub.Connect(self._requests(), metadata=metadata)
        self.task = asyncio.get_running_loop().create_task(self._serve(answer))

    async def _requests(self) -> AsyncIterator[worker_pb2.ConnectRequest]:
        while (item := await self.outbox.get()) is not None:
            yield item

    async def _serve(self, answer: Answer) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for response in self.call:
                if response.HasField("welcome"):
                    self.welcomed.set()
                if response.HasField("build_graph"):
                    self.requests.append(response.build_graph)
                    reply = answer(response.build_graph)
                    if reply is not None:
                        await self.outbox.put(worker_pb2.ConnectRequest(graph_built=reply))

    async def leave(self) -> None:
        await self.outbox.put(None)
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@contextlib.asynccontextmanager
async def server(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[RunningServer, Any, Any]]:
    running = await start_server(
        ServerSettings(port=0, db=str(tmp_path / "hw.db"), heartbeat_timeout=3600, **settings)
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            yield running, channel, control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
    finally:
        await asyncio.wait_for(running.stop(None), 30)


def run(body: Callable[[], Any]) -> Any:
    return asyncio.run(asyncio.wait_for(body(), 60))


def create(n: Any) -> cp.CreateFlowRunRequest:
    return cp.CreateFlowRunRequest(flow_name="doubled", parameters={"n": value(n)})


async def refused(control: Any, request: cp.CreateFlowRunRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await control.CreateFlowRun(request)
    return info.value


def test_a_run_by_name_gets_its_graph_built_by_the_newest_worker_offering_the_flow(
    tmp_path: Path,
) -> None:
    async def body() -> None:
        async with server(tmp_path) as (_, channel, control):
            older = Builder(channel, "older", built)
            await older.welcomed.wait()
            newer = Builder(channel, "newer", built)
            await newer.welcomed.wait()
            response = await control.CreateFlowRun(create("3"))
            assert older.requests == []
            (request,) = newer.requests
            assert request.flow_name == "doubled"
            assert decode_value(request.parameters["n"]) == "3"  # as given
            run = response.flow_run
            assert run.flow_version.startswith("@")
            assert decode_value(run.parameters["n"]) == 3  # as the worker converted it
            graph = await control.GetFlow(
                cp.GetFlowRequest(name="doubled", version=run.flow_version)
            )
            assert len(graph.graph.tasks) == 3 and graph.graph.value_dependent
            # The same values again: the stored build serves them, no new request.
            again = await control.CreateFlowRun(create(3))
            assert again.flow_run.flow_version == run.flow_version
            assert len(newer.requests) == 1
            await older.leave()
            await newer.leave()

    run(body)


def test_a_stored_build_of_other_code_than_the_workers_offer_is_built_again(
    tmp_path: Path,
) -> None:
    # A user trial: after the flow's body changed (its worker restarted with the new
    # code), a run by name with values built before ran the old body's graph.
    changed = "c" * 64

    def built_from_changed_code(request: worker_pb2.BuildGraph) -> worker_pb2.GraphBuilt:
        reply = built(request)
        reply.graph.code_digest = changed
        return reply

    async def body() -> None:
        async with server(tmp_path) as (_, channel, control):
            old = Builder(channel, "old", built)
            await old.welcomed.wait()
            first = (await control.CreateFlowRun(create(3))).flow_run
            graph = await control.GetFlow(
                cp.GetFlowRequest(name="doubled", version=first.flow_version)
            )
            assert graph.graph.code_digest == doubled.code_digest
            await old.leave()
            new = Builder(channel, "new", built_from_changed_code, digest=changed)
            await new.welcomed.wait()
            second = (await control.CreateFlowRun(create(3))).flow_run
            assert len(new.requests) == 1  # built again from the code it offers
            assert second.flow_version != first.flow_version
            third = (await control.CreateFlowRun(create(3))).flow_run
            assert third.flow_version == second.flow_version  # that build serves them now
            assert len(new.requests) == 1
            # A version asked for by name runs as it was built.
            pinned = create(3)
            pinned.flow_version = first.flow_version
            again = (await control.CreateFlowRun(pinned)).flow_run
            assert again.flow_version == first.flow_version
            assert len(new.requests) == 1
            # During a deploy, beside a builder of the old code, the newest builder's
            # code is the one run: a trial's schedule kept firing the old build while
            # the old worker stayed connected.
            old_again = Builder(channel, "old-again", built)
            await old_again.welcomed.wait()  # connected last: its (first) code is newest
            fourth = (await control.CreateFlowRun(create(3))).flow_run
            assert len(old_again.requests) == 1  # the latest build is of the other code
            assert fourth.flow_version == first.flow_version  # (the same graph again)
            await old_again.leave()
            # With no builder connected, no stored build is run: the code it would run
            # cannot be told (a trial's first fire after a restart ran an old build).
            await new.leave()
            error = await refused(control, create(3))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
            assert "no connected worker offers it" in (error.details() or ""), error
            again_pinned = (await control.CreateFlowRun(pinned)).flow_run  # by version: runs
            assert again_pinned.flow_version == first.flow_version

    run(body)


def test_what_each_answer_means_for_the_runs_creator(tmp_path: Path) -> None:
    def refuse(request: worker_pb2.BuildGraph) -> worker_pb2.GraphBuilt:
        error = state_pb2.Failure(
            type="headwater.ParameterError", message="flow 'doubled': parameter 'n' expects int"
        )
        return worker_pb2.GraphBuilt(build_id=request.build_id, error=error)

    def crash(request: worker_pb2.BuildGraph) -> worker_pb2.GraphBuilt:
        error = state_pb2.Failure(type="builtins.KeyError", message="'oops'")
        return worker_pb2.GraphBuilt(build_id=request.build_id, error=error)

    async def body() -> None:
        # The default build timeout (60 s) only bounds a hang here: a worker that
        # answers is never cut off, however slowly a loaded machine runs it (with the
        # silent worker's 0.5 s, an answer late by that much read as no answer).
        async with server(tmp_path) as (_, channel, control):
            # No worker at all: the flow is not registered.
            assert (await refused(control, create(1))).code() == grpc.StatusCode.NOT_FOUND
            # A worker that offers the flow but does not list the feature is not asked.
            mute = Builder(channel, "no-feature", built, feature=False)
            await mute.welcomed.wait()
            assert (await refused(control, create(1))).code() == grpc.StatusCode.NOT_FOUND
            await mute.leave()

            for answer, text in (
                (refuse, "parameter 'n' expects int"),
                (crash, "builtins.KeyError: 'oops'"),
            ):
                worker = Builder(channel, "w", answer)
                await worker.welcomed.wait()
                error = await refused(control, create(1))
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
                assert text in (error.details() or ""), error
                await worker.leave()

            # A build for other values of a registered value-dependent flow, no worker:
            good = Builder(channel, "good", built)
            await good.welcomed.wait()
            await control.CreateFlowRun(create(2))
            await good.leave()
            error = await refused(control, create(5))
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "no connected worker offers it" in (error.details() or "")

        # A worker that never answers: the run's creator is told once the build
        # timeout passes (a server of its own, with a short one).
        (tmp_path / "silent").mkdir()
        async with server(tmp_path / "silent", build_timeout=0.5) as (_, channel, control):
            worker = Builder(channel, "w", lambda r: None)
            await worker.welcomed.wait()
            error = await refused(control, create(1))
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            assert "did not build flow 'doubled' within 0.5s" in (error.details() or ""), error
            await worker.leave()

    run(body)


class InlineOnly:
    """A GraphBuilder's transfer for inline values: nothing to download or upload."""

    def download(self, ref: Any) -> Any:
        raise AssertionError("nothing to download")

    def value(self, encoded: Any, limit: int) -> payload_pb2.Value:
        return payload_pb2.Value(
            inline=payload_pb2.Payload(data=encoded.data, metadata=encoded.metadata)
        )


def test_a_worker_refuses_to_send_a_graph_too_large_for_one_message() -> None:
    """A graph over the server's message limit (a large parameter is a constant of each
    task it feeds) is answered as an error naming its size and what to do instead: sent
    as is, the server cut the worker's stream and the run's creator read that no
    worker offers the flow (a user trial)."""
    from headwater._worker_flows import GRAPH_TOO_LARGE, GraphBuilder

    sent: list[worker_pb2.ConnectRequest] = []
    builder = GraphBuilder({"doubled": doubled}, sent.append)

    builder.transfer = InlineOnly()  # type: ignore[assignment]
    request = worker_pb2.BuildGraph(build_id="7", flow_name="doubled", parameters={"n": value(3)})
    builder._answer(request)
    (fits,) = sent
    assert fits.graph_built.HasField("graph") and not fits.graph_built.HasField("error")
    builder.max_message_bytes = fits.graph_built.ByteSize() // 2
    builder._answer(request)
    answer = sent[-1].graph_built
    assert answer.build_id == "7" and not answer.HasField("graph")
    assert answer.error.type == GRAPH_TOO_LARGE and not answer.error.retryable
    assert "the graph of flow 'doubled' for these values is" in answer.error.message
    assert "Client.run(flow, params)" in answer.error.message


@flow
def swallowing(n: int) -> list[int]:
    made = []
    for i in range(n):
        try:
            made.append(double(i))
        except Exception:  # (a body that catches everything still stops)
            made.append(-1)
    return made


def test_a_worker_stops_building_a_graph_at_the_servers_task_bound() -> None:
    """BuildGraph.max_tasks (the server's max_graph_tasks): the worker stops at the next
    task, however many the values would make. A body making 1,000,000 subflows for one
    value held a worker's CPU 75 s and 3.3 GB before the graph was refused by its size,
    and the run's creator read DEADLINE_EXCEEDED (a hostile trial)."""
    from headwater._worker_flows import GRAPH_TOO_LARGE, GraphBuilder

    sent: list[worker_pb2.ConnectRequest] = []
    builder = GraphBuilder({"doubled": doubled, "swallowing": swallowing}, sent.append)

    builder.transfer = InlineOnly()  # type: ignore[assignment]
    # (10**9 tasks built would not end in this test's time; a body that catches the
    # refusal goes on with its loop, but is refused once it returns.)
    for name, n in (("doubled", 10**9), ("swallowing", 5_000)):
        request = worker_pb2.BuildGraph(
            build_id=name, flow_name=name, parameters={"n": value(n)}, max_tasks=1_000
        )
        builder._answer(request)
        answer = sent[-1].graph_built
        assert answer.build_id == name and not answer.HasField("graph")
        assert (answer.error.type, answer.error.retryable) == (GRAPH_TOO_LARGE, False)
        assert answer.error.message == (
            f"flow {name!r} makes more than 1,000 tasks for these values, the most a graph "
            "may have on this server (max_graph_tasks)"
        )
    at_bound = worker_pb2.BuildGraph(
        build_id="b", flow_name="doubled", parameters={"n": value(1_000)}, max_tasks=1_000
    )
    builder._answer(at_bound)
    assert len(sent[-1].graph_built.graph.tasks) == 1_000


def test_the_server_asks_for_a_graph_within_its_max_graph_tasks(tmp_path: Path) -> None:
    async def body() -> None:
        async with server(tmp_path, limits=Limits(max_graph_tasks=40)) as (_, channel, control):
            worker = Builder(channel, "w1", built)
            await worker.welcomed.wait()
            await control.CreateFlowRun(create(3))
            assert worker.requests[0].max_tasks == 40
            await worker.leave()

    run(body)
