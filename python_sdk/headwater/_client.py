"""``headwater.Client``: talk to a control plane (register flows, run, watch, cancel)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from headwater.v1 import control_plane_pb2 as cp
from headwater.v1 import control_plane_pb2_grpc, graph_pb2, payload_pb2, run_pb2
from headwater.wire import (
    INLINE_PAYLOAD_LIMIT,
    ConnectionSettings,
    FlowRunState,
    PayloadTransfer,
    PayloadTransferError,
    TaskRunState,
    decode_value,
    encode,
    to_datetime,
)
from headwater_runtime.tracing import inject

from ._client_ops import OperationsClient
from ._schedule_info import ScheduleInfo, schedule_info, schedule_message

if TYPE_CHECKING:
    from ._flow import Flow

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


class ServerError(Exception):
    """The control plane refused a request or could not be reached; one clear line.

    Args:
        message: what failed and, where one is known, the fix.
        code: the gRPC status of the failed call (None when no call was made).
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class LogEntry:
    """A log record a task run wrote (``print`` and ``logging`` inside the task)."""

    task_run_id: str
    attempt: int
    at: datetime
    level: str
    logger: str
    message: str


@dataclass
class TaskRunInfo:
    """A task run as the server reports it."""

    key: str
    task_id: str
    state: TaskRunState
    attempts: int
    states: list[TaskRunState] = field(default_factory=list)
    message: str = ""
    worker: str = ""  # the worker that runs (or ran) the current attempt
    #: Why a SCHEDULED task run is not running yet, e.g. "waiting on limit db (3/3)".
    waiting: str = ""


@dataclass
class RemoteFlowRun:
    """A flow run on a server."""

    id: str
    flow_name: str
    flow_version: str
    state: FlowRunState
    message: str
    created: bool = True
    task_runs: list[TaskRunInfo] = field(default_factory=list)
    #: The schedule that created the run ("" for a run created by a client).
    schedule_id: str = ""
    #: The key the run was created with (a scheduled run's names its fire time).
    idempotency_key: str = ""
    #: The run attempt: 1, and one more each time it was retried from its failure.
    attempt: int = 1
    #: Why the run was late (it had not started within the server's late threshold);
    #: "" when it was not.
    late_reason: str = ""
    _result: payload_pb2.Value | None = field(default=None, repr=False)
    _client: Client | None = field(default=None, repr=False)

    @property
    def result(self) -> Any:
        """The flow's return value (decoded) once the run succeeded, else None."""
        if self._result is None or self._client is None:
            return None
        return self._client.decode(self._result)


class Client(OperationsClient):
    """A connection to a Headwater control plane (the operations methods, from
    ``retry`` to ``list_webhooks``, are described in docs/operations.md).

    Args:
        address: ``HOST:PORT`` of ``headwater server`` (default: HEADWATER_SERVER).
        token: bearer token (default: the HEADWATER_TOKEN environment variable).
        timeout: seconds each call may take.
    """

    def __init__(
        self, address: str | None = None, token: str | None = None, timeout: float = 30.0
    ) -> None:
        settings = ConnectionSettings.from_env(server=address, token=token)
        if not settings.server:
            raise ValueError("no server given: pass Client('HOST:PORT') or set HEADWATER_SERVER")
        self.address: str = settings.server
        self.timeout = timeout
        self._metadata = settings.metadata()
        self._channel = grpc.insecure_channel(self.address)
        self._control = control_plane_pb2_grpc.ControlPlaneServiceStub(self._channel)
        self._transfer = PayloadTransfer(self._channel, self._metadata, patient=False)

    def close(self) -> None:
        """Close the gRPC channel (also done on leaving a ``with Client(...)`` block)."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ calls

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Req, _Resp],
        request: _Req,
        what: str,
        timeout: float | None = None,
    ) -> _Resp:
        try:
            return method(request, metadata=self._metadata, timeout=timeout or self.timeout)
        except grpc.RpcError as exc:
            raise _server_error(exc, self.address, what) from None

    def server_info(self) -> dict[str, Any]:
        """The server's ``server_version``, ``protocol_version`` and ``features``; a cheap
        call to check that the server is reachable and the token accepted."""
        info = self._call(self._control.GetServerInfo, cp.GetServerInfoRequest(), "server info")
        return {
            "server_version": info.server_version,
            "protocol_version": info.protocol_version,
            "features": list(info.features),
        }

    def deploy(self, flow: Flow[..., Any], params: Mapping[str, Any] | None = None) -> str:
        """Register a flow; returns its version (an identical graph keeps its version).

        A flow whose body uses its parameters as values has a graph per set of values:
        ``params`` chooses the one registered (docs/flows.md)."""
        msg, _ = self._compile(flow, params, complete=False)
        return self._register(msg)

    def _register(self, msg: graph_pb2.FlowGraph) -> str:
        response = self._call(
            self._control.RegisterFlow,
            cp.RegisterFlowRequest(graph=msg),
            f"register flow {msg.name!r}",
        )
        return str(response.version)

    def _compile(
        self, flow: Flow[..., Any], params: Mapping[str, Any] | None, *, complete: bool
    ) -> tuple[graph_pb2.FlowGraph, dict[str, payload_pb2.Value]]:
        """The flow's graph for these parameters and the parameters encoded, checked
        against the flow's annotations first (ParameterError: nothing is sent)."""
        from ._graphs import compile_graph

        given = flow.validate(**(params or {}))
        values = flow.complete(given, required=complete)
        return compile_graph(
            flow, given, values, lambda value, portable: self.encode(value, portable=portable)
        )

    def run(
        self,
        flow: Flow[..., Any] | str,
        params: Mapping[str, Any] | None = None,
        *,
        version: str = "",
        idempotency_key: str = "",
    ) -> RemoteFlowRun:
        """Create a flow run. A Flow object's parameters are checked against its
        annotations here, and its graph for them is registered first (docs/flows.md);
        a flow name runs a registered version, the server checking what it can. The
        same idempotency key returns the run the first call created."""
        name, version, values = self._prepare(flow, params, version)
        response = self._call(
            self._control.CreateFlowRun,
            cp.CreateFlowRunRequest(
                flow_name=name,
                flow_version=version,
                parameters=values,
                idempotency_key=idempotency_key,
                # The caller's current span (if any) becomes the flow span's parent.
                trace_context=inject(),
            ),
            f"run flow {name!r}",
        )
        run = self._remote(response.flow_run)
        run.created = response.created
        return run

    def _prepare(
        self, flow: Flow[..., Any] | str, params: Mapping[str, Any] | None, version: str
    ) -> tuple[str, str, dict[str, payload_pb2.Value]]:
        """(name, version, encoded parameters) for a run or a schedule: a Flow object's
        graph for these parameters is registered unless a version is given."""
        if isinstance(flow, str):
            return flow, version, {k: self.encode(v) for k, v in (params or {}).items()}
        msg, values = self._compile(flow, params, complete=True)
        return flow.name, version or self._register(msg), values

    def get(self, run_id: str, include_task_runs: bool = False) -> RemoteFlowRun:
        """A flow run by id as it is now; with ``include_task_runs``, also every task
        run's state, attempts, state history and worker. ServerError if it does not exist."""
        response = self._call(
            self._control.GetFlowRun,
            cp.GetFlowRunRequest(id=run_id, include_task_runs=include_task_runs),
            f"get flow run {run_id!r}",
        )
        run = self._remote(response.flow_run)
        run.task_runs = [
            TaskRunInfo(
                key=t.name,
                task_id=t.task_id,
                state=TaskRunState(t.state),
                attempts=t.attempts,
                states=[TaskRunState(h.state) for h in t.history],
                message=t.history[-1].message if t.history else "",
                worker=t.worker_id,
                waiting=t.waiting,
            )
            for t in response.task_runs
        ]
        return run

    def list_runs(self, flow_name: str = "", limit: int = 50) -> list[RemoteFlowRun]:
        """The most recent flow runs, newest first: at most ``limit`` (1..1000), only
        those of ``flow_name`` if given. Task runs are not included (see ``get``)."""
        response = self._call(
            self._control.ListFlowRuns,
            cp.ListFlowRunsRequest(flow_name=flow_name, page_size=limit),
            "list flow runs",
        )
        return [self._remote(r) for r in response.flow_runs]

    def watch(
        self, run_id: str, *, task_runs: bool = True
    ) -> Iterator[tuple[RemoteFlowRun, TaskRunInfo | None]]:
        """Yield the run after every state change until it ends: with the task run that
        changed, or (``task_runs=False``) only when the flow run's own state changes."""
        request = cp.WatchFlowRunRequest(id=run_id, flow_run_only=not task_runs)
        try:
            for change in self._control.WatchFlowRun(request, metadata=self._metadata):
                task = None
                if change.HasField("task_run"):
                    t = change.task_run
                    task = TaskRunInfo(
                        t.name,
                        t.task_id,
                        TaskRunState(t.state),
                        t.attempts,
                        message=t.history[-1].message if t.history else "",
                    )
                yield self._remote(change.flow_run), task
        except grpc.RpcError as exc:
            raise _server_error(exc, self.address, f"watch flow run {run_id!r}") from None

    def wait(self, run_id: str) -> RemoteFlowRun:
        """Block until the run ends; returns it."""
        for _change in self.watch(run_id, task_runs=False):
            pass
        return self.get(run_id, include_task_runs=True)

    def cancel(self, run_id: str, reason: str = "") -> RemoteFlowRun:
        """Cancel a run: every unfinished task run and the run itself end CANCELLED, and
        workers are told to stop their running attempts. Returns the run after the
        request; a run that had already ended is returned unchanged. ``reason`` becomes
        the run's message."""
        response = self._call(
            self._control.CancelFlowRun,
            cp.CancelFlowRunRequest(id=run_id, reason=reason),
            f"cancel flow run {run_id!r}",
        )
        return self._remote(response.flow_run)

    def task_result(self, run_id: str, task_id: str, map_index: int = -1) -> Any:
        """A task run's result, decoded (a mapped task's whole list with map_index -1)."""
        response = self._call(
            self._control.GetTaskRunResult,
            cp.GetTaskRunResultRequest(flow_run_id=run_id, task_id=task_id, map_index=map_index),
            f"get the result of {task_id!r}",
        )
        return self.decode(response.result)

    def logs(self, run_id: str, task_run_id: str = "") -> list[LogEntry]:
        """The log records task runs of a flow run wrote (one task run's, if given as
        ``FLOW_RUN_ID/KEY``), oldest first."""
        response = self._call(
            self._control.ListTaskRunLogs,
            cp.ListTaskRunLogsRequest(flow_run_id=run_id, task_run_id=task_run_id),
            f"logs of flow run {run_id!r}",
        )
        return [
            LogEntry(
                task_run_id=e.task_run_id,
                attempt=e.attempt,
                at=to_datetime(e.timestamp),
                level=e.level,
                logger=e.logger,
                message=e.message,
            )
            for e in response.entries
        ]

    # -------------------------------------------------------------- schedules

    def create_schedule(
        self,
        flow: Flow[..., Any] | str,
        *,
        every: float | timedelta | None = None,
        cron: str | None = None,
        params: Mapping[str, Any] | None = None,
        timezone: str = "UTC",
        paused: bool = False,
        catchup: bool = False,
        version: str = "",
    ) -> ScheduleInfo:
        """Create runs of a flow periodically: ``every`` (seconds or a timedelta) or at
        the times of a five-field ``cron`` expression read in ``timezone``. A Flow
        object is deployed first and its version pinned; for a flow name, an empty
        ``version`` runs the latest version at each fire. After downtime only the
        most recent missed time fires, unless ``catchup`` (then every missed time
        does). A Flow object's parameters are checked and its graph for them is
        registered and pinned; that is also how a flow whose graph depends on its
        parameter values is scheduled (docs/flows.md). See docs/schedules.md."""
        name, version, values = self._prepare(flow, params, version)
        msg = schedule_message(name, version, every, cron, values, timezone, paused, catchup)
        response = self._call(
            self._control.CreateSchedule,
            cp.CreateScheduleRequest(schedule=msg),
            f"create a schedule for flow {name!r}",
        )
        return schedule_info(response.schedule, self.decode)

    def list_schedules(self, flow_name: str = "") -> list[ScheduleInfo]:
        """Every schedule on the server (only those of ``flow_name`` if given)."""
        response = self._call(
            self._control.ListSchedules,
            cp.ListSchedulesRequest(flow_name=flow_name),
            "list schedules",
        )
        return [schedule_info(s, self.decode) for s in response.schedules]

    def delete_schedule(self, schedule_id: str) -> None:
        """Remove a schedule; the runs it already created are kept."""
        self._call(
            self._control.DeleteSchedule,
            cp.DeleteScheduleRequest(id=schedule_id),
            f"delete schedule {schedule_id!r}",
        )

    def pause_schedule(self, schedule_id: str) -> ScheduleInfo:
        """Stop a schedule from creating runs until it is resumed."""
        response = self._call(
            self._control.PauseSchedule,
            cp.PauseScheduleRequest(id=schedule_id),
            f"pause schedule {schedule_id!r}",
        )
        return schedule_info(response.schedule, self.decode)

    def resume_schedule(self, schedule_id: str) -> ScheduleInfo:
        """Resume a paused schedule from its next fire time after now (the times missed
        while paused do not fire)."""
        response = self._call(
            self._control.ResumeSchedule,
            cp.ResumeScheduleRequest(id=schedule_id),
            f"resume schedule {schedule_id!r}",
        )
        return schedule_info(response.schedule, self.decode)

    # ----------------------------------------------------------------- values

    def encode(self, value: Any, *, portable: bool = False) -> payload_pb2.Value:
        """A Value for a parameter: inline when small, uploaded in chunks when large;
        tagged json (or EncodingError) when ``portable``."""
        encoded = encode(value, portable=portable)
        try:
            return self._transfer.value(encoded, INLINE_PAYLOAD_LIMIT)
        except PayloadTransferError as exc:
            raise ServerError(f"{exc} (server {self.address})") from None

    def fetch(self, ref: payload_pb2.PayloadRef) -> bytes:
        """The bytes of a stored payload, downloaded in chunks and checked."""
        try:
            return self._transfer.download(ref)
        except PayloadTransferError as exc:
            raise ServerError(f"{exc} (server {self.address})") from None

    def decode(self, value: payload_pb2.Value) -> Any:
        """The Python value of a Value message (large values are downloaded)."""
        return decode_value(value, self.fetch)

    def _remote(self, msg: run_pb2.FlowRun) -> RemoteFlowRun:
        return RemoteFlowRun(
            id=msg.id,
            flow_name=msg.flow_name,
            flow_version=msg.flow_version,
            state=FlowRunState(msg.state),
            message=msg.history[-1].message if msg.history else "",
            schedule_id=msg.schedule_id,
            idempotency_key=msg.idempotency_key,
            attempt=msg.attempt or 1,
            late_reason=msg.late_reason if msg.late else "",
            _result=msg.result if msg.HasField("result") else None,
            _client=self,
        )


def _server_error(exc: grpc.RpcError, address: str, what: str) -> ServerError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServerError(f"cannot reach the Headwater server at {address} ({what})", code)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return ServerError(
            f"the server at {address} refused the token: {details} (set HEADWATER_TOKEN)", code
        )
    return ServerError(f"{what}: {details}", code)
