"""Events the engine consumes and commands (decisions) it returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from headwater.wire import FailureInfo, FlowRunState, TaskRunState

from ._records import TaskRunRecord

#: The failure type of an attempt whose worker vanished (``TaskLost``).
WORKER_LOST = "headwater.WorkerLost"
#: How many times a task run's attempts may be given back (``TaskLost.given_back``)
#: before it fails: a bound for a worker that gives back whatever it gets.
MAX_GIVEN_BACK = 100

# ---------------------------------------------------------------- events (host -> engine)


@dataclass(frozen=True, slots=True)
class TaskStarted:
    """A dispatched attempt began executing (hosts that do not auto-start).

    ``at``: when it began by the reporter's clock (a worker sends its TaskStarted a
    moment after the start). The attempt's RUNNING state takes that time when it lies
    between the attempt's SCHEDULED state and the engine's clock now, else the
    nearer of the two; None: now.
    """

    key: str
    attempt: int
    at: float | None = None


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
    #: When it started, for an attempt without a TaskStarted (TaskStarted.at).
    started_at: float | None = None
    #: When it ended by the reporter's clock: the end time when it lies between the
    #: attempt's RUNNING state and now, else the nearer of the two; None: now.
    ended_at: float | None = None


@dataclass(frozen=True, slots=True)
class TaskFailed:
    """An attempt raised, or was stopped for exceeding its deadline.

    ``never_started``: the host failed a dispatched attempt that no worker ever took
    (its ``schedule_to_start_timeout`` expired). The run goes SCHEDULED -> FAILED (or
    RETRYING, when the failure may be retried) without a RUNNING state or an attempt
    record; the attempt number stays used. Without it, an outcome for a SCHEDULED
    attempt means the attempt started (its TaskStarted was lost or never sent). An
    attempt already RUNNING has started, and the flag changes nothing.
    """

    key: str
    attempt: int
    failure: FailureInfo
    never_started: bool = False
    #: When it started, for an attempt without a TaskStarted (TaskStarted.at).
    started_at: float | None = None
    #: When it ended by the reporter's clock: the end time when it lies between the
    #: attempt's RUNNING state and now, else the nearer of the two; None: now.
    ended_at: float | None = None


@dataclass(frozen=True, slots=True)
class TaskSkipped:
    """An attempt raised or returned a Skip signal."""

    key: str
    attempt: int
    reason: str = ""
    #: When it started, for an attempt without a TaskStarted (TaskStarted.at).
    started_at: float | None = None
    #: When it ended by the reporter's clock: the end time when it lies between the
    #: attempt's RUNNING state and now, else the nearer of the two; None: now.
    ended_at: float | None = None


@dataclass(frozen=True, slots=True)
class TaskLost:
    """The worker holding an attempt disappeared, or gave the attempt back
    (``given_back``: a worker stopping on purpose; ``reason`` says so); dispatch it
    again. A loss counts towards ``max_lost``; a give-back does not (up to
    ``MAX_GIVEN_BACK``), so rolling restarts of workers never fail a long task."""

    key: str
    attempt: int
    reason: str = ""
    given_back: bool = False


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


@dataclass(frozen=True, slots=True)
class RunRetried:
    """Retry a FAILED or CANCELLED flow run from its failure (engine/_rerun.py): the
    same run goes on as its next run attempt, keeping every task run that succeeded
    and re-running the others."""

    reason: str = ""


#: The events about one attempt of a task run (fenced by its attempt number).
AttemptEvent = TaskStarted | TaskSucceeded | TaskFailed | TaskSkipped | TaskLost
ATTEMPT_EVENTS = (TaskStarted, TaskSucceeded, TaskFailed, TaskSkipped, TaskLost)

Event = AttemptEvent | CacheChecked | CancelRequested | RunRetried

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


def stale_reason(
    key: str,
    attempt: int,
    *,
    ended: TaskRunState | None = None,
    lost: bool = False,
    current: int | None = None,
    flow: FlowRunState | None = None,
) -> str:
    """Why a report about an attempt that is not the current, dispatched one is refused.

    One wording wherever that is decided (the engine, or a host whose run has already
    ended), e.g. ``stale attempt 1 of task run 'a': the attempt timed out; the flow run
    ended FAILED``. Workers see it in ``Ack.reason``.

    Args:
        key: the task run's key.
        attempt: the attempt the report is about.
        ended: how that attempt ended, when known.
        lost: the attempt's worker was lost (its session ended).
        current: the task run's latest dispatched attempt, when known.
        flow: the flow run's state, when it is not RUNNING.
    """
    why: list[str] = []
    if lost:
        why.append("the attempt was lost (the worker session running it ended)")
    elif ended is TaskRunState.TIMED_OUT:
        why.append("the attempt timed out")
    elif ended is TaskRunState.CANCELLED:
        why.append("the attempt was cancelled")
    elif ended is not None:
        why.append(f"the attempt already ended {ended.name}")
    if attempt < 1 or (current is not None and attempt > current):
        why.append("no such attempt was dispatched")
    elif current is not None and attempt < current:
        why.append(f"attempt {current} replaced it")
    if flow is not None:
        ended_or_not = "ended" if flow.is_terminal else "is"
        why.append(f"the flow run {ended_or_not} {flow.name}")
    return f"stale attempt {attempt} of task run {key!r}: {'; '.join(why) or 'it is over'}"


@dataclass(frozen=True, slots=True)
class FlowFinished:
    """The flow run reached a terminal state."""

    state: FlowRunState


Command = RunTask | CancelTask | CheckCache | WriteCache | EventIgnored | FlowFinished
