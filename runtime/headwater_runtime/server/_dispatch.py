"""The dispatcher: routes ready attempts to connected workers.

A pending attempt goes to a worker that has its task type as a capability and whose
labels include the task's required labels, never beyond the worker's free slots
(credit flow control), round-robin across flow runs so one large run cannot starve
the others. An attempt no connected worker can take waits (its task run stays
SCHEDULED) until a suitable worker connects or frees a slot.

Two operations features hook in here: an attempt whose task tag is at its concurrency
or rate limit waits in ``TagLimits`` (_limits.py) instead, and gets a lease on its tags
when it is assigned, released when it ends; a drained worker (``draining``) gets no new
attempts.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from headwater.v1 import worker_pb2

from ._assignments import PendingAssignment
from ._limits import TagLimits

Token = tuple[str, int]  # (task run id, attempt)


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
    #: Drained (DrainWorker): it gets no new attempts.
    draining: bool = False
    #: Its Hello (runtime, features), and when the session began (ListWorkers).
    hello: worker_pb2.Hello | None = None
    connected_at: float = 0.0

    @property
    def free(self) -> int:
        """Slots not taken by an attempt the worker holds (none while drained)."""
        return 0 if self.draining else self.slots - len(self.running)

    def accepts(self, pending: PendingAssignment) -> bool:
        """Whether the worker has the attempt's task type and every label it requires."""
        return pending.task_type in self.capabilities and all(
            self.labels.get(k) == v for k, v in pending.labels.items()
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
        self.limits = limits if limits is not None else TagLimits(time.time)
        self.sessions: dict[str, WorkerSession] = {}
        # task type -> flow run id -> FIFO of attempts; runs rotate for fairness.
        self._pending: dict[str, OrderedDict[str, deque[PendingAssignment]]] = {}
        self._owner: dict[Token, WorkerSession] = {}
        self._cancelling: set[Token] = set()  # cancels sent, not yet acknowledged

    # ------------------------------------------------------------ run manager side

    def submit(self, pending: PendingAssignment) -> None:
        """Queue an attempt, and assign it at once if a suitable worker has a free slot."""
        runs = self._pending.setdefault(pending.task_type, OrderedDict())
        runs.setdefault(pending.flow_run_id, deque()).append(pending)
        self.pump()

    def cancel(self, flow_run_id: str, task_run_id: str, attempt: int, reason: str) -> None:
        """Stop an attempt: drop it if still pending, else ask its worker to stop."""
        token = (task_run_id, attempt)
        if self.limits.take(token) is not None:  # waiting on a limit
            return
        for runs in self._pending.values():
            queue = runs.get(flow_run_id)
            if queue is None:
                continue
            for pending in queue:
                if pending.token == token:
                    queue.remove(pending)
                    return
        session = self._owner.get(token)
        if session is not None:
            self._cancelling.add(token)
            msg = worker_pb2.CancelTaskRun(
                token=worker_pb2.FencingToken(task_run_id=task_run_id, attempt=attempt),
                reason=reason,
            )
            session.send(worker_pb2.ConnectResponse(cancel=msg))

    @property
    def pending_count(self) -> int:
        """Attempts waiting for a worker."""
        return sum(len(q) for runs in self._pending.values() for q in runs.values())

    def queue_depth(self) -> dict[str, int]:
        """Attempts ready to run and not yet handed to a worker (waiting for one, or on
        a limit), by task type."""
        depth = {t: sum(len(q) for q in runs.values()) for t, runs in self._pending.items()}
        for pending in self.limits.waiting_attempts():
            depth[pending.task_type] = depth.get(pending.task_type, 0) + 1
        return depth

    def queued(self, flow_run_id: str) -> list[PendingAssignment]:
        """A flow run's attempts not yet handed to a worker (waiting for one, or on a
        limit)."""
        found = [p for runs in self._pending.values() for p in runs.get(flow_run_id, ())]
        found.extend(p for p in self.limits.waiting_attempts() if p.flow_run_id == flow_run_id)
        return found

    def waiting_reason(self, pending: PendingAssignment) -> str:
        """Why an attempt not yet handed to a worker waits, in one line."""
        reason = self.limits.reason(pending.token)
        if reason:
            return reason
        offering = [s for s in self.sessions.values() if s.accepts(pending)]
        if not offering:
            labels = ", ".join(f"{k}={v}" for k, v in sorted(pending.labels.items()))
            wanted = f" with labels {labels}" if labels else ""
            return f"waiting: no connected worker offers {pending.task_type}{wanted}"
        if all(s.draining for s in offering):
            return f"waiting: every worker offering {pending.task_type} is drained"
        return f"waiting for a free slot: every worker offering {pending.task_type} is busy"

    def release(self, token: Token) -> None:
        """An attempt's leases end (it ended, or its worker is gone): attempts waiting
        on its tags may run."""
        freed = self.limits.release(token)
        if freed:
            self.requeue(freed)

    def requeue(self, attempts: Iterable[PendingAssignment]) -> None:
        """Put attempts a limit let go back in front of their flow runs' queues."""
        for pending in reversed(list(attempts)):
            runs = self._pending.setdefault(pending.task_type, OrderedDict())
            runs.setdefault(pending.flow_run_id, deque()).appendleft(pending)
        self.pump()

    # ---------------------------------------------------------------- worker side

    def connect(self, session: WorkerSession, adopted: dict[Token, str] | None = None) -> None:
        """Register a worker; ``adopted`` are attempts it already runs (reconnect)."""
        self.sessions[session.session_id] = session
        for token, flow_run_id in (adopted or {}).items():
            session.running[token] = flow_run_id
            self._owner[token] = session
        self.pump()

    def disconnect(self, session_id: str) -> None:
        """Forget a worker; every attempt it held is reported lost."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        lost = list(session.running.items())
        session.running.clear()
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

    def owner(self, token: Token) -> WorkerSession | None:
        """The session holding an attempt (None: none does)."""
        return self._owner.get(token)

    def cancel_requested(self, token: Token) -> bool:
        """Whether the server asked the holder of this attempt to stop it."""
        return token in self._cancelling

    def take_pending(self, token: Token) -> PendingAssignment | None:
        """Remove a queued (not yet assigned) attempt and return it, e.g. for a worker
        that reconnects already holding it."""
        waiting = self.limits.take(token)
        if waiting is not None:
            return waiting
        for task_type, runs in self._pending.items():
            for run_id, queue in runs.items():
                for pending in queue:
                    if pending.token == token:
                        queue.remove(pending)
                        if not queue:
                            del runs[run_id]
                        if not runs:
                            del self._pending[task_type]
                        return pending
        return None

    def finished(self, token: Token) -> None:
        """An attempt ended (result, failure, skip, cancel ack): free its slot."""
        self._cancelling.discard(token)
        freed = self.limits.release(token)
        session = self._owner.pop(token, None)
        if session is not None:
            session.running.pop(token, None)
        if freed:
            self.requeue(freed)
        elif session is not None:
            self.pump()

    # -------------------------------------------------------------------- matching

    def pump(self) -> None:
        """Hand out as many pending attempts as free slots allow."""
        if not self._pending:
            return
        for task_type in list(self._pending):
            runs = self._pending[task_type]
            candidates = [
                s for s in self.sessions.values() if s.free > 0 and task_type in s.capabilities
            ]
            blocked: set[str] = set()
            while candidates and len(blocked) < len(runs):
                run_id, queue = next(iter(runs.items()))
                runs.move_to_end(run_id)  # round robin across flow runs
                if run_id in blocked:
                    continue
                pending = queue[0]
                tag = self.limits.blocking(pending.tags) if pending.tags else None
                if tag is not None:  # its tag is at its limit: it waits there
                    queue.popleft()
                    if not queue:
                        del runs[run_id]
                    self.limits.wait(pending, tag)
                    continue
                fits = [s for s in candidates if s.accepts(pending)]
                if not fits:
                    blocked.add(run_id)  # its head needs labels no free worker has
                    continue
                session = max(fits, key=lambda s: s.free)
                queue.popleft()
                if not queue:
                    del runs[run_id]
                self._assign(session, pending)
                candidates = [s for s in candidates if s.free > 0]
            if not runs:
                del self._pending[task_type]

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
            session.send(worker_pb2.ConnectResponse(assignment=pending.assignment))
