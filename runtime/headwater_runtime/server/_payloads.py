"""PayloadService: large values in and out, in chunks, never decoded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc

from headwater.v1 import payload_pb2, payload_pb2_grpc
from headwater.wire import CHUNK_SIZE, LimitExceeded, Limits
from headwater_runtime.store import NotFound, PayloadMeta, PayloadUpload, Store, StoreUnavailable

from ._access import CALLER, Caller, uploader_name
from ._decoding import store_refusal
from ._details import detail
from ._io import StoreIO
from ._limits import METADATA_VALUE_CHARS, check_entries, check_strings
from ._previews import PREVIEW_BYTES, upload_metadata


class PayloadAccess(Protocol):
    """Who may read which payload (the server core)."""

    def may_download(self, caller: Caller, payload_id: str, uploader: str | None) -> bool:
        """Whether ``caller`` may read this payload (``uploader``: the credential
        stored with it as its uploader)."""
        ...


#: Largest chunk accepted in one upload message by default (the wire's chunk size).
MAX_CHUNK = CHUNK_SIZE
#: Seconds an upload may go without a message (its header, a chunk, or its end) before
#: it is ended with DEADLINE_EXCEEDED and what it sent is thrown away: a client that
#: stalls must not hold an open upload (and its buffer) for ever. Generous, as a whole
#: chunk (1 MiB) must arrive within it over a slow link.
UPLOAD_IDLE_TIMEOUT = 120.0


async def _within(
    messages: AsyncIterator[payload_pb2.UploadPayloadRequest], seconds: float
) -> AsyncIterator[payload_pb2.UploadPayloadRequest]:
    """The messages of a stream, each awaited for at most ``seconds`` (TimeoutError)."""
    iterator = aiter(messages)
    while True:
        try:
            async with asyncio.timeout(seconds):
                message = await anext(iterator)
        except StopAsyncIteration:
            return
        yield message


class PayloadServicer(payload_pb2_grpc.PayloadServiceServicer):
    """Stores uploads in the store's payload tables; streams downloads back. Every store
    call runs on the store's threads (writes in order on the writer thread), and a
    download reads one stored chunk at a time, so a payload is never loaded whole.

    An upload is bounded by ``limits``: its declared size (``max_payload_bytes``), each
    chunk's size (``max_chunk_bytes``) and how many chunks it sends
    (``max_upload_chunks``), all refused with RESOURCE_EXHAUSTED; an empty chunk, or
    more bytes than declared, with INVALID_ARGUMENT. Small chunks are gathered here
    into stored-chunk-sized writes, so a stream of tiny messages costs the writer
    thread no more than one of full chunks. The first ``PREVIEW_BYTES`` received are
    kept to make a json text's preview, returned in the reference's metadata
    (``_previews``: listings then preview the value without reading it back).

    Args:
        store: where payloads are kept.
        limits: the server's limits (default: ``Limits()``).
        io: the threads store calls run on (default: new ones).
        access: who may download what (default: any caller anything).
        idle_timeout: seconds an upload may wait for its next message before it is
            ended (DEADLINE_EXCEEDED) and discarded.
    """

    def __init__(
        self,
        store: Store,
        limits: Limits | None = None,
        io: StoreIO | None = None,
        access: PayloadAccess | None = None,
        idle_timeout: float = UPLOAD_IDLE_TIMEOUT,
    ) -> None:
        self.store = store
        self.limits = limits or Limits()
        self.io = io or StoreIO()
        self.access = access
        self.idle_timeout = idle_timeout

    async def UploadPayload(
        self,
        request_iterator: AsyncIterator[payload_pb2.UploadPayloadRequest],
        context: grpc.aio.ServicerContext[
            payload_pb2.UploadPayloadRequest, payload_pb2.UploadPayloadResponse
        ],
    ) -> payload_pb2.UploadPayloadResponse:
        """Store a payload sent as a header, then chunks."""
        upload: PayloadUpload | None = None
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
        limits = self.limits
        pending = bytearray()  # received, not yet handed to the writer thread
        head = bytearray()  # the first PREVIEW_BYTES received (for the preview)
        received = chunks = 0
        declared = 0
        try:
            async for request in _within(request_iterator, self.idle_timeout):
                part = request.WhichOneof("part")
                if upload is None:
                    if part != "header":
                        await context.abort(invalid, "an upload must start with its header")
                    header = request.header
                    declared = header.size_bytes
                    try:
                        check_entries("the upload's metadata", header.metadata, limits)
                    except LimitExceeded as too_many:
                        await context.abort(exhausted, detail(str(too_many)))
                    problem = check_strings(
                        "the upload's metadata", header.metadata, METADATA_VALUE_CHARS
                    )
                    if problem:
                        await context.abort(invalid, detail(problem))
                    if declared > limits.max_payload_bytes:
                        error = limits.exceeded(
                            "max_payload_bytes", f"the upload declares {declared} bytes"
                        )
                        await context.abort(exhausted, detail(str(error)))
                    try:
                        upload = await self.io.write(
                            self.store.begin_payload,
                            dict(header.metadata),
                            declared,
                            header.sha256,
                            uploader_name(CALLER.get()),
                        )
                    except ValueError as exc:
                        await context.abort(invalid, detail(str(exc)))
                elif part == "chunk":
                    chunk = request.chunk
                    chunks += 1
                    received += len(chunk)
                    if not chunk:
                        await context.abort(invalid, f"chunk {chunks} of the upload is empty")
                    if len(chunk) > limits.max_chunk_bytes:
                        error = limits.exceeded(
                            "max_chunk_bytes", f"chunk {chunks} has {len(chunk)} bytes"
                        )
                        await context.abort(exhausted, detail(str(error)))
                    if chunks > limits.max_upload_chunks:
                        error = limits.exceeded(
                            "max_upload_chunks", f"the upload sent {chunks} chunks"
                        )
                        await context.abort(exhausted, detail(str(error)))
                    if received > declared:
                        await context.abort(
                            invalid,
                            f"the upload sent {received} bytes, more than the {declared} it "
                            "declared",
                        )
                    pending += chunk
                    if len(head) < PREVIEW_BYTES:
                        head += chunk[: PREVIEW_BYTES - len(head)]
                    if len(pending) >= CHUNK_SIZE:
                        await self._write(upload, pending, context)
                elif part == "header":
                    await context.abort(invalid, "only one header per upload, then chunks")
                else:
                    await context.abort(
                        invalid, "an upload message carries neither a chunk nor a header"
                    )
            if upload is None:
                await context.abort(invalid, "empty upload: no header was sent")
            assert upload is not None
            await self._write(upload, pending, context)
            try:
                meta = await self.io.write(upload.finish)
            except ValueError as exc:
                await context.abort(invalid, detail(str(exc)))
        except StoreUnavailable as exc:
            if upload is not None:
                await self.io.write(upload.abort)
            await store_refusal(context, exc, "upload it again later")
        except TimeoutError:
            if upload is not None:
                await asyncio.shield(self.io.write(upload.abort))
            await context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"the upload sent nothing for {self.idle_timeout:g}s: it was discarded",
            )
        except BaseException:
            if upload is not None:
                await asyncio.shield(self.io.write(upload.abort))
            raise
        ref = payload_pb2.PayloadRef(
            payload_id=meta.id,
            size_bytes=meta.size,
            # Only the reference carries the preview, not the payload's row: results,
            # parameters and listings hold the reference (the row serves downloads).
            metadata=upload_metadata(meta.metadata, bytes(head), meta.size),
            sha256=meta.sha256,
        )
        return payload_pb2.UploadPayloadResponse(ref=ref)

    async def _write(
        self, upload: PayloadUpload, pending: bytearray, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Hand the gathered bytes to the upload on the writer thread."""
        if not pending:
            return
        data = bytes(pending)
        pending.clear()
        try:
            await self.io.write(upload.write, data)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, detail(str(exc)))

    async def DownloadPayload(
        self,
        request: payload_pb2.DownloadPayloadRequest,
        context: grpc.aio.ServicerContext[
            payload_pb2.DownloadPayloadRequest, payload_pb2.DownloadPayloadResponse
        ],
    ) -> AsyncIterator[payload_pb2.DownloadPayloadResponse]:
        """Stream a stored payload from an offset, one stored chunk at a time."""
        caller = CALLER.get()
        meta: PayloadMeta | None = None
        try:
            meta = await self.io.read(self.store.payload_meta, request.payload_id)
        except NotFound as exc:
            missing = exc
        uploader = "" if meta is None else meta.uploader
        if self.access is not None and not self.access.may_download(
            caller, request.payload_id, uploader
        ):  # (whether it exists or not: a worker-only credential learns neither)
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                detail(
                    f"credential {caller.name!r} (role {caller.role.value}) may download only "
                    "the inputs of attempts it holds, the values of graph builds it was "
                    f"asked for and what it uploaded, and payload {request.payload_id!r} is "
                    "none of these"
                ),
            )
        if meta is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, detail(str(missing)))
        assert meta is not None
        if not 0 <= request.offset <= meta.size:
            await context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                f"offset {request.offset} is outside payload of {meta.size} bytes",
            )
        offset = request.offset
        index, skip = divmod(offset, CHUNK_SIZE)
        while offset < meta.size:
            data = await self.io.read(self.store.read_payload_chunk, meta.id, index)
            if not data:
                await context.abort(
                    grpc.StatusCode.DATA_LOSS,
                    f"payload {meta.id} ends at byte {offset} of {meta.size}",
                )
            chunk = data[skip:]
            skip = 0
            index += 1
            yield payload_pb2.DownloadPayloadResponse(
                chunk=chunk, offset=offset, size_bytes=meta.size
            )
            offset += len(chunk)
