"""``headwater.Client``: talk to a control plane (register flows, run, watch, cancel)."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from headwater.v1 import (
    access_pb2,
    access_pb2_grpc,
    control_plane_pb2_grpc,
    graph_pb2,
    operations_pb2_grpc,
    payload_pb2,
    run_pb2,
    state_pb2,
)
from headwater.v1 import control_plane_pb2 as cp
from headwater.wire import (
    AUDIT_PAGE_MAX,
    CAUSE_STORE,
    INLINE_PAYLOAD_LIMIT,
    STANDBY_REFUSAL,
    TASK_RUN_ID_SEPARATOR,
    Addresses,
    ConnectionSettings,
    FailureInfo,
    FlowRunState,
    PayloadTransfer,
    PayloadTransferError,
    TaskRunState,
    TLSSettings,
    check_name,
    decode_value,
    encode,
    explain_unreachable,
    failure_from_proto,
    leader_hint,
    open_channel,
    refusal_cause,
    seconds,
    split_task_run_id,
    to_datetime,
)
from headwater_runtime.tracing import inject

from ._access_info import AuditEntry, CredentialInfo, audit_entry, credential_info
from ._client_ops import ID_LENGTH, OperationsClient, whole_id
from ._graphs import with_elements_inline
from ._logs import LogEntry
from ._message_size import over_message_limit
from ._schedule_info import ScheduleInfo, schedule_info, schedule_message

if TYPE_CHECKING:
    from ._flow import Flow

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
_T = TypeVar("_T")

#: Pause between rounds over every address while none leads (a takeover under way).
FAILOVER_PAUSE = 0.2
#: With several servers, the longest one attempt of a call may take before the next
#: server is tried: a leader that froze (SIGSTOP, a stalled VM or network) would
#: otherwise hold every call for the client's whole timeout while a standby takes
#: over within its lease (10 s by default).
ATTEMPT_TIMEOUT = 10.0
#: Codes after which a call is tried again on another server (with several): it could
#: not reach one (UNAVAILABLE), the server stopped serving in the middle of it (a
#: leader stepping down ends its calls: CANCELLED), or one attempt took longer than
#: ``ATTEMPT_TIMEOUT`` (DEADLINE_EXCEEDED, while the call's own timeout lasts).
#: The largest answer a Client takes (gRPC's default is 4 MiB): a run's task runs come
#: in one GetFlowRun answer, ~250 bytes each and more with failures and tracebacks, so
#: a 40,000-task run, or 5,000 failed ones, is over 4 MiB. Results are not in it: large
#: ones are described and fetched by reference. As large as Temporal's clients take.
MAX_ANSWER_BYTES = 256 << 20
#: The length of a whole flow run id (32 hex digits); a shorter one is a prefix.
RUN_ID_LENGTH = ID_LENGTH
#: Flow runs asked for per ListFlowRuns call (the most a server returns at once).
LIST_PAGE = 1000
#: A call that streams from a server that stopped answering ends after at most
#: KEEPALIVE_TIME + KEEPALIVE_TIMEOUT: a frozen leader (SIGSTOP, a stalled VM) keeps its
#: connections open and silent, and a watch on it (``wait``, ``runs watch``) waited
#: until it resumed. While a call is open, gRPC pings the server every KEEPALIVE_TIME
#: ms, and a ping not answered within KEEPALIVE_TIMEOUT ms ends the connection's calls
#: with UNAVAILABLE, which a watch follows to the next server (or watches again). The
#: server lets clients ping that often (``min_ping_interval_without_data_ms``).
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 5_000
_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_ANSWER_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # Recent gRPC cores time a keepalive ping out by this one (default 1 minute).
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.max_pings_without_data", 0),  # a quiet watch is checked all along
)
_FAILOVER_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}
)
#: Pause between attempts to watch again a run whose one server went away (restarts).
REWATCH_PAUSE = 0.5


class ServerError(Exception):
    """The control plane refused a request or could not be reached; one clear line.

    Args:
        message: what failed and, where one is known, the fix.
        code: the gRPC status of the failed call (None when no call was made).
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class ClientClosed(RuntimeError):
    """A call on a Client after its ``close()`` (or the end of its ``with`` block)."""


@dataclass(frozen=True)
class ValueInfo:
    """A result described without carrying it: its size, encoding and a short preview
    (what the server shows of a value it never decodes; empty for pickles)."""

    size_bytes: int
    encoding: str
    preview: str


@dataclass
class TaskRunInfo:
    """A task run as the server reports it.

    Attributes:
        key: its key in the flow run (``task`` or ``task[i]`` for mapped child i).
        task_id: the task node it runs.
        state: its current state.
        attempts: attempts made (handed out for running; one cancelled or lost before
            it started counts).
        states: every state it went through, in order.
        message: why it is in its state, for people.
        worker: the worker that runs (or ran) the current attempt.
        child_run_ids: child flow runs it started (a subflow node's, or flows the
            task called), oldest first.
        failure: its last failure (type, message, traceback), unless it ended well
            (SUCCESS, CACHED, SKIPPED, MAPPED: None, as in an embedded run; its
            ``states`` still show a failed attempt before).
        waiting: why it waits for a worker (e.g. ``waiting: no connected worker offers
            etl.load``), when it does.
        result: its result described (fetch the value with ``Client.task_result``).
        started_at: when its first attempt started running.
        ended_at: when it reached its final state.
        run_seconds: how long its attempts ran, added up (each from its start to its
            end: the pauses between attempts, and the time before a run retry, are not
            counted); None when none has ended yet.
    """

    key: str
    task_id: str
    state: TaskRunState
    attempts: int
    states: list[TaskRunState] = field(default_factory=list)
    message: str = ""
    worker: str = ""
    child_run_ids: list[str] = field(default_factory=list)
    waiting: str = ""
    failure: FailureInfo | None = None
    result: ValueInfo | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    map_index: int = -1
    run_seconds: float | None = None

    @property
    def duration(self) -> float | None:
        """Seconds from its first start to its end; None when not both are known."""
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()

    @property
    def attempt(self) -> int:
        """The number of its current (last) attempt, ``attempts``: as an embedded run's
        ``TaskRunRecord.attempt``, so code reading either works on both (it raised
        AttributeError on a server's run, a user trial)."""
        return self.attempts


@dataclass(frozen=True)
class WaitingInfo:
    """Task runs of one task that wait for one reason (``Client.waiting``).

    Attributes:
        task_id: the task node they run.
        reason: why they wait, as ``TaskRunInfo.waiting`` says it (e.g. ``waiting: no
            connected worker offers etl.load``).
        count: how many of the task's task runs wait for it.
        first_key: the key of the first of them (``task``, or ``task[i]`` for a mapped
            task's child).
    """

    task_id: str
    reason: str
    count: int
    first_key: str


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
    #: For a child flow run (a subflow, or a flow a task started): the parent run.
    parent_id: str = ""
    #: For a child flow run: the parent's task run that stands for it (RUN_ID/KEY).
    parent_task_run_id: str = ""
    #: When the run was created, started and ended (None until it has).
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    #: The flow's result described (size, encoding, preview), once it succeeded.
    result_info: ValueInfo | None = None
    #: Who created, cancelled or retried the run, oldest first (filled by ``get``).
    audit: list[AuditEntry] = field(default_factory=list)
    #: The run attempt: 1, and one more each time it was retried from its failure.
    attempt: int = 1
    #: When the current run attempt started (``started_at`` for the first; None until
    #: it has).
    attempt_started_at: datetime | None = None
    #: Why the run was late (it had not started within the server's late threshold);
    #: "" when it was not.
    late_reason: str = ""
    #: For a FAILED run: the ids of its tasks that raised or timed out (each once,
    #: sorted), with or without its task runs; [] for a run in any other state.
    failed_task_ids: list[str] = field(default_factory=list)
    _result: payload_pb2.Value | None = field(default=None, repr=False)
    _result_omitted: bool = field(default=False, repr=False)
    _client: Client | None = field(default=None, repr=False)

    @property
    def failures(self) -> list[TaskRunInfo]:
        """The task runs that failed (FAILED, TIMED_OUT, TRIGGER_FAILED...), as
        ``FlowRun.failures`` lists them for an embedded run. Read from its task runs:
        a run from ``wait``, or from ``get(..., include_task_runs=True)``, has them; [] for
        one read without them (``get`` by default, ``list_runs``)."""
        return [t for t in self.task_runs if t.state.is_failure]

    def _repr_html_(self) -> str:
        """The run as a notebook shows it, as an embedded ``FlowRun`` (its tasks when
        it was read with them)."""
        from ._cli_render import summary_rows
        from ._html import run_html

        rows = summary_rows(self.task_runs)
        return run_html(self.flow_name, self.state.name, self.id, self.duration, self.message, rows)

    def task_run(self, key: str) -> TaskRunInfo:
        """The run of task ``key`` (a task id, or ``id[i]`` for mapped child i), as
        ``FlowRun.task_run`` of an embedded run; KeyError naming some keys when there is
        none (a run read without its task runs has none: ``wait``, or ``get(...,
        include_task_runs=True)``, reads them)."""
        for task_run in self.task_runs:
            if task_run.key == key:
                return task_run
        known = ", ".join(t.key for t in self.task_runs[:10]) or "none read"
        raise KeyError(f"no task run {key!r} in this flow run (some keys: {known})")

    @property
    def result(self) -> Any:
        """The flow's return value (decoded) once the run succeeded, else None. A
        result too large to come with the run is fetched now (GetFlowRunResult), its
        large parts downloaded in chunks."""
        if self._client is None:
            return None
        if self._result is None and self._result_omitted:
            self._result = self._client._flow_result(self.id)
        if self._result is None:
            return None
        return self._client._decode(self._result)

    @property
    def duration(self) -> float | None:
        """Seconds from start to end; None until the run has ended."""
        if self.started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.started_at).total_seconds()

    @property
    def attempt_duration(self) -> float | None:
        """Seconds from the current run attempt's start to the end (``duration`` for a
        run never retried); None until the run has ended."""
        if self.attempt_started_at is None or self.ended_at is None:
            return None
        return (self.ended_at - self.attempt_started_at).total_seconds()


class Client(OperationsClient):
    """A connection to a Headwater control plane (the operations methods, from
    ``retry`` to ``list_webhooks``, are described in docs/operations.md).

    Args:
        address: ``HOST:PORT`` of ``headwater server`` (default: HEADWATER_SERVER), or
            several comma-separated: servers sharing one PostgreSQL database, of which
            the client uses the leader (see below).
        token: bearer token (default: the HEADWATER_TOKEN environment variable).
        timeout: seconds each call may take.
        tls: speak TLS, verifying the server with the system's roots (default:
            HEADWATER_TLS; implied by ``tls_ca`` or ``tls_cert``).
        tls_ca: the CA certificate (PEM file) that signed the server's certificate
            (default: HEADWATER_TLS_CA).
        tls_cert: a client certificate (PEM file) for a server that requires one
            (mutual TLS; default: HEADWATER_TLS_CERT).
        tls_key: the client certificate's private key (default: HEADWATER_TLS_KEY).

    With several addresses, a call a standby refuses, or that cannot reach its server,
    is tried again on the leader the standby named or the next address, until the
    call's ``timeout`` runs out (a takeover takes up to the servers' lease time). A
    run created without an idempotency key gets one made by the client, so that a
    retried ``run`` cannot create the run twice. A watch (``watch``, ``wait``) also
    rides out a restart of a single server, for up to ``timeout``, and so do the calls
    that are safe to send again (reads, ``deploy``, ``run``, ``cancel``) once this
    client has reached its server: one that never did fails at once.
    """

    def __init__(
        self,
        address: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        *,
        tls: bool | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        if address is not None and not isinstance(address, str):
            raise TypeError(f"address must be 'HOST:PORT' (a str), got {address!r}")
        if _seconds(timeout, "timeout") <= 0:
            # (None was taken, then every call failed: "unsupported operand type(s)")
            raise ValueError(f"timeout must be more than 0 seconds, got {timeout!r}")
        secure = TLSSettings.from_env(enabled=tls, ca=tls_ca, cert=tls_cert, key=tls_key)
        settings = ConnectionSettings.from_env(server=address, token=token, tls=secure)
        if not settings.server:
            raise ValueError("no server given: pass Client('HOST:PORT') or set HEADWATER_SERVER")
        self.address: str = settings.server
        self._addresses = Addresses(self.address)
        self.timeout = timeout
        self.tls = settings.tls
        self._metadata = settings.metadata()
        self._channels: dict[str, grpc.Channel] = {}
        #: A call has succeeded: an unreachable server is then ridden out (a restart).
        self._reached = False
        self._closed = False
        #: Addresses tried in a row, in the call under way, where no server answered.
        self._silent = 0
        #: Each server's max_parameter_bytes, by address, once asked (``_inline_bound``).
        self._parameter_limits: dict[str, int] = {}
        self._use(self._addresses.current)

    def _use(self, address: str) -> None:
        """Send calls to ``address`` from now on (its channel is kept for reuse)."""
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = open_channel(address, self.tls, _CHANNEL_OPTIONS)
        self._channel = channel
        self._control = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        self._access = access_pb2_grpc.AccessServiceStub(channel)
        self._operations = operations_pb2_grpc.OperationsServiceStub(channel)
        self._transfer = PayloadTransfer(channel, self._metadata, patient=False)

    def close(self) -> None:
        """Close the gRPC channels (also done on leaving a ``with Client(...)`` block);
        the Client takes no call after it."""
        self._closed = True
        for channel in self._channels.values():
            channel.close()

    def _check_open(self) -> None:
        # (gRPC's own "Cannot invoke RPC on closed channel!" said nothing of the Client)
        if self._closed:
            raise ClientClosed(
                f"this Client of {self.address} is closed (close(), or the end of its "
                "with block): make a new Client"
            )

    def __enter__(self) -> Client:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _failover(self, error: BaseException, deadline: float, tried: list[str]) -> bool:
        """After a call failed with ``error``: whether to try again, on the leader a
        standby named or the next address (only with several addresses, only for
        ``_FAILOVER_CODES``, and only until ``deadline``; with one, only the same server
        again after it refused the call as a standby). Calls that create something
        are safe to send again: a run carries its idempotency key, a flow its digest."""
        code = error.code() if isinstance(error, grpc.RpcError) else None
        unreachable = code in _FAILOVER_CODES or (
            isinstance(error, PayloadTransferError) and "UNAVAILABLE" in str(error)
        )
        if time.monotonic() >= deadline:
            return False
        if not self._addresses.several:
            # One server standing by until its lease runs out (restarted after a crash,
            # on PostgreSQL): the call was not taken, so it is sent again once the lease
            # is its own (every CLI command failed at once meanwhile; a user trial).
            if not (isinstance(error, grpc.RpcError) and _standing_by(error)):
                return False
            time.sleep(FAILOVER_PAUSE)
            return True
        if not unreachable:
            return False
        tried.append(self._addresses.current)
        if not self._reached and _nobody_answered(error):
            self._silent += 1
            if self._silent >= len(self._addresses.all):
                # A whole round of addresses where no server listens, from a client that
                # never reached one: fail now, as with one address (it waited out the
                # 30 s timeout; a user trial). A standby's refusal is an answer: a
                # client started during a failover still waits for the new leader.
                return False
        else:
            self._silent = 0
        hint = leader_hint(error) if isinstance(error, grpc.RpcError) else ""
        self._use(self._addresses.advance(hint))
        if len(tried) % len(self._addresses.all) == 0:  # a whole round: nobody leads yet
            time.sleep(FAILOVER_PAUSE)
        return True

    def _retrying(self, attempt: Callable[[], _T], deadline: float, ride: bool = False) -> _T:
        """``attempt()``, tried again on another server while ``_failover`` says so.
        ``ride`` (a call that is safe to send again: a read, a cancel, a create that
        carries its key): also on the same server while it is away (a restart,
        ``_rewatch``), if this client has reached it before; a client that never
        reached its server fails at once (a wrong address should not wait out the
        timeout)."""
        tried: list[str] = []
        self._silent = 0
        while True:
            try:
                result = attempt()
            except (grpc.RpcError, PayloadTransferError) as exc:
                if self._failover(exc, deadline, tried):
                    continue
                # (a refusal because its store cannot serve now: it was reached)
                reached = self._reached or refusal_cause(exc) == CAUSE_STORE
                if not (
                    ride
                    and reached
                    and isinstance(exc, grpc.RpcError)
                    and _rewatch(exc, deadline, tried, self._addresses.current)
                ):
                    raise
            else:
                self._reached = True
                return result

    # ------------------------------------------------------------------ calls

    def _call(
        self,
        method: Callable[
            [control_plane_pb2_grpc.ControlPlaneServiceStub],
            grpc.UnaryUnaryMultiCallable[_Req, _Resp],
        ],
        request: _Req,
        what: str,
        timeout: float | None = None,
        *,
        ride: bool = False,
    ) -> _Resp:
        """A ControlPlaneService call (``method`` picks it from the stub of the server
        in use, so that a call tried again goes to the next server); ``ride``: it is
        safe to send again, so a restart of the server is waited out (``_retrying``)."""
        return self._invoke(lambda: method(self._control), request, what, timeout, ride)

    def _ops_call(
        self,
        method: Callable[
            [operations_pb2_grpc.OperationsServiceStub],
            grpc.UnaryUnaryMultiCallable[_Req, _Resp],
        ],
        request: _Req,
        what: str,
        timeout: float | None = None,
    ) -> _Resp:
        """An OperationsService call (as ``_call``)."""
        return self._invoke(lambda: method(self._operations), request, what, timeout)

    def _invoke(
        self,
        method: Callable[[], grpc.UnaryUnaryMultiCallable[_Req, _Resp]],
        request: _Req,
        what: str,
        timeout: float | None,
        ride: bool = False,
    ) -> _Resp:
        self._check_open()
        limit = timeout or self.timeout
        deadline = time.monotonic() + limit

        def attempt() -> _Resp:
            remaining = max(0.1, deadline - time.monotonic())
            if self._addresses.several:
                remaining = min(remaining, ATTEMPT_TIMEOUT)
            return method()(request, metadata=self._metadata, timeout=remaining)

        try:
            return self._retrying(attempt, deadline, ride)
        except grpc.RpcError as exc:
            too_large = over_message_limit(exc, request)
            if too_large is not None:
                raise ServerError(f"{what}: {too_large}", exc.code()) from None
            raise _server_error(
                exc, self._addresses.current, what, self.tls, self._addresses
            ) from None

    def server_info(self) -> dict[str, Any]:
        """The server's ``server_version``, ``protocol_version``, ``features`` and
        ``max_parameter_bytes`` (the largest parameter it takes inline: larger ones are
        uploaded); a cheap call to check that the server is reachable and the token
        accepted."""
        info = self._call(
            lambda c: c.GetServerInfo, cp.GetServerInfoRequest(), "server info", ride=True
        )
        # (0: a server that does not say, which takes 1 MiB.)
        limit = info.max_parameter_bytes or INLINE_PAYLOAD_LIMIT
        self._parameter_limits[self._addresses.current] = limit  # (``_inline_bound``)
        return {
            "server_version": info.server_version,
            "protocol_version": info.protocol_version,
            "features": list(info.features),
            "max_parameter_bytes": limit,
        }

    def deploy(self, flow: Flow[..., Any], params: Mapping[str, Any] | None = None) -> str:
        """Register a flow; returns its version (an identical graph keeps its version).

        A flow whose body uses its parameters as values has a graph per set of values:
        ``params`` chooses the one registered, a build (``VERSION@DIGEST``, docs/flows.md).
        On a server with a retention period, a build no run or schedule has used for
        that long is deleted: pin it in a schedule, or deploy again before running it
        by version."""
        _check_flow(flow, "deploy", names=False)
        msg, _ = self._compile(flow, params, complete=False)
        return self._register(msg)

    def _register(self, msg: graph_pb2.FlowGraph) -> str:
        response = self._call(
            lambda c: c.RegisterFlow,
            cp.RegisterFlowRequest(graph=msg),
            f"register flow {msg.name!r}",
            ride=True,
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
        return compile_graph(flow, given, values, self._encoder, self._pinner(), for_run=complete)

    def _encoder(self, value: Any, portable: bool) -> payload_pb2.Value:
        return self._encode(value, portable=portable)

    def _pinner(self) -> Callable[[Flow[..., Any]], str]:
        """Registers the graphs of the subflows a flow calls (once each, recursively)
        and gives the version each subflow node runs: its one graph when its structure
        does not depend on its parameters, else "" (the server has a worker build one
        for each child run's values)."""
        from ._graphs import subflow_graph

        pinned: dict[int, str] = {}

        def pin(flow: Flow[..., Any]) -> str:
            key = id(flow)
            if key not in pinned:
                pinned[key] = ""  # a flow that calls itself: its own call is not pinned
                msg = subflow_graph(flow, self._encoder, pin)
                if msg is not None:
                    pinned[key] = self._register(msg)
            return pinned[key]

        return pin

    def run(
        self,
        flow: Flow[..., Any] | str,
        params: Mapping[str, Any] | None = None,
        *,
        version: str = "",
        idempotency_key: str = "",
        parent_task_run: str = "",
        parent_attempt: int = 0,
    ) -> RemoteFlowRun:
        """Create a flow run. A Flow object's parameters are checked against its
        annotations here, and its graph for them is registered first (docs/flows.md).
        A flow name runs a registered version; when its graph depends on the values, a
        worker that offers the flow builds one for them (the server says so when none
        is connected). The same idempotency key returns the run the first call
        created (with the same parameters; other parameters are refused,
        ALREADY_EXISTS naming the run it made). ``parent_task_run`` (``RUN_ID/KEY``)
        and ``parent_attempt`` start the run as a child of that running task attempt
        (cancelled when it ends); a flow called inside a task on a worker does this by
        itself."""
        _check_flow(flow, "run", names=True)
        name, version, values = self._prepare(flow, params, version)
        if not idempotency_key:
            # A create sent again (to another server, or to this one after a restart)
            # must not make a second run.
            idempotency_key = f"client:{uuid.uuid4().hex}"
        response = self._call(
            lambda c: c.CreateFlowRun,
            cp.CreateFlowRunRequest(
                flow_name=name,
                flow_version=version,
                parameters=values,
                idempotency_key=idempotency_key,
                # The caller's current span (if any) becomes the flow span's parent.
                trace_context=inject(),
                parent_task_run_id=parent_task_run,
                parent_attempt=parent_attempt,
            ),
            f"run flow {name!r}",
            ride=True,
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
            return flow, version, {k: self._encode_by_name(v) for k, v in (params or {}).items()}
        msg, values = self._compile(flow, params, complete=True)
        return flow.name, version or self._register(msg), values

    def get(self, run_id: str, include_task_runs: bool = False) -> RemoteFlowRun:
        """A flow run by id as it is now; with ``include_task_runs``, also every task
        run's state, attempts, state history and worker. ServerError if it does not exist."""
        _check_id(run_id)
        response = self._call(
            lambda c: c.GetFlowRun,
            cp.GetFlowRunRequest(id=run_id, include_task_runs=include_task_runs),
            f"get flow run {run_id!r}",
            ride=True,
        )
        run = self._remote(response.flow_run)
        run.task_runs = [task_run_info(t) for t in response.task_runs]

        run.audit = [audit_entry(e) for e in response.audit]
        return run

    def waiting(self, run_id: str) -> list[WaitingInfo]:
        """Why a flow run's task runs wait for a worker, one entry per task and reason:
        what ``get(run_id, include_task_runs=True)`` says in each waiting task run's
        ``waiting``, without reading the task runs (the 100,000 waiting children of a
        wide map are one entry, where their task runs make a 22 MB answer). Empty when
        none waits or the run has ended. ServerError if it does not exist."""
        _check_id(run_id)
        response = self._call(
            lambda c: c.GetFlowRun,
            cp.GetFlowRunRequest(id=run_id, include_waiting=True),
            f"get flow run {run_id!r}",
            ride=True,
        )
        return [WaitingInfo(w.task_id, w.reason, w.count, w.first_key) for w in response.waiting]

    def audit(
        self, object_kind: str = "", object_id: str = "", limit: int = 100
    ) -> list[AuditEntry]:
        """Who did what, newest first: about one kind of object (one of
        ``headwater.wire.AUDIT_KINDS``: "flow", "flow_run", "schedule", "limit",
        "worker", "credential"; the server refuses any other) or one object (a run id, a
        schedule id, a flow's "NAME:VERSION", a limit's tag, a name) when given; at most
        ``limit`` entries (1..1000). A unique prefix of a run's or schedule's id names
        it, as for ``get`` (every listing prints ids cut to 8 digits, and they found
        nothing, silently: a user trial)."""
        if (
            isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 1 <= limit <= AUDIT_PAGE_MAX
        ):
            # (0 was taken as the server's default page, and 1001 refused as page_size)
            raise ValueError(f"limit must be in 1..{AUDIT_PAGE_MAX}, got {limit!r}")
        entries = self._audit_page(object_kind, object_id, limit)
        whole = "" if entries else self._whole_object_id(object_kind, object_id)
        return self._audit_page(object_kind, whole, limit) if whole else entries

    def _audit_page(self, object_kind: str, object_id: str, limit: int) -> list[AuditEntry]:
        response = self._call(
            lambda c: c.ListAuditEntries,
            cp.ListAuditEntriesRequest(
                object_kind=object_kind, object_id=object_id, page_size=limit
            ),
            "list audit entries",
            ride=True,
        )
        return [audit_entry(e) for e in response.entries]

    def _whole_object_id(self, kind: str, given: str) -> str:
        """The whole id of the one run or schedule ``given`` is a prefix of ("" when it
        is none, or several)."""
        if not given or len(given) >= ID_LENGTH or kind not in ("", "flow_run", "schedule"):
            return ""
        if any(c not in "0123456789abcdefABCDEF" for c in given):
            return ""
        found: set[str] = set()
        if kind in ("", "flow_run"):
            with contextlib.suppress(ServerError):  # (none, or several: not a run's)
                found.add(self.get(given).id)
        if kind in ("", "schedule"):
            with contextlib.suppress(ValueError):  # (several)
                ids = [s.id for s in self.list_schedules()]
                whole = whole_id(given, lambda: ids, "schedule")
                if whole in ids:
                    found.add(whole)
        return found.pop() if len(found) == 1 else ""

    # ------------------------------------------------------------ credentials

    def create_token(
        self, name: str, role: str, *, subject: str = ""
    ) -> tuple[CredentialInfo, str]:
        """Create a named credential with a role (admin only) and return it with its
        token, which the server shows only this once. With ``subject``, a client
        certificate with that subject stands in for a token, and the token is ""."""
        response = self._call(
            lambda _: self._access.CreateCredential,
            access_pb2.CreateCredentialRequest(name=name, role=role, subject=subject),
            f"create credential {name!r}",
        )
        return credential_info(response.credential), response.token

    def list_tokens(self, include_revoked: bool = False) -> list[CredentialInfo]:
        """The server's credentials, oldest first (admin only)."""
        response = self._call(
            lambda _: self._access.ListCredentials,
            access_pb2.ListCredentialsRequest(include_revoked=include_revoked),
            "list credentials",
        )
        return [credential_info(c) for c in response.credentials]

    def revoke_token(self, name: str) -> CredentialInfo:
        """Revoke a credential (admin only): calls with it fail from now on."""
        response = self._call(
            lambda _: self._access.RevokeCredential,
            access_pb2.RevokeCredentialRequest(name=name),
            f"revoke credential {name!r}",
        )
        return credential_info(response.credential)

    def list_runs(
        self,
        flow_name: str = "",
        limit: int = 50,
        *,
        states: Iterable[FlowRunState] = (),
        since: datetime | None = None,
        until: datetime | None = None,
        schedule_id: str = "",
    ) -> list[RemoteFlowRun]:
        """The most recent flow runs, newest first: at most ``limit`` (fetched 1,000 a
        page), only those of ``flow_name``, in ``states``, created in [``since``,
        ``until``) and by ``schedule_id`` when given (the id, the schedule's name, or a
        prefix of the id only one schedule has; ServerError for an ambiguous one). Task
        runs are not included (see ``get``)."""
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if not isinstance(schedule_id, str):
            raise TypeError(f"schedule_id is a str, got {type(schedule_id).__name__}")
        request = cp.ListFlowRunsRequest(
            flow_name=flow_name,
            states=[state_pb2.FlowRunState.ValueType(s.value) for s in states],
            schedule_id=schedule_id,
        )
        if since is not None:
            request.created_after.FromDatetime(since.astimezone(UTC))
        if until is not None:
            request.created_before.FromDatetime(until.astimezone(UTC))
        runs: list[RemoteFlowRun] = []
        while True:
            request.page_size = min(LIST_PAGE, limit - len(runs))
            response = self._call(lambda c: c.ListFlowRuns, request, "list flow runs", ride=True)
            runs.extend(self._remote(r) for r in response.flow_runs)
            if len(runs) >= limit or not response.next_page_token:
                return runs
            request.page_token = response.next_page_token

    def watch(
        self, run_id: str, *, task_runs: bool = True, timeout: float | None = None
    ) -> Iterator[tuple[RemoteFlowRun, TaskRunInfo | None]]:
        """Yield the run now, then after every state change until it ends: with the
        task run that changed, or (``task_runs=False``) only when the flow run's own
        state changes. Changes stored before the watch began are not yielded (``get(run,
        include_task_runs=True)`` has every task run), and the changes one commit stored
        come with one reading of the run made as they are delivered: the run's state
        beside a task run's change may be later than it (a fast run's task changes can
        come with its SUCCESS).

        A server that goes away (a restart: runs survive it) is watched again, every
        half second for up to the client's ``timeout``; the watch then
        starts over from the run's current state, so a change may be yielded twice.

        ``timeout``: seconds to watch at most (None: until the run ends); then
        TimeoutError."""
        _check_id(run_id)
        self._check_open()
        request = cp.WatchFlowRunRequest(id=run_id, flow_run_only=not task_runs)
        tried: list[str] = []
        deadline = 0.0
        until = None if timeout is None else time.monotonic() + _seconds(timeout, "timeout")
        first = True
        while True:
            left = None if until is None else until - time.monotonic()
            if left is not None and left <= 0:
                if first:  # (no time to watch: a run that has ended is still the answer)
                    run = self.get(run_id)
                    if run.state.is_terminal:
                        yield run, None
                        return
                raise TimeoutError(f"flow run {run_id!r} has not ended after {timeout:g}s")
            first = False
            try:
                watching = self._control.WatchFlowRun(
                    request, metadata=self._metadata, timeout=left
                )
                for change in watching:
                    tried.clear()
                    task = None
                    if change.HasField("task_run"):
                        task = task_run_info(change.task_run)
                    yield self._remote(change.flow_run), task
                return
            except ValueError:  # (gRPC's "closed channel": closed from another thread)
                self._check_open()
                raise
            except grpc.RpcError as exc:
                self._check_open()  # (a watch ended by close() from another thread)
                if until is not None and time.monotonic() >= until:
                    raise TimeoutError(
                        f"flow run {run_id!r} has not ended after {timeout:g}s"
                    ) from None
                if not tried:  # a watch outlives calls: each failover gets the timeout
                    deadline = time.monotonic() + self.timeout
                if not self._failover(exc, deadline, tried) and not _rewatch(
                    exc, deadline, tried, self._addresses.current
                ):
                    where = self._addresses.current
                    what = f"watch flow run {run_id!r}"
                    raise _server_error(exc, where, what, self.tls, self._addresses) from None

    def wait(self, run_id: str, timeout: float | None = None) -> RemoteFlowRun:
        """Block until the run ends (at most ``timeout`` seconds, else TimeoutError);
        returns it."""
        for _change in self.watch(run_id, task_runs=False, timeout=timeout):
            pass
        return self.get(run_id, include_task_runs=True)

    def cancel(self, run_id: str, reason: str = "") -> RemoteFlowRun:
        """Cancel a run: every unfinished task run and the run itself end CANCELLED, and
        workers are told to stop their running attempts. Returns the run after the
        request; a run that had already ended is returned unchanged. ``reason`` becomes
        the run's message."""
        _check_id(run_id)
        response = self._call(
            lambda c: c.CancelFlowRun,
            cp.CancelFlowRunRequest(id=run_id, reason=reason),
            f"cancel flow run {run_id!r}",
            ride=True,
        )
        return self._remote(response.flow_run)

    def _flow_result(self, run_id: str) -> payload_pb2.Value:
        """A finished run's result Value (large parts by reference)."""
        response = self._call(
            lambda c: c.GetFlowRunResult,
            cp.GetFlowRunResultRequest(id=run_id),
            f"get the result of flow run {run_id!r}",
            ride=True,
        )
        return response.result

    def task_result(self, run_id: str, task_id: str, map_index: int = -1) -> Any:
        """A task run's result, decoded (a mapped task's whole list with map_index -1);
        ``run_id`` may be a unique prefix, as for ``get``."""
        _check_id(run_id)
        if len(run_id) < RUN_ID_LENGTH:
            run_id = self.get(run_id).id
        response = self._call(
            lambda c: c.GetTaskRunResult,
            cp.GetTaskRunResultRequest(flow_run_id=run_id, task_id=task_id, map_index=map_index),
            f"get the result of {task_id!r}",
            ride=True,
        )
        return self._decode(response.result)

    def logs(self, run_id: str, task_run_id: str = "", *, task_id: str = "") -> list[LogEntry]:
        """The log records task runs of a flow run wrote (one task run's, if given as
        ``FLOW_RUN_ID/KEY``; one task's with its mapped children, given ``task_id``),
        oldest first. Large runs: ``iter_logs`` reads them a page at a time."""
        return list(self.iter_logs(run_id, task_run_id, task_id=task_id))

    def iter_logs(
        self,
        run_id: str,
        task_run_id: str = "",
        *,
        task_id: str = "",
        follow: bool = False,
        page_size: int = 1000,
    ) -> Iterator[LogEntry]:
        """A flow run's log records, oldest first, read ``page_size`` at a time; with
        ``follow``, then the new ones as the server stores them, until the run has
        ended (``task_run_id`` is not followed: use ``task_id``)."""
        _check_id(run_id)
        self._check_open()
        what = f"logs of flow run {run_id!r}"
        if follow:
            yield from self._follow_logs(run_id, task_id, what)
            return
        token = ""
        while True:
            response = self._call(
                lambda c: c.ListTaskRunLogs,
                cp.ListTaskRunLogsRequest(
                    flow_run_id=run_id,
                    task_run_id=task_run_id,
                    task_id=task_id,
                    page_size=page_size,
                    page_token=token,
                ),
                what,
                ride=True,
            )
            yield from (_log_entry(e) for e in response.entries)
            token = response.next_page_token
            if not token:
                return

    def _follow_logs(self, run_id: str, task_id: str, what: str) -> Iterator[LogEntry]:
        """``iter_logs(follow=True)``: a server that goes away while it is followed (a
        restart: it ended with "cannot reach the server", a user trial) is followed
        again, as ``watch`` does, from the last record read."""
        request = cp.WatchTaskRunLogsRequest(flow_run_id=run_id, task_id=task_id)
        tried: list[str] = []
        deadline = 0.0
        while True:
            try:
                for page in self._control.WatchTaskRunLogs(request, metadata=self._metadata):
                    tried.clear()
                    self._reached = True
                    if page.next_page_token:  # (where a follow that starts again begins)
                        request.page_token = page.next_page_token
                    yield from (_log_entry(e) for e in page.entries)
                return
            except grpc.RpcError as exc:
                self._check_open()
                if not tried:
                    deadline = time.monotonic() + self.timeout
                if not (self._reached or refusal_cause(exc) == CAUSE_STORE) or not (
                    self._failover(exc, deadline, tried)
                    or _rewatch(exc, deadline, tried, self._addresses.current)
                ):
                    raise _server_error(
                        exc, self._addresses.current, what, self.tls, self._addresses
                    ) from None

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
        name: str = "",
    ) -> ScheduleInfo:
        """Create runs of a flow periodically: ``every`` (seconds or a timedelta) or at
        the times of a five-field ``cron`` expression read in ``timezone``. A Flow
        object is deployed first and its version pinned; for a flow name, an empty
        ``version`` runs the latest version at each fire. After downtime only the
        most recent missed time fires, unless ``catchup`` (then every missed time
        does). A Flow object's parameters are checked and its graph for them is
        registered and pinned. A flow name whose graph depends on its parameter values
        is checked (and its values converted) by a worker that offers the flow, which
        also builds the graph for each fire (docs/flows.md). An identical schedule
        that exists (same flow, version, timing, time zone, parameters and catch-up) is
        returned as it is, paused or not, rather than made twice: a deploy script may
        run again. A ``name`` (unique on the server) makes a schedule that replaces the
        one of the same name, when that is the same flow's: a deploy after a change of
        the flow's code, its parameters or its timing changes its schedule rather than
        adding a second one. The replacement keeps the old one's pause (``paused``
        applies to a new name only), and with the same timing its fire times. See
        docs/schedules.md."""
        return self._create_schedule(
            flow, every, cron, params, timezone, paused, catchup, version, name
        )[0]

    def _create_schedule(
        self,
        flow: Flow[..., Any] | str,
        every: float | timedelta | None,
        cron: str | None,
        params: Mapping[str, Any] | None,
        timezone: str,
        paused: bool,
        catchup: bool,
        version: str,
        name: str = "",
    ) -> tuple[ScheduleInfo, bool, str]:
        """``create_schedule``, whether it created the schedule (False: an identical
        one existed), and the id of the schedule of the same name it replaced ("")."""
        if name:  # (before a Flow object is deployed for it)
            check_name("a schedule's name", name)
        flow_name, version, values = self._prepare(flow, params, version)
        msg = schedule_message(
            flow_name, version, every, cron, values, timezone, paused, catchup, name
        )
        response = self._call(
            lambda c: c.CreateSchedule,
            cp.CreateScheduleRequest(schedule=msg),
            f"create a schedule for flow {flow_name!r}",
        )
        info = schedule_info(response.schedule, self._decode)
        return info, response.created, response.replaced

    def list_schedules(self, flow_name: str = "") -> list[ScheduleInfo]:
        """Every schedule on the server (only those of ``flow_name`` if given)."""
        response = self._call(
            lambda c: c.ListSchedules,
            cp.ListSchedulesRequest(flow_name=flow_name),
            "list schedules",
            ride=True,
        )
        return [schedule_info(s, self._decode) for s in response.schedules]

    def _schedule_id(self, given: str) -> str:
        """The whole id of the schedule ``given`` names: its id, its name, or a unique
        prefix of its id (``whole_id``)."""
        listed = self.list_schedules()
        if not any(s.id == given for s in listed):
            named = [s.id for s in listed if given and s.name == given]
            if named:
                return named[0]
        return whole_id(given, lambda: [s.id for s in listed], "schedule")

    def delete_schedule(self, schedule_id: str) -> str:
        """Remove a schedule (its id, its name, or a unique prefix of its id); the runs
        it already created are kept. Returns its whole id."""
        schedule_id = self._schedule_id(schedule_id)
        self._call(
            lambda c: c.DeleteSchedule,
            cp.DeleteScheduleRequest(id=schedule_id),
            f"delete schedule {schedule_id!r}",
        )
        return schedule_id

    def pause_schedule(self, schedule_id: str) -> ScheduleInfo:
        """Stop a schedule (its id, its name, or a unique prefix of its id) from
        creating runs until it is resumed."""
        schedule_id = self._schedule_id(schedule_id)
        response = self._call(
            lambda c: c.PauseSchedule,
            cp.PauseScheduleRequest(id=schedule_id),
            f"pause schedule {schedule_id!r}",
        )
        return schedule_info(response.schedule, self._decode)

    def resume_schedule(self, schedule_id: str) -> ScheduleInfo:
        """Resume a paused schedule (its id, its name, or a unique prefix of its id)
        from its next fire time after now (the times missed while paused do not fire)."""
        schedule_id = self._schedule_id(schedule_id)
        response = self._call(
            lambda c: c.ResumeSchedule,
            cp.ResumeScheduleRequest(id=schedule_id),
            f"resume schedule {schedule_id!r}",
        )
        return schedule_info(response.schedule, self._decode)

    # ----------------------------------------------------------------- values
    # Internal: users pass and get Python values; Value messages stay inside the SDK.

    def _encode(self, value: Any, *, portable: bool = False) -> payload_pb2.Value:
        """A Value for a parameter: inline when it fits the server's parameter limit
        (and 1 MiB), else uploaded in chunks and sent by reference; tagged json (or
        EncodingError) when ``portable``."""
        encoded = encode(value, portable=portable)
        bound = min(INLINE_PAYLOAD_LIMIT, self._inline_bound())
        deadline = time.monotonic() + self.timeout
        try:
            return self._retrying(lambda: self._transfer.value(encoded, bound), deadline)
        except PayloadTransferError as exc:
            raise ServerError(f"{exc} (server {self._addresses.current})") from None

    def _inline_bound(self) -> int:
        """The most bytes a parameter Value may take inline in a request to the current
        server: its max_parameter_bytes (GetServerInfo, asked once per server), which
        counts the whole encoded Value. A parameter between a server's lower limit and
        1 MiB was sent inline and refused, with advice a CLI user could not follow."""
        bound = self._parameter_limits.get(self._addresses.current)
        if bound is None:
            bound = int(self.server_info()["max_parameter_bytes"])  # (it keeps it)
        return bound

    def _encode_by_name(self, value: Any) -> payload_pb2.Value:
        """A parameter of a run by flow name (whose graph the client does not have): a
        list or tuple is sent with its elements too when they fit inline beside it, in
        case a task maps over it (the server does not decode values); else whole."""
        whole = self._encode(value)
        if isinstance(value, list | tuple):
            return with_elements_inline(whole, value, self._inline_bound()) or whole
        return whole

    def _fetch(self, ref: payload_pb2.PayloadRef) -> bytes:
        """The bytes of a stored payload, downloaded in chunks and checked."""
        deadline = time.monotonic() + self.timeout
        try:
            return self._retrying(lambda: self._transfer.download(ref), deadline)
        except PayloadTransferError as exc:
            raise ServerError(f"{exc} (server {self._addresses.current})") from None

    def _decode(self, value: payload_pb2.Value) -> Any:
        """The Python value of a Value message (large values are downloaded)."""
        return decode_value(value, self._fetch)

    def _remote(self, msg: run_pb2.FlowRun) -> RemoteFlowRun:
        summary = msg.result_summary if msg.HasField("result_summary") else None
        return RemoteFlowRun(
            id=msg.id,
            flow_name=msg.flow_name,
            flow_version=msg.flow_version,
            state=FlowRunState(msg.state),
            message=msg.history[-1].message if msg.history else "",
            schedule_id=msg.schedule_id,
            idempotency_key=msg.idempotency_key,
            parent_id=msg.parent_flow_run_id,
            parent_task_run_id=msg.parent_task_run_id,
            created_at=_when(msg, "created_at"),
            started_at=_when(msg, "started_at"),
            ended_at=_when(msg, "ended_at"),
            result_info=_value_info(summary) if summary is not None else None,
            attempt=msg.attempt or 1,
            attempt_started_at=_attempt_start(msg),
            late_reason=msg.late_reason if msg.late else "",
            failed_task_ids=list(msg.failed_task_ids),
            _result=msg.result if msg.HasField("result") else None,
            _result_omitted=summary is not None and summary.omitted,
            _client=self,
        )


def _attempt_start(msg: run_pb2.FlowRun) -> datetime | None:
    """When the run's current attempt started: its last RUNNING entry."""
    running = FlowRunState.RUNNING.value
    for entry in reversed(msg.history):
        if entry.state == running:
            return to_datetime(entry.timestamp)
    return _when(msg, "started_at")


def _when(msg: Any, name: str) -> datetime | None:
    return to_datetime(getattr(msg, name)) if msg.HasField(name) else None


def _value_info(summary: run_pb2.ValueSummary) -> ValueInfo:
    return ValueInfo(summary.size_bytes, summary.encoding, summary.preview)


def _log_entry(e: run_pb2.LogEntry) -> LogEntry:
    return LogEntry(
        task_run_id=e.task_run_id,
        attempt=e.attempt,
        at=to_datetime(e.timestamp),
        level=e.level,
        logger=e.logger,
        message=e.message,
    )


def task_run_info(t: run_pb2.TaskRun) -> TaskRunInfo:
    """A TaskRun message as a TaskRunInfo."""
    state = TaskRunState(t.state)
    failure = None
    # (A task run that ended well has none: after a run retry, one that now succeeded
    # still showed the TriggerFailed of the attempt before, where an embedded FlowRun
    # shows none; a user trial.)
    for entry in () if state.is_success else reversed(t.history):
        if entry.HasField("failure"):
            failure = failure_from_proto(entry.failure)
            break
    running = TaskRunState.RUNNING.value
    started = next((h for h in t.history if h.state == running), None)
    ran: float | None = None
    began = None
    for h in t.history:
        if began is not None:  # the attempt that was running ended here
            ran = (ran or 0.0) + max(0.0, seconds(h.timestamp) - seconds(began.timestamp))
        began = h if h.state == running else None
    return TaskRunInfo(
        key=split_task_run_id(t.id)[1] if TASK_RUN_ID_SEPARATOR in t.id else t.name,
        task_id=t.task_id,
        state=state,
        attempts=t.attempts,
        states=[TaskRunState(h.state) for h in t.history],
        message=t.history[-1].message if t.history else "",
        worker=t.worker_id,
        failure=failure,
        waiting=t.waiting,
        child_run_ids=list(t.child_flow_run_ids),
        result=_value_info(t.result_summary) if t.HasField("result_summary") else None,
        started_at=to_datetime(started.timestamp) if started is not None else None,
        ended_at=(
            to_datetime(t.history[-1].timestamp) if t.history and state.is_terminal else None
        ),
        map_index=t.map_index,
        run_seconds=ran,
    )


def _check_id(run_id: Any) -> None:
    """TypeError for a run id that is not a str ("bad argument type for built-in
    operation", protobuf's, said nothing of it: a user trial)."""
    if not isinstance(run_id, str):
        raise TypeError(f"a flow run id is a str (the whole id or a prefix), got {run_id!r}")


def _check_flow(flow: Any, what: str, *, names: bool) -> None:
    """TypeError for what is not a Flow (or, with ``names``, a flow's name)."""
    from ._flow import Flow

    if isinstance(flow, Flow) or (names and isinstance(flow, str)):
        return
    takes = "a @flow function or a flow's name" if names else "a @flow function"
    raise TypeError(f"{what} takes {takes}, got {type(flow).__name__} {flow!r}"[:300])


def _seconds(value: Any, name: str) -> float:
    """A number of seconds a caller gave (TypeError naming ``name`` for anything else:
    "unsupported operand type(s) for +: 'float' and 'str'" said nothing of it)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    return float(value)


def _standing_by(error: grpc.RpcError) -> bool:
    """Whether a standby refused the call (it took nothing)."""
    return error.code() == grpc.StatusCode.UNAVAILABLE and STANDBY_REFUSAL in (
        error.details() or ""
    )


def _nobody_answered(error: BaseException) -> bool:
    """Whether a failed call found no server at all: UNAVAILABLE that no server sent
    (not a standby's refusal naming or awaiting a leader, not a store's refusal)."""
    if not isinstance(error, grpc.RpcError) or error.code() != grpc.StatusCode.UNAVAILABLE:
        return False
    details = error.details() if hasattr(error, "details") else ""
    return not (STANDBY_REFUSAL in (details or "") or leader_hint(error) or refusal_cause(error))


def _rewatch(error: grpc.RpcError, deadline: float, tried: list[str], address: str) -> bool:
    """After a watch broke with ``error``: whether to watch again on the same server
    (it is unreachable, as while it restarts, or a standby there waits out the lease
    of the leader that died, and ``deadline`` is not past); waits ``REWATCH_PAUSE``
    first. ``tried`` keeps the deadline of this outage."""
    waiting = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    if error.code() not in waiting and refusal_cause(error) != CAUSE_STORE:
        # (CANCELLED: the server stopped serving, as a leader stepping down; a store
        # refusal: RESOURCE_EXHAUSTED too, its disk is full)
        return False
    if time.monotonic() + REWATCH_PAUSE >= deadline:
        return False
    tried.append(address)
    time.sleep(REWATCH_PAUSE)
    return True


def _server_error(
    exc: grpc.RpcError,
    address: str,
    what: str,
    tls: TLSSettings | None = None,
    addresses: Addresses | None = None,
) -> ServerError:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.UNAVAILABLE and STANDBY_REFUSAL in (details or ""):
        return ServerError(f"{what}: the server at {address} refused: {details}", code)
    if refusal_cause(exc) == CAUSE_STORE:  # it answered: its database cannot serve now
        return ServerError(
            f"the server at {address} cannot use its database right now ({what}): {details}",
            code,
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        why = explain_unreachable(address, tls or TLSSettings())
        if why:
            return ServerError(f"{why} ({what})", code)
        if addresses is not None and addresses.several:  # it tried them all
            return ServerError(f"cannot reach any Headwater server of {addresses} ({what})", code)
        return ServerError(f"cannot reach the Headwater server at {address} ({what})", code)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return ServerError(
            f"the server at {address} refused the credential: {details} (give one with "
            "--token on the command line or Client(token=...), or set HEADWATER_TOKEN)",
            code,
        )
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return ServerError(f"the server at {address} refused to {what}: {details}", code)
    if code == grpc.StatusCode.NOT_FOUND and _names_it(what, details or ""):
        return ServerError(str(details), code)  # not "get flow run 'x': flow run 'x' does not..."
    return ServerError(f"{what}: {details}", code)


def _names_it(what: str, details: str) -> bool:
    """Whether an answer names the object the call was about as the call's description
    does (``flow run 'x' does not exist`` for ``get flow run 'x'``): then it says it
    all, and a long id (which the server cuts) is not printed twice."""
    _, _, thing = what.partition(" ")
    noun = thing.split(" '", 1)[0]
    return bool(noun) and details.startswith(f"{noun} '")
