"""The HTTP API and the web UI's assets, against a real server (aiohttp on the server's
event loop) and a real Python worker in this process; plain HTTP from the test."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_client import ServerThread

from headwater import Client, flow, remote_task, task
from headwater._worker import Worker
from headwater.wire import FlowRunState
from headwater_runtime.server.http import ROUTES

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


# A typo in a remote task's name: no worker will ever offer it.
orphan = remote_task("nobody.offers.this", schedule_to_start_timeout=0.5)


@flow
def unservable() -> int:
    return orphan()


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
        status, answer, _ = self.call("POST", path, body or {}, {"X-Headwater-Request": "1"})
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


def wait_for(condition: Any, what: str) -> Any:
    deadline = time.monotonic() + BOUND
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_the_ui_and_its_assets_are_served_from_the_package(http: Http) -> None:
    for path in ("/", "/runs", "/runs/abc", "/flows", "/schedules", "/workers"):
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


def test_the_vendored_layout_library_is_the_locked_one() -> None:
    """`make ui-vendor` copies dagre from node_modules (pinned by package-lock.json)."""
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/@dagrejs/dagre"]["version"] == "1.1.4"
    installed = ROOT / "node_modules" / "@dagrejs" / "dagre" / "dist" / "dagre.min.js"
    if installed.exists():  # make setup ran npm ci
        assert installed.read_bytes() == (STATIC / "vendor" / "dagre.min.js").read_bytes()


def test_every_route_is_documented_with_its_role() -> None:
    doc = (ROOT / "docs" / "http-api.md").read_text()
    for route in ROUTES:
        if route.path.startswith("/api/"):
            assert f"`{route.method} {route.path}`" in doc, route.path
            assert route.role in doc
        if route.method == "POST":
            assert route.role != "viewer", route.path  # changing something needs more
    assert {r.method for r in ROUTES} == {"GET", "POST"}


def test_a_token_server_needs_the_token_or_the_session_cookie(http: Http) -> None:
    anonymous = Http(http.base, token=None)
    status, body, _ = anonymous.call("GET", "/api/runs")
    assert status == 401 and "token" in body["error"]
    assert anonymous.call("GET", "/api/info")[1] == {
        "server_version": "0.1.0",
        "auth_required": True,
        "authenticated": False,
    }
    csrf = {"X-Headwater-Request": "1"}
    status, body, _ = anonymous.call("POST", "/api/login", {"token": "wrong"}, csrf)
    assert status == 401
    status, body, response = anonymous.call("POST", "/api/login", {"token": TOKEN})
    assert status == 403 and "X-Headwater-Request" in body["error"]  # the CSRF guard
    status, body, response = anonymous.call("POST", "/api/login", {"token": TOKEN}, csrf)
    cookie = response.headers["Set-Cookie"]
    assert status == 200 and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    session = cookie.split(";", 1)[0]
    status, body, _ = anonymous.call("GET", "/api/runs", headers={"Cookie": session})
    assert status == 200 and body["runs"] == []


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
    status, _, _ = http.call("POST", f"/api/runs/{run.id}/cancel", {})
    assert status == 403  # no CSRF header
    cancelled = http.post(f"/api/runs/{run.id}/cancel", {"reason": "from the test"})
    assert cancelled["run"]["state"] == "CANCELLED"
    assert cancelled["run"]["message"] == "from the test"
    assert http.call("GET", "/api/runs/nosuchrun")[0] == 404
    assert http.call("GET", "/api/runs?state=sleepy")[0] == 400


def test_a_failed_run_shows_attempts_tracebacks_logs_and_timeline(
    server: ServerThread, http: Http, worker: Worker
) -> None:
    with Client(server.address, token=TOKEN) as client:
        run = client.run(boom, {"text": "hey"})
        final = client.wait(run.id)
    assert final.state is FlowRunState.FAILED
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


def test_a_run_page_stream_follows_the_run_to_its_end(server: ServerThread, http: Http) -> None:
    with Client(server.address, token=TOKEN) as client:
        run = client.run(loud, {"text": "hey"})
    request = urllib.request.Request(f"{http.base}/api/runs/{run.id}/events")
    request.add_header("Authorization", f"Bearer {TOKEN}")
    events: list[tuple[str, Any]] = []
    with urllib.request.urlopen(request, timeout=BOUND) as stream:
        assert stream.headers.get_content_type() == "text/event-stream"
        event = ""
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[len("data: ") :])))
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


def test_schedules_pause_and_resume_over_http(server: ServerThread, http: Http) -> None:
    with Client(server.address, token=TOKEN) as client:
        schedule = client.create_schedule(loud, every=3600, params={"text": "hourly"})
    listed = http.get("/api/schedules")["schedules"]
    assert [(s["id"], s["paused"], s["every"]) for s in listed] == [(schedule.id, False, 3600.0)]
    assert http.post(f"/api/schedules/{schedule.id}/pause")["schedule"]["paused"] is True
    assert http.get("/api/schedules")["schedules"][0]["next_run_at"] is not None
    assert http.post(f"/api/schedules/{schedule.id}/resume")["schedule"]["paused"] is False
    status, _, _ = http.call("POST", "/api/schedules/nope/pause", {}, {"X-Headwater-Request": "1"})
    assert status == 404


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


def test_a_task_no_worker_takes_fails_after_its_schedule_to_start_timeout(
    server: ServerThread, worker: Worker
) -> None:
    with Client(server.address, token=TOKEN) as client:
        final = client.wait(client.run(unservable).id)
    assert final.state is FlowRunState.FAILED
    (orphaned,) = final.task_runs
    assert orphaned.failure is not None
    assert orphaned.failure.type == "headwater.ScheduleToStartTimeout"
    assert orphaned.failure.message == (
        "no worker started it within its schedule_to_start_timeout of 0.5s "
        "(waiting: no connected worker offers nobody.offers.this)"
    )
    assert orphaned.attempts == 1  # not retried
