"""Assembling and running the control plane: ``headwater server``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import grpc
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from headwater.v1 import (
    access_pb2,
    access_pb2_grpc,
    control_plane_pb2,
    control_plane_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    payload_pb2,
    payload_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from headwater.wire import TLSConfigError
from headwater_runtime.store import SQLiteStore, Store

from ._access import AccessControl
from ._access_service import AccessServicer
from ._auth import AuthInterceptor
from ._control import ControlServicer
from ._core import ServerCore, ServerSettings
from ._decoding import DecodeInterceptor
from ._gateway import GatewayServicer
from ._operations import OperationsServicer
from ._payloads import PayloadServicer
from ._tls import ServerTLS, ServerTLSFiles
from .http import HttpServer, start_http

log = logging.getLogger("headwater.server")

SERVICE_NAMES = (
    control_plane_pb2.DESCRIPTOR.services_by_name["ControlPlaneService"].full_name,
    worker_pb2.DESCRIPTOR.services_by_name["WorkerGatewayService"].full_name,
    payload_pb2.DESCRIPTOR.services_by_name["PayloadService"].full_name,
    access_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name,
    operations_pb2.DESCRIPTOR.services_by_name["OperationsService"].full_name,
)


@dataclass
class RunningServer:
    """A started server: its bound port and the objects behind it."""

    server: grpc.aio.Server
    core: ServerCore
    store: Store
    port: int
    access: AccessControl
    #: The server's certificate (None: plaintext).
    tls: ServerTLS | None = None
    #: The web UI and HTTP API (None when ``ServerSettings.http`` is off).
    http: HttpServer | None = None

    def reload_tls(self) -> None:
        """Re-read the certificate files (SIGHUP): new connections (gRPC and the web UI's
        HTTPS) use them, open ones (workers' streams) stay. A file that cannot be used
        is logged, and the old certificate stays in use."""
        if self.tls is None:
            log.warning("SIGHUP: this server has no TLS certificate to reload")
            return
        try:
            self.tls.reload()
        except TLSConfigError as exc:
            log.error("SIGHUP: keeping the current TLS certificate: %s", exc)

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving, store what is left, close the store."""
        if self.http is not None:
            await self.http.stop()
        await self.server.stop(grace)
        await self.access.stop()
        await self.core.stop()
        self.core.io.close()
        self.store.close()


async def start_server(settings: ServerSettings, store: Store | None = None) -> RunningServer:
    """Open the store (``settings.db``, unless a store is given), recover unfinished
    runs and start serving."""
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise TLSConfigError("TLS needs both --tls-cert and --tls-key")
    if settings.tls_client_ca and not settings.tls_cert:
        raise TLSConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    tls = (
        ServerTLS(ServerTLSFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca))
        if settings.tls_cert and settings.tls_key
        else None
    )
    store = store if store is not None else SQLiteStore(settings.db)
    core = ServerCore(store, settings)
    access = AccessControl(
        store, core.io, settings.token, client_certificates=bool(settings.tls_client_ca)
    )
    access.on_change = core.drop_revoked
    # Authentication first: a caller without a credential learns nothing, not
    # even whether its message was well formed.
    interceptors: list[grpc.aio.ServerInterceptor] = [
        AuthInterceptor(access),
        DecodeInterceptor(),
    ]
    limit = settings.limits.max_message_bytes
    server = grpc.aio.server(
        interceptors=interceptors, options=[("grpc.max_receive_message_length", limit)]
    )
    control = ControlServicer(core)
    control_plane_pb2_grpc.add_ControlPlaneServiceServicer_to_server(control, server)
    operations_pb2_grpc.add_OperationsServiceServicer_to_server(
        OperationsServicer(core, control), server
    )
    worker_pb2_grpc.add_WorkerGatewayServiceServicer_to_server(GatewayServicer(core), server)
    payload_pb2_grpc.add_PayloadServiceServicer_to_server(
        PayloadServicer(store, limits=settings.limits, io=core.io, access=core), server
    )
    access_pb2_grpc.add_AccessServiceServicer_to_server(AccessServicer(core, access), server)
    health = health_async.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    address = f"{settings.host}:{settings.port}"
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, tls.credentials())
    except RuntimeError as exc:
        store.close()
        raise OSError(f"cannot listen on {settings.host}:{settings.port} ({exc})") from None
    await access.start()
    await core.start()
    http = None
    if settings.http:
        try:
            http = await _start_http(core, settings, access, tls)
        except OSError:
            await access.stop()
            await core.stop()
            core.io.close()
            store.close()
            raise
    if http is not None:
        access.on_change = _revoked_everywhere(core, http)
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, core, store, port, access, tls, http)


def _revoked_everywhere(core: ServerCore, http: HttpServer) -> Callable[[frozenset[str]], None]:
    """What a credential change ends: the worker streams and the web UI's event streams
    of credentials no longer valid."""

    def changed(valid: frozenset[str]) -> None:
        core.drop_revoked(valid)
        http.api.drop_revoked(valid)

    return changed


async def _start_http(
    core: ServerCore, settings: ServerSettings, access: AccessControl, tls: ServerTLS | None
) -> HttpServer:
    """The web UI on its port, with the gRPC port's credentials and certificate (HTTPS
    when it has one); when the default port (gRPC + 1) is taken, on a free one instead
    (the line the server prints says where). A port asked for must be free."""
    port = settings.http_bind_port
    try:
        return await start_http(core, settings.host, port, access, tls)
    except OSError as exc:
        if settings.http_port is not None or port == 0:
            raise
        log.warning("%s; serving the web UI on a free port instead", exc)
        return await start_http(core, settings.host, 0, access, tls)


def settings_from_env(
    environ: Mapping[str, str] | None = None, *, config: str | None = None, **overrides: object
) -> ServerSettings:
    """Defaults, then the configuration file (``config``, else HEADWATER_CONFIG), then
    HEADWATER_* environment variables, then explicit overrides (_config.py;
    ConfigError names what is wrong)."""
    from ._config import settings

    return settings(overrides, environ, config)


async def serve_forever(settings: ServerSettings) -> None:
    """Run until SIGINT/SIGTERM; prints the listening line once bound. SIGHUP reloads
    the TLS certificate."""
    running = await start_server(settings)
    print(f"headwater server listening on {settings.host}:{running.port}", flush=True)
    if running.http is not None:
        print(f"headwater web UI on {running.http.url}", flush=True)
    if running.tls is not None:
        mutual = "; client certificates required" if settings.tls_client_ca else ""
        print(f"headwater server speaks TLS{mutual}", file=sys.stderr, flush=True)
    metrics = running.core.ops.metrics_server
    if metrics is not None:
        print(f"headwater metrics on http://{settings.host}:{metrics.port}/metrics", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, running.reload_tls)
    await stop.wait()
    print("headwater server stopping", file=sys.stderr, flush=True)
    await running.stop()
