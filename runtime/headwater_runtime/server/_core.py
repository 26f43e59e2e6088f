"""ServerCore: the run manager and dispatcher on one asyncio event loop.

Servicers call into the core; the core turns worker messages into engine events and
hands what changed to the commit pipeline (``_commits``), which stores it on the
writer thread and only then sends what the commit covers: assignments, cancels, the
Acks of worker reports and watch notes.

Fencing is bound to the worker session: only the session that holds an attempt may
report for it or log into it; anything else is refused (``FAILED_PRECONDITION`` in
the Ack) and changes nothing (_reports.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
import typing
import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from headwater.v1 import graph_pb2, payload_pb2, run_pb2, worker_pb2
from headwater.wire import (
    INLINE_PAYLOAD_LIMIT,
    PROTOCOL_VERSION,
    TASK_RUN_ID_SEPARATOR,
    FailureInfo,
    FlowRunState,
    Limits,
    Role,
    TaskRunState,
    duration,
    feature_names,
    split_task_run_id,
    task_run_id,
)
from headwater_runtime.embedded import SystemClock
from headwater_runtime.engine import (
    TaskFailed,
    TaskLost,
    TaskRunRecord,
)
from headwater_runtime.store import (
    AuditRow,
    FlowRunRow,
    LimitRow,
    PruneReport,
    StateRow,
    Store,
    StoreUnavailable,
    WebhookRow,
    WriteBatch,
)

from ._access import ANONYMOUS_NAME, CALLER, Caller
from ._assignments import PendingAssignment, Token, oversize_failure
from ._claims import ReplayClaims
from ._commits import Committer, Release
from ._convert import task_run_from_record
from ._creation import RunCreation
from ._dispatch import UNSTORED_PER_SLOT, Dispatcher, WorkerSession, input_payloads
from ._exports import RELEASE_AFTER, DaskExports
from ._io import StoreIO, to_its_end
from ._limits import check_reason
from ._notices import LatestPerKey, Notices
from ._orphans import Orphan, Orphans
from ._reports import WorkerReports
from ._run_dispatch import holdable, inputs_of
from ._runs import Recovery, Resumed, RunManager
from ._schedule_requests import ScheduleRequests
from ._schedules import Scheduler
from ._tag_limits import TagLimits
from ._waiting import (
    WaitingTasks,
    start_timeout_failure,
    waiting_reasons,
    waiting_reasons_in_turns,
    waiting_tasks_in_turns,
)
from ._wide import WideWork

log = logging.getLogger("headwater.server")

#: The longest the timer loop sleeps between two turns (seconds).
TICK = 0.5
#: A turn of the timer loop later than this (seconds, beyond TICK): the server itself
#: did not run meanwhile (``ServerCore._caught_up``).
STALLED = 1.0
#: Attempts failed for their schedule_to_start_timeout, and orphans counted lost, in
#: one turn of the timer loop (~15 µs each; more wait for the next turn, which comes at
#: once).
EXPIRE_PER_TURN = 500

SERVER_VERSION = "0.1.0"
#: Changes a watcher may have left unread, one by one, before they collapse to the
#: newest state of each task run (a watcher that stalls: docs/limits.md).
WATCH_BACKLOG = 10_000


@dataclass(frozen=True)
class ServerSettings:
    """Server configuration (defaults -> HEADWATER_* environment -> CLI flags)."""

    host: str = "127.0.0.1"
    port: int = 50051
    db: str = "~/.headwater/headwater.db"
    token: str | None = None
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 20.0
    inline_payload_limit: int = INLINE_PAYLOAD_LIMIT
    #: Keep finished runs this long (seconds), then delete them with their journal,
    #: logs and values; None keeps them forever.
    retention: float | None = None
    #: How often the server prunes (unreferenced payloads are collected even without
    #: a retention period).
    prune_interval: float = 600.0
    #: Payloads nothing references are kept this long first (an upload on its way to
    #: being referenced by a result must not be collected).
    payload_grace: float = 86400.0
    #: Keep payload bytes as files in this directory instead of the database.
    payload_dir: str | None = None
    #: Servers sharing a PostgreSQL database: how long the leader's lease lasts
    #: (seconds); a standby takes over at most this long after the leader stopped.
    lease: float = 10.0
    #: What the server logs on stderr (``headwater server`` configures it): debug,
    #: info, warning or error; other libraries' records from warning up.
    log_level: str = "info"
    #: ``HOST:PORT`` standbys name as the leader when this server leads (default:
    #: host and bound port; set it when clients reach the server by another name).
    advertise: str = ""
    #: The most the server accepts of each size a peer can state (docs/limits.md).
    limits: Limits = field(default_factory=Limits)
    #: Seconds a worker has to build a flow's graph for a run created without the code.
    build_timeout: float = 60.0
    #: Seconds a finished run's values held by Dask bridge workers stay there (clients
    #: can read them, a retry reuses them); its result's stay until the run is pruned.
    dask_release_after: float = RELEASE_AFTER
    #: ``headwater server``: the longest a stop (SIGTERM or SIGINT) may take; then the
    #: process writes every thread's stack and exits with status 1 (``serve_forever``).
    stop_timeout: float = 30.0
    #: The web UI and HTTP API (server/http): on unless False; its port, None for the
    #: default: the gRPC port + 1 (50052), or a free port when ``port`` is 0.
    http: bool = True
    http_port: int | None = None

    @property
    def http_bind_port(self) -> int:
        """The port the HTTP server binds (see ``http_port``)."""
        if self.http_port is not None:
            return self.http_port
        return 0 if self.port == 0 else self.port + 1

    #: The server's certificate and key (PEM files): serve TLS. Both or neither.
    tls_cert: str | None = None
    tls_key: str | None = None
    #: Require client certificates signed by this CA (mutual TLS).
    tls_client_ca: str | None = None
    # Day-two operations (docs/operations.md; _ops_core.py).
    #: Serve /metrics (Prometheus) on this port (0 picks one); None: not served.
    metrics_port: int | None = None
    #: A run with no task run started this many seconds after it was created (or
    #: retried) is marked late; 0 or None: never.
    late_after: float | None = 60.0
    #: A worker that left (offline) is listed this many seconds after its last message,
    #: then its record is forgotten (with the next prune: every ``prune_interval``);
    #: 0 or None: never. Workers are recorded by name, and the default name
    #: ``host-pid`` is new at every start.
    forget_workers_after: float | None = 7 * 86400.0
    #: The web UI's base URL, for links to runs in webhook bodies ("" for none).
    ui_url: str = ""
    #: Webhook deliveries: tries before giving up, first retry delay (doubling up to
    #: the max), and the timeout of one POST (seconds).
    webhook_max_attempts: int = 10
    webhook_backoff: float = 1.0
    webhook_backoff_max: float = 300.0
    webhook_timeout: float = 10.0
    #: Concurrency and rate limits by tag set at every start (the configuration
    #: file's [limits.TAG] tables).
    tag_limits: tuple[LimitRow, ...] = ()
    #: Webhooks created at start unless an identical one exists ([[webhooks]]).
    webhooks: tuple[WebhookRow, ...] = ()


class ServerCore(WorkerReports):
    """Everything stateful about a running server (what workers' streams say:
    _reports.py).

    Args:
        store: where runs, flows, payloads and schedules are kept.
        settings: the server's configuration.
        clock: the time source (default: the system clock).
        io: the threads store calls run on (default: new ones).
    """

    def __init__(
        self, store: Store, settings: ServerSettings, clock: Any = None, io: StoreIO | None = None
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock or SystemClock()
        self.io = io or StoreIO(upkeep=store.checkpoint)
        self.exports = DaskExports(
            send=self._send_held, fail=self._fail_held, release_after=settings.dask_release_after
        )
        self.dispatcher = Dispatcher(
            on_lost=self._lost,
            before_send=self._before_send,
            limits=TagLimits(self.clock.now),
        )
        self.runs = RunManager(store, self.dispatcher, self.clock, settings.limits)
        self.dispatcher.due = self.runs.due
        # A task waiting for a flow it started lends its worker's slot meanwhile.
        self.dispatcher.waits = self.runs.children.waits
        self.runs.children.waiting.append(self.dispatcher.lend)
        self.runs.listeners.append(self._notify)
        self.runs.snapshot_aside = self._snapshot_aside
        self.runs.notes_rejoined = self._notes_rejoined
        self.exports.watch(self.runs)  # releases a run's Dask-held values once done
        # While commits fail, no assignment leaves: its delivery could not be recorded,
        # and after a crash an attempt sent without a recorded delivery may run twice.
        self.commits = Committer(
            store, self.io, self.runs, self._deliver, on_failing=self.dispatcher.pause
        )
        self.schedules = Scheduler(store, self.runs, self.clock)
        self.creation = RunCreation(self, settings.build_timeout)
        self.runs.start_subflow = self.creation.start_subflow
        self.wide = WideWork(self.runs, self.dispatcher, self.io, self._ack, self.touch)
        self.runs.submit_wide = self.wide.submit
        self.runs.timers_aside = self.wide.fire_timers
        self.runs.check_cache_later = self.wide.check_cache
        self.schedule_requests = ScheduleRequests(self)
        self._serial = 0  # connection order of worker sessions
        self.stored_all = True  # (stop() says otherwise when it could not store it all)
        # Live views (the HTTP UI): what each commit changed, workers coming and going.
        self.notices = Notices()
        from ._ops_core import Operations  # it imports this module (for types)

        #: Retries from failure, limits, workers, late runs, webhooks, metrics.
        self.ops = Operations(self)
        self._ops_due: float | None = None
        # Attempts a worker held when the server stopped, waiting for it (_orphans.py).
        self._orphans = Orphans()
        # Attempts a worker reclaimed while their run was being replayed, and lost (the
        # worker went) before the run was live: neither orphans nor lease holders then.
        self._lost_in_replay: set[Token] = set()
        # Attempts claimed while their run was replayed, checked once it is live.
        self._claims = ReplayClaims()
        # Attempts in flight when the server stopped that no stored delivery names
        # (sent again at once): the only queued attempts a reconnecting worker may claim
        # (it may have got one in the instant before its delivery was stored). Any
        # other queued attempt it names is not kept: no worker can hold it.
        self._resent: set[Token] = set()
        self._watchers: dict[str, set[asyncio.Queue[Any]]] = {}
        self._flow_watchers: dict[str, set[asyncio.Queue[Any]]] = {}
        self._background: asyncio.Task[None] | None = None
        self._ticked = time.monotonic()  # the timer loop's last turn (_caught_up)
        self._wake = asyncio.Event()
        #: When the timer loop's wait ends (None: it is not waiting).
        self._waits_until: float | None = None
        self._due_check = False  # a look at what is due is queued (touch)
        self._stopping = False
        self._closing = False  # (``closing``)
        #: What ``start`` resumed (None until all are live), for the start-up lines.
        self.recovery: Recovery | None = None
        #: Set once every unfinished run ``start`` found is live again.
        self.recovered = asyncio.Event()
        # Unfinished runs not replayed yet: set when one is live (or given up).
        self._replays: dict[str, asyncio.Event] = {}
        #: Unfinished runs this server did not resume, with why (a journal of an engine
        #: it cannot replay): a cancel ends them in the store (nothing else can).
        self.not_resumed: dict[str, str] = {}
        #: When this server started (its clock): when it said it would not resume them.
        self.started_at = 0.0
        self._resuming: asyncio.Task[None] | None = None
        self._next_prune = 0.0
        self._pruning: asyncio.Task[None] | None = None
        self.last_prune: PruneReport | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the timer/heartbeat loop, and resume unfinished runs in the background
        (``recovered`` is set once all are live again).

        Until its journal is replayed, the calls for a run wait (a worker's reports on
        it, a cancel), and a worker that reconnects holding its attempts keeps them.
        Then attempts that never reached a worker are dispatched again at once;
        attempts a worker held wait for it to reconnect (up to the heartbeat timeout)."""
        began = time.monotonic()
        self.started_at = self.clock.now()
        rows, refused = self.runs.unfinished()
        for run_id, why in refused:
            log.error("not resuming flow run %s: %s", run_id, why)
            self.not_resumed[run_id] = why
        self.schedules.load()
        await self.ops.start([row.id for row in rows])
        self._replays = {row.id: asyncio.Event() for row in rows}
        # Limited attempts wait until every run's held attempts have their leases back.
        self.dispatcher.limits.resuming = bool(rows)
        loop = asyncio.get_running_loop()
        self.exports.recovering = True  # until _resume is done
        if rows:  # inputs held by bridges wait for them as held attempts do
            self.exports.await_holders_until = self.clock.now() + self.settings.heartbeat_timeout
        self._ticked = time.monotonic()  # (not since the server was made: _caught_up)
        self._background = loop.create_task(self._loop())
        self._resuming = loop.create_task(self._resume(rows, Recovery(refused=refused), began))

    async def _resume(self, rows: list[FlowRunRow], found: Recovery, began: float) -> None:
        """Replay unfinished runs one by one on a reader thread (a run with a
        100,000-element map in flight takes seconds), each made live on the loop. A run
        that cannot be replayed is left unfinished in the store, and said so."""
        try:
            for row in rows:
                try:
                    resumed = await self.io.read(self.runs.replay, row)
                except Exception as exc:
                    log.exception("cannot resume flow run %s", row.id)
                    self.runs.abandon(row.id)
                    self._replays.pop(row.id).set()
                    self._claims.drop(row.id)
                    why = f"its journal could not be replayed: {exc}"
                    found.refused.append((row.id, why))
                    self.not_resumed[row.id] = why
                    continue
                self._check_claims(row.id, resumed)
                deadline = self.clock.now() + self.settings.heartbeat_timeout
                gone = self._lost_in_replay
                still_held, orphaned = [], []
                for flow_run_id, tid, attempt in resumed.held:
                    token = (tid, attempt)
                    if token in gone:  # reclaimed, then lost with its worker: no lease
                        gone.discard(token)
                        continue
                    still_held.append(token)
                    if self.dispatcher.owner(token) is None:  # not reclaimed yet
                        holder = resumed.deliveries[token].holder
                        self._orphans.add(token, Orphan(flow_run_id, deadline, holder))
                        orphaned.append((token, holder))
                self.ops.resumed(resumed, still_held)  # before its attempts are sent again
                # Who holds its Dask values, before its consumers are sent again.
                engine = resumed.active.engine
                self.exports.recover(row.id, (run.result for run in engine.runs.values()))
                self.runs.resume(resumed)
                # Workers back already that did not reclaim theirs (while replayed) do
                # not hold them: sent again now.
                back = self._holders()
                self._unheld([token for token, holder in orphaned if holder in back])
                self._replays.pop(row.id).set()
                found.held.extend(resumed.held)
                found.resent.extend(resumed.resent)
                self._resent.update((tid, attempt) for _, tid, attempt in resumed.resent)
                found.resumed += 1
                self.touch()
        finally:  # (also when the server stops meanwhile: nothing waits for it then)
            found.seconds = time.monotonic() - began
            self.recovery = found
            freed = self.dispatcher.limits.resumed_all()
            if freed:
                self.dispatcher.requeue(freed)
            for waiting in self._replays.values():
                waiting.set()
            self._replays.clear()
            self.exports.recovered()
            self.recovered.set()

    async def stop(self) -> None:
        """Stop the timer loop, store what is left (``stored_all`` says whether it
        could), end the traces."""
        self._stopping = True
        self._wake.set()
        if self._resuming is not None:
            self._resuming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resuming
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
        if self._pruning is not None:
            with contextlib.suppress(Exception):
                await self._pruning
        await self.creation.stop()
        #: Whether the stop stored everything (a full disk: not; the exit status says so).
        self.stored_all = await self.commits.drain()
        await self.ops.stop()
        self.commits.close()  # no retry timer may outlive the server (see Committer.close)
        self.runs.end_traces()
        self.runs.collector.close()

    def touch(self) -> None:
        """Something changed: commit soon (see Committer.request), and wake the timer
        loop if something is now due before the end of its wait (a timer, a deadline).
        Only then: woken at every touch, it turned twice per one-task run to find
        nothing due. The touches of one turn of the event loop share one look at what
        is due, at its end (a worker's batch of results touches once per result)."""
        self.commits.request()
        if self._waits_until is not None and not self._due_check:
            self._due_check = True
            asyncio.get_running_loop().call_soon(self._check_due)

    def _check_due(self) -> None:
        self._due_check = False
        waits_until = self._waits_until
        if waits_until is not None and self._next_due() < waits_until:
            self._waits_until = None
            self._wake.set()

    def _next_due(self) -> float:
        """When the timer loop has something to do next (its turns are at most TICK
        apart; see _loop)."""
        due = [self._next_prune]
        if self.runs.next_timer_at is not None:
            due.append(self.runs.next_timer_at)
        if self.dispatcher.next_start_by is not None:  # (past: more are overdue)
            due.append(self.dispatcher.next_start_by)
        orphans_due = self._orphans.next_deadline()
        if orphans_due is not None:
            due.append(orphans_due)
        if self.exports.next_release_at is not None:
            due.append(self.exports.next_release_at)
        if self.schedules.next_fire_at is not None:
            due.append(self.schedules.next_fire_at)
        if self._ops_due is not None:  # (None: no turn yet)
            due.append(self.ops.next_due())
        return min(due)

    async def durable(self) -> None:
        """Wait until everything done so far is stored (StoreUnavailable if it cannot
        be now; it stays queued and is stored when the store recovers)."""
        await self.commits.durable()

    # ---------------------------------------------------------------- flows, runs

    async def register_flow(self, msg: graph_pb2.FlowGraph) -> tuple[str, bool]:
        """Validate a graph off the loop, store it on the writer thread; its version
        and whether it is new (an identical graph keeps its version)."""
        graph, data, digest, label = await self.io.read(self.runs.check_flow, msg)
        stored, created = await self.io.write(
            self.store.put_flow, msg.name, digest, data, label, self.clock.now()
        )
        self.runs.remember_graph(msg.name, stored.version, graph)
        return stored.version, created

    async def create_run(
        self,
        flow_name: str,
        flow_version: str,
        parameters: Mapping[str, payload_pb2.Value],
        idempotency_key: str = "",
        trace_context: Mapping[str, str] | None = None,
        parent: tuple[str, int] | None = None,
    ) -> tuple[FlowRunRow, bool]:
        """Create and start a run: checked and built off the loop (its graph built by a
        worker when the stored one cannot serve its values, ``_creation``), its row
        stored on the writer thread (durable when this returns), then started. The same
        idempotency key returns the first run; with other parameters, Conflict.
        ``parent`` (task run id, attempt): a run a task starts while it runs
        (NotRunning unless that attempt runs; checked once the parent run is live, when
        a restarted server is still resuming it)."""
        if parent is not None:
            await self._replayed(parent[0].partition(TASK_RUN_ID_SEPARATOR)[0])
        link = None if parent is None else self.runs.check_parent(*parent)
        return await self.creation.create(
            flow_name, flow_version, parameters, idempotency_key, trace_context, parent=link
        )

    def waiting(
        self, flow_run_id: str, *, limit: int | None = None, only: Collection[str] | None = None
    ) -> dict[str, str]:
        """Why task runs of a run wait, by task run id (on the loop): a limit on its
        tags, a worker with other code for the task, no connected worker offers it or
        all are drained or busy (``Dispatcher.waiting_reason``), a subflow waiting for a
        worker to build its child's graph (``_creation``). ``limit``, ``only``: the
        first ``limit`` queued attempts, those of these task run ids (``waiting_reasons``)."""
        reasons = waiting_reasons(self.dispatcher, flow_run_id, limit=limit, only=only)
        builds = self._build_reasons(flow_run_id)
        reasons.update((tid, why) for tid, why in builds.items() if only is None or tid in only)
        return reasons

    async def waiting_in_turns(self, flow_run_id: str) -> dict[str, str]:
        """``waiting`` for a run with many queued attempts, a part at a time (the loop
        serves other calls in between)."""
        reasons = await waiting_reasons_in_turns(self.dispatcher, flow_run_id)
        reasons.update(self._build_reasons(flow_run_id))
        return reasons

    async def waiting_tasks(self, flow_run_id: str) -> list[WaitingTasks]:
        """Why a run's task runs wait, a line per task and reason (GetFlowRun's
        ``include_waiting``), in turns as ``waiting_in_turns``; none for a run that is
        not live."""
        active = self.runs.runs.get(flow_run_id)
        if active is None:
            return []
        runs = active.engine.runs

        def task_of(key: str) -> str | None:
            run = runs.get(key)
            return None if run is None else run.spec.id

        builds = self._build_reasons(flow_run_id)
        return await waiting_tasks_in_turns(self.dispatcher, flow_run_id, task_of, builds)

    def _build_reasons(self, flow_run_id: str) -> dict[str, str]:
        """Why subflow nodes wait for a graph build (``_creation``), by task run id."""
        return {
            task_run_id(flow_run_id, key): why
            for key, why in self.creation.reasons(flow_run_id).items()
        }

    def not_resumed_message(self, flow_run_id: str, state: int) -> str | None:
        """What a run this server did not resume says as its message while it is
        unfinished (GetFlowRun, ListFlowRuns, the web UI: it showed RUNNING with no
        message for good, the reason in the log only, a trial of a rollback); None for
        any other run. Only said: nothing is stored."""
        why = self.not_resumed.get(flow_run_id)
        if why is None or FlowRunState(state).is_terminal:
            return None
        return f"not resumed by this server: {why}"

    async def cancel_run(self, flow_run_id: str, reason: str) -> None:
        """Cancel a run, durably (StoreUnavailable when the cancel cannot be stored
        yet: it stays queued). A run of 1,000 task runs or more is cancelled on a
        reader thread (``RunManager.set_aside``): the loop goes on serving everyone
        else."""
        await self._replayed(flow_run_id)  # cancelled once its journal is replayed
        why = self.not_resumed.get(flow_run_id)
        if why is not None:  # no engine to cancel it: end it in the store
            now = self.clock.now()
            await self.io.write(_end_unresumed, self.store, flow_run_id, reason, why, now)
            # (A second cancel under way at once found it too: its write ended nothing.)
            self.not_resumed.pop(flow_run_id, None)
            return
        active = self.runs.set_aside(flow_run_id)
        if active is None:
            self.runs.cancel(flow_run_id, reason)
        else:
            cancel = functools.partial(self.runs.cancel_aside, active, reason)
            # Rejoins when the thread is done, even if this call is cancelled meanwhile.
            await asyncio.shield(self.wide.aside(active, f"cancelling {flow_run_id}", cancel))
        self.touch()
        try:
            await self.durable()
        except StoreUnavailable as exc:
            exc.advice = (
                "the cancel is kept: the run is cancelled once the server can store it "
                "(it keeps retrying); no need to cancel again"
            )
            raise

    async def _replayed(self, flow_run_id: str) -> None:
        """Wait until a run this restarted server is resuming is live (at once for any
        other run)."""
        replayed = self._replays.get(flow_run_id)
        if replayed is not None:
            await replayed.wait()

    async def prune(
        self, older_than: float | None, *, dry_run: bool = False, grace: float | None = None
    ) -> PruneReport:
        """Delete finished runs that ended more than ``older_than`` seconds ago (none
        when None), values and payloads nothing references, and expired cache entries,
        in steps on the writer thread; then give the space back to the file system."""
        now = self.clock.now()
        ended_before = None if older_than is None else now - older_than
        forget = self.settings.forget_workers_after
        workers_before = now - forget if forget else None
        pruning = self.store.pruning(
            ended_before,
            now,
            grace=self.settings.payload_grace if grace is None else grace,
            dry_run=dry_run,
            # (asked on the writer thread: a look into two dicts the loop changes)
            keep=lambda run_id: run_id in self.runs.runs or run_id in self.ops.retrying,
            workers_before=workers_before,
        )
        # One short transaction per step, each a write of its own: the commits of
        # runs go in between (one transaction held every commit for as long as it
        # deleted: tens of seconds for hundreds of MB). A dry run only reads, as does
        # the step that scans the runs for the builds they use.
        while await (self.io.read if pruning.reads_next else self.io.write)(pruning.step):
            pass
        report = pruning.report()
        if ended_before is not None and not dry_run:
            self.exports.pruned(ended_before)  # Dask bridges let go of their results
        if pruning.workers_before is not None and not dry_run:
            self.ops.workers.forget(pruning.workers_before)  # (what the prune forgot)
        self.runs.forget_graphs(pruning.builds_deleted)
        return report

    async def _auto_prune(self) -> None:
        try:
            report = await self.prune(self.settings.retention)
            self.last_prune = report
            counts = (report.runs, report.payloads, report.values, report.workers)
            if any(counts) or report.builds or report.deliveries:
                log.info(
                    "pruned %d finished runs, %d values, %d payloads (%d bytes "
                    "reclaimed), %d flow builds unused and %d webhook deliveries given up "
                    "for the retention period; forgot %d workers gone for longer than the "
                    "retention period or forget_workers_after",
                    report.runs,
                    report.values,
                    report.payloads,
                    report.bytes_reclaimed,
                    report.builds,
                    report.deliveries,
                    report.workers,
                )
            if report.payloads_waiting:
                log.info(
                    "kept %d unreferenced payloads (%d bytes) younger than the payload "
                    "grace (an upload may be on its way to a result); a later prune "
                    "deletes them",
                    report.payloads_waiting,
                    report.payload_bytes_waiting,
                )
            if report.give_back_stopped:
                log.warning(
                    "stopped giving space back to the file system (%s): new data reuses "
                    "it, and the next prune gives back the rest",
                    report.give_back_stopped,
                )
        except Exception:
            log.exception("pruning failed; trying again at the next interval")
        finally:
            self._pruning = None

    def _deliver(self, release: Release) -> None:
        """Carry out what a stored commit covers."""
        changed_runs = set(release.changed)  # (the loop below takes ids out of it)
        with self.dispatcher.deferred():  # deliveries stored free slots: one pump
            for effect in release.effects:
                effect()
        for send, message in release.acks:
            send(message)
        changed = release.changed
        for flow_run_id, run in release.notes:
            changed.discard(flow_run_id)
            for queue in self._watchers.get(flow_run_id, ()):
                queue.put_nowait(run)
        for flow_run_id in changed:
            for queue in self._watchers.get(flow_run_id, ()):
                queue.put_nowait(None)  # "re-read the run"
        for flow_run_id in release.flow_changed:
            for queue in self._flow_watchers.get(flow_run_id, ()):
                queue.put_nowait(None)
        self.notices.runs_changed(changed_runs)  # the HTTP UI's live views
        self.notices.logs_stored(release.logged)

    async def _loop(self) -> None:
        # The flag, not only the cancellation, ends the loop: a cancel that arrives just
        # as the wake-up fires can be swallowed (asyncio.wait_for did that, hanging
        # every SIGTERM that raced with a worker disconnecting).
        while not self._stopping:
            now = self.clock.now()
            try:
                self._caught_up()
                self.runs.fire_timers()
                self._expire_start_timeouts(now)
                self.schedules.fire_due()
                self._expire_orphans(now)
                self._check_heartbeats(now)
                self.exports.expire(now)
                self.runs.collector.upkeep()
                self._ops_due = self.ops.tick(now)
                if now >= self._next_prune and self._pruning is None:
                    self._next_prune = now + self.settings.prune_interval
                    self._pruning = asyncio.get_running_loop().create_task(self._auto_prune())
                if self.runs.has_writes:
                    self.commits.request()
            except Exception:
                # One bad tick (a full disk, a bug) must not silently end timers,
                # heartbeats and schedules for the server's whole life: say so, go on.
                log.exception("the server's timer loop failed; retrying")
            due = min(now + TICK, self._next_due())
            if self._stopping:
                return
            self._wake.clear()
            self._waits_until = due
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancel that races with the wake-up, and stop() then waits forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due - now)):
                    await self._wake.wait()
            self._waits_until = None

    # ------------------------------------------------------------------- workers

    def connect(
        self, hello: worker_pb2.Hello, caller: Caller | None = None
    ) -> tuple[WorkerSession, worker_pb2.Welcome, Any]:
        """Register a worker stream; returns its session, the Welcome and its outbox.

        Attempts the worker says it holds are kept (``Welcome.keep_running``) when the
        server was waiting for them after a restart, or when they are still queued here
        (sent again after a restart, not yet handed to anyone): the worker goes on and
        nothing runs twice. All of them, even beyond its slots: besides the attempts it
        runs, a worker holds the outcomes the server has not acknowledged, which it
        sends again at once; one not kept would run again elsewhere. Any other attempt
        it names is not kept: it must drop it."""
        outbox: asyncio.Queue[worker_pb2.ConnectResponse | None] = asyncio.Queue()
        session = WorkerSession(
            session_id=uuid.uuid4().hex,
            worker_id=hello.worker_id,
            name=hello.name or hello.worker_id,
            capabilities=frozenset(hello.capabilities),
            labels=dict(hello.labels),
            slots=hello.slots,
            send=outbox.put_nowait,
            last_seen=self.clock.now(),
            code_digests=dict(hello.code_digests),
            flows={f.name: f.code_digest for f in hello.flows},
            features=frozenset(hello.features),
            serial=self._serial,
        )
        self._serial += 1
        caller = caller or CALLER.get()
        session.credential = caller.name
        # A worker-only credential reads only its attempts' inputs: remember them.
        session.restricted = not caller.role.grants & {Role.VIEWER}
        adopted: dict[Token, str] = {}
        taken: list[PendingAssignment] = []
        named = [(token.task_run_id, token.attempt) for token in hello.running]
        for key in named:
            orphan = self._orphans.for_session(key, session)
            run_key = split_task_run_id(key[0])[1] if orphan is not None else ""
            if orphan is not None and self.runs.may_hold(orphan.flow_run_id, run_key, session):
                self._orphans.pop(key)
                adopted[key] = orphan.flow_run_id
                # Its task run names this worker again (now a holder stored by an
                # earlier version is replaced by this session's).
                self.runs.delivered(
                    orphan.flow_run_id, key[0], key[1], session.name, session.holder
                )
                if session.restricted:  # its inputs, which it may read and pass on
                    inputs = self.runs.attempt_inputs(orphan.flow_run_id, run_key, key[1])
                    session.reads[key] = inputs or frozenset()
                continue
            if key in self._orphans:  # (not its to hold: it stays for the worker that is)
                continue
            queued = self._claim_resent(session, key)
            if queued is not None:  # kept even beyond its slots: it runs them already
                adopted[key] = queued.flow_run_id
                taken.append(queued)
                self.runs.delivered(
                    queued.flow_run_id, key[0], key[1], session.name, session.holder
                )
                if session.restricted:  # it may still need to read the inputs
                    session.reads[key] = input_payloads(queued.assignment)
                continue
            flow_run_id = _run_of(key[0])
            replaying = self.runs.replaying(flow_run_id)
            if self.dispatcher.owner(key) is None and (
                replaying or self._resent_unqueued(session, key)
            ):
                self._lost_in_replay.discard(key)  # reclaimed again
                if replaying:  # whether it may hold it: checked once the run is live
                    self._claims.add(flow_run_id, key, session)
                # Its run is being resumed: kept, and delivered to this worker (recorded
                # once the run is live); the run then waits for it rather than sending
                # it again (Dispatcher.pump skips an attempt a worker holds).
                adopted[key] = flow_run_id
                self.runs.delivered(flow_run_id, key[0], key[1], session.name, session.holder)
                if session.restricted:  # its inputs (while replayed: once live, _check_claims)
                    run_key = split_task_run_id(key[0])[1]
                    inputs = self.runs.attempt_inputs(flow_run_id, run_key, key[1])
                    session.reads[key] = inputs or frozenset()
        welcome = worker_pb2.Welcome(
            session_id=session.session_id,
            server_version=SERVER_VERSION,
            protocol_version=PROTOCOL_VERSION,
            features=feature_names(),
            inline_payload_limit=self.settings.inline_payload_limit,
            max_message_bytes=self.settings.limits.max_message_bytes,
            keep_running=[worker_pb2.FencingToken(task_run_id=t, attempt=a) for t, a in adopted],
        )
        welcome.heartbeat_interval.CopyFrom(duration(self.settings.heartbeat_interval))
        welcome.heartbeat_timeout.CopyFrom(duration(self.settings.heartbeat_timeout))
        outbox.put_nowait(worker_pb2.ConnectResponse(welcome=welcome))
        self.ops.connected(session, hello, taken)  # drains, leases, the worker's record
        self.dispatcher.connect(session, adopted)
        # Attempts handed to this worker before a restart that it does not name: it
        # does not hold them.
        self._unheld(self._orphans.not_named({session.holder}, named))
        self.exports.connected(session)
        self.creation.connected(session)
        self.notices.worker_connected(session, self.clock.now())
        self.touch()
        return session, welcome, outbox

    def _claim_resent(self, session: WorkerSession, key: Token) -> PendingAssignment | None:
        """A queued attempt a reconnecting worker says it holds, taken out of the queue
        for it: only one sent again after a restart (``_resent``), and only by a worker
        that could have been given it (its task type, labels and code). A worker naming
        any other queued attempt (a user trial: any worker could take any queued task,
        its inputs with it) keeps nothing."""
        if key not in self._resent:
            return None
        queued = self.dispatcher.take_pending(key)
        if queued is None:
            return None
        if not session.accepts(queued):
            self.dispatcher.requeue([queued])
            return None
        self._resent.discard(key)
        return queued

    def _resent_unqueued(self, session: WorkerSession, key: Token) -> bool:
        """An attempt sent again after a restart whose run is live but not queued yet
        (its dispatch waits for the commit that stores the run's resumption), claimed
        by a worker that could have been given it: kept, as during the replay (the
        dispatcher skips an attempt a worker holds). A worker reconnecting in that
        instant was told to abandon it, and it ran again (seen in CI)."""
        if key not in self._resent:
            return False
        flow_run_id, run_key = split_task_run_id(key[0])
        if not self.runs.may_hold(flow_run_id, run_key, session):
            return False
        self._resent.discard(key)
        return True

    def _check_claims(self, flow_run_id: str, resumed: Resumed) -> None:
        """A replayed run is about to go live: the attempts workers claimed meanwhile
        are checked (``_claims``). A worker that could not have been given one (another
        task type, labels or code, no such attempt in flight, or one handed to another
        worker before the restart) is told to cancel it and its reports on it are
        refused (a user trial: naming another pool's attempt during the replay took it
        over, its result with it)."""
        active = resumed.active

        def may_keep(token: Token, session: WorkerSession) -> bool:
            delivery = resumed.deliveries.get(token)
            if delivery is not None and delivery.holder not in (None, session.holder):
                return False
            return holdable(active, split_task_run_id(token[0])[1], session, token[1])

        settled = self._claims.settle(flow_run_id, may_keep)
        for token, session in settled.kept:  # inputs unknown while the run was replayed
            if session.restricted:  # (before its waiting reports: they may pass them on)
                inputs = inputs_of(active, split_task_run_id(token[0])[1], token[1])
                session.reads[token] = inputs or frozenset()
        for token in settled.lost:  # (its session left while the run was replayed)
            self._lost(flow_run_id, *token)
        for token, session in settled.refused:
            if self.dispatcher.owner(token) is not session:
                continue
            self.dispatcher.revoke(token)
            why = (
                f"attempt {token[1]} of task run {token[0]!r} is not this worker's to keep "
                "after the restart (it is over already, was handed to another worker, or "
                "is not one this worker can run: its task type, labels or code)"
            )
            log.warning("worker %s claimed %s after the restart; %s", session.name, token, why)
            fencing = worker_pb2.FencingToken(task_run_id=token[0], attempt=token[1])
            cancel = worker_pb2.CancelTaskRun(token=fencing, reason=why)
            session.send(worker_pb2.ConnectResponse(cancel=cancel))

    def disconnect(self, session: WorkerSession) -> None:
        """A worker stream ended: the attempts it held are lost (dispatched again)."""
        self.dispatcher.disconnect(session.session_id)
        self.exports.forget(session)
        self.creation.builds.forget(session)
        self.notices.worker_disconnected(session, self.clock.now())
        self.ops.disconnected(session)
        self.touch()

    def _send_held(self, session: WorkerSession, pending: PendingAssignment) -> None:
        if self.ops.limited(pending):  # after its delivery is stored, as _before_send says
            self._send_after_commit(session, pending)
        else:
            self.dispatcher.send_assignment(session, pending)

    def _send_after_commit(self, session: WorkerSession, pending: PendingAssignment) -> None:
        send = functools.partial(self.dispatcher.send_assignment, session, pending)
        self.commits.pending.effects.append(send)
        self.touch()

    def _fail_held(self, pending: PendingAssignment, failure: FailureInfo) -> None:
        # Called while the dispatcher assigns: fail the attempt once it is done.
        asyncio.get_running_loop().call_soon(self._fail_attempt, pending, failure)

    def _fail_attempt(
        self, pending: PendingAssignment, failure: FailureInfo, *, never_started: bool = False
    ) -> None:
        task_run_id, attempt = pending.token
        _, key = split_task_run_id(task_run_id)
        event = TaskFailed(key, attempt, failure, never_started=never_started)
        self.runs.handle(pending.flow_run_id, event)
        self.dispatcher.finished(pending.token)
        self.touch()

    def _before_send(self, session: WorkerSession, pending: PendingAssignment) -> bool:
        oversize = oversize_failure(pending, self.settings.limits)
        if oversize is not None:
            self._fail_held(pending, oversize)
            return False
        task_run_id, attempt = pending.token
        self._resent.discard(pending.token)  # (handed out: no longer to be claimed)
        self.runs.delivered(pending.flow_run_id, task_run_id, attempt, session.name, session.holder)
        # Recorded with the next commit; until then it counts against the session's
        # unrecorded deliveries (WorkerSession.can_take).
        session.unstored += 1
        self.commits.pending.effects.append(functools.partial(self._delivery_stored, session))
        self.touch()
        ready = self.exports.prepare(session, pending)
        if ready and self.ops.limited(pending):
            # An attempt under a concurrency limit is sent only once its delivery is
            # stored: a restarted server then knows a worker may run it and keeps its
            # lease until the worker reclaims it (docs/operations.md).
            self._send_after_commit(session, pending)
            return False
        return ready

    def _delivery_stored(self, session: WorkerSession) -> None:
        session.unstored -= 1
        if session.unstored == UNSTORED_PER_SLOT * session.slots - 1:  # it may take work
            self.dispatcher.pump()

    def closing(self) -> None:
        """The server is about to stop serving: the worker streams it ends are no
        loss. Their attempts stay delivered in the store, and the next server waits for
        the workers to reconnect with them, as after a crash; counted lost here, each
        would be retried there, running twice (once on the worker that kept it).
        Nothing is assigned from now on (``Dispatcher.close``)."""
        self._closing = True
        self.dispatcher.close()

    @property
    def stopping(self) -> bool:
        """``closing()`` was called: the worker streams are about to end."""
        return self._closing

    async def flush(self) -> None:
        """Store what is pending and carry out what it covers (acks, assignments held
        for their commit) while the workers' streams are still open; a store that
        cannot take it now is left to ``stop`` (the caller bounds the wait)."""
        with contextlib.suppress(Exception):
            await self.commits.durable()

    def _lost(self, flow_run_id: str, task_run_id: str, attempt: int) -> None:
        if self._closing:
            return
        _, key = split_task_run_id(task_run_id)
        if self.runs.replaying(flow_run_id):  # the loss waits for the replay (_resume)
            if self._claims.lose(flow_run_id, (task_run_id, attempt)):
                return  # claimed during the replay: lost only if it was the worker's
            self._lost_in_replay.add((task_run_id, attempt))
        self.runs.handle(flow_run_id, TaskLost(key, attempt))

    def _expire_start_timeouts(self, now: float) -> None:
        """Fail attempts no worker took within their schedule_to_start_timeout, at most
        EXPIRE_PER_TURN in a turn of the timer loop (the rest stay due: the next turn
        comes at once, after the other callbacks waiting): 20,000 at once held the loop
        0.28 s."""
        for pending in self.dispatcher.overdue(now, EXPIRE_PER_TURN):
            failure = start_timeout_failure(self.dispatcher, pending)
            # No worker took it: SCHEDULED -> FAILED, not a RUNNING it never was.
            self._fail_attempt(pending, failure, never_started=True)

    def _expire_orphans(self, now: float) -> None:
        """Count lost the orphans nobody claimed in time, at most EXPIRE_PER_TURN in a
        turn of the timer loop (the next turn comes at once while more are due)."""
        for token, orphan in self._orphans.expired(now, EXPIRE_PER_TURN):
            self._lost(orphan.flow_run_id, token[0], token[1])
            self.ops.orphan_lost(token)

    def _holders(self) -> set[str]:
        """The holders of the connected worker sessions."""
        return {session.holder for session in self.dispatcher.sessions.values()}

    def _unheld(self, tokens: list[Token]) -> None:
        """Orphans whose worker came back without them: it never got them (the server
        stopped before their assignments left) or dropped them. Sent again at once, as
        the same attempts; no loss is counted (_orphans.py)."""
        for token in tokens:
            orphan = self._orphans.pop(token)
            self.ops.orphan_lost(token)  # (its lease: taken again when it is sent)
            self.runs.resend(orphan.flow_run_id, split_task_run_id(token[0])[1])
            log.info(
                "attempt %d of task run %s was handed to worker %s before the restart, "
                "which is back without it: sending it again",
                token[1],
                token[0],
                orphan.holder,
            )
        if tokens:
            self.touch()

    def _caught_up(self) -> None:
        """Time the server itself did not run (stopped, or starved of CPU) does not
        count against its workers: a turn of the timer loop more than ``STALLED``
        seconds late moves their last contact, and the deadlines of attempts held for
        workers after a restart, forward by as much. Their heartbeats sent meanwhile
        wait unread in the streams; judged at once, every worker was dropped and its
        attempts run again (a user trial paused the server 22 s: a run FAILED with
        WorkerLost although no worker had died)."""
        ticked, self._ticked = self._ticked, time.monotonic()
        late = self._ticked - ticked - TICK
        if late <= STALLED:
            return
        log.warning(
            "the server did not run for %.1fs (stopped, or starved of CPU): its workers' "
            "heartbeat windows start again from now",
            late,
        )
        now = self.clock.now()
        for session in self.dispatcher.sessions.values():
            session.last_seen = min(now, session.last_seen + late)
        self._orphans.postpone(late)

    def _check_heartbeats(self, now: float) -> None:
        limit = self.settings.heartbeat_timeout
        for session in list(self.dispatcher.sessions.values()):
            if now - session.last_seen > limit:
                log.warning(
                    "worker %s sent nothing for %.1fs (heartbeat timeout %gs): its "
                    "attempts are lost",
                    session.name,
                    now - session.last_seen,
                    limit,
                )
                self.dispatcher.disconnect(session.session_id)
                self.notices.worker_disconnected(session, now)
                session.send(None)  # ends the stream

    # ------------------------------------------------------------ audit, access

    async def audit(self, action: str, kind: str, object_id: str, detail: str = "") -> None:
        """Record that the current caller did ``action`` to an object (stored before
        the call is answered; stored all the same if the caller goes away meanwhile)."""
        row = AuditRow(self.clock.now(), CALLER.get().name, action, kind, object_id, detail)
        await to_its_end(self.io.write(self.store.add_audit, row), f"auditing {action}")

    async def cancel_audited(self, flow_run_id: str, reason: str) -> None:
        """``cancel_run``, then its audit entry (as the current caller's ``cancel``),
        carried to the end even if the caller goes away meanwhile."""
        check_reason(reason)

        async def cancel() -> None:
            await self.cancel_run(flow_run_id, reason)
            await self.audit("cancel", "flow_run", flow_run_id, reason)

        await to_its_end(cancel(), "a cancel")

    def drop_revoked(self, valid: frozenset[str]) -> None:
        """End the streams of workers whose credential is no longer valid (they
        reconnect, and are refused)."""
        for session in list(self.dispatcher.sessions.values()):
            if session.credential and session.credential not in valid:
                why = (
                    "it connected without a credential, and the server needs one now "
                    "that one is stored"
                    if session.credential == ANONYMOUS_NAME
                    else f"credential {session.credential!r} was revoked"
                )
                log.warning("ending the stream of worker %s: %s", session.name, why)
                self.dispatcher.disconnect(session.session_id)
                session.send(None)
        self.touch()

    def may_download(self, caller: Caller, payload_id: str, uploader: str | None) -> bool:
        """Whether ``caller`` may read a payload (``uploader``: the credential that
        uploaded it, as stored with it): any reader may; a worker-only credential only
        what it uploaded itself, or what an attempt held by one of its sessions takes
        as input."""
        if Role.VIEWER in caller.role.grants:
            return True
        if uploader and uploader == caller.name:
            return True
        return payload_id in self.dispatcher.held_inputs(caller.name)

    # ------------------------------------------------------------------- watchers

    def watch(self, flow_run_id: str, *, task_runs: bool = True) -> asyncio.Queue[Any]:
        """A queue that gets a note after each commit that changed the run: the task
        run that changed (a TaskRun message), or None for "re-read the flow run".
        Without ``task_runs`` only changes of the flow run's own state are noted.
        A watcher that keeps up gets every change; once more than ``WATCH_BACKLOG``
        notes wait, they collapse to the newest state of each task run (and one
        None), so a watcher that stops reading costs about one note per task run of
        the run, not one per change."""
        queue: asyncio.Queue[Any] = LatestPerKey(_note_key, WATCH_BACKLOG)
        watchers = self._watchers if task_runs else self._flow_watchers
        watchers.setdefault(flow_run_id, set()).add(queue)
        return queue

    def unwatch(self, flow_run_id: str, queue: asyncio.Queue[Any]) -> None:
        """Stop noting changes on a queue ``watch`` returned."""
        for watchers in (self._watchers, self._flow_watchers):
            queues = watchers.get(flow_run_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del watchers[flow_run_id]

    def _snapshot_aside(self, flow_run_id: str, run: TaskRunRecord) -> run_pb2.TaskRun | None:
        """A watched run's task run as changed off the loop (a reader thread cancels
        the run, or expands a wide result): its snapshot, kept until the run rejoins."""
        if flow_run_id in self._watchers:  # (a dict read; a watcher coming meanwhile
            return task_run_from_record(flow_run_id, run)  # reads the run itself)
        return None

    def _notes_rejoined(self, flow_run_id: str, notes: list[object]) -> None:
        """The snapshots ``_snapshot_aside`` kept: the watchers get them with the
        commit that stores the run's changes."""
        pending = self.commits.pending.notes
        pending.extend((flow_run_id, typing.cast(run_pb2.TaskRun, note)) for note in notes)

    def _notify(self, flow_run_id: str, run: TaskRunRecord | None) -> None:
        pending = self.commits.pending
        pending.changed.add(flow_run_id)
        if run is None:
            pending.flow_changed.add(flow_run_id)
        if flow_run_id in self._watchers:  # delivered after the commit
            # Snapshot now: the record keeps changing before the commit.
            snapshot = None if run is None else task_run_from_record(flow_run_id, run)
            pending.notes.append((flow_run_id, snapshot))


def _note_key(note: run_pb2.TaskRun | None) -> str | None:
    """What a watch note is about: a task run (its id), or the flow run (None)."""
    return None if note is None else note.id


def _run_of(task_run_id_: str) -> str:
    """The flow run id of a task run id a peer named ("" if malformed)."""
    try:
        return split_task_run_id(task_run_id_)[0]
    except ValueError:
        return ""


def _end_unresumed(store: Store, flow_run_id: str, reason: str, why: str, now: float) -> None:
    """End a run this server did not resume as CANCELLED, with its unfinished task runs
    (on the writer thread)."""
    row = store.get_flow_run(flow_run_id)
    if FlowRunState(row.state).is_terminal:
        return
    batch = WriteBatch()
    message = f"{reason or 'cancelled by request'} (not resumed by this server: {why})"
    batch.flow_runs[row.id] = dataclasses.replace(
        row, state=FlowRunState.CANCELLED.value, ended_at=now, message=message
    )
    # Each unfinished task run's history ends CANCELLED too, and so does the run
    # attempt: both stayed as they were (the attempt RUNNING for good, in the web UI
    # and the API, a re-trial).
    seqs: dict[str, int] = {}
    for entry in store.task_run_history(flow_run_id):
        seqs[entry.key] = max(seqs.get(entry.key, 0), entry.seq)
    for task in store.task_runs(flow_run_id):
        if not TaskRunState(task.state).is_terminal:
            cancelled = dataclasses.replace(
                task, state=TaskRunState.CANCELLED.value, updated_at=now
            )
            batch.task_runs[(task.flow_run_id, task.key)] = cancelled
            seq = seqs.get(task.key, 0) + 1
            state = TaskRunState.CANCELLED.value
            batch.states.append(StateRow(row.id, task.key, seq, state, now, task.attempt, message))
    attempts = store.run_attempts(flow_run_id)
    if attempts and attempts[-1].ended_at is None:
        ended = dataclasses.replace(
            attempts[-1], state=FlowRunState.CANCELLED.value, ended_at=now, message=message
        )
        batch.ops.run_attempts.append(ended)
    store.commit(batch)
