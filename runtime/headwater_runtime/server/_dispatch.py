"""The dispatcher: routes ready attempts to connected workers.

A pending attempt goes to a worker that has its task type as a capability, whose
labels include the task's required labels and whose code for the task is the code the
run's graph was built with (``Hello.code_digests`` against ``TaskNode.code_digest``),
never beyond the worker's free slots (credit flow control), round-robin across flow
runs so one large run cannot starve the others. An attempt no connected worker can
take waits (its task run stays SCHEDULED) until a suitable worker connects or frees a
slot; ``waiting_reason`` says why (a limit, workers' other code for the task, or
the workers). While ``paused`` (the store cannot record deliveries), nothing
is handed out.

Two operations features hook in here: an attempt whose task tag is at its concurrency
or rate limit waits in ``TagLimits`` (_tag_limits.py) instead, and gets a lease on its
tags when it is assigned, released when it ends; a drained worker (``draining``) gets
no new attempts.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from grpc import StatusCode

from headwater.v1 import payload_pb2, worker_pb2
from headwater.wire import split_task_run_id

from ._access import ANONYMOUS_NAME
from ._assignments import TOKEN_OF, PendingAssignment, QueuedAttempts, Token
from ._gc import release_later
from ._tag_limits import TagLimits
from ._waiting import waiting_reason

#: A worker gets no more assignments while it has this many per slot whose delivery
#: the store has not recorded yet (WorkerSession.can_take). Only tasks shorter than a
#: commit reach it: a slot then turns over several times while one commit is written
#: and the next gathers (a few ms). At 2, the workers of a fan-out of no-op tasks sat
#: at it with free slots about a quarter of the time (benchmarks/README.md, thirteenth
#: session).
UNSTORED_PER_SLOT = 4
_NONE: dict[Token, PendingAssignment] = {}  # no attempt of that run is queued

log = logging.getLogger("headwater.server")


@dataclass(eq=False)
class WorkerSession:
    """One connected worker stream."""

    session_id: str
    worker_id: str
    name: str
    capabilities: frozenset[str]
    labels: dict[str, str]
    slots: int
    send: Callable[[worker_pb2.ConnectResponse | None], None]  # None ends the stream
    last_seen: float = 0.0
    running: dict[Token, str] = field(default_factory=dict)  # token -> flow run id
    #: Assignments sent whose delivery the store has not recorded yet (kept by the host).
    unstored: int = 0
    #: Digest of the worker's code by task type (Hello.code_digests).
    code_digests: dict[str, str] = field(default_factory=dict)
    #: The flows it can build graphs of, with their code digests (Hello.flows).
    flows: dict[str, str] = field(default_factory=dict)
    #: Optional protocol features it listed (Hello.features).
    features: frozenset[str] = frozenset()
    #: Connection order: a higher number connected later.
    serial: int = 0
    #: The credential the worker connected with.
    credential: str = ""
    #: Whether that credential may read only its attempts' inputs (then ``reads``
    #: holds the payload ids each held attempt takes as input).
    restricted: bool = False
    reads: dict[Token, frozenset[str]] = field(default_factory=dict)
    #: Likewise, by build id, the payloads of the values of the graph builds it was
    #: asked for and has not answered (it reads them to build).
    build_reads: dict[str, frozenset[str]] = field(default_factory=dict)
    #: Drained (DrainWorker): it gets no new attempts.
    draining: bool = False
    #: Said it is stopping (ConnectRequest.stopping): it gets no new attempts.
    stopping: bool = False
    #: Its Hello (runtime, features), and when the session began (ListWorkers).
    hello: worker_pb2.Hello | None = None
    connected_at: float = 0.0
    #: Attempts it holds that wait for a flow run they started: their slots are lent
    #: (``Dispatcher.lend``). Always a part of ``running``.
    waiting: set[Token] = field(default_factory=set)
    #: Log text stored per attempt it holds, and the records dropped over the limit
    #: (``max_log_bytes``): [bytes, records dropped, bytes dropped].
    logged: dict[Token, list[int]] = field(default_factory=dict)
    #: What is wrong with the payload references of the results it is about to report
    #: (status, words), by attempt, and of the values it exports as a Dask bridge worker,
    #: by (payload id, ``_result_refs.EXPORT``) (``WorkerReports.look_up_refs``; taken
    #: with the result or the export).
    ref_problems: dict[tuple[str, int], list[tuple[StatusCode, str]]] = field(default_factory=dict)

    @property
    def holder(self) -> str:
        """Who holds the values this session reports as a Dask bridge (``_exports``):
        its worker id, bound to its credential when the server checks credentials. A
        session of another credential that gives the same worker id is not their holder
        (a user trial took over a bridge's exports so, and the runs used its values)."""
        if not self.credential or self.credential == ANONYMOUS_NAME:
            return self.worker_id
        # (The name percent-encoded: the first "/" ends it, whatever either holds.)
        return f"{quote(self.credential, safe='')}/{self.worker_id}"

    @property
    def free(self) -> int:
        """Slots not taken by an attempt the worker holds (none while drained); an
        attempt waiting for its child flow run lends its slot."""
        if self.draining or self.stopping:
            return 0
        return self.slots - len(self.running) + len(self.waiting)

    @property
    def can_take(self) -> bool:
        """A free slot, and fewer unrecorded deliveries than ``UNSTORED_PER_SLOT``
        times the slots: after a crash an attempt sent without a recorded delivery may
        run twice, so a worker never has more of them than that, however far the store
        falls behind."""
        return self.free > 0 and self.unstored < UNSTORED_PER_SLOT * self.slots

    def stale(self, pending: PendingAssignment) -> bool:
        """Whether the worker's code for the attempt's task differs from the code the
        run's graph was built with (either side not saying counts as the same)."""
        return self._other_code(pending.task_type, pending.code_digest)

    def _other_code(self, task_type: str, code_digest: str) -> bool:
        mine = self.code_digests.get(task_type, "")
        return bool(mine and code_digest and mine != code_digest)

    def accepts(self, pending: PendingAssignment) -> bool:
        """Whether the worker has the attempt's task type, every label it requires and
        the code the run's graph names for it."""
        return self.offers(pending.task_type, pending.labels, pending.code_digest)

    def offers(self, task_type: str, labels: Mapping[str, str], code_digest: str) -> bool:
        """``accepts`` for an attempt described by its task's type, labels and code."""
        return (
            task_type in self.capabilities
            and all(self.labels.get(k) == v for k, v in labels.items())
            and not self._other_code(task_type, code_digest)
        )


class Dispatcher:
    """Matches pending attempts to worker sessions.

    Args:
        on_lost: called with (flow run id, task run id, attempt) for every attempt a
            disconnected worker was holding.
        before_send: called with (session, pending) when an attempt is assigned; False
            holds the assignment back (it keeps its slot): the caller sends it later
            with ``send_assignment``, or fails it (values to export first, see _exports).
        limits: the concurrency and rate limits by tag (default: none set).
    """

    def __init__(
        self,
        on_lost: Callable[[str, str, int], None],
        before_send: Callable[[WorkerSession, PendingAssignment], bool] | None = None,
        limits: TagLimits | None = None,
    ) -> None:
        self.on_lost = on_lost
        self.before_send = before_send
        #: Whether an attempt waits for a flow run it started (its slot is lent, see
        #: ``lend``); asked for the attempts a reconnecting worker still runs.
        self.waits: Callable[[Token], bool] | None = None
        #: Whether a queued attempt is still to be run (its engine's view: not ended,
        #: lost or replaced since it was queued); one that is not is dropped unsent.
        #: Unset: every queued attempt is.
        self.due: Callable[[PendingAssignment], bool] | None = None
        self.limits = limits if limits is not None else TagLimits(time.time)
        self.sessions: dict[str, WorkerSession] = {}
        # task type -> flow run id -> FIFO of attempts; runs rotate for fairness.
        self._pending: dict[str, OrderedDict[str, deque[PendingAssignment]]] = {}
        # The attempts still queued, by flow run, then token. One taken out of its
        # queue early (a cancel, a reconnecting worker claiming it) leaves this index
        # at once and is skipped when it reaches the head of its queue: no queue is
        # ever searched; a whole run's leave at once when it is cancelled.
        self._queued: dict[str, dict[Token, PendingAssignment]] = {}
        # How many queued attempts each (task type, flow run) queue still has.
        self._live: dict[tuple[str, str], int] = {}
        self._owner: dict[Token, WorkerSession] = {}
        self._cancelling: set[Token] = set()  # cancels sent, not yet acknowledged
        self._paused = False
        self._closed = False  # the server stops: nothing is handed out any more
        self._warned: set[tuple[str, str, str]] = set()  # (session, task type, digest)
        # Attempts with a schedule_to_start_timeout: (start by, tie breaker, attempt).
        self._start_by: list[tuple[float, int, PendingAssignment]] = []
        # Inside ``deferred()``: pumps wait for its end (one pump for many outcomes).
        self._deferring = False
        self._pump_wanted = False

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold the pumps asked for meanwhile until the block ends, then pump once: a
        worker's batch of outcomes (or a commit's release of many deliveries) frees
        many slots, and one pump fills them at less cost than one pump per slot
        (the candidates and queues are looked at once)."""
        if self._deferring:  # nested: the outer block pumps
            yield
            return
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
            if self._pump_wanted:
                self._pump_wanted = False
                self.pump()

    @property
    def paused(self) -> bool:
        """Whether handing out attempts is suspended (see ``pause``)."""
        return self._paused

    def pause(self, paused: bool) -> None:
        """Suspend (True) or resume (False) handing out attempts; resuming hands out
        what waits."""
        self._paused = paused
        if not paused:
            self.pump()

    def close(self) -> None:
        """Hand out nothing more (the server stops; ``pause(False)`` does not undo
        it): an attempt assigned now would be recorded delivered, and the stop may end
        its worker's stream before it arrives. The next server would then wait a
        heartbeat window for a worker to claim it, and count it lost."""
        self._closed = True

    # ------------------------------------------------------------ run manager side

    def submit(self, pending: PendingAssignment) -> None:
        """Queue an attempt, and assign it at once if a suitable worker has a free slot."""
        self.submit_many(pending.flow_run_id, {pending.task_type: [pending]})

    def submit_many(
        self, flow_run_id: str, by_type: Mapping[str, Sequence[PendingAssignment]]
    ) -> None:
        """Queue many attempts of one flow run at once (a 100,000-task run starting):
        a few calls per task type, whatever the number of attempts, then one pump."""
        for task_type, pendings in by_type.items():
            if (task_type, flow_run_id) in self._live:  # none can be queued twice
                tokens = set(map(TOKEN_OF, pendings))
                for again in self._queued.get(flow_run_id, {}).keys() & tokens:  # once
                    self._unqueue(again, flow_run_id)
            self._enqueue(task_type, flow_run_id, pendings)
            for pending in pendings:
                if pending.start_by is not None:
                    heapq.heappush(self._start_by, (pending.start_by, id(pending), pending))
        self.pump()

    def submit_queued(self, queued: QueuedAttempts) -> None:
        """Queue attempts laid out off the event loop (``queued_attempts``): their
        queues and index are taken over as they are when the run has nothing queued
        yet (a run starting), else they are queued one by one like ``submit_many``."""
        run_id = queued.flow_run_id
        if run_id in self._queued or len(queued.index) != sum(map(len, queued.queues.values())):
            self.submit_many(run_id, queued.by_type)
            return
        for task_type, queue in queued.queues.items():
            if not queue:
                continue
            runs = self._pending.setdefault(task_type, OrderedDict())
            runs[run_id] = queue  # none of its attempts was queued: no queue to join
            self._live[(task_type, run_id)] = len(queue)
        if queued.index:
            self._queued[run_id] = queued.index
        for entry in queued.start_by:
            heapq.heappush(self._start_by, entry)
        self.pump()

    def queued_candidates(self, flow_run_id: str) -> list[PendingAssignment]:
        """What ``queued`` looks at, copied (a C-level copy, fast even for 200,000): to
        be filtered with ``is_queued`` a part at a time."""
        found: list[PendingAssignment] = []
        for runs in self._pending.values():
            found.extend(runs.get(flow_run_id, ()))
        found.extend(p for p in self.limits.waiting_attempts() if p.flow_run_id == flow_run_id)
        return found

    def is_queued(self, pending: PendingAssignment) -> bool:
        """Whether ``pending`` (of ``queued_candidates``) is still waiting here: queued
        (not taken out early: cancelled, claimed) or on a limit."""
        queued = self._queued.get(pending.flow_run_id, {})
        return queued.get(pending.token) is pending or self.limits.reason(pending.token) != ""

    def queued(self, flow_run_id: str) -> list[PendingAssignment]:
        """The attempts of a flow run not yet handed to a worker: waiting for one, or
        on a limit (nothing is removed)."""
        return [p for p in self.queued_candidates(flow_run_id) if self.is_queued(p)]

    @property
    def next_start_by(self) -> float | None:
        """When the earliest schedule_to_start_timeout may expire."""
        return self._start_by[0][0] if self._start_by else None

    def overdue(self, now: float, at_most: int | None = None) -> list[PendingAssignment]:
        """Remove and return the attempts still waiting for a worker past their
        ``start_by`` (those a worker took meanwhile are forgotten), at most ``at_most``
        of them (the rest stay due)."""
        expired: list[PendingAssignment] = []
        while self._start_by and self._start_by[0][0] <= now:
            if at_most is not None and len(expired) >= at_most:
                break
            _, _, pending = heapq.heappop(self._start_by)
            if self.take_pending(pending.token) is pending:
                expired.append(pending)
        return expired

    def cancel(self, flow_run_id: str, task_run_id: str, attempt: int, reason: str) -> None:
        """Stop an attempt: drop it if still pending, else ask its worker to stop."""
        self.cancel_many(flow_run_id, {(task_run_id, attempt): reason})

    def cancel_many(
        self, flow_run_id: str, wanted: Mapping[Token, str], *, whole_run: bool = False
    ) -> None:
        """Stop attempts of one flow run (the reason by token): those still queued are
        dropped, the others' workers are asked to stop. ``whole_run``: ``wanted`` is
        every attempt of the run (a cancelled 100,000-task run): its queue leaves at
        once (freed on the releasing thread), and only the attempts workers hold or
        that wait on a limit are looked up, not each of ``wanted``."""
        queued = self._queued.get(flow_run_id, _NONE)
        rest: Iterable[Token]
        if whole_run:
            if queued:
                self._drop_run(flow_run_id, queued)
            rest = [t for t in self._owner if t in wanted]
            rest += [
                p.token
                for p in self.limits.waiting_attempts()
                if p.flow_run_id == flow_run_id and p.token in wanted
            ]
        else:
            hit = queued.keys() & wanted.keys()
            for token in hit:
                self._unqueue(token, flow_run_id)
            rest = wanted.keys() - hit
        for token in rest:
            task_run_id, attempt = token
            reason = wanted[token]
            if self.limits.take(token) is not None:
                continue
            session = self._owner.get(token)
            if session is None:
                continue
            self._cancelling.add(token)
            msg = worker_pb2.CancelTaskRun(
                token=worker_pb2.FencingToken(task_run_id=task_run_id, attempt=attempt),
                reason=reason,
            )
            session.send(worker_pb2.ConnectResponse(cancel=msg))

    def _drop_run(self, flow_run_id: str, queued: dict[Token, PendingAssignment]) -> None:
        """Take every queued attempt of a run out at once (its index and queues go to
        the releasing thread to be freed item by item)."""
        del self._queued[flow_run_id]
        dropped: list[Any] = [queued]
        for key in [k for k in self._live if k[1] == flow_run_id]:
            dropped.append(self._pending[key[0]].get(flow_run_id))
            self._uncount(key, self._live[key])
        release_later(dropped)

    def _unqueue(self, token: Token, flow_run_id: str | None = None) -> PendingAssignment | None:
        """Take a queued attempt out of the index (its queue entry is skipped later;
        a queue left with none is dropped now)."""
        if flow_run_id is None:
            flow_run_id = split_task_run_id(token[0])[0]
        queued = self._queued.get(flow_run_id)
        pending = queued.pop(token, None) if queued is not None else None
        if pending is not None:
            if not queued:
                del self._queued[flow_run_id]
            self._uncount((pending.task_type, pending.flow_run_id), 1)
        return pending

    def _uncount(self, key: tuple[str, str], taken: int) -> None:
        """``taken`` attempts of a (task type, flow run) queue left the index; a queue
        left with none is dropped."""
        left = self._live[key] - taken
        if left:
            self._live[key] = left
            return
        del self._live[key]
        task_type, flow_run_id = key
        runs = self._pending.get(task_type)
        if runs is not None:
            runs.pop(flow_run_id, None)
            if not runs:
                del self._pending[task_type]

    def stale_reasons(self, flow_run_id: str) -> dict[str, str]:
        """Why attempts of a run wait for a worker, by task run id, where the dispatcher
        knows a reason: connected workers that have the task type but other code for it
        (a worker started before the task was edited). Attempts without a known reason
        are left out."""
        reasons: dict[str, str] = {}
        queued = self._queued.get(flow_run_id, {})
        for runs in self._pending.values():
            for pending in runs.get(flow_run_id, ()):
                if queued.get(pending.token) is not pending:
                    continue  # taken out early (cancelled, claimed)
                reason = self.stale_reason(pending)
                if reason:
                    reasons[pending.token[0]] = reason
        return reasons

    def stale_reason(self, pending: PendingAssignment) -> str:
        """Why this attempt is not assigned when that is workers' other code for it
        ("" if not)."""
        stale = [
            s
            for s in self.sessions.values()
            if pending.task_type in s.capabilities and s.stale(pending)
        ]
        if not stale or any(s.accepts(pending) for s in self.sessions.values()):
            return ""
        names = ", ".join(repr(s.name) for s in stale[:3])
        names += " and others" if len(stale) > 3 else ""
        worker = "worker" if len(stale) == 1 else "workers"
        return (
            f"{worker} {names} {'has' if len(stale) == 1 else 'have'} other code for task "
            f"{pending.task_type!r} (digest {stale[0].code_digests[pending.task_type]}, the "
            f"run's graph was built with {pending.code_digest}): start a worker with the "
            "code the run was built with (restart it after editing the task), or one with "
            "--allow-stale-code to run its own code"
        )

    def waiting_reason(self, pending: PendingAssignment) -> str:
        """Why an attempt not yet handed to a worker waits, in one line: a limit on its
        tags, connected workers' other code for it, or the workers (none offers it, all
        are drained or busy)."""
        return (
            self.limits.reason(pending.token)
            or self.stale_reason(pending)
            or waiting_reason(self.sessions.values(), pending.task_type, pending.labels)
        )

    @property
    def pending_count(self) -> int:
        """Attempts waiting for a worker."""
        return sum(map(len, self._queued.values()))

    def queue_depth(self) -> dict[str, int]:
        """Attempts ready to run and not yet handed to a worker (waiting for one, or on
        a limit), by task type."""
        depth: dict[str, int] = {}
        for (task_type, _), count in self._live.items():
            depth[task_type] = depth.get(task_type, 0) + count
        for pending in self.limits.waiting_attempts():
            depth[pending.task_type] = depth.get(pending.task_type, 0) + 1
        return depth

    def release(self, token: Token) -> None:
        """An attempt's leases end (it ended, or its worker is gone): attempts waiting
        on its tags may run."""
        freed = self.limits.release(token)
        if freed:
            self.requeue(freed)

    def requeue(self, attempts: Iterable[PendingAssignment]) -> None:
        """Put attempts a limit let go back in front of their flow runs' queues."""
        for pending in reversed(list(attempts)):
            self._enqueue(pending.task_type, pending.flow_run_id, [pending], front=True)
        self.pump()

    def _enqueue(
        self,
        task_type: str,
        flow_run_id: str,
        pendings: Sequence[PendingAssignment],
        *,
        front: bool = False,
    ) -> None:
        """Put attempts in their (task type, flow run) queue, at its end or in front,
        and in the index of queued attempts."""
        runs = self._pending.setdefault(task_type, OrderedDict())
        queue = runs.get(flow_run_id)
        if queue is None:
            runs[flow_run_id] = queue = deque()
        if front:
            queue.extendleft(reversed(pendings))
        else:
            queue.extend(pendings)
        queued = self._queued.get(flow_run_id)
        if queued is None:
            self._queued[flow_run_id] = dict(zip(map(TOKEN_OF, pendings), pendings, strict=True))
        else:
            queued.update(zip(map(TOKEN_OF, pendings), pendings, strict=True))
        key = (task_type, flow_run_id)
        self._live[key] = self._live.get(key, 0) + len(pendings)

    # ---------------------------------------------------------------- worker side

    def connect(self, session: WorkerSession, adopted: dict[Token, str] | None = None) -> None:
        """Register a worker; ``adopted`` are attempts it already runs (reconnect)."""
        self.sessions[session.session_id] = session
        for token, flow_run_id in (adopted or {}).items():
            session.running[token] = flow_run_id
            self._owner[token] = session
            if self.waits is not None and self.waits(token):
                session.waiting.add(token)  # (its child run goes on across a restart)
        self.pump()

    def lend(self, token: Token, waiting: bool) -> None:
        """An attempt started a flow run and waits for it (``waiting``), or its last
        such run ended: its worker's slot is lent meanwhile, so that the child's tasks
        can run there too (tasks that call flows filling every slot deadlocked). The
        worker lends it likewise, from before it creates the child run until after
        it has seen its end (docs/worker-protocol.md)."""
        session = self._owner.get(token)
        if session is None or token not in session.running:
            return
        if waiting:
            session.waiting.add(token)
            self.pump()
        else:
            session.waiting.discard(token)

    def disconnect(self, session_id: str) -> None:
        """Forget a worker; every attempt it held is reported lost."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        self._warned = {w for w in self._warned if w[0] != session_id}
        lost = list(session.running.items())
        session.running.clear()
        session.waiting.clear()
        session.reads.clear()
        freed: list[PendingAssignment] = []
        for token, _ in lost:
            self._cancelling.discard(token)
            if self._owner.get(token) is session:
                del self._owner[token]
            freed.extend(self.limits.release(token))  # the worker is gone: leases end
        for (task_run_id, attempt), flow_run_id in lost:
            self.on_lost(flow_run_id, task_run_id, attempt)
        if freed:
            self.requeue(freed)
        self.pump()

    def revoke(self, token: Token) -> None:
        """Take an attempt back from the session holding it, with no loss: it was
        never that session's to hold (``ServerCore._check_claims``). Its lease ends."""
        session = self._owner.pop(token, None)
        if session is None:
            return
        self._cancelling.discard(token)
        session.running.pop(token, None)
        session.waiting.discard(token)
        session.reads.pop(token, None)
        freed = self.limits.release(token)
        if freed:
            self.requeue(freed)
        self.pump()

    def owner(self, token: Token) -> WorkerSession | None:
        """The session holding an attempt (None: none does)."""
        return self._owner.get(token)

    def held_inputs(self, credential: str) -> frozenset[str]:
        """The payloads that the attempts held by ``credential``'s worker sessions take
        as input, and the values of the graph builds they were asked for (known for
        worker-only credentials: ``WorkerSession.reads``, ``build_reads``)."""
        return frozenset(
            payload_id
            for session in self.sessions.values()
            if session.credential == credential
            for ids in (*session.reads.values(), *session.build_reads.values())
            for payload_id in ids
        )

    def cancel_requested(self, token: Token) -> bool:
        """Whether the server asked the holder of this attempt to stop it."""
        return token in self._cancelling

    def take_pending(self, token: Token) -> PendingAssignment | None:
        """Remove a queued (not yet assigned) attempt and return it, e.g. for a worker
        that reconnects already holding it."""
        waiting = self.limits.take(token)
        if waiting is not None:
            return waiting
        return self._unqueue(token)

    def reported(self, token: Token) -> None:
        """The holder reported an attempt's outcome that takes effect later (its run
        is being resumed or worked on off the loop): the worker is done with it, so
        its slot is free now; the attempt stays the session's (fenced, leases held)
        until ``finished``."""
        session = self._owner.get(token)
        if session is not None and session.running.pop(token, None) is not None:
            session.waiting.discard(token)
            self.pump()

    def finished(self, token: Token) -> None:
        """An attempt ended (result, failure, skip, cancel ack): free its slot."""
        self._cancelling.discard(token)
        freed = self.limits.release(token)
        session = self._owner.pop(token, None)
        if session is not None:
            session.running.pop(token, None)
            session.waiting.discard(token)
            session.reads.pop(token, None)
        if freed:
            self.requeue(freed)
        elif session is not None:
            self.pump()

    # -------------------------------------------------------------------- matching

    def pump(self) -> None:
        """Hand out as many pending attempts as free slots allow: one attempt per task
        type in turn, and within a task type one per flow run in turn, so that neither
        a wide map's flow run nor its task type keeps a shared worker's slots from the
        others (a 100,000-element map of one task type would otherwise take every slot
        freed until it is done)."""
        if not self._pending or self._paused or self._closed:
            return
        if self._deferring:
            self._pump_wanted = True
            return
        turn = list(self._pending)
        while turn:
            if len(turn) == 1:  # no other type to take turns with: as many as fit
                self._assign_next(turn[0], many=True)
                return
            served = [task_type for task_type in turn if self._assign_next(task_type)]
            for task_type in served:  # the next pump starts with a type not served last
                if task_type in self._pending:
                    self._pending[task_type] = self._pending.pop(task_type)
            turn = served

    def _assign_next(self, task_type: str, *, many: bool = False) -> bool:
        """Hand one attempt of this task type (``many``: as many as fit) to free
        workers, taking its flow runs in turn; False when none can go now (no free
        worker for it, or nothing queued)."""
        runs = self._pending.get(task_type)
        if runs is None:
            return False
        candidates = [
            s for s in self.sessions.values() if s.can_take and task_type in s.capabilities
        ]
        blocked: set[str] = set()
        assigned = False
        while candidates and runs and len(blocked) < len(runs):
            run_id, queue = next(iter(runs.items()))
            runs.move_to_end(run_id)  # round robin across flow runs
            if run_id in blocked:
                continue
            if not queue:  # only entries taken out early were left
                del runs[run_id]
                continue
            pending = queue[0]
            if self._queued.get(run_id, _NONE).get(pending.token) is not pending:
                queue.popleft()  # taken out early (cancelled, claimed)
                continue
            if pending.token in self._owner or (self.due is not None and not self.due(pending)):
                # A worker holds it already, or it ended meanwhile: a worker
                # reconnected holding it while its run was being resumed, and
                # reported it (ServerCore.connect). Never sent twice.
                queue.popleft()
                self._unqueue(pending.token, run_id)
                continue
            tag = self.limits.blocking(pending.tags) if pending.tags else None
            if tag is not None:  # its tag is at its limit: it waits there
                queue.popleft()
                self._unqueue(pending.token, run_id)
                self.limits.wait(pending, tag)
                continue
            fits = [s for s in candidates if s.accepts(pending)]
            if not fits:
                blocked.add(run_id)  # its head needs labels or code no free worker has
                self._warn_stale(candidates, pending)
                continue
            session = max(fits, key=lambda s: s.free)
            queue.popleft()
            self._unqueue(pending.token, run_id)
            self._assign(session, pending)
            assigned = True
            if not many:
                break
            candidates = [s for s in candidates if s.can_take]
        if not runs:
            self._pending.pop(task_type, None)
        return assigned

    def _warn_stale(self, candidates: list[WorkerSession], pending: PendingAssignment) -> None:
        """Say once per worker and code in the server log that a worker is passed over
        for having other code (the task run's ``waiting`` says it too)."""
        for session in candidates:
            key = (session.session_id, pending.task_type, pending.code_digest)
            if session.stale(pending) and key not in self._warned:
                self._warned.add(key)
                log.warning(
                    "worker %s has other code for task %s than the graph of flow run %s "
                    "(digest %s, the graph has %s): it is not given that task",
                    session.name,
                    pending.task_type,
                    pending.flow_run_id,
                    session.code_digests.get(pending.task_type),
                    pending.code_digest,
                )

    def _assign(self, session: WorkerSession, pending: PendingAssignment) -> None:
        session.running[pending.token] = pending.flow_run_id
        self._owner[pending.token] = session
        if pending.tags:
            self.limits.acquire(pending.token, pending.tags)
        if self.before_send is None or self.before_send(session, pending):
            self.send_assignment(session, pending)

    def send_assignment(self, session: WorkerSession, pending: PendingAssignment) -> None:
        """Send an assignment held back by ``before_send``, unless the attempt was lost
        or cancelled meanwhile."""
        if self._owner.get(pending.token) is session:  # not lost or cancelled meanwhile
            assignment = pending.assignment
            if session.restricted:
                session.reads[pending.token] = input_payloads(assignment)
            session.send(worker_pb2.ConnectResponse(assignment=assignment))


def input_payloads(assignment: worker_pb2.Assignment) -> frozenset[str]:
    """The ids of the stored payloads an assignment's inputs reference (a reference
    to a Dask cluster's value names no stored payload: a worker-only credential that
    reported one naming another's payload could then download that payload, a user
    trial)."""
    values: list[payload_pb2.Value] = []
    todo: list[worker_pb2.InputValue] = list(assignment.inputs.values())
    while todo:
        node = todo.pop()
        kind = node.WhichOneof("kind")
        if kind == "value":
            values.append(node.value)
        elif kind == "list":
            todo.extend(node.list.items)
        elif kind == "map":
            todo.extend(entry.value for entry in node.map.entries)
    return stored_payloads(values)


def stored_payloads(values: Iterable[payload_pb2.Value]) -> frozenset[str]:
    """The ids of the stored payloads these values reference, at any depth (not those
    of a Dask cluster's values)."""
    found: set[str] = set()
    todo = list(values)
    while todo:
        value = todo.pop()
        ref = value.ref
        if value.WhichOneof("kind") == "ref" and ref.payload_id and not ref.location:
            found.add(ref.payload_id)
        todo.extend(value.items)
    return frozenset(found)
