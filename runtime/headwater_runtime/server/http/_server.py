"""The HTTP server: the web UI and its JSON API, on the gRPC server's event loop.

aiohttp serves ``ROUTES``; a middleware asks ``HttpGuard`` about every request (the
credential, the route's role in ``HTTP_ROUTES``, CSRF on POSTs; http/_access.py) and
turns the errors handlers may raise into JSON answers. It runs in the same process and
on the same event loop as the gRPC services, with the same credentials
(``AccessControl``) and the same certificate (``ServerTLS``: HTTPS, reloaded with the
gRPC port's on SIGHUP), so it reads the same in-memory state (workers, why task runs
wait) and follows runs through the same watch machinery.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage

from .._access import AccessControl
from .._core import ServerCore
from .._http_security import HttpGuard
from .._tls import ServerTLS
from ._access import calling_as, form_of, refusal
from ._api import HttpApi, error_response
from ._routes import ROUTES, check_tables

log = logging.getLogger("headwater.server.http")

#: The largest request body the HTTP API reads (aiohttp's default).
MAX_BODY = 1 << 20


class _QuietBadRequests(logging.Filter):
    """Drops aiohttp's log record (an ERROR with a traceback) for a request that is not
    well-formed HTTP (a raw byte that is not ASCII in its path, a broken header): the
    client is answered 400 saying what is wrong, and any client could otherwise fill the
    server's log with tracebacks. Errors of the server's own handlers still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, BadHttpMessage)


logging.getLogger("aiohttp.server").addFilter(_QuietBadRequests())

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


#: Transports that sent a whole request (weakly: they go when their connection does).
served: weakref.WeakSet[Any] = weakref.WeakSet()


def host_names(settings: Any) -> frozenset[str]:
    """The host names a request's Host header may give besides an IP address and
    ``localhost``: the server's --host, and those of --ui-url and --advertise."""
    names = {"localhost"}
    for given in (settings.host, settings.ui_url, settings.advertise):
        if not given:
            continue
        host = ""
        with contextlib.suppress(ValueError):  # (not a URL: nothing to add)
            host = urlsplit(given if "//" in given else f"//{given}").hostname or ""
        if host:
            names.add(host.lower())
    return frozenset(names)


def host_problem(header: str, names: frozenset[str]) -> str:
    """Why a request's Host header is not one an open server answers to ("" when it
    is): an IP address, ``localhost`` (and ``*.localhost``), or one of ``names``. Another
    name is what a DNS rebinding attack sends (a page of another site whose name now
    points at this server): with no check, it read the page of an open server, with its
    CSRF token, and posted as its admin (a user trial). A server with credentials needs
    no such check: that page gets neither its session cookie nor a token."""
    if not header:
        return ""  # (HTTP/1.0 without one: no browser's request)
    host = ""
    with contextlib.suppress(ValueError):  # ("[::1" and such: no host name)
        host = urlsplit(f"//{header}").hostname or ""
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host)
        return ""
    if host in names or host.endswith(".localhost"):
        return ""
    shown = header if len(header) <= 100 else header[:100] + "..."
    return (
        f"this server does not answer to the host name {shown!r}: open it by its IP "
        "address or localhost, or start it with --ui-url naming that host"
    )


async def _protective_headers(request: web.Request, response: web.StreamResponse) -> None:
    """No page of the UI may be framed by another site (clickjacking: a framed run page's
    Cancel button was pressed through a page on another port, a user trial), no
    answer's type is guessed, and the API's answers (a session's CSRF token among them)
    are not kept in caches."""
    headers = response.headers
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Content-Security-Policy", "frame-ancestors 'none'")
    headers.setdefault("X-Content-Type-Options", "nosniff")
    if request.path.startswith("/api/"):
        headers.setdefault("Cache-Control", "no-store")


def build_app(
    core: ServerCore, access: AccessControl, *, secure: bool = False
) -> tuple[web.Application, HttpApi]:
    """The aiohttp application serving every route of ``ROUTES``, each request checked
    by an ``HttpGuard`` over ``access`` (``secure``: served over HTTPS, so the session
    cookie gets ``Secure``)."""
    check_tables()
    guard = HttpGuard(access, secure=secure)
    api = HttpApi(core, guard)
    names = host_names(core.settings)

    @web.middleware
    async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await checked(request, handler)
        except web.HTTPRequestEntityTooLarge as exc:  # (aiohttp's answer was plain text)
            return web.json_response(
                {"error": f"the request body is over {MAX_BODY:,} bytes, the most it may be"},
                status=exc.status,
            )

    async def checked(request: web.Request, handler: Handler) -> web.StreamResponse:
        # (Only an open server answers a request with no credential: a page under
        # another name gets no session cookie of this one, and no token.)
        wrong_host = "" if access.enabled else host_problem(request.headers.get("Host", ""), names)
        if wrong_host:
            return web.json_response({"error": wrong_host}, status=421)
        served.add(request.transport)  # (it sent a whole request: see _Connections)
        form = await form_of(request)
        # The raw path: the one aiohttp's router matched, before percent-decoding.
        decision = guard.check(request.method, request.rel_url.raw_path, request.headers, form)
        if decision.status != 200:
            return refusal(guard, request, decision)
        try:
            with calling_as(decision.caller):
                return await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:
            answer = error_response(exc)
            if answer is None:
                log.exception("HTTP %s %s failed", request.method, request.path)
                return web.json_response(
                    {"error": "internal error (see the server log)"}, status=500
                )
            return answer

    app = web.Application(middlewares=[guarded], client_max_size=MAX_BODY)
    app.on_response_prepare.append(_protective_headers)
    for route in ROUTES:
        app.router.add_route(route.method, route.aiohttp_path, getattr(api, route.handler))
    return app, api


@dataclass
class HttpServer:
    """A started HTTP server; ``stop()`` ends its event streams and closes it."""

    runner: web.AppRunner
    api: HttpApi
    host: str
    port: int
    #: Served over HTTPS.
    secure: bool = False

    @property
    def url(self) -> str:
        """Where the UI is, e.g. ``http://127.0.0.1:50052/``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.secure else 'http'}://{host}:{self.port}/"

    async def stop(self) -> None:
        """End the open event streams (browsers reconnect later), then close."""
        for task in list(self.api.streams):
            task.cancel()
        for task in list(self.api.streams):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.runner.cleanup()


#: Seconds a connection has to send its first whole request (its headers): one that
#: sends nothing, or a header a byte at a time, is closed then.
FIRST_REQUEST_WAIT = 30.0


def connection_limit() -> int:
    """The most HTTP connections open at once: 1,000, or a quarter of the process's
    open-file limit when that is lower (the gRPC port, the database and the workers'
    streams need the rest)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 1000
    if soft == resource.RLIM_INFINITY:
        return 1000
    return max(64, min(1000, soft // 4))


class _BoundedServer(web.Server):
    """aiohttp's protocol factory, bounding the connections: over ``limit`` open at
    once, a new one is closed at once; one that has not sent a whole request within
    FIRST_REQUEST_WAIT is closed. Idle connections that sent nothing were kept for
    good: 20,000 of them used up the process's files, and the gRPC port, the health
    check and every client went with them (a user trial)."""

    limit = 1000
    open = 0

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self.open += 1
        if self.open > self.limit:
            transport.close()
            return
        asyncio.get_running_loop().call_later(FIRST_REQUEST_WAIT, _close_if_silent, transport)

    def connection_lost(self, handler: Any, exc: BaseException | None = None) -> None:
        self.open -= 1
        super().connection_lost(handler, exc)


def _close_if_silent(transport: Any) -> None:
    if transport not in served and not transport.is_closing():
        transport.close()


class _GuardedRunner(web.AppRunner):
    """An AppRunner whose protocol factory is a ``_BoundedServer``."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _BoundedServer  # (aiohttp makes it: the same, bounded)
        assert isinstance(server, _BoundedServer)
        server.limit = connection_limit()
        return server


async def start_http(
    core: ServerCore,
    host: str,
    port: int,
    access: AccessControl,
    tls: ServerTLS | None = None,
) -> HttpServer:
    """Serve the UI and the HTTP API on ``host:port`` (0: a free port) on this loop,
    checking callers against ``access`` (the gRPC port's credentials), over HTTPS with
    ``tls`` (the gRPC port's certificate) when given; OSError when the address cannot
    be bound."""
    app, api = build_app(core, access, secure=tls is not None)
    # handler_cancellation: a request's handler is cancelled when its connection ends,
    # as a gRPC call's is when its client goes away (what must outlive it is carried
    # to its end: _io.to_its_end). Without it an event stream whose browser left went
    # on until its next keep-alive write failed, up to 15 s, holding ~22 KB: opened
    # and dropped by the thousand, they added up.
    runner = _GuardedRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls.ssl_context() if tls else None)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(f"cannot serve HTTP on {host}:{port} ({exc.strerror or exc})") from None
    sockets = [s for s in (runner.addresses or [])]
    bound = port
    if sockets:
        bound = int(sockets[0][1])
    return HttpServer(runner, api, host, bound, secure=tls is not None)


__all__ = ["HttpServer", "build_app", "start_http"]
