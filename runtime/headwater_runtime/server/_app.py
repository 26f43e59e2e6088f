"""Assembling and running the control plane: ``headwater server``.

With a PostgreSQL store the server may start as a standby (another server holds the
lease): it binds its port at once, answers health ``NOT_SERVING`` and refuses calls
naming the leader, and starts serving when it takes the lead (``_leader``). A leader
that loses the lead stops; ``serve_forever`` then starts it again as a standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from headwater.v1 import (
    control_plane_pb2,
    control_plane_pb2_grpc,
    payload_pb2,
    payload_pb2_grpc,
    worker_pb2,
    worker_pb2_grpc,
)
from headwater.wire import (
    ENV_DB,
    ENV_LEASE,
    ENV_PAYLOAD_DIR,
    ENV_RETENTION,
    ENV_TOKEN,
    parse_duration,
)
from headwater_runtime.store import Store, open_store

from ._auth import TokenAuthInterceptor
from ._control import ControlServicer
from ._core import ServerCore, ServerSettings
from ._gateway import GatewayServicer
from ._leader import LeaderGate, Leadership, is_fenced
from ._payloads import PayloadServicer

log = logging.getLogger("headwater.server")

SERVICE_NAMES = (
    control_plane_pb2.DESCRIPTOR.services_by_name["ControlPlaneService"].full_name,
    worker_pb2.DESCRIPTOR.services_by_name["WorkerGatewayService"].full_name,
    payload_pb2.DESCRIPTOR.services_by_name["PayloadService"].full_name,
)


@dataclass
class RunningServer:
    """A started server: its bound port and the objects behind it.

    ``leading`` is set once it serves (at once, unless it started as a standby);
    ``lost`` once it has stopped leading (it no longer serves: stop it).
    """

    server: grpc.aio.Server
    core: ServerCore
    store: Store
    port: int
    leadership: Leadership = field(default_factory=lambda: Leadership(None))
    health: Any = None
    leading: asyncio.Event = field(default_factory=asyncio.Event)
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    lost_reason: str = ""
    _task: asyncio.Task[None] | None = None
    _core_started: bool = False

    @property
    def address(self) -> str:
        """``HOST:PORT`` this server is known by (what standbys name as the leader)."""
        lease = self.leadership.lease
        return lease.address if lease is not None else f"127.0.0.1:{self.port}"

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving, store what is left, give up the lease, close the store."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.server.stop(grace)
        if self._core_started:
            await self.core.stop()
        if not self.lost.is_set():
            await self.leadership.release()
        self.core.io.close()
        self.store.close()

    async def _lead(self) -> None:
        """Start serving: sweep what a dead leader left, recover runs, open the gate."""
        sweep = getattr(self.store, "sweep_uploads", None)
        if self.leadership.lease is not None and sweep is not None:
            await asyncio.to_thread(sweep)
        await self.core.start()
        self._core_started = True
        self.leadership.leading = True
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.leading.set()

    async def _run_leadership(self, leading: bool) -> None:
        """Stand by until this server leads (unless it does), then hold the lease;
        when it is lost, stop serving and set ``lost``."""
        leadership = self.leadership
        try:
            if not leading:
                await leadership.wait_to_lead()
                log.warning("taking the lead (lease epoch %d)", leadership.epoch)
                await self._lead()
            reason = await leadership.keep(lambda: is_fenced(self.core.commits.error))
        except Exception as exc:  # e.g. recovery failed: stand by again, from scratch
            log.exception("leading failed")
            reason = f"leading failed: {exc}"
        leadership.leading = False
        self.lost_reason = reason
        log.error("stepping down: %s", reason)
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.lost.set()


async def start_server(settings: ServerSettings, store: Store | None = None) -> RunningServer:
    """Open the store (``settings.db``, unless a store is given), recover unfinished
    runs and start serving. With a PostgreSQL store whose lease another server holds,
    return at once as a standby (``RunningServer.leading`` is set when it leads)."""
    if store is None:
        store = open_store(settings.db, payload_dir=settings.payload_dir)
    core = ServerCore(store, settings)
    leadership = Leadership.for_store(store, settings.advertise, settings.lease)
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if settings.token:
        interceptors.append(TokenAuthInterceptor(settings.token))
    interceptors.append(LeaderGate(leadership))
    server = grpc.aio.server(interceptors=interceptors)
    control_plane_pb2_grpc.add_ControlPlaneServiceServicer_to_server(ControlServicer(core), server)
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
    if leadership.lease is not None and not leadership.lease.address:
        leadership.lease.address = f"{settings.host}:{port}"
    running = RunningServer(server, core, store, port, leadership, health)
    try:
        leading = await leadership.try_lead()
        if leading:
            await running._lead()  # recover before the first call is answered
        else:
            for name in ("", *SERVICE_NAMES):
                await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
    except BaseException:
        await server.stop(None)
        core.io.close()
        store.close()
        raise
    if leadership.lease is not None:
        running._task = asyncio.get_running_loop().create_task(running._run_leadership(leading))
    return running


def settings_from_env(
    environ: Mapping[str, str] | None = None, **overrides: object
) -> ServerSettings:
    """Defaults, then HEADWATER_* environment variables, then explicit overrides."""
    source = os.environ if environ is None else environ
    env: dict[str, Any] = {}
    if ENV_TOKEN in source:
        env["token"] = source[ENV_TOKEN]
    if ENV_DB in source:
        env["db"] = source[ENV_DB]
    for name, key in ((ENV_RETENTION, "retention"), (ENV_LEASE, "lease")):
        if source.get(name):
            try:
                env[key] = parse_duration(source[name])
            except ValueError as exc:
                raise ValueError(f"{name} {exc}") from None
    if source.get(ENV_PAYLOAD_DIR):
        env["payload_dir"] = source[ENV_PAYLOAD_DIR]
    # Any: each value is meant for the ServerSettings field of its name (the CLI parses
    # flags into the fields' types); a wrong name still fails loudly in replace().
    values: dict[str, Any] = {**env, **{k: v for k, v in overrides.items() if v is not None}}
    return replace(ServerSettings(), **values)


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of the events is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


async def serve_forever(settings: ServerSettings) -> None:
    """Run until SIGINT/SIGTERM; prints the listening line once it serves. A standby
    says so (and whom it waits for) first; a leader that loses the lead starts again
    as a standby on the same port."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    while True:
        running = await start_server(settings)
        settings = replace(settings, port=running.port)  # a restart keeps the port
        where = f"{settings.host}:{running.port}"
        if not running.leading.is_set():
            refusal = running.leadership.refusal().split(": ", 1)[1]
            print(f"headwater server standing by on {where}: {refusal}", flush=True)
            await _first(stop, running.leading, running.lost)
        if running.leading.is_set() and not stop.is_set():
            lease = running.leadership.lease
            lead = f" (leader, lease epoch {running.leadership.epoch})" if lease else ""
            print(f"headwater server listening on {where}{lead}", flush=True)
            await _first(stop, running.lost)
        if stop.is_set():
            print("headwater server stopping", file=sys.stderr, flush=True)
            await running.stop()
            return
        print(
            f"headwater server stepped down ({running.lost_reason}); standing by again",
            file=sys.stderr,
            flush=True,
        )
        await running.stop(grace=0)
