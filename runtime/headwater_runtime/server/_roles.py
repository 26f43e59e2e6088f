"""Which role each RPC and HTTP route requires: the one table (docs/security.md).

A call is allowed when the caller's role grants any of the listed roles (``Role.grants``:
admin grants every role, operator grants viewer). ``OPEN`` entries need no credential.
``tests/test_security_matrix.py`` checks that every method the server registers has an
entry here, and that docs/security.md prints this table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from headwater.v1 import access_pb2, control_plane_pb2, operations_pb2, payload_pb2, worker_pb2
from headwater.wire import Role

ADMIN, OPERATOR, VIEWER, WORKER = Role.ADMIN, Role.OPERATOR, Role.VIEWER, Role.WORKER
#: No credential needed.
OPEN: tuple[Role, ...] = ()
#: Any valid credential.
ANY: tuple[Role, ...] = (VIEWER, WORKER)

_CP = control_plane_pb2.DESCRIPTOR.services_by_name["ControlPlaneService"].full_name
_GW = worker_pb2.DESCRIPTOR.services_by_name["WorkerGatewayService"].full_name
_PL = payload_pb2.DESCRIPTOR.services_by_name["PayloadService"].full_name
_AC = access_pb2.DESCRIPTOR.services_by_name["AccessService"].full_name
_OP = operations_pb2.DESCRIPTOR.services_by_name["OperationsService"].full_name

#: gRPC method (``/package.Service/Method``) -> roles of which the caller needs one.
REQUIRED_ROLES: dict[str, tuple[Role, ...]] = {
    f"/{_CP}/RegisterFlow": (OPERATOR,),
    f"/{_CP}/GetFlow": (VIEWER,),
    f"/{_CP}/ListFlows": (VIEWER,),
    f"/{_CP}/CreateFlowRun": (OPERATOR,),
    f"/{_CP}/GetFlowRun": (VIEWER,),
    f"/{_CP}/ListFlowRuns": (VIEWER,),
    f"/{_CP}/WatchFlowRun": (VIEWER,),
    f"/{_CP}/CancelFlowRun": (OPERATOR,),
    f"/{_CP}/GetTaskRunResult": (VIEWER,),
    f"/{_CP}/ListTaskRunLogs": (VIEWER,),
    f"/{_CP}/GetFlowRunResult": (VIEWER,),
    f"/{_CP}/WatchTaskRunLogs": (VIEWER,),
    f"/{_CP}/CreateSchedule": (OPERATOR,),
    f"/{_CP}/ListSchedules": (VIEWER,),
    f"/{_CP}/DeleteSchedule": (OPERATOR,),
    f"/{_CP}/PauseSchedule": (OPERATOR,),
    f"/{_CP}/ResumeSchedule": (OPERATOR,),
    f"/{_CP}/GetServerInfo": ANY,
    f"/{_CP}/ListAuditEntries": (VIEWER,),
    f"/{_GW}/Connect": (WORKER,),
    # Clients upload large parameters; workers upload results.
    f"/{_PL}/UploadPayload": (OPERATOR, WORKER),
    # A worker-only credential is further limited to the payloads of the attempts it
    # holds or that it uploaded (server/_payloads.py).
    f"/{_PL}/DownloadPayload": (VIEWER, WORKER),
    f"/{_OP}/RetryFlowRun": (OPERATOR,),
    f"/{_OP}/SetConcurrencyLimit": (OPERATOR,),
    f"/{_OP}/ListConcurrencyLimits": (VIEWER,),
    f"/{_OP}/DeleteConcurrencyLimit": (OPERATOR,),
    f"/{_OP}/ListWorkers": (VIEWER,),
    f"/{_OP}/DrainWorker": (OPERATOR,),
    f"/{_OP}/ResumeWorker": (OPERATOR,),
    # Webhooks send run data to any URL, with a signing secret: administrators only.
    f"/{_OP}/CreateWebhook": (ADMIN,),
    f"/{_OP}/ListWebhooks": (ADMIN,),
    f"/{_OP}/DeleteWebhook": (ADMIN,),
    f"/{_AC}/CreateCredential": (ADMIN,),
    f"/{_AC}/ListCredentials": (ADMIN,),
    f"/{_AC}/RevokeCredential": (ADMIN,),
    "/grpc.health.v1.Health/Check": OPEN,
    "/grpc.health.v1.Health/Watch": OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": ANY,
}


@dataclass(frozen=True)
class Route:
    """An HTTP route: its method, a path pattern (``{name}`` matches one segment, a
    trailing ``*`` anything), and the roles of which the caller needs one."""

    method: str
    pattern: str
    roles: tuple[Role, ...]
    #: A HEAD route ``with_head`` made of a GET route (the docs list the GET one).
    of_get: bool = False

    def matches(self, method: str, path: str) -> bool:
        """Whether this route serves ``method`` ``path``."""
        return method.upper() == self.method and _compiled(self.pattern).fullmatch(path) is not None


def _compiled(pattern: str) -> re.Pattern[str]:
    regex = re.escape(pattern).replace(r"\{", "{").replace(r"\}", "}")
    regex = re.sub(r"\{[a-z_]+\}", "[^/]+", regex)
    if regex.endswith(r"\*"):
        regex = regex[:-2] + ".*"
    return re.compile(regex)


#: Every HTTP route the web UI's server serves (server/http/_routes.py gives each its
#: handler), with the roles of which the caller needs one, and HEAD where GET is
#: (``with_head``); first match wins. Every
#: state-changing route is a POST (CSRF-checked: server/_http_security.py); anything not
#: listed is refused (404). ``tests/test_http_security.py`` checks that this table and
#: the routes the aiohttp application registers are the same.
def with_head(routes: tuple[Route, ...]) -> tuple[Route, ...]:
    """``routes`` and, after them, a HEAD route with the same roles for every GET route
    but an event stream (a path ending ``/events``: a HEAD of it would hold the
    connection open with nothing to send) and one with a HEAD route of its own. RFC
    9110 expects HEAD wherever GET works: an uptime checker's ``HEAD /`` got 405."""
    own = {r.pattern for r in routes if r.method == "HEAD"}
    return routes + tuple(
        Route("HEAD", r.pattern, r.roles, of_get=True)
        for r in routes
        if r.method == "GET" and answers_head(r.pattern) and r.pattern not in own
    )


def answers_head(pattern: str) -> bool:
    """Whether the GET route of this path pattern also answers HEAD (``with_head``)."""
    return not pattern.endswith("/events")


HTTP_ROUTES: tuple[Route, ...] = with_head((
    # Logging in and out, the load balancer's check, the UI's scripts and styles.
    Route("GET", "/login", OPEN),
    Route("POST", "/login", OPEN),
    Route("POST", "/logout", OPEN),
    Route("GET", "/healthz", OPEN),
    Route("HEAD", "/healthz", OPEN),
    Route("GET", "/static/*", OPEN),
    # Prometheus scrapes (also on --metrics-port, without credentials).
    Route("GET", "/metrics", (VIEWER,)),
    # The UI's pages (one page; the browser routes /runs/ID and friends itself).
    Route("GET", "/", (VIEWER,)),
    Route("GET", "/runs", (VIEWER,)),
    Route("GET", "/runs/{run_id}", (VIEWER,)),
    Route("GET", "/flows", (VIEWER,)),
    Route("GET", "/flows/{name}", (VIEWER,)),
    Route("GET", "/schedules", (VIEWER,)),
    Route("GET", "/workers", (VIEWER,)),
    Route("GET", "/audit", (VIEWER,)),
    # The JSON API.
    Route("GET", "/api/session", (VIEWER,)),
    Route("GET", "/api/runs", (VIEWER,)),
    Route("GET", "/api/runs/events", (VIEWER,)),
    Route("GET", "/api/runs/{run_id}", (VIEWER,)),
    Route("GET", "/api/runs/{run_id}/events", (VIEWER,)),
    Route("GET", "/api/runs/{run_id}/tasks", (VIEWER,)),
    Route("GET", "/api/runs/{run_id}/tasks/{key}", (VIEWER,)),
    Route("GET", "/api/runs/{run_id}/timeline", (VIEWER,)),
    Route("GET", "/api/runs/{run_id}/logs", (VIEWER,)),
    Route("POST", "/api/runs/{run_id}/cancel", (OPERATOR,)),
    Route("POST", "/api/runs/{run_id}/retry", (OPERATOR,)),
    Route("GET", "/api/flows", (VIEWER,)),
    Route("GET", "/api/flows/{name}", (VIEWER,)),
    Route("GET", "/api/schedules", (VIEWER,)),
    Route("POST", "/api/schedules/{schedule_id}/pause", (OPERATOR,)),
    Route("POST", "/api/schedules/{schedule_id}/resume", (OPERATOR,)),
    Route("GET", "/api/workers", (VIEWER,)),
    Route("GET", "/api/workers/events", (VIEWER,)),
    Route("POST", "/api/workers/{name}/drain", (OPERATOR,)),
    Route("POST", "/api/workers/{name}/resume", (OPERATOR,)),
    # The audit log: as ListAuditEntries.
    Route("GET", "/api/audit", (VIEWER,)),
))  # fmt: skip


def http_route(method: str, path: str) -> Route | None:
    """The first route serving ``method`` ``path`` (None: no such route). A HEAD of a
    path whose GET is an event stream is none (not the HEAD of a pattern it also fits:
    ``HEAD /api/runs/events`` was that of a run named "events", a 404)."""
    if method.upper() == "HEAD":
        get = next((r for r in HTTP_ROUTES if r.matches("GET", path)), None)
        if get is not None and not answers_head(get.pattern):
            return None
    return next((r for r in HTTP_ROUTES if r.matches(method, path)), None)


def allows(role: Role, needed: tuple[Role, ...]) -> bool:
    """Whether a caller with ``role`` may make a call that needs one of ``needed``."""
    return not needed or not role.grants.isdisjoint(needed)


def describe(needed: tuple[Role, ...]) -> str:
    """The roles that may make a call needing ``needed``, for messages and the docs."""
    if not needed:
        return "none (open)"
    roles = [r for r in Role if allows(r, needed)]
    return ", ".join(r.value for r in roles)
