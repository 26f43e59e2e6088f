"""A worker's payload transfers wait for a server that is away, and follow it to the
next one: a task's large result was lost, and its run FAILED, when the server restarted
(a standby until its lease ran out) or failed over during the upload (a user trial: the
tries gave up after ~1.4 s, and a CANCELLED upload was not tried again)."""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from headwater.v1 import payload_pb2, payload_pb2_grpc
from headwater.wire import STANDBY_REFUSAL, encode
from headwater.wire import _transfer as transfer_module
from headwater.wire._transfer import PayloadTransfer, PayloadTransferError

Answer = Callable[[grpc.ServicerContext], payload_pb2.UploadPayloadResponse]


class _Payloads(payload_pb2_grpc.PayloadServiceServicer):
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.calls = 0

    def UploadPayload(
        self, request_iterator: Iterator[payload_pb2.UploadPayloadRequest], context: Any
    ) -> payload_pb2.UploadPayloadResponse:
        self.calls += 1
        for _ in request_iterator:  # (the whole upload, as a server reads it)
            pass
        return self.answer(context)


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], tuple[str, _Payloads]]]:
    servers: list[grpc.Server] = []

    def start(answer: Answer) -> tuple[str, _Payloads]:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        payloads = _Payloads(answer)
        payload_pb2_grpc.add_PayloadServiceServicer_to_server(payloads, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}", payloads

    yield start
    for server in servers:
        server.stop(None)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The transfer's clock, moved by its pauses (which take no time here)."""
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    monkeypatch.setattr(
        transfer_module, "time", types.SimpleNamespace(monotonic=lambda: now[0], sleep=sleep)
    )
    return now


def stored(context: Any) -> payload_pb2.UploadPayloadResponse:
    return payload_pb2.UploadPayloadResponse(ref=payload_pb2.PayloadRef(payload_id="stored"))


def test_an_upload_waits_for_a_restarted_server_to_lead(serve: Any, clock: list[float]) -> None:
    refusals = iter(range(8))

    def standby_then_leader(context: Any) -> payload_pb2.UploadPayloadResponse:
        if next(refusals, None) is not None:
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"{STANDBY_REFUSAL}: a previous server leads until its lease runs out",
            )
        return stored(context)

    address, payloads = serve(standby_then_leader)
    encoded = encode(b"x" * 1000)
    with grpc.insecure_channel(address) as channel:
        assert PayloadTransfer(channel).upload(encoded).payload_id == "stored"
        assert payloads.calls == 9  # eight refusals waited out (they gave up at four)
        assert clock[0] < transfer_module.SERVER_PATIENCE
        # A client with a user waiting does not wait.
        payloads.calls = 0
        refusals = iter(range(1))
        with pytest.raises(PayloadTransferError, match="UNAVAILABLE: this Headwater server is"):
            PayloadTransfer(channel, patient=False).upload(encoded)
        assert payloads.calls == 1


def test_an_upload_gives_up_on_a_server_away_past_its_patience(
    serve: Any, clock: list[float]
) -> None:
    def away(context: Any) -> payload_pb2.UploadPayloadResponse:
        context.abort(grpc.StatusCode.UNAVAILABLE, "the server is stopping")
        raise AssertionError("unreachable")

    address, payloads = serve(away)
    with grpc.insecure_channel(address) as channel, pytest.raises(PayloadTransferError) as raised:
        PayloadTransfer(channel).upload(encode(b"x" * 1000))
    assert str(raised.value) == (
        "cannot upload a payload of 1018 bytes: UNAVAILABLE: the server is stopping"
    )
    assert clock[0] >= transfer_module.SERVER_PATIENCE and payloads.calls > 10


def test_an_upload_cut_by_a_move_to_another_server_goes_on_there(serve: Any) -> None:
    """A worker that fails over closes its old channel: the upload under way ends
    CANCELLED, and is sent again on the channel the worker uses now."""
    channels: dict[str, grpc.Channel] = {}
    current: list[grpc.Channel] = []

    def moves(context: Any) -> payload_pb2.UploadPayloadResponse:
        current[0] = channels["new"]
        channels["old"].close()  # (as Worker._use_payload_channel does)
        context.abort(grpc.StatusCode.UNAVAILABLE, "never seen: the channel is closed")
        raise AssertionError("unreachable")

    old, old_payloads = serve(moves)
    new, new_payloads = serve(stored)
    channels["old"] = grpc.insecure_channel(old)
    channels["new"] = grpc.insecure_channel(new)
    current.append(channels["old"])
    try:
        transfer = PayloadTransfer(channels["old"], follow=lambda: current[0])
        assert transfer.upload(encode(b"x" * 1000)).payload_id == "stored"
        assert (old_payloads.calls, new_payloads.calls) == (1, 1)
    finally:
        channels["new"].close()
