"""Least privilege for workers: a worker-only credential downloads the inputs of the
attempts it holds and what it uploaded itself, and nothing else (PERMISSION_DENIED),
while readers (viewer and up) download anything."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from test_graph_builds import Builder, built, value

from headwater import Client, flow, remote_task
from headwater.v1 import control_plane_pb2 as cp
from headwater.v1 import (
    control_plane_pb2_grpc,
    payload_pb2,
    payload_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from headwater.wire import (
    EncodedValue,
    PayloadTransfer,
    TLSSettings,
    open_aio_channel,
    parameters_digest,
)
from headwater_runtime.server import new_credential, start_server
from headwater_runtime.server._core import ServerSettings
from headwater_runtime.store import SQLiteStore

echo = remote_task("privilege.echo", parameters=["data"])


@flow
def carry(blob: bytes) -> object:
    return echo(data=blob)


BLOB = bytes(range(256)) * 6000  # 1.5 MB: travels as a stored payload


def _tokens(db: Path) -> dict[str, str]:
    store = SQLiteStore(db)
    tokens = {}
    for role in ("operator", "viewer", "worker"):
        row, token = new_credential(role, role, created_by="test", now=time.time())
        store.add_credential(row)
        tokens[role] = token
    store.close()
    return tokens


def _auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _download(channel: grpc.aio.Channel, token: str, payload_id: str) -> grpc.StatusCode:
    stub = payload_pb2_grpc.PayloadServiceStub(channel)
    request = payload_pb2.DownloadPayloadRequest(payload_id=payload_id)
    try:
        async for _ in stub.DownloadPayload(request, metadata=_auth(token), timeout=30):
            pass
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _serve(db: Path, scenario: Callable[[grpc.aio.Channel, str], Awaitable[None]]) -> None:
    """Run ``scenario(channel, address)`` against a server on ``db`` (bounded)."""

    async def main() -> None:
        running = await start_server(ServerSettings(port=0, db=str(db)))
        address = f"127.0.0.1:{running.port}"
        try:
            async with open_aio_channel(address, TLSSettings()) as channel:
                await scenario(channel, address)
        finally:
            await asyncio.wait_for(running.stop(None), 30)

    asyncio.run(asyncio.wait_for(main(), 120))


def test_a_worker_reads_only_its_attempts_inputs_and_its_own_uploads(tmp_path: Path) -> None:
    tokens = _tokens(tmp_path / "hw.db")

    async def scenario(channel: grpc.aio.Channel, address: str) -> None:
        def operator_run() -> tuple[str, str]:
            with Client(address, token=tokens["operator"]) as client:
                run = client.run(carry, {"blob": BLOB})
                # Another payload the operator uploads, which no attempt takes.
                with grpc.insecure_channel(address) as plain:
                    transfer = PayloadTransfer(plain, _auth(tokens["operator"]))
                    other = transfer.upload(EncodedValue(b"y" * 10, {"encoding": "json"}))
                return run.id, other.payload_id

        run_id, other = await asyncio.to_thread(operator_run)
        outbox, call, stream = await _connect(channel, tokens["worker"], slots=1)
        assignment = None
        while assignment is None:
            response = await anext(stream)
            if response.HasField("assignment"):
                assignment = response.assignment
        held = assignment.inputs["data"].value.ref.payload_id
        assert held and assignment.flow_run_id == run_id

        worker, viewer = tokens["worker"], tokens["viewer"]
        assert await _download(channel, worker, held) == grpc.StatusCode.OK  # its input
        assert await _download(channel, worker, other) == grpc.StatusCode.PERMISSION_DENIED
        assert await _download(channel, viewer, other) == grpc.StatusCode.OK  # readers read
        # What the worker uploads, it may read back.
        with grpc.insecure_channel(address) as plain:
            uploader = PayloadTransfer(plain, _auth(worker))
            encoded = EncodedValue(b"z" * 10, {"encoding": "json"})
            own = (await asyncio.to_thread(uploader.upload, encoded)).payload_id
        assert await _download(channel, worker, own) == grpc.StatusCode.OK

        # Once the attempt is over, its input is no longer the worker's to read.
        await outbox.put(
            worker_pb2.ConnectRequest(started=worker_pb2.TaskStarted(token=assignment.token))
        )
        result = worker_pb2.TaskResult(
            token=assignment.token, result=assignment.inputs["data"].value
        )
        await outbox.put(worker_pb2.ConnectRequest(result=result))
        while not (response := await anext(stream)).HasField("ack"):
            pass
        assert response.ack.accepted, response.ack.reason
        assert await _download(channel, worker, held) == grpc.StatusCode.PERMISSION_DENIED
        await outbox.put(None)
        call.cancel()

    _serve(tmp_path / "hw.db", scenario)


async def _connect(
    channel: grpc.aio.Channel,
    token: str,
    slots: int,
    running: Sequence[worker_pb2.FencingToken] = (),
    capability: str = "privilege.echo",
) -> tuple[asyncio.Queue[worker_pb2.ConnectRequest | None], Any, AsyncIterator[Any]]:
    """A raw worker session of ``token`` offering ``capability`` (holding ``running``
    from before): its outbox, its call and the iterator of what the server sends."""
    outbox: asyncio.Queue[worker_pb2.ConnectRequest | None] = asyncio.Queue()
    hello = worker_pb2.Hello(
        worker_id="w",
        name="w",
        protocol_version=1,
        capabilities=[capability],
        slots=slots,
        running=running,
    )
    await outbox.put(worker_pb2.ConnectRequest(hello=hello))

    async def requests() -> AsyncIterator[worker_pb2.ConnectRequest]:
        while (item := await outbox.get()) is not None:
            yield item

    stub = worker_pb2_grpc.WorkerGatewayServiceStub(channel)
    call = stub.Connect(requests(), metadata=_auth(token), timeout=60)
    return outbox, call, aiter(call)


def test_a_worker_references_in_its_results_only_payloads_it_may_read(tmp_path: Path) -> None:
    """A reference in a result is a way to read: a worker-only credential that reports
    a result pointing at a payload it may not download (another credential's upload)
    has it refused, PERMISSION_DENIED, and the task fails; its own uploads and its
    attempts' inputs it may reference. What it uploaded stays its own after a server
    restart (it is stored with the payload): it can still be downloaded. An attempt
    held across the restart may read its input and pass it on in its result: the new
    server takes that result."""
    db = tmp_path / "hw.db"
    tokens = _tokens(db)
    worker = tokens["worker"]
    streams: list[Any] = []

    async def main() -> None:
        running = await start_server(ServerSettings(port=0, db=str(db)))
        address = f"127.0.0.1:{running.port}"
        try:
            async with open_aio_channel(address, TLSSettings()) as channel:
                own, kept, kept_run, kept_input = await first_server(channel, address)
                await asyncio.wait_for(running.stop(None), 30)
                for call in streams:
                    call.cancel()
        finally:
            await asyncio.wait_for(running.stop(None), 30)
        running = await start_server(ServerSettings(port=running.port, db=str(db)))
        try:
            # Once the run is live: while it is replayed, any claim is kept and checked
            # only when it goes live (tests/test_replay_claims.py; seen once in CI).
            await asyncio.wait_for(running.core.recovered.wait(), 60)
            async with open_aio_channel(address, TLSSettings()) as channel:
                assert await _download(channel, worker, own.payload_id) == grpc.StatusCode.OK
                # A worker that could not have been given it names it first: not kept
                # (a user trial took over another pool's attempt so, and its result).
                other_box, other_call, other_stream = await _connect(
                    channel, worker, slots=1, running=[kept], capability="nothing.at.all"
                )
                while not (response := await anext(other_stream)).HasField("welcome"):
                    pass
                assert list(response.welcome.keep_running) == []
                await other_box.put(None)
                other_call.cancel()
                outbox, call, stream = await _connect(channel, worker, slots=1, running=[kept])
                while not (response := await anext(stream)).HasField("welcome"):
                    pass
                assert list(response.welcome.keep_running) == [kept]
                # Its input, which the new server never sent it, it may still read and
                # pass on (a user trial: the result was refused, the run FAILED).
                held = kept_input.ref.payload_id
                assert await _download(channel, worker, held) == grpc.StatusCode.OK
                result = worker_pb2.TaskResult(token=kept, result=kept_input)
                await outbox.put(worker_pb2.ConnectRequest(result=result))
                while not (response := await anext(stream)).HasField("ack"):
                    pass
                assert response.ack.accepted, response.ack.reason
                await outbox.put(None)
                call.cancel()

                def ended() -> str:
                    with Client(address, token=tokens["viewer"]) as client:
                        return client.wait(kept_run, timeout=30).state.name

                assert await asyncio.to_thread(ended) == "SUCCESS"
                missing = "0" * 32
                assert await _download(channel, worker, missing) == (
                    grpc.StatusCode.PERMISSION_DENIED
                )  # (existing or not, alike)
                assert await _download(channel, tokens["viewer"], missing) == (
                    grpc.StatusCode.NOT_FOUND
                )
        finally:
            await asyncio.wait_for(running.stop(None), 30)

    async def first_server(
        channel: grpc.aio.Channel, address: str
    ) -> tuple[payload_pb2.PayloadRef, worker_pb2.FencingToken, str, payload_pb2.Value]:
        def operator_runs() -> tuple[list[str], str]:
            with Client(address, token=tokens["operator"]) as client:
                ids = [client.run(carry, {"blob": b"%d" % i}).id for i in range(3)]
                ids.append(client.run(carry, {"blob": BLOB}).id)  # a stored input
                with grpc.insecure_channel(address) as plain:
                    transfer = PayloadTransfer(plain, _auth(tokens["operator"]))
                    other = transfer.upload(EncodedValue(b"y" * 10, {"encoding": "json"}))
                return ids, other.payload_id

        run_ids, other = await asyncio.to_thread(operator_runs)
        with grpc.insecure_channel(address) as plain:
            uploader = PayloadTransfer(plain, _auth(worker))
            encoded = EncodedValue(b"[7]", {"encoding": "json"})
            own = await asyncio.to_thread(uploader.upload, encoded)
        outbox, call, stream = await _connect(channel, worker, slots=4)
        assignments: dict[str, worker_pb2.Assignment] = {}
        while len(assignments) < 4:
            response = await anext(stream)
            if response.HasField("assignment"):
                assignments[response.assignment.flow_run_id] = response.assignment
        foreign_run, own_run, input_run, kept_run = run_ids
        run_ids = run_ids[:3]  # the fourth is held across the restart
        foreign_ref = payload_pb2.PayloadRef(payload_id=other)
        results = {
            foreign_run: payload_pb2.Value(ref=foreign_ref),
            own_run: payload_pb2.Value(ref=own),
            input_run: assignments[input_run].inputs["data"].value,
        }
        acks: dict[str, worker_pb2.Ack] = {}
        tokens_by_run = {run_id: assignments[run_id].token for run_id in run_ids}
        for run_id in run_ids:
            token = tokens_by_run[run_id]
            await outbox.put(worker_pb2.ConnectRequest(started=worker_pb2.TaskStarted(token=token)))
            result = worker_pb2.TaskResult(token=token, result=results[run_id])
            await outbox.put(worker_pb2.ConnectRequest(result=result))
        while len(acks) < 3:
            response = await anext(stream)
            if response.HasField("ack"):
                for run_id, token in tokens_by_run.items():
                    if token.task_run_id == response.ack.token.task_run_id:
                        acks[run_id] = response.ack
        assert acks[own_run].accepted and acks[input_run].accepted
        refusal = acks[foreign_run]
        assert not refusal.accepted
        assert refusal.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert f"references payload {other!r}, which is not stored or not one credential " in (
            refusal.reason
        )
        assert "'worker' (role worker) may read" in refusal.reason

        def states() -> dict[str, str]:
            with Client(address, token=tokens["viewer"]) as client:
                return {run_id: client.wait(run_id, timeout=30).state.name for run_id in run_ids}

        ended = await asyncio.to_thread(states)
        assert ended == {foreign_run: "FAILED", own_run: "SUCCESS", input_run: "SUCCESS"}
        kept = assignments[kept_run].token
        await outbox.put(worker_pb2.ConnectRequest(started=worker_pb2.TaskStarted(token=kept)))
        # The stream stays open until the server stops: a stream that breaks first
        # loses its attempts (docs/worker-protocol.md §11).
        streams.append(call)
        return own, kept, kept_run, assignments[kept_run].inputs["data"].value

    asyncio.run(asyncio.wait_for(main(), 120))


def test_a_worker_only_builder_converts_parameters_only_into_payloads_it_may_read(
    tmp_path: Path,
) -> None:
    """A graph build's converted parameters become the run's: a worker-only builder
    that answers with a reference to another credential's upload gets the run refused
    (INVALID_ARGUMENT naming the parameter and the payload), nothing created; a
    reference to the payload it was given, or to its own upload, is taken."""
    tokens = _tokens(tmp_path / "hw.db")
    answers: list[payload_pb2.Value] = []

    hold: list[worker_pb2.BuildGraph] = []  # requests to leave unanswered, then held
    asked = asyncio.Event()

    def answer(request: worker_pb2.BuildGraph) -> worker_pb2.GraphBuilt | None:
        if hold and not hold[-1].build_id:  # answered by the test itself, later
            hold[-1].CopyFrom(request)
            asked.set()
            return None
        # (The graph for n=3, whatever was given: a test worker reads no payload.)
        reply = built(worker_pb2.BuildGraph(build_id=request.build_id, parameters={"n": value(3)}))
        reply.parameters["n"].CopyFrom(answers.pop(0))
        reply.graph.parameters_digest = parameters_digest(reply.parameters)
        return reply

    async def scenario(channel: grpc.aio.Channel, address: str) -> None:
        def upload(token: str, data: bytes) -> payload_pb2.PayloadRef:
            with grpc.insecure_channel(address) as plain:
                return PayloadTransfer(plain, _auth(token)).upload(
                    EncodedValue(data, {"encoding": "json"})
                )

        others = await asyncio.to_thread(upload, tokens["operator"], b"2")
        given = await asyncio.to_thread(upload, tokens["operator"], b"3")
        own = await asyncio.to_thread(upload, tokens["worker"], b"4")
        builder = Builder(channel, "b", answer, metadata=_auth(tokens["worker"]))
        await builder.welcomed.wait()
        control = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        operator = _auth(tokens["operator"])

        def create(n: payload_pb2.Value) -> cp.CreateFlowRunRequest:
            return cp.CreateFlowRunRequest(flow_name="doubled", parameters={"n": n})

        answers.append(payload_pb2.Value(ref=others))
        try:
            await control.CreateFlowRun(create(value(5)), metadata=operator)
            raise AssertionError("a run with another credential's payload was created")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT
            said = exc.details() or ""
        assert "worker 'b' converted parameter 'n' of flow 'doubled'" in said
        assert f"references payload {others.payload_id!r}" in said
        listed = await control.ListFlowRuns(cp.ListFlowRunsRequest(), metadata=operator)
        assert list(listed.flow_runs) == []

        # While it builds, it may download the values it was given (a user trial: a
        # large parameter could not be built with), and no other payload.
        hold.append(worker_pb2.BuildGraph())
        creating = asyncio.ensure_future(
            control.CreateFlowRun(create(payload_pb2.Value(ref=given)), metadata=operator)
        )
        await asked.wait()
        worker = tokens["worker"]
        assert await _download(channel, worker, given.payload_id) == grpc.StatusCode.OK
        assert await _download(channel, worker, others.payload_id) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        answers.append(payload_pb2.Value(ref=given))  # the value it was given
        await builder.outbox.put(worker_pb2.ConnectRequest(graph_built=answer(hold.pop())))
        first = await creating
        assert await _download(channel, worker, given.payload_id) == (
            grpc.StatusCode.PERMISSION_DENIED  # (the build is over)
        )
        answers.append(payload_pb2.Value(ref=own))  # its own upload
        second = await control.CreateFlowRun(create(value(6)), metadata=operator)
        assert first.flow_run.id and second.flow_run.id
        assert first.flow_run.parameters["n"].ref.payload_id == given.payload_id
        assert second.flow_run.parameters["n"].ref.payload_id == own.payload_id
        await builder.leave()

    _serve(tmp_path / "hw.db", scenario)


def test_a_worker_cannot_claim_a_queued_attempt_it_was_never_given(tmp_path: Path) -> None:
    """``Hello.running`` keeps only attempts a worker can hold: one handed out before a
    restart. A worker naming a queued attempt of another task type (a user trial: it
    was kept, and its inputs could be downloaded), or of its own, without a restart
    keeps nothing; the attempt is assigned as usual."""
    tokens = _tokens(tmp_path / "hw.db")
    worker = tokens["worker"]

    async def scenario(channel: grpc.aio.Channel, address: str) -> None:
        def operator_run() -> str:
            with Client(address, token=tokens["operator"]) as client:
                return client.run(carry, {"blob": BLOB}).id  # queued: no worker yet

        run_id = await asyncio.to_thread(operator_run)
        queued = worker_pb2.FencingToken(task_run_id=f"{run_id}/privilege.echo", attempt=1)
        for capability in ("nothing.at.all", "privilege.echo"):
            outbox, call, stream = await _connect(
                channel, worker, slots=1, running=[queued], capability=capability
            )
            while not (response := await anext(stream)).HasField("welcome"):
                pass
            assert list(response.welcome.keep_running) == [], capability
            if capability == "privilege.echo":  # then it is assigned, as to any worker
                while not (response := await anext(stream)).HasField("assignment"):
                    pass
                assert response.assignment.token == queued
                held = response.assignment.inputs["data"].value.ref.payload_id
                assert await _download(channel, worker, held) == grpc.StatusCode.OK
            else:
                payloads = await asyncio.to_thread(_input_of, address, tokens["viewer"], run_id)
                assert await _download(channel, worker, payloads) == (
                    grpc.StatusCode.PERMISSION_DENIED
                )
            await outbox.put(None)
            call.cancel()

    _serve(tmp_path / "hw.db", scenario)


def _input_of(address: str, token: str, run_id: str) -> str:
    """The payload id of the run's ``blob`` parameter (a viewer reads it)."""
    with grpc.insecure_channel(address) as plain:
        control = control_plane_pb2_grpc.ControlPlaneServiceStub(plain)
        got = control.GetFlowRun(cp.GetFlowRunRequest(id=run_id), metadata=_auth(token))
    return str(got.flow_run.parameters["blob"].ref.payload_id)


def test_only_references_to_the_store_make_inputs_a_worker_may_read() -> None:
    """An input referencing a value in a Dask cluster (``location: "dask"``) names no
    stored payload: its id is not one the holder may download."""
    from headwater_runtime.server._dispatch import input_payloads

    stored = payload_pb2.Value(ref=payload_pb2.PayloadRef(payload_id="a" * 32))
    in_dask = payload_pb2.Value(ref=payload_pb2.PayloadRef(payload_id="b" * 32, location="dask"))
    nested = payload_pb2.Value(items=[stored, in_dask])
    assignment = worker_pb2.Assignment(
        inputs={
            "x": worker_pb2.InputValue(value=nested),
            "y": worker_pb2.InputValue(value=in_dask),
        }
    )
    assert input_payloads(assignment) == {"a" * 32}


def test_a_payload_stored_before_uploaders_were_recorded_may_be_referenced_not_read() -> None:
    """A payload of a database upgraded to schema version 4 has no known uploader: a
    worker that uploaded it before the upgrade and reports its result after (a user
    trial: the task failed for good) may reference it; it may not download it. One
    the server stored ("") is no worker's."""
    from headwater_runtime.server._result_refs import Reader
    from headwater_runtime.store import PayloadMeta

    reader = Reader("w", frozenset({"held"}))

    def meta(payload_id: str, uploader: str | None) -> PayloadMeta:
        return PayloadMeta(payload_id, 1, {"encoding": "json"}, "", uploader)

    assert reader.may_read(meta("old", None))
    assert reader.may_read(meta("mine", "w")) and reader.may_read(meta("held", ""))
    assert not reader.may_read(meta("theirs", "v"))
    assert not reader.may_read(meta("server", ""))


def test_a_worker_only_credential_learns_nothing_of_payloads_it_may_not_read(
    tmp_path: Path,
) -> None:
    """A reference to a payload that does not exist and one to another credential's
    get the same answer (PERMISSION_DENIED, the same words): results are no oracle of
    what exists, nor of a payload's size or hash (the wrong-size check of a reference
    is for payloads it may read)."""
    from headwater_runtime.server._result_refs import Reader, stored_problems

    store = SQLiteStore(tmp_path / "hw.db")
    theirs = store.put_payload(iter([b"[1]"]), {"encoding": "json"}, 3, uploader="other")
    mine = store.put_payload(iter([b"[2]"]), {"encoding": "json"}, 3, uploader="w")
    refs = {
        ("missing", 1): [payload_pb2.PayloadRef(payload_id="f" * 32)],
        ("theirs", 1): [payload_pb2.PayloadRef(payload_id=theirs.id, size_bytes=99)],
        ("mine", 1): [payload_pb2.PayloadRef(payload_id=mine.id, size_bytes=99)],
    }
    try:
        problems = stored_problems(store, refs, {}, Reader("w", frozenset()))
    finally:
        store.close()
    (missing,) = problems[("missing", 1)]
    (foreign,) = problems[("theirs", 1)]
    assert missing[0] == foreign[0] == grpc.StatusCode.PERMISSION_DENIED
    assert missing[1].replace("f" * 32, theirs.id) == foreign[1]
    (wrong,) = problems[("mine", 1)]  # its own: told what is stored
    assert wrong[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert "as 99 bytes, but it is stored as 3 bytes" in wrong[1]
