"""PayloadService: large values in and out, in chunks, never decoded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

import grpc

from headwater.v1 import payload_pb2, payload_pb2_grpc
from headwater.wire import CHUNK_SIZE, MAX_PAYLOAD_BYTES
from headwater_runtime.store import NotFound, PayloadUpload, Store, StoreUnavailable

from ._access import CALLER, Caller
from ._io import StoreIO


class PayloadAccess(Protocol):
    """Who may read which payload (the server core)."""

    def uploaded(self, caller: Caller, payload_id: str) -> None:
        """``caller`` uploaded this payload."""
        ...

    def may_download(self, caller: Caller, payload_id: str) -> bool:
        """Whether ``caller`` may read this payload."""
        ...


#: Largest chunk accepted in one upload message (the wire's chunk size).
MAX_CHUNK = CHUNK_SIZE


class PayloadServicer(payload_pb2_grpc.PayloadServiceServicer):
    """Stores uploads in the store's payload tables; streams downloads back. Every store
    call runs on the store's threads (writes in order on the writer thread), and a
    download reads one stored chunk at a time, so a payload is never loaded whole.

    Args:
        store: where payloads are kept.
        max_payload_bytes: largest upload accepted (RESOURCE_EXHAUSTED above it).
        io: the threads store calls run on (default: new ones).
        access: who may download what (default: any caller anything).
    """

    def __init__(
        self,
        store: Store,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        io: StoreIO | None = None,
        access: PayloadAccess | None = None,
    ) -> None:
        self.store = store
        self.max_payload_bytes = max_payload_bytes
        self.io = io or StoreIO()
        self.access = access

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
        try:
            async for request in request_iterator:
                part = request.WhichOneof("part")
                if upload is None:
                    if part != "header":
                        await context.abort(invalid, "an upload must start with its header")
                    header = request.header
                    if header.size_bytes > self.max_payload_bytes:
                        await context.abort(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"payload of {header.size_bytes} bytes exceeds the server's "
                            f"limit of {self.max_payload_bytes}",
                        )
                    try:
                        upload = await self.io.write(
                            self.store.begin_payload,
                            dict(header.metadata),
                            header.size_bytes,
                            header.sha256,
                        )
                    except ValueError as exc:
                        await context.abort(invalid, str(exc))
                elif part == "chunk":
                    if len(request.chunk) > MAX_CHUNK:
                        await context.abort(invalid, f"chunks must be at most {MAX_CHUNK} bytes")
                    try:
                        await self.io.write(upload.write, request.chunk)
                    except ValueError as exc:
                        await context.abort(invalid, str(exc))
                else:
                    await context.abort(invalid, "only one header per upload, then chunks")
            if upload is None:
                await context.abort(invalid, "empty upload: no header was sent")
            assert upload is not None
            try:
                meta = await self.io.write(upload.finish)
            except ValueError as exc:
                await context.abort(invalid, str(exc))
        except StoreUnavailable as exc:
            if upload is not None:
                await self.io.write(upload.abort)
            code = grpc.StatusCode.RESOURCE_EXHAUSTED if exc.full else grpc.StatusCode.UNAVAILABLE
            await context.abort(code, str(exc))
        except BaseException:
            if upload is not None:
                await asyncio.shield(self.io.write(upload.abort))
            raise
        if self.access is not None:
            self.access.uploaded(CALLER.get(), meta.id)
        ref = payload_pb2.PayloadRef(
            payload_id=meta.id, size_bytes=meta.size, metadata=meta.metadata, sha256=meta.sha256
        )
        return payload_pb2.UploadPayloadResponse(ref=ref)

    async def DownloadPayload(
        self,
        request: payload_pb2.DownloadPayloadRequest,
        context: grpc.aio.ServicerContext[
            payload_pb2.DownloadPayloadRequest, payload_pb2.DownloadPayloadResponse
        ],
    ) -> AsyncIterator[payload_pb2.DownloadPayloadResponse]:
        """Stream a stored payload from an offset, one stored chunk at a time."""
        caller = CALLER.get()
        if self.access is not None and not self.access.may_download(caller, request.payload_id):
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"credential {caller.name!r} (role {caller.role.value}) may download only "
                f"the inputs of attempts it holds and what it uploaded, and payload "
                f"{request.payload_id!r} is neither",
            )
        try:
            meta = await self.io.read(self.store.payload_meta, request.payload_id)
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
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
