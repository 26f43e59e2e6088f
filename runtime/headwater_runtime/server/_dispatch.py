"""The dispatcher: routes ready attempts to connected workers.

A pending attempt goes to a worker that has its task type as a capability and whose
labels include the task's required labels, never beyond the worker's free slots
(credit flow control), round-robin across flow runs so one large run cannot starve
the others. An attempt no connected worker can take waits (its task run stays
SCHEDULED) until a suitable worker connects or frees a slot.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from headwater.v1 import worker_pb2

from ._assignments import PendingAssignment

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
    #: The credential the worker connected with.
    credential: str = ""
    #: Whether that credential may read only its attempts' inputs (then ``reads``
    #: holds the payload ids each held attempt takes as input).
    restricted: bool = False
    reads: dict[Token, frozenset[str]] = field(default_factory=dict)

    @property
    def free(self) -> int:
        """Slots not taken by an attempt the worker holds."""
        return self.slots - len(self.running)

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
        lost = list(session.running.items())
        session.running.clear()
        session.reads.clear()
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
            session.reads.pop(token, None)
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
    """The ids of the stored payloads an assignment's inputs reference."""
    found: set[str] = set()
    todo: list[worker_pb2.InputValue] = list(assignment.inputs.values())
    while todo:
        node = todo.pop()
        kind = node.WhichOneof("kind")
        if kind == "value":
            values = [node.value]
            while values:
                value = values.pop()
                if value.WhichOneof("kind") == "ref" and value.ref.payload_id:
                    found.add(value.ref.payload_id)
                values.extend(value.items)
        elif kind == "list":
            todo.extend(node.list.items)
        elif kind == "map":
            todo.extend(entry.value for entry in node.map.entries)
    return frozenset(found)
