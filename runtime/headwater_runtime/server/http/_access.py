"""Who may call a route, for aiohttp: ``HttpGuard`` (server/_http_security.py) decides
every request against ``HTTP_ROUTES`` with the server's ``AccessControl`` (the same
credentials as the gRPC port); this module turns its decisions into answers.

- Allowed: the handler runs with ``CALLER`` set to the credential, so the audit log
  names who cancelled or retried a run from the browser, as it does for gRPC.
- 401 (no valid credential): a page is redirected to ``/login?next=PAGE``; anything
  else gets ``{"error": ...}`` JSON. A session cookie that no longer works (its token
  was revoked) is cleared in the same answer.
- 403 (the role does not allow it, or the CSRF check failed) and 404 (no such route):
  JSON, or for a page an HTML page styled like the UI's, linking back to it.

A server with no ``--token`` and no stored credentials is open, as before roles: the
guard lets every request through as the anonymous admin (POSTs still need the page's
CSRF token).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from urllib.parse import quote, urlsplit

from aiohttp import web

from .._access import CALLER, Caller, Refused
from .._http_security import HttpDecision, HttpGuard, html_page, page_text, session_token

#: Body types whose fields may carry the CSRF token (``csrf_token``).
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})


def is_page(method: str, path: str) -> bool:
    """Whether a request is for one of the UI's HTML pages (not the API, assets,
    metrics or the health check): those get redirects and HTML, not JSON. A HEAD is
    answered as its GET (it got a 401 where the GET is a 303 to /login, a re-trial)."""
    if method not in ("GET", "HEAD") or path in ("/metrics", "/healthz", "/login"):
        return False
    return not path.startswith(("/api/", "/static/"))


def local_path(target: str | None) -> str:
    """``target`` when it is a path on this server (where to go after logging in),
    else ``/``: never another site (an open redirect), nor the login page itself."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(c <= " " or c == "\x7f" for c in target):  # browsers drop tabs: "/\t/evil.example"
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or parts.path in ("/login", "/logout"):
        return "/"
    return target


async def form_of(request: web.Request) -> dict[str, str]:
    """A POST's form fields (empty for other bodies, e.g. JSON); aiohttp keeps them for
    the handler."""
    if request.method != "POST" or request.content_type not in FORM_TYPES:
        return {}
    try:
        posted = await request.post()
    except web.HTTPException:  # (over the body limit: 413)
        raise
    except Exception:  # a malformed body: no fields (the CSRF check then refuses it)
        # (A truncated multipart body raised past this, before any credential was
        # checked: aiohttp's plain-text 500; a user trial.)
        return {}
    return {k: v for k, v in posted.items() if isinstance(v, str)}


def refusal(guard: HttpGuard, request: web.Request, decision: HttpDecision) -> web.Response:
    """The answer to a request the guard refused."""
    path = request.path
    page = is_page(request.method, path)
    if decision.status == 401 and page:
        target = local_path(request.rel_url.raw_path_qs)
        location = f"/login?next={quote(target, safe='/')}"
        response = web.Response(status=303, headers={"Location": location})
    elif page:
        text = _refusal_page(guard, request, decision)
        response = web.Response(status=decision.status, text=text, content_type="text/html")
    else:
        response = web.json_response({"error": decision.reason}, status=decision.status)
        if decision.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="headwater"'
    if decision.allow:
        response.headers["Allow"] = decision.allow
    if decision.status == 401 and session_token(request.headers):
        response.headers["Set-Cookie"] = guard.logout_cookie()  # it no longer works
    return response


def _refusal_page(guard: HttpGuard, request: web.Request, decision: HttpDecision) -> str:
    """A 403 or 404 page, styled like the UI, with a link back to it; a Log out button
    only for a browser logged in with the session cookie (an open server has no login)."""
    if decision.status == 404:
        title = "Not found"
        said = f"There is no page at <code>{page_text(request.path)}</code>."
    else:
        title = "Not allowed"
        said = page_text(decision.reason)
    body = f'<h1>{title}</h1><p class="error">{said}</p><p><a href="/runs">Go to the runs</a></p>'
    csrf = guard.csrf_token(request.headers) if _logged_in(guard, request) else None
    return html_page(title, body, logout_csrf=csrf)


def _logged_in(guard: HttpGuard, request: web.Request) -> bool:
    """Whether the request comes with a session cookie that still works."""
    if not guard.access.enabled or not session_token(request.headers):
        return False
    try:
        _, by_cookie = guard.authenticate(request.headers)
    except Refused:
        return False
    return by_cookie


@contextlib.contextmanager
def calling_as(caller: Caller | None) -> Iterator[None]:
    """Make ``caller`` the one the handler (and the audit log) sees, for this request
    only (a keep-alive connection serves the next request in the same task)."""
    if caller is None:
        yield
        return
    token = CALLER.set(caller)
    try:
        yield
    finally:
        CALLER.reset(token)


__all__ = ["FORM_TYPES", "calling_as", "form_of", "is_page", "local_path", "refusal"]
