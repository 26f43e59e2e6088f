"""PayloadService over a real gRPC channel: chunked upload/download, bad input, auth."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from test_store import count

from headwater.v1 import payload_pb2, payload_pb2_grpc
from headwater.wire import Limits
from headwater_runtime.server import MAX_CHUNK, PayloadServicer, StoreIO, TokenAuthInterceptor
from headwater_runtime.store import open_store

TOKEN = "s3cret"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


#: The limits of the test server: 64 MiB payloads, at most 1,000 chunks per upload.
LIMITS = Limits(max_payload_bytes=64 << 20, max_upload_chunks=1_000)


def serve(
    db: str,
    body: Callable[[payload_pb2_grpc.PayloadServiceStub, Any], Awaitable[Any]],
    idle_timeout: float = 60.0,
) -> Any:
    """Start a server on 127.0.0.1:0 with token auth (on ``db``: SQLite or PostgreSQL),
    run ``body`` against it, stop it."""

    async def main() -> Any:
        store = open_store(db)
        io = StoreIO()
        server = grpc.aio.server(interceptors=[TokenAuthInterceptor(TOKEN)])
        payload_pb2_grpc.add_PayloadServiceServicer_to_server(
            PayloadServicer(store, limits=LIMITS, io=io, idle_timeout=idle_timeout), server
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await asyncio.wait_for(
                    body(payload_pb2_grpc.PayloadServiceStub(channel), store), 60
                )
        finally:
            await server.stop(None)
            # An aborted upload's clean-up may still be on the writer thread: closing
            # the store under it crashed the process now and then (a segfault).
            io.close()
            store.close()

    return asyncio.run(main())


async def requests(
    data: bytes,
    *,
    size: int | None = None,
    sha: str = "",
    chunk: int = MAX_CHUNK,
    then_wait: bool = False,
) -> AsyncIterator[payload_pb2.UploadPayloadRequest]:
    """An upload of ``data``; ``then_wait``: the stream stays open after it (for a
    refusal that must come before the end: see ``_empty_chunks``)."""
    header = payload_pb2.UploadPayloadHeader(
        size_bytes=len(data) if size is None else size, metadata={"encoding": "pickle"}, sha256=sha
    )
    yield payload_pb2.UploadPayloadRequest(header=header)
    for start in range(0, len(data), chunk):
        yield payload_pb2.UploadPayloadRequest(chunk=data[start : start + chunk])
    if then_wait:
        await asyncio.Event().wait()  # until the call ends (the request stream is cancelled)


def test_a_large_value_goes_up_and_down_without_any_message_over_the_limit(
    db: str,
) -> None:
    data = bytes(range(256)) * (40 * 4096)  # 40 MiB: ten times gRPC's 4 MiB limit
    sha = hashlib.sha256(data).hexdigest()

    async def body(stub: payload_pb2_grpc.PayloadServiceStub, _: Any) -> None:
        response = await stub.UploadPayload(requests(data, sha=sha), metadata=AUTH)
        ref = response.ref
        assert (ref.size_bytes, ref.sha256, dict(ref.metadata)) == (
            len(data),
            sha,
            {"encoding": "pickle"},
        )
        received = bytearray()
        async for part in stub.DownloadPayload(
            payload_pb2.DownloadPayloadRequest(payload_id=ref.payload_id), metadata=AUTH
        ):
            assert len(part.chunk) <= MAX_CHUNK
            assert part.offset == len(received) and part.size_bytes == len(data)
            received += part.chunk
        assert bytes(received) == data
        tail = bytearray()
        async for part in stub.DownloadPayload(
            payload_pb2.DownloadPayloadRequest(payload_id=ref.payload_id, offset=len(data) - 10),
            metadata=AUTH,
        ):
            tail += part.chunk
        assert bytes(tail) == data[-10:]

    serve(db, body)


def test_a_json_upload_gets_its_preview_in_its_reference(db: str) -> None:
    data = b'"' + b"x" * 1_200_000 + b'"'

    async def upload() -> AsyncIterator[payload_pb2.UploadPayloadRequest]:
        header = payload_pb2.UploadPayloadHeader(
            size_bytes=len(data), metadata={"encoding": "json", "headwater.preview": "forged"}
        )
        yield payload_pb2.UploadPayloadRequest(header=header)
        cuts = [*range(0, 3000, 300), *range(3000, len(data), MAX_CHUNK), len(data)]
        for start, end in itertools.pairwise(cuts):  # the preview spans chunks
            yield payload_pb2.UploadPayloadRequest(chunk=data[start:end])

    async def body(stub: payload_pb2_grpc.PayloadServiceStub, _: Any) -> None:
        ref = (await stub.UploadPayload(upload(), metadata=AUTH)).ref
        assert ref.size_bytes == len(data)
        preview = '"' + "x" * 198 + "…"  # bounded, marked as cut; the forged one dropped
        assert dict(ref.metadata) == {"encoding": "json", "headwater.preview": preview}

    serve(db, body)


async def _status_of(call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


async def _chunks_only() -> AsyncIterator[payload_pb2.UploadPayloadRequest]:
    yield payload_pb2.UploadPayloadRequest(chunk=b"abc")


async def _nothing() -> AsyncIterator[payload_pb2.UploadPayloadRequest]:
    return
    yield  # pragma: no cover - makes this an async generator


async def _two_headers() -> AsyncIterator[payload_pb2.UploadPayloadRequest]:
    header = payload_pb2.UploadPayloadHeader(size_bytes=1, metadata={"encoding": "json"})
    yield payload_pb2.UploadPayloadRequest(header=header)
    yield payload_pb2.UploadPayloadRequest(header=header)


async def _empty_chunks() -> AsyncIterator[payload_pb2.UploadPayloadRequest]:
    """Empty chunks (200,000 of them once took the server 18 s and were accepted): the
    first is refused. The stream then waits instead of sending the rest: writing on
    after the server ended the call sometimes made the gRPC client report its own
    INTERNAL ("Internal error from Core") instead of the server's status. A server
    that waited for more would time the test out."""
    header = payload_pb2.UploadPayloadHeader(size_bytes=0, metadata={"encoding": "json"})
    yield payload_pb2.UploadPayloadRequest(header=header)
    yield payload_pb2.UploadPayloadRequest(chunk=b"")
    await asyncio.Event().wait()  # until the call ends (the request stream is cancelled)


async def _neither() -> AsyncIterator[payload_pb2.UploadPayloadRequest]:
    """A header, then a message with neither a chunk nor a header (it was told "only
    one header per upload", a user trial)."""
    header = payload_pb2.UploadPayloadHeader(size_bytes=1, metadata={"encoding": "json"})
    yield payload_pb2.UploadPayloadRequest(header=header)
    yield payload_pb2.UploadPayloadRequest()


async def _no_encoding() -> AsyncIterator[payload_pb2.UploadPayloadRequest]:
    yield payload_pb2.UploadPayloadRequest(header=payload_pb2.UploadPayloadHeader(size_bytes=1))


@pytest.mark.parametrize(
    ("make_requests", "code", "fragment"),
    [
        (lambda: requests(b"abcdef", size=3), grpc.StatusCode.INVALID_ARGUMENT, "declared"),
        (lambda: requests(b"abc", size=9), grpc.StatusCode.INVALID_ARGUMENT, "declared 9"),
        (lambda: requests(b"abc", sha="0" * 64), grpc.StatusCode.INVALID_ARGUMENT, "sha256"),
        (
            lambda: requests(b"x" * (MAX_CHUNK + 1), chunk=MAX_CHUNK + 1),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"limit max_chunk_bytes = {MAX_CHUNK}",
        ),
        (
            lambda: requests(b"", size=65 << 20),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "declares 68157440 bytes, over this server's limit max_payload_bytes = 67108864",
        ),
        (_empty_chunks, grpc.StatusCode.INVALID_ARGUMENT, "chunk 1 of the upload is empty"),
        (
            lambda: requests(b"x" * 1_001, size=2_000, chunk=1, then_wait=True),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "sent 1001 chunks, over this server's limit max_upload_chunks = 1000",
        ),
        (lambda: requests(b"", size=-1), grpc.StatusCode.INVALID_ARGUMENT, ">= 0"),
        (_chunks_only, grpc.StatusCode.INVALID_ARGUMENT, "start with its header"),
        (_nothing, grpc.StatusCode.INVALID_ARGUMENT, "no header"),
        (_two_headers, grpc.StatusCode.INVALID_ARGUMENT, "one header"),
        (_neither, grpc.StatusCode.INVALID_ARGUMENT, "neither a chunk nor a header"),
        (_no_encoding, grpc.StatusCode.INVALID_ARGUMENT, "'encoding'"),
    ],
)
def test_bad_uploads_get_a_clear_status_and_store_nothing(
    db: str, make_requests: Callable[[], Any], code: grpc.StatusCode, fragment: str
) -> None:
    async def body(stub: payload_pb2_grpc.PayloadServiceStub, store: Any) -> None:
        got, details = await _status_of(stub.UploadPayload(make_requests(), metadata=AUTH))
        assert got == code, details
        assert fragment in details
        assert count(store, "payload_chunks") == 0
        assert count(store, "payloads") == 0

    serve(db, body)


@pytest.mark.parametrize("header", [False, True])
def test_an_upload_that_stalls_is_ended_and_discarded(db: str, header: bool) -> None:
    """A client that opens an upload (with its header and a chunk, or nothing at all)
    and then sends nothing more is not waited for for ever: the call ends with
    DEADLINE_EXCEEDED and nothing stays in the store."""

    async def stalled() -> AsyncIterator[payload_pb2.UploadPayloadRequest]:
        if header:
            meta = payload_pb2.UploadPayloadHeader(size_bytes=10, metadata={"encoding": "json"})
            yield payload_pb2.UploadPayloadRequest(header=meta)
            yield payload_pb2.UploadPayloadRequest(chunk=b"12345")
        await asyncio.Event().wait()  # until the call ends (the request stream is cancelled)
        yield payload_pb2.UploadPayloadRequest()  # (never reached)

    async def body(stub: payload_pb2_grpc.PayloadServiceStub, store: Any) -> None:
        code, details = await _status_of(stub.UploadPayload(stalled(), metadata=AUTH))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED, details
        assert details == "the upload sent nothing for 0.5s: it was discarded"
        assert count(store, "payload_chunks") == 0
        assert count(store, "payloads") == 0
        ref = (await stub.UploadPayload(requests(b"hello"), metadata=AUTH)).ref
        assert ref.size_bytes == 5  # the server serves the next upload as ever

    serve(db, body, idle_timeout=0.5)


def test_bad_downloads_get_not_found_or_out_of_range(db: str) -> None:
    async def body(stub: payload_pb2_grpc.PayloadServiceStub, _: Any) -> None:
        ref = (await stub.UploadPayload(requests(b"hello"), metadata=AUTH)).ref

        async def first(request: payload_pb2.DownloadPayloadRequest) -> None:
            async for _ in stub.DownloadPayload(request, metadata=AUTH):
                pass

        code, details = await _status_of(
            first(payload_pb2.DownloadPayloadRequest(payload_id="nope"))
        )
        assert code == grpc.StatusCode.NOT_FOUND and "'nope'" in details
        code, details = await _status_of(
            first(payload_pb2.DownloadPayloadRequest(payload_id=ref.payload_id, offset=6))
        )
        assert code == grpc.StatusCode.OUT_OF_RANGE and "offset 6" in details

    serve(db, body)


@pytest.mark.parametrize(
    ("metadata", "fragment"),
    [((), "missing token"), ((("authorization", "Bearer wrong"),), "invalid token")],
)
def test_calls_without_the_right_token_are_unauthenticated(
    db: str, metadata: tuple[tuple[str, str], ...], fragment: str
) -> None:
    async def body(stub: payload_pb2_grpc.PayloadServiceStub, store: Any) -> None:
        code, details = await _status_of(stub.UploadPayload(requests(b"x"), metadata=metadata))
        assert code == grpc.StatusCode.UNAUTHENTICATED and fragment in details

        async def download() -> None:
            async for _ in stub.DownloadPayload(
                payload_pb2.DownloadPayloadRequest(payload_id="x"), metadata=metadata
            ):
                pass

        code, _ = await _status_of(download())
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert count(store, "payloads") == 0

    serve(db, body)
