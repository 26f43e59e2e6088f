"""The HTTP API's handlers (docs/http-api.md); each a method named in ``ROUTES``.

Thin, like the gRPC servicers: store queries run on reader threads (``core.io``),
shared reads come from ``RunReads`` (the same code as the gRPC API), and live streams
from the server's watch machinery. Nothing here decides anything about runs.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from headwater.wire import (
    AUDIT_KINDS,
    AUDIT_PAGE_MAX,
    FlowRunState,
    TaskRunState,
    audit_kind,
    is_build_version,
    seconds,
    split_task_run_id,
    task_run_id,
)
from headwater_runtime.store import NotFound

from .._access import CALLER
from .._core import ServerCore
from .._http_security import HttpGuard
from .._limits import InvalidValue
from .._notices import WorkerRecord, drain
from .._ops_core import RetryRefused, UnknownWorker
from .._reads import AmbiguousRunId, RunReads
from .._schedule_requests import AmbiguousScheduleId
from . import _data
from ._access import FORM_TYPES, form_of
from ._pages import PageHandlers
from ._sse import KEEPALIVE, EventStream, next_of, take_all

_TERMINAL = {s.value for s in FlowRunState if s.is_terminal}
#: Most runs or task runs one listing returns.
PAGE_MAX = 1000
#: Flow graphs kept as JSON.
GRAPHS_KEPT = 32
#: Most log records one page returns.
LOG_PAGE_MAX = 5000
#: Seconds between ``seen`` events of the workers stream (workers' last message times).
SEEN_EVERY = 5.0
#: Most waiting reasons a run's page is sent at once (``waiting`` of the run and of its
#: event stream): its side panel lists at most 200 task runs, and each listed task run
#: carries its own reason. A run with 5,000 queued attempts sent all of theirs (~600 KB
#: of JSON) with every change.
WAITING_SHOWN = 200
#: Seconds between two ``waiting`` events a run's stream sends while its task runs
#: change (at once when workers come or go): working the reasons out walks every
#: queued attempt of the run.
WAITING_EVERY = 2.0
#: Seconds between two ``logs`` events of a run's stream at the most: each has the
#: page fetch the new records, and a task printing every 10 ms sent ~100 a second.
LOGS_EVERY = 0.5


def _waiting_shown(reasons: dict[str, str]) -> dict[str, str]:
    """At most WAITING_SHOWN of a run's waiting reasons (by task run id)."""
    if len(reasons) <= WAITING_SHOWN:
        return reasons
    return dict(itertools.islice(reasons.items(), WAITING_SHOWN))


class BadRequest(ValueError):
    """A query parameter that cannot be used (400)."""


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        if not raw.isascii():  # (int() reads full-width and other scripts' digits)
            raise ValueError(raw)
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be in {low}..{high}, got {value}")
    return value


def _float(request: web.Request, name: str) -> float | None:
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        value = float(raw) if raw.isascii() else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):  # (nan was taken, and matched nothing)
        raise BadRequest(f"{name} must be seconds since the epoch, got {raw[:40]!r}")
    return value


def _states(request: web.Request, kind: Any = FlowRunState) -> list[int]:
    """The ``state`` query's states of ``kind`` (repeatable or comma-separated), checked:
    an unknown name is a 400 naming the known ones."""
    states = []
    for part in request.query.getall("state", []):
        for name in part.split(","):
            name = name.strip().upper()
            if not name:
                continue
            try:
                states.append(kind[name].value)
            except KeyError:
                known = ", ".join(s.name for s in kind)
                raise BadRequest(f"unknown state {name!r}; use one of {known}") from None
    return states


async def _body(request: web.Request, example: str) -> dict[str, Any]:
    """A POST's fields: a JSON object body, or form fields ({} without a body;
    BadRequest for anything else)."""
    if request.content_type in FORM_TYPES:  # (first: the CSRF check may have read them,
        return await form_of(request)  # and then the body reads as empty)
    if not request.can_read_body:
        return {}
    wrong = f"send a JSON object such as {example} (Content-Type: application/json), or nothing"
    if request.content_type != "application/json":
        raise BadRequest(wrong)
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # (nested too deep: a 500, a user trial)
        raise BadRequest(wrong) from None
    if not isinstance(body, dict):
        raise BadRequest(wrong)
    return body


def _reason(body: dict[str, Any], default: str) -> str:
    """A POST's ``reason`` (text; BadRequest for anything else), or ``default``."""
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise BadRequest(f"reason must be text, got {type(reason).__name__}")
    return reason or default


class HttpApi(PageHandlers):
    """The handlers of the HTTP API over a ServerCore.

    Args:
        core: the server's state.
        guard: who may call what (the server's credentials).
    """

    def __init__(self, core: ServerCore, guard: HttpGuard) -> None:
        super().__init__(core, guard)
        self.store = core.store
        self.io = core.io
        self.reads = RunReads(core)
        # Graphs as JSON by (flow, version): immutable, and slow to build for 10k tasks.
        self._graphs: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        #: Open event streams and the credential each was opened with; ended when the
        #: server stops, or when that credential is revoked (``drop_revoked``).
        self.streams: dict[asyncio.Task[Any], str] = {}

    # -------------------------------------------------------------------- runs

    async def list_runs(self, request: web.Request) -> web.StreamResponse:
        """Runs, newest first; ``flow``, ``state`` (repeatable or comma-separated),
        ``schedule`` (an id or a unique prefix), ``since``/``until`` (seconds since the
        epoch, created time), ``limit`` (1..1000, default 50), ``before`` (a run id: the
        next page)."""
        limit = _int(request, "limit", 50, 1, PAGE_MAX)
        before = request.query.get("before", "")
        if before:  # a run id or a unique prefix: the listing needs the whole id
            try:
                before = (await self.reads.flow_run(before)).id
            except NotFound:
                raise BadRequest(f"before {before!r} is not the id of a run") from None
            # (AmbiguousRunId: 400, said as for a run's own routes)
        schedule = request.query.get("schedule", "")
        if schedule:  # a schedule id or a unique prefix (AmbiguousScheduleId: 400)
            schedule = await self.core.schedule_requests.filter_id(schedule)
        rows = await self.io.read(
            self.store.list_flow_runs,
            request.query.get("flow", ""),
            _states(request),
            limit + 1,
            before,
            schedule_id=schedule,
            created_after=_float(request, "since"),
            created_before=_float(request, "until"),
        )
        runs = await self.io.read(_data.flow_runs_rows, self.store, rows[:limit])
        for run in runs:
            self._said(run)
        next_page = rows[limit - 1].id if len(rows) > limit else ""
        return web.json_response({"runs": runs, "next": next_page, "now": time.time()})

    def _said(self, run: dict[str, Any]) -> None:
        """A run this server did not resume says why as its message
        (``ServerCore.not_resumed_message``)."""
        said = self.core.not_resumed_message(run["id"], FlowRunState[run["state"]].value)
        if said is not None:
            run["message"] = said

    async def _graph(self, name: str, version: str) -> dict[str, Any]:
        """A flow version's graph as JSON (kept for the next reader)."""
        key = (name, version)
        graph = self._graphs.get(key)
        if graph is None:
            # The run manager keeps the graphs of runs it started or recovered parsed.
            found, spec = await self.io.read(self.core.runs.graph, name, version)
            graph = _data.graph_json(spec, found)
            if version:  # "" means the latest, which may change
                self._graphs[key] = graph
                while len(self._graphs) > GRAPHS_KEPT:
                    self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        return graph

    async def get_run(self, request: web.Request) -> web.StreamResponse:
        """A run (by id or unique prefix) with its graph and counts per task node."""
        row = await self.reads.flow_run(request.match_info["run_id"])
        body = await self.io.read(_data.run_page, self.store, row)
        self._said(body["run"])
        body["graph"] = await self._graph(row.flow_name, row.flow_version)
        body["waiting"] = _waiting_shown(self.core.waiting(row.id, limit=WAITING_SHOWN))
        body["now"] = time.time()
        return web.json_response(body)

    async def list_tasks(self, request: web.Request) -> web.StreamResponse:
        """A run's task runs (``task``: one node's, mapped children included; ``state``:
        only those in these states), ``offset``/``limit`` paged (limit default 200, at
        most 1000)."""
        row = await self.reads.flow_run(request.match_info["run_id"])
        await self.reads.check_task(row, request.query.get("task", ""))
        offset = _int(request, "offset", 0, 0, 1 << 40)
        limit = _int(request, "limit", 200, 1, PAGE_MAX)
        states = frozenset(_STATE_NAMES[s] for s in _states(request, TaskRunState))
        page, total = await self.io.read(
            _data.task_runs_rows,
            self.store,
            row.id,
            task_id=request.query.get("task", ""),
            states=states,
            offset=offset,
            limit=limit,
        )
        shown = {task_run_id(row.id, task_run["key"]) for task_run in page}
        waiting = self.core.waiting(row.id, only=shown)  # (not all of a wide map's)
        for task_run in page:
            task_run["waiting"] = waiting.get(task_run_id(row.id, task_run["key"]), "")
        return web.json_response({"task_runs": page, "total": total, "offset": offset})

    async def get_task(self, request: web.Request) -> web.StreamResponse:
        """One task run with its history, attempts, failure (traceback included) and
        result summary."""
        row = await self.reads.flow_run(request.match_info["run_id"])
        key = request.match_info["key"]
        found, _ = await self.io.read(
            _data.task_runs_rows, self.store, row.id, key=key, detail=True
        )
        if not found:
            raise NotFound(f"flow run {row.id!r} has no task run {key!r}")
        task_run = found[0]
        one = task_run_id(row.id, key)
        task_run["waiting"] = self.core.waiting(row.id, only={one}).get(one, "")
        return web.json_response(task_run)

    async def timeline(self, request: web.Request) -> web.StreamResponse:
        """Every task run's start and end, for the Gantt chart."""
        row = await self.reads.flow_run(request.match_info["run_id"])
        body = await self.io.read(_data.timeline_rows, self.store, row.id)
        body["now"] = time.time()
        return web.json_response(body)

    async def logs(self, request: web.Request) -> web.StreamResponse:
        """A page of a run's log records: ``task`` (a task node, with its mapped
        children) or ``key`` (one task run), ``after`` (a record's seq), ``limit``."""
        row = await self.reads.flow_run(request.match_info["run_id"])
        await self.reads.check_task(row, request.query.get("task", ""))
        after = _int(request, "after", 0, 0, 1 << 62)
        limit = _int(request, "limit", 1000, 1, LOG_PAGE_MAX)
        rows = await self.reads.logs(
            row.id,
            task_run=request.query.get("key", ""),
            task_id=request.query.get("task", ""),
            after=after,
            limit=limit,
        )
        entries = [_data.log_json(r) for r in rows]
        return web.json_response(
            {
                "entries": entries,
                "next": rows[-1].seq if rows else after,
                "more": len(rows) == limit,
            }
        )

    async def cancel_run(self, request: web.Request) -> web.StreamResponse:
        """Cancel a run (stored before the answer); an ended run is left as it is."""
        row = await self.reads.flow_run(request.match_info["run_id"])
        said = _reason(await _body(request, '{"reason": "..."}'), _done_here(request, "cancelled"))
        if row.state not in _TERMINAL:
            await self.core.cancel_audited(row.id, said)
            row = await self.io.read(self.store.get_flow_run, row.id)
        return web.json_response({"run": await self._run(row)})

    async def retry_run(self, request: web.Request) -> web.StreamResponse:
        """Retry a FAILED or CANCELLED run from its failure, as its next run attempt
        (the path of OperationsService/RetryFlowRun); stored before the answer. 409 when
        it cannot be retried now."""
        row = await self.reads.flow_run(request.match_info["run_id"])
        said = _reason(await _body(request, '{"reason": "..."}'), _done_here(request, "retried"))
        await self.core.ops.retry(row.id, said)  # audited there
        row = await self.io.read(self.store.get_flow_run, row.id)
        return web.json_response({"run": await self._run(row)})

    async def _run(self, row: Any) -> dict[str, Any]:
        return await self.io.read(_data.flow_run_rows, self.store, row, with_result=False)

    # ------------------------------------------------- flows, schedules, workers

    async def list_flows(self, request: web.Request) -> web.StreamResponse:
        """Registered flows with their versions (value-dependent builds counted)."""
        flows = [
            {
                "name": name,
                "versions": [v for v in versions if not is_build_version(v)],
                "value_dependent_graphs": sum(map(is_build_version, versions)),
            }
            for name, versions in await self.io.read(self.store.list_flows)
        ]
        return web.json_response({"flows": flows})

    async def get_flow(self, request: web.Request) -> web.StreamResponse:
        """A flow version's graph (``version``; default the latest)."""
        name = request.match_info["name"]
        graph = await self._graph(name, request.query.get("version", ""))
        return web.json_response({"graph": graph})

    async def list_schedules(self, request: web.Request) -> web.StreamResponse:
        """Every schedule (``flow``: of one flow)."""
        schedules = await self.core.io.read(self.core.schedules.list, request.query.get("flow", ""))
        return web.json_response({"schedules": [_data.schedule_json(s) for s in schedules]})

    async def _set_enabled(self, request: web.Request, enabled: bool) -> web.StreamResponse:
        requests = self.core.schedule_requests
        schedule_id = await requests.resolve(request.match_info["schedule_id"])
        schedule = await requests.set_enabled(schedule_id, enabled)
        action = "schedule.resume" if enabled else "schedule.pause"
        await self.core.audit(action, "schedule", schedule_id)
        return web.json_response({"schedule": _data.schedule_json(schedule)})

    async def pause_schedule(self, request: web.Request) -> web.StreamResponse:
        """Stop a schedule from creating runs."""
        return await self._set_enabled(request, False)

    async def resume_schedule(self, request: web.Request) -> web.StreamResponse:
        """Let a paused schedule create runs again (from its next time after now)."""
        return await self._set_enabled(request, True)

    async def list_workers(self, request: web.Request) -> web.StreamResponse:
        """Workers: connected ones and those that left (offline), each with its drain
        (``draining``, ``exit_when_idle``); online first, then by name, at most
        ``limit`` (1..1000, default 1000; ``more``: how many were left out). Those that
        left before this server started are its recorded ones (as ListWorkers shows
        them: the page left them out after a restart while ``headwater workers list``
        listed them, a user trial)."""
        limit = _int(request, "limit", PAGE_MAX, 1, PAGE_MAX)
        registry = self.core.ops.workers
        live = [record.as_dict() for record in self.core.notices.workers.values()]
        listed = {worker["name"] for worker in live}
        # The order is found from names alone: only the workers shown are built (a
        # fleet restarting under new names can leave tens of thousands of records).
        places = [(not w["online"], w["name"], i) for i, w in enumerate(live)]
        places += [(True, name, -1) for name in registry.known if name not in listed]
        places.sort()
        workers = [
            live[i] if i >= 0 else WorkerRecord.recorded(registry.known[name]).as_dict()
            for _, name, i in places[:limit]
        ]
        for worker in workers:
            drain = registry.drains.get(worker["name"])
            worker["draining"] = drain is not None
            worker["exit_when_idle"] = drain is not None and drain.exit_when_idle
        more = max(0, len(places) - limit)
        return web.json_response({"workers": workers, "more": more, "now": time.time()})

    async def drain_worker(self, request: web.Request) -> web.StreamResponse:
        """Stop giving attempts to the workers of a name (``exit_when_idle``: and ask
        them to exit once idle); what they run finishes. Stored; 404 for an unknown
        name."""
        name = request.match_info["name"]
        body = await _body(request, '{"exit_when_idle": true}')
        exit_when_idle = body.get("exit_when_idle", False)
        if exit_when_idle in ("true", "false"):  # a form field
            exit_when_idle = exit_when_idle == "true"
        if not isinstance(exit_when_idle, bool):
            raise BadRequest(f"exit_when_idle must be true or false, got {exit_when_idle!r}")
        await self.core.ops.drain(name, exit_when_idle)  # audited there
        return await self.list_workers(request)

    async def resume_worker(self, request: web.Request) -> web.StreamResponse:
        """Let the drained workers of a name take attempts again (404: unknown name)."""
        name = request.match_info["name"]
        await self.core.ops.resume(name)  # audited there
        return await self.list_workers(request)

    # --------------------------------------------------------------------- audit

    async def list_audit(self, request: web.Request) -> web.StreamResponse:
        """Audit entries, newest first; ``kind`` (one of ``kinds``), ``object`` (an
        object's id), ``limit`` (1..1000, default 100)."""
        try:
            kind = audit_kind(request.query.get("kind", ""))
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        limit = _int(request, "limit", 100, 1, AUDIT_PAGE_MAX)
        rows = await self.io.read(
            self.store.audit_entries, kind, request.query.get("object", ""), limit
        )
        return web.json_response(
            {"entries": [_data.audit_json(r) for r in rows], "kinds": list(AUDIT_KINDS)}
        )

    # ------------------------------------------------------------ live streams

    def drop_revoked(self, valid: frozenset[str]) -> None:
        """End the event streams opened with a credential no longer valid (revoked):
        the browser's reconnect is then refused, as the worker streams of a revoked
        credential are (``ServerCore.drop_revoked``)."""
        for task, name in list(self.streams.items()):
            if name not in valid:
                task.cancel()

    async def _stream(
        self, request: web.Request, body: Callable[[EventStream], Awaitable[None]]
    ) -> web.StreamResponse:
        stream = EventStream(request)
        await stream.open()
        task = asyncio.current_task()
        assert task is not None
        self.streams[task] = CALLER.get().name
        try:
            await body(stream)
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the browser left, or the server stops
        finally:
            self.streams.pop(task, None)
        return stream.response

    async def runs_events(self, request: web.Request) -> web.StreamResponse:
        """SSE ``runs``: ids of runs a commit changed (the runs page re-reads)."""
        notices = self.core.notices
        queue = notices.subscribe_runs()

        async def body(stream: EventStream) -> None:
            await stream.send("hello", {})
            while True:
                got = await next_of({"runs": queue.get})
                if not got:
                    await stream.comment()
                    continue
                await stream.send("runs", sorted(drain(queue, got[0][1])))

        try:
            return await self._stream(request, body)
        finally:
            notices.unsubscribe(queue)

    async def workers_events(self, request: web.Request) -> web.StreamResponse:
        """SSE ``workers``: workers connected or left, or their slots changed; ``seen``
        (every ``SEEN_EVERY`` seconds of nothing else, while workers are online): each
        online worker's last message time, by name, so that "last heartbeat" stays
        true without reloading the list."""
        notices = self.core.notices
        workers, runs = notices.subscribe_workers(), notices.subscribe_runs()

        async def body(stream: EventStream) -> None:
            await stream.send("hello", {})
            while True:
                got = await next_of({"workers": workers.get, "runs": runs.get}, SEEN_EVERY)
                if not got:
                    seen = {
                        record.name: record.session.last_seen
                        for record in notices.workers.values()
                        if record.session is not None
                    }
                    await (stream.send("seen", seen) if seen else stream.comment())
                    continue
                drain(workers, set())
                drain(runs, set())
                await stream.send("workers", {})

        try:
            return await self._stream(request, body)
        finally:
            notices.unsubscribe(workers)
            notices.unsubscribe(runs)

    async def run_events(self, request: web.Request) -> web.StreamResponse:
        """SSE of one run: ``tasks`` (task runs that changed), ``run`` (the run after a
        change of its own), ``logs`` (new records stored: at most every LOGS_EVERY
        seconds, the last records told of once that has passed), ``waiting`` (why task runs
        wait, when that changed: looked at whenever workers come or go, and as task runs
        change at most every WAITING_EVERY seconds, a look put off being made once that
        has passed), then ``end`` once it has ended."""
        row = await self.reads.flow_run(request.match_info["run_id"])
        run_id = row.id
        notes = self.core.watch(run_id)  # subscribe before reading: nothing is missed
        notices = self.core.notices
        logged, workers = notices.subscribe_logs(run_id), notices.subscribe_workers()

        async def body(stream: EventStream) -> None:
            current = await self.io.read(self.store.get_flow_run, run_id)
            await stream.send("run", await self._run(current))
            shown: dict[str, str] | None = None  # the reasons the page has
            waited_at = 0.0  # when they were last looked at (monotonic)
            due = False  # a look the throttle put off: made once WAITING_EVERY has passed
            logged_at = 0.0  # when the last ``logs`` event went (monotonic)
            logs_due = False  # new records told of once LOGS_EVERY has passed

            async def send_logs() -> None:
                nonlocal logged_at, logs_due
                await stream.send("logs", {})
                logged_at, logs_due = time.monotonic(), False

            async def send_waiting() -> None:
                # Only when they changed: an open page of a busy run got the same
                # (often empty) reasons every 2 s, and at every worker's coming or going.
                nonlocal shown, waited_at, due
                reasons = _waiting_shown(self.core.waiting(run_id, limit=WAITING_SHOWN))
                if reasons != shown:
                    await stream.send("waiting", reasons)
                    shown = reasons
                waited_at, due = time.monotonic(), False

            await send_waiting()
            while current.state not in _TERMINAL or not notes.empty():
                # What the throttles put off is sent once they allow (the reasons may
                # have changed since; records came).
                deadlines = [waited_at + WAITING_EVERY] if due else []
                deadlines += [logged_at + LOGS_EVERY] if logs_due else []
                idle = max(0.0, min(deadlines) - time.monotonic()) if deadlines else KEEPALIVE
                got = await next_of(
                    {"notes": notes.get, "logs": logged.get, "workers": workers.get}, idle
                )
                if not got:
                    if not (due or logs_due):
                        await stream.comment()
                    if logs_due:
                        await send_logs()
                    if due:
                        await send_waiting()
                    continue
                kinds = dict(got)
                if "notes" in kinds:
                    changes = take_all(notes, kinds["notes"])
                    tasks = [_task_note(t) for t in changes if t is not None]
                    if tasks:
                        await stream.send("tasks", tasks)
                    if any(t is None for t in changes) or not tasks:
                        current = await self.io.read(self.store.get_flow_run, run_id)
                        run = await self.io.read(_data.flow_run_rows, self.store, current)
                        await stream.send("run", run)
                    if time.monotonic() - waited_at >= WAITING_EVERY:
                        await send_waiting()
                    else:
                        due = True
                if "logs" in kinds:
                    drain(logged, set())
                    if time.monotonic() - logged_at >= LOGS_EVERY:
                        await send_logs()
                    else:
                        logs_due = True
                if "workers" in kinds:
                    drain(workers, set())
                    await send_waiting()
            await send_waiting()  # none wait any more: a page that still shows some is told
            await stream.send("logs", {})
            await stream.send("end", {"state": FlowRunState(current.state).name})

        try:
            return await self._stream(request, body)
        finally:
            self.core.unwatch(run_id, notes)
            notices.unsubscribe(logged)
            notices.unsubscribe(workers)


def _task_note(task_run: Any) -> dict[str, Any]:
    """A watch note (a TaskRun message of the engine's latest state) as JSON."""
    entry = task_run.history[-1] if task_run.history else None
    failure = None
    if entry is not None and entry.HasField("failure"):
        f = entry.failure
        failure = {"type": f.type, "message": f.message, "traceback": f.stack_trace}
    return {
        "key": split_task_run_id(task_run.id)[1],
        "task_id": task_run.task_id,
        "map_index": task_run.map_index,
        "state": _STATE_NAMES.get(task_run.state, str(task_run.state)),
        "attempts": task_run.attempts,
        "at": seconds(entry.timestamp) if entry else None,
        "message": entry.message if entry else "",
        "failure": failure,
    }


_STATE_NAMES = {s.value: s.name for s in TaskRunState}


def error_response(exc: Exception) -> web.Response | None:
    """The JSON error answer for an exception a handler may raise (None: a bug)."""
    if isinstance(exc, NotFound):
        return web.json_response({"error": str(exc)}, status=404)
    if isinstance(exc, UnknownWorker):
        return web.json_response({"error": str(exc)}, status=404)
    if isinstance(exc, BadRequest | AmbiguousRunId | AmbiguousScheduleId | InvalidValue):
        return web.json_response({"error": str(exc)}, status=400)
    if isinstance(exc, RetryRefused):
        return web.json_response({"error": str(exc)}, status=409)
    from headwater_runtime.store import StoreUnavailable

    if isinstance(exc, StoreUnavailable):
        return web.json_response({"error": f"{exc}; try again later"}, status=503)
    return None


__all__ = ["HttpApi", "error_response"]


def _done_here(request: web.Request, done: str) -> str:
    """The reason a cancel or retry without one is stored with: the web UI's page posts
    with its session (or none, on an open server), a script with its Bearer token (it
    was audited "retried from the web UI" too, a user trial)."""
    where = "over the HTTP API" if request.headers.get("Authorization") else "from the web UI"
    return f"{done} {where}"
