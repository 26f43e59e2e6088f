"""ServerCore: the run manager and dispatcher on one asyncio event loop.

Servicers call into the core; the core turns worker messages into engine events,
commits once per loop tick (``touch()`` schedules it), and only then sends what the
commit covers: assignments, cancels and the Acks of worker reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, TypeAlias

from headwater.v1 import run_pb2, worker_pb2
from headwater.wire import (
    INLINE_PAYLOAD_LIMIT,
    PROTOCOL_VERSION,
    FailureInfo,
    duration,
    failure_from_proto,
    feature_names,
    seconds,
    split_task_run_id,
)
from headwater_runtime.embedded import SystemClock
from headwater_runtime.engine import (
    Event,
    TaskFailed,
    TaskLost,
    TaskRunRecord,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
)
from headwater_runtime.store import LogRow, Store

from ._convert import task_run_from_record
from ._dispatch import Dispatcher, Token, WorkerSession
from ._exports import DaskExports
from ._runs import PendingAssignment, RunManager
from ._schedules import Scheduler

log = logging.getLogger("headwater.server")

#: When busy, how long reports gather before one commit covers them all (seconds).
BATCH_WINDOW = 0.002
SERVER_VERSION = "0.1.0"

#: What a watcher hears after a commit: the task run that changed, or None for
#: "re-read the flow run".
WatchQueue: TypeAlias = asyncio.Queue[run_pb2.TaskRun | None]


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


class ServerCore:
    """Everything stateful about a running server.

    Args:
        store: where runs, flows, payloads and schedules are kept.
        settings: the server's configuration.
        clock: the time source (default: the system clock).
    """

    def __init__(self, store: Store, settings: ServerSettings, clock: Any = None) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock or SystemClock()
        self.exports = DaskExports(send=self._send_held, fail=self._fail_held)
        self.dispatcher = Dispatcher(on_lost=self._lost, before_send=self._before_send)
        self.runs = RunManager(store, self.dispatcher, self.clock)
        self.runs.listeners.append(self._notify)
        self.schedules = Scheduler(store, self.runs, self.clock)
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._last_flush = 0.0
        self._acks: list[tuple[WorkerSession, worker_pb2.ConnectResponse]] = []
        self._notes: list[tuple[str, run_pb2.TaskRun | None]] = []
        # Runs changed since the last flush, watched or not: a watcher that subscribes
        # between a change and its commit must still be woken by the commit.
        self._changed: set[str] = set()
        self._flow_changed: set[str] = set()  # the flow run's own state changed
        self._orphans: dict[Token, tuple[str, float]] = {}
        self._watchers: dict[str, set[WatchQueue]] = {}
        self._flow_watchers: dict[str, set[WatchQueue]] = {}
        self._background: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Recover unfinished runs, then start the timer/heartbeat loop."""
        deadline = self.clock.now() + self.settings.heartbeat_timeout
        for flow_run_id, task_run_id, attempt in self.runs.recover():
            self._orphans[(task_run_id, attempt)] = (flow_run_id, deadline)
        self.schedules.load()
        self.flush()
        self._background = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop the timer loop, commit what is pending, and end the spans of runs
        still in progress."""
        self._stopping = True
        self._wake.set()
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
        self.flush()
        self.runs.end_traces()

    def touch(self) -> None:
        """Schedule a commit: at the end of this loop tick when the server is idle,
        or after a short gathering window when it committed moments ago, so that a
        busy server commits many worker reports per transaction."""
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            if time.monotonic() - self._last_flush < BATCH_WINDOW:
                self._flush_handle = loop.call_later(BATCH_WINDOW, self.flush)
            else:
                self._flush_handle = loop.call_soon(self.flush)
        self._wake.set()

    def flush(self) -> None:
        """Commit, then send what the commit covers."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush_handle = None
        self._last_flush = time.monotonic()
        self.runs.flush()
        acks, self._acks = self._acks, []
        notes, self._notes = self._notes, []
        changed, self._changed = self._changed, set()
        flow_changed, self._flow_changed = self._flow_changed, set()
        for session, message in acks:
            session.send(message)
        for flow_run_id, run in notes:
            changed.discard(flow_run_id)
            for queue in self._watchers.get(flow_run_id, ()):
                queue.put_nowait(run)
        for flow_run_id in changed:
            for queue in self._watchers.get(flow_run_id, ()):
                queue.put_nowait(None)  # "re-read the run"
        for flow_run_id in flow_changed:
            for queue in self._flow_watchers.get(flow_run_id, ()):
                queue.put_nowait(None)

    async def _loop(self) -> None:
        # The flag, not only the cancellation, ends the loop: a cancel that arrives just
        # as the wake-up fires can be swallowed (asyncio.wait_for did that, hanging
        # every SIGTERM that raced with a worker disconnecting).
        while not self._stopping:
            now = self.clock.now()
            try:
                self.runs.fire_timers()
                self.schedules.fire_due()
                self._expire_orphans(now)
                self._check_heartbeats(now)
                self.flush()
            except Exception:
                # One bad tick (a full disk, a bug) must not silently end timers,
                # heartbeats and schedules for the server's whole life: say so, go on.
                log.exception("the server's timer loop failed; retrying")
            due = [now + 0.5]
            if self.runs.next_timer_at is not None:
                due.append(self.runs.next_timer_at)
            due.extend(d for _, d in self._orphans.values())
            if self.schedules.next_fire_at is not None:
                due.append(self.schedules.next_fire_at)
            if self._stopping:
                return
            self._wake.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
            # cancel that races with the wake-up, and stop() then waits forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(due) - now)):
                    await self._wake.wait()

    # ------------------------------------------------------------------- workers

    def connect(
        self, hello: worker_pb2.Hello
    ) -> tuple[WorkerSession, worker_pb2.Welcome, asyncio.Queue[worker_pb2.ConnectResponse | None]]:
        """Register a worker stream; returns its session, the Welcome and its outbox."""
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
        )
        adopted: dict[Token, str] = {}
        for token in hello.running:
            key = (token.task_run_id, token.attempt)
            orphan = self._orphans.pop(key, None)
            if orphan is not None:
                adopted[key] = orphan[0]
        welcome = worker_pb2.Welcome(
            session_id=session.session_id,
            server_version=SERVER_VERSION,
            protocol_version=PROTOCOL_VERSION,
            features=feature_names(),
            inline_payload_limit=self.settings.inline_payload_limit,
            keep_running=[worker_pb2.FencingToken(task_run_id=t, attempt=a) for t, a in adopted],
        )
        welcome.heartbeat_interval.CopyFrom(duration(self.settings.heartbeat_interval))
        welcome.heartbeat_timeout.CopyFrom(duration(self.settings.heartbeat_timeout))
        outbox.put_nowait(worker_pb2.ConnectResponse(welcome=welcome))
        self.dispatcher.connect(session, adopted)
        self.exports.connected(session)
        self.touch()
        return session, welcome, outbox

    def disconnect(self, session: WorkerSession) -> None:
        """A worker's stream ended: its attempts are lost and will be dispatched again."""
        self.dispatcher.disconnect(session.session_id)
        self.exports.forget(session)
        self.touch()

    def on_worker_message(self, session: WorkerSession, msg: worker_pb2.ConnectRequest) -> None:
        """Apply one message of a worker's stream."""
        session.last_seen = self.clock.now()
        kind = msg.WhichOneof("message")
        if kind == "heartbeat":
            stale = [
                t
                for t in msg.heartbeat.running
                if self.dispatcher.owner((t.task_run_id, t.attempt)) is not session
            ]
            session.send(
                worker_pb2.ConnectResponse(heartbeat_ack=worker_pb2.HeartbeatAck(cancel=stale))
            )
            return
        if kind == "log":
            self._log(msg.log)
            self.touch()
            return
        if kind in ("started", "result", "failure", "skipped", "cancelled"):
            report = getattr(msg, kind)
            token = report.token
            key: Token = (token.task_run_id, token.attempt)
            try:
                flow_run_id, run_key = split_task_run_id(token.task_run_id)
            except ValueError as exc:
                self._ack(session, token, str(exc))
                return
            if kind == "cancelled":
                self.dispatcher.finished(key)
                self.touch()
                return
            event: Event
            if kind == "started":
                event = TaskStarted(run_key, token.attempt)
            elif kind == "result":
                cache_key = self.runs.function_cache_key(flow_run_id, run_key, msg.result.cache_key)
                event = TaskSucceeded(run_key, token.attempt, msg.result.result, cache_key)
                self.exports.record(session, msg.result.result)
            elif kind == "failure":
                failure = failure_from_proto(msg.failure.failure, msg.failure.timed_out)
                event = TaskFailed(run_key, token.attempt, failure)
            else:
                event = TaskSkipped(run_key, token.attempt, msg.skipped.reason)
            ignored = self.runs.handle(flow_run_id, event)
            if kind != "started":
                self.dispatcher.finished(key)
                self._ack(session, token, ignored[0].reason if ignored else None)
            self.touch()
            return
        if kind == "value_exported":
            self.exports.on_exported(session, msg.value_exported)
            return
        if kind == "cache_key":
            self._cache_key(session, msg.cache_key)

    def _cache_key(self, session: WorkerSession, report: worker_pb2.CacheKeyReport) -> None:
        token = report.token
        try:
            flow_run_id, run_key = split_task_run_id(token.task_run_id)
        except ValueError:
            flow_run_id = run_key = ""
        hit = bool(run_key) and self.runs.cache_lookup(
            flow_run_id, run_key, token.attempt, report.cache_key
        )
        decision = worker_pb2.ConnectResponse(
            cache_decision=worker_pb2.CacheDecision(token=token, hit=hit)
        )
        if hit:
            # The attempt is over (CACHED): free its slot, and answer after the commit.
            self.dispatcher.finished((token.task_run_id, token.attempt))
            self._acks.append((session, decision))
            self.touch()
        else:
            session.send(decision)

    def _ack(
        self, session: WorkerSession, token: worker_pb2.FencingToken, refused: str | None
    ) -> None:
        """Answer a worker's report: accepted, or refused for the given reason."""
        ack = worker_pb2.Ack(token=token, accepted=refused is None)
        if refused is not None:
            ack.reason = refused
        self._acks.append((session, worker_pb2.ConnectResponse(ack=ack)))

    def _log(self, log: worker_pb2.TaskLog) -> None:
        try:
            flow_run_id, key = split_task_run_id(log.token.task_run_id)
        except ValueError:
            return
        at = seconds(log.timestamp) if log.HasField("timestamp") else self.clock.now()
        self.runs.add_log(
            LogRow(flow_run_id, key, log.token.attempt, at, log.level, log.logger, log.message)
        )

    def _send_held(self, session: WorkerSession, pending: PendingAssignment) -> None:
        self.dispatcher.send_assignment(session, pending)

    def _fail_held(self, pending: PendingAssignment, failure: FailureInfo) -> None:
        # Called while the dispatcher assigns: fail the attempt once it is done.
        asyncio.get_running_loop().call_soon(self._fail_attempt, pending, failure)

    def _fail_attempt(self, pending: PendingAssignment, failure: FailureInfo) -> None:
        task_run_id, attempt = pending.token
        _, key = split_task_run_id(task_run_id)
        self.runs.handle(pending.flow_run_id, TaskFailed(key, attempt, failure))
        self.dispatcher.finished(pending.token)
        self.touch()

    def _before_send(self, session: WorkerSession, pending: PendingAssignment) -> bool:
        self.runs.assigned(pending.flow_run_id, pending.token[0], session.name)
        return self.exports.prepare(session, pending)

    def _lost(self, flow_run_id: str, task_run_id: str, attempt: int) -> None:
        _, key = split_task_run_id(task_run_id)
        self.runs.handle(flow_run_id, TaskLost(key, attempt))

    def _expire_orphans(self, now: float) -> None:
        for token, (flow_run_id, deadline) in list(self._orphans.items()):
            if deadline <= now:
                del self._orphans[token]
                self._lost(flow_run_id, token[0], token[1])

    def _check_heartbeats(self, now: float) -> None:
        limit = self.settings.heartbeat_timeout
        for session in list(self.dispatcher.sessions.values()):
            if now - session.last_seen > limit:
                self.dispatcher.disconnect(session.session_id)
                session.send(None)  # ends the stream

    # ------------------------------------------------------------------- watchers

    def watch(self, flow_run_id: str, *, task_runs: bool = True) -> WatchQueue:
        """A queue that gets a note after each commit that changed the run: the task
        run that changed (a TaskRun message), or None for "re-read the flow run".
        Without ``task_runs`` only changes of the flow run's own state are noted."""
        queue: WatchQueue = asyncio.Queue()
        watchers = self._watchers if task_runs else self._flow_watchers
        watchers.setdefault(flow_run_id, set()).add(queue)
        return queue

    def unwatch(self, flow_run_id: str, queue: WatchQueue) -> None:
        """Stop noting changes on a queue ``watch`` returned."""
        for watchers in (self._watchers, self._flow_watchers):
            queues = watchers.get(flow_run_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del watchers[flow_run_id]

    def _notify(self, flow_run_id: str, run: TaskRunRecord | None) -> None:
        self._changed.add(flow_run_id)
        if run is None:
            self._flow_changed.add(flow_run_id)
        if flow_run_id in self._watchers:  # delivered after the commit, in flush()
            # Snapshot now: the record keeps changing before the flush.
            snapshot = None if run is None else task_run_from_record(flow_run_id, run)
            self._notes.append((flow_run_id, snapshot))
