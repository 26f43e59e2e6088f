"""The dispatcher: routes ready attempts to connected workers.

A pending attempt goes to a worker that has its task type as a capability, whose
labels include the task's required labels and whose code for the task is the code the
run's graph was built with (``Hello.code_digests`` against ``TaskNode.code_digest``),
never beyond the worker's free slots (credit flow control), round-robin across flow
runs so one large run cannot starve the others. An attempt no connected worker can
take waits (its task run stays SCHEDULED) until a suitable worker connects or frees a
slot; ``waiting_reasons`` says why, where the dispatcher knows (a worker with other
code for the task).
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from headwater.v1 import worker_pb2

from ._assignments import PendingAssignment

Token = tuple[str, int]  # (task run id, attempt)

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
    #: Digest of the worker's code by task type (Hello.code_digests).
    code_digests: dict[str, str] = field(default_factory=dict)
    #: The flows it can build graphs of, with their code digests (Hello.flows).
    flows: dict[str, str] = field(default_factory=dict)
    #: Optional protocol features it listed (Hello.features).
    features: frozenset[str] = frozenset()
    #: Connection order: a higher number connected later.
    serial: int = 0

    @property
    def free(self) -> int:
        """Slots not taken by an attempt the worker holds."""
        return self.slots - len(self.running)

    def stale(self, pending: PendingAssignment) -> bool:
        """Whether the worker's code for the attempt's task differs from the code the
        run's graph was built with (either side not saying counts as the same)."""
        mine = self.code_digests.get(pending.task_type, "")
        return bool(mine and pending.code_digest and mine != pending.code_digest)

    def accepts(self, pending: PendingAssignment) -> bool:
        """Whether the worker has the attempt's task type, every label it requires and
        the code the run's graph names for it."""
        return (
            pending.task_type in self.capabilities
            and all(self.labels.get(k) == v for k, v in pending.labels.items())
            and not self.stale(pending)
        )


class Dispatcher:
    """Matches pending attempts to worker sessions.

    Args:
        on_lost: called with (flow run id, task run id, attempt) for every attempt a
            disconnected worker was holding.
        before_send: called with (session, pending) when an attempt is assigned; False
            holds the assignment back (it keeps its slot): the caller sends it later
            with ``send_assignment``, or fails it (values to export first, see _exports).
    """

    def __init__(
        self,
        on_lost: Callable[[str, str, int], None],
        before_send: Callable[[WorkerSession, PendingAssignment], bool] | None = None,
    ) -> None:
        self.on_lost = on_lost
        self.before_send = before_send
        self.sessions: dict[str, WorkerSession] = {}
        # task type -> flow run id -> FIFO of attempts; runs rotate for fairness.
        self._pending: dict[str, OrderedDict[str, deque[PendingAssignment]]] = {}
        self._owner: dict[Token, WorkerSession] = {}
        self._cancelling: set[Token] = set()  # cancels sent, not yet acknowledged
        self._warned: set[tuple[str, str, str]] = set()  # (session, task type, digest)

    # ------------------------------------------------------------ run manager side

    def submit(self, pending: PendingAssignment) -> None:
        """Queue an attempt, and assign it at once if a suitable worker has a free slot."""
        runs = self._pending.setdefault(pending.task_type, OrderedDict())
        runs.setdefault(pending.flow_run_id, deque()).append(pending)
        self.pump()

    def cancel(self, flow_run_id: str, task_run_id: str, attempt: int, reason: str) -> None:
        """Stop an attempt: drop it if still pending, else ask its worker to stop."""
        token = (task_run_id, attempt)
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

    def waiting_reasons(self, flow_run_id: str) -> dict[str, str]:
        """Why attempts of a run wait for a worker, by task run id, where the dispatcher
        knows a reason: connected workers that have the task type but other code for it
        (a worker started before the task was edited). Attempts without a known reason
        are left out."""
        reasons: dict[str, str] = {}
        for runs in self._pending.values():
            for pending in runs.get(flow_run_id, ()):
                reason = self.waiting_reason(pending)
                if reason:
                    reasons[pending.token[0]] = reason
        return reasons

    def waiting_reason(self, pending: PendingAssignment) -> str:
        """Why this attempt is not assigned, when the dispatcher can tell ("" if not)."""
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

    @property
    def pending_count(self) -> int:
        """Attempts waiting for a worker."""
        return sum(len(q) for runs in self._pending.values() for q in runs.values())

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
        self._warned = {w for w in self._warned if w[0] != session_id}
        lost = list(session.running.items())
        session.running.clear()
        for token, _ in lost:
            self._cancelling.discard(token)
            if self._owner.get(token) is session:
                del self._owner[token]
        for (task_run_id, attempt), flow_run_id in lost:
            self.on_lost(flow_run_id, task_run_id, attempt)
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
        session = self._owner.pop(token, None)
        if session is not None:
            session.running.pop(token, None)
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
                fits = [s for s in candidates if s.accepts(pending)]
                if not fits:
                    blocked.add(run_id)  # its head needs labels or code no free worker has
                    self._warn_stale(candidates, pending)
                    continue
                session = max(fits, key=lambda s: s.free)
                queue.popleft()
                if not queue:
                    del runs[run_id]
                self._assign(session, pending)
                candidates = [s for s in candidates if s.free > 0]
            if not runs:
                del self._pending[task_type]

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
        if self.before_send is None or self.before_send(session, pending):
            self.send_assignment(session, pending)

    def send_assignment(self, session: WorkerSession, pending: PendingAssignment) -> None:
        """Send an assignment held back by ``before_send``, unless the attempt was lost
        or cancelled meanwhile."""
        if self._owner.get(pending.token) is session:  # not lost or cancelled meanwhile
            session.send(worker_pb2.ConnectResponse(assignment=pending.assignment))
