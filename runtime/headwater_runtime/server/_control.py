"""ControlPlaneService: the client API (thin adapter over ServerCore and the store)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from headwater.v1 import control_plane_pb2 as cp
from headwater.v1 import (
    control_plane_pb2_grpc,
    graph_pb2,
    payload_pb2,
    run_pb2,
    state_pb2,
)
from headwater.wire import (
    ENCODING_KEY,
    PROTOCOL_VERSION,
    TERMINAL_FLOW_STATES,
    GraphError,
    ParameterError,
    feature_names,
    split_task_run_id,
    task_run_id,
    timestamp,
)
from headwater_runtime.store import Conflict, FlowRunRow, NotFound, StateRow

from ._convert import flow_run_message, task_run_from_row
from ._core import SERVER_VERSION, ServerCore
from ._runs import NoResult
from ._schedule_times import ScheduleError

_TERMINAL = {s.value for s in TERMINAL_FLOW_STATES}

#: The context of a call of any method (for helpers shared by several methods).
AnyContext: TypeAlias = grpc.aio.ServicerContext[Any, Any]


def _check_value(name: str, value: payload_pb2.Value) -> str | None:
    kind = value.WhichOneof("kind")
    if kind is None:
        return f"parameter {name!r} has no value"
    metadata = value.inline.metadata if kind == "inline" else value.ref.metadata
    if ENCODING_KEY not in metadata:
        return f"parameter {name!r} has no 'encoding' metadata"
    return None


class ControlServicer(control_plane_pb2_grpc.ControlPlaneServiceServicer):
    """ControlPlaneService (the client API) over a ServerCore.

    Each RPC checks its request, calls the core or the store, and maps their errors
    to status codes: NotFound to NOT_FOUND, bad graphs, parameters and schedules to
    INVALID_ARGUMENT. The RPCs are documented in proto/headwater/v1/control_plane.proto.

    Args:
        core: the server's state.
    """

    def __init__(self, core: ServerCore) -> None:
        self.core = core
        self.store = core.store

    async def RegisterFlow(
        self,
        request: cp.RegisterFlowRequest,
        context: grpc.aio.ServicerContext[cp.RegisterFlowRequest, cp.RegisterFlowResponse],
    ) -> cp.RegisterFlowResponse:
        """Validate and store a flow graph; an identical graph keeps its version."""
        if not request.HasField("graph"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request has no graph")
        try:
            version, created = self.core.runs.register_flow(request.graph)
        except GraphError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Conflict as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        return cp.RegisterFlowResponse(name=request.graph.name, version=version, created=created)

    async def GetFlow(
        self,
        request: cp.GetFlowRequest,
        context: grpc.aio.ServicerContext[cp.GetFlowRequest, cp.GetFlowResponse],
    ) -> cp.GetFlowResponse:
        """A registered flow's graph (the latest version when none is given)."""
        try:
            stored = self.store.get_flow(request.name, request.version)
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return cp.GetFlowResponse(graph=graph_pb2.FlowGraph.FromString(stored.graph))

    async def ListFlows(
        self,
        request: cp.ListFlowsRequest,
        context: grpc.aio.ServicerContext[cp.ListFlowsRequest, cp.ListFlowsResponse],
    ) -> cp.ListFlowsResponse:
        """Every registered flow with its versions."""
        flows = [
            cp.FlowSummary(name=name, versions=versions)
            for name, versions in self.store.list_flows()
        ]
        return cp.ListFlowsResponse(flows=flows)

    async def CreateFlowRun(
        self,
        request: cp.CreateFlowRunRequest,
        context: grpc.aio.ServicerContext[cp.CreateFlowRunRequest, cp.CreateFlowRunResponse],
    ) -> cp.CreateFlowRunResponse:
        """Create and start a run, committed before the response (the same
        idempotency key returns the first run)."""
        if not request.flow_name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "flow_name is required")
        for name, value in request.parameters.items():
            problem = _check_value(name, value)
            if problem:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            row, created = self.core.runs.create_run(
                request.flow_name,
                request.flow_version,
                dict(request.parameters),
                request.idempotency_key,
                dict(request.trace_context),
            )
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except ParameterError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self.core.flush()  # durable before the client hears about it
        return cp.CreateFlowRunResponse(
            flow_run=flow_run_message(self.store.get_flow_run(row.id)), created=created
        )

    async def _flow_run(self, run_id: str, context: AnyContext) -> FlowRunRow:
        try:
            return self.store.get_flow_run(run_id)
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))

    async def GetFlowRun(
        self,
        request: cp.GetFlowRunRequest,
        context: grpc.aio.ServicerContext[cp.GetFlowRunRequest, cp.GetFlowRunResponse],
    ) -> cp.GetFlowRunResponse:
        """A flow run, with its task runs and their state histories if asked."""
        row = await self._flow_run(request.id, context)
        response = cp.GetFlowRunResponse(flow_run=flow_run_message(row))
        if response.flow_run.HasField("result"):
            await self.core.exports.readable(response.flow_run.result)
        if request.include_task_runs:
            history: dict[str, list[StateRow]] = {}
            for entry in self.store.task_run_history(row.id):
                history.setdefault(entry.key, []).append(entry)
            for task_row in self.store.task_runs(row.id):
                response.task_runs.append(
                    task_run_from_row(task_row, history.get(task_row.key, []))
                )
        return response

    async def ListFlowRuns(
        self,
        request: cp.ListFlowRunsRequest,
        context: grpc.aio.ServicerContext[cp.ListFlowRunsRequest, cp.ListFlowRunsResponse],
    ) -> cp.ListFlowRunsResponse:
        """Flow runs, newest first, a page at a time (``page_token``: the last
        run of the previous page)."""
        size = request.page_size or 50
        if not 1 <= size <= 1000:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "page_size must be 1..1000")
        if request.page_token:
            await self._flow_run(request.page_token, context)
        rows = self.store.list_flow_runs(
            request.flow_name, [int(s) for s in request.states], size + 1, request.page_token
        )
        response = cp.ListFlowRunsResponse(flow_runs=[flow_run_message(r) for r in rows[:size]])
        if len(rows) > size:
            response.next_page_token = rows[size - 1].id
        return response

    async def WatchFlowRun(
        self,
        request: cp.WatchFlowRunRequest,
        context: grpc.aio.ServicerContext[cp.WatchFlowRunRequest, cp.WatchFlowRunResponse],
    ) -> AsyncIterator[cp.WatchFlowRunResponse]:
        """Stream the run after each committed change until it ends."""
        row = await self._flow_run(request.id, context)
        # Subscribe, then read: a change committed after the read wakes the queue.
        queue = self.core.watch(row.id, task_runs=not request.flow_run_only)
        try:
            row = self.store.get_flow_run(row.id)
            yield cp.WatchFlowRunResponse(flow_run=flow_run_message(row))
            # The commit that ends the run may carry several task run changes (all
            # queued by the same flush): deliver every one before ending the stream.
            while row.state not in _TERMINAL or not queue.empty():
                run = await queue.get()
                row = self.store.get_flow_run(row.id)
                response = cp.WatchFlowRunResponse(flow_run=flow_run_message(row))
                if run is not None:
                    response.task_run.CopyFrom(run)
                yield response
        finally:
            self.core.unwatch(request.id, queue)

    async def CancelFlowRun(
        self,
        request: cp.CancelFlowRunRequest,
        context: grpc.aio.ServicerContext[cp.CancelFlowRunRequest, cp.CancelFlowRunResponse],
    ) -> cp.CancelFlowRunResponse:
        """Cancel a run that has not ended; the run as it is afterwards."""
        row = await self._flow_run(request.id, context)
        if row.state not in _TERMINAL:
            self.core.runs.cancel(row.id, request.reason)
            self.core.flush()
            row = self.store.get_flow_run(row.id)
        return cp.CancelFlowRunResponse(flow_run=flow_run_message(row))

    async def GetTaskRunResult(
        self,
        request: cp.GetTaskRunResultRequest,
        context: grpc.aio.ServicerContext[cp.GetTaskRunResultRequest, cp.GetTaskRunResultResponse],
    ) -> cp.GetTaskRunResultResponse:
        """A task run's result (for a mapped task with ``map_index`` -1, the
        list of its children's); FAILED_PRECONDITION when it has none."""
        try:
            value, state = self.core.runs.task_result(
                request.flow_run_id, request.task_id, request.map_index
            )
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except NoResult as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        await self.core.exports.readable(value)  # values still held in a Dask cluster
        return cp.GetTaskRunResultResponse(
            result=value,
            state=state_pb2.TaskRunState.ValueType(state.value),
        )

    async def ListTaskRunLogs(
        self,
        request: cp.ListTaskRunLogsRequest,
        context: grpc.aio.ServicerContext[cp.ListTaskRunLogsRequest, cp.ListTaskRunLogsResponse],
    ) -> cp.ListTaskRunLogsResponse:
        """The log records a flow run's task runs wrote (one task run's if
        given), oldest first."""
        await self._flow_run(request.flow_run_id, context)
        key = ""
        if request.task_run_id:
            try:
                key = split_task_run_id(request.task_run_id)[1]
            except ValueError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        entries = []
        for log in self.store.logs(request.flow_run_id, key):
            entry = run_pb2.LogEntry(
                task_run_id=task_run_id(log.flow_run_id, log.key),
                attempt=log.attempt,
                level=log.level,
                logger=log.logger,
                message=log.message,
            )
            entry.timestamp.CopyFrom(timestamp(log.at))
            entries.append(entry)
        return cp.ListTaskRunLogsResponse(entries=entries)

    async def CreateSchedule(
        self,
        request: cp.CreateScheduleRequest,
        context: grpc.aio.ServicerContext[cp.CreateScheduleRequest, cp.CreateScheduleResponse],
    ) -> cp.CreateScheduleResponse:
        """Validate and store a schedule."""
        if not request.HasField("schedule"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request has no schedule")
        for name, value in request.schedule.parameters.items():
            problem = _check_value(name, value)
            if problem:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            schedule = self.core.schedules.create(request.schedule)
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except (ScheduleError, ParameterError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self.core.touch()  # the timer loop re-reads the next fire time
        return cp.CreateScheduleResponse(schedule=schedule)

    async def ListSchedules(
        self,
        request: cp.ListSchedulesRequest,
        context: grpc.aio.ServicerContext[cp.ListSchedulesRequest, cp.ListSchedulesResponse],
    ) -> cp.ListSchedulesResponse:
        """Every schedule (only one flow's if given)."""
        return cp.ListSchedulesResponse(schedules=self.core.schedules.list(request.flow_name))

    async def DeleteSchedule(
        self,
        request: cp.DeleteScheduleRequest,
        context: grpc.aio.ServicerContext[cp.DeleteScheduleRequest, cp.DeleteScheduleResponse],
    ) -> cp.DeleteScheduleResponse:
        """Remove a schedule; the runs it created are kept."""
        try:
            self.core.schedules.delete(request.id)
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return cp.DeleteScheduleResponse()

    async def _set_enabled(
        self, schedule_id: str, enabled: bool, context: AnyContext
    ) -> run_pb2.Schedule:
        try:
            schedule = self.core.schedules.set_enabled(schedule_id, enabled)
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        self.core.touch()
        return schedule

    async def PauseSchedule(
        self,
        request: cp.PauseScheduleRequest,
        context: grpc.aio.ServicerContext[cp.PauseScheduleRequest, cp.PauseScheduleResponse],
    ) -> cp.PauseScheduleResponse:
        """Stop a schedule from creating runs."""
        schedule = await self._set_enabled(request.id, False, context)
        return cp.PauseScheduleResponse(schedule=schedule)

    async def ResumeSchedule(
        self,
        request: cp.ResumeScheduleRequest,
        context: grpc.aio.ServicerContext[cp.ResumeScheduleRequest, cp.ResumeScheduleResponse],
    ) -> cp.ResumeScheduleResponse:
        """Resume a schedule from its next fire time after now."""
        schedule = await self._set_enabled(request.id, True, context)
        return cp.ResumeScheduleResponse(schedule=schedule)

    async def GetServerInfo(
        self,
        request: cp.GetServerInfoRequest,
        context: grpc.aio.ServicerContext[cp.GetServerInfoRequest, cp.GetServerInfoResponse],
    ) -> cp.GetServerInfoResponse:
        """The server's version, protocol version and features."""
        return cp.GetServerInfoResponse(
            server_version=SERVER_VERSION,
            protocol_version=PROTOCOL_VERSION,
            features=feature_names(),
        )
