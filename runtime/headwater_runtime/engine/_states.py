"""Task and flow run states, and the one table of allowed transitions."""

from __future__ import annotations

import enum


class TaskRunState(enum.Enum):
    """State of one task run. Names match the contract's ``TASK_RUN_STATE_*`` values."""

    PENDING = 1
    SCHEDULED = 2
    RUNNING = 3
    RETRYING = 4
    SUCCESS = 5
    FAILED = 6
    TIMED_OUT = 7
    CANCELLED = 8
    SKIPPED = 9
    CACHED = 10
    TRIGGER_FAILED = 11
    MAPPED = 12

    # Members are singletons compared by identity, so identity hashing is correct, and
    # it is C-level: Enum's own __hash__ is Python code, and the engine hashes states
    # about ten times per task run (transition table, terminal sets).
    __hash__ = object.__hash__

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_TASK_STATES

    @property
    def is_success(self) -> bool:
        """Counts as success for triggers and reference tasks."""
        return self in SUCCESS_STATES

    @property
    def is_failure(self) -> bool:
        return self in FAILURE_STATES


class FlowRunState(enum.Enum):
    """State of a flow run. Names match the contract's ``FLOW_RUN_STATE_*`` values."""

    PENDING = 1
    SCHEDULED = 2
    RUNNING = 3
    SUCCESS = 4
    FAILED = 5
    CANCELLED = 6

    __hash__ = object.__hash__

    @property
    def is_terminal(self) -> bool:
        return self in (FlowRunState.SUCCESS, FlowRunState.FAILED, FlowRunState.CANCELLED)


S = TaskRunState
SUCCESS_STATES = frozenset({S.SUCCESS, S.CACHED, S.SKIPPED, S.MAPPED})
FAILURE_STATES = frozenset({S.FAILED, S.TIMED_OUT, S.TRIGGER_FAILED, S.CANCELLED})
TERMINAL_TASK_STATES = SUCCESS_STATES | FAILURE_STATES

# The one table of allowed task run transitions. Anything else is a bug in the
# engine (or a host feeding it nonsense) and raises IllegalTransition.
TRANSITIONS: dict[TaskRunState, frozenset[TaskRunState]] = {
    S.PENDING: frozenset(
        {S.SCHEDULED, S.SKIPPED, S.TRIGGER_FAILED, S.CANCELLED, S.MAPPED, S.FAILED}
    ),
    # SCHEDULED -> FAILED: the inputs could not be assembled (e.g. a bad path).
    S.SCHEDULED: frozenset({S.RUNNING, S.CACHED, S.CANCELLED, S.FAILED}),
    # RUNNING -> SCHEDULED: the worker holding the attempt was lost; dispatch again.
    # RUNNING -> CACHED: a worker computed the cache key (the task's key function) and
    # the host found it, so the function itself never ran.
    S.RUNNING: frozenset(
        {
            S.SUCCESS,
            S.CACHED,
            S.FAILED,
            S.TIMED_OUT,
            S.CANCELLED,
            S.SKIPPED,
            S.RETRYING,
            S.SCHEDULED,
        }
    ),
    S.RETRYING: frozenset({S.SCHEDULED, S.CANCELLED}),
    **{state: frozenset() for state in TERMINAL_TASK_STATES},
}


class IllegalTransition(RuntimeError):
    """An engine bug: a task run was asked to move between states the table forbids."""
