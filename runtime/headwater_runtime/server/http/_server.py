"""The HTTP server: the web UI and its JSON API, on the gRPC server's event loop.

aiohttp serves ``ROUTES``; a middleware applies ``Access`` (token, CSRF guard) and
turns the errors handlers may raise into JSON answers. It runs in the same process and
on the same event loop as the gRPC services, so it reads the same in-memory state
(workers, why task runs wait) and follows runs through the same watch machinery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from .._core import ServerCore
from ._access import Access
from ._api import HttpApi, error_response
from ._routes import ROUTES, Route

log = logging.getLogger("headwater.server.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_ROUTE_KEY = web.AppKey("route", dict)


def build_app(core: ServerCore, access: Access) -> tuple[web.Application, HttpApi]:
    """The aiohttp application serving every route of ``ROUTES``."""
    api = HttpApi(core, access)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        info = request.match_info.route.resource
        route = request.app[_ROUTE_KEY].get((request.method, info.canonical if info else ""))
        if route is None:  # 404 / 405 from aiohttp itself
            return await handler(request)
        refused = access.refusal(request, route)
        if refused is not None:
            return refused
        try:
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

    app = web.Application(middlewares=[guard])
    table: dict[tuple[str, str], Route] = {}
    for route in ROUTES:
        handler: Handler = getattr(api, route.handler)
        added = app.router.add_route(route.method, route.path, handler)
        table[(route.method, added.resource.canonical if added.resource else route.path)] = route
    app[_ROUTE_KEY] = table
    return app, api


@dataclass
class HttpServer:
    """A started HTTP server; ``stop()`` ends its event streams and closes it."""

    runner: web.AppRunner
    api: HttpApi
    host: str
    port: int

    @property
    def url(self) -> str:
        """Where the UI is, e.g. ``http://127.0.0.1:50052/``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def stop(self) -> None:
        """End the open event streams (browsers reconnect later), then close."""
        for task in list(self.api.streams):
            task.cancel()
        for task in list(self.api.streams):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.runner.cleanup()


async def start_http(core: ServerCore, host: str, port: int, token: str | None) -> HttpServer:
    """Serve the UI and the HTTP API on ``host:port`` (0: a free port) on this loop;
    OSError when the address cannot be bound."""
    app, api = build_app(core, Access(token))
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(f"cannot serve HTTP on {host}:{port} ({exc.strerror or exc})") from None
    sockets = [s for s in (runner.addresses or [])]
    bound = port
    if sockets:
        bound = int(sockets[0][1])
    return HttpServer(runner, api, host, bound)


__all__ = ["HttpServer", "build_app", "start_http"]
