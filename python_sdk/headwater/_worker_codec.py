"""The worker's side of the wire: inputs in, results and failures out, large values in
chunks through PayloadService.

Kept apart from the session logic in ``_worker`` so each half stays small. Nothing
here holds state: the worker passes in a ``PayloadTransfer`` bound to its channel.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grpc

from headwater.v1 import payload_pb2, payload_pb2_grpc, state_pb2, worker_pb2
from headwater_runtime.engine import FailureInfo

from ._payloads import EncodedValue, EncodingError, decode_value, encode

#: Largest chunk sent in one upload message (PayloadService refuses bigger ones).
CHUNK = 1 << 20
#: Used when the Welcome gives no inline limit.
DEFAULT_INLINE_LIMIT = 1 << 20
#: Inline bytes allowed in one message, all values together: gRPC refuses messages over
#: 4 MiB, so a split result whose elements are small but many goes partly by reference.
MESSAGE_BUDGET = 3 << 20
#: Hard ceiling checked on the final message (the 4 MiB limit minus headroom).
MESSAGE_LIMIT = (4 << 20) - (64 << 10)
#: Metadata key on a split result: its number of elements (read by the control plane).
LENGTH_KEY = "headwater.length"
#: Metadata key on a result split at a path (``b.map(a["rows"])``): the path as JSON.
SPLIT_PATH_KEY = "headwater.split_path"
#: Longest stack trace / message / log line sent; the rest is cut (a deep recursion's
#: traceback must not make a message the server refuses).
TEXT_LIMIT = 64 << 10


class PayloadTransferError(Exception):
    """A payload could not be moved, or its bytes do not match their reference."""


class PayloadTransfer:
    """Uploads and downloads payloads in chunks over one channel."""

    def __init__(self, channel: grpc.Channel, metadata: Sequence[tuple[str, str]]) -> None:
        self._stub = payload_pb2_grpc.PayloadServiceStub(channel)
        self._metadata = tuple(metadata)

    def download(self, ref: payload_pb2.PayloadRef) -> bytes:
        """The bytes of a stored payload; resumes from where it stopped on UNAVAILABLE,
        and checks size and SHA-256."""
        if ref.location:
            raise PayloadTransferError(
                f"payload {ref.payload_id!r} is held in {ref.location!r}, which this worker "
                "cannot read"
            )
        received = bytearray()
        for attempt in range(4):
            request = payload_pb2.DownloadPayloadRequest(
                payload_id=ref.payload_id, offset=len(received)
            )
            try:
                for part in self._stub.DownloadPayload(
                    request, metadata=self._metadata, wait_for_ready=True, timeout=_deadline(ref)
                ):
                    if part.offset != len(received):
                        raise PayloadTransferError(
                            f"payload {ref.payload_id!r}: chunk at offset {part.offset}, "
                            f"expected {len(received)}"
                        )
                    received += part.chunk
                break
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 3:
                    raise PayloadTransferError(
                        f"cannot download payload {ref.payload_id!r}: "
                        f"{exc.code().name}: {exc.details()}"
                    ) from None
                time.sleep(0.2 * 2**attempt)
        data = bytes(received)
        if ref.size_bytes and len(data) != ref.size_bytes:
            raise PayloadTransferError(
                f"payload {ref.payload_id!r}: got {len(data)} bytes, expected {ref.size_bytes}"
            )
        if ref.sha256 and hashlib.sha256(data).hexdigest() != ref.sha256:
            raise PayloadTransferError(f"payload {ref.payload_id!r}: SHA-256 mismatch")
        return data

    def upload(self, encoded: EncodedValue) -> payload_pb2.PayloadRef:
        """Store encoded bytes (header, then chunks of at most 1 MiB); their reference."""
        data = encoded.data
        header = payload_pb2.UploadPayloadHeader(
            size_bytes=len(data),
            metadata=encoded.metadata,
            sha256=hashlib.sha256(data).hexdigest(),
        )

        def requests() -> Iterator[payload_pb2.UploadPayloadRequest]:
            yield payload_pb2.UploadPayloadRequest(header=header)
            view = memoryview(data)
            for start in range(0, len(data), CHUNK):
                yield payload_pb2.UploadPayloadRequest(chunk=bytes(view[start : start + CHUNK]))

        for attempt in range(4):
            try:
                response = self._stub.UploadPayload(
                    requests(),
                    metadata=self._metadata,
                    wait_for_ready=True,
                    timeout=60 + len(data) / CHUNK,
                )
                return response.ref  # type: ignore[no-any-return]
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 3:
                    raise PayloadTransferError(
                        f"cannot upload a payload of {len(data)} bytes: "
                        f"{exc.code().name}: {exc.details()}"
                    ) from None
                time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")


def _deadline(ref: payload_pb2.PayloadRef) -> float:
    # Generous: a minute plus a second per MiB (only a hung server should hit it).
    return 60 + ref.size_bytes / CHUNK


# Inputs --------------------------------------------------------------------------------


def decode_input(msg: worker_pb2.InputValue, transfer: PayloadTransfer) -> Any:
    """The Python value of one assignment argument (decoded, assembled, then selected)."""
    kind = msg.WhichOneof("kind")
    value: Any
    if kind == "value":
        value = decode_value(msg.value, transfer.download)
    elif kind == "list":
        items = [decode_input(i, transfer) for i in msg.list.items]
        value = tuple(items) if msg.list.tuple else items
    elif kind == "map":
        value = {e.key: decode_input(e.value, transfer) for e in msg.map.entries}
    else:
        value = None
    for element in msg.path:
        value = value[element.key if element.WhichOneof("selector") == "key" else element.index]
    return value


def decode_inputs(assignment: worker_pb2.Assignment, transfer: PayloadTransfer) -> dict[str, Any]:
    """Arguments by name, in ``argument_order`` first (then any others)."""
    names = [n for n in assignment.argument_order if n in assignment.inputs]
    names += sorted(n for n in assignment.inputs if n not in set(names))
    return {name: decode_input(assignment.inputs[name], transfer) for name in names}


# Results -------------------------------------------------------------------------------


def _elements(value: Any) -> list[Any] | None:
    """The elements of a sequence result, as the embedded host would map over them."""
    if isinstance(value, str | bytes | bytearray | Mapping):
        return None
    if isinstance(value, list | tuple):
        return list(value)
    if hasattr(value, "__len__") and hasattr(value, "__getitem__"):
        try:
            return [value[i] for i in range(len(value))]
        except Exception as exc:
            raise EncodingError(
                f"a {type(value).__name__} result cannot be split into elements "
                f"({type(exc).__name__}: {exc})"
            ) from exc
    return None


def _part(value: Any, path: Sequence[str | int]) -> Any:
    """The part of a result a downstream task maps over; None when the path does not
    fit (the mapped task then fails with "not a sequence", as embedded)."""
    for element in path:
        try:
            value = value[element]
        except (LookupError, TypeError):
            return None
    return value


class _Packer:
    """Turns encoded values into Value messages, inline while the budget allows."""

    def __init__(self, transfer: PayloadTransfer, inline_limit: int) -> None:
        self.transfer = transfer
        self.limit = min(inline_limit if inline_limit > 0 else DEFAULT_INLINE_LIMIT, MESSAGE_BUDGET)
        self.inline_total = 0

    def value(self, encoded: EncodedValue) -> payload_pb2.Value:
        size = len(encoded.data)
        if size <= self.limit and self.inline_total + size <= MESSAGE_BUDGET:
            self.inline_total += size
            return payload_pb2.Value(
                inline=payload_pb2.Payload(data=encoded.data, metadata=encoded.metadata)
            )
        return payload_pb2.Value(ref=self.transfer.upload(encoded))


def encode_result(
    value: Any,
    *,
    result_encoding: str,
    split: bool,
    inline_limit: int,
    transfer: PayloadTransfer,
    split_path: Sequence[str | int] = (),
) -> payload_pb2.Value:
    """A task's result as a Value: inline when small, else uploaded; with each element
    (of the whole result, or of the part at ``split_path``) in ``items`` when the
    result is to be split. Raises EncodingError."""
    portable = result_encoding == "json"
    if result_encoding not in ("", "json", "pickle"):
        raise EncodingError(f"unknown result encoding {result_encoding!r}")
    encoded = encode(value, portable=portable)
    elements = _elements(_part(value, split_path)) if split else None
    packer = _Packer(transfer, inline_limit)
    if elements is not None:
        meta = {**encoded.metadata, LENGTH_KEY: str(len(elements))}
        if split_path:
            meta[SPLIT_PATH_KEY] = json.dumps(list(split_path))
        encoded = EncodedValue(encoded.data, meta)
    result = packer.value(encoded)
    if elements is not None:
        encoded_items = [encode(e, portable=portable) for e in elements]
        # Smallest first, so as many as possible stay inline; then back in order.
        order = sorted(range(len(encoded_items)), key=lambda i: len(encoded_items[i].data))
        packed: dict[int, payload_pb2.Value] = {i: packer.value(encoded_items[i]) for i in order}
        result.items.extend(packed[i] for i in range(len(encoded_items)))
    if result.ByteSize() > MESSAGE_LIMIT:
        raise EncodingError(
            f"the result split into {len(elements or ())} elements does not fit in one "
            "message, even with every element sent by reference"
        )
    return result


# Failures ------------------------------------------------------------------------------


def _cut(text: str) -> str:
    if len(text) <= TEXT_LIMIT:
        return text
    half = TEXT_LIMIT // 2
    return f"{text[:half]}\n... ({len(text) - TEXT_LIMIT} characters cut) ...\n{text[-half:]}"


def failure_message(info: FailureInfo) -> state_pb2.Failure:
    """The contract's Failure for an engine FailureInfo (causes nested)."""
    msg = state_pb2.Failure(
        type=info.type,
        message=_cut(info.message),
        stack_trace=_cut(info.traceback),
        retryable=info.retryable,
        language=info.language or "python",
    )
    if info.cause is not None:
        msg.cause.CopyFrom(failure_message(info.cause))
    return msg


def failure(
    type_: str, message: str, *, retryable: bool, cause: FailureInfo | None = None
) -> state_pb2.Failure:
    """A Failure raised by the worker itself (not by the task's code)."""
    return failure_message(
        FailureInfo(type=type_, message=message, retryable=retryable, cause=cause)
    )
