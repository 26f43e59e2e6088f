"""WorkerGatewayService: one bidirectional stream per worker (thin adapter)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc

from headwater.v1 import worker_pb2, worker_pb2_grpc

from ._core import PROTOCOL_VERSION, ServerCore


class GatewayServicer(worker_pb2_grpc.WorkerGatewayServiceServicer):
    def __init__(self, core: ServerCore) -> None:
        self.core = core

    async def Connect(
        self,
        request_iterator: AsyncIterator[worker_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[worker_pb2.ConnectResponse]:
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            await context.abort(invalid, "the stream ended before the worker's Hello")
        if first.WhichOneof("message") != "hello":
            await context.abort(invalid, "the first message of a worker stream must be Hello")
        hello = first.hello
        if hello.protocol_version != PROTOCOL_VERSION:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"worker protocol version {hello.protocol_version} is not supported; "
                f"this server speaks version {PROTOCOL_VERSION}",
            )
        if not hello.worker_id or hello.slots < 1 or not hello.capabilities:
            await context.abort(
                invalid, "Hello needs a worker_id, slots >= 1 and at least one capability"
            )
        session, _, outbox = self.core.connect(hello)

        async def read() -> None:
            try:
                async for message in request_iterator:
                    if message.WhichOneof("message") == "hello":
                        continue  # a second Hello is meaningless; ignore it
                    self.core.on_worker_message(session, message)
            finally:
                outbox.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                message = await outbox.get()
                if message is None:
                    break
                yield message
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self.core.disconnect(session)
