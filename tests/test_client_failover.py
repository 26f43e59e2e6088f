"""A Client given several servers tries the next one when a call cannot be answered
where it went: a server that is unreachable, that ends the call as it stops serving
(a leader stepping down: CANCELLED), or that does not answer within one attempt's
bound (a frozen leader). Real gRPC servers in this process stand in for the leader
and the standby."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from headwater import Client, ServerError
from headwater import _client as client_module
from headwater.v1 import control_plane_pb2 as cp
from headwater.v1 import control_plane_pb2_grpc
from headwater.wire import STANDBY_REFUSAL

Behaviour = Callable[[grpc.ServicerContext], cp.GetServerInfoResponse]


class _Control(control_plane_pb2_grpc.ControlPlaneServiceServicer):
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.calls = 0

    def GetServerInfo(
        self, request: cp.GetServerInfoRequest, context: grpc.ServicerContext
    ) -> cp.GetServerInfoResponse:
        self.calls += 1
        return self.behaviour(context)


@pytest.fixture
def serve() -> Iterator[Callable[[Behaviour], tuple[str, _Control]]]:
    servers: list[grpc.Server] = []

    def start(behaviour: Behaviour) -> tuple[str, _Control]:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        control = _Control(behaviour)
        control_plane_pb2_grpc.add_ControlPlaneServiceServicer_to_server(control, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}", control

    yield start
    for server in servers:
        server.stop(None)


def answers(context: grpc.ServicerContext) -> cp.GetServerInfoResponse:
    return cp.GetServerInfoResponse(server_version="standby-now-leader", protocol_version=1)


def steps_down(context: grpc.ServicerContext) -> Any:
    context.abort(grpc.StatusCode.CANCELLED, "the server is stopping")


def frozen(release: threading.Event) -> Behaviour:
    def behaviour(context: grpc.ServicerContext) -> Any:
        release.wait(30)  # (bounded: the test sets it at its end)
        return answers(context)

    return behaviour


def test_a_call_ended_by_a_server_stepping_down_is_tried_on_the_next(serve: Any) -> None:
    old, old_control = serve(steps_down)
    new, _ = serve(answers)
    with Client(f"{old},{new}", timeout=10) as client:
        assert client.server_info()["server_version"] == "standby-now-leader"
    assert old_control.calls == 1
    with Client(old, timeout=10) as alone, pytest.raises(ServerError) as raised:
        alone.server_info()  # one server: nowhere else to go
    assert raised.value.code is grpc.StatusCode.CANCELLED


def test_a_frozen_server_holds_a_call_one_attempt_long_then_the_next_is_tried(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "ATTEMPT_TIMEOUT", 0.5)
    release = threading.Event()
    try:
        old, old_control = serve(frozen(release))
        new, _ = serve(answers)
        with Client(f"{old},{new}", timeout=20) as client:
            assert client.server_info()["server_version"] == "standby-now-leader"
        assert old_control.calls == 1
        # Alone, a slow server has the call's whole timeout (no attempt bound).
        with Client(old, timeout=1.5) as alone, pytest.raises(ServerError) as raised:
            alone.server_info()
        assert raised.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        release.set()


def _closed_port() -> str:
    """An address where nothing listens (a port bound, then let go)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def test_no_server_at_any_address_fails_after_one_round_as_with_one_address(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user trial: `runs list --server A,B` with both down waited out the call's 30 s
    timeout (one address fails at once). A client that never reached a server now
    gives up after one round where no server answered; a standby's refusal is an
    answer, so a client started during a failover still waits for the new leader."""
    rounds: list[str] = []
    failover = Client._failover

    def counted(self: Client, *args: Any) -> bool:
        rounds.append(self._addresses.current)
        return failover(self, *args)

    monkeypatch.setattr(Client, "_failover", counted)
    monkeypatch.setattr(client_module, "FAILOVER_PAUSE", 0.01)
    dead = [_closed_port(), _closed_port()]
    with Client(",".join(dead), timeout=600) as client, pytest.raises(ServerError) as raised:
        client.server_info()
    assert raised.value.code is grpc.StatusCode.UNAVAILABLE
    assert rounds == dead  # each address once, then the error

    refusals = iter(range(3))

    def standby_then_leader(context: grpc.ServicerContext) -> Any:
        if next(refusals, None) is not None:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{STANDBY_REFUSAL}; no leader yet")
        return answers(context)

    standby, control = serve(standby_then_leader)
    rounds.clear()
    with Client(f"{dead[0]},{standby}", timeout=600) as client:
        assert client.server_info()["server_version"] == "standby-now-leader"
    assert control.calls == 4 and len(rounds) == 7  # three refusals waited out, and the dead one


def test_one_server_standing_by_until_its_lease_runs_out_is_waited_for(serve: Any) -> None:
    """A server restarted after a crash on PostgreSQL stands by until its own old
    lease runs out (up to --lease): every CLI command failed at once meanwhile (a user
    trial). A standby's refusal took nothing, so the call is sent again until the
    timeout; any other refusal still ends it."""
    refusals = iter(range(3))

    def restarting(context: grpc.ServicerContext) -> Any:
        if next(refusals, None) is not None:
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"{STANDBY_REFUSAL}: a previous server at this address leads until its "
                "lease runs out",
            )
        return answers(context)

    address, control = serve(restarting)
    with Client(address, timeout=60) as client:
        assert client.server_info()["server_version"] == "standby-now-leader"
    assert control.calls == 4

    def stopping(context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAVAILABLE, "the server is stopping")

    other, refused = serve(stopping)
    with Client(other, timeout=60) as client, pytest.raises(ServerError):
        client.server_info()
    assert refused.calls == 1
