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
from collections.abc import Callable, Iterator, Sequence

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
#: How long a patient transfer waits for a server that is away (UNAVAILABLE: it
#: restarts, stands by until its lease is its own, or is not there), and for the next
#: server after a failover (the worker's channel moves to it): a task's large result
#: was lost, its run FAILED, when the server restarted during the upload (the tries
#: gave up after ~1.4 s; a user trial).
SERVER_PATIENCE = 300.0

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

    def after(self, exc: grpc.RpcError, moved: bool = False) -> None:
        """Sleep before the next try, or raise PayloadTransferError for ``exc``.
        ``moved``: the transfer's channel was replaced while it ran (a worker that
        moved to another server, closing the old channel: CANCELLED)."""
        waited = time.monotonic() - self.since
        if self.patient and refusal_cause(exc) == CAUSE_STORE and waited < STORE_PATIENCE:
            self._pause("the server's store takes it", exc)
            return
        code = exc.code()
        away = code == grpc.StatusCode.UNAVAILABLE or (moved and code == grpc.StatusCode.CANCELLED)
        if self.patient and away and waited < SERVER_PATIENCE:
            self._pause("a server takes it", exc)
            return
        self.unreachable += 1
        if exc.code() != grpc.StatusCode.UNAVAILABLE or self.unreachable >= self.attempts:
            raise PayloadTransferError(
                f"cannot {self.what}: {exc.code().name}: {exc.details()}"
            ) from None
        time.sleep(0.2 * 2 ** (self.unreachable - 1))

    def _pause(self, until: str, exc: grpc.RpcError) -> None:
        if self.refused == 0:
            log.warning(
                "cannot %s now (%s); trying again until %s", self.what, exc.details(), until
            )
        time.sleep(min(STORE_PAUSE_MAX, 0.2 * 2 ** min(self.refused, 5)))
        self.refused += 1


class PayloadTransfer:
    """Uploads and downloads payloads in chunks over one (synchronous) channel.

    Args:
        channel: a channel to the control plane.
        metadata: call metadata (the token).
        patient: wait for an unreachable server and retry (workers, which reconnect
            anyway); False fails at once (a client with a user waiting).
        follow: the channel to use now, asked before each try (a worker's, which
            moves to another server after a failover); without it, ``channel``.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        metadata: Sequence[tuple[str, str]] = (),
        *,
        patient: bool = True,
        follow: Callable[[], grpc.Channel] | None = None,
    ) -> None:
        self._channel = channel
        self._stub = payload_pb2_grpc.PayloadServiceStub(channel)
        self._follow = follow
        self._metadata = tuple(metadata)
        self._attempts = ATTEMPTS if patient else 1
        self._patient = patient

    def _current(self) -> tuple[grpc.Channel, payload_pb2_grpc.PayloadServiceStub]:
        """The channel and stub for the next try."""
        if self._follow is not None:
            channel = self._follow()
            if channel is not self._channel:
                self._channel = channel
                self._stub = payload_pb2_grpc.PayloadServiceStub(channel)
        return self._channel, self._stub

    def _moved(self, channel: grpc.Channel) -> bool:
        """Whether the channel to use now is another than ``channel``."""
        return self._follow is not None and self._follow() is not channel

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
            channel, stub = self._current()
            try:
                response = stub.UploadPayload(
                    requests(),
                    metadata=self._metadata,
                    wait_for_ready=self._patient,
                    timeout=_deadline(len(data)),
                )
                return response.ref
            except grpc.RpcError as exc:
                waits.after(exc, self._moved(channel))
            except ValueError:  # "closed channel": the worker moved meanwhile
                if not self._moved(channel):
                    raise

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
            channel, stub = self._current()
            try:
                for part in stub.DownloadPayload(
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
                waits.after(exc, self._moved(channel))
            except ValueError:  # "closed channel": the worker moved meanwhile
                if not self._moved(channel):
                    raise
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
