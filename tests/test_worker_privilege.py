"""Least privilege for workers: a worker-only credential downloads the inputs of the
attempts it holds and what it uploaded itself, and nothing else (PERMISSION_DENIED),
while readers (viewer and up) download anything."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from headwater import Client, flow, remote_task
from headwater.v1 import payload_pb2, payload_pb2_grpc, worker_pb2, worker_pb2_grpc
from headwater.wire import EncodedValue, PayloadTransfer, TLSSettings, open_aio_channel
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


def test_a_worker_reads_only_its_attempts_inputs_and_its_own_uploads(tmp_path: Path) -> None:
    tokens = _tokens(tmp_path / "hw.db")

    async def main() -> None:
        running = await start_server(ServerSettings(port=0, db=str(tmp_path / "hw.db")))
        address = f"127.0.0.1:{running.port}"
        try:
            async with open_aio_channel(address, TLSSettings()) as channel:
                await scenario(channel, address)
        finally:
            await asyncio.wait_for(running.stop(None), 30)

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
        outbox: asyncio.Queue[worker_pb2.ConnectRequest | None] = asyncio.Queue()
        hello = worker_pb2.Hello(
            worker_id="w", name="w", protocol_version=1, capabilities=["privilege.echo"], slots=1
        )
        await outbox.put(worker_pb2.ConnectRequest(hello=hello))

        async def requests() -> AsyncIterator[worker_pb2.ConnectRequest]:
            while (item := await outbox.get()) is not None:
                yield item

        stub = worker_pb2_grpc.WorkerGatewayServiceStub(channel)
        call = stub.Connect(requests(), metadata=_auth(tokens["worker"]), timeout=60)
        stream = aiter(call)
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

    asyncio.run(asyncio.wait_for(main(), 120))
