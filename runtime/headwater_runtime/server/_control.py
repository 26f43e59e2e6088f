"""ControlPlaneService: the client API (thin adapter over ServerCore and the store).

Store queries run on reader threads (``core.io``), never on the event loop. Errors map
to status codes in one place (``refusals``): unknown things NOT_FOUND, bad requests
INVALID_ARGUMENT, a reused idempotency key ALREADY_EXISTS, a store that cannot take
writes RESOURCE_EXHAUSTED (disk full) or UNAVAILABLE, each with one line saying why.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any, NoReturn, TypeAlias

import grpc

from headwater.v1 import (
    control_plane_pb2,
    control_plane_pb2_grpc,
    graph_pb2,
    payload_pb2,
    state_pb2,
)
from headwater.v1 import control_plane_pb2 as cp
from headwater.wire import (
    AUDIT_PAGE_MAX,
    PROTOCOL_VERSION,
    TERMINAL_FLOW_STATES,
    GraphBuildNeeded,
    GraphError,
    LimitExceeded,
    ParameterError,
    audit_kind,
    feature_names,
    is_build_version,
    seconds,
    split_task_run_id,
    timestamp,
)
from headwater_runtime.store import AuditRow, Conflict, FlowRunRow, NotFound, StoreUnavailable

from ._builds import BuildUnavailable
from ._children import NotRunning
from ._control_reads import ReadsServicer
from ._core import SERVER_VERSION, ServerCore
from ._decoding import store_refusal
from ._details import detail
from ._io import to_its_end
from ._limits import (
    TRACE_VALUE_CHARS,
    InvalidValue,
    check_entries,
    check_parameter,
    check_strings,
)
from ._queries import NoResult, list_problem, task_result
from ._reads import AmbiguousRunId, RunReads, new_run_message
from ._schedule_requests import AmbiguousScheduleId
from ._schedule_times import ScheduleError

_TERMINAL = {s.value for s in TERMINAL_FLOW_STATES}

#: The context of a call of any method (for helpers shared by several methods).
AnyContext: TypeAlias = grpc.aio.ServicerContext[Any, Any]


async def _fail(context: AnyContext, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, detail(message))
    raise AssertionError("unreachable")


@contextlib.asynccontextmanager
async def refusals(context: AnyContext) -> AsyncIterator[None]:
    """Turn the errors a request can meet into its status code and one clear line."""
    try:
        yield
    except LimitExceeded as exc:
        await _fail(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    except InvalidValue as exc:
        await _fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except NotFound as exc:
        await _fail(context, grpc.StatusCode.NOT_FOUND, str(exc))
    except GraphBuildNeeded as exc:  # before ParameterError: it is one
        await _fail(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    except (GraphError, ParameterError, ScheduleError, AmbiguousRunId, AmbiguousScheduleId) as exc:
        await _fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except Conflict as exc:
        await _fail(context, grpc.StatusCode.ALREADY_EXISTS, str(exc))
    except (NoResult, NotRunning) as exc:
        await _fail(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    except BuildUnavailable as exc:
        await _fail(context, grpc.StatusCode.UNAVAILABLE, f"{exc}; try again")
    except StoreUnavailable as exc:
        await store_refusal(
            context, exc, exc.advice or "the server keeps retrying, try again later"
        )


def audit_message(row: AuditRow) -> cp.AuditEntry:
    """A stored audit entry as the API shows it."""
    entry = cp.AuditEntry(
        actor=row.actor,
        action=row.action,
        object_kind=row.object_kind,
        object_id=row.object_id,
        detail=row.detail,
    )
    entry.at.CopyFrom(timestamp(row.at))
    return entry


#: The length of a flow run's id (32 hex digits); a shorter one is a prefix.
_RUN_ID_LENGTH = 32
#: The longest idempotency key a run may be created with (characters; Temporal takes
#: workflow ids of up to 1,000 bytes): it is stored, indexed and shown with the run.
MAX_IDEMPOTENCY_KEY = 1_000


class ControlServicer(ReadsServicer, control_plane_pb2_grpc.ControlPlaneServiceServicer):
    """ControlPlaneService (the client API) over a ServerCore; the RPCs are documented
    in proto/headwater/v1/control_plane.proto (the reading ones in _control_reads.py).

    Args:
        core: the server's state.
    """

    def __init__(self, core: ServerCore) -> None:
        self.core = core
        self.store = core.store
        self.io = core.io
        self.reads = RunReads(core)  # shared with the HTTP API

    async def RegisterFlow(
        self,
        request: cp.RegisterFlowRequest,
        context: grpc.aio.ServicerContext[cp.RegisterFlowRequest, cp.RegisterFlowResponse],
    ) -> cp.RegisterFlowResponse:
        """Validate and store a flow graph (an identical graph keeps its version)."""
        if not request.HasField("graph"):
            await _fail(context, grpc.StatusCode.INVALID_ARGUMENT, "request has no graph")

        async def deploy() -> tuple[str, bool]:
            version, created = await self.core.register_flow(request.graph)
            if created:
                # (Not a graph registered again, which changes nothing: every
                # Client.run(flow) does it, and its entry stayed after retention deleted
                # the run, a row per run for good.)
                await self.core.audit("deploy", "flow", f"{request.graph.name}:{version}")
            return version, created

        async with refusals(context):
            version, created = await to_its_end(deploy(), "a deploy")
        return control_plane_pb2.RegisterFlowResponse(
            name=request.graph.name, version=version, created=created
        )

    async def GetFlow(
        self,
        request: cp.GetFlowRequest,
        context: grpc.aio.ServicerContext[cp.GetFlowRequest, cp.GetFlowResponse],
    ) -> cp.GetFlowResponse:
        """A registered flow's graph."""
        async with refusals(context):
            stored = await self.io.read(self.store.get_flow, request.name, request.version)
        return control_plane_pb2.GetFlowResponse(graph=graph_pb2.FlowGraph.FromString(stored.graph))

    async def ListFlows(
        self,
        request: cp.ListFlowsRequest,
        context: grpc.aio.ServicerContext[cp.ListFlowsRequest, cp.ListFlowsResponse],
    ) -> cp.ListFlowsResponse:
        """Every registered flow with its versions."""
        flows = [
            control_plane_pb2.FlowSummary(
                name=name,
                versions=[v for v in versions if not is_build_version(v)],
                value_dependent_graphs=sum(map(is_build_version, versions)),
            )
            for name, versions in await self.io.read(self.store.list_flows)
        ]
        return control_plane_pb2.ListFlowsResponse(flows=flows)

    async def CreateFlowRun(
        self,
        request: cp.CreateFlowRunRequest,
        context: grpc.aio.ServicerContext[cp.CreateFlowRunRequest, cp.CreateFlowRunResponse],
    ) -> cp.CreateFlowRunResponse:
        """Create and start a run; stored before the answer."""
        if not request.flow_name:
            await _fail(context, grpc.StatusCode.INVALID_ARGUMENT, "flow_name is required")
        if len(request.idempotency_key) > MAX_IDEMPOTENCY_KEY:
            await _fail(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"idempotency_key is {len(request.idempotency_key):,} characters long (at "
                f"most {MAX_IDEMPOTENCY_KEY:,})",
            )
        await self._check_parameters(request.parameters, context)
        async with refusals(context):  # (a 4 MiB one failed every task of the run)
            check_entries("trace_context", request.trace_context, self.core.settings.limits)
        problem = check_strings("trace_context", request.trace_context, TRACE_VALUE_CHARS)
        if problem:
            await _fail(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        parent = None
        if request.parent_task_run_id:
            try:  # (malformed: the request's fault, not a state of the server's runs)
                split_task_run_id(request.parent_task_run_id)
            except ValueError as exc:
                await _fail(context, grpc.StatusCode.INVALID_ARGUMENT, f"parent_task_run_id: {exc}")
            parent = (request.parent_task_run_id, request.parent_attempt)
        async with refusals(context):
            row, created = await self.core.create_run(
                request.flow_name,
                request.flow_version,
                dict(request.parameters),
                request.idempotency_key,
                dict(request.trace_context),
                parent,
            )
        fresh = created and not row.result  # nothing stored about it beyond its row yet
        message = new_run_message(row) if fresh else await self.reads.message(row)
        return control_plane_pb2.CreateFlowRunResponse(flow_run=message, created=created)

    async def _check_parameters(
        self, parameters: Mapping[str, payload_pb2.Value], context: AnyContext
    ) -> None:
        """Refuse parameter values the server cannot take (see check_parameter)."""
        limits = self.core.settings.limits
        async with refusals(context):
            for name, value in parameters.items():
                problem = check_parameter(name, value, limits)
                if problem:
                    await _fail(context, grpc.StatusCode.INVALID_ARGUMENT, problem)

    async def _flow_run(self, run_id: str, context: Any) -> FlowRunRow:
        """A run by id or unique id prefix (as GetFlowRun takes it)."""
        async with refusals(context):
            return await self.reads.flow_run(run_id)
        raise AssertionError("unreachable")

    async def GetFlowRun(
        self,
        request: cp.GetFlowRunRequest,
        context: grpc.aio.ServicerContext[cp.GetFlowRunRequest, cp.GetFlowRunResponse],
    ) -> cp.GetFlowRunResponse:
        """A flow run (by id or unique id prefix), with its task runs when asked: their
        failures, why they wait, and their results (large ones described); with why
        its task runs wait, a line per task and reason, when asked."""
        async with refusals(context):
            row, message, entries, task_runs, encoded = await self.reads.view(
                request.id, task_runs=request.include_task_runs
            )
        response = control_plane_pb2.GetFlowRunResponse(flow_run=message, task_runs=task_runs)
        if request.include_waiting:
            for waiting in await self.core.waiting_tasks(row.id):
                response.waiting.add(
                    task_id=waiting.task_id,
                    reason=waiting.reason,
                    count=waiting.count,
                    first_key=waiting.first_key,
                )
        if response.flow_run.HasField("result"):
            await self.core.exports.readable(response.flow_run.result)
        response.audit.extend(audit_message(e) for e in reversed(entries))
        if encoded:  # a large run's task runs, encoded off the loop: after the rest
            return response.SerializeToString() + encoded  # type: ignore[return-value]
        return response

    async def ListFlowRuns(
        self,
        request: cp.ListFlowRunsRequest,
        context: grpc.aio.ServicerContext[cp.ListFlowRunsRequest, cp.ListFlowRunsResponse],
    ) -> cp.ListFlowRunsResponse:
        """Flow runs, newest first, paged."""
        size = request.page_size or 50
        if not 1 <= size <= 1000:
            await _fail(context, grpc.StatusCode.INVALID_ARGUMENT, "page_size must be 1..1000")
        problem = list_problem(request)
        if problem is None and request.page_token:
            try:
                await self.io.read(self.store.get_flow_run, request.page_token)
            except NotFound:
                problem = f"page_token {request.page_token!r} is not one this server gave"
        if problem is not None:
            await _fail(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        schedule_id = request.schedule_id
        if schedule_id:  # an id or a unique prefix, as the HTTP API takes it
            async with refusals(context):  # (ambiguous: INVALID_ARGUMENT naming the matches)
                schedule_id = await self.core.schedule_requests.filter_id(schedule_id)
        rows = await self.io.read(
            self.store.list_flow_runs,
            request.flow_name,
            sorted(set(request.states)),  # (the same state 250,000 times: one)
            size + 1,
            request.page_token,
            schedule_id=schedule_id,
            created_after=(
                seconds(request.created_after) if request.HasField("created_after") else None
            ),
            created_before=(
                seconds(request.created_before) if request.HasField("created_before") else None
            ),
        )
        response = control_plane_pb2.ListFlowRunsResponse(
            flow_runs=await self.reads.messages(rows[:size])
        )
        if len(rows) > size:
            response.next_page_token = rows[size - 1].id
        return response

    async def WatchFlowRun(
        self,
        request: cp.WatchFlowRunRequest,
        context: grpc.aio.ServicerContext[cp.WatchFlowRunRequest, cp.WatchFlowRunResponse],
    ) -> AsyncIterator[cp.WatchFlowRunResponse]:
        """The run (by id or unique id prefix) now, then after every stored change,
        until it ends."""
        run_id = request.id
        if len(run_id) != _RUN_ID_LENGTH:  # a prefix: its run's id first
            run_id = (await self._flow_run(request.id, context)).id
        # Subscribe first (before any await, for a whole id), then read: a change made
        # meanwhile, or committed after the read, still reaches the queue.
        queue = self.core.watch(run_id, task_runs=not request.flow_run_only)
        try:
            row = await self._flow_run(run_id, context)
            yield control_plane_pb2.WatchFlowRunResponse(flow_run=await self.reads.message(row))
            # The commit that ends the run may carry several task run changes (all
            # queued by the same commit): deliver every one before ending the stream.
            # The flow run is read once for all the changes queued meanwhile: once per
            # change, a watch of a 30,000-element map took 40 s to deliver its 60,000
            # changes (and its queue grew), for a run of 11 s.
            while row.state not in _TERMINAL or not queue.empty():
                notes = [await queue.get()]
                while not queue.empty():
                    notes.append(queue.get_nowait())
                row = await self.io.read(self.store.get_flow_run, row.id)
                flow_run = await self.reads.message(row)
                changes = [run for run in notes if run is not None]
                if not changes:  # the flow run's own state changed
                    yield control_plane_pb2.WatchFlowRunResponse(flow_run=flow_run)
                for run in changes:
                    yield control_plane_pb2.WatchFlowRunResponse(flow_run=flow_run, task_run=run)
        finally:
            self.core.unwatch(run_id, queue)

    async def CancelFlowRun(
        self,
        request: cp.CancelFlowRunRequest,
        context: grpc.aio.ServicerContext[cp.CancelFlowRunRequest, cp.CancelFlowRunResponse],
    ) -> cp.CancelFlowRunResponse:
        """Cancel a run; the cancel is stored before the answer."""
        row = await self._flow_run(request.id, context)
        if row.state not in _TERMINAL:
            async with refusals(context):
                await self.core.cancel_audited(row.id, request.reason)
            row = await self.io.read(self.store.get_flow_run, row.id)
        return control_plane_pb2.CancelFlowRunResponse(flow_run=await self.reads.message(row))

    async def GetTaskRunResult(
        self,
        request: cp.GetTaskRunResultRequest,
        context: grpc.aio.ServicerContext[cp.GetTaskRunResultRequest, cp.GetTaskRunResultResponse],
    ) -> cp.GetTaskRunResultResponse:
        """A task run's result (a mapped task's whole list with map_index -1)."""
        async with refusals(context):
            value, state = await self.io.read(
                task_result, self.store, request.flow_run_id, request.task_id, request.map_index
            )
        await self.core.exports.readable(value)  # values still held in a Dask cluster
        return control_plane_pb2.GetTaskRunResultResponse(
            result=await self.reads.answer(value),  # large parts by reference
            state=state_pb2.TaskRunState.ValueType(state.value),
        )

    async def CreateSchedule(
        self,
        request: cp.CreateScheduleRequest,
        context: grpc.aio.ServicerContext[cp.CreateScheduleRequest, cp.CreateScheduleResponse],
    ) -> cp.CreateScheduleResponse:
        """Create a schedule (its flow must be registered), or return the identical one
        that exists; one with the name of another of its flow's replaces it."""
        if not request.HasField("schedule"):
            await _fail(context, grpc.StatusCode.INVALID_ARGUMENT, "request has no schedule")
        await self._check_parameters(request.schedule.parameters, context)

        async def create() -> Any:
            made = await self.core.schedule_requests.create(request.schedule)
            schedule, created, replaced = made
            if created:  # (an identical one returned: nothing was created)
                detail = request.schedule.flow_name + (
                    f", replacing {replaced}" if replaced else ""
                )
                await self.core.audit("schedule.create", "schedule", schedule.id, detail)
            return made

        async with refusals(context):
            schedule, created, replaced = await to_its_end(create(), "creating a schedule")
        return control_plane_pb2.CreateScheduleResponse(
            schedule=schedule, created=created, replaced=replaced
        )

    async def ListSchedules(
        self,
        request: cp.ListSchedulesRequest,
        context: grpc.aio.ServicerContext[cp.ListSchedulesRequest, cp.ListSchedulesResponse],
    ) -> cp.ListSchedulesResponse:
        """Every schedule (of one flow, if given)."""
        # (On a reader thread: a server with thousands of schedules reads and parses
        # them all.)
        schedules = await self.core.io.read(self.core.schedules.list, request.flow_name)
        return control_plane_pb2.ListSchedulesResponse(schedules=schedules)

    async def DeleteSchedule(
        self,
        request: cp.DeleteScheduleRequest,
        context: grpc.aio.ServicerContext[cp.DeleteScheduleRequest, cp.DeleteScheduleResponse],
    ) -> cp.DeleteScheduleResponse:
        """Delete a schedule (its runs stay)."""
        async with refusals(context):
            await self.core.schedule_requests.delete(request.id)
            await self.core.audit("schedule.delete", "schedule", request.id)
        return control_plane_pb2.DeleteScheduleResponse()

    async def _set_enabled(self, schedule_id: str, enabled: bool, context: Any) -> Any:
        async with refusals(context):
            schedule = await self.core.schedule_requests.set_enabled(schedule_id, enabled)
            action = "schedule.resume" if enabled else "schedule.pause"
            await self.core.audit(action, "schedule", schedule_id)
        return schedule

    async def PauseSchedule(
        self,
        request: cp.PauseScheduleRequest,
        context: grpc.aio.ServicerContext[cp.PauseScheduleRequest, cp.PauseScheduleResponse],
    ) -> cp.PauseScheduleResponse:
        """Stop a schedule from creating runs."""
        schedule = await self._set_enabled(request.id, False, context)
        return control_plane_pb2.PauseScheduleResponse(schedule=schedule)

    async def ResumeSchedule(
        self,
        request: cp.ResumeScheduleRequest,
        context: grpc.aio.ServicerContext[cp.ResumeScheduleRequest, cp.ResumeScheduleResponse],
    ) -> cp.ResumeScheduleResponse:
        """Resume a paused schedule from its next fire time after now."""
        schedule = await self._set_enabled(request.id, True, context)
        return control_plane_pb2.ResumeScheduleResponse(schedule=schedule)

    async def ListAuditEntries(
        self,
        request: cp.ListAuditEntriesRequest,
        context: grpc.aio.ServicerContext[cp.ListAuditEntriesRequest, cp.ListAuditEntriesResponse],
    ) -> cp.ListAuditEntriesResponse:
        """Who did what, newest first (about one kind of object or one object)."""
        size = request.page_size or 100
        if not 1 <= size <= AUDIT_PAGE_MAX:
            await _fail(
                context, grpc.StatusCode.INVALID_ARGUMENT, f"page_size must be 1..{AUDIT_PAGE_MAX}"
            )
        try:
            audit_kind(request.object_kind)
        except ValueError as exc:
            await _fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        entries = await self.io.read(
            self.store.audit_entries, request.object_kind, request.object_id, size
        )
        return control_plane_pb2.ListAuditEntriesResponse(
            entries=[audit_message(e) for e in entries]
        )

    async def GetServerInfo(
        self,
        request: cp.GetServerInfoRequest,
        context: grpc.aio.ServicerContext[cp.GetServerInfoRequest, cp.GetServerInfoResponse],
    ) -> cp.GetServerInfoResponse:
        """The server's version, protocol version, features and parameter limit."""
        return control_plane_pb2.GetServerInfoResponse(
            server_version=SERVER_VERSION,
            protocol_version=PROTOCOL_VERSION,
            features=feature_names(),
            max_parameter_bytes=self.core.settings.limits.max_parameter_bytes,
        )
