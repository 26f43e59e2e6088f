"""Every RPC x every role x {no credential, wrong, revoked, right}: the exact status.

The server runs in process over TLS with one credential per role (and a revoked one
per role) stored hashed in its database, plus the ``--token`` admin shortcut. Each
RPC gets a request that passes authorization only to fail (or succeed) in a known
way, so the status tells exactly which check answered. The table is printed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from tls_certs import make_certs

from headwater.v1 import access_pb2, payload_pb2, worker_pb2
from headwater.v1 import control_plane_pb2 as cp
from headwater.v1 import operations_pb2 as ops
from headwater.wire import Role, TLSSettings, open_aio_channel
from headwater_runtime.server import REQUIRED_ROLES, allows, new_credential, start_server
from headwater_runtime.server._app import SERVICE_NAMES
from headwater_runtime.server._core import ServerSettings
from headwater_runtime.store import SQLiteStore

OK, UNAUTH, DENIED = (
    grpc.StatusCode.OK,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
)
NOT_FOUND, INVALID = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT
SERVER_TOKEN = "the-server-token"
#: The credentials of the matrix's columns: the four roles and the --token shortcut.
COLUMNS = ["admin", "operator", "viewer", "worker", "--token"]
STATES = ["none", "wrong", "revoked", "right"]
CP, GW, PL, AC, OP = (
    f"/headwater.v1.{s}"
    for s in (
        "ControlPlaneService",
        "WorkerGatewayService",
        "PayloadService",
        "AccessService",
        "OperationsService",
    )
)


@dataclass(frozen=True)
class Call:
    """How to call one method, and its status once authorization let it through."""

    kind: str  # unary_unary, unary_stream, stream_unary, stream_stream
    request: Any  # a message, or a list of messages for client streams
    response: type[Any]
    passed: grpc.StatusCode
    #: A different status for a worker-only credential that passed authorization.
    passed_worker: grpc.StatusCode | None = None


CALLS: dict[str, Call] = {
    f"{CP}/RegisterFlow": Call(
        "unary_unary", cp.RegisterFlowRequest(), cp.RegisterFlowResponse, INVALID
    ),
    f"{CP}/GetFlow": Call(
        "unary_unary", cp.GetFlowRequest(name="nope"), cp.GetFlowResponse, NOT_FOUND
    ),
    f"{CP}/ListFlows": Call("unary_unary", cp.ListFlowsRequest(), cp.ListFlowsResponse, OK),
    f"{CP}/CreateFlowRun": Call(
        "unary_unary", cp.CreateFlowRunRequest(), cp.CreateFlowRunResponse, INVALID
    ),
    f"{CP}/GetFlowRun": Call(
        "unary_unary", cp.GetFlowRunRequest(id="nope"), cp.GetFlowRunResponse, NOT_FOUND
    ),
    f"{CP}/ListFlowRuns": Call(
        "unary_unary", cp.ListFlowRunsRequest(), cp.ListFlowRunsResponse, OK
    ),
    f"{CP}/WatchFlowRun": Call(
        "unary_stream", cp.WatchFlowRunRequest(id="nope"), cp.WatchFlowRunResponse, NOT_FOUND
    ),
    f"{CP}/CancelFlowRun": Call(
        "unary_unary", cp.CancelFlowRunRequest(id="nope"), cp.CancelFlowRunResponse, NOT_FOUND
    ),
    f"{CP}/GetTaskRunResult": Call(
        "unary_unary",
        cp.GetTaskRunResultRequest(flow_run_id="nope", task_id="t"),
        cp.GetTaskRunResultResponse,
        NOT_FOUND,
    ),
    f"{CP}/ListTaskRunLogs": Call(
        "unary_unary",
        cp.ListTaskRunLogsRequest(flow_run_id="nope"),
        cp.ListTaskRunLogsResponse,
        NOT_FOUND,
    ),
    f"{CP}/GetFlowRunResult": Call(
        "unary_unary",
        cp.GetFlowRunResultRequest(id="nope"),
        cp.GetFlowRunResultResponse,
        NOT_FOUND,
    ),
    f"{CP}/WatchTaskRunLogs": Call(
        "unary_stream",
        cp.WatchTaskRunLogsRequest(flow_run_id="nope"),
        cp.WatchTaskRunLogsResponse,
        NOT_FOUND,
    ),
    f"{CP}/CreateSchedule": Call(
        "unary_unary", cp.CreateScheduleRequest(), cp.CreateScheduleResponse, INVALID
    ),
    f"{CP}/ListSchedules": Call(
        "unary_unary", cp.ListSchedulesRequest(), cp.ListSchedulesResponse, OK
    ),
    f"{CP}/DeleteSchedule": Call(
        "unary_unary", cp.DeleteScheduleRequest(id="nope"), cp.DeleteScheduleResponse, NOT_FOUND
    ),
    f"{CP}/PauseSchedule": Call(
        "unary_unary", cp.PauseScheduleRequest(id="nope"), cp.PauseScheduleResponse, NOT_FOUND
    ),
    f"{CP}/ResumeSchedule": Call(
        "unary_unary", cp.ResumeScheduleRequest(id="nope"), cp.ResumeScheduleResponse, NOT_FOUND
    ),
    f"{CP}/GetServerInfo": Call(
        "unary_unary", cp.GetServerInfoRequest(), cp.GetServerInfoResponse, OK
    ),
    f"{CP}/ListAuditEntries": Call(
        "unary_unary", cp.ListAuditEntriesRequest(), cp.ListAuditEntriesResponse, OK
    ),
    f"{GW}/Connect": Call("stream_stream", [], worker_pb2.ConnectResponse, INVALID),
    f"{PL}/UploadPayload": Call("stream_unary", [], payload_pb2.UploadPayloadResponse, INVALID),
    f"{PL}/DownloadPayload": Call(
        "unary_stream",
        payload_pb2.DownloadPayloadRequest(payload_id="nope"),
        payload_pb2.DownloadPayloadResponse,
        NOT_FOUND,
        passed_worker=DENIED,  # not an input of an attempt it holds, nor its upload
    ),
    f"{AC}/CreateCredential": Call(
        "unary_unary",
        access_pb2.CreateCredentialRequest(),
        access_pb2.CreateCredentialResponse,
        INVALID,
    ),
    f"{AC}/ListCredentials": Call(
        "unary_unary", access_pb2.ListCredentialsRequest(), access_pb2.ListCredentialsResponse, OK
    ),
    f"{OP}/RetryFlowRun": Call(
        "unary_unary", ops.RetryFlowRunRequest(id="nope"), ops.RetryFlowRunResponse, NOT_FOUND
    ),
    f"{OP}/SetConcurrencyLimit": Call(
        "unary_unary",
        ops.SetConcurrencyLimitRequest(),
        ops.SetConcurrencyLimitResponse,
        INVALID,
    ),
    f"{OP}/ListConcurrencyLimits": Call(
        "unary_unary", ops.ListConcurrencyLimitsRequest(), ops.ListConcurrencyLimitsResponse, OK
    ),
    f"{OP}/DeleteConcurrencyLimit": Call(
        "unary_unary",
        ops.DeleteConcurrencyLimitRequest(tag="nope"),
        ops.DeleteConcurrencyLimitResponse,
        NOT_FOUND,
    ),
    f"{OP}/ListWorkers": Call("unary_unary", ops.ListWorkersRequest(), ops.ListWorkersResponse, OK),
    f"{OP}/DrainWorker": Call(
        "unary_unary", ops.DrainWorkerRequest(name="nope"), ops.DrainWorkerResponse, NOT_FOUND
    ),
    f"{OP}/ResumeWorker": Call(
        "unary_unary", ops.ResumeWorkerRequest(name="nope"), ops.ResumeWorkerResponse, NOT_FOUND
    ),
    f"{OP}/CreateWebhook": Call(
        "unary_unary", ops.CreateWebhookRequest(), ops.CreateWebhookResponse, INVALID
    ),
    f"{OP}/ListWebhooks": Call(
        "unary_unary", ops.ListWebhooksRequest(), ops.ListWebhooksResponse, OK
    ),
    f"{OP}/DeleteWebhook": Call(
        "unary_unary", ops.DeleteWebhookRequest(id="nope"), ops.DeleteWebhookResponse, NOT_FOUND
    ),
    f"{AC}/RevokeCredential": Call(
        "unary_unary",
        access_pb2.RevokeCredentialRequest(name="nope"),
        access_pb2.RevokeCredentialResponse,
        NOT_FOUND,
    ),
    "/grpc.health.v1.Health/Check": Call(
        "unary_unary", health_pb2.HealthCheckRequest(), health_pb2.HealthCheckResponse, OK
    ),
    "/grpc.health.v1.Health/Watch": Call(
        "unary_stream", health_pb2.HealthCheckRequest(), health_pb2.HealthCheckResponse, OK
    ),
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Call(
        "stream_stream",
        [reflection_pb2.ServerReflectionRequest(list_services="")],
        reflection_pb2.ServerReflectionResponse,
        OK,
    ),
}

_SHORT = {
    OK: "ok",
    UNAUTH: "UNAUTH",
    DENIED: "DENIED",
    NOT_FOUND: "not_found",
    INVALID: "invalid",
}


def expected(method: str, column: str, state: str) -> grpc.StatusCode:
    """What the server must answer (the rule the table checks)."""
    needed = REQUIRED_ROLES[method]
    call = CALLS[method]
    if not needed:  # open: no credential needed, any ignored
        return call.passed
    if state != "right":
        return UNAUTH
    role = Role.ADMIN if column == "--token" else Role(column)
    if not allows(role, needed):
        return DENIED
    if role is Role.WORKER and call.passed_worker is not None:
        return call.passed_worker
    return call.passed


def _core_write_race(exc: grpc.aio.AioRpcError) -> bool:
    """grpcio's asyncio client reports INTERNAL "Internal error from Core" instead of the
    server's status when the server ends a request-streaming call (here: refuses it)
    while the client is still writing its requests (grpc/grpc#36066): a client-side
    artifact, seen now and then under load, not the server's answer."""
    return exc.code() == grpc.StatusCode.INTERNAL and (
        "execute_batch" in (exc.debug_error_string() or "")
        or exc.details() == "Internal error from Core"
    )


async def _status(
    channel: grpc.aio.Channel, method: str, metadata: tuple[tuple[str, str], ...]
) -> grpc.StatusCode:
    """The status the server answers the call with (the client's own write race,
    ``_core_write_race``, is asked again: a few tries at most)."""
    for _ in range(5):
        code = await _status_once(channel, method, metadata)
        if code is not None:
            return code
    raise AssertionError(f"{method}: INTERNAL from the client's write race five times")


async def _status_once(
    channel: grpc.aio.Channel, method: str, metadata: tuple[tuple[str, str], ...]
) -> grpc.StatusCode | None:
    call = CALLS[method]
    make: Callable[..., Any] = getattr(channel, call.kind)
    stub = make(
        method,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=call.response.FromString,
    )
    try:
        if call.kind == "unary_unary":
            await stub(call.request, metadata=metadata, timeout=30)
        elif call.kind == "stream_unary":
            await stub(iter(call.request), metadata=metadata, timeout=30)
        else:
            request = iter(call.request) if call.kind == "stream_stream" else call.request
            stream = stub(request, metadata=metadata, timeout=30)
            # A long-lived stream (health Watch, reflection) that answered is a pass.
            async for _ in stream:
                stream.cancel()
                break
    except grpc.aio.AioRpcError as exc:
        if call.kind in ("stream_unary", "stream_stream") and _core_write_race(exc):
            return None
        return exc.code()
    return OK


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def test_every_rpc_and_role_gets_the_exact_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every method the server registers has a row (and a required role).
    served = {f"/{s}/{m}" for s in SERVICE_NAMES for m in _methods(s)}
    assert served <= set(CALLS) == set(REQUIRED_ROLES)

    certs = make_certs(tmp_path / "certs")
    db = tmp_path / "hw.db"
    store = SQLiteStore(db)
    tokens: dict[str, dict[str, str | None]] = {}
    for role in Role:
        right, token = new_credential(f"{role.value}-1", role, created_by="test", now=time.time())
        revoked, old = new_credential(f"{role.value}-old", role, created_by="test", now=time.time())
        store.add_credential(right)
        store.add_credential(revoked)
        store.revoke_credential(revoked.name, time.time())
        tokens[role.value] = {"right": token, "revoked": old}
    tokens["--token"] = {"right": SERVER_TOKEN, "revoked": tokens["admin"]["revoked"]}
    store.close()

    async def main() -> dict[tuple[str, str, str], grpc.StatusCode]:
        settings = ServerSettings(
            port=0,
            db=str(db),
            token=SERVER_TOKEN,
            tls_cert=certs.server.cert,
            tls_key=certs.server.key,
        )
        running = await start_server(settings)
        found: dict[tuple[str, str, str], grpc.StatusCode] = {}
        try:
            tls = TLSSettings(ca=certs.ca)
            async with open_aio_channel(f"127.0.0.1:{running.port}", tls) as channel:
                for method in CALLS:
                    for column in COLUMNS:
                        for state in STATES:
                            token = {"none": None, "wrong": "hwt_wrong"}.get(
                                state, tokens[column].get(state)
                            )
                            found[method, column, state] = await _status(
                                channel, method, _metadata(token)
                            )
        finally:
            await asyncio.wait_for(running.stop(None), 30)
        return found

    found = asyncio.run(asyncio.wait_for(main(), 240))
    table = _table(found)
    with capsys.disabled():
        print("\n" + table)
    wrong = [
        f"{m} as {c} ({s}): got {found[m, c, s].name}, expected {expected(m, c, s).name}"
        for (m, c, s) in found
        if found[m, c, s] != expected(m, c, s)
    ]
    assert not wrong, "\n".join(wrong)


def _methods(service: str) -> list[str]:
    from google.protobuf import descriptor_pool

    return [m.name for m in descriptor_pool.Default().FindServiceByName(service).methods]


def _table(found: dict[tuple[str, str, str], grpc.StatusCode]) -> str:
    """RPC rows, credential columns; each cell: none / wrong / revoked / right."""

    def name(method: str) -> str:
        return method.split("/", 1)[1].removeprefix("headwater.v1.")

    def roles(method: str) -> str:
        needed = REQUIRED_ROLES[method]
        return ", ".join(r.value for r in Role if allows(r, needed)) if needed else "open"

    cells = {
        method: [
            " / ".join(_SHORT.get(found[method, c, s], found[method, c, s].name) for s in STATES)
            for c in COLUMNS
        ]
        for method in CALLS
    }
    head = max(len(f"{name(m)} ({roles(m)})") for m in CALLS) + 2
    cell = max(len(x) for row in cells.values() for x in row) + 2
    lines = [
        "security matrix: the status for no credential / a wrong one / a revoked one / the "
        "right one (ok, UNAUTH = UNAUTHENTICATED, DENIED = PERMISSION_DENIED, invalid = "
        "INVALID_ARGUMENT, not_found = NOT_FOUND: authorized, then refused by the request)",
        f"{'RPC (roles that may call it)':{head}}" + "".join(f"{c:{cell}}" for c in COLUMNS),
    ]
    for method in CALLS:
        label = f"{name(method)} ({roles(method)})"
        lines.append(f"{label:{head}}" + "".join(f"{x:{cell}}" for x in cells[method]).rstrip())
    return "\n".join(lines)


async def _list_flows_as(port: int, tokens: dict[str, str | None]) -> dict[str, grpc.StatusCode]:
    """The status of a ListFlows call with each token (None: no credential), by name."""
    async with open_aio_channel(f"127.0.0.1:{port}", TLSSettings()) as channel:
        call = channel.unary_unary(
            f"{CP}/ListFlows",
            request_serializer=cp.ListFlowsRequest.SerializeToString,
            response_deserializer=cp.ListFlowsResponse.FromString,
        )
        codes = {}
        for name, token in tokens.items():
            metadata = () if token is None else (("authorization", f"Bearer {token}"),)
            try:
                await call(cp.ListFlowsRequest(), metadata=metadata, timeout=30)
                codes[name] = OK
            except grpc.aio.AioRpcError as exc:
                codes[name] = exc.code()
        return codes


def test_revoking_the_last_credential_does_not_open_the_server(tmp_path: Path) -> None:
    """A server with stored credentials checks every call; revoking the last valid one
    left it with none and it let every call through as ``anonymous``, an admin (a user
    trial: revoked tokens, and no token at all, were accepted). It stays closed: the
    revoked token and no token are UNAUTHENTICATED until a credential is created."""
    db = tmp_path / "hw.db"
    store = SQLiteStore(db)
    row, token = new_credential("only", "admin", created_by="test", now=time.time())
    store.add_credential(row)
    store.revoke_credential("only", time.time())
    store.close()

    async def main() -> dict[str, grpc.StatusCode]:
        running = await start_server(ServerSettings(port=0, db=str(db)))
        try:
            return await _list_flows_as(running.port, {"none": None, "revoked": token})
        finally:
            await asyncio.wait_for(running.stop(None), 30)

    assert asyncio.run(asyncio.wait_for(main(), 60)) == {"none": UNAUTH, "revoked": UNAUTH}


def test_a_server_token_that_is_a_stored_credentials_token_is_that_credential(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A shell that exported a credential's token as HEADWATER_TOKEN (for the CLI) and
    then started a server gave the server that token as its --token: calls with it were
    the admin ``server-token`` (the audit named it), and revoking the credential refused
    nothing (a user trial). The stored credential wins: its role, its name in the
    audit, refused once revoked; the server says so at start."""
    from headwater import Client, ServerError

    db = tmp_path / "hw.db"
    store = SQLiteStore(db)
    viewer, token = new_credential("ci", "operator", created_by="test", now=time.time())
    store.add_credential(viewer)
    store.close()

    async def main() -> tuple[list[Any], grpc.StatusCode | None, dict[str, grpc.StatusCode]]:
        running = await start_server(ServerSettings(port=0, db=str(db), token=token))
        address = f"127.0.0.1:{running.port}"
        try:

            def as_ci() -> tuple[list[Any], grpc.StatusCode | None]:
                with Client(address, token=token) as client:
                    client.set_limit("db", concurrency=2)  # an operator may
                    refused = None
                    try:
                        client.revoke_token("ci")  # an admin only
                    except ServerError as exc:
                        refused = exc.code
                    return client.audit(), refused

            audit, refused = await asyncio.to_thread(as_ci)
            store = SQLiteStore(db)
            store.revoke_credential("ci", time.time())
            store.close()
            await running.access.refresh()
            return audit, refused, await _list_flows_as(running.port, {"revoked": token})
        finally:
            await asyncio.wait_for(running.stop(None), 30)

    audit, refused, after = asyncio.run(asyncio.wait_for(main(), 60))
    assert [(e.actor, e.action) for e in audit if e.action == "limit.set"] == [("ci", "limit.set")]
    assert refused == grpc.StatusCode.PERMISSION_DENIED
    assert after == {"revoked": UNAUTH}
    said = [r.getMessage() for r in caplog.records if "is the token of credential" in r.message]
    assert said and "credential 'ci': calls with it act as that credential" in said[0], said


def test_storing_the_first_credential_ends_the_streams_of_workers_that_connected_without(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On an open server, the first credential stored makes every call need one; a
    worker connected before without one kept getting work until it reconnected (a user
    trial). Its stream ends at once, as a revoked credential's does, saying why."""
    from test_durability import StreamWorker

    from headwater import Client

    async def main() -> int:
        running = await start_server(ServerSettings(port=0, db=str(tmp_path / "hw.db")))
        address = f"127.0.0.1:{running.port}"
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                worker = StreamWorker(channel, "early", auth=())
                await worker.next("welcome")
                sessions = running.core.dispatcher.sessions
                assert [s.credential for s in sessions.values()] == ["anonymous"]

                def first_credential() -> None:
                    with Client(address) as client:
                        client.create_token("adm", "admin")

                await asyncio.to_thread(first_credential)
                for _ in range(500):
                    if not sessions:
                        break
                    await asyncio.sleep(0.01)
                left = len(sessions)
                await worker.close()
                return left
        finally:
            await asyncio.wait_for(running.stop(None), 30)

    assert asyncio.run(asyncio.wait_for(main(), 60)) == 0
    assert any(
        "ending the stream of worker early: it connected without a credential" in r.message
        for r in caplog.records
    )


def test_a_token_made_by_another_process_is_taken_on_its_first_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`T=$(headwater tokens create --db DB ...)` then a call with T at once (the README's
    recipe): the running server had not read it yet and refused it as an invalid token
    for up to its poll interval (a user trial). An unknown token has the credentials
    re-read when the store's generation moved (at most every REFRESH_EVERY s); one
    still unknown is refused as before."""
    from headwater_runtime.server import _access

    monkeypatch.setattr(_access, "POLL_INTERVAL", 3600.0)  # (the poll never helps here)
    db = tmp_path / "hw.db"
    store = SQLiteStore(db)
    first, _ = new_credential("first", "admin", created_by="test", now=time.time())
    store.add_credential(first)
    store.close()

    async def main() -> dict[str, grpc.StatusCode]:
        running = await start_server(ServerSettings(port=0, db=str(db)))
        other = SQLiteStore(db)  # another process's connection, as `tokens create --db`
        try:
            row, token = new_credential("new", "viewer", created_by="test", now=time.time())
            await asyncio.to_thread(other.add_credential, row)
            return await _list_flows_as(running.port, {"new": token, "unknown": "hw_" + "x" * 43})
        finally:
            other.close()
            await asyncio.wait_for(running.stop(None), 30)

    assert asyncio.run(asyncio.wait_for(main(), 60)) == {"new": OK, "unknown": UNAUTH}
