"""The HTTP security pieces on a real HTTPS server (the standard library's, with the
gRPC port's certificate from ServerTLS): every HTTP route x every role x {no
credential, wrong, revoked, right} gets the exact status (the table is printed); the
login page sets an HttpOnly, SameSite=Strict, Secure cookie; POSTs need the CSRF
token; a revoked token logs the browser out; SIGHUP's reload reaches HTTPS too.

The web UI's own server (another issue) calls HttpGuard the same way; this test's
handler stands in for it, serving every route in HTTP_ROUTES."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from tls_certs import Certs, make_certs

from headwater.wire import Role
from headwater_runtime.server import (
    CSRF_HEADER,
    HTTP_ROUTES,
    SESSION_COOKIE,
    AccessControl,
    HttpGuard,
    Refused,
    ServerTLS,
    ServerTLSFiles,
    allows,
    login_page,
    new_credential,
)
from headwater_runtime.store import SQLiteStore

SERVER_TOKEN = "http-server-token"
COLUMNS = ["admin", "operator", "viewer", "worker", "--token"]
STATES = ["none", "wrong", "revoked", "right"]


@dataclass
class Site:
    port: int
    guard: HttpGuard
    access: AccessControl
    store: SQLiteStore
    tls: ServerTLS
    tokens: dict[str, dict[str, str]]
    certs: Certs
    served: Path


def _handler(guard: HttpGuard) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _answer(self, status: int, body: str, headers: dict[str, str] | None = None) -> None:
            data = body.encode()
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            headers = dict(self.headers.items())
            path = self.path.split("?", 1)[0]
            if path == "/login" and method == "GET":
                return self._answer(200, login_page())
            if path == "/login" and method == "POST" and "token" in form:
                try:
                    _, cookie = guard.login(form["token"])
                except Refused as exc:
                    return self._answer(401, login_page(str(exc)))
                return self._answer(303, "", {"Location": "/", "Set-Cookie": cookie})
            decision = guard.check(method, path, headers, form)
            if decision.status != 200:
                return self._answer(decision.status, decision.reason)
            if path == "/api/session":
                caller = decision.caller
                assert caller is not None
                body = {
                    "name": caller.name,
                    "role": caller.role.value,
                    "csrf": guard.csrf_token(headers),
                }
                return self._answer(200, json.dumps(body))
            return self._answer(200, f"ok {decision.caller.name if decision.caller else '-'}")

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

    return Handler


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    certs = make_certs(tmp_path / "certs")
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(certs.server.cert, served / "server.crt")
    shutil.copy(certs.server.key, served / "server.key")
    store = SQLiteStore(tmp_path / "hw.db")
    tokens: dict[str, dict[str, str]] = {}
    for role in Role:
        right, token = new_credential(f"{role.value}-1", role, created_by="test", now=time.time())
        revoked, old = new_credential(f"{role.value}-old", role, created_by="test", now=time.time())
        store.add_credential(right)
        store.add_credential(revoked)
        store.revoke_credential(revoked.name, time.time())
        tokens[role.value] = {"right": token, "revoked": old}
    tokens["--token"] = {"right": SERVER_TOKEN, "revoked": tokens["admin"]["revoked"]}
    access = AccessControl(store, admin_token=SERVER_TOKEN)
    access.load()
    tls = ServerTLS(ServerTLSFiles(str(served / "server.crt"), str(served / "server.key")))
    guard = HttpGuard(access, secure=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(guard))
    server.socket = tls.ssl_context().wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Site(server.server_address[1], guard, access, store, tls, tokens, certs, served)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        store.close()


def request(
    site: Site,
    method: str,
    path: str,
    *,
    cookie: str | None = None,
    headers: dict[str, str] | None = None,
    body: str = "",
    ca: str | None = None,
) -> tuple[int, dict[str, str], str]:
    context = ssl.create_default_context(cafile=ca or site.certs.ca)
    conn = http.client.HTTPSConnection("127.0.0.1", site.port, context=context, timeout=30)
    sent = dict(headers or {})
    if cookie is not None:
        sent["Cookie"] = f"{SESSION_COOKIE}={cookie}"
    if body:
        sent["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, path, body=body.encode(), headers=sent)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        conn.close()


def concrete(pattern: str) -> str:
    return re.sub(r"\{[a-z_]+\}", "r1", pattern).replace("*", "x")


def expected(roles: tuple[Role, ...], column: str, state: str) -> int:
    if not roles:
        return 200
    if state != "right":
        return 401
    role = Role.ADMIN if column == "--token" else Role(column)
    return 200 if allows(role, roles) else 403


def test_every_http_route_and_role_gets_the_exact_status(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    found: dict[tuple[str, str, str], int] = {}
    for route in HTTP_ROUTES:
        path = concrete(route.pattern)
        for column in COLUMNS:
            for state in STATES:
                cookie = {"none": None, "wrong": "hwt_wrong"}.get(
                    state, site.tokens[column].get(state)
                )
                headers = {}
                if route.method == "POST":  # the page's CSRF token for this session
                    jar = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {}
                    headers[CSRF_HEADER] = site.guard.csrf_token(jar)
                status, _, _ = request(site, route.method, path, cookie=cookie, headers=headers)
                found[f"{route.method} {route.pattern}", column, state] = status
    lines = [
        "HTTP security matrix: the status for no credential / a wrong one / a revoked one / "
        "the right one (session cookie; POSTs carry the page's CSRF token)",
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
        if (status := found[f"{route.method} {route.pattern}", c, s]) != expected(route.roles, c, s)
    ]
    assert not wrong, "\n".join(wrong)
    # A route missing from the table is refused, whoever asks.
    assert request(site, "DELETE", "/api/runs/r1", cookie=site.tokens["admin"]["right"])[0] == 501
    assert request(site, "POST", "/api/unknown", cookie=site.tokens["admin"]["right"])[0] == 404


def test_login_sets_a_strict_http_only_secure_cookie_and_revocation_logs_out(site: Site) -> None:
    status, _, page = request(site, "GET", "/login")
    assert status == 200 and 'name="token" type="password"' in page and "<script" not in page
    status, _, page = request(site, "POST", "/login", body="token=hwt_nope")
    assert status == 401 and "invalid token" in page
    viewer = site.tokens["viewer"]["right"]
    status, headers, _ = request(site, "POST", "/login", body=f"token={viewer}")
    assert status == 303
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}={viewer};")
    for attribute in ("HttpOnly", "SameSite=Strict", "Secure", "Path=/"):
        assert attribute in cookie
    status, _, body = request(site, "GET", "/api/session", cookie=viewer)
    assert status == 200 and json.loads(body)["role"] == "viewer"
    site.store.revoke_credential("viewer-1", time.time())
    site.access.load()  # what the server's poller does within a second
    status, _, body = request(site, "GET", "/api/runs", cookie=viewer)
    assert status == 401 and "the token of credential 'viewer-1' was revoked" in body
    assert "Max-Age=0" in site.guard.logout_cookie()


def test_posts_need_the_csrf_token_and_this_origin(site: Site) -> None:
    operator = site.tokens["operator"]["right"]
    _, _, body = request(site, "GET", "/api/session", cookie=operator)
    csrf = json.loads(body)["csrf"]
    cancel = "/api/runs/r1/cancel"
    status, _, body = request(site, "POST", cancel, cookie=operator)
    assert status == 403 and "CSRF check failed: a POST needs the page's CSRF token" in body
    status, _, body = request(
        site, "POST", cancel, cookie=operator, headers={CSRF_HEADER: "f" * 64}
    )
    assert status == 403 and "CSRF" in body
    evil = {CSRF_HEADER: csrf, "Origin": "https://evil.example"}
    status, _, body = request(site, "POST", cancel, cookie=operator, headers=evil)
    assert status == 403 and "comes from https://evil.example" in body
    here = {CSRF_HEADER: csrf, "Origin": f"https://127.0.0.1:{site.port}"}
    assert request(site, "POST", cancel, cookie=operator, headers=here)[0] == 200
    assert request(site, "POST", cancel, body=f"csrf_token={csrf}", cookie=operator)[0] == 200
    # Another session's token does not fit this one.
    other = site.tokens["admin"]["right"]
    assert request(site, "POST", cancel, cookie=other, headers={CSRF_HEADER: csrf})[0] == 403
    # Scripts send the token in a header, which browsers never add on their own: no CSRF.
    bearer = {"Authorization": f"Bearer {operator}"}
    assert request(site, "POST", cancel, headers=bearer)[0] == 200


def test_https_serves_the_grpc_certificate_and_reloads_it_with_it(site: Site) -> None:
    assert request(site, "GET", "/healthz")[0] == 200
    shutil.copy(site.certs.other_server.cert, site.served / "server.crt")
    shutil.copy(site.certs.other_server.key, site.served / "server.key")
    site.tls.reload()  # what SIGHUP does
    assert request(site, "GET", "/healthz", ca=site.certs.other_ca)[0] == 200
    with pytest.raises(ssl.SSLCertVerificationError):
        request(site, "GET", "/healthz")
