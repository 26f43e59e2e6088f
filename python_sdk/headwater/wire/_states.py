"""Task run and flow run states, as the contract's ``state.proto`` defines them.

The engine's table of allowed transitions lives with the engine; these are only the
states and the sets every side asks about (terminal, success, failure).
"""

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
        """No further transition can happen."""
        return self in TERMINAL_TASK_STATES

    @property
    def is_success(self) -> bool:
        """Counts as success for triggers and reference tasks."""
        return self in SUCCESS_STATES

    @property
    def is_failure(self) -> bool:
        """Counts as failure for triggers and reference tasks."""
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
        """The run has ended (SUCCESS, FAILED or CANCELLED)."""
        return self in TERMINAL_FLOW_STATES


_S = TaskRunState
SUCCESS_STATES = frozenset({_S.SUCCESS, _S.CACHED, _S.SKIPPED, _S.MAPPED})
FAILURE_STATES = frozenset({_S.FAILED, _S.TIMED_OUT, _S.TRIGGER_FAILED, _S.CANCELLED})
TERMINAL_TASK_STATES = SUCCESS_STATES | FAILURE_STATES
TERMINAL_FLOW_STATES = frozenset(
    {FlowRunState.SUCCESS, FlowRunState.FAILED, FlowRunState.CANCELLED}
)
#: The flow run states a webhook can fire for (a run is RUNNING once it is created).
WEBHOOK_STATES = (
    FlowRunState.RUNNING,
    FlowRunState.SUCCESS,
    FlowRunState.FAILED,
    FlowRunState.CANCELLED,
)
