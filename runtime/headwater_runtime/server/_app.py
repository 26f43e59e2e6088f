"""Assembling and running the control plane: ``headwater server``.

With a PostgreSQL store the server may start as a standby (another server holds the
lease): it binds its port at once, answers health ``NOT_SERVING`` and refuses calls
naming the leader, and starts serving when it takes the lead (``_leader``). A leader
that loses the lead stops; ``serve_forever`` then starts it again as a standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import importlib
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

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
from headwater.wire import (
    TLSConfigError,
)
from headwater_runtime.store import SCHEMA_VERSION as SQLITE_SCHEMA
from headwater_runtime.store import Store, open_store

from ._access import AccessControl
from ._access_service import AccessServicer
from ._auth import AuthInterceptor
from ._control import ControlServicer
from ._core import ServerCore, ServerSettings
from ._decoding import DecodeInterceptor
from ._gateway import GatewayServicer
from ._leader import LeaderGate, Leadership, is_fenced
from ._operations import OperationsServicer
from ._payloads import PayloadServicer
from ._tls import ServerTLS, ServerTLSFiles

if TYPE_CHECKING:
    from .http import HttpServer

log = logging.getLogger("headwater.server")


class _QuietGoneStreams(logging.Filter):
    """Drops gRPC's own ERROR record (with a traceback) for a response it could not
    send because the peer had gone: a watcher that stopped reading and then hung up,
    a worker cut off mid-stream. gRPC raises ``ExecuteBatchError`` in its own loop
    over a servicer's responses, where no servicer can catch it, and logs it as a
    server fault; nothing is wrong, and any client could otherwise fill the log with
    tracebacks. Other errors gRPC logs still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return type(error).__name__ != "ExecuteBatchError"


logging.getLogger("grpc._cython.cygrpc").addFilter(_QuietGoneStreams())

SERVICE_NAMES = (
    control_plane_pb2.DESCRIPTOR.services_by_name["ControlPlaneService"].full_name,
    worker_pb2.DESCRIPTOR.services_by_name["WorkerGatewayService"].full_name,
    payload_pb2.DESCRIPTOR.services_by_name["PayloadService"].full_name,
    access_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name,
    operations_pb2.DESCRIPTOR.services_by_name["OperationsService"].full_name,
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
    access: AccessControl
    #: The server's certificate (None: plaintext).
    tls: ServerTLS | None = None
    #: The web UI and HTTP API (None when ``ServerSettings.http`` is off, and while
    #: the server stands by: it starts with the lead).
    http: HttpServer | None = None
    settings: ServerSettings = field(default_factory=ServerSettings)
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
            return
        # At WARNING, like the server's other notices (the default level shows it).
        log.warning("SIGHUP: reloaded the TLS certificate from %s", self.tls.files.cert)

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving, store what is left, give up the lease, close the store. The
        attempts workers hold are kept for them (``ServerCore.closing``): nothing more
        is assigned, and what is pending is stored and sent before the workers'
        streams end (their reports' acks among it: not sent again after the restart)."""
        self.core.closing()
        if self._core_started:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace if grace is not None else 1.0):
                    await self.core.flush()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.http is not None:
            await self.http.stop()
        await self.server.stop(grace)
        await self.access.stop()
        if self._core_started:
            await self.core.stop()
        if not self.lost.is_set():
            await self.leadership.release()
        self.core.io.close()
        self.store.close()

    async def _lead(self) -> None:
        """Start serving: sweep what a dead leader left, recover runs, open the gate.
        Then ``_open``, once the gRPC port listens."""
        sweep = getattr(self.store, "sweep_uploads", None)
        if self.leadership.lease is not None and sweep is not None:
            await asyncio.to_thread(sweep)
        await self.core.start()
        self._core_started = True
        self.leadership.leading = True
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def _open(self) -> None:
        """The web UI, after the gRPC port listens: workers reconnecting to a restarted
        server need not wait for it (importing aiohttp alone takes ~0.1-0.2 s). Then
        the server says it leads (``leading``)."""
        if self.settings.http:
            self.http = await _start_http(self.core, self.settings, self.access, self.tls)
            self.access.on_change = _revoked_everywhere(self.core, self.http)
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
                await self._open()
            reason = await leadership.keep(lambda: is_fenced(self.core.commits.error))
        except Exception as exc:  # e.g. recovery failed: stand by again, from scratch
            log.exception("leading failed")
            reason = f"leading failed: {exc}"
        leadership.give_up()
        self.lost_reason = reason
        log.warning("stepping down: %s", reason)
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.lost.set()


def _check_ports_free(settings: ServerSettings) -> None:
    """OSError, in the words the server's own start would use, when another process
    listens on a port the server must have (gRPC's; the HTTP and metrics ports when
    given): a server started on a taken port created its new database, then failed (a
    newcomer's trial). Only a check: the servers' own listening decides."""
    host = settings.host
    wanted = [("listen on", settings.port)]
    if settings.http and settings.http_port:  # (the default one falls back to a free one)
        wanted.append(("serve HTTP on", settings.http_port))
    if settings.metrics_port:
        wanted.append(("serve metrics on", settings.metrics_port))
    for what, port in wanted:
        if not port:
            continue
        try:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except OSError:
            return  # (a name the servers will refuse, in their own words)
        family, kind, proto, _, address = found[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (as listeners do)
            try:
                probe.bind(address)
            except OSError as exc:
                raise OSError(f"cannot {what} {host}:{port} ({exc.strerror})") from None


async def start_server(settings: ServerSettings, store: Store | None = None) -> RunningServer:
    """Open the store (``settings.db``, unless a store is given), recover unfinished
    runs and start serving. With a PostgreSQL store whose lease another server holds,
    return at once as a standby (``RunningServer.leading`` is set when it leads)."""
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise TLSConfigError("TLS needs both --tls-cert and --tls-key")
    if settings.tls_client_ca and not settings.tls_cert:
        raise TLSConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    tls = (
        ServerTLS(ServerTLSFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca))
        if settings.tls_cert and settings.tls_key
        else None
    )
    on_port = f", port {settings.port}" if settings.port else ""
    holder = f"started {time.strftime('%Y-%m-%d %H:%M:%S')}{on_port}"
    if store is None:
        _check_ports_free(settings)  # (before a database is made for a server that cannot run)
        store = open_store(settings.db, payload_dir=settings.payload_dir, server=holder)
        if store.created:
            where = getattr(store, "where", settings.db)  # (a URL without its password)
            print(f"headwater server: created a new database at {where}", file=sys.stderr)
        migrated_from = getattr(store, "migrated_from", None)
        if migrated_from is not None:  # (it was silent: a rollback then found it refused)
            print(
                f"headwater server: migrated the database {settings.db} from schema version "
                f"{migrated_from} to {SQLITE_SCHEMA}: a server of an older Headwater no "
                "longer opens it (keep a copy made before the upgrade to go back)",
                file=sys.stderr,
            )
    try:
        store.claim(holder)
    except BaseException:
        store.close()
        raise
    core = ServerCore(store, settings)
    leadership = Leadership.for_store(store, settings.advertise, settings.lease)
    access = AccessControl(
        store, core.io, settings.token, client_certificates=bool(settings.tls_client_ca)
    )
    access.on_change = core.drop_revoked
    # Authentication first: a caller without a credential learns nothing, not
    # even whether its message was well formed, or which server leads.
    interceptors: list[grpc.aio.ServerInterceptor] = [
        AuthInterceptor(access),
        LeaderGate(leadership),
        DecodeInterceptor(),
    ]
    limit = settings.limits.max_message_bytes
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", limit),
            # gRPC sets SO_REUSEPORT by default: a second server on a taken port would
            # listen beside the first and get half of its clients' calls.
            ("grpc.so_reuseport", 0),
            # Clients ping every 10 s while a call is open (headwater._client
            # KEEPALIVE_TIME_MS: how a watch notices a frozen server); gRPC's default
            # would answer a quiet watch's pings with GOAWAY "too_many_pings".
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ],
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
    if leadership.lease is not None and not leadership.lease.address:
        leadership.lease.address = f"{settings.host}:{port}"
    running = RunningServer(
        server, core, store, port, access, tls, settings=settings, leadership=leadership
    )
    running.health = health
    try:
        # Credentials are read on a standby too (reads need no lead), so that it
        # tells an authenticated caller who leads.
        await access.start()
        leading = await leadership.try_lead()
        if leading:
            await running._lead()  # recover before the first call is answered
        else:
            for name in ("", *SERVICE_NAMES):
                await health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.start()
        if leading:
            await running._open()
    except BaseException:
        await server.stop(None)
        if running.http is not None:
            await running.http.stop()
        await access.stop()
        if running._core_started:
            await core.stop()
        core.io.close()
        store.close()
        raise
    if leadership.lease is not None:
        running._task = asyncio.get_running_loop().create_task(running._run_leadership(leading))
    return running


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
    # aiohttp, imported only now and on a thread: the gRPC port already answers, and
    # the import (~0.1-0.2 s) must not hold up the event loop meanwhile.
    await asyncio.to_thread(importlib.import_module, f"{__package__}.http")
    from .http import start_http  # (imported by now)

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


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _bound_the_stop(loop: asyncio.AbstractEventLoop, timeout: float) -> None:
    """After the first SIGTERM or SIGINT: a second one ends the process at once (the
    signal's default action: status 128 + its number), and a stop still under way
    ``timeout`` seconds later ends it with status 1, every thread's stack on stderr
    first. The deadline is faulthandler's watchdog, a C thread: it fires even when the
    event loop is stuck in a call that never returns (a database that stopped
    answering mid-stop), where nothing scheduled on the loop could. The runs resume
    from their last stored state, as after a crash."""
    for sig in _STOP_SIGNALS:
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_DFL)
    faulthandler.dump_traceback_later(timeout, exit=True)


async def _first(*events: asyncio.Event) -> None:
    """Wait until any of the events is set."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()


async def _print_resumed(core: ServerCore) -> None:
    """Say what the server resumed, once every unfinished run is live again."""
    await core.recovered.wait()
    found = core.recovery
    if found is not None and found.resumed:
        runs = f"{found.resumed} unfinished flow run{'s' * (found.resumed > 1)}"
        print(
            f"headwater server resumed {runs} in {found.seconds:.2f}s: "
            f"{len(found.resent)} attempts sent again (no worker had them), "
            f"{len(found.held)} held by workers (awaiting them)",
            flush=True,
        )


#: After stepping down, how long a server waits before trying to start again when its
#: database does not answer (doubling up to RESTART_PAUSE_MAX).
RESTART_PAUSE, RESTART_PAUSE_MAX = 1.0, 30.0


async def serve_forever(settings: ServerSettings) -> int:
    """Run until SIGINT/SIGTERM; prints the listening line once it serves. A standby
    says so (and whom it waits for) first; a leader that loses the lead starts again
    as a standby on the same port. SIGHUP reloads the TLS certificate. When it
    returns, the stop's deadline is cancelled and the signal handlers from before are
    back (a process that goes on: the tests, an application). The exit status: 0, or
    1 when the server stopped with state it could not store (a full disk)."""
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in (*_STOP_SIGNALS, signal.SIGHUP)}
    try:
        return await _serve(settings, loop)
    finally:
        faulthandler.cancel_dump_traceback_later()
        for sig, handler in previous.items():
            with contextlib.suppress(NotImplementedError, ValueError, RuntimeError):
                loop.remove_signal_handler(sig)
            if handler is not None:
                signal.signal(sig, handler)


async def _serve(settings: ServerSettings, loop: asyncio.AbstractEventLoop) -> int:
    stop = asyncio.Event()

    def stop_on_signal() -> None:
        stop.set()
        _bound_the_stop(loop, settings.stop_timeout)

    for sig in _STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop_on_signal)
    current: list[RunningServer] = []

    def reload_tls() -> None:
        if current:
            current[-1].reload_tls()

    with contextlib.suppress(NotImplementedError, AttributeError):
        loop.add_signal_handler(signal.SIGHUP, reload_tls)
    restarting, pause = False, RESTART_PAUSE
    while True:
        try:
            running = await start_server(settings)
        except Exception as exc:
            if not restarting:
                raise  # a first start that fails says why and exits
            # A leader that stepped down because its database went away (down, or
            # read-only) starts again as a standby once the database answers: it
            # used to exit, leaving no server to take the lead when it came back.
            log.warning("cannot stand by yet (%s); trying again in %.0fs", exc, pause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
            if stop.is_set():
                return 0
            pause = min(pause * 2, RESTART_PAUSE_MAX)
            continue
        restarting, pause = True, RESTART_PAUSE
        current[:] = [running]
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
            resumed_line = asyncio.ensure_future(_print_resumed(running.core))
            if running.http is not None:
                print(f"headwater web UI on {running.http.url}", flush=True)
            if running.tls is not None:
                mutual = "; client certificates required" if settings.tls_client_ca else ""
                print(f"headwater server speaks TLS{mutual}", file=sys.stderr, flush=True)
            metrics = running.core.ops.metrics_server
            if metrics is not None:
                print(
                    f"headwater metrics on http://{settings.host}:{metrics.port}/metrics",
                    flush=True,
                )
            await _first(stop, running.lost)
            resumed_line.cancel()
        if stop.is_set():
            print(
                f"headwater server stopping (at most {settings.stop_timeout:g}s; a second "
                "signal exits at once)",
                file=sys.stderr,
                flush=True,
            )
            await running.stop()
            return 0 if running.core.stored_all else 1
        print(
            f"headwater server stepped down ({running.lost_reason}); standing by again",
            file=sys.stderr,
            flush=True,
        )
        await running.stop(grace=0)
