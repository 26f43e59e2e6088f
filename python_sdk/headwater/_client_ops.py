"""The operations part of ``headwater.Client``: retry runs from their failure,
concurrency limits, workers, webhooks (the server's OperationsService,
docs/operations.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

import grpc

from headwater.v1 import operations_pb2 as ops
from headwater.v1 import operations_pb2_grpc, run_pb2, state_pb2
from headwater.wire import FlowRunState, duration, parse_rate, seconds, to_datetime

if TYPE_CHECKING:
    from ._client import RemoteFlowRun

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

#: The length of a whole id (runs, schedules, webhooks: a uuid's hex).
ID_LENGTH = 32


def whole_id(given: str, ids: Callable[[], list[str]], what: str) -> str:
    """The whole id ``given`` names: itself, or a unique prefix of one of ``ids()``
    (asked only for a prefix); one that matches none is sent as it is, for the server
    to say so. ValueError for a prefix several ids have."""
    if not given.strip():  # ("" was the prefix of every id: with one schedule, delete
        # and pause took it; a trial)
        raise ValueError(f"give a {what} id (or a prefix of one); got {given!r}")
    if len(given) >= ID_LENGTH:
        hex_id = all(c in "0123456789abcdefABCDEF" for c in given)
        return given.lower() if hex_id else given  # (ids are lower-case hex)
    known = ids()
    prefix = given.lower()  # (ids are lower-case hex; 0DF2 found none, a user trial)
    matching = [i for i in known if i.startswith(prefix)]
    if given in known or not matching:
        return given
    if len(matching) > 1:
        shown = ", ".join(matching[:3]) + (", ..." if len(matching) > 3 else "")
        raise ValueError(
            f"{what} id prefix {given!r} is ambiguous: {len(matching)} match ({shown}): "
            "give more of the id"
        )
    return matching[0]


@dataclass(frozen=True)
class LimitInfo:
    """A concurrency and/or rate limit on a task tag, with its current use.

    Attributes:
        tag: the tag (``@task(tags=[...])``).
        concurrency: most attempts with the tag running at once (0: not limited).
        rate: most attempts started per ``rate_period`` seconds (0: not limited).
        rate_period: the rate's period in seconds.
        running: attempts holding a slot now.
        waiting: attempts waiting on the limit now.
    """

    tag: str
    concurrency: int
    rate: int
    rate_period: float
    running: int
    waiting: int


@dataclass(frozen=True)
class WorkerInfo:
    """A worker as the server knows it.

    Attributes:
        name: its name (``--name``; default ``HOSTNAME-PID``).
        online: whether it is connected now.
        capabilities: the task types it runs.
        labels: its labels.
        slots_used: attempts it holds now.
        slots: most attempts it runs at once.
        last_heartbeat: the last message received from it.
        version: its SDK (or worker library) version.
        language: its language.
        hostname: its host.
        draining: it takes no new attempts (``workers drain``).
        exit_when_idle: it was asked to exit once it holds no attempt.
    """

    name: str
    online: bool
    capabilities: list[str]
    labels: dict[str, str]
    slots_used: int
    slots: int
    last_heartbeat: datetime | None
    version: str
    language: str = ""
    hostname: str = ""
    draining: bool = False
    exit_when_idle: bool = False
    worker_id: str = ""


@dataclass(frozen=True)
class WebhookInfo:
    """A webhook: where flow run state changes are POSTed.

    Attributes:
        id: its id.
        url: the URL.
        flows: only runs of these flows (empty: every flow).
        states: only changes to these states (empty: every state).
        late: also told when a run is late.
        pending: deliveries not made yet.
        failed: deliveries given up.
        last_error: why the latest failed try failed.
    """

    id: str
    url: str
    flows: list[str] = field(default_factory=list)
    states: list[FlowRunState] = field(default_factory=list)
    late: bool = False
    pending: int = 0
    failed: int = 0
    last_error: str = ""


class OperationsClient:
    """The operations methods of ``Client`` (a mixin: ``Client`` provides the channel,
    the calls, tried again on another server, and the error handling)."""

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
        raise NotImplementedError  # Client._ops_call (tried again on another server)

    def _remote(self, msg: run_pb2.FlowRun) -> RemoteFlowRun:
        raise NotImplementedError  # Client._remote

    # ---------------------------------------------------------------- retries

    def retry(self, run_id: str, reason: str = "") -> RemoteFlowRun:
        """Run a FAILED or CANCELLED flow run again from its failure, in place: the same
        run id, its next run attempt (``RemoteFlowRun.attempt``). Task runs that
        succeeded are kept with their results; failed, timed out, cancelled and not-run
        ones run again, and a mapped task reruns only its failed children. ServerError
        (FAILED_PRECONDITION) for a run in another state."""
        response = self._ops_call(
            lambda s: s.RetryFlowRun,
            ops.RetryFlowRunRequest(id=run_id, reason=reason),
            f"retry flow run {run_id!r}",
        )
        return self._remote(response.flow_run)

    # ----------------------------------------------------------------- limits

    def set_limit(
        self, tag: str, *, concurrency: int = 0, rate: str | tuple[int, float] | None = None
    ) -> LimitInfo:
        """Limit the task runs of tasks tagged ``tag`` (``@task(tags=[tag])``) across
        every flow run and worker: at most ``concurrency`` running at once, and/or at
        most ``rate`` starts per period (``"10/s"``, ``"100/m"``, ``(5, 10.0)``).
        Replaces the tag's previous limit; survives server restarts."""
        count, period = (0, 0.0) if rate is None else _rate(rate)
        limit = ops.ConcurrencyLimit(tag=tag, concurrency=concurrency, rate=count)
        if count:
            limit.rate_period.CopyFrom(duration(period))
        response = self._ops_call(
            lambda s: s.SetConcurrencyLimit,
            ops.SetConcurrencyLimitRequest(limit=limit),
            f"set the limit of tag {tag!r}",
        )
        return _limit(response.limit)

    def list_limits(self) -> list[LimitInfo]:
        """Every limit with its current use, by tag."""
        response = self._ops_call(
            lambda s: s.ListConcurrencyLimits, ops.ListConcurrencyLimitsRequest(), "list limits"
        )
        return [_limit(m) for m in response.limits]

    def delete_limit(self, tag: str) -> None:
        """Remove a tag's limit (what waited on it runs)."""
        self._ops_call(
            lambda s: s.DeleteConcurrencyLimit,
            ops.DeleteConcurrencyLimitRequest(tag=tag),
            f"delete the limit of tag {tag!r}",
        )

    # ---------------------------------------------------------------- workers

    def list_workers(self, *, online_only: bool = False) -> list[WorkerInfo]:
        """The workers the server knows, online first (only connected ones with
        ``online_only``)."""
        request = ops.ListWorkersRequest(online_only=online_only)
        workers: list[WorkerInfo] = []
        while True:  # (the server answers in pages)
            response = self._ops_call(lambda s: s.ListWorkers, request, "list workers")
            workers.extend(_worker(w) for w in response.workers)
            if not response.next_page_token:
                return workers
            request.page_token = response.next_page_token

    def drain_worker(self, name: str, *, exit_when_idle: bool = False) -> list[WorkerInfo]:
        """Give the workers of ``name`` no new attempts; they finish what they run (and
        exit once idle with ``exit_when_idle``). Lasts until ``resume_worker``."""
        response = self._ops_call(
            lambda s: s.DrainWorker,
            ops.DrainWorkerRequest(name=name, exit_when_idle=exit_when_idle),
            f"drain worker {name!r}",
        )
        return [_worker(w) for w in response.workers]

    def resume_worker(self, name: str) -> list[WorkerInfo]:
        """Let drained workers of ``name`` take attempts again."""
        response = self._ops_call(
            lambda s: s.ResumeWorker, ops.ResumeWorkerRequest(name=name), f"resume worker {name!r}"
        )
        return [_worker(w) for w in response.workers]

    # --------------------------------------------------------------- webhooks

    def create_webhook(
        self,
        url: str,
        *,
        flows: Iterable[str] = (),
        states: Iterable[FlowRunState | str] = (),
        late: bool = False,
        secret: str = "",
    ) -> WebhookInfo:
        """POST a JSON body to ``url`` when a flow run changes state (only runs of
        ``flows``, only to ``states``, when given), and when a run is late with
        ``late``. Delivered at least once, retried with backoff; with ``secret`` each
        request is signed (docs/operations.md)."""
        # (A str for either was taken as its letters: flows="etl" stored e, t, l and
        # never fired; states="FAILED" said KeyError: 'F'. A user trial.)
        for name, given in (("flows", flows), ("states", states)):
            if isinstance(given, str | FlowRunState):
                raise TypeError(f"{name} must be a list, got {given!r}: write [{given!r}]")
        wanted = [_flow_run_state(s) for s in states]
        hook = ops.Webhook(
            url=url,
            flow_names=list(flows),
            states=[state_pb2.FlowRunState.ValueType(s.value) for s in wanted],
            late=late,
            secret=secret,
        )
        response = self._ops_call(
            lambda s: s.CreateWebhook, ops.CreateWebhookRequest(webhook=hook), "create a webhook"
        )
        return _webhook(response.webhook)

    def list_webhooks(self) -> list[WebhookInfo]:
        """Every webhook, with its pending and failed deliveries."""
        response = self._ops_call(
            lambda s: s.ListWebhooks, ops.ListWebhooksRequest(), "list webhooks"
        )
        return [_webhook(w) for w in response.webhooks]

    def delete_webhook(self, webhook_id: str) -> str:
        """Remove a webhook (its id, or a unique prefix of it, as for schedules and
        runs) and the deliveries it has not made; returns its whole id. ValueError for
        a prefix several webhooks have."""
        webhook_id = whole_id(webhook_id, lambda: [w.id for w in self.list_webhooks()], "webhook")
        self._ops_call(
            lambda s: s.DeleteWebhook,
            ops.DeleteWebhookRequest(id=webhook_id),
            f"delete webhook {webhook_id!r}",
        )
        return webhook_id


def _rate(rate: str | tuple[int, float]) -> tuple[int, float]:
    if isinstance(rate, str):
        return parse_rate(rate)
    count, period = rate
    return int(count), float(period)


def _limit(msg: ops.ConcurrencyLimit) -> LimitInfo:
    return LimitInfo(
        msg.tag, msg.concurrency, msg.rate, seconds(msg.rate_period), msg.running, msg.waiting
    )


def _worker(msg: ops.WorkerInfo) -> WorkerInfo:
    heartbeat = to_datetime(msg.last_heartbeat) if msg.HasField("last_heartbeat") else None
    return WorkerInfo(
        name=msg.name,
        online=msg.online,
        capabilities=list(msg.capabilities),
        labels=dict(msg.labels),
        slots_used=msg.slots_used,
        slots=msg.slots,
        last_heartbeat=heartbeat,
        version=msg.version,
        language=msg.language,
        hostname=msg.hostname,
        draining=msg.draining,
        exit_when_idle=msg.exit_when_idle,
        worker_id=msg.worker_id,
    )


def _webhook(msg: ops.Webhook) -> WebhookInfo:
    return WebhookInfo(
        id=msg.id,
        url=msg.url,
        flows=list(msg.flow_names),
        states=[FlowRunState(s) for s in msg.states],
        late=msg.late,
        pending=msg.pending,
        failed=msg.failed,
        last_error=msg.last_error,
    )


def _flow_run_state(state: FlowRunState | str) -> FlowRunState:
    """A flow run state given as one or by its name (ValueError naming the names)."""
    if isinstance(state, FlowRunState):
        return state
    try:
        return FlowRunState[str(state).upper()]
    except KeyError:
        names = ", ".join(s.name for s in FlowRunState)
        raise ValueError(f"unknown flow run state {state!r}: use one of {names}") from None


__all__ = ["LimitInfo", "OperationsClient", "WebhookInfo", "WorkerInfo"]
