"""The HTTP API and the web UI's assets, against a real server (aiohttp on the server's
event loop) and a real Python worker in this process; plain HTTP from the test."""

from __future__ import annotations

import contextlib
import http.client as http_client
import itertools
import json
import logging
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import grpc
import pytest
from test_client import ServerThread

from headwater import Client, ServerError, flow, remote_task, task
from headwater._worker import Worker
from headwater.wire import FlowRunState, Role, TaskRunState
from headwater_runtime.server import _waiting, allows, describe
from headwater_runtime.server.http import ROUTES, _sse
from headwater_runtime.server.http import _api as http_api
from headwater_runtime.store import DrainRow, SQLiteStore, WorkerRow

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "runtime" / "headwater_runtime" / "server" / "http" / "static"
BOUND = 60.0
TOKEN = "tok"


@task
def shout(text: str) -> str:
    print(f"shouting {text}")
    return text.upper()


@task(retries=1)
def explode(text: str) -> str:
    raise ValueError(f"cannot explode {text!r}")


@task
def big(n: int) -> str:
    return "x" * n


@flow
def loud(text: str = "hi") -> str:
    return shout(text)


@flow
def boom(text: str = "hi") -> str:
    return explode(shout(text))


@flow
def large(n: int = 4, size: int = 400_000) -> list[str]:
    return big.map([size] * n)


#: Whether ``flaky`` fails (the worker runs in this process); when it does not, it
#: waits for FLAKY_GO (so a test sees its run RUNNING).
FLAKY = {"fail": True}
FLAKY_GO = threading.Event()
#: Released by the test: ``hold_db`` waits for it.
RELEASE = threading.Event()


@task
def flaky(text: str) -> str:
    if FLAKY["fail"]:
        raise RuntimeError("the disk is full")
    assert FLAKY_GO.wait(BOUND), "never let go"
    return text + "!"


@flow
def wobbly(text: str = "hi") -> str:
    return flaky(shout(text))


@task(tags=["db"])
def hold_db(i: int) -> int:
    assert RELEASE.wait(BOUND), "never released"
    return i


@flow
def queries(n: int = 2) -> list[int]:
    return hold_db.map(list(range(n)))


@task
def chatty(n: int) -> int:
    for i in range(n):
        print(f"line {i}", flush=True)
        time.sleep(0.01)
    return n


@flow
def chatter(n: int = 150) -> int:
    return chatty(n)


#: Opened by the test, one per element: ``gated`` waits for its own.
GATES = [threading.Event(), threading.Event()]


@task(tags=["db"])
def gated(i: int) -> int:
    assert GATES[i].wait(BOUND), f"gate {i} never opened"
    return i


@flow
def gated_pair() -> list[int]:
    return gated.map([0, 1])


# A typo in a remote task's name: no worker will ever offer it.
orphan = remote_task("nobody.offers.this", schedule_to_start_timeout=0.5)


@flow
def unservable() -> int:
    return orphan()


@flow
def many_loud(n: int = 250) -> list[str]:
    return shout.map([str(i) for i in range(n)])


# Offered by no worker, and with no deadline to start: its run waits until cancelled.
unoffered = remote_task("nobody.offers.that")
#: Set by the test: ``paced`` waits for it.
PACE = threading.Event()


@task
def paced(i: int) -> int:
    assert PACE.wait(BOUND), "never paced"
    return i


@flow
def half_served(n: int = 12) -> tuple[list[int], int]:
    return paced.map(list(range(n))), unoffered()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Answers 3xx as they are (to look at a redirect instead of following it)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class Http:
    """A tiny HTTP client for the API (the token as a Bearer header)."""

    def __init__(self, base: str, token: str | None = TOKEN) -> None:
        self.base = base.rstrip("/")
        self.token = token

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=BOUND) as response:
                raw = response.read()
                kind = response.headers.get_content_type()
                return (
                    response.status,
                    json.loads(raw) if kind == "application/json" else raw,
                    response,
                )
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            if exc.headers.get_content_type() != "application/json":
                return exc.code, raw, exc
            return exc.code, json.loads(raw or b"{}"), exc

    def get(self, path: str) -> Any:
        status, body, _ = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body

    def post(self, path: str, body: Any = None) -> Any:
        status, answer, _ = self.call("POST", path, body or {})
        assert status == 200, (path, status, answer)
        return answer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    s = ServerThread(tmp_path / "hw.db", token=TOKEN)
    yield s
    s.stop()


@pytest.fixture
def http(server: ServerThread) -> Http:
    assert server.running is not None and server.running.http is not None
    return Http(server.running.http.url)


@pytest.fixture
def worker(server: ServerThread) -> Iterator[Worker]:
    w = Worker(server.address, [__name__], name="http-test-worker", token=TOKEN, slots=4)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    yield w
    w.stop()
    thread.join(BOUND)


@contextlib.contextmanager
def sse(http: Http, path: str) -> Iterator[Iterator[tuple[str, Any]]]:
    """An event stream of the API, as its (event, data) pairs when they come."""
    request = urllib.request.Request(f"{http.base}{path}")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(request, timeout=BOUND) as stream:
        assert stream.headers.get_content_type() == "text/event-stream"
        yield _events(stream)


def _events(stream: Any) -> Iterator[tuple[str, Any]]:
    event = ""
    for raw in stream:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            yield event, json.loads(line[len("data: ") :])


def wait_for(condition: Any, what: str) -> Any:
    deadline = time.monotonic() + BOUND
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_the_ui_and_its_assets_are_served_from_the_package(http: Http) -> None:
    for path in ("/", "/runs", "/runs/abc", "/flows", "/schedules", "/workers", "/audit"):
        status, page, _ = http.call("GET", path)
        assert status == 200 and b"/static/app.js" in page, path
    status, script, _ = http.call("GET", "/static/app.js")
    assert status == 200 and b"EventSource" in script
    status, dagre, _ = http.call("GET", "/static/vendor/dagre.min.js")
    assert status == 200 and dagre == (STATIC / "vendor" / "dagre.min.js").read_bytes()
    # Nothing outside the static folder, and no reference to any other host.
    assert http.call("GET", "/static/../_api.py")[0] == 404
    for asset in ("index.html", "app.js", "app.css"):
        text = (STATIC / asset).read_text()
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text), asset


def test_only_the_shipped_assets_are_served_and_odd_names_are_404(http: Http) -> None:
    """A name from the request went to the file system: one too long for it, or with a
    NUL byte, was a 500 (found by an HTTP fuzz). Only the assets shipped are served."""
    for name in ("a" * 5000, "%00", "app.js%00", "vendor", "vendor/", "../_api.py", "x/y/z"):
        status, body, _ = http.call("GET", f"/static/{name}")
        assert status == 404, (name, status, body)
    assert http.call("GET", "/static/app.css")[0] == 200


def test_a_login_form_that_cannot_be_read_is_a_400(http: Http) -> None:
    """A login body that is no form (bytes that are not UTF-8) was a 500."""
    request = urllib.request.Request(
        http.base + "/login",
        data=b"token=\xff\xfe",
        method="POST",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=BOUND)
    assert answer.value.code == 400
    assert b"the login form could not be read" in answer.value.read()


def test_an_event_stream_whose_browser_left_ends_at_once(server: ServerThread) -> None:
    """A stream's handler went on after its browser left, until its next keep-alive
    write failed (up to 15 s): connections opened and dropped by the thousand held
    ~22 KB each meanwhile. It ends when the connection does (aiohttp cancels it). The
    keep-alive is an hour here: only the connection's end can end the stream."""
    assert server.running is not None and server.running.http is not None
    streams = server.running.http.api.streams
    port = server.running.http.port
    with mock.patch.object(_sse.next_of, "__defaults__", (3600.0,)):
        for _ in range(3):
            conn = http_client.HTTPConnection("127.0.0.1", port, timeout=BOUND)
            conn.request("GET", "/api/runs/events", headers={"Authorization": f"Bearer {TOKEN}"})
            answer = conn.getresponse()
            assert answer.status == 200
            wait_for(lambda: len(streams) == 1, "the stream to open")
            conn.close()
            wait_for(lambda: not streams, "the stream to end with its connection")


def test_the_vendored_layout_library_is_the_locked_one() -> None:
    """`make ui-vendor` copies dagre from node_modules (pinned by package-lock.json)."""
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/@dagrejs/dagre"]["version"] == "1.1.4"
    installed = ROOT / "node_modules" / "@dagrejs" / "dagre" / "dist" / "dagre.min.js"
    if installed.exists():  # make setup ran npm ci
        assert installed.read_bytes() == (STATIC / "vendor" / "dagre.min.js").read_bytes()


def test_every_route_is_documented_with_its_roles() -> None:
    """docs/http-api.md's route table is ROUTES, each row with the roles HTTP_ROUTES
    gives the route; nothing that changes state is open to viewers."""
    doc = (ROOT / "docs" / "http-api.md").read_text()
    table = doc.split("| route | roles that may call it | answers |\n| --- | --- | --- |\n", 1)[1]
    rows = [line for line in table.split("\n\n", 1)[0].splitlines()]
    documented = [row.split(" | ")[:2] for row in rows]
    expected = [[f"| `{r.method} {r.path}`", describe(r.roles)] for r in ROUTES if not r.of_get]
    assert documented == expected
    for route in ROUTES:
        if route.method == "POST" and route.roles:
            assert not allows(Role.VIEWER, route.roles), route.path
    assert {r.method for r in ROUTES} == {"GET", "HEAD", "POST"}
    # HEAD wherever GET works but on an event stream (the docs say so once).
    gets = {r.path for r in ROUTES if r.method == "GET"}
    heads = {r.path for r in ROUTES if r.method == "HEAD"}
    assert heads == {p for p in gets if not p.endswith("/events")}
    assert "Every GET route but the event streams (`.../events`) also answers `HEAD`" in doc


def test_a_token_server_needs_a_credential(http: Http) -> None:
    anonymous = Http(http.base, token=None)
    status, body, answer = anonymous.call("GET", "/api/runs")
    assert status == 401 and body["error"] == "not logged in: log in with a token at /login"
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="headwater"'
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as page:
        opener.open(f"{http.base}/runs?flow=loud", timeout=BOUND)
    page.value.close()
    assert page.value.code == 303
    assert page.value.headers["Location"] == "/login?next=/runs%3Fflow%3Dloud"
    session = http.get("/api/session")
    assert (session["name"], session["role"], session["auth_required"]) == (
        "server-token",
        "admin",
        True,
    )
    assert http.get("/healthz") == {"status": "ok"}
    # A load balancer's HEAD check: 200, no body, no credential needed.
    head = urllib.request.Request(f"{http.base}/healthz", method="HEAD")
    with urllib.request.urlopen(head, timeout=BOUND) as answer:
        assert answer.status == 200 and answer.read() == b""


def test_a_run_page_is_sent_a_bounded_number_of_waiting_reasons(
    server: ServerThread, http: Http
) -> None:
    """With 250 task runs waiting, the run and its event stream carry 200 reasons (what
    the page lists at once); every listed task run still says why it waits. All of
    them (~600 KB for 5,000) went with every change. Only those shown are worked out:
    all of a wide map's 100,000, on the event loop, held every other client ~0.2 s at
    each look of the page."""
    with Client(server.address, token=TOKEN) as client:
        run = client.run(many_loud, {"n": 250})
    body = wait_for(
        lambda: (
            len(http.get(f"/api/runs/{run.id}")["waiting"]) == 200
            and http.get(f"/api/runs/{run.id}")
        ),
        "the task runs to wait",
    )
    assert body["totals"] == {"SCHEDULED": 250}
    reason = f"waiting: no connected worker offers {__name__}.shout"
    assert set(body["waiting"].values()) == {reason}
    looked: list[str] = []
    real = _waiting._reason

    def counted(dispatcher: Any, pending: Any, known: Any) -> str:
        looked.append(pending.token[0])
        return real(dispatcher, pending, known)

    with mock.patch.object(_waiting, "_reason", counted):
        assert len(http.get(f"/api/runs/{run.id}")["waiting"]) == 200
        assert len(looked) == 200, len(looked)  # (all 250: before)
        looked.clear()
        page = http.get(f"/api/runs/{run.id}/tasks?offset=200&limit=60")["task_runs"]
        assert len(page) == 51 and all(t["waiting"] == reason for t in page if t["key"] != "shout")
        assert sorted(looked) == sorted(f"{run.id}/{t['key']}" for t in page if t["waiting"])
        looked.clear()
        one = http.get(f"/api/runs/{run.id}/tasks/shout[7]")
        assert one["waiting"] == reason and looked == [f"{run.id}/shout[7]"]
    # Pages by state, counted in the store (a page read all of a run's task runs).
    listed = http.get(f"/api/runs/{run.id}/tasks?state=scheduled&offset=10&limit=5")
    assert listed["total"] == 250
    assert [t["key"] for t in listed["task_runs"]] == [f"shout[{i}]" for i in range(10, 15)]
    assert http.get(f"/api/runs/{run.id}/tasks?state=mapped")["total"] == 1
    assert http.call("GET", f"/api/runs/{run.id}/tasks?state=nonsense")[0] == 400
    http.post(f"/api/runs/{run.id}/cancel", {"reason": "done"})


def test_a_waiting_run_says_why_and_is_cancelled_by_post(server: ServerThread, http: Http) -> None:
    with Client(server.address, token=TOKEN) as client:
        run = client.run(loud, {"text": "hey"})
    prefix = run.id[:6]
    body = wait_for(
        lambda: http.get(f"/api/runs/{prefix}")["waiting"] and http.get(f"/api/runs/{prefix}"),
        "the task to wait",
    )
    assert body["run"]["id"] == run.id and body["run"]["state"] == "RUNNING"
    assert [n["id"] for n in body["graph"]["nodes"]] == ["shout"]
    assert body["counts"] == {"shout": {"SCHEDULED": 1}}
    reason = f"waiting: no connected worker offers {__name__}.shout"
    assert body["waiting"] == {f"{run.id}/shout": reason}
    tasks = http.get(f"/api/runs/{run.id}/tasks")
    assert tasks["task_runs"][0]["waiting"] == reason
    assert http.get(f"/api/runs/{run.id}/tasks/shout")["waiting"] == reason
    listed = http.get("/api/runs?state=running&flow=loud")["runs"]
    assert [r["id"] for r in listed] == [run.id]
    assert http.get("/api/runs?state=success")["runs"] == []
    # A script's POST: the Bearer header, no CSRF token (browsers never add the header).
    cancelled = http.post(f"/api/runs/{run.id}/cancel", {"reason": "from the test"})
    assert cancelled["run"]["state"] == "CANCELLED"
    assert cancelled["run"]["message"] == "from the test"
    with Client(server.address, token=TOKEN) as client:
        audit = client.get(run.id).audit
    assert [(e.action, e.actor, e.detail) for e in audit][-1] == (
        "cancel",
        "server-token",
        "from the test",
    )
    # The UI's run page shows the same entries, oldest first (the run's creator first).
    shown = [(a["action"], a["actor"], a["detail"]) for a in cancelled["run"]["audit"]]
    assert shown == [(e.action, e.actor, e.detail) for e in audit]
    assert shown[0][:2] == ("run", "server-token") and shown[-1][0] == "cancel"
    assert http.get(f"/api/runs/{run.id}")["run"]["audit"] == cancelled["run"]["audit"]
    status, body, _ = http.call("POST", f"/api/runs/{run.id}/cancel", "not an object")
    assert status == 400 and body["error"] == (
        'send a JSON object such as {"reason": "..."} (Content-Type: application/json), or nothing'
    )
    assert http.call("GET", "/api/runs/nosuchrun")[0] == 404
    # A misspelt task is named, not answered with nothing (as if it had no runs or logs).
    for path in (f"/api/runs/{run.id}/tasks?task=shuot", f"/api/runs/{run.id}/logs?task=shuot"):
        status, body, _ = http.call("GET", path)
        assert (status, body["error"]) == (
            404,
            f"flow run {run.id!r} has no task 'shuot' (its tasks: shout)",
        )
    assert http.call("GET", "/api/runs?state=sleepy")[0] == 400
    # A run's task runs by an unknown state: a 400 too (it was 200 with nothing, as if
    # no task run were in it); a known one in any case lists them.
    status, body, _ = http.call("GET", f"/api/runs/{run.id}/tasks?state=sucess")
    assert status == 400 and body["error"].startswith("unknown state 'SUCESS'; use one of ")
    assert "SUCCESS" in body["error"]
    assert http.get(f"/api/runs/{run.id}/tasks?state=Cancelled,success")["total"] == 1
    assert http.get(f"/api/runs/{run.id}/tasks?state=scheduled")["total"] == 0
    # Digits of other scripts are not a limit (int() read a full-width 5 as 5).
    status, body, _ = http.call("GET", "/api/runs?limit=%EF%BC%95")
    assert status == 400 and body["error"] == "limit must be an integer, got '\uff15'"
    status, body, _ = http.call("POST", f"/api/runs/{run.id}/cancel", {"reason": {"a": 1}})
    assert status == 400 and body["error"] == "reason must be text, got dict"
    status, body, _ = http.call("GET", "/api/runs?before=zzz")  # a bad parameter: 400
    assert status == 400 and body["error"] == "before 'zzz' is not the id of a run"
    status, body, _ = http.call("POST", f"/api/runs/{run.id}/cancel", {"reason": "x" * (2 << 20)})
    assert (status, body["error"]) == (  # (aiohttp's own answer was plain text)
        413,
        "the request body is over 1,048,576 bytes, the most it may be",
    )
    # Without a reason, a script's cancel says where it came from: the HTTP API, not
    # the web UI (whose page posts with its session; a user trial).
    with Client(server.address, token=TOKEN) as client:
        other = client.run(loud, {"text": "again"})
    cancelled = http.post(f"/api/runs/{other.id}/cancel", {})
    assert cancelled["run"]["message"] == "cancelled over the HTTP API"
    for since in ("nan", "inf", "soon"):  # (nan was taken, and matched nothing)
        status, body, _ = http.call("GET", f"/api/runs?since={since}")
        assert (status, body["error"]) == (
            400,
            f"since must be seconds since the epoch, got {since!r}",
        )


def test_runs_are_paged_before_a_run_given_by_a_prefix(server: ServerThread, http: Http) -> None:
    """``before`` took a unique prefix but listed from the prefix itself (an empty
    page); an ambiguous prefix was "not the id of a run"."""
    with Client(server.address, token=TOKEN) as client:  # 17 ids: two share a first digit
        ids = [client.run(loud, {"text": str(i)}).id for i in range(17)]
    listed = [r["id"] for r in http.get("/api/runs?limit=1000")["runs"]]
    assert sorted(listed) == sorted(ids)
    middle = listed[5]
    whole = http.get(f"/api/runs?limit=2&before={middle}")
    assert [r["id"] for r in whole["runs"]] == listed[6:8]
    page = http.get(f"/api/runs?limit=2&before={middle[:8]}")
    assert page["runs"] == whole["runs"] and page["next"] == whole["next"] == listed[7]
    shared = next(c for c in "0123456789abcdef" if sum(i.startswith(c) for i in ids) > 1)
    status, body, _ = http.call("GET", f"/api/runs?before={shared}")
    said = http.call("GET", f"/api/runs/{shared}")[1]["error"]  # a run's own route
    assert status == 400 and body["error"] == said
    assert said.startswith(f"flow run id prefix {shared!r} matches several runs")
    for run_id in ids:
        http.post(f"/api/runs/{run_id}/cancel")


def test_a_failed_run_shows_attempts_tracebacks_logs_and_timeline(
    server: ServerThread, http: Http, worker: Worker
) -> None:
    with Client(server.address, token=TOKEN) as client:
        run = client.run(boom, {"text": "hey"})
        final = client.wait(run.id)
    assert final.state is FlowRunState.FAILED
    assert http.get(f"/api/runs/{run.id}")["run"]["failed_task_ids"] == ["explode"]
    detail = http.get(f"/api/runs/{run.id}/tasks/explode")
    assert detail["state"] == "FAILED" and detail["attempts"] == 2
    assert [a["state"] for a in detail["attempt_list"]] == ["RETRYING", "FAILED"]
    failure = detail["attempt_list"][-1]["failure"]
    assert failure["type"] == "builtins.ValueError"
    assert failure["message"] == "cannot explode 'HEY'"
    assert 'raise ValueError(f"cannot explode {text!r}")' in failure["traceback"]
    assert detail["worker"] == "http-test-worker"
    shout_run = http.get(f"/api/runs/{run.id}/tasks/shout")
    assert shout_run["result"] == {"size_bytes": 5, "encoding": "json", "preview": '"HEY"'}
    logs = wait_for(lambda: http.get(f"/api/runs/{run.id}/logs")["entries"], "the log record")
    assert [(e["key"], e["level"], e["logger"], e["message"]) for e in logs] == [
        ("shout", "INFO", "stdout", "shouting hey")
    ]
    assert http.get(f"/api/runs/{run.id}/logs?after={logs[-1]['seq']}")["entries"] == []
    assert http.get(f"/api/runs/{run.id}/logs?task=explode")["entries"] == []
    timeline = http.get(f"/api/runs/{run.id}/timeline")
    rows = {row[0]: row for row in timeline["rows"]}
    assert rows["explode"][2] == "FAILED" and rows["explode"][5] == 2
    assert rows["shout"][3] <= rows["shout"][4] <= rows["explode"][4]
    workers = http.get("/api/workers")["workers"]
    assert [(w["name"], w["online"], w["slots"]) for w in workers] == [
        ("http-test-worker", True, 4)
    ]
    assert f"{__name__}.explode" in workers[0]["capabilities"]
    flows = {f["name"]: f for f in http.get("/api/flows")["flows"]}
    assert flows["boom"]["versions"] == ["1"]
    graph = http.get("/api/flows/boom")["graph"]
    assert {n["id"]: n["upstream"] for n in graph["nodes"]} == {"shout": [], "explode": ["shout"]}
    # The version registered, latest or asked for (the flow page's heading: "boom v1").
    assert graph["version"] == "1"
    assert http.get("/api/flows/boom?version=1")["graph"]["version"] == "1"


def test_a_run_page_stream_follows_the_run_to_its_end(server: ServerThread, http: Http) -> None:
    with Client(server.address, token=TOKEN) as client:
        run = client.run(loud, {"text": "hey"})
    events: list[tuple[str, Any]] = []
    with sse(http, f"/api/runs/{run.id}/events") as stream:
        for event, data in stream:
            events.append((event, data))
            if event == "waiting" and len(events) == 2:
                with Client(server.address, token=TOKEN) as client:
                    client.cancel(run.id, "stop")  # the stream must report it and end
            if event == "end":
                break
    names = [name for name, _ in events]
    assert names[:2] == ["run", "waiting"]
    assert names[-1] == "end" and events[-1][1] == {"state": "CANCELLED"}
    changed = [t for name, data in events if name == "tasks" for t in data]
    assert ("shout", "CANCELLED") in [(t["key"], t["state"]) for t in changed]


def test_a_run_page_stream_sends_waiting_reasons_only_when_they_change(
    server: ServerThread, http: Http, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While its other task runs change, a run's stream looks at the waiting reasons
    (here at every change: WAITING_EVERY 0) and sends them only when they differ from
    what it sent last: an open page of a busy run got the same reasons every 2 s."""
    monkeypatch.setattr(http_api, "WAITING_EVERY", 0.0)
    PACE.clear()
    with Client(server.address, token=TOKEN) as client:
        run = client.run(half_served, {"n": 12})
    events: list[tuple[str, Any]] = []
    shouted: set[str] = set()
    with sse(http, f"/api/runs/{run.id}/events") as stream:
        for event, data in stream:
            events.append((event, data))
            PACE.set()  # the stream is open: its task runs may end now
            if event == "tasks":
                done = {t["key"] for t in data if t["state"] == "SUCCESS"}
                if len(shouted) < 12 and len(shouted | done) == 12:
                    with Client(server.address, token=TOKEN) as client:
                        client.cancel(run.id, "seen enough")
                shouted |= done
            if event == "end":
                break
    assert len(shouted) == 12 and events[-1] == ("end", {"state": "CANCELLED"})
    sent = [data for name, data in events if name == "waiting"]
    reason = "waiting: no connected worker offers nobody.offers.that"
    assert any(reason in w.values() for w in sent), sent
    assert all(a != b for a, b in itertools.pairwise(sent)), sent


def test_a_run_page_stream_catches_up_with_waiting_reasons_the_throttle_put_off(
    server: ServerThread, http: Http, worker: Worker
) -> None:
    """Reasons that change between two looks closer than WAITING_EVERY are sent once it
    has passed, with no further change needed: a stream-only reader kept "waiting on
    limit db" for a task run that had long started, until something else changed. At
    the end, no task run waits."""
    for gate in GATES:
        gate.clear()
    wait_for(lambda: http.get("/api/workers")["workers"], "the worker to connect")
    limited = "waiting on limit db (1/1)"
    with Client(server.address, token=TOKEN) as client:
        client.set_limit("db", concurrency=1)
        run = client.run(gated_pair)
    events: list[tuple[str, Any]] = []
    try:
        with sse(http, f"/api/runs/{run.id}/events") as stream:
            for event, data in stream:
                events.append((event, data))
                if event == "waiting" and limited in data.values():
                    GATES[0].set()  # gated[0] ends; gated[1] starts and runs on
                elif event == "waiting" and GATES[0].is_set() and not GATES[1].is_set():
                    assert data == {}, data  # sent while gated[1] still runs
                    GATES[1].set()
                if event == "end":
                    break
    finally:
        for gate in GATES:
            gate.set()
    assert events[-1] == ("end", {"state": "SUCCESS"})
    sent = [data for name, data in events if name == "waiting"]
    assert sent[-1] == {} and any(limited in w.values() for w in sent), sent


def test_a_run_page_stream_tells_of_new_log_records_at_most_every_half_second(
    server: ServerThread, http: Http, worker: Worker
) -> None:
    """A task printing every 10 ms: the stream's ``logs`` events (each has the page
    fetch the new records) come at most every LOGS_EVERY seconds, the last records told
    of before ``end``; it sent about 100 a second. Every record can then be read."""
    with Client(server.address, token=TOKEN) as client:
        run = client.run(chatter, {"n": 150})
    names: list[str] = []
    with sse(http, f"/api/runs/{run.id}/events") as stream:
        for event, _ in stream:
            names.append(event)
            if event == "end":
                break
    assert names[-2:] == ["logs", "end"]  # the last records told of before the end
    # The stream lived within the run's life (by the server's clock), and its ``logs``
    # events but the last came LOGS_EVERY apart at least.
    shown = http.get(f"/api/runs/{run.id}")["run"]
    lived = shown["ended_at"] - shown["created_at"]
    assert names.count("logs") <= (lived + http_api.LOGS_EVERY) / http_api.LOGS_EVERY + 2
    records = wait_for(
        lambda: (
            len(got := http.get(f"/api/runs/{run.id}/logs?limit=500")["entries"]) == 150 and got
        ),
        "every record",
    )
    assert records[-1]["message"] == "line 149"


def test_schedules_pause_and_resume_over_http(server: ServerThread, http: Http) -> None:
    with Client(server.address, token=TOKEN) as client:
        schedule = client.create_schedule(loud, every=3600, params={"text": "hourly"})
    listed = http.get("/api/schedules")["schedules"]
    assert [(s["id"], s["paused"], s["every"]) for s in listed] == [(schedule.id, False, 3600.0)]
    assert http.post(f"/api/schedules/{schedule.id}/pause")["schedule"]["paused"] is True
    # A paused schedule has no next run (its stored time passes while it is paused).
    assert http.get("/api/schedules")["schedules"][0]["next_run_at"] is None
    resumed = http.post(f"/api/schedules/{schedule.id}/resume")["schedule"]
    assert resumed["paused"] is False and resumed["next_run_at"] > time.time()
    status, _, _ = http.call("POST", "/api/schedules/nope/pause", {})
    assert status == 404
    # A prefix of the id, in any case, as the CLI and a run's routes take it (it was a
    # 404: an operator trial); one that several schedules share is a 400 naming them.
    short = schedule.id[:8].upper()
    assert http.post(f"/api/schedules/{short}/pause")["schedule"]["id"] == schedule.id
    ids = [schedule.id]
    with Client(server.address, token=TOKEN) as client:
        while len({i[0] for i in ids}) == len(ids):  # 17 at most: 16 hex digits
            # (each different: an identical schedule is the one that exists)
            ids.append(client.create_schedule(loud, every=3600, params={"text": str(ids)}).id)
    shared = ids[-1][0]
    status, body, _ = http.call("POST", f"/api/schedules/{shared}/resume", {})
    assert status == 400, body
    assert f"schedule id prefix '{shared}' matches several schedules" in body["error"]


def test_runs_are_filtered_by_a_schedule_id_or_a_unique_prefix(
    server: ServerThread, http: Http
) -> None:
    """``/api/runs?schedule=`` needed the whole id (a prefix listed nothing, silently),
    where pausing the schedule took a prefix. It takes a unique prefix in any case; an
    ambiguous one is a 400 naming the matches; a deleted schedule's whole id still
    lists the runs it created. ListFlowRuns over gRPC (the client's ``list_runs``) alike."""
    with Client(server.address, token=TOKEN) as client:
        firing = client.create_schedule(loud, every=0.2, params={"text": "often"})
        runs = wait_for(
            lambda: len(got := http.get(f"/api/runs?schedule={firing.id}")["runs"]) >= 2 and got,
            "two runs of the schedule",
        )
        client.pause_schedule(firing.id)
        client.run(loud, {"text": "by hand"})  # a run of the same flow, of no schedule
        ids = [firing.id]
        while len({i[0] for i in ids}) == len(ids):  # 17 at most: 16 hex digits
            # (each different: an identical schedule is the one that exists)
            ids.append(client.create_schedule(loud, every=3600, params={"text": str(ids)}).id)
        whole = {r["id"] for r in http.get(f"/api/runs?schedule={firing.id}")["runs"]}
        assert {r["id"] for r in runs} <= whole
        short = firing.id[:8].upper()
        assert {r["id"] for r in http.get(f"/api/runs?schedule={short}")["runs"]} == whole
        shared = ids[-1][0]
        status, body, _ = http.call("GET", f"/api/runs?schedule={shared}")
        assert status == 400, body
        assert f"schedule id prefix '{shared}' matches several schedules" in body["error"]
        # The same over gRPC (ListFlowRuns took the whole id only).
        assert {r.id for r in client.list_runs(schedule_id=short)} == whole
        with pytest.raises(ServerError, match="matches several schedules") as refused:
            client.list_runs(schedule_id=shared)
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        # A schedule's name serves as well (a name is looked up before an id prefix).
        named = client.create_schedule(loud, every=3600, params={"text": "named"}, name="ab")
        (shown,) = [s for s in http.get("/api/schedules")["schedules"] if s["name"] == "ab"]
        assert shown["id"] == named.id
        status, body, _ = http.call("POST", "/api/schedules/ab/pause")
        assert status == 200 and (body["schedule"]["id"], body["schedule"]["paused"]) == (
            named.id,
            True,
        )
        assert http.get("/api/runs?schedule=ab")["runs"] == []
        client.delete_schedule(firing.id)
        assert {r.id for r in client.list_runs(schedule_id=firing.id)} == whole
    kept = {r["id"] for r in http.get(f"/api/runs?schedule={firing.id}")["runs"]}
    assert kept == whole
    assert http.get("/api/runs?schedule=0000000000")["runs"] == []


def test_the_audit_log_is_listed_newest_first_and_filtered(
    server: ServerThread, http: Http
) -> None:
    with Client(server.address, token=TOKEN) as client:
        schedule = client.create_schedule(loud, every=3600)
        client.set_limit("db", concurrency=2)
        run = client.run(loud, {"text": "audited"})
    http.post(f"/api/schedules/{schedule.id}/pause")
    body = http.get("/api/audit")
    assert body["kinds"] == ["flow", "flow_run", "schedule", "limit", "worker", "credential"]
    entries = body["entries"]
    assert [(e["actor"], e["action"], e["object_kind"]) for e in entries] == [
        ("server-token", "schedule.pause", "schedule"),
        ("server-token", "run", "flow_run"),  # (client.run registered the same graph: no entry)
        ("server-token", "limit.set", "limit"),
        ("server-token", "schedule.create", "schedule"),
        ("server-token", "deploy", "flow"),
    ]
    assert entries[0]["object_id"] == schedule.id and entries[1]["object_id"] == run.id
    assert entries[2]["detail"] == "concurrency 2"
    assert (entries[4]["object_id"], entries[4]["detail"]) == ("loud:1", "")
    assert [e["at"] for e in entries] == sorted((e["at"] for e in entries), reverse=True)
    limits = http.get("/api/audit?kind=limit")["entries"]
    assert [(e["action"], e["object_id"]) for e in limits] == [("limit.set", "db")]
    one = http.get(f"/api/audit?object={schedule.id}&limit=1")["entries"]
    assert [e["action"] for e in one] == ["schedule.pause"]
    status, answer, _ = http.call("GET", "/api/audit?kind=webhok")
    assert status == 400 and answer["error"].startswith("unknown audit object kind 'webhok'")
    status, answer, _ = http.call("GET", "/api/audit?limit=0")
    assert status == 400 and answer["error"] == "limit must be in 1..1000, got 0"


def test_large_results_are_described_and_fetched_on_demand(
    server: ServerThread, http: Http, worker: Worker
) -> None:
    """Results adding up past gRPC's 4 MiB: every listing still answers, and the
    values come back whole (their large parts by reference)."""
    with Client(server.address, token=TOKEN) as client:
        run = client.run(large, {"n": 12, "size": 400_000})
        final = client.wait(run.id)  # GetFlowRun with every task run
        assert final.state is FlowRunState.SUCCESS, final.message
        assert final.result_info is not None and final.result_info.size_bytes > 4_800_000
        assert final.result == ["x" * 400_000] * 12
        children = [t for t in final.task_runs if t.map_index >= 0]
        assert len(children) == 12
        assert children[0].result is not None and children[0].result.size_bytes == 400_002
        assert (
            children[0].result.preview.startswith('"xxxx')
            and len(children[0].result.preview) <= 200
        )
        assert client.task_result(run.id, "big") == ["x" * 400_000] * 12
        assert [r.id for r in client.list_runs()] == [run.id]
    body = http.get(f"/api/runs/{run.id}")
    assert body["run"]["result"]["size_bytes"] > 4_800_000
    assert len(json.dumps(body)) < 100_000


def test_results_stored_by_reference_have_a_bounded_preview(
    server: ServerThread, http: Http, worker: Worker
) -> None:
    """A result above the 1 MiB inline limit (kept in the payload store) is previewed
    like an inline one: the start of its json text, cut short and marked so."""
    size = 1_100_000
    with Client(server.address, token=TOKEN) as client:
        run = client.run(large, {"n": 2, "size": size})
        final = client.wait(run.id)
        assert final.state is FlowRunState.SUCCESS, final.message
        fetched = client.get(run.id, include_task_runs=True)
    children = [t for t in fetched.task_runs if t.map_index >= 0]
    assert len(children) == 2
    for child in children:
        info = child.result
        assert info is not None and info.size_bytes == size + 2
        assert info.preview.startswith('"xxxx') and info.preview.endswith("…")
        assert len(info.preview) == 200
    assert fetched.result_info is not None
    assert fetched.result_info.preview.startswith('["xxx'), fetched.result_info.preview
    body = http.get(f"/api/runs/{run.id}")
    assert body["run"]["result"]["preview"].startswith('["xxx')
    tasks = http.get(f"/api/runs/{run.id}/tasks?task=big")["task_runs"]
    previews = [t["result"]["preview"] for t in tasks if t["map_index"] >= 0]
    assert len(previews) == 2
    assert all(p.startswith('"xxxx') and p.endswith("…") and len(p) == 200 for p in previews)


def test_a_task_no_worker_takes_fails_after_its_schedule_to_start_timeout(
    server: ServerThread, http: Http, worker: Worker
) -> None:
    with Client(server.address, token=TOKEN) as client:
        final = client.wait(client.run(unservable).id)  # GetFlowRun
    assert final.state is FlowRunState.FAILED
    (orphaned,) = final.task_runs
    assert orphaned.failure is not None
    assert orphaned.failure.type == "headwater.ScheduleToStartTimeout"
    assert orphaned.failure.message == (
        "no worker started it within its schedule_to_start_timeout of 0.5s "
        "(waiting: no connected worker offers nobody.offers.this)"
    )
    assert orphaned.attempts == 1  # not retried
    # It never ran: no RUNNING in its history, no start, no duration (API and UI alike).
    assert orphaned.states == [TaskRunState.SCHEDULED, TaskRunState.FAILED]
    assert orphaned.started_at is None and orphaned.duration is None
    detail = http.get(f"/api/runs/{final.id}/tasks/{orphaned.key}")
    assert [h["state"] for h in detail["history"]] == ["SCHEDULED", "FAILED"]
    assert detail["started_at"] is None and detail["duration"] is None
    (attempt,) = detail["attempt_list"]
    assert attempt["started_at"] is None and attempt["state"] == "FAILED"
    assert attempt["failure"]["type"] == "headwater.ScheduleToStartTimeout"


def test_a_failed_run_is_retried_over_http_and_shows_its_attempt(
    server: ServerThread, http: Http, worker: Worker
) -> None:
    FLAKY["fail"] = True
    FLAKY_GO.clear()
    with Client(server.address, token=TOKEN) as client:
        run = client.run(wobbly, {"text": "hey"})
        assert client.wait(run.id).state is FlowRunState.FAILED
    first = http.get(f"/api/runs/{run.id}")["run"]
    assert (first["state"], first["attempt"], first["late"]) == ("FAILED", 1, False)
    FLAKY["fail"] = False
    retried = http.post(f"/api/runs/{run.id[:8]}/retry", {"reason": "disk replaced"})["run"]
    assert retried["id"] == run.id and retried["state"] == "RUNNING"
    assert retried["attempt"] == 2
    FLAKY_GO.set()
    with Client(server.address, token=TOKEN) as client:
        final = client.wait(run.id)
        assert final.state is FlowRunState.SUCCESS and final.result == "HEY!"
        audit = [(e.action, e.actor, e.detail) for e in client.get(run.id).audit]
    assert ("retry", "server-token", "disk replaced") in audit
    shown = http.get(f"/api/runs/{run.id}")["run"]
    assert shown["attempt"] == 2
    assert [(a["attempt"], a["state"]) for a in shown["attempts"]] == [
        (1, "FAILED"),
        (2, "SUCCESS"),
    ]
    assert http.get("/api/runs")["runs"][0]["attempt"] == 2
    # Only an ended run that did not succeed may be retried: one line says why.
    status, body, _ = http.call("POST", f"/api/runs/{run.id}/retry", {})
    assert status == 409
    assert body["error"].startswith(f"cannot retry flow run {run.id}: ")
    assert "only a FAILED or CANCELLED run" in body["error"]
    assert http.call("POST", "/api/runs/nosuchrun/retry", {})[0] == 404


def test_metrics_are_served_on_the_ui_port_and_on_their_own(tmp_path: Path) -> None:
    server = ServerThread(tmp_path / "hw.db", token=TOKEN, metrics_port=0)
    try:
        assert server.running is not None and server.running.http is not None
        http = Http(server.running.http.url)
        with Client(server.address, token=TOKEN) as client:
            client.run(loud, {"text": "hey"})
        status, text, answer = http.call("GET", "/metrics")
        assert status == 200
        assert answer.headers["Content-Type"].startswith("text/plain")
        assert b'headwater_flow_runs{state="RUNNING"} 1.0' in text
        assert Http(http.base, token=None).call("GET", "/metrics")[0] == 401
        own = server.running.core.ops.metrics_server
        assert own is not None  # --metrics-port: no credential asked there, as before
        with urllib.request.urlopen(f"http://127.0.0.1:{own.port}/metrics", timeout=BOUND) as r:
            assert b'headwater_flow_runs{state="RUNNING"} 1.0' in r.read()
    finally:
        server.stop()


def test_workers_are_drained_and_resumed_over_http(
    server: ServerThread, http: Http, worker: Worker
) -> None:
    name = "http-test-worker"
    wait_for(lambda: http.get("/api/workers")["workers"], "the worker")
    workers = http.post(f"/api/workers/{name}/drain")["workers"]
    assert [(w["name"], w["draining"], w["exit_when_idle"]) for w in workers] == [
        (name, True, False)
    ]
    with Client(server.address, token=TOKEN) as client:
        assert [(w.name, w.draining) for w in client.list_workers()] == [(name, True)]
        run = client.run(loud, {"text": "later"})
        reason = f"waiting: every worker offering {__name__}.shout is drained"
        wait_for(
            lambda: http.get(f"/api/runs/{run.id}/tasks")["task_runs"][0]["waiting"] == reason,
            "the drained worker's waiting reason",
        )
        workers = http.post(f"/api/workers/{name}/resume")["workers"]
        assert [(w["name"], w["draining"]) for w in workers] == [(name, False)]
        assert client.wait(run.id).state is FlowRunState.SUCCESS
        audit = client.audit("worker", name)  # newest first
    assert [(e.action, e.actor) for e in audit] == [
        ("worker.resume", "server-token"),
        ("worker.drain", "server-token"),
    ]
    status, body, _ = http.call("POST", "/api/workers/nobody/drain", {})
    assert status == 404 and body["error"] == "no worker named 'nobody' is known"
    status, body, _ = http.call("POST", f"/api/workers/{name}/drain", {"exit_when_idle": "yes"})
    assert status == 400 and body["error"] == "exit_when_idle must be true or false, got 'yes'"
    # A form post (curl -d) works the same as JSON.
    form = urllib.request.Request(
        f"{http.base}/api/workers/{name}/drain", data=b"exit_when_idle=false", method="POST"
    )
    form.add_header("Authorization", f"Bearer {TOKEN}")
    with urllib.request.urlopen(form, timeout=BOUND) as answer:
        drained = json.loads(answer.read())["workers"]
    assert [(w["draining"], w["exit_when_idle"]) for w in drained] == [(True, False)]
    assert http.post(f"/api/workers/{name}/resume")["workers"][0]["draining"] is False


def test_workers_that_left_before_a_restart_are_listed_offline_as_the_cli_lists_them(
    tmp_path: Path,
) -> None:
    """After a restart the web UI's workers page (GET /api/workers) left out the workers
    that had left before it, which ``headwater workers list`` showed offline (a user
    trial): both list the server's recorded workers."""
    store = SQLiteStore(tmp_path / "hw.db")
    t = time.time() - 3600  # (within the 7 days a server lists a worker that left)
    store.put_worker(
        WorkerRow(
            "gone", "id-gone", ("etl.x",), {"zone": "eu"}, 3, "0.1.0", "python", "h", t, t + 50
        )
    )
    store.put_drain(DrainRow("gone", exit_when_idle=False, at=t + 20))
    store.close()
    server = ServerThread(tmp_path / "hw.db", token=TOKEN)
    try:
        assert server.running is not None and server.running.http is not None
        (listed,) = Http(server.running.http.url).get("/api/workers")["workers"]
        with Client(server.address, token=TOKEN) as client:
            assert [(w.name, w.online) for w in client.list_workers()] == [("gone", False)]
    finally:
        server.stop()
    assert listed == {
        "worker_id": "id-gone",
        "name": "gone",
        "online": False,
        "capabilities": ["etl.x"],
        "labels": {"zone": "eu"},
        "slots": 3,
        "slots_used": 0,
        "connected_at": t,
        "last_seen": t + 50,
        "disconnected_at": t + 50,
        "draining": True,
        "exit_when_idle": False,
    }


def test_workers_are_listed_in_pages_of_at_most_1000(tmp_path: Path) -> None:
    """A fleet restarting under new names (host-pid) leaves a record per start: one
    ListWorkers answer or /api/workers page held them all (100,000 records: a 54 MB
    JSON page for the browser). ListWorkers answers in pages of at most 1,000 that
    ``Client.list_workers`` reads to the end; /api/workers shows at most ``limit``
    (1,000) and says how many it left out."""
    from headwater.v1 import operations_pb2 as ops
    from headwater.v1 import operations_pb2_grpc

    store = SQLiteStore(tmp_path / "hw.db")
    t = time.time() - 3600
    names = [f"host-{i:04d}" for i in range(1005)]
    for name in names:
        store.put_worker(WorkerRow(name, f"id-{name}", ("etl.x",), {}, 2, "0.1.0", "python",
                                   "h", t, t + 1))  # fmt: skip
    store.close()
    server = ServerThread(tmp_path / "hw.db", token=TOKEN)
    auth = (("authorization", f"Bearer {TOKEN}"),)
    try:
        assert server.running is not None and server.running.http is not None
        with grpc.insecure_channel(server.address) as channel:
            stub = operations_pb2_grpc.OperationsServiceStub(channel)
            first = stub.ListWorkers(ops.ListWorkersRequest(), metadata=auth, timeout=BOUND)
            assert [w.name for w in first.workers] == names[:1000] and first.next_page_token
            rest = stub.ListWorkers(
                ops.ListWorkersRequest(page_token=first.next_page_token),
                metadata=auth,
                timeout=BOUND,
            )
            assert [w.name for w in rest.workers] == names[1000:]
            assert rest.next_page_token == ""
            walked, token = [], ""
            while True:
                page = stub.ListWorkers(
                    ops.ListWorkersRequest(page_size=7, page_token=token),
                    metadata=auth,
                    timeout=BOUND,
                )
                assert len(page.workers) <= 7
                walked += [w.name for w in page.workers]
                if not (token := page.next_page_token):
                    break
            assert walked == names
            online = stub.ListWorkers(
                ops.ListWorkersRequest(online_only=True), metadata=auth, timeout=BOUND
            )
            assert (list(online.workers), online.next_page_token) == ([], "")
            for bad, why in (
                (ops.ListWorkersRequest(page_size=1001), "page_size must be 1..1000"),
                (ops.ListWorkersRequest(page_size=-1), "page_size must be 1..1000"),
                (ops.ListWorkersRequest(page_token="host-0003"), "is not one this server gave"),
            ):
                with pytest.raises(grpc.RpcError) as refused:
                    stub.ListWorkers(bad, metadata=auth, timeout=BOUND)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert why in refused.value.details()
        with Client(server.address, token=TOKEN) as client:
            assert [w.name for w in client.list_workers()] == names
        http = Http(server.running.http.url)
        body = http.get("/api/workers")
        assert [w["name"] for w in body["workers"]] == names[:1000] and body["more"] == 5
        body = http.get("/api/workers?limit=3")
        assert [w["name"] for w in body["workers"]] == names[:3] and body["more"] == 1002
        assert http.call("GET", "/api/workers?limit=1001")[0] == 400
    finally:
        server.stop()


def test_the_workers_stream_pushes_each_online_workers_last_message_time(
    server: ServerThread, http: Http, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers page's "last heartbeat" stays true: with nothing else to say, the
    stream sends ``seen`` (name -> last message time) of the online workers."""
    monkeypatch.setattr(http_api, "SEEN_EVERY", 0.2)
    name = "http-test-worker"
    wait_for(lambda: http.get("/api/workers")["workers"], "the worker")
    seen: dict[str, float] = {}
    with sse(http, "/api/workers/events") as stream:
        for event, data in stream:
            if event == "seen":
                seen = data
                break
    (listed,) = http.get("/api/workers")["workers"]
    assert list(seen) == [name]
    assert time.time() - 60 < seen[name] <= listed["last_seen"]


def test_a_task_run_waiting_on_a_limit_says_so(
    server: ServerThread, http: Http, worker: Worker
) -> None:
    RELEASE.clear()
    wait_for(lambda: http.get("/api/workers")["workers"], "the worker to connect")

    def reasons() -> list[str]:
        tasks = http.get(f"/api/runs/{run.id}/tasks")["task_runs"]
        return [t["waiting"] for t in tasks if t["waiting"]]

    with Client(server.address, token=TOKEN) as client:
        client.set_limit("db", concurrency=1)
        run = client.run(queries, {"n": 2})
        try:
            wait_for(lambda: "waiting on limit db (1/1)" in reasons(), "the limit's reason")
            assert reasons() == ["waiting on limit db (1/1)"]  # the other one runs
            (limit,) = client.list_limits()
            assert (limit.running, limit.waiting) == (1, 1)
        finally:
            RELEASE.set()
        assert client.wait(run.id).state is FlowRunState.SUCCESS


def test_a_late_run_is_marked_with_why(tmp_path: Path) -> None:
    server = ServerThread(tmp_path / "hw.db", token=TOKEN, late_after=0.2)
    try:
        assert server.running is not None and server.running.http is not None
        http = Http(server.running.http.url)
        with Client(server.address, token=TOKEN) as client:
            run = client.run(loud, {"text": "nobody takes it"})
        shown = wait_for(
            lambda: (r := http.get(f"/api/runs/{run.id}")["run"])["late"] and r, "the late mark"
        )
        assert shown["late_reason"] == f"waiting: no connected worker offers {__name__}.shout"
        assert shown["late_at"] >= shown["created_at"]
        assert http.get("/api/runs")["runs"][0]["late"] is True
    finally:
        server.stop()


def test_a_run_of_a_mapped_task_waiting_on_a_limit_is_late_with_the_limit(
    tmp_path: Path,
) -> None:
    """A run whose first task is a map over a literal list starts only when a child runs:
    the map's expansion (MAPPED) does not count, so a run whose children all wait on a
    limit is marked late, with the limit as the reason."""
    RELEASE.clear()
    server = ServerThread(tmp_path / "hw.db", token=TOKEN, late_after=2.0)
    w = Worker(server.address, [__name__], name="late-worker", token=TOKEN, slots=4)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        assert server.running is not None and server.running.http is not None
        http = Http(server.running.http.url)
        with Client(server.address, token=TOKEN) as client:
            wait_for(lambda: client.list_workers(), "the worker to connect")
            client.set_limit("db", concurrency=1)
            holding = client.run(queries, {"n": 1})
            wait_for(lambda: client.list_limits()[0].running == 1, "the first run to start")
            blocked = client.run(queries, {"n": 1})
            try:
                shown = wait_for(
                    lambda: (r := http.get(f"/api/runs/{blocked.id}")["run"])["late"] and r,
                    "the late mark",
                )
                assert shown["late_reason"] == "waiting on limit db (1/1)"
                assert client.get(blocked.id).late_reason == "waiting on limit db (1/1)"
                assert client.get(holding.id).late_reason == ""  # it started in time
            finally:
                RELEASE.set()
            assert client.wait(blocked.id).state is FlowRunState.SUCCESS
    finally:
        w.stop()
        thread.join(BOUND)
        server.stop()


def test_a_request_that_is_not_http_gets_400_and_no_traceback_in_the_log(
    server: ServerThread, http: Http, caplog: pytest.LogCaptureFixture
) -> None:
    """Raw bytes that are not ASCII in a request line or a header are answered 400
    saying what is wrong, without aiohttp's ERROR traceback in the server's log (any
    client could fill it); the server's own handlers' errors still log."""
    port = int(http.base.rsplit(":", 1)[1])
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    for raw in (
        b"GET /api/runs?state=\xc3\xa9\xff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET /runs/\xff HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost x\r\nConnection: close\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=BOUND) as sock:
            sock.sendall(raw)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.0 400 Bad Request") or answer.startswith(
            b"HTTP/1.1 400 Bad Request"
        ), answer[:200]
        assert b"Invalid" in answer or b"Bad" in answer, answer[:200]
    assert http.get("/api/runs")["runs"] == []  # it serves on
    noisy = [r for r in caplog.records if r.name.startswith("aiohttp") and r.exc_info]
    assert not noisy, [r.getMessage() for r in noisy]


def test_a_reason_sent_as_form_fields_is_the_one_recorded(server: ServerThread, http: Http) -> None:
    """POST bodies are JSON objects or form fields (docs/http-api.md): a form's reason
    was dropped (the CSRF check had read the form, and the body then looked empty)."""
    forms = {
        "application/x-www-form-urlencoded": urllib.parse.urlencode({"reason": "urlencoded"}),
        "multipart/form-data; boundary=b": (
            '--b\r\nContent-Disposition: form-data; name="reason"\r\n\r\nmultipart\r\n--b--\r\n'
        ),
    }
    for kind, form in forms.items():
        with Client(server.address, token=TOKEN) as client:
            run = client.run(loud, {"text": "hey"})
        request = urllib.request.Request(
            f"{http.base}/api/runs/{run.id}/cancel", data=form.encode()
        )
        request.add_header("Authorization", f"Bearer {TOKEN}")
        request.add_header("Content-Type", kind)
        with urllib.request.urlopen(request, timeout=BOUND) as response:
            message = json.loads(response.read())["run"]["message"]
        expected = "multipart" if kind.startswith("multipart") else "urlencoded"
        assert message == expected
        with Client(server.address, token=TOKEN) as client:
            assert client.get(run.id).audit[-1].detail == expected
