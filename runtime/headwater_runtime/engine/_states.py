"""The one table of allowed task run transitions (the states are the contract's:
``headwater.wire.TaskRunState``)."""

from __future__ import annotations

from headwater.wire import TERMINAL_TASK_STATES, TaskRunState

S = TaskRunState

# The one table of allowed task run transitions. Anything else is a bug in the
# engine (or a host feeding it nonsense) and raises IllegalTransition.
TRANSITIONS: dict[TaskRunState, frozenset[TaskRunState]] = {
    S.PENDING: frozenset(
        {S.SCHEDULED, S.SKIPPED, S.TRIGGER_FAILED, S.CANCELLED, S.MAPPED, S.FAILED}
    ),
    # SCHEDULED -> FAILED: the inputs could not be assembled (e.g. a bad path), or no
    # worker started the attempt in time (TaskFailed.never_started: a
    # schedule_to_start_timeout); SCHEDULED -> RETRYING: such a failure that the task's
    # retry policy retries.
    S.SCHEDULED: frozenset({S.RUNNING, S.CACHED, S.CANCELLED, S.FAILED, S.RETRYING}),
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


#: The one way out of a terminal state: a flow run retried from its failure sends the
#: task runs it re-runs back to PENDING (engine/_rerun.py), and only then.
REOPENED = S.PENDING


class IllegalTransition(RuntimeError):
    """An engine bug: a task run was asked to move between states the table forbids."""
