"""What a child flow run's end means for the task run that stands for it.

A subflow node (``TaskSpec.subflow``) runs as a child flow run; when the child ends,
its host reports the outcome to the parent's engine as an ordinary attempt event, so
retries, timeouts and triggers apply to the node as to any task. Both hosts (embedded
and server) word it here, so a flow gives the same states and failures on both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from headwater.wire import FailureInfo, FlowRunState

from ._events import TaskFailed, TaskSucceeded

if TYPE_CHECKING:
    from ._machine import FlowRunEngine

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
    engine: FlowRunEngine | None = None,
) -> TaskSucceeded | TaskFailed:
    """The event for attempt ``attempt`` of subflow node run ``key`` whose child flow
    run ``child_id`` (of ``flow_name``) ended in ``state``. A failure names the first
    task of the child that failed, and has its failure as cause, when the child's
    ``engine`` is at hand."""
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
        root = _first_failure(engine) if engine is not None else None
        text = f"{what}: {message or 'it failed'}"
        if root is not None and not message.startswith(f"{root[0]}: "):
            # (a child's message names its first failed task with its error already:
            # engine.failed_message)
            first_line = root[1].message.partition("\n")[0]
            text += f" (task {root[0]!r}: {root[1].type}: {first_line})"
        failure = FailureInfo(
            type=SUBFLOW_FAILED,
            message=text,
            retryable=True,
            cause=root[1] if root is not None else None,
        )
    return TaskFailed(key, attempt, failure)


def _first_failure(engine: FlowRunEngine) -> tuple[str, FailureInfo] | None:
    """The first task run of a failed flow run that failed with a failure: its key
    and failure (None when none has one)."""
    for failed in engine.failed_runs():
        if failed.failure is not None:
            return failed.key, failed.failure
    return None
