"""Security for the HTTP port (the web UI and its JSON API), independent of the HTTP
library that serves it: who calls, whether their role may, CSRF, the login cookie.

How a server's HTTP layer uses it, per request::

    decision = guard.check(method, path, headers, form)
    if decision.status != 200: answer decision.status (401: send pages to /login)
    else: serve it as decision.caller (its role is already checked)

- The credential is the ``Authorization: Bearer`` header (scripts), or else the
  session cookie the login page sets: the token itself, ``HttpOnly`` (page scripts
  cannot read it), ``SameSite=Strict`` (other sites' pages cannot send it) and
  ``Secure`` over HTTPS. The token is checked on every request, so revoking it logs
  the browser out at once.
- Every state-changing route is a POST (``HTTP_ROUTES``), and a POST made with the
  cookie (or on a server without credentials) must carry the CSRF token in the
  ``X-CSRF-Token`` header or a ``csrf_token`` form field, and an ``Origin`` (when the
  browser sends one) of this server: SameSite=Strict already keeps the cookie off
  cross-site requests; the token also covers an open server and old browsers. The
  CSRF token is an HMAC of the session token under a per-process secret, given to
  the page by ``csrf_token`` (e.g. in a ``<meta>`` tag or a session endpoint).
- HTTPS: ``ServerTLS.ssl_context()`` serves the HTTP port with the gRPC port's
  certificate, reloaded with it on SIGHUP.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

from headwater.wire import printable

from ._access import ANONYMOUS, AccessControl, Caller, Refused
from ._roles import allows, describe, http_route

SESSION_COOKIE = "headwater_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
#: The login form's field for the token.
TOKEN_FIELD = "token"


@dataclass(frozen=True)
class HttpDecision:
    """What to do with one request: ``status`` 200 (serve it as ``caller``), 401 (no
    valid credential), 403 (role or CSRF), 404 (no such route) or 405 (a route, not
    of this method)."""

    status: int
    caller: Caller | None = None
    reason: str = ""
    #: With 405: the methods the route has (the answer's ``Allow`` header).
    allow: str = ""


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return ""


def session_token(headers: Mapping[str, str]) -> str:
    """The token in a request's session cookie ("" without one)."""
    cookie = SimpleCookie()
    try:
        cookie.load(_header(headers, "cookie"))
    except Exception:  # a malformed Cookie header is no credential
        return ""
    morsel = cookie.get(SESSION_COOKIE)
    return morsel.value if morsel is not None else ""


class HttpGuard:
    """Checks HTTP requests against the server's credentials and ``HTTP_ROUTES``.

    Args:
        access: the server's credentials (shared with the gRPC port).
        secure: the port serves HTTPS (cookies get ``Secure``).
        secret: the CSRF key (default: random per process; pages loaded before a
            restart must be reloaded).
    """

    def __init__(
        self, access: AccessControl, *, secure: bool = False, secret: bytes | None = None
    ) -> None:
        self.access = access
        self.secure = secure
        self._secret = secret or secrets.token_bytes(32)

    def csrf_token(self, headers: Mapping[str, str]) -> str:
        """The CSRF token for the session of a request (give it to its page)."""
        session = session_token(headers).encode("utf-8", "surrogateescape")  # (as sent)
        return hmac.new(self._secret, session, hashlib.sha256).hexdigest()

    def authenticate(self, headers: Mapping[str, str]) -> tuple[Caller, bool]:
        """The caller, and whether the credential came from the cookie; Refused when
        it is missing, unknown or revoked (an open server: anonymous admin)."""
        if not self.access.enabled:
            return ANONYMOUS, True
        bearer = _header(headers, "authorization")
        if bearer:
            return self.access.authenticate((("authorization", bearer),), {}), False
        token = session_token(headers)
        if not token:
            raise Refused("not logged in: log in with a token at /login")
        return self.access.authenticate((("authorization", f"Bearer {token}"),), {}), True

    def check(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        form: Mapping[str, str] | None = None,
    ) -> HttpDecision:
        """Decide one request (see the module docstring)."""
        route = http_route(method, path)
        if route is None:
            allowed = [m for m in ("GET", "HEAD", "POST") if http_route(m, path) is not None]
            if allowed:  # (it said 404, as if the page did not exist: a trial's HEAD /)
                methods = ", ".join(allowed)
                return HttpDecision(
                    405, reason=f"{method} is not allowed on {path} ({methods})", allow=methods
                )
            return HttpDecision(404, reason=f"no route {method} {path}")
        try:
            caller, by_cookie = self.authenticate(headers)
        except Refused as exc:
            if route.roles:
                return HttpDecision(401, reason=str(exc))
            caller, by_cookie = None, True
        if route.roles:
            assert caller is not None
            if not allows(caller.role, route.roles):
                return HttpDecision(
                    403,
                    caller,
                    f"credential {caller.name!r} (role {caller.role.value}) may not "
                    f"{method} {path}: it needs one of the roles {describe(route.roles)}",
                )
        if method.upper() == "POST" and path == "/login":
            # Another site must not log a browser in (with a token of its own choosing).
            problem = _origin_problem(headers)
            if problem:
                return HttpDecision(403, caller, problem)
        elif method.upper() == "POST" and by_cookie:
            problem = self._csrf_problem(headers, form or {})
            if problem:
                return HttpDecision(403, caller, problem)
        return HttpDecision(200, caller)

    def _csrf_problem(self, headers: Mapping[str, str], form: Mapping[str, str]) -> str:
        problem = _origin_problem(headers)
        if problem:
            return problem
        given = _header(headers, CSRF_HEADER) or form.get(CSRF_FIELD, "")
        # Compared as bytes: compare_digest refuses str with non-ASCII characters (a
        # header of such bytes was a 500).
        expected = self.csrf_token(headers).encode()
        if not given or not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
            return (
                f"CSRF check failed: a POST needs the page's CSRF token (header "
                f"{CSRF_HEADER} or form field {CSRF_FIELD}); reload the page"
            )
        return ""

    def login(self, token: str) -> tuple[Caller, str]:
        """Check a token typed into the login page; the caller and the Set-Cookie
        header value that keeps it (Refused when it is not valid)."""
        caller = self.access.authenticate((("authorization", f"Bearer {token.strip()}"),), {})
        return caller, self.session_cookie(token.strip())

    def session_cookie(self, token: str, *, max_age: int | None = None) -> str:
        """A Set-Cookie value holding ``token``: HttpOnly, SameSite=Strict, Path=/,
        and Secure over HTTPS."""
        cookie = SimpleCookie()
        cookie[SESSION_COOKIE] = token
        morsel = cookie[SESSION_COOKIE]
        morsel["httponly"] = True
        morsel["samesite"] = "Strict"
        morsel["path"] = "/"
        if self.secure:
            morsel["secure"] = True
        if max_age is not None:
            morsel["max-age"] = max_age
        return morsel.OutputString()

    def logout_cookie(self) -> str:
        """A Set-Cookie value that removes the session cookie."""
        return self.session_cookie("", max_age=0)


def _origin_problem(headers: Mapping[str, str]) -> str:
    """Why a POST is refused for coming from another site's page ("" when it does
    not: no Origin, or this server's own). ``Origin: null`` (a sandboxed frame, a
    ``data:`` or ``file:`` page: no site a browser would name) is refused too; this
    server's pages send their own origin."""
    origin = _header(headers, "origin")
    host = _header(headers, "host")
    if origin and (origin == "null" or urlsplit(origin).netloc != host):
        return f"CSRF check failed: the request comes from {origin}, not this server"
    return ""


def page_text(text: str) -> str:
    """``text`` for an HTML page: control characters shown as escapes, as the CLI and
    the web UI show them (a path or message on a page cannot reorder it), HTML escaped."""
    return html.escape(printable(text))


def html_page(title: str, body: str, *, logout_csrf: str | None = None) -> str:
    """A page of the server that is not the UI's script (the login page, a 404), styled
    like it: its header (a Log out button when ``logout_csrf`` is given: the caller is
    logged in with the session cookie) and ``body`` (HTML) as its main part."""
    logout = (
        '<form id="user" method="post" action="/logout">'
        f'<input type="hidden" name="{CSRF_FIELD}" value="{html.escape(logout_csrf)}">'
        '<button type="submit" id="logout">Log out</button></form>'
        if logout_csrf is not None
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} · Headwater</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,"><link rel="stylesheet" href="/static/app.css"></head>
<body><header><a href="/runs" class="brand">Headwater</a>{logout}</header>
<main id="main">{body}</main></body></html>
"""


def login_page(error: str = "", next_path: str = "/") -> str:
    """The login page: one token field, posted to /login (no script, no CDN)."""
    message = f'<p class="error" role="alert">{page_text(error)}</p>' if error else ""
    return html_page(
        "Log in",
        f"""<div class="panel login"><h1>Log in</h1>{message}
<form method="post" action="/login">
<label for="{TOKEN_FIELD}">Token</label>
<input id="{TOKEN_FIELD}" name="{TOKEN_FIELD}" type="password" required autofocus
       autocomplete="current-password">
<input type="hidden" name="next" value="{html.escape(next_path)}">
<button type="submit">Log in</button>
</form>
<p class="muted">Ask an admin for a token:
<code>headwater tokens create --role viewer --name YOU</code></p></div>""",
    )
