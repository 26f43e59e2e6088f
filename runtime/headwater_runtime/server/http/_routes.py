"""Every HTTP route with the handler that answers it and what it does.

Who may call a route is not decided here: ``HTTP_ROUTES`` (server/_roles.py) gives
each route (same method, same path pattern) the roles it needs, beside the gRPC
methods' roles, and ``HttpGuard`` checks every request against it. ``build_app``
refuses to start when the two tables list different routes, and
``tests/test_http_security.py`` checks the routes aiohttp registers against
``HTTP_ROUTES`` both ways. docs/http-api.md lists these routes.

Path patterns are those of ``HTTP_ROUTES``: ``{name}`` is one path segment, a trailing
``*`` anything (aiohttp gets ``{tail:.+}`` for it).
"""

from __future__ import annotations

from dataclasses import dataclass

from headwater.wire import Role

from .._roles import HTTP_ROUTES, answers_head


@dataclass(frozen=True)
class Route:
    """One HTTP route.

    Attributes:
        method: GET, HEAD or POST (every GET route but an event stream answers HEAD
            too: ``_with_head``).
        path: path pattern, e.g. ``/api/runs/{run_id}`` (as in ``HTTP_ROUTES``).
        handler: name of the ``HttpApi`` method that answers it.
        summary: what it returns or does, one line (docs/http-api.md has the details).
    """

    method: str
    path: str
    handler: str
    summary: str
    #: A HEAD route made of a GET route (``_with_head``; the docs list the GET one).
    of_get: bool = False

    @property
    def roles(self) -> tuple[Role, ...]:
        """The roles of which a caller needs one (from ``HTTP_ROUTES``; () is open)."""
        for route in HTTP_ROUTES:
            if route.method == self.method and route.pattern == self.path:
                return route.roles
        raise LookupError(f"HTTP route {self.method} {self.path} is not in HTTP_ROUTES")

    @property
    def aiohttp_path(self) -> str:
        """The path as aiohttp's router takes it."""
        return self.path[:-1] + "{tail:.+}" if self.path.endswith("*") else self.path


def _with_head(routes: tuple[Route, ...]) -> tuple[Route, ...]:
    """``routes`` and the HEAD routes ``with_head`` adds to ``HTTP_ROUTES``, each
    answered by its GET route's handler (aiohttp sends the headers of its answer, no
    body)."""
    own = {r.path for r in routes if r.method == "HEAD"}
    return routes + tuple(
        Route("HEAD", r.path, r.handler, f"{r.summary} (headers only)", of_get=True)
        for r in routes
        if r.method == "GET" and answers_head(r.path) and r.path not in own
    )


ROUTES: tuple[Route, ...] = _with_head((
    # Session and plumbing.
    Route("GET", "/login", "login_form", "the login page (a token field)"),
    Route("POST", "/login", "login", "check the token; set the session cookie"),
    Route("POST", "/logout", "logout", "clear the session cookie"),
    Route("GET", "/healthz", "healthz", "200 while the server runs"),
    Route("HEAD", "/healthz", "healthz", "200 while the server runs (no body)"),
    Route("GET", "/static/*", "static", "the UI's scripts and styles"),
    Route("GET", "/metrics", "metrics", "Prometheus metrics (docs/operations.md)"),
    # The UI: one page; the browser routes /runs/ID and friends itself.
    Route("GET", "/", "page", "the web UI"),
    Route("GET", "/runs", "page", "the web UI: runs"),
    Route("GET", "/runs/{run_id}", "page", "the web UI: one run"),
    Route("GET", "/flows", "page", "the web UI: flows"),
    Route("GET", "/flows/{name}", "page", "the web UI: one flow"),
    Route("GET", "/schedules", "page", "the web UI: schedules"),
    Route("GET", "/workers", "page", "the web UI: workers"),
    Route("GET", "/audit", "page", "the web UI: the audit log"),
    # The JSON API.
    Route("GET", "/api/session", "session", "who is calling, their role, the CSRF token"),
    Route("GET", "/api/runs", "list_runs", "flow runs, newest first, filtered"),
    Route("GET", "/api/runs/events", "runs_events", "SSE: which runs changed"),
    Route("GET", "/api/runs/{run_id}", "get_run", "a run, its graph, counts per task"),
    Route("GET", "/api/runs/{run_id}/events", "run_events", "SSE: a run's changes"),
    Route("GET", "/api/runs/{run_id}/tasks", "list_tasks", "a run's task runs, paged"),
    Route("GET", "/api/runs/{run_id}/tasks/{key}", "get_task", "one task run in full"),
    Route("GET", "/api/runs/{run_id}/timeline", "timeline", "every task run's bar"),
    Route("GET", "/api/runs/{run_id}/logs", "logs", "a run's log records, paged"),
    Route("POST", "/api/runs/{run_id}/cancel", "cancel_run", "cancel a run"),
    Route("POST", "/api/runs/{run_id}/retry", "retry_run", "retry an ended run from its failure"),
    Route("GET", "/api/flows", "list_flows", "registered flows and versions"),
    Route("GET", "/api/flows/{name}", "get_flow", "a flow version's graph"),
    Route("GET", "/api/schedules", "list_schedules", "schedules"),
    Route("POST", "/api/schedules/{schedule_id}/pause", "pause_schedule", "pause a schedule"),
    Route("POST", "/api/schedules/{schedule_id}/resume", "resume_schedule", "resume it"),
    Route("GET", "/api/workers", "list_workers", "workers, online and recently gone, drains"),
    Route("GET", "/api/workers/events", "workers_events", "SSE: workers changed"),
    Route("POST", "/api/workers/{name}/drain", "drain_worker", "stop giving a worker work"),
    Route("POST", "/api/workers/{name}/resume", "resume_worker", "lift a worker's drain"),
    Route("GET", "/api/audit", "list_audit", "who did what, newest first, filtered"),
))  # fmt: skip


def check_tables() -> None:
    """Raise when ``ROUTES`` and ``HTTP_ROUTES`` do not list the same routes (a bug:
    a route without a role, or a role for a route nobody serves)."""
    served = [(r.method, r.path) for r in ROUTES]
    guarded = [(r.method, r.pattern) for r in HTTP_ROUTES]
    if sorted(served) != sorted(guarded) or len(set(served)) != len(served):
        only_served = sorted(set(served) - set(guarded))
        only_guarded = sorted(set(guarded) - set(served))
        raise RuntimeError(
            f"HTTP routes without a role in HTTP_ROUTES: {only_served}; roles for routes "
            f"nobody serves: {only_guarded}"
        )


__all__ = ["ROUTES", "Route", "check_tables"]
