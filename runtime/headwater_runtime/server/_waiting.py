"""Why a ready task run waits, in words, and failing it when it waits too long.

The dispatcher holds attempts no connected worker can take (section "Slots" of
docs/worker-protocol.md). A user sees such a task run as SCHEDULED; this module says
why, the same way for the API (``TaskRun.waiting``), the CLI and the UI:

- ``waiting: no connected worker offers CAPABILITY`` (a typo in a remote task's name,
  a worker started without the module);
- ``waiting: no connected worker offers CAPABILITY (labels gpu=true)`` when workers
  offer it but none has every required label;
- ``waiting for a free slot: N connected workers offer CAPABILITY, all busy``.

A task's ``schedule_to_start_timeout`` bounds that wait: the attempt then fails with
``headwater.ScheduleToStartTimeout`` (not retried), naming the reason, reported to the
engine as never started (``TaskFailed.never_started``: SCHEDULED -> FAILED, no RUNNING).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from headwater.wire import FailureInfo

if TYPE_CHECKING:
    from ._assignments import PendingAssignment
    from ._dispatch import Dispatcher, WorkerSession

#: The error type of an attempt no worker took within its schedule_to_start_timeout.
SCHEDULE_TO_START_TIMEOUT = "headwater.ScheduleToStartTimeout"


def _labels(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))


def waiting_reason(
    sessions: Iterable[WorkerSession], task_type: str, labels: Mapping[str, str]
) -> str:
    """Why an attempt of ``task_type`` needing ``labels`` is not running, given the
    connected worker sessions."""
    offering = [s for s in sessions if task_type in s.capabilities]
    fitting = [s for s in offering if all(s.labels.get(k) == v for k, v in labels.items())]
    if not fitting:
        wanted = f" (labels {_labels(labels)})" if labels else ""
        return f"waiting: no connected worker offers {task_type}{wanted}"
    if all(s.draining for s in fitting):
        return f"waiting: every worker offering {task_type} is drained"
    count = len(fitting)
    workers = "worker offers" if count == 1 else "workers offer"
    return f"waiting for a free slot: {count} connected {workers} {task_type}, all busy"


def waiting_reasons(dispatcher: Dispatcher, flow_run_id: str) -> dict[str, str]:
    """Why each attempt of a flow run not yet handed to a worker waits, by task run id
    (``Dispatcher.waiting_reason``: a limit, workers' other code, or the workers). The
    workers' part is worked out once per task type, code and labels: per attempt, it
    looked at every session for each of a 200,000-task run's queued attempts, on the
    event loop, at every GetFlowRun with task runs (a user trial saw others wait 2 s)."""
    known: dict[tuple[str, str, tuple[tuple[str, str], ...]], str] = {}
    return {p.token[0]: _reason(dispatcher, p, known) for p in dispatcher.queued(flow_run_id)}


#: Queued attempts ``waiting_reasons_in_turns`` looks at per turn of the event loop.
REASONS_TURN = 5_000


async def waiting_reasons_in_turns(dispatcher: Dispatcher, flow_run_id: str) -> dict[str, str]:
    """``waiting_reasons`` for a run with many queued attempts, REASONS_TURN at a time,
    the event loop serving other calls between turns (200,000 at once held it 0.3 s
    for each GetFlowRun of such a run, a user trial)."""
    reasons: dict[str, str] = {}
    known: dict[tuple[str, str, tuple[tuple[str, str], ...]], str] = {}
    candidates = dispatcher.queued_candidates(flow_run_id)
    for start in range(0, len(candidates), REASONS_TURN):
        if start:
            await asyncio.sleep(0)
        for pending in candidates[start : start + REASONS_TURN]:
            if dispatcher.is_queued(pending):
                reasons[pending.token[0]] = _reason(dispatcher, pending, known)
    return reasons


def _reason(
    dispatcher: Dispatcher,
    pending: PendingAssignment,
    known: dict[tuple[str, str, tuple[tuple[str, str], ...]], str],
) -> str:
    """``Dispatcher.waiting_reason``, its workers' part looked up in ``known`` by task
    type, code and labels (the same for every attempt of a task node)."""
    reason = dispatcher.limits.reason(pending.token)
    if reason:
        return reason
    key = (pending.task_type, pending.code_digest, tuple(sorted(pending.labels.items())))
    if key not in known:
        known[key] = dispatcher.waiting_reason(pending)
    return known[key]


def start_timeout_failure(dispatcher: Dispatcher, pending: PendingAssignment) -> FailureInfo:
    """The failure of an attempt nobody took within its schedule_to_start_timeout."""
    timeout = pending.start_timeout
    reason = waiting_reason(dispatcher.sessions.values(), pending.task_type, pending.labels)
    return FailureInfo(
        type=SCHEDULE_TO_START_TIMEOUT,
        message=f"no worker started it within its schedule_to_start_timeout of {timeout:g}s "
        f"({reason})",
        retryable=False,
        language="",
    )


__all__ = [
    "SCHEDULE_TO_START_TIMEOUT",
    "start_timeout_failure",
    "waiting_reason",
    "waiting_reasons",
    "waiting_reasons_in_turns",
]
