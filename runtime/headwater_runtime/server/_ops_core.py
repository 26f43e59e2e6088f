"""Day-two operations on a running server, on the server's event loop: retrying runs
from their failure, concurrency limits, workers, late runs, webhooks and metrics
(docs/operations.md).

``Operations`` is owned by the ServerCore, which calls its hooks (start, stop, each
timer loop turn, worker sessions beginning and ending); it listens to the run manager
for task and flow run changes. The OperationsService servicer calls its methods.
Each concern lives in a module of its own: _limits.py, _workers.py, _late.py,
_webhooks.py, _metrics.py.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any

from headwater.v1 import operations_pb2, run_pb2, state_pb2
from headwater.wire import (
    MAX_DURATION,
    FlowRunState,
    check_name,
    duration,
    fire_time_of,
    split_task_run_id,
    timestamp,
)
from headwater_runtime.engine import REPLAYS, FlowRunEngine, TaskRunRecord, not_retryable
from headwater_runtime.store import (
    AuditRow,
    DeliveryCounts,
    DrainRow,
    Fenced,
    FlowRunRow,
    LateRow,
    LimitRow,
    NotFound,
    RunAttemptRow,
    Store,
    WebhookRow,
    WorkerRow,
)

from ._assignments import PendingAssignment
from ._dispatch import WorkerSession
from ._io import to_its_end
from ._journal import JournalFormatError
from ._late import NOT_STARTED, LateRuns, late_reason
from ._limits import check_reason
from ._metrics import MetricsServer, ServerMetrics
from ._runs import ActiveRun, Resumed
from ._webhooks import Deliverer, DeliverySettings, Webhooks
from ._workers import WorkerRegistry

if TYPE_CHECKING:
    from headwater.v1 import worker_pb2

    from ._core import ServerCore

log = logging.getLogger("headwater.server")

#: How often worker records (their last message time) are written back.
WORKER_FLUSH = 5.0
#: How often the gauges of in-memory state are set (the loop turns far more often).
SAMPLE_EVERY = 0.5
#: The largest concurrency or rate count a limit takes (what every store can hold).
MAX_LIMIT_COUNT = 2**31 - 1


class RetryRefused(Exception):
    """A run that cannot be retried now (FAILED_PRECONDITION), with why."""


class UnknownWorker(LookupError):
    """No worker of that name is known (NOT_FOUND)."""


class Operations:
    """The server's operations features (see the module docstring).

    Args:
        core: the server.
    """

    def __init__(self, core: ServerCore) -> None:
        self.core = core
        self._marked_late: set[str] = set()  # unfinished runs marked late already
        self._retries = 0  # runs retried so far (``retry``)
        #: Runs being retried (``retry``), by id: how many retries of each are under way.
        self.retrying: dict[str, int] = {}
        settings = core.settings
        now = core.clock.now
        self.limits = core.dispatcher.limits
        self.workers = WorkerRegistry(core.store, core.dispatcher, now)
        self.webhooks = Webhooks(core.store, core.io, now, settings.ui_url)
        self.deliverer = Deliverer(
            self.webhooks,
            DeliverySettings(
                settings.webhook_max_attempts,
                settings.webhook_backoff,
                settings.webhook_backoff_max,
                settings.webhook_timeout,
            ),
            on_outcome=self._delivery_outcome,
        )
        self.late = LateRuns(settings.late_after)
        self.metrics = ServerMetrics(core.store.count_flow_runs)
        self.metrics_server: MetricsServer | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._writes_failing = False  # (a background write failed, none succeeded since)
        self._next_flush = 0.0
        self._next_sample = 0.0
        core.runs.listeners.append(self._task_changed)
        core.runs.ended_listeners.append(self.metrics.ended)
        core.runs.flow_listeners.append(self._flow_changed)
        core.commits.on_commit = self.metrics.commit_seconds.observe

    # ------------------------------------------------------------------ lifecycle

    async def start(self, unfinished: list[str]) -> None:
        """Load limits, workers, drains and webhooks; apply those of the settings;
        start delivering webhooks and serving /metrics. Called before anything is
        dispatched; ``unfinished``: the runs being resumed (``resumed``)."""
        core = self.core
        self._marked_late = await core.io.read(self._load, unfinished)
        for row in core.settings.tag_limits:
            before = self.limits.limits.get(row.tag)
            await self.set_limit(row, audited=False)
            if before is None or limit_detail(before) != limit_detail(row):
                # A change the file made is in the audit log as any other (the log
                # showed the last `limits set` while the file's value applied: a trial).
                entry = AuditRow(
                    core.clock.now(), CONFIG_ACTOR, "limit.set", "limit", row.tag,
                    limit_detail(row),
                )  # fmt: skip
                await core.io.write(core.store.add_audit, entry)
        await self._configured_webhooks()
        now = core.clock.now()
        port = core.settings.metrics_port
        if port is not None:  # (before the deliveries start: a taken port stops the start)
            try:
                self.metrics_server = MetricsServer(self.metrics, core.settings.host, port)
            except OSError as exc:
                where = f"{core.settings.host}:{port}"
                raise OSError(f"cannot serve metrics on {where} ({exc.strerror})") from None
        self.deliverer.start()
        self._next_flush = now + WORKER_FLUSH

    def resumed(self, resumed: Resumed, held: list[tuple[str, int]]) -> None:
        """A run was replayed after a restart, before it is live: the attempts a worker
        held at the crash, and may still hold (``held``), get their leases back, and a
        run none of whose task runs had started is watched for lateness again (unless
        marked late already)."""
        active = resumed.active
        for task_run_id, attempt in held:
            run = active.engine.runs.get(split_task_run_id(task_run_id)[1])
            self.limits.acquire((task_run_id, attempt), run.spec.tags if run else ())
        run_id = active.row.id
        if run_id not in self._marked_late and not _started(active.engine):
            self.late.created(run_id, active.row.started_at or active.row.created_at)

    def _load(self, run_ids: list[str]) -> set[str]:
        store = self.core.store
        for row in store.list_limits():
            self.limits.limits[row.tag] = row
        self.workers.load()
        self.webhooks.load()
        return set(store.late_runs(run_ids))

    async def _configured_webhooks(self) -> None:
        """Create the webhooks of the settings (config file) not stored yet."""
        have = {(w.url, w.flow_names, w.states, w.late) for w in self.webhooks.hooks.values()}
        for hook in self.core.settings.webhooks:
            if (hook.url, hook.flow_names, hook.states, hook.late) not in have:
                await self.webhooks.create(
                    hook.url, hook.flow_names, hook.states, hook.late, hook.secret
                )

    async def stop(self) -> None:
        """Stop delivering and serving; write the workers' last messages."""
        await self.deliverer.stop()
        if self.metrics_server is not None:
            self.metrics_server.close()
        for task in list(self._background):
            task.cancel()
        rows = self.workers.take_dirty()
        if rows:
            try:
                await self.core.io.write(_put_workers, self.core.store, rows)
            except Fenced:  # the new leader keeps its own record of the workers
                log.info("not recording the workers' last messages: another server leads")
            except Exception:
                log.exception("could not record the workers' last messages")

    def tick(self, now: float) -> float | None:
        """One turn of the server's timer loop; when the next turn is needed."""
        dispatcher = self.core.dispatcher
        freed = self.limits.due()
        if freed:
            dispatcher.requeue(freed)
        runs = self.core.runs
        for run_id in self.late.due(now):
            if runs.waiting(run_id):
                # Worked on off the loop meanwhile (its engine changing on a reader
                # thread): checked once it rejoins.
                runs.later(run_id, functools.partial(self._check_late, run_id))
            else:
                self._check_late(run_id, now)
        if now >= self._next_sample:
            self._next_sample = now + SAMPLE_EVERY
            self.metrics.sample(
                dispatcher.queue_depth(), self.limits.waiting_by_tag(), len(dispatcher.sessions)
            )
        if now >= self._next_flush:
            self._next_flush = now + WORKER_FLUSH
            self.workers.seen()
            rows = self.workers.take_dirty()
            if rows:
                self._spawn(
                    self._store_workers(rows),
                    "the workers' last contact (shown by ListWorkers)",
                )
        return self.next_due()

    def next_due(self) -> float:
        """When the next turn of the timer loop is needed for this (a new run's late
        time or a rate window may move it before the one ``tick`` returned)."""
        due = [self._next_flush, self._next_sample]
        for at in (self.limits.next_wake_at, self.late.next_at):
            if at is not None:
                due.append(at)
        return min(due)

    def _check_late(self, run_id: str, now: float | None = None) -> None:
        """Mark a run late unless a task run of it started (its late time came).
        Checked here, once, rather than when the run began: a run started off the loop
        may have had task runs end at once (cache hits) unseen by _task_changed, and
        scanning a 100,000-task run as it is adopted would stall the loop."""
        active = self.core.runs.runs.get(run_id)
        if active is not None and not _started(active.engine):
            self._mark_late(run_id, self.core.clock.now() if now is None else now)

    async def _store_workers(self, rows: list[WorkerRow]) -> None:
        try:
            await self.core.io.write(_put_workers, self.core.store, rows)
        except BaseException:
            self.workers.put_back(rows)  # (stored with the next flush)
            raise

    def _spawn(self, work: Coroutine[Any, Any, Any], what: str) -> None:
        """Write ``what`` in the background (a failure is logged, naming it, once
        until such a write succeeds again: a full disk made one ERROR every 5 s)."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(functools.partial(self._done, what=what))

    def _done(self, task: asyncio.Task[Any], what: str) -> None:
        self._background.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            self._writes_failing = False
        elif isinstance(error, Fenced):  # stepping down: the new leader has its own
            log.info("a background store write was refused: another server leads")
        elif not self._writes_failing:
            self._writes_failing = True
            log.warning("could not store %s (%s); trying again later", what, error)

    # --------------------------------------------------------------- run changes

    def _task_changed(self, flow_run_id: str, run: TaskRunRecord | None) -> None:
        if run is None:
            return
        entry = run.history[-1]
        previous = run.history[-2] if len(run.history) > 1 else entry
        self.metrics.transition(entry.state, previous.state, entry.timestamp - previous.timestamp)
        self.late.started(flow_run_id, entry.state)

    def _flow_changed(self, row: FlowRunRow, engine: FlowRunEngine) -> None:
        if row.state == FlowRunState.RUNNING.value:
            now = self.core.clock.now()
            fired = fire_time_of(row.idempotency_key) if row.schedule_id else None
            if fired is not None and engine.run_attempt == 1:
                late_after = self.late.late_after or 0.0
                if 0 < late_after < now - fired:  # fired after downtime, say so
                    why = f"it was created {now - fired:.0f}s after its schedule's fire time"
                    self._mark_late(row.id, now, f"{why} (the server was not running)", row)
                    return
            self.late.created(row.id, now if fired is None else min(now, fired))
        else:
            self.late.started(row.id, None)
        if self.webhooks.enqueue(self.core.runs.ops, row, engine.run_attempt):
            self.core.commits.pending.effects.append(self.deliverer.wake)

    def _mark_late(
        self, flow_run_id: str, now: float, reason: str = "", row: FlowRunRow | None = None
    ) -> None:
        """Mark a run late (stored with the next commit), with the reason its waiting
        task runs give unless ``reason`` says it."""
        active = self.core.runs.runs.get(flow_run_id)
        row = row or (active.row if active is not None else None)
        if row is None:
            return
        if not reason:
            # The same reasons the API shows for its waiting task runs (ServerCore.waiting).
            reason = late_reason(list(self.core.waiting(flow_run_id, limit=1).values()))
        self.core.runs.ops.late.append(LateRow(flow_run_id, now, reason))
        # Once stored, live views (WatchFlowRun, the web UI) re-read the run: it is late.
        self.core.commits.pending.changed.add(flow_run_id)
        attempt = active.engine.run_attempt if active is not None else 1
        if self.webhooks.enqueue(self.core.runs.ops, row, attempt, late_reason=reason):
            self.core.commits.pending.effects.append(self.deliverer.wake)
        self.metrics.late_runs.inc()
        log.warning("flow run %s (%s) is late: %s", flow_run_id, row.flow_name, reason)
        self.core.touch()

    def _delivery_outcome(self, ok: bool) -> None:
        self.metrics.webhook_deliveries.labels("ok" if ok else "failed").inc()

    # ------------------------------------------------------------------ workers

    def connected(
        self, session: WorkerSession, hello: worker_pb2.Hello, queued: Iterable[PendingAssignment]
    ) -> None:
        """A worker session began; ``queued`` are attempts it adopted from the queue
        (they hold their tags from now)."""
        for pending in queued:
            self.limits.acquire(pending.token, pending.tags)
        self.workers.connected(session, hello)

    def disconnected(self, session: WorkerSession) -> None:
        """A worker session ended."""
        lifted = self.workers.disconnected(session)
        if lifted is not None:
            self._spawn(
                self.core.io.write(self.core.store.delete_drain, lifted.name),
                f"the end of the drain of {lifted.name!r}",
            )

    def limited(self, pending: PendingAssignment) -> bool:
        """Whether any of an attempt's tags has a limit (its delivery is then stored
        before it is sent: _core.ServerCore._before_send)."""
        return any(tag in self.limits.limits for tag in pending.tags)

    def orphan_lost(self, token: tuple[str, int]) -> None:
        """An attempt held at the crash was not reclaimed in time: its leases end."""
        self.core.dispatcher.release(token)

    # --------------------------------------------------------------------- API

    async def retry(self, flow_run_id: str, reason: str) -> None:
        """Retry an ended run from its failure; durable, and audited as the current
        caller's ``retry``, when this returns (RetryRefused, NotFound,
        StoreUnavailable). OperationsService/RetryFlowRun and the web UI both call it."""
        check_reason(reason)
        core = self.core
        if flow_run_id in core.runs.runs:
            raise RetryRefused(f"flow run {flow_run_id} is running; it can be retried once it ends")
        # Kept from a prune (``ServerCore.prune``) until the retry is stored: the store
        # holds the run as ended until then, and a prune that deleted it meanwhile
        # left the retry's commits naming a run no longer stored.
        self.retrying[flow_run_id] = self.retrying.get(flow_run_id, 0) + 1
        try:
            while True:
                retried = self._retries
                active = await core.io.read(self._rebuild, flow_run_id)
                if retried == self._retries:
                    # A prune beside the server, which does not know of this retry,
                    # deleted the run since it was read: NotFound, nothing of the retry
                    # stored. Else the run is no longer old to a prune until the
                    # retry's first commit stores it running.
                    try:
                        await core.io.write(
                            core.store.claim_for_retry,
                            flow_run_id,
                            active.row.state,
                            core.clock.now(),
                        )
                    except NotFound:
                        if flow_run_id not in core.runs.runs and retried == self._retries:
                            raise
                        # (Another retry of it got in and stored it running: below.)
                if flow_run_id in core.runs.runs:  # retried (or resumed) meanwhile
                    raise RetryRefused(f"flow run {flow_run_id} is running again already")
                if retried == self._retries:
                    break
                # A run was retried while this one was read (or claimed). If it was this
                # one and it ended again meanwhile, what was read is its journal from
                # before that retry: retried from it, its entries took sequence numbers
                # already stored and every commit failed. Read it again.
            self._retries += 1
            await to_its_end(self._retried(active, reason), "a retry")
        finally:
            self.retrying[flow_run_id] -= 1
            if not self.retrying[flow_run_id]:
                del self.retrying[flow_run_id]

    async def _retry_run(self, active: ActiveRun, reason: str) -> None:
        """``RunManager.retry``: a run of ``CANCEL_ASIDE`` task runs or more has its
        engine's part made on a reader thread, the run set aside meanwhile (on the loop
        a 20,000-task run's retry held every other call 0.38 s)."""
        runs = self.core.runs
        if not runs.worked_aside(active):
            runs.retry(active, reason)
            return
        runs.begin_retry(active)
        aside = runs.set_aside(active.row.id, working=True)
        assert aside is active, "a run live again just now, not aside"
        work = functools.partial(runs.retry_aside, active, reason)
        await self.core.wide.aside(
            active, f"retrying {active.row.id}", work, lambda _: runs.end_retry(active)
        )

    async def _retried(self, active: ActiveRun, reason: str) -> None:
        """The retry made, stored and audited (carried to its end: ``to_its_end``)."""
        await self._retry_run(active, reason)
        self.core.touch()
        await self.core.durable()
        await self.core.audit("retry", "flow_run", active.row.id, reason)

    def _rebuild(self, flow_run_id: str) -> ActiveRun:
        runs = self.core.runs
        row = runs.store.get_flow_run(flow_run_id)
        why = not_retryable(FlowRunState(row.state), row.parent_flow_run_id, row.parent_task_key)
        if why is not None:
            raise RetryRefused(f"cannot retry flow run {flow_run_id}: {why}")
        if row.engine_version not in REPLAYS:
            raise RetryRefused(
                f"cannot retry flow run {flow_run_id}: its journal is of engine version "
                f"{row.engine_version or '(none)'}, and this server replays only "
                f"{', '.join(sorted(REPLAYS))}"
            )
        try:
            return runs.rebuild(row)
        except JournalFormatError:
            # Its journal and its values are read apart: a prune beside the server
            # (which knows nothing of the retry yet) may delete the run in between. It
            # said "stored value ... is missing" (INVALID_ARGUMENT), a trial.
            try:
                runs.store.get_flow_run(flow_run_id)
            except NotFound:
                raise NotFound(
                    f"flow run {flow_run_id!r} is no longer stored as it was read to be "
                    "retried (a prune deleted it meanwhile): nothing of the retry was stored"
                ) from None
            raise

    async def set_limit(
        self, row: LimitRow, audited: bool = True
    ) -> operations_pb2.ConcurrencyLimit:
        """Store a tag's limit and apply it at once; audited as ``limit.set`` (not a
        limit of the server's settings, applied at its start)."""
        if not row.tag.strip():
            raise ValueError("a limit needs a tag")
        check_name("a limit's tag", row.tag)  # (a task's tags are names alike)
        if not row.concurrency and not row.rate:
            raise ValueError(f"limit of {row.tag!r}: give a concurrency, a rate or both")
        for what, count in (("concurrency", row.concurrency), ("rate", row.rate)):
            if count > MAX_LIMIT_COUNT:  # (PostgreSQL's column refused it: UNKNOWN)
                raise ValueError(
                    f"limit of {row.tag!r}: a {what} of {count:,} (at most {MAX_LIMIT_COUNT:,})"
                )
        if row.rate and row.rate_period <= 0:
            raise ValueError(f"limit of {row.tag!r}: a rate needs a period above zero")
        if row.rate and row.rate_period > MAX_DURATION:
            # (Stored before its answer failed to encode it: every ListConcurrencyLimits
            # then failed with UNKNOWN, across restarts, a user trial.)
            raise ValueError(
                f"limit of {row.tag!r}: a rate's period is {row.rate_period!r} seconds (at "
                f"most {MAX_DURATION:,}, about 10,000 years)"
            )
        await to_its_end(self._set_limit(row, audited), f"storing the limit of {row.tag!r}")
        return self.limit_message(row)

    async def _set_limit(self, row: LimitRow, audited: bool) -> None:
        await self.core.io.write(self.core.store.put_limit, row)
        self.core.dispatcher.requeue(self.limits.set(row))
        if audited:
            await self.core.audit("limit.set", "limit", row.tag, limit_detail(row))

    async def delete_limit(self, tag: str) -> None:
        """Remove a tag's limit (NotFound); what waited on it runs; audited as
        ``limit.delete``."""
        await to_its_end(self._delete_limit(tag), f"removing the limit of {tag!r}")

    async def _delete_limit(self, tag: str) -> None:
        await self.core.io.write(self.core.store.delete_limit, tag)
        self.core.dispatcher.requeue(self.limits.delete(tag))
        await self.core.audit("limit.delete", "limit", tag)

    def limit_message(self, row: LimitRow) -> operations_pb2.ConcurrencyLimit:
        """A limit with its current use."""
        msg = operations_pb2.ConcurrencyLimit(
            tag=row.tag,
            concurrency=row.concurrency,
            rate=row.rate,
            running=self.limits.running(row.tag),
            waiting=self.limits.waiting(row.tag),
        )
        if row.rate:
            # (A period over the bound was stored before it was checked: still shown.)
            msg.rate_period.CopyFrom(duration(min(row.rate_period, MAX_DURATION)))
        return msg

    def limit_messages(self) -> list[operations_pb2.ConcurrencyLimit]:
        """Every limit with its current use, by tag."""
        return [self.limit_message(self.limits.limits[t]) for t in sorted(self.limits.limits)]

    async def drain(self, name: str, exit_when_idle: bool) -> list[operations_pb2.WorkerInfo]:
        """Drain the workers of a name (UnknownWorker), durably; audited as
        ``worker.drain``."""
        try:
            row = self.workers.drain(name, exit_when_idle)
        except KeyError:
            raise UnknownWorker(f"no worker named {name!r} is known") from None
        detail = "exit when idle" * exit_when_idle
        # Applied already: stored and audited to the end even if the caller goes away
        # (a drain cut short was lost at the next restart; a user trial).
        await to_its_end(self._drain_changed(name, "worker.drain", detail, row), "a drain")
        return self.workers.infos([name])

    async def _drain_changed(
        self, name: str, action: str, detail: str, row: DrainRow | None
    ) -> None:
        store = self.core.store
        if row is None:
            await self.core.io.write(store.delete_drain, name)
        else:
            await self.core.io.write(store.put_drain, row)
        self.core.notices.drain_changed(name)
        await self.core.audit(action, "worker", name, detail)

    async def resume(self, name: str) -> list[operations_pb2.WorkerInfo]:
        """Lift the drain of a name (UnknownWorker), durably; audited as
        ``worker.resume``."""
        try:
            self.workers.resume(name)
        except KeyError:
            raise UnknownWorker(f"no worker named {name!r} is known") from None
        await to_its_end(self._drain_changed(name, "worker.resume", "", None), "a resume")
        return self.workers.infos([name])

    def webhook_message(
        self, row: WebhookRow, counts: DeliveryCounts | None = None
    ) -> operations_pb2.Webhook:
        """A webhook as the API shows it (never its secret)."""
        counts = counts or DeliveryCounts()
        msg = operations_pb2.Webhook(
            id=row.id,
            url=row.url,
            flow_names=list(row.flow_names),
            states=[state_pb2.FlowRunState.ValueType(s) for s in row.states],
            late=row.late,
            pending=counts.pending,
            failed=counts.failed,
            last_error=counts.last_error,
        )
        msg.created_at.CopyFrom(timestamp(row.created_at))
        return msg


def flow_run_extras(
    msg: run_pb2.FlowRun, attempts: list[RunAttemptRow], late: LateRow | None
) -> None:
    """Add a run's attempts (``attempt``, and for a retried run a history entry for each
    attempt's start and end) and its late mark to its FlowRun message."""
    if len(attempts) > 1:
        del msg.history[:]
        for attempt in attempts:
            start = msg.history.add(
                state=FlowRunState.RUNNING.value,
                message=f"run attempt {attempt.attempt}",
            )
            start.timestamp.CopyFrom(timestamp(attempt.started_at))
            if attempt.ended_at is not None:
                end = msg.history.add(
                    state=attempt.state,
                    message=attempt.message,
                )
                end.timestamp.CopyFrom(timestamp(attempt.ended_at))
    msg.attempt = attempts[-1].attempt if attempts else 1
    if late is not None:
        msg.late = True
        msg.late_reason = late.reason
        msg.late_at.CopyFrom(timestamp(late.at))


def run_facts(store: Store, flow_run_id: str) -> tuple[list[RunAttemptRow], LateRow | None]:
    """A run's attempts and late mark (on a reader thread)."""
    return store.run_attempts(flow_run_id), store.late_runs([flow_run_id]).get(flow_run_id)


def _started(engine: FlowRunEngine) -> bool:
    """Whether a task run of the current run attempt has left the queue."""
    attempt_start = next(
        (at for s, at, _ in reversed(engine.flow_history) if s is FlowRunState.RUNNING), 0.0
    )
    for run in engine.runs.values():
        last = run.history[-1]
        if last.timestamp >= attempt_start and last.state not in NOT_STARTED:
            return True
    return False


def _put_workers(store: Any, rows: list[Any]) -> None:
    for row in rows:
        store.put_worker(row)


#: Who set what the server's configuration (file, variables, flags) set, in the audit.
CONFIG_ACTOR = "configuration"


def limit_detail(row: LimitRow) -> str:
    """A limit in the audit log, e.g. ``concurrency 3, rate 10/60s``."""
    parts = []
    if row.concurrency:
        parts.append(f"concurrency {row.concurrency}")
    if row.rate:
        parts.append(f"rate {row.rate}/{row.rate_period:g}s")
    return ", ".join(parts)
