"""WorkerGatewayService: one bidirectional stream per worker (thin adapter)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from headwater.v1 import worker_pb2, worker_pb2_grpc
from headwater.wire import (
    BATCH,
    MAX_NAME,
    NOT_READY,
    PROTOCOL_VERSION,
    Limits,
    check_name,
    gather,
    limit_variable,
    message_limit,
)

from ._core import ServerCore
from ._limits import check_strings

log = logging.getLogger("headwater.server")

_NOT_IN_BATCH = ("hello", "batch", None)

#: The longest text of a Hello's RuntimeInfo (a host name may take 253).
RUNTIME_CHARS = 1024
#: Messages of a worker's batch handled in one turn of the event loop: a batch of
#: 700,000 heartbeats (2.8 MB) held every other client 5 s (a user trial).
BATCH_SLICE = 256
#: Responses queued for a worker beyond which its stream is not read until it reads
#: them down to OUTBOX_LOW: a worker that sends without reading made the server queue
#: acknowledgements without bound (3 GB in 30 s, a user trial). Far above what a
#: reading worker leaves queued (its slots' assignments, one ack per report).
OUTBOX_HIGH, OUTBOX_LOW = 10_000, 1_000


def _response_batch(messages: list[worker_pb2.ConnectResponse]) -> worker_pb2.ConnectResponse:
    return worker_pb2.ConnectResponse(batch=worker_pb2.ConnectResponseBatch(messages=messages))


def _hello_problem(hello: worker_pb2.Hello, limits: Limits) -> str:
    """What is wrong with a Hello's numbers and lists ("" when nothing is), naming the
    field: a server that took them would dispatch to a worker it cannot use. Its lists
    hold at most ``max_list_items`` entries, and its names at most MAX_NAME characters
    (a Hello of 350,000 capabilities held every other client 0.65 s, a user trial)."""
    lists = {
        "capabilities": hello.capabilities,
        "labels": hello.labels,
        "running": hello.running,
        "code_digests": hello.code_digests,
        "flows": hello.flows,
        "features": hello.features,
        "resources": hello.resources,
    }
    for field, entries in lists.items():
        if len(entries) > limits.max_list_items:
            what = f"Hello.{field} has {len(entries)} entries"
            return str(limits.exceeded("max_list_items", what))
    names = [
        *(("Hello.capabilities", c) for c in hello.capabilities),
        *(("Hello.flows", f.name) for f in hello.flows),
        *(("Hello.features", f) for f in hello.features),
    ]
    for field, name in names:
        if len(name) > MAX_NAME:
            return f"{field} has a name of {len(name)} characters (at most {MAX_NAME})"
    problem = check_strings("Hello.labels", hello.labels) or check_strings(
        "Hello.code_digests", hello.code_digests
    )
    if problem:
        return problem
    runtime = hello.runtime
    for field in ("language", "language_version", "sdk_version", "hostname"):
        text = getattr(runtime, field)
        if len(text) > RUNTIME_CHARS:  # (shown in ListWorkers and the web UI)
            return f"Hello.runtime.{field} is {len(text)} characters long (at most {RUNTIME_CHARS})"
    if not hello.worker_id:
        return "Hello needs a worker_id"
    if hello.slots < 1:
        return f"Hello.slots must be at least 1, got {hello.slots}"
    if hello.slots > limits.max_worker_slots:
        # (PostgreSQL could not store a worker record of more than 2**31 - 1 slots, and
        # then no worker's record: every background write of them failed, a fuzz find)
        return str(limits.exceeded("max_worker_slots", f"Hello.slots is {hello.slots}"))
    if not hello.capabilities:
        return "Hello needs at least one capability (a task type the worker runs)"
    if not all(hello.capabilities):
        return "Hello.capabilities has an empty task type"
    if "" in hello.labels:
        return "Hello.labels has a label with an empty name"
    if (limit := hello.max_message_bytes) < 0:
        return f"Hello.max_message_bytes must be 0 (gRPC's default) or more, got {limit}"
    return ""


class GatewayServicer(worker_pb2_grpc.WorkerGatewayServiceServicer):
    """WorkerGatewayService over a ServerCore.

    Args:
        core: the server's state; every worker message is handed to it.
    """

    def __init__(self, core: ServerCore) -> None:
        self.core = core

    async def Connect(
        self,
        request_iterator: AsyncIterator[worker_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext[worker_pb2.ConnectRequest, worker_pb2.ConnectResponse],
    ) -> AsyncIterator[worker_pb2.ConnectResponse]:
        """One worker's stream: check its Hello (protocol version, slots, capabilities),
        answer with a Welcome, then pass its messages to the core and send it what the
        core queues (batched when the worker lists the "batch" feature)."""
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        wait = self.core.settings.heartbeat_timeout
        try:  # a stream that never says Hello is dropped, as a silent worker is
            async with asyncio.timeout(wait):  # (in this task: decoding aborts the call)
                first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            await context.abort(invalid, "the stream ended before the worker's Hello")
        except TimeoutError:
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no Hello within {wait:g}s of connecting"
            )
        if first.WhichOneof("message") != "hello":
            await context.abort(invalid, "the first message of a worker stream must be Hello")
        hello = first.hello
        if hello.protocol_version != PROTOCOL_VERSION:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"worker protocol version {hello.protocol_version} is not supported; "
                f"this server speaks version {PROTOCOL_VERSION}",
            )
        problem = _hello_problem(hello, self.core.settings.limits)
        if problem:
            await context.abort(invalid, problem)
        try:
            check_name("Hello.worker_id", hello.worker_id)
            if hello.name:
                check_name("Hello.name", hello.name)
        except ValueError as exc:
            await context.abort(invalid, str(exc))
        sends = self.core.settings.limits.max_message_bytes
        accepts = message_limit(hello.max_message_bytes)
        if accepts < sends:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"this server sends workers messages of up to {sends} bytes (its "
                f"max_message_bytes) and the worker accepts {accepts}: start the worker "
                f"with --max-message-bytes {sends} (or {limit_variable('max_message_bytes')})",
            )
        session, _, outbox = self.core.connect(hello)
        core = self.core
        limits = core.settings.limits
        most = limits.max_list_items
        drained = asyncio.Event()  # set when the outbox is read down to OUTBOX_LOW
        refusal: list[str] = []  # why the stream ends (RESOURCE_EXHAUSTED), if refused

        async def read() -> None:
            try:
                async for message in request_iterator:
                    if outbox.qsize() > OUTBOX_HIGH:  # it does not read: wait until it does
                        drained.clear()
                        await drained.wait()
                    kind = message.WhichOneof("message")
                    if kind == "batch":
                        if len(message.batch.messages) > most:
                            what = f"a batch of {len(message.batch.messages)} messages"
                            refusal.append(str(limits.exceeded("max_list_items", what)))
                            return
                        inner = [
                            m
                            for m in message.batch.messages
                            if m.WhichOneof("message") not in _NOT_IN_BATCH
                        ]
                        await core.look_up_refs(session, inner)
                        for start in range(0, len(inner), BATCH_SLICE):
                            if start:
                                await asyncio.sleep(0)  # (the other clients' turn)
                            with core.dispatcher.deferred():  # one pump per slice
                                for one in inner[start : start + BATCH_SLICE]:
                                    core.on_worker_message(session, one)
                    elif kind != "hello":  # a second Hello is meaningless; ignore it
                        if kind in ("result", "value_exported"):
                            await core.look_up_refs(session, (message,))
                        core.on_worker_message(session, message)
            except Exception:
                # A bug handling one message must not end the stream silently; a
                # stopping server's streams end with an error of gRPC's, no bug.
                if not core.stopping:
                    log.exception(
                        "ending the stream of worker %s: a message could not be handled",
                        session.name,
                    )
                raise
            finally:
                outbox.put_nowait(None)

        batching = BATCH in hello.features

        def ready() -> Any:  # a ConnectResponse, None (the end) or NOT_READY
            return outbox.get_nowait() if not outbox.empty() else NOT_READY

        reader = asyncio.get_running_loop().create_task(read())
        try:
            while True:
                message = await outbox.get()
                if message is None:
                    break
                done = False
                if batching and not outbox.empty() and not message.HasField("welcome"):
                    message, done = gather(message, ready, _response_batch)
                if outbox.qsize() < OUTBOX_LOW:
                    drained.set()
                yield message
                if done:
                    break
            if refusal:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal[0])
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            self.core.disconnect(session)
