"""What the engine records about task runs: state history, attempts, failures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from headwater.wire import FailureInfo, TaskRunState

_S = TaskRunState

if TYPE_CHECKING:
    from headwater.wire import TaskSpec


class StateEntry(NamedTuple):
    """One entry of a task run's state history. A tuple: there may be a million."""

    state: TaskRunState
    timestamp: float
    attempt: int
    message: str = ""
    failure: FailureInfo | None = None


@dataclass(slots=True)
class AttemptRecord:
    """One attempt of a task run: when it ran and how it ended."""

    number: int
    started_at: float
    ended_at: float | None = None
    outcome: TaskRunState | None = None
    failure: FailureInfo | None = None

    @property
    def duration(self) -> float | None:
        """Seconds the attempt ran; None while it runs."""
        return None if self.ended_at is None else self.ended_at - self.started_at


#: What a compacted run's lists are (empty and shared; see TaskRunRecord.compact).
_COMPACTED_HISTORY: list[StateEntry] = []
_COMPACTED_ATTEMPTS: list[AttemptRecord] = []


class TaskRunRecord:
    """Everything known about one task run. Owned and mutated by the engine only.

    ``key`` is unique within the flow run: the task id, with ``[i]`` for mapped child i.

    Attributes:
        state: the current TaskRunState.
        history: every state change (state, timestamp, attempt, message, failure).
        attempts: every attempt (start, end, outcome, failure).

    A run that succeeded at its first attempt without anything unusual (PENDING,
    SCHEDULED, RUNNING, SUCCESS; no message, no failure) keeps its history and its
    attempt compactly (``compact``): its first and last entries as they are, the
    times of the two in between and the attempt's end; ``history`` and ``attempts``
    rebuild the same entries from them when read. That is most task runs, and it
    takes a run's memory from about 1 KB to about 0.55 KB (a million-element map
    holds two million of them). The history is complete either way.
        attempt: the current attempt's number (0 before the first).
        result: the result once the run succeeded (a live object embedded, a payload
            handle on a server).
        failure: why the last attempt failed, if it did.
        map_index: the element index of a mapped child; -1 otherwise.
        parent: a mapped child's parent run.
        children: a mapped parent's child runs, once it has expanded.
        cache_key: the key the result was cached (or found) under.
    """

    __slots__ = (
        "_attempts",
        "_compact",
        "_history",
        "_node",
        "attempt",
        "cache_key",
        "children",
        "dispatched",
        "failure",
        "key",
        "lost_count",
        "map_index",
        "parent",
        "pending",
        "result",
        "retries_used",
        "settled",
        "spec",
        "state",
    )

    def __init__(
        self,
        key: str,
        spec: TaskSpec,
        node: Any,
        map_index: int,
        parent: TaskRunRecord | None,
        now: float,
        created: StateEntry | None = None,
    ) -> None:
        """Create the run PENDING at time ``now`` (the engine does this, never users).

        Args:
            key: unique within the flow run.
            spec: the task node it runs.
            node: the engine's bookkeeping for that node.
            map_index: the element index of a mapped child; -1 otherwise.
            parent: a mapped child's parent run.
            now: the clock reading at creation.
            created: the PENDING entry at ``now`` to start the history with (the
                engine shares one among the runs it creates at once).
        """
        self.key = key
        self.spec = spec
        self._node = node
        self.map_index = map_index
        self.parent = parent
        self.state = TaskRunState.PENDING
        self._history: list[StateEntry] = [created or StateEntry(TaskRunState.PENDING, now, 0)]
        self._attempts: list[AttemptRecord] = []
        # After ``compact``: (PENDING entry, scheduled at, running at, SUCCESS entry,
        # attempt ended at), and the two lists above are the shared empty _COMPACTED_*.
        self._compact: tuple[StateEntry, float, float, StateEntry, float] | None = None
        self.attempt = 0
        self.retries_used = 0
        self.lost_count = 0
        self.result: Any = None
        self.failure: FailureInfo | None = None
        self.cache_key: str | None = None
        self.children: list[TaskRunRecord] | None = None
        self.dispatched = False
        self.pending = 0
        # Terminal and its consequences propagated (engine bookkeeping).
        self.settled = False

    def unlink(self) -> None:
        """Drop the links to the engine's node and the mapped parent (a parent keeps
        its children: ``FlowRunEngine.unlink``)."""
        self._node = None
        self.parent = None

    def release(self) -> None:
        """Drop the links to the engine's node, the mapped parent and the children
        (``FlowRunEngine.release``)."""
        self._node = None
        self.parent = None
        self.children = None

    @property
    def history(self) -> list[StateEntry]:
        """Every state change, oldest first."""
        if self._compact is None:
            return self._history
        created, scheduled, running, succeeded, _ = self._compact
        return [
            created,
            StateEntry(_S.SCHEDULED, scheduled, 0),
            StateEntry(_S.RUNNING, running, 1),
            succeeded,
        ]

    @history.setter
    def history(self, value: list[StateEntry]) -> None:
        self.expand()
        self._history = value

    @property
    def attempts(self) -> list[AttemptRecord]:
        """Every attempt, oldest first."""
        if self._compact is None:
            return self._attempts
        _, _, running, _, ended = self._compact
        return [AttemptRecord(1, running, ended, _S.SUCCESS)]

    @attempts.setter
    def attempts(self, value: list[AttemptRecord]) -> None:
        self.expand()
        self._attempts = value

    def expand(self) -> None:
        """Keep a compacted history as lists again, before it changes (a retry from
        failure runs a succeeded task run again: engine/_rerun.py)."""
        if self._compact is not None:
            history, attempts = self.history, self.attempts
            self._compact = None
            self._history, self._attempts = history, attempts

    def compact(self) -> None:
        """Keep a plain first-attempt success as timestamps (see the class docstring);
        any other history stays as it is."""
        history, attempts = self._history, self._attempts
        if len(history) != 4 or len(attempts) != 1 or self._compact is not None:
            return
        pending, scheduled, running, succeeded = history
        record = attempts[0]
        # Index and identity tests only: this runs once per task run.
        if (
            pending[0] is _S.PENDING
            and scheduled[0] is _S.SCHEDULED
            and running[0] is _S.RUNNING
            and succeeded[0] is _S.SUCCESS
            and pending[2] == 0
            and scheduled[2] == 0
            and running[2] == 1
            and succeeded[2] == 1
            and pending[3] == ""
            and scheduled[3] == ""
            and running[3] == ""
            and succeeded[3] == ""
            and pending[4] is None
            and scheduled[4] is None
            and running[4] is None
            and succeeded[4] is None
            and record.number == 1
            and record.started_at == running[1]
            and record.outcome is _S.SUCCESS
            and record.failure is None
            and record.ended_at is not None
        ):
            self._compact = (pending, scheduled[1], running[1], succeeded, record.ended_at)
            # Never appended to: a SUCCESS run makes no further transition.
            self._history = _COMPACTED_HISTORY
            self._attempts = _COMPACTED_ATTEMPTS

    @property
    def task_id(self) -> str:
        """The id of the task node this run belongs to (for mapped children too)."""
        return self.spec.id

    @property
    def name(self) -> str:
        """The task's name, with ``[i]`` for mapped child i."""
        return self.spec.name if self.map_index < 0 else f"{self.spec.name}[{self.map_index}]"

    @property
    def started_at(self) -> float | None:
        """When the first attempt started; None if none did."""
        if self._compact is not None:
            return self._compact[2]
        return self._attempts[0].started_at if self._attempts else None

    @property
    def ended_at(self) -> float | None:
        """When the run reached its terminal state; None until then."""
        if self._compact is not None:
            return self._compact[3].timestamp
        return self.history[-1].timestamp if self.state.is_terminal else None

    @property
    def run_seconds(self) -> float | None:
        """How long its attempts ran, added up (not the pauses between them, nor the
        time before a run retry); None when none has ended. ``TaskRunInfo.run_seconds``
        says the same of a server's task run."""
        if self._compact is not None or self.attempt <= 1:  # (its one attempt)
            started, ended = self.started_at, self.ended_at
            return ended - started if started is not None and ended is not None else None
        spans = [a.duration for a in self._attempts if a.duration is not None]
        return sum(spans) if spans else None

    @property
    def states(self) -> list[TaskRunState]:
        """The sequence of states this run went through."""
        return [entry.state for entry in self.history]

    def __repr__(self) -> str:
        return f"<TaskRun {self.key} {self.state.name} attempt={self.attempt}>"
