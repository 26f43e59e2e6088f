"""What a child flow run's end means for the task run that stands for it.

A subflow node (``TaskSpec.subflow``) runs as a child flow run; when the child ends,
its host reports the outcome to the parent's engine as an ordinary attempt event, so
retries, timeouts and triggers apply to the node as to any task. Both hosts (embedded
and server) word it here, so a flow gives the same states and failures on both.
"""

from __future__ import annotations

from typing import Any

from headwater.wire import FailureInfo, FlowRunState

from ._events import TaskFailed, TaskSucceeded

#: The failure type of a subflow node whose child flow run failed (retryable).
SUBFLOW_FAILED = "headwater.SubflowFailed"
#: The failure type of a subflow node whose child flow run was cancelled by someone
#: else than the parent (not retried: someone asked for it).
SUBFLOW_CANCELLED = "headwater.SubflowCancelled"


def subflow_outcome(
    key: str,
    attempt: int,
    child_id: str,
    flow_name: str,
    state: FlowRunState,
    result: Any,
    message: str,
) -> TaskSucceeded | TaskFailed:
    """The event for attempt ``attempt`` of subflow node run ``key`` whose child flow
    run ``child_id`` (of ``flow_name``) ended in ``state``."""
    if state is FlowRunState.SUCCESS:
        return TaskSucceeded(key, attempt, result)
    what = f"flow run {child_id} of {flow_name!r} ended {state.name}"
    if state is FlowRunState.CANCELLED:
        failure = FailureInfo(
            type=SUBFLOW_CANCELLED,
            message=f"{what}: {message or 'cancelled'}",
            retryable=False,
        )
    else:
        failure = FailureInfo(
            type=SUBFLOW_FAILED, message=f"{what}: {message or 'it failed'}", retryable=True
        )
    return TaskFailed(key, attempt, failure)
