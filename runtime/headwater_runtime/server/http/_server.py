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
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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


def build_app(
    core: ServerCore, access: AccessControl, *, secure: bool = False
) -> tuple[web.Application, HttpApi]:
    """The aiohttp application serving every route of ``ROUTES``, each request checked
    by an ``HttpGuard`` over ``access`` (``secure``: served over HTTPS, so the session
    cookie gets ``Secure``)."""
    check_tables()
    guard = HttpGuard(access, secure=secure)
    api = HttpApi(core, guard)

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
    runner = web.AppRunner(app, access_log=None, handle_signals=False, handler_cancellation=True)
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
