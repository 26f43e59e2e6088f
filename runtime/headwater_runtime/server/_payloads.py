"""PayloadService: large values in and out, in chunks, never decoded."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from headwater.v1 import payload_pb2, payload_pb2_grpc
from headwater.wire import CHUNK_SIZE, MAX_PAYLOAD_BYTES
from headwater_runtime.store import NotFound, PayloadUpload, Store

#: Largest chunk accepted in one upload message (the wire's chunk size).
MAX_CHUNK = CHUNK_SIZE


class PayloadServicer(payload_pb2_grpc.PayloadServiceServicer):
    """Stores uploads in the store's payload tables; streams downloads back.

    Args:
        store: where payloads are kept.
        max_payload_bytes: largest upload accepted (RESOURCE_EXHAUSTED above it).
    """

    def __init__(self, store: Store, max_payload_bytes: int = MAX_PAYLOAD_BYTES) -> None:
        self.store = store
        self.max_payload_bytes = max_payload_bytes

    async def UploadPayload(
        self,
        request_iterator: AsyncIterator[payload_pb2.UploadPayloadRequest],
        context: grpc.aio.ServicerContext[
            payload_pb2.UploadPayloadRequest, payload_pb2.UploadPayloadResponse
        ],
    ) -> payload_pb2.UploadPayloadResponse:
        """Store a header-then-chunks upload; its PayloadRef once the declared size
        (and SHA-256, if given) match. A failed upload leaves nothing behind."""
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
                        upload = self.store.begin_payload(
                            dict(header.metadata), header.size_bytes, header.sha256
                        )
                    except ValueError as exc:
                        await context.abort(invalid, str(exc))
                elif part == "chunk":
                    if len(request.chunk) > MAX_CHUNK:
                        await context.abort(invalid, f"chunks must be at most {MAX_CHUNK} bytes")
                    try:
                        upload.write(request.chunk)
                    except ValueError as exc:
                        await context.abort(invalid, str(exc))
                else:
                    await context.abort(invalid, "only one header per upload, then chunks")
            if upload is None:
                await context.abort(invalid, "empty upload: no header was sent")
            assert upload is not None
            try:
                meta = upload.finish()
            except ValueError as exc:
                await context.abort(invalid, str(exc))
        except BaseException:
            if upload is not None:
                upload.abort()
            raise
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
        """Stream a payload's bytes from ``offset`` in chunks (so a client resumes a
        broken download where it stopped)."""
        try:
            meta = self.store.payload_meta(request.payload_id)
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        if not 0 <= request.offset <= meta.size:
            await context.abort(
                grpc.StatusCode.OUT_OF_RANGE,
                f"offset {request.offset} is outside payload of {meta.size} bytes",
            )
        offset = request.offset
        for chunk in self.store.read_payload(meta.id, offset, MAX_CHUNK):
            yield payload_pb2.DownloadPayloadResponse(
                chunk=chunk, offset=offset, size_bytes=meta.size
            )
            offset += len(chunk)
