"""Every HTTP route in one table: method, path, handler, the role it requires.

The table is the place where access is decided (``_access.py`` reads ``role``) and
what docs/http-api.md lists; a test checks the two agree. Reading is ``viewer``,
changing something ``operator``; every state-changing route is a POST (so the CSRF
check of ``_access.py`` covers it). Roles other than "a valid token, or none
configured" are not enforced yet: the table records what each route will need.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Roles, weakest first.
VIEWER, OPERATOR, ADMIN = "viewer", "operator", "admin"
ROLES = (VIEWER, OPERATOR, ADMIN)
#: Routes anyone may call (the page shell, its assets, logging in).
PUBLIC = "public"


@dataclass(frozen=True)
class Route:
    """One HTTP route.

    Attributes:
        method: GET or POST.
        path: aiohttp path pattern, e.g. ``/api/runs/{run_id}``.
        handler: name of the ``HttpApi`` method that answers it.
        role: the role a caller needs (``PUBLIC`` for none).
        summary: what it returns or does, one line (docs/http-api.md has the details).
    """

    method: str
    path: str
    handler: str
    role: str
    summary: str


ROUTES: tuple[Route, ...] = (
    # The UI: one page; the browser routes /runs/ID and friends itself.
    Route("GET", "/", "page", PUBLIC, "the web UI"),
    Route("GET", "/runs", "page", PUBLIC, "the web UI: runs"),
    Route("GET", "/runs/{run_id}", "page", PUBLIC, "the web UI: one run"),
    Route("GET", "/flows", "page", PUBLIC, "the web UI: flows"),
    Route("GET", "/flows/{name}", "page", PUBLIC, "the web UI: one flow"),
    Route("GET", "/schedules", "page", PUBLIC, "the web UI: schedules"),
    Route("GET", "/workers", "page", PUBLIC, "the web UI: workers"),
    Route("GET", "/static/{path:.+}", "static", PUBLIC, "the UI's scripts and styles"),
    # Session.
    Route("GET", "/api/info", "info", PUBLIC, "server version; whether a token is needed"),
    Route("POST", "/api/login", "login", PUBLIC, "exchange a token for a session cookie"),
    Route("POST", "/api/logout", "logout", PUBLIC, "forget the session cookie"),
    # Runs.
    Route("GET", "/api/runs", "list_runs", VIEWER, "flow runs, newest first, filtered"),
    Route("GET", "/api/runs/events", "runs_events", VIEWER, "SSE: which runs changed"),
    Route("GET", "/api/runs/{run_id}", "get_run", VIEWER, "a run, its graph, counts per task"),
    Route("GET", "/api/runs/{run_id}/events", "run_events", VIEWER, "SSE: a run's changes"),
    Route("GET", "/api/runs/{run_id}/tasks", "list_tasks", VIEWER, "a run's task runs, paged"),
    Route("GET", "/api/runs/{run_id}/tasks/{key}", "get_task", VIEWER, "one task run in full"),
    Route("GET", "/api/runs/{run_id}/timeline", "timeline", VIEWER, "every task run's bar"),
    Route("GET", "/api/runs/{run_id}/logs", "logs", VIEWER, "a run's log records, paged"),
    Route("POST", "/api/runs/{run_id}/cancel", "cancel_run", OPERATOR, "cancel a run"),
    # Retry from failure (the operations work) goes here: POST .../retry, OPERATOR.
    # Flows, schedules, workers.
    Route("GET", "/api/flows", "list_flows", VIEWER, "registered flows and versions"),
    Route("GET", "/api/flows/{name}", "get_flow", VIEWER, "a flow version's graph"),
    Route("GET", "/api/schedules", "list_schedules", VIEWER, "schedules"),
    Route("POST", "/api/schedules/{id}/pause", "pause_schedule", OPERATOR, "pause a schedule"),
    Route("POST", "/api/schedules/{id}/resume", "resume_schedule", OPERATOR, "resume it"),
    Route("GET", "/api/workers", "list_workers", VIEWER, "workers, online and recently gone"),
    Route("GET", "/api/workers/events", "workers_events", VIEWER, "SSE: workers changed"),
    # Draining a worker (POST, OPERATOR) and /metrics (Prometheus) go here too.
)


__all__ = ["ADMIN", "OPERATOR", "PUBLIC", "ROLES", "ROUTES", "VIEWER", "Route"]
