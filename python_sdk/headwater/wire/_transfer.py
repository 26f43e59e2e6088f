"""Moving payloads through PayloadService in chunks (clients and workers alike).

Values above the inline limit never travel inside another message: they are uploaded
(a header, then chunks of at most CHUNK_SIZE) and referenced by a PayloadRef, and
downloaded the same way, resuming where a broken stream stopped and checking size and
SHA-256. gRPC's 4 MiB message limit is therefore never what stops a large value.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Sequence

import grpc

from headwater.v1 import payload_pb2, payload_pb2_grpc

from ._codec import DASK_LOCATION, UNEXPORTABLE_KEY, EncodedValue
from ._limits import CHUNK_SIZE
from ._servers import CAUSE_STORE, refusal_cause

#: Tries of an upload or download the server did not answer (UNAVAILABLE).
ATTEMPTS = 4
#: Longest pause between the tries of a patient transfer the server refused because
#: its store cannot take it now (a full disk, its database down), and how long it is
#: tried (the server keeps its runs meanwhile; docs/durability.md). A payload larger
#: than the disk will ever hold fails then, rather than holding its worker for good.
STORE_PAUSE_MAX, STORE_PATIENCE = 5.0, 3600.0

log = logging.getLogger("headwater.transfer")


class PayloadTransferError(Exception):
    """A payload could not be moved, or its bytes do not match their reference."""


def chunks(data: bytes, size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """``data`` in pieces of at most ``size`` bytes (without copying it whole)."""
    view = memoryview(data)
    for start in range(0, len(data), size):
        yield bytes(view[start : start + size])


def _deadline(size: int) -> float:
    # Generous: a minute plus a second per chunk (only a hung server should hit it).
    return 60 + size / CHUNK_SIZE


class _Waits:
    """When a failed transfer is tried again, after how long: an unreachable server
    (UNAVAILABLE) ``attempts`` times with a growing pause; a store the server says
    cannot take it now (trailing metadata ``headwater-cause: store``), when patient,
    until it can, for up to STORE_PATIENCE (pauses up to STORE_PAUSE_MAX). Anything
    else raises at once."""

    def __init__(self, patient: bool, attempts: int, what: str) -> None:
        self.patient = patient
        self.attempts = attempts
        self.what = what
        self.unreachable = 0
        self.refused = 0
        self.since = time.monotonic()

    def after(self, exc: grpc.RpcError) -> None:
        """Sleep before the next try, or raise PayloadTransferError for ``exc``."""
        waited = time.monotonic() - self.since
        if self.patient and refusal_cause(exc) == CAUSE_STORE and waited < STORE_PATIENCE:
            if self.refused == 0:
                log.warning(
                    "cannot %s now (%s); trying again until the server's store takes it",
                    self.what,
                    exc.details(),
                )
            time.sleep(min(STORE_PAUSE_MAX, 0.2 * 2 ** min(self.refused, 5)))
            self.refused += 1
            return
        self.unreachable += 1
        if exc.code() != grpc.StatusCode.UNAVAILABLE or self.unreachable >= self.attempts:
            raise PayloadTransferError(
                f"cannot {self.what}: {exc.code().name}: {exc.details()}"
            ) from None
        time.sleep(0.2 * 2 ** (self.unreachable - 1))


class PayloadTransfer:
    """Uploads and downloads payloads in chunks over one (synchronous) channel.

    Args:
        channel: a channel to the control plane.
        metadata: call metadata (the token).
        patient: wait for an unreachable server and retry (workers, which reconnect
            anyway); False fails at once (a client with a user waiting).
    """

    def __init__(
        self,
        channel: grpc.Channel,
        metadata: Sequence[tuple[str, str]] = (),
        *,
        patient: bool = True,
    ) -> None:
        self._stub = payload_pb2_grpc.PayloadServiceStub(channel)
        self._metadata = tuple(metadata)
        self._attempts = ATTEMPTS if patient else 1
        self._patient = patient

    def upload(self, encoded: EncodedValue) -> payload_pb2.PayloadRef:
        """Store encoded bytes; their reference. Retries while the server is away."""
        data = encoded.data
        header = payload_pb2.UploadPayloadHeader(
            size_bytes=len(data),
            metadata=encoded.metadata,
            sha256=hashlib.sha256(data).hexdigest(),
        )

        def requests() -> Iterator[payload_pb2.UploadPayloadRequest]:
            yield payload_pb2.UploadPayloadRequest(header=header)
            for chunk in chunks(data):
                yield payload_pb2.UploadPayloadRequest(chunk=chunk)

        waits = _Waits(self._patient, self._attempts, f"upload a payload of {len(data)} bytes")
        while True:
            try:
                response = self._stub.UploadPayload(
                    requests(),
                    metadata=self._metadata,
                    wait_for_ready=self._patient,
                    timeout=_deadline(len(data)),
                )
                return response.ref
            except grpc.RpcError as exc:
                waits.after(exc)

    def download(self, ref: payload_pb2.PayloadRef) -> bytes:
        """The bytes of a stored payload; resumes from where it stopped on UNAVAILABLE,
        and checks size and SHA-256."""
        if ref.location == DASK_LOCATION:  # the server exports those it still can
            why = ref.metadata.get(UNEXPORTABLE_KEY)
            if why:
                raise PayloadTransferError(
                    f"value {ref.payload_id!r} is held in a Dask cluster and cannot be read "
                    f"out of it: {why}"
                )
            raise PayloadTransferError(
                f"value {ref.payload_id!r} was held in a Dask cluster and is no longer "
                "available: the Dask bridge worker that held it is gone, or the server "
                "released it after its run ended (headwater server --dask-release-after)"
            )
        if ref.location:
            raise PayloadTransferError(
                f"payload {ref.payload_id!r} is held in {ref.location!r}, which this process "
                "cannot read"
            )
        received = bytearray()
        waits = _Waits(self._patient, self._attempts, f"download payload {ref.payload_id!r}")
        while True:
            request = payload_pb2.DownloadPayloadRequest(
                payload_id=ref.payload_id, offset=len(received)
            )
            try:
                for part in self._stub.DownloadPayload(
                    request,
                    metadata=self._metadata,
                    wait_for_ready=self._patient,
                    timeout=_deadline(ref.size_bytes),
                ):
                    if part.offset != len(received):
                        raise PayloadTransferError(
                            f"payload {ref.payload_id!r}: chunk at offset {part.offset}, "
                            f"expected {len(received)}"
                        )
                    received += part.chunk
                break
            except grpc.RpcError as exc:
                waits.after(exc)
        data = bytes(received)
        if ref.size_bytes and len(data) != ref.size_bytes:
            raise PayloadTransferError(
                f"payload {ref.payload_id!r}: got {len(data)} bytes, expected {ref.size_bytes}"
            )
        if ref.sha256 and hashlib.sha256(data).hexdigest() != ref.sha256:
            raise PayloadTransferError(f"payload {ref.payload_id!r}: SHA-256 mismatch")
        return data

    def value(self, encoded: EncodedValue, inline_limit: int) -> payload_pb2.Value:
        """A Value message: inline when the whole inline Value (data and metadata)
        takes at most ``inline_limit`` bytes, as a server counts a parameter against its
        limit (counting the data alone, a value of exactly the limit was refused), else
        uploaded."""
        payload = payload_pb2.Payload(data=encoded.data, metadata=encoded.metadata)
        inline = payload_pb2.Value(inline=payload)
        if inline.ByteSize() <= inline_limit:
            return inline
        return payload_pb2.Value(ref=self.upload(encoded))
