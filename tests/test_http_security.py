"""The web UI's HTTP port, secured: the real server (``start_server`` with its HTTP
port on, over TLS), its credentials stored hashed in its database, one per role and a
revoked one per role, plus the ``--token`` admin shortcut.

Every HTTP route x every role x {no credential, wrong, revoked, right} gets the exact
status (the table is printed); the routes aiohttp serves are exactly ``HTTP_ROUTES``;
the login page sets an HttpOnly, SameSite=Strict, Secure cookie; POSTs made with the
cookie need the page's CSRF token and this server's Origin; a revoked token logs the
browser out; SIGHUP's certificate reload reaches HTTPS too; a server without
credentials stays open.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import shutil
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import grpc
import pytest
from aiohttp.test_utils import make_mocked_request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pg_cluster import STORES, database_for
from test_client import ServerThread
from tls_certs import Certs, make_certs

from headwater import Client, ServerError, flow, task
from headwater.wire import Role
from headwater_runtime.server import (
    CSRF_HEADER,
    HTTP_ROUTES,
    SESSION_COOKIE,
    HttpGuard,
    allows,
    http_route,
    new_credential,
)
from headwater_runtime.server._roles import Route as RoleRoute
from headwater_runtime.server.http import ROUTES
from headwater_runtime.server.http._access import is_page
from headwater_runtime.store import open_store

SERVER_TOKEN = "http-server-token"
COLUMNS = ["admin", "operator", "viewer", "worker", "--token"]
STATES = ["none", "wrong", "revoked", "right"]
BOUND = 30.0


@task
def shout(text: str) -> str:
    return text.upper()


@flow
def loud(text: str = "hi") -> str:
    return shout(text)


@dataclass
class Site:
    server: ServerThread
    port: int
    guard: HttpGuard
    tokens: dict[str, dict[str, str]]
    certs: Certs
    served: Path
    ended_run: str  # CANCELLED
    running_run: str  # RUNNING: no worker takes its task
    schedule: str

    def client(self) -> Client:
        return Client(self.server.address, token=SERVER_TOKEN, tls_ca=self.certs.ca)


def _credentials(db: str) -> dict[str, dict[str, str]]:
    """One valid and one revoked credential per role, stored before the server starts."""
    store = open_store(db)
    tokens: dict[str, dict[str, str]] = {}
    try:
        for role in Role:
            now = time.time()
            right, token = new_credential(f"{role.value}-1", role, created_by="test", now=now)
            revoked, old = new_credential(f"{role.value}-old", role, created_by="test", now=now)
            store.add_credential(right)
            store.add_credential(revoked)
            store.revoke_credential(revoked.name, now)
            tokens[role.value] = {"right": token, "revoked": old}
    finally:
        store.close()
    tokens["--token"] = {"right": SERVER_TOKEN, "revoked": tokens["admin"]["revoked"]}
    return tokens


@contextlib.contextmanager
def _site(tmp_path: Path, db: str) -> Iterator[Site]:
    """A TLS server on ``db`` (a SQLite path or a PostgreSQL URL) with a credential
    per role, an ended run, a running one and a schedule."""
    certs = make_certs(tmp_path / "certs")
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(certs.server.cert, served / "server.crt")
    shutil.copy(certs.server.key, served / "server.key")
    tokens = _credentials(db)
    server = ServerThread(
        db,
        token=SERVER_TOKEN,
        tls_cert=str(served / "server.crt"),
        tls_key=str(served / "server.key"),
    )
    try:
        running = server.running
        assert running is not None and running.http is not None
        assert running.http.url.startswith("https://")
        with Client(server.address, token=SERVER_TOKEN, tls_ca=certs.ca) as client:
            ended = client.run(loud, {"text": "a"}).id
            client.cancel(ended, "ended for the test")
            running_run = client.run(loud, {"text": "b"}).id
            schedule = client.create_schedule(loud, every=3600).id
        guard = running.http.api.guard
        yield Site(
            server,
            running.http.port,
            guard,
            tokens,
            certs,
            served,
            ended,
            running_run,
            schedule,
        )
    finally:
        server.stop()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with _site(tmp_path, str(tmp_path / "hw.db")) as made:
        yield made


@pytest.fixture(params=STORES)
def any_site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    """``site`` on each store (the HTTP fuzz: PostgreSQL refused text SQLite took)."""
    with _site(tmp_path, database_for(request, request.param, tmp_path)) as made:
        yield made


def request(
    port: int,
    method: str,
    path: str,
    *,
    ca: str | None,
    cookie: str | None = None,
    headers: dict[str, str] | None = None,
    form: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], str]:
    """One request on a new connection (HTTPS when ``ca``): status, headers, body."""
    if ca is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=BOUND
        )
    else:
        context = ssl.create_default_context(cafile=ca)
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=BOUND)
    sent = dict(headers or {})
    if cookie is not None:
        sent["Cookie"] = f"{SESSION_COOKIE}={cookie}"
    body = b""
    if form is not None:
        sent["Content-Type"] = "application/x-www-form-urlencoded"
        body = urlencode(form).encode()
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        status, answer = response.status, dict(response.getheaders())
        if answer.get("Content-Type", "").startswith("text/event-stream"):
            return status, answer, ""  # a live stream: its status is the answer
        return status, answer, response.read().decode()
    finally:
        conn.close()


def call(site: Site, method: str, path: str, **kwargs: Any) -> tuple[int, dict[str, str], str]:
    return request(site.port, method, path, ca=kwargs.pop("ca", site.certs.ca), **kwargs)


def csrf_for(site: Site, cookie: str | None) -> str:
    """The CSRF token the server puts in the page of this session."""
    return site.guard.csrf_token({"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {})


def concrete(site: Site, route: RoleRoute) -> str:
    """A path of the route naming real objects (the run ids, the schedule)."""
    run = site.running_run if route.pattern.endswith("/retry") else site.ended_run
    values = {
        "run_id": run,
        "key": "shout",
        "name": "loud" if "/flows/" in route.pattern else "nobody",
        "schedule_id": site.schedule,
    }
    path = re.sub(r"\{([a-z_]+)\}", lambda m: values[m.group(1)], route.pattern)
    return path.replace("*", "app.js")


#: The status of each route once the guard let the call through (a route's own answer:
#: a page, a redirect, or a known refusal that tells which check answered).
PASSED = {
    ("POST", "/login"): 303,  # the form carries the server token: logged in, to /
    ("POST", "/logout"): 303,  # to /login
    ("POST", "/api/runs/{run_id}/retry"): 409,  # the run is still running
    ("POST", "/api/workers/{name}/drain"): 404,  # no worker named 'nobody'
    ("POST", "/api/workers/{name}/resume"): 404,
}


def expected(route: RoleRoute, column: str, state: str) -> int:
    passed = PASSED.get((route.method, route.pattern), 200)
    if not route.roles:
        return passed
    if state != "right":
        return (
            303 if is_page(route.method, route.pattern) else 401
        )  # a page sends the browser to /login
    role = Role.ADMIN if column == "--token" else Role(column)
    return passed if allows(role, route.roles) else 403


def test_every_http_route_and_role_gets_the_exact_status(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    found: dict[tuple[str, str, str], int] = {}
    for route in HTTP_ROUTES:
        path = concrete(site, route)
        for column in COLUMNS:
            for state in STATES:
                cookie = {"none": None, "wrong": "hwt_wrong"}.get(
                    state, site.tokens[column].get(state)
                )
                headers, form = {}, None
                if route.method == "POST":  # the page's CSRF token for this session
                    headers[CSRF_HEADER] = csrf_for(site, cookie)
                if (route.method, route.pattern) == ("POST", "/login"):
                    form = {"token": SERVER_TOKEN, "next": "/"}
                status, answer, body = call(
                    site, route.method, path, cookie=cookie, headers=headers, form=form
                )
                found[f"{route.method} {route.pattern}", column, state] = status
                if status == 303 and route.roles:
                    assert answer["Location"] == f"/login?next={quote(path, safe='/')}"
    lines = [
        "HTTP security matrix of the real web UI server: the status for no credential / a "
        "wrong one / a revoked one / the right one (session cookie; POSTs carry the page's "
        "CSRF token; 303 on a page: to /login)",
        f"{'route (roles that may call it)':60}" + "".join(f"{c:22}" for c in COLUMNS),
    ]
    for route in HTTP_ROUTES:
        key = f"{route.method} {route.pattern}"
        roles = (
            ", ".join(r.value for r in Role if allows(r, route.roles)) if route.roles else "open"
        )
        cells = [" / ".join(str(found[key, c, s]) for s in STATES) for c in COLUMNS]
        lines.append(f"{f'{key} ({roles})':60}" + "".join(f"{x:22}" for x in cells).rstrip())
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    wrong = [
        f"{route.method} {route.pattern} as {c} ({s}): got {status}"
        for route in HTTP_ROUTES
        for c in COLUMNS
        for s in STATES
        if (status := found[f"{route.method} {route.pattern}", c, s]) != expected(route, c, s)
    ]
    assert not wrong, "\n".join(wrong)
    # A route missing from the table is refused, whoever asks.
    admin = site.tokens["admin"]["right"]
    # A method a route does not have is a 405 naming those it has (it was a 404, as if
    # the page did not exist: a trial's HEAD /), whoever asks.
    status, answer, body = call(site, "DELETE", f"/api/runs/{site.ended_run}", cookie=admin)
    assert status == 405 and answer["Allow"] == "GET, HEAD"
    assert json.loads(body)["error"] == (
        f"DELETE is not allowed on /api/runs/{site.ended_run} (GET, HEAD)"
    )
    # HEAD wherever GET works (an uptime checker's HEAD / got 405), but on an event
    # stream: the GET's status and headers, no body.
    for path in ("/runs", "/", "/healthz", f"/api/runs/{site.ended_run}", "/nowhere"):
        for cookie in (admin, None):  # (without a credential: a page's 303 to /login)
            status, answer, body = call(site, "HEAD", path, cookie=cookie)
            got = call(site, "GET", path, cookie=cookie)
            assert (status, body) == (got[0], ""), (path, cookie)
            assert answer.get("Location") == got[1].get("Location"), (path, cookie)
            if status != 303:  # (a redirect's empty body has no type in some aiohttp)
                assert answer.get("Content-Type") == got[1].get("Content-Type"), (path, cookie)
    for stream in ("/api/workers/events", "/api/runs/events"):
        status, answer, _ = call(site, "HEAD", stream, cookie=admin)
        assert status == 405 and answer["Allow"] == "GET", stream
    assert call(site, "POST", "/api/unknown", cookie=admin)[0] == 404


def _pattern(canonical: str) -> str:
    """An aiohttp route's path as HTTP_ROUTES writes it ({tail} is the trailing *)."""
    return canonical[: -len("{tail}")] + "*" if canonical.endswith("{tail}") else canonical


def test_the_served_routes_are_exactly_http_routes(site: Site) -> None:
    running = site.server.running
    assert running is not None and running.http is not None
    app = running.http.runner.app
    served = {(r.method, _pattern(r.resource.canonical)) for r in app.router.routes() if r.resource}
    listed = {(r.method, r.pattern) for r in HTTP_ROUTES}
    assert served == listed
    assert len(HTTP_ROUTES) == len(listed) == len(ROUTES)

    async def resolve(method: str, path: str) -> Any:
        return await app.router.resolve(make_mocked_request(method, path, app=app))

    for route in HTTP_ROUTES:  # each listed route: aiohttp serves it, the guard finds it
        path = concrete(site, route)
        assert http_route(route.method, path) == route, f"{route} is shadowed"
        match = site.server.call(resolve(route.method, path))
        assert match.http_exception is None, f"{route.method} {path} is not served"
        assert _pattern(match.route.resource.canonical) == route.pattern


def login(site: Site, token: str, next_path: str = "/") -> tuple[int, dict[str, str], str]:
    return call(site, "POST", "/login", form={"token": token, "next": next_path})


def test_login_sets_a_strict_http_only_secure_cookie_and_revocation_logs_out(
    site: Site,
) -> None:
    status, answer, _ = call(site, "GET", f"/runs/{site.ended_run}")
    assert status == 303 and answer["Location"] == f"/login?next=/runs/{site.ended_run}"
    status, _, page = call(site, "GET", f"/login?next=/runs/{site.ended_run}")
    assert status == 200 and 'name="token" type="password"' in page and "<script" not in page
    assert f'name="next" value="/runs/{site.ended_run}"' in page
    status, _, page = login(site, "hwt_nope")
    assert status == 401 and "invalid token" in page
    status, _, page = login(site, "")
    assert status == 401 and "enter a token" in page
    viewer = site.tokens["viewer"]["right"]
    status, answer, _ = login(site, viewer, f"/runs/{site.ended_run}")
    assert status == 303 and answer["Location"] == f"/runs/{site.ended_run}"
    cookie = answer["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}={viewer};")
    for attribute in ("HttpOnly", "SameSite=Strict", "Secure", "Path=/"):
        assert attribute in cookie
    # Another site's page cannot log a browser in (login CSRF); this server's own can.
    form = {"token": viewer, "next": "/"}
    status, answer, page = call(
        site, "POST", "/login", form=form, headers={"Origin": "https://evil.example"}
    )
    assert status == 403 and "Set-Cookie" not in answer
    assert "the request comes from https://evil.example, not this server" in page
    # Nor a page with no origin (a sandboxed frame, a data: or file: page).
    status, answer, page = call(site, "POST", "/login", form=form, headers={"Origin": "null"})
    assert status == 403 and "Set-Cookie" not in answer
    assert "the request comes from null, not this server" in page
    own = {"Origin": f"https://127.0.0.1:{site.port}"}
    assert call(site, "POST", "/login", form=form, headers=own)[0] == 303
    # Never on to another site after logging in.
    for elsewhere in (
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
        "/\t/evil.example",
        "/login",
    ):
        assert login(site, viewer, elsewhere)[1]["Location"] == "/"
    # The page carries the session's CSRF token, name and role; the API says the same.
    status, _, page = call(site, "GET", "/runs", cookie=viewer)
    csrf = csrf_for(site, viewer)
    assert status == 200 and f'data-csrf="{csrf}"' in page and 'data-role="viewer"' in page
    status, _, body = call(site, "GET", "/api/session", cookie=viewer)
    session = json.loads(body)
    assert (session["name"], session["role"], session["csrf_token"]) == ("viewer-1", "viewer", csrf)
    # A viewer reads, and may not change anything.
    assert call(site, "GET", f"/api/runs/{site.ended_run}", cookie=viewer)[0] == 200
    status, _, body = call(
        site, "POST", f"/api/runs/{site.running_run}/cancel", cookie=viewer,
        headers={CSRF_HEADER: csrf},
    )  # fmt: skip
    assert status == 403 and "(role viewer) may not POST" in json.loads(body)["error"]
    # A live page's event stream, open when the credential is revoked, is ended.
    context = ssl.create_default_context(cafile=site.certs.ca)
    live = http.client.HTTPSConnection("127.0.0.1", site.port, context=context, timeout=BOUND)
    try:
        live.request(
            "GET",
            f"/api/runs/{site.running_run}/events",
            headers={"Cookie": f"{SESSION_COOKIE}={viewer}"},
        )
        stream = live.getresponse()
        assert stream.status == 200 and stream.readline() == b"event: run\n"
        # Revoked through the gRPC API (as `headwater tokens revoke` does): logged out
        # at once.
        with site.client() as client:
            client.revoke_token("viewer-1")
        # The run never ends (no worker): only the revocation ends its stream (without
        # it, a comment line every 15 s keeps it open past the deadline).
        deadline = time.monotonic() + BOUND
        while line := stream.readline():
            assert line != b"event: end\n"
            assert time.monotonic() < deadline, "the revoked credential's stream is open"
    finally:
        live.close()
    status, answer, body = call(site, "GET", "/api/runs", cookie=viewer)
    assert status == 401 and json.loads(body)["error"] == (
        "the token of credential 'viewer-1' was revoked"
    )
    assert answer["Set-Cookie"].startswith(f'{SESSION_COOKIE}="";')  # the cookie is cleared
    assert "Max-Age=0" in answer["Set-Cookie"]
    status, answer, _ = call(site, "GET", "/runs", cookie=viewer)
    assert status == 303 and answer["Location"] == "/login?next=/runs"
    # Logging out clears the cookie too.
    operator = site.tokens["operator"]["right"]
    status, answer, _ = call(
        site, "POST", "/logout", cookie=operator, form={"csrf_token": csrf_for(site, operator)}
    )
    assert status == 303 and answer["Location"] == "/login"
    assert "Max-Age=0" in answer["Set-Cookie"]


def test_an_unknown_page_links_to_the_runs_and_offers_log_out_only_when_logged_in(
    site: Site,
) -> None:
    """It was an unstyled "no route GET /nonexistent" with a Log out button for anyone,
    and no way back to the UI."""
    stylesheet = '<link rel="stylesheet" href="/static/app.css">'
    viewer, revoked = site.tokens["viewer"]["right"], site.tokens["viewer"]["revoked"]
    for cookie, logged_in in ((None, False), (viewer, True), (revoked, False)):
        status, answer, page = call(site, "GET", "/nonexistent", cookie=cookie)
        assert status == 404 and answer["Content-Type"].startswith("text/html"), cookie
        assert "There is no page at <code>/nonexistent</code>." in page
        assert stylesheet in page and '<a href="/runs">' in page
        assert "<title>Not found · Headwater</title>" in page
        assert ("Log out" in page) is logged_in, cookie
        if logged_in:
            assert f'name="csrf_token" value="{csrf_for(site, viewer)}"' in page
    # What the path says is shown, never obeyed: a bidirectional control as its escape.
    _, _, page = call(site, "GET", "/%E2%80%AEgnp.exe")
    assert "There is no page at <code>/\\u202egnp.exe</code>." in page and "\u202e" not in page
    # The API still answers JSON.
    status, _, body = call(site, "GET", "/api/nonexistent")
    assert status == 404 and json.loads(body) == {"error": "no route GET /api/nonexistent"}
    # The login page: styled like the UI, the token field focused, a refusal said.
    _, _, page = call(site, "GET", "/login")
    assert stylesheet in page and "autofocus" in page
    assert "<title>Log in · Headwater</title>" in page
    _, _, page = login(site, "hwt_nope")
    assert re.search(r'<p class="error" role="alert">invalid token[^<]*</p>', page), page


def test_credentials_and_csrf_tokens_of_bytes_that_are_not_utf8_are_refused(
    site: Site,
) -> None:
    """Such a Bearer header, session cookie or CSRF header was a 500 (aiohttp's plain
    text; found by an HTTP fuzz): it is refused like any wrong one."""
    status, _, body = call(
        site,
        "GET",
        "/api/runs",
        headers={"Authorization": b"Bearer hwt_\xff\xfe"},  # type: ignore[dict-item]
    )
    assert status == 401 and json.loads(body)["error"].startswith("invalid token"), body
    cookie = {"Cookie": f"{SESSION_COOKIE}=".encode() + b"hwt_\xe9"}
    status, _, body = call(site, "GET", "/api/runs", headers=cookie)  # type: ignore[arg-type]
    assert status == 401 and json.loads(body)["error"], body
    status, answer, _ = call(site, "GET", "/runs", headers=cookie)  # type: ignore[arg-type]
    assert status == 303 and answer["Location"] == "/login?next=/runs"
    operator = site.tokens["operator"]["right"]
    pause = f"/api/schedules/{site.schedule}/pause"
    odd = {CSRF_HEADER: b"\xff" * 64}
    status, _, body = call(site, "POST", pause, cookie=operator, headers=odd)  # type: ignore[arg-type]
    assert status == 403 and "CSRF check failed" in body, body


def test_posts_with_the_cookie_need_the_csrf_token_and_this_origin(site: Site) -> None:
    operator = site.tokens["operator"]["right"]
    _, _, body = call(site, "GET", "/api/session", cookie=operator)
    csrf = json.loads(body)["csrf_token"]
    pause = f"/api/schedules/{site.schedule}/pause"
    status, _, body = call(site, "POST", pause, cookie=operator)
    assert status == 403 and "CSRF check failed: a POST needs the page's CSRF token" in body
    status, _, body = call(site, "POST", pause, cookie=operator, headers={CSRF_HEADER: "f" * 64})
    assert status == 403 and "CSRF" in body
    evil = {CSRF_HEADER: csrf, "Origin": "https://evil.example"}
    status, _, body = call(site, "POST", pause, cookie=operator, headers=evil)
    assert status == 403 and "comes from https://evil.example" in body
    nowhere = {CSRF_HEADER: csrf, "Origin": "null"}
    status, _, body = call(site, "POST", pause, cookie=operator, headers=nowhere)
    assert status == 403 and "comes from null" in body
    # Another session's token does not fit this one.
    admin = site.tokens["admin"]["right"]
    assert call(site, "POST", pause, cookie=admin, headers={CSRF_HEADER: csrf})[0] == 403
    with site.client() as client:
        assert not client.list_schedules()[0].paused  # nothing refused got through
    here = {CSRF_HEADER: csrf, "Origin": f"https://127.0.0.1:{site.port}"}
    status, _, body = call(site, "POST", pause, cookie=operator, headers=here)
    assert status == 200 and json.loads(body)["schedule"]["paused"] is True
    resume = f"/api/schedules/{site.schedule}/resume"
    assert call(site, "POST", resume, cookie=operator, form={"csrf_token": csrf})[0] == 200
    # Scripts send the token in a header, which browsers never add on their own: no CSRF.
    bearer = {"Authorization": f"Bearer {operator}"}
    assert call(site, "POST", pause, headers=bearer)[0] == 200
    with site.client() as client:
        audit = client.audit("schedule", site.schedule)  # newest first
    assert [(e.action, e.actor) for e in audit[:3]] == [
        ("schedule.pause", "operator-1"),
        ("schedule.resume", "operator-1"),
        ("schedule.pause", "operator-1"),
    ]


def test_https_serves_the_grpc_certificate_and_sighup_reloads_it(site: Site) -> None:
    assert call(site, "GET", "/healthz")[0] == 200
    with pytest.raises((http.client.HTTPException, ConnectionError)):  # no plaintext
        call(site, "GET", "/healthz", ca=None)
    shutil.copy(site.certs.other_server.cert, site.served / "server.crt")
    shutil.copy(site.certs.other_server.key, site.served / "server.key")
    running = site.server.running
    assert running is not None
    running.reload_tls()  # what SIGHUP does
    assert call(site, "GET", "/healthz", ca=site.certs.other_ca)[0] == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        call(site, "GET", "/healthz")
    with Client(site.server.address, token=SERVER_TOKEN, tls_ca=site.certs.other_ca) as client:
        assert client.get(site.ended_run).id == site.ended_run  # gRPC reloaded with it


def _open_run(server: ServerThread) -> tuple[int, str, str]:
    """An open server's HTTP port, a run made on it (RUNNING: no worker), and the CSRF
    token of the run's page."""
    running = server.running
    assert running is not None and running.http is not None
    port = running.http.port
    with Client(server.address) as client:
        run = client.run(loud, {"text": "open"}).id
    status, _, page = request(port, "GET", f"/runs/{run}", ca=None)
    assert status == 200 and 'data-auth="false"' in page and 'data-role="admin"' in page
    csrf = re.search(r'data-csrf="([0-9a-f]+)"', page)
    assert csrf is not None
    return port, run, csrf[1]


def test_a_server_without_credentials_stays_open_but_checks_csrf(tmp_path: Path) -> None:
    server = ServerThread(tmp_path / "hw.db", token=None)
    try:
        port, run, token = _open_run(server)
        status, answer, _ = request(port, "GET", "/login?next=/workers", ca=None)
        assert status == 303 and answer["Location"] == "/workers"  # nothing to log in to
        status, _, page = request(port, "GET", "/nonexistent", ca=None)
        assert status == 404 and "Log out" not in page  # nobody logged in
        cancel = f"/api/runs/{run}/cancel"
        status, _, body = request(port, "POST", cancel, ca=None)
        assert status == 403 and "CSRF check failed" in body
        status, _, body = request(port, "POST", cancel, ca=None, headers={CSRF_HEADER: token})
        assert status == 200 and json.loads(body)["run"]["state"] == "CANCELLED"
    finally:
        server.stop()


def test_credential_names_are_checked_and_the_audit_names_reserved() -> None:
    for name, fragment in [
        ("me\nserver-token", "control characters"),
        ("admin\u202enimda", "control characters"),  # shown reversed: "adminadmin"
        ("x" * 201, "at most 200"),
        ("server-token", "reserved"),
        ("anonymous", "reserved"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            new_credential(name, "admin", created_by="test", now=0.0)


#: Odd text for the parts of a request a fuzz fills in (percent-encoded in paths).
_ODD = ["", "x", "\x00", "\xff", "/", "..", "a" * 3000, "\u202e", "-1", "1e309", "nan", "[]"]


def _send(site: Site, method: str, path: str, headers: dict[str, Any], body: bytes) -> int:
    """One raw request (header values may be bytes); its status. A live event stream
    is not read (its status is the answer)."""
    context = ssl.create_default_context(cafile=site.certs.ca)
    conn = http.client.HTTPSConnection("127.0.0.1", site.port, context=context, timeout=BOUND)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        if not (response.getheader("Content-Type") or "").startswith("text/event-stream"):
            response.read()
        return response.status
    finally:
        conn.close()


@settings(
    derandomize=True,  # the same requests on every run
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_fuzz_http_requests_never_get_a_server_error(any_site: Site, data: st.DataObject) -> None:
    """Every route with odd ids, queries, credentials (Bearer, cookie, CSRF header,
    Origin: right, wrong, of bytes that are not UTF-8) and bodies: never a 5xx but
    503. An HTTP fuzz like this one found five 500s (an asset name too long for the
    file system or with a NUL byte, a login body that is no form, a Bearer header and
    a CSRF header of such bytes)."""
    site = any_site  # (on each store)
    operator = site.tokens["operator"]["right"]
    ids = [site.ended_run, site.running_run, site.ended_run[:6], site.schedule, "shout"]
    values = st.sampled_from(ids + _ODD).map(lambda v: quote(v, safe=""))
    route = data.draw(st.sampled_from(ROUTES))
    path = re.sub(r"\{[a-z_]+\}", lambda _: data.draw(values), route.path)
    path = path.replace("*", data.draw(st.sampled_from(["app.js", "vendor/dagre.min.js"]) | values))
    names = st.sampled_from(["limit", "before", "flow", "state", "schedule", "since", "next"])
    query = data.draw(st.lists(st.tuples(names, values), max_size=3))
    if query:
        path += "?" + "&".join(f"{k}={v}" for k, v in query)
    headers: dict[str, Any] = {}
    credential = data.draw(
        st.sampled_from(
            [None, f"Bearer {operator}", "Bearer hwt_nope", b"Bearer hwt_\xff\xfe", "Basic eA=="]
        )
    )
    if credential is not None:
        headers["Authorization"] = credential
    cookie = data.draw(st.sampled_from([None, operator, "hwt_nope", '""', "a" * 4000]))
    if cookie is not None:
        headers["Cookie"] = f"{SESSION_COOKIE}={cookie}"
    csrf = csrf_for(site, operator)
    token = data.draw(st.sampled_from([None, csrf, csrf[:-1], b"\xff" * 64, "x" * 500]))
    if token is not None:
        headers[CSRF_HEADER] = token
    origin = data.draw(st.sampled_from([None, "null", "https://evil.example", b"\xff"]))
    if origin is not None:
        headers["Origin"] = origin
    kind = data.draw(
        st.sampled_from(
            [None, "application/json", "application/x-www-form-urlencoded", "text/plain"]
        )
    )
    if kind is not None:
        headers["Content-Type"] = kind
    body = data.draw(
        st.sampled_from([b"", b"{}", b'{"reason": 5}', b"[", b"\xff\xfe", b"token=x&next=//evil"])
    )
    method = route.method if data.draw(st.integers(0, 9)) else "PUT"
    status = _send(site, method, path, headers, body)
    assert status < 500 or status == 503, (method, path[:200], headers, body, status)


def test_an_open_server_answers_only_to_its_own_host_names_and_is_never_framed(
    tmp_path: Path,
) -> None:
    """A user trial: with any Host accepted, a DNS rebinding page read an open server's
    page (its CSRF token) and posted as its admin; no page said it may not be framed
    (a run's Cancel was pressed through a frame), and the API's answers, the session's
    CSRF token among them, could be cached."""
    server = ServerThread(tmp_path / "hw.db", token=None)
    try:
        running = server.running
        assert running is not None and running.http is not None
        port = running.http.port
        for host in ("attacker.example", f"attacker.example:{port}", "evil.localhost.com"):
            status, _, body = request(port, "GET", "/", ca=None, headers={"Host": host})
            assert status == 421, (host, status)
            assert "does not answer to the host name" in json.loads(body)["error"]
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", "ui.localhost"):
            status, answer, _ = request(port, "GET", "/", ca=None, headers={"Host": host})
            assert status == 200, (host, status)
            assert answer["X-Frame-Options"] == "DENY"
            assert answer["Content-Security-Policy"] == "frame-ancestors 'none'"
            assert answer["X-Content-Type-Options"] == "nosniff"
        status, answer, _ = request(port, "GET", "/api/session", ca=None)
        assert status == 200 and answer["Cache-Control"] == "no-store"
    finally:
        server.stop()
    # A server with credentials answers to any name (Prometheus scraping
    # headwater.example:PORT): a rebinding page gets no cookie or token of it.
    guarded = ServerThread(tmp_path / "hw2.db", token="tok")
    try:
        assert guarded.running is not None and guarded.running.http is not None
        port = guarded.running.http.port
        named = {"Host": f"headwater.example:{port}", "Authorization": "Bearer tok"}
        assert request(port, "GET", "/api/session", ca=None, headers=named)[0] == 200
        del named["Authorization"]
        assert request(port, "GET", "/api/session", ca=None, headers=named)[0] == 401
    finally:
        guarded.stop()


def test_silent_connections_are_closed_and_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user trial: connections that sent nothing were kept for good, and 20,000 of
    them used up the server's files (its gRPC port and health check went with them).
    One that sends no whole request in time is closed, and past the limit a new one is
    closed at once; a client that asks is served meanwhile."""
    import socket

    from headwater_runtime.server.http import _server as http_server

    monkeypatch.setattr(http_server, "FIRST_REQUEST_WAIT", 0.5)
    monkeypatch.setattr(http_server, "connection_limit", lambda: 4)
    server = ServerThread(tmp_path / "hw.db", token=None)
    idle: list[socket.socket] = []
    try:
        running = server.running
        assert running is not None and running.http is not None
        port = running.http.port

        def closed_by_the_server(sock: socket.socket) -> bool:
            sock.settimeout(BOUND)
            try:
                return sock.recv(1) == b""
            except ConnectionResetError:
                return True

        for _ in range(4):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=BOUND))
        extra = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
        idle.append(extra)
        assert closed_by_the_server(extra)  # the fifth: closed at once
        first = idle[0]
        first.sendall(b"GET /hea")  # a header begun, never ended
        assert closed_by_the_server(first)  # once its time to send a request is over
        assert all(closed_by_the_server(s) for s in idle[1:4])
        status, _, _ = request(port, "GET", "/healthz", ca=None)
        assert status == 200
    finally:
        for sock in idle:
            sock.close()
        server.stop()


def test_broken_bodies_and_overlong_reasons_are_refused_not_a_server_error(
    tmp_path: Path,
) -> None:
    """A user trial: a truncated multipart body, with no credential, got aiohttp's
    plain-text 500 (the form was read before any check); a JSON body nested 100,000
    deep a 500; a cancel reason of a million characters was stored (3 MB answers)."""
    server = ServerThread(tmp_path / "hw.db", token=None)
    try:
        port, run, token = _open_run(server)
        cancel = f"/api/runs/{run}/cancel"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=BOUND)
        try:
            conn.request(
                "POST",
                cancel,
                body=b"--zz\r\nfoo",
                headers={"Content-Type": "multipart/form-data; boundary=zz"},
            )
            answer = conn.getresponse()
            assert answer.status == 403 and "CSRF" in json.loads(answer.read())["error"]
        finally:
            conn.close()
        json_post = {CSRF_HEADER: token, "Content-Type": "application/json"}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=BOUND)
        try:
            deep = b"[" * 100_000 + b"]" * 100_000
            conn.request("POST", f"/api/runs/{run}/retry", body=deep, headers=json_post)
            answer = conn.getresponse()
            assert answer.status == 400, answer.status
            answer.read()
            long = json.dumps({"reason": "R" * 5_000}).encode()
            conn.request("POST", cancel, body=long, headers=json_post)
            answer = conn.getresponse()
            error = json.loads(answer.read())["error"]
            assert answer.status == 400 and error == (
                "the reason is 5,000 characters long (at most 4,000)"
            )
        finally:
            conn.close()
        with Client(server.address) as client:
            assert client.get(run).state.name == "RUNNING"  # nothing was cancelled
            with pytest.raises(ServerError, match="at most 4,000") as refused:
                client.cancel(run, "R" * 4_001)
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop()
