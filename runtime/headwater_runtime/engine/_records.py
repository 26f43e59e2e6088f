"""What the engine records about task runs: state history, attempts, failures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from headwater.wire import FailureInfo, TaskRunState

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


class TaskRunRecord:
    """Everything known about one task run. Owned and mutated by the engine only.

    ``key`` is unique within the flow run: the task id, with ``[i]`` for mapped child i.

    Attributes:
        state: the current TaskRunState.
        history: every state change (state, timestamp, attempt, message, failure).
        attempts: every attempt (start, end, outcome, failure).
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
        "_node",
        "attempt",
        "attempts",
        "cache_key",
        "children",
        "dispatched",
        "failure",
        "history",
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
    ) -> None:
        """Create the run PENDING at time ``now`` (the engine does this, never users).

        Args:
            key: unique within the flow run.
            spec: the task node it runs.
            node: the engine's bookkeeping for that node.
            map_index: the element index of a mapped child; -1 otherwise.
            parent: a mapped child's parent run.
            now: the clock reading at creation.
        """
        self.key = key
        self.spec = spec
        self._node = node
        self.map_index = map_index
        self.parent = parent
        self.state = TaskRunState.PENDING
        self.history: list[StateEntry] = [StateEntry(TaskRunState.PENDING, now, 0)]
        self.attempts: list[AttemptRecord] = []
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
        return self.attempts[0].started_at if self.attempts else None

    @property
    def ended_at(self) -> float | None:
        """When the run reached its terminal state; None until then."""
        return self.history[-1].timestamp if self.state.is_terminal else None

    @property
    def states(self) -> list[TaskRunState]:
        """The sequence of states this run went through."""
        return [entry.state for entry in self.history]

    def __repr__(self) -> str:
        return f"<TaskRun {self.key} {self.state.name} attempt={self.attempt}>"
