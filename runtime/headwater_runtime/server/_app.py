"""Assembling and running the control plane: ``headwater server``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from headwater.v1 import (
    control_plane_pb2,
    control_plane_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    payload_pb2,
    payload_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from headwater_runtime.store import SQLiteStore, Store

from ._auth import TokenAuthInterceptor
from ._control import ControlServicer
from ._core import ServerCore, ServerSettings
from ._gateway import GatewayServicer
from ._operations import OperationsServicer
from ._payloads import PayloadServicer

SERVICE_NAMES = (
    control_plane_pb2.DESCRIPTOR.services_by_name["ControlPlaneService"].full_name,
    worker_pb2.DESCRIPTOR.services_by_name["WorkerGatewayService"].full_name,
    payload_pb2.DESCRIPTOR.services_by_name["PayloadService"].full_name,
    operations_pb2.DESCRIPTOR.services_by_name["OperationsService"].full_name,
)


@dataclass
class RunningServer:
    """A started server: its bound port and the objects behind it."""

    server: grpc.aio.Server
    core: ServerCore
    store: Store
    port: int

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving, store what is left, close the store."""
        await self.server.stop(grace)
        await self.core.stop()
        self.core.io.close()
        self.store.close()


async def start_server(settings: ServerSettings, store: Store | None = None) -> RunningServer:
    """Open the store (``settings.db``, unless a store is given), recover unfinished
    runs and start serving."""
    store = store if store is not None else SQLiteStore(settings.db)
    core = ServerCore(store, settings)
    interceptors = [TokenAuthInterceptor(settings.token)] if settings.token else []
    server = grpc.aio.server(interceptors=interceptors)
    control = ControlServicer(core)
    control_plane_pb2_grpc.add_ControlPlaneServiceServicer_to_server(control, server)
    operations_pb2_grpc.add_OperationsServiceServicer_to_server(
        OperationsServicer(core, control), server
    )
    worker_pb2_grpc.add_WorkerGatewayServiceServicer_to_server(GatewayServicer(core), server)
    payload_pb2_grpc.add_PayloadServiceServicer_to_server(
        PayloadServicer(store, io=core.io), server
    )
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
    try:
        port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    except RuntimeError as exc:
        store.close()
        raise OSError(f"cannot listen on {settings.host}:{settings.port} ({exc})") from None
    await core.start()
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, core, store, port)


def settings_from_env(
    environ: Mapping[str, str] | None = None, *, config: str | None = None, **overrides: object
) -> ServerSettings:
    """Defaults, then the configuration file (``config``, else HEADWATER_CONFIG), then
    HEADWATER_* environment variables, then explicit overrides (_config.py;
    ConfigError names what is wrong)."""
    from ._config import settings

    return settings(overrides, environ, config)


async def serve_forever(settings: ServerSettings) -> None:
    """Run until SIGINT/SIGTERM; prints the listening line once bound."""
    running = await start_server(settings)
    print(f"headwater server listening on {settings.host}:{running.port}", flush=True)
    metrics = running.core.ops.metrics_server
    if metrics is not None:
        print(f"headwater metrics on http://{settings.host}:{metrics.port}/metrics", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("headwater server stopping", file=sys.stderr, flush=True)
    await running.stop()
