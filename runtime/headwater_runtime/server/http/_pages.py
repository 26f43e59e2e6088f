"""The handlers that are not the JSON API of runs: the UI's page and assets, logging
in and out, who is calling, the health check and Prometheus metrics.

The page carries the caller's CSRF token (and name and role) in a ``<meta>`` tag; the
UI's script sends it back as ``X-CSRF-Token`` on every POST (server/_http_security.py).
"""

from __future__ import annotations

import html
import logging
from importlib import resources

from aiohttp import web

from .._access import CALLER, Refused
from .._core import SERVER_VERSION, ServerCore
from .._http_security import TOKEN_FIELD, HttpGuard, login_page
from ._access import local_path

log = logging.getLogger("headwater.server.http")

#: The content types of the UI's assets.
_TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
}
#: Where index.html gets the caller's session (CSRF token, name, role).
SESSION_MARK = "<!--session-->"


class PageHandlers:
    """The handlers of the page, its assets, the session, health and metrics.

    Args:
        core: the server's state.
        guard: who may call what (the server's credentials).
    """

    def __init__(self, core: ServerCore, guard: HttpGuard) -> None:
        self.core = core
        self.guard = guard
        self._assets: dict[str, bytes] = {}
        self._shipped: frozenset[str] | None = None  # the assets' names (``_asset``)

    def _asset(self, name: str) -> bytes | None:
        """An asset shipped in the package, by its path under ``static/``; None for
        any other name. Only the names shipped are looked up: a name from the request
        never reaches the file system (one too long for it, or with a NUL byte, made
        a 500)."""
        files = resources.files("headwater_runtime.server.http") / "static"
        if self._shipped is None:
            shipped = set()
            for entry in files.iterdir():
                if entry.is_file():
                    shipped.add(entry.name)
                elif entry.is_dir():
                    shipped.update(f"{entry.name}/{f.name}" for f in entry.iterdir() if f.is_file())
            self._shipped = frozenset(shipped)
        if name not in self._shipped:
            return None
        data = self._assets.get(name)
        if data is None:
            data = self._assets[name] = files.joinpath(*name.split("/")).read_bytes()
        return data

    def _session(self, request: web.Request) -> dict[str, object]:
        caller = CALLER.get()
        return {
            "name": caller.name,
            "role": caller.role.value,
            "auth_required": self.guard.access.enabled,
            "csrf_token": self.guard.csrf_token(request.headers),
            "server_version": SERVER_VERSION,
        }

    async def page(self, request: web.Request) -> web.StreamResponse:
        """The single page of the UI (it routes /runs/ID and friends itself), with the
        caller's session in a ``<meta>`` tag."""
        session = self._session(request)
        meta = (
            f'<meta name="headwater-session" data-csrf="{session["csrf_token"]}" '
            f'data-name="{html.escape(str(session["name"]))}" data-role="{session["role"]}" '
            f'data-auth="{"true" if session["auth_required"] else "false"}">'
        )
        index = self._asset("index.html")
        assert index is not None, "index.html is shipped with the package"
        text = index.decode().replace(SESSION_MARK, meta, 1)
        return web.Response(
            text=text, content_type="text/html", headers={"Cache-Control": "no-store"}
        )

    async def static(self, request: web.Request) -> web.StreamResponse:
        """An asset of the UI, shipped in the package (never fetched from elsewhere)."""
        path = request.match_info["tail"]
        data = self._asset(path)
        if data is None:
            raise web.HTTPNotFound()
        suffix = "." + path.rsplit(".", 1)[-1] if "." in path else ""
        return web.Response(
            body=data,
            content_type=_TYPES.get(suffix, "application/octet-stream"),
            headers={"Cache-Control": "no-cache"},
        )

    # ----------------------------------------------------------------- session

    async def login_form(self, request: web.Request) -> web.StreamResponse:
        """The login page (a server without credentials has none: to the UI)."""
        target = local_path(request.query.get("next"))
        if not self.guard.access.enabled:
            return web.Response(status=303, headers={"Location": target})
        return web.Response(text=login_page(next_path=target), content_type="text/html")

    async def login(self, request: web.Request) -> web.StreamResponse:
        """Check the token of the login form: the session cookie and on to ``next``, or
        the form again with why (401)."""
        try:
            form = await request.post()
        except ValueError:  # (UnicodeDecodeError too: a body no browser sends) was a 500
            return _login_refused("the login form could not be read", "/", status=400)
        target = local_path(str(form.get("next") or "/"))
        if not self.guard.access.enabled:
            return web.Response(status=303, headers={"Location": target})
        token = str(form.get(TOKEN_FIELD) or "").strip()
        if not token:
            return _login_refused("enter a token", target)
        try:
            caller, cookie = self.guard.login(token)
        except Refused as exc:
            return _login_refused(str(exc), target)
        log.info("HTTP login by credential %r (role %s)", caller.name, caller.role.value)
        return web.Response(status=303, headers={"Location": target, "Set-Cookie": cookie})

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """Clear the session cookie; to the login page."""
        headers = {"Location": "/login", "Set-Cookie": self.guard.logout_cookie()}
        return web.Response(status=303, headers=headers)

    async def session(self, request: web.Request) -> web.StreamResponse:
        """Who is calling (credential name and role), whether this server needs a
        credential, the CSRF token for POSTs made with the session cookie, and the
        server's version."""
        return web.json_response(self._session(request))

    # -------------------------------------------------------- health, metrics

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        """200 while the server runs (for load balancers; says nothing else)."""
        return web.json_response({"status": "ok"})

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        """The server's Prometheus metrics (the same as on ``--metrics-port``)."""
        try:
            data, content_type = await self.core.io.read(self.core.ops.metrics.render)
        except Exception as exc:  # e.g. the store cannot be read right now
            return web.json_response({"error": f"metrics unavailable: {exc}"}, status=503)
        return web.Response(body=data, headers={"Content-Type": content_type})


def _login_refused(why: str, target: str, status: int = 401) -> web.Response:
    return web.Response(
        status=status, text=login_page(why, next_path=target), content_type="text/html"
    )


__all__ = ["SESSION_MARK", "PageHandlers"]
