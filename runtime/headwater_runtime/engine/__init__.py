"""The pure engine: a state machine per flow run (events in, commands out).

No I/O, no threads, an injected clock. The embedded host and the server drive the
same engine, so a flow gives the same states and results on both. The graph it runs
(``GraphSpec``), the states and failures are the contract's: ``headwater.wire``.

The journal's names (``JournaledEngine``, ``replay``, ``ENGINE_VERSION``...) load on
first use: durable hosts need them, an embedded run does not.
"""

from typing import TYPE_CHECKING, Any

from ._events import (
    ATTEMPT_EVENTS,
    MAX_GIVEN_BACK,
    WORKER_LOST,
    CacheChecked,
    CacheEntry,
    CancelRequested,
    CancelTask,
    CheckCache,
    Command,
    Event,
    EventIgnored,
    FlowFinished,
    RunRetried,
    RunTask,
    TaskFailed,
    TaskLost,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
    WriteCache,
    stale_reason,
)
from ._machine import FlowRunEngine
from ._nodes import Clock, FlowRunFailure
from ._policies import DELAY_RULE, Verdict, evaluate_trigger, retry_delay
from ._records import AttemptRecord, StateEntry, TaskRunRecord
from ._rerun import not_retryable
from ._states import TRANSITIONS, IllegalTransition
from ._subflows import SUBFLOW_CANCELLED, SUBFLOW_FAILED, subflow_outcome
from ._values import PYTHON_VALUES, At, PythonValues, Step, ValueOps

if TYPE_CHECKING:
    from ._journal import (
        ENGINE_VERSION,
        EVENT,
        REPLAYS,
        START,
        TIMERS,
        JournaledEngine,
        JournalEntry,
        replay,
    )

_JOURNAL = frozenset(
    {
        "ENGINE_VERSION",
        "EVENT",
        "REPLAYS",
        "START",
        "TIMERS",
        "JournaledEngine",
        "JournalEntry",
        "replay",
    }
)


def __getattr__(name: str) -> Any:
    if name in _JOURNAL:
        from . import _journal

        value = getattr(_journal, name)
        globals()[name] = value  # once: as the lazy packages do (headwater.wire.lazy)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ATTEMPT_EVENTS",
    "DELAY_RULE",
    "ENGINE_VERSION",
    "EVENT",
    "MAX_GIVEN_BACK",
    "PYTHON_VALUES",
    "REPLAYS",
    "START",
    "SUBFLOW_CANCELLED",
    "SUBFLOW_FAILED",
    "TIMERS",
    "TRANSITIONS",
    "WORKER_LOST",
    "At",
    "AttemptRecord",
    "CacheChecked",
    "CacheEntry",
    "CancelRequested",
    "CancelTask",
    "CheckCache",
    "Clock",
    "Command",
    "Event",
    "EventIgnored",
    "FlowFinished",
    "FlowRunEngine",
    "FlowRunFailure",
    "IllegalTransition",
    "JournalEntry",
    "JournaledEngine",
    "PythonValues",
    "RunRetried",
    "RunTask",
    "StateEntry",
    "Step",
    "TaskFailed",
    "TaskLost",
    "TaskRunRecord",
    "TaskSkipped",
    "TaskStarted",
    "TaskSucceeded",
    "ValueOps",
    "Verdict",
    "WriteCache",
    "evaluate_trigger",
    "not_retryable",
    "replay",
    "retry_delay",
    "stale_reason",
    "subflow_outcome",
]
