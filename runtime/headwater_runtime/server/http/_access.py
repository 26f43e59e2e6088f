"""Who may call a route: the server's token, a session cookie, and a CSRF guard.

With no token configured (``headwater server`` without ``--token``, listening on
loopback by default) every route is open. With a token, every non-public route needs
``Authorization: Bearer TOKEN`` (scripts) or the session cookie that ``POST
/api/login`` sets (the browser): HttpOnly, so page scripts cannot read it, and
SameSite=Strict, so other sites' pages cannot send it. Every POST, logged in or not,
also needs the header ``X-Headwater-Request: 1``: a cross-site form cannot set it and
a cross-site script cannot send it without a CORS preflight the server never grants
(the CSRF guard). Roles per route are recorded in ``_routes.ROUTES``; one token grants
every role until named credentials exist.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from ._routes import PUBLIC, Route

#: The session cookie's name.
COOKIE = "headwater_session"
#: The header every POST must carry (CSRF guard).
CSRF_HEADER = "X-Headwater-Request"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Access:
    """Decides whether a request may reach its route.

    Args:
        token: the server's token (None: everything is open).
    """

    def __init__(self, token: str | None) -> None:
        self.token = token

    @property
    def required(self) -> bool:
        """Whether callers must present the token."""
        return bool(self.token)

    def _matches(self, presented: str | None) -> bool:
        if not presented or not self.token:
            return False
        return hmac.compare_digest(presented.encode(), self.token.encode())

    def authenticated(self, request: web.Request) -> bool:
        """Whether the request carries the token (header or session cookie)."""
        if not self.token:
            return True
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and self._matches(header[len("Bearer ") :]):
            return True
        return self._matches(request.cookies.get(COOKIE))

    def refusal(self, request: web.Request, route: Route) -> web.Response | None:
        """The answer refusing the request, or None when it may go on."""
        if request.method == "POST" and request.headers.get(CSRF_HEADER) != "1":
            return _error(403, f"POST requests need the header '{CSRF_HEADER}: 1'")
        if route.role == PUBLIC or self.authenticated(request):
            return None
        return _error(401, "this server needs its token: 'Authorization: Bearer TOKEN', or log in")

    def login(self, token: str, *, secure: bool = False) -> web.Response:
        """The answer to a login: the session cookie for a right token, else 401."""
        if not self.token:
            return web.json_response({"authenticated": True})
        if not self._matches(token):
            return _error(401, "wrong token")
        response = web.json_response({"authenticated": True})
        response.set_cookie(
            COOKIE, token, httponly=True, samesite="Strict", secure=secure, path="/"
        )
        return response


__all__ = ["COOKIE", "CSRF_HEADER", "Access"]
