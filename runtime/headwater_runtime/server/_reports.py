"""What a worker's stream says, taken in by the server core (a part of ``ServerCore``,
kept apart for size): heartbeats, log lines, attempts' starts and outcomes, cache
keys, exported values and built graphs.

Only the session that holds an attempt reports on it or logs into it (fencing bound to
the session, docs/durability.md). A report on a run that is being resumed or worked on
off the loop waits, with its ack, until the run is live again; an ack leaves only after
the commit that stores its event.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from grpc import StatusCode

from headwater.v1 import payload_pb2, worker_pb2
from headwater.wire import (
    ENCODING_KEY,
    FailureInfo,
    cut_text,
    failure_from_proto,
    seconds,
    split_task_run_id,
    valid_timestamp,
)
from headwater_runtime.engine import (
    Clock,
    Event,
    EventIgnored,
    TaskFailed,
    TaskLost,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
)
from headwater_runtime.store import LogRow, Store

from ._assignments import Token
from ._dispatch import Dispatcher, WorkerSession
from ._io import StoreIO
from ._limits import InvalidValue, LimitExceeded, check_value
from ._result_refs import EXPORT, REFS_ON_LOOP, Problem, Reader, stored_problems, walk

if TYPE_CHECKING:
    from ._commits import Committer
    from ._core import ServerSettings
    from ._creation import RunCreation
    from ._exports import DaskExports
    from ._runs import RunManager
    from ._wide import WideWork

log = logging.getLogger("headwater.server")

#: What a worker is told when it gives back an attempt nobody asked it to stop.
GIVEN_BACK = "the worker gave the attempt back (TaskCancelled without a cancel request)"
#: The failure type of a task whose result the server refused (over a limit, or a
#: value that contradicts itself).
REFUSED_RESULT = "headwater.ResultRefused"


class WorkerReports:
    """A worker stream's messages (a mixin of ``ServerCore``)."""

    settings: ServerSettings
    clock: Clock
    dispatcher: Dispatcher
    runs: RunManager
    commits: Committer
    exports: DaskExports
    creation: RunCreation
    wide: WideWork
    store: Store
    io: StoreIO

    if TYPE_CHECKING:  # ServerCore's

        def touch(self) -> None:
            """(ServerCore.touch.)"""
            ...

    async def look_up_refs(
        self, session: WorkerSession, messages: Iterable[worker_pb2.ConnectRequest]
    ) -> None:
        """Before a stream's results (and Dask bridge exports) are taken in: what is
        wrong with the payload references their values hold (server/_result_refs.py),
        noted on the session by attempt (``(payload id, EXPORT)`` for an export), for
        ``_check_result`` to refuse the result (``DaskExports.on_exported``, the export).

        One read, on a reader thread, for all of a message's values; none when no value
        references the store. A value of more than REFS_ON_LOOP elements (at any depth)
        is searched on that thread too; a result wider than ``max_map_width`` is not
        searched (it is refused for its width). When the store cannot be read, the
        values are taken unchecked, and that is logged: the stream goes on."""
        # Keys: (task run id, attempt) for a result, (payload id, EXPORT) for an export.
        problems: dict[Token, list[Problem]] = {}
        refs: dict[Token, list[payload_pb2.PayloadRef]] = {}
        wide: dict[Token, payload_pb2.Value] = {}
        for msg in messages:
            kind = msg.WhichOneof("message")
            if kind == "result":
                token, value = msg.result.token, msg.result.result
                key = (token.task_run_id, token.attempt)
                if len(value.items) > self.settings.limits.max_map_width:
                    continue
            elif kind == "value_exported" and not msg.value_exported.HasField("error"):
                key, value = (msg.value_exported.payload_id, EXPORT), msg.value_exported.value
            else:
                continue
            found = walk(value, REFS_ON_LOOP)
            if found is None:
                wide[key] = value
                continue
            if found[0]:
                refs[key] = found[0]
            if found[1]:
                problems[key] = found[1]
        if refs or wide:
            # A worker-only credential references only payloads it may read (its
            # uploads, its held attempts' inputs): a reference is a way to read.
            reader = None
            if session.restricted:
                reader = Reader(session.credential, self.dispatcher.held_inputs(session.credential))
            try:
                stored = await self.io.read(stored_problems, self.store, refs, wide, reader)
            except Exception as exc:  # (the store cannot be read now: no reason to refuse)
                log.warning("results taken without looking up the payloads they reference: %s", exc)
                stored = {}
            for key, more in stored.items():
                problems[key] = problems.get(key, []) + more
        session.ref_problems.update(problems)

    def _holds(self, session: WorkerSession, token: worker_pb2.FencingToken) -> bool:
        return self.dispatcher.owner((token.task_run_id, token.attempt)) is session

    def on_worker_message(self, session: WorkerSession, msg: worker_pb2.ConnectRequest) -> None:
        """Apply one message of a worker's stream."""
        session.last_seen = self.clock.now()
        kind = msg.WhichOneof("message")
        if kind == "heartbeat":
            stale = [t for t in msg.heartbeat.running if not self._holds(session, t)]
            session.send(
                worker_pb2.ConnectResponse(heartbeat_ack=worker_pb2.HeartbeatAck(cancel=stale))
            )
            return
        if kind == "log":
            if self._holds(session, msg.log.token):  # only the holder writes into a run
                self._log(session, msg.log)
                self.touch()
            return
        if kind in ("started", "result", "failure", "skipped", "cancelled"):
            self._report(session, kind, msg)
            return
        if kind == "value_exported":
            self.exports.on_exported(session, msg.value_exported)
            return
        if kind == "graph_built":
            self.creation.builds.on_built(session, msg.graph_built)
            return
        if kind == "cache_key":
            self._cache_key(session, msg.cache_key)
            return
        if kind == "stopping":  # its give-backs follow; nothing more goes to it
            session.stopping = True

    def _report(self, session: WorkerSession, kind: str, msg: worker_pb2.ConnectRequest) -> None:
        """An attempt's start or outcome, from the session that holds it."""
        token: worker_pb2.FencingToken = getattr(msg, kind).token
        if not self._holds(session, token):
            session.ref_problems.pop((token.task_run_id, token.attempt), None)
            if kind != "started":
                self._refuse(
                    session,
                    token,
                    f"attempt {token.attempt} of task run {token.task_run_id!r} is not held "
                    "by this worker session",
                )
            return
        flow_run_id, run_key = split_task_run_id(token.task_run_id)  # held: well formed
        if kind != "started" and session.logged:
            self._logs_ended(session, token, flow_run_id, run_key)
        if self.runs.waiting(flow_run_id):
            # Being resumed or worked on off the loop: the report, and its ack, once the
            # run is live again (no ack leaves before its event is stored). An outcome
            # frees the worker's slot now, for other runs' work.
            report_later = functools.partial(
                self._report_due, session, kind, msg, token, flow_run_id, run_key
            )
            self.runs.later(flow_run_id, report_later)
            if kind != "started":
                self.dispatcher.reported((token.task_run_id, token.attempt))
            return
        self._held_report(session, kind, msg, token, flow_run_id, run_key)

    def _report_due(
        self,
        session: WorkerSession,
        kind: str,
        msg: worker_pb2.ConnectRequest,
        token: worker_pb2.FencingToken,
        flow_run_id: str,
        run_key: str,
    ) -> None:
        """A report that waited for its run (``_report``) takes effect, if the session
        still holds its attempt: one claimed while the run was replayed may have been
        taken back since (``ServerCore._check_claims``)."""
        if self._holds(session, token):
            self._held_report(session, kind, msg, token, flow_run_id, run_key)
        elif kind != "started":
            self._refuse(
                session,
                token,
                f"attempt {token.attempt} of task run {token.task_run_id!r} was taken back "
                "from this worker session (not its to keep after the restart)",
            )

    def _held_report(
        self,
        session: WorkerSession,
        kind: str,
        msg: worker_pb2.ConnectRequest,
        token: worker_pb2.FencingToken,
        flow_run_id: str,
        run_key: str,
    ) -> None:
        """A report from the session holding its attempt (``_report``) takes effect."""
        key: Token = (token.task_run_id, token.attempt)
        event: Event
        if kind == "cancelled":
            requested = self.dispatcher.cancel_requested(key)
            self.dispatcher.finished(key)
            if not requested:  # given back unasked: dispatch it again (not a failure)
                lost = TaskLost(run_key, token.attempt, GIVEN_BACK, given_back=True)
                self.runs.handle(flow_run_id, lost)
            self.touch()
            return
        refused: tuple[StatusCode, str] | None = None
        if kind == "started":
            # When it started by the worker's clock (it reports a moment later): the
            # engine keeps it between the attempt's SCHEDULED state and now.
            event = TaskStarted(run_key, token.attempt, _time_of(msg.started, "started_at"))
        elif kind == "result":
            self.exports.record(session, msg.result.result, flow_run_id)
            width = len(msg.result.result.items)
            problems = session.ref_problems.pop(key, [])
            decide = functools.partial(
                self._result_event, token, flow_run_id, run_key, msg.result, problems
            )
            if self.runs.wide_result(width) and self.wide.expand(
                session, token, flow_run_id, decide, width
            ):
                return
            event, refused = decide()
        elif kind == "failure":
            failure = failure_from_proto(msg.failure.failure, msg.failure.timed_out)
            event = TaskFailed(
                run_key,
                token.attempt,
                failure,
                False,
                _time_of(msg.failure, "started_at"),
                _time_of(msg.failure, "ended_at"),
            )
        else:
            event = TaskSkipped(
                run_key,
                token.attempt,
                msg.skipped.reason,
                _time_of(msg.skipped, "started_at"),
                _time_of(msg.skipped, "ended_at"),
            )
        ignored = self.runs.handle(flow_run_id, event)
        if kind != "started":
            self.dispatcher.finished(key)
            self._ack(session, token, ignored, refused)
        self.touch()

    def _result_event(
        self,
        token: worker_pb2.FencingToken,
        flow_run_id: str,
        run_key: str,
        result: worker_pb2.TaskResult,
        ref_problems: Sequence[Problem],
    ) -> tuple[Event, tuple[StatusCode, str] | None]:
        """What a worker's result does: it succeeds, or, when the server cannot take it,
        fails its task (not retryable: the same code would produce it again) and the
        worker is told why (the refusal). ``ref_problems``: what is wrong with the
        payloads it references (``look_up_refs``)."""
        refused = self._check_result(token, result, ref_problems)
        started, ended = _time_of(result, "started_at"), _time_of(result, "ended_at")
        if refused is not None:
            failure = FailureInfo(type=REFUSED_RESULT, message=refused[1], retryable=False)
            refusal = TaskFailed(run_key, token.attempt, failure, False, started, ended)
            return refusal, refused
        cache_key = self.runs.function_cache_key(flow_run_id, run_key, result.cache_key)
        succeeded = TaskSucceeded(
            run_key, token.attempt, result.result, cache_key, False, started, ended
        )
        return succeeded, None

    def _check_result(
        self,
        token: worker_pb2.FencingToken,
        result: worker_pb2.TaskResult,
        ref_problems: Sequence[Problem],
    ) -> tuple[StatusCode, str] | None:
        """Why a worker's result cannot be taken (its status and message), or None."""
        what = f"the result of attempt {token.attempt} of task run {token.task_run_id!r}"
        if ref_problems:
            code, why = ref_problems[0]
            return code, f"{what} {why}"
        value = result.result
        kind = value.WhichOneof("kind")
        if kind is None:  # (no result at all: no reader could decode it)
            return StatusCode.INVALID_ARGUMENT, (
                f"{what} carries no value (TaskResult.result needs inline bytes or a "
                "payload reference; a task that returns nothing sends the encoding of None)"
            )
        if kind == "inline" and not value.inline.metadata.get(ENCODING_KEY):
            return StatusCode.INVALID_ARGUMENT, f"{what} has no {ENCODING_KEY!r} in its metadata"
        try:
            check_value(value, self.settings.limits, what)
        except LimitExceeded as exc:
            return StatusCode.RESOURCE_EXHAUSTED, str(exc)
        except InvalidValue as exc:
            return StatusCode.INVALID_ARGUMENT, str(exc)
        return None

    def _cache_key(self, session: WorkerSession, report: worker_pb2.CacheKeyReport) -> None:
        token = report.token
        hit = False
        if self._holds(session, token):
            flow_run_id, run_key = split_task_run_id(token.task_run_id)
            hit = self.runs.cache_lookup(flow_run_id, run_key, token.attempt, report.cache_key)
        decision = worker_pb2.ConnectResponse(
            cache_decision=worker_pb2.CacheDecision(token=token, hit=hit)
        )
        if hit:
            # The attempt is over (CACHED): free its slot, and answer after the commit.
            self.dispatcher.finished((token.task_run_id, token.attempt))
            session.logged.pop((token.task_run_id, token.attempt), None)
            self.commits.pending.acks.append((session.send, decision))
            self.touch()
        else:
            session.send(decision)

    def _ack(
        self,
        session: WorkerSession,
        token: worker_pb2.FencingToken,
        ignored: list[EventIgnored],
        refused: tuple[StatusCode, str] | None = None,
    ) -> None:
        ack = worker_pb2.Ack(token=token, accepted=not ignored and refused is None)
        if ignored:
            ack.reason = ignored[0].reason
            ack.code = StatusCode.FAILED_PRECONDITION.value[0]
        elif refused is not None:
            ack.code, ack.reason = refused[0].value[0], refused[1]
        self.commits.pending.acks.append((session.send, worker_pb2.ConnectResponse(ack=ack)))

    def _refuse(self, session: WorkerSession, token: worker_pb2.FencingToken, why: str) -> None:
        """Refuse a report that changed nothing. Its Ack goes out with the next commit
        all the same, behind the Acks of the reports before it: a report sent twice is
        answered accepted, then refused, in the order it was sent (a user trial: the
        refusal of the second came first, sent at once)."""
        ack = worker_pb2.Ack(
            token=token,
            accepted=False,
            reason=why,
            code=StatusCode.FAILED_PRECONDITION.value[0],
        )
        self.commits.pending.acks.append((session.send, worker_pb2.ConnectResponse(ack=ack)))
        self.touch()

    def _log(self, session: WorkerSession, log: worker_pb2.TaskLog) -> None:
        flow_run_id, key = split_task_run_id(log.token.task_run_id)
        attempt = log.token.attempt
        message = cut_text(log.message)  # the SDKs cut theirs; any peer's is cut here
        size = len(message) if message.isascii() else len(message.encode())
        cost = max(size, LOG_RECORD_FLOOR)  # (a flood of empty records is bounded too)
        token = (log.token.task_run_id, attempt)
        counts = session.logged.setdefault(token, [0, 0, 0])
        limit = self.settings.limits.max_log_bytes
        if counts[0] + cost > limit:  # over max_log_bytes: dropped, counted
            if not counts[1]:
                what = f"attempt {attempt} of task run {key!r} logged over {limit} bytes"
                why = f"{self.settings.limits.exceeded('max_log_bytes', what)}; its later "
                self._server_log(flow_run_id, key, attempt, why + "log records are dropped")
            counts[1] += 1
            counts[2] += size
            return
        counts[0] += cost
        # A time no Timestamp can hold would make the run's logs unreadable: the
        # server's own time stands in for it.
        given = log.HasField("timestamp") and valid_timestamp(log.timestamp)
        at = seconds(log.timestamp) if given else self.clock.now()
        level, logger = log_level(log.level), _label(log.logger, LOGGER_LIMIT)
        self.runs.add_log(LogRow(flow_run_id, key, attempt, at, level, logger, message))
        self.commits.pending.logged.add(flow_run_id)  # log followers, after the commit

    def _logs_ended(
        self, session: WorkerSession, token: worker_pb2.FencingToken, flow_run_id: str, key: str
    ) -> None:
        """An attempt's outcome came: forget its log count, and say what was dropped."""
        counts = session.logged.pop((token.task_run_id, token.attempt), None)
        if counts is not None and counts[1]:
            what = (
                f"{counts[1]} log records ({counts[2]} bytes) of attempt {token.attempt} "
                "were dropped"
            )
            message = str(self.settings.limits.exceeded("max_log_bytes", what))
            self._server_log(flow_run_id, key, token.attempt, message)

    def _server_log(self, flow_run_id: str, key: str, attempt: int, message: str) -> None:
        """A WARNING record of the server's own in an attempt's log."""
        row = LogRow(flow_run_id, key, attempt, self.clock.now(), "WARNING", SERVER_LOGGER, message)
        self.runs.add_log(row)
        self.commits.pending.logged.add(flow_run_id)


#: The least a log record counts against max_log_bytes (about what storing a record
#: costs beyond its text), whatever its message's length.
LOG_RECORD_FLOOR = 100
#: The logger name of the records the server writes into an attempt's log.
SERVER_LOGGER = "headwater.server"
#: A log record's level and logger name are labels, kept to this many characters.
LEVEL_LIMIT, LOGGER_LIMIT = 16, 200
_LEVEL_ALIASES = {"WARN": "WARNING", "FATAL": "CRITICAL"}


def _label(text: str, limit: int) -> str:
    """``text`` without control characters, cut to ``limit`` characters."""
    if not text.isprintable():
        text = "".join(ch for ch in text if ch.isprintable())
    return text[:limit]


def log_level(given: str) -> str:
    """A log record's level as stored: upper case, ``WARN`` and ``FATAL`` as Python
    names them, ``INFO`` when empty; any other name is kept (a peer's ``TRACE``)."""
    level = _label(given, LEVEL_LIMIT).strip().upper() or "INFO"
    return _LEVEL_ALIASES.get(level, level)


def _time_of(report: Any, field: str) -> float | None:
    """A report's time ``field`` in seconds: ``started_at`` (TaskStarted's, or an
    outcome's for an attempt it sent no TaskStarted for) or an outcome's ``ended_at``;
    None when it does not say, or says no valid time (the engine keeps a given one
    between the attempt's times it knows and now)."""
    if not report.HasField(field) or not valid_timestamp(getattr(report, field)):
        return None
    return seconds(getattr(report, field))
