"""Events the engine consumes and commands (decisions) it returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from headwater.wire import FailureInfo, FlowRunState

from ._records import TaskRunRecord

# ---------------------------------------------------------------- events (host -> engine)


@dataclass(frozen=True, slots=True)
class TaskStarted:
    """A dispatched attempt began executing (hosts that do not auto-start)."""

    key: str
    attempt: int


@dataclass(frozen=True, slots=True)
class TaskSucceeded:
    """An attempt returned ``value`` (a live object, or an opaque payload handle).

    Where a worker derives the cache key (a task's key function runs where the task
    does), ``cache_key`` carries it; ``cached`` says the value came from the cache
    under that key and the task itself did not run.
    """

    key: str
    attempt: int
    value: Any
    cache_key: str = ""
    cached: bool = False


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """An attempt raised, or was stopped for exceeding its deadline."""

    key: str
    attempt: int
    failure: FailureInfo


@dataclass(frozen=True, slots=True)
class TaskSkipped:
    """An attempt raised or returned a Skip signal."""

    key: str
    attempt: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class TaskLost:
    """The worker holding an attempt disappeared (or gave the attempt back: ``reason``
    says so); dispatch it again."""

    key: str
    attempt: int
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A cached result as the host's cache returned it."""

    value: Any
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class CacheChecked:
    """Answer to CheckCache: the key the host derived and what the cache holds."""

    key: str
    cache_key: str
    entry: CacheEntry | None


@dataclass(frozen=True, slots=True)
class CancelRequested:
    """Cancel the flow run: stop running attempts, cancel everything pending."""

    reason: str = "cancelled"


Event = (
    TaskStarted
    | TaskSucceeded
    | TaskFailed
    | TaskSkipped
    | TaskLost
    | CacheChecked
    | CancelRequested
)

# ------------------------------------------------------------- commands (engine -> host)


@dataclass(frozen=True, slots=True)
class RunTask:
    """Execute attempt ``run.attempt`` of ``run`` with these arguments."""

    run: TaskRunRecord
    attempt: int
    inputs: dict[str, Any]
    deadline: float | None


@dataclass(frozen=True, slots=True)
class CancelTask:
    """Stop an attempt that is executing (cancelled or timed out)."""

    run: TaskRunRecord
    attempt: int
    reason: str


@dataclass(frozen=True, slots=True)
class CheckCache:
    """Derive the cache key for ``run`` from ``inputs`` and look it up."""

    run: TaskRunRecord
    inputs: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WriteCache:
    """Store a successful result under its cache key."""

    run: TaskRunRecord
    cache_key: str
    value: Any
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class EventIgnored:
    """An event was refused (stale attempt, unknown run); hosts answer it with an error."""

    event: Event
    reason: str


@dataclass(frozen=True, slots=True)
class FlowFinished:
    """The flow run reached a terminal state."""

    state: FlowRunState


Command = RunTask | CancelTask | CheckCache | WriteCache | EventIgnored | FlowFinished
