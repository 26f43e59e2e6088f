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
import itertools
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from headwater.wire import FailureInfo, split_task_run_id

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


def waiting_reasons(
    dispatcher: Dispatcher,
    flow_run_id: str,
    *,
    limit: int | None = None,
    only: Collection[str] | None = None,
) -> dict[str, str]:
    """Why each attempt of a flow run not yet handed to a worker waits, by task run id
    (``Dispatcher.waiting_reason``: a limit, workers' other code, or the workers). The
    workers' part is worked out once per task type, code and labels: per attempt, it
    looked at every session for each of a 200,000-task run's queued attempts, on the
    event loop, at every GetFlowRun with task runs (a user trial saw others wait 2 s).
    ``limit``: the first ``limit`` of them only; ``only``: those of these task run ids
    only (a page of task runs). The web UI's run page shows 200 and each page of task
    runs its own: working out all of a run's 100,000 held the loop ~0.2 s at each look."""
    return dict(itertools.islice(_queued_reasons(dispatcher, flow_run_id, only), limit))


def _queued_reasons(
    dispatcher: Dispatcher, flow_run_id: str, only: Collection[str] | None = None
) -> Iterator[tuple[str, str]]:
    """Each queued attempt of a run (of these task run ids, ``only``) and why it waits:
    (task run id, reason), the workers' part worked out once per task type, code and
    labels (``waiting_reasons``)."""
    known: dict[tuple[str, str, tuple[tuple[str, str], ...]], str] = {}
    for pending in dispatcher.queued_candidates(flow_run_id):
        if only is not None and pending.token[0] not in only:
            continue
        if dispatcher.is_queued(pending):
            yield pending.token[0], _reason(dispatcher, pending, known)


#: Queued attempts ``waiting_reasons_in_turns`` looks at per turn of the event loop
#: (~1 ms). Another client's call goes through several turns of the loop: at 5,000 a
#: turn (~6 ms each), a call made while 100,000 were looked at waited 50-70 ms.
REASONS_TURN = 1_000


async def waiting_reasons_in_turns(dispatcher: Dispatcher, flow_run_id: str) -> dict[str, str]:
    """``waiting_reasons`` for a run with many queued attempts, REASONS_TURN at a time,
    the event loop serving other calls between turns (200,000 at once held it 0.3 s
    for each GetFlowRun of such a run, a user trial)."""
    reasons: dict[str, str] = {}
    await _in_turns(dispatcher, flow_run_id, reasons.__setitem__)
    return reasons


async def waiting_tasks_in_turns(
    dispatcher: Dispatcher,
    flow_run_id: str,
    task_of: Callable[[str], str | None],
    more: Mapping[str, str] | None = None,
) -> list[WaitingTasks]:
    """Why a run's waiting task runs wait, a line per task and reason (in the order
    their first task runs wait), worked out in turns as ``waiting_reasons_in_turns``:
    what GetFlowRun's ``include_waiting`` answers, a few lines where the task runs'
    own reasons are one per task run (100,000 for a wide map, a 22 MB answer that held
    every other client ~0.1 s as it went out). ``task_of``: the task id of a task run
    key (None: not the run's); ``more``: other reasons by task run id (subflow nodes
    waiting for a graph build)."""
    groups: dict[tuple[str, str], WaitingTasks] = {}

    def add(task_run: str, reason: str) -> None:
        key = split_task_run_id(task_run)[1]
        task_id = task_of(key)
        if task_id is None:
            return
        group = groups.get((task_id, reason))
        if group is None:
            groups[(task_id, reason)] = WaitingTasks(task_id, reason, 1, key)
        else:
            group.count += 1

    await _in_turns(dispatcher, flow_run_id, add)
    for task_run, reason in (more or {}).items():
        add(task_run, reason)
    return list(groups.values())


@dataclass
class WaitingTasks:
    """Task runs of one task that wait for one reason (``waiting_tasks_in_turns``)."""

    task_id: str
    reason: str
    count: int
    first_key: str


async def _in_turns(
    dispatcher: Dispatcher, flow_run_id: str, add: Callable[[str, str], None]
) -> None:
    """Hand each queued attempt of a run and why it waits to ``add`` (task run id,
    reason), REASONS_TURN at a time, the event loop serving others between turns."""
    found = _queued_reasons(dispatcher, flow_run_id)
    while turn := list(itertools.islice(found, REASONS_TURN)):
        for task_run, reason in turn:
            add(task_run, reason)
        if len(turn) == REASONS_TURN:
            await asyncio.sleep(0)


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
    "WaitingTasks",
    "start_timeout_failure",
    "waiting_reason",
    "waiting_reasons",
    "waiting_reasons_in_turns",
    "waiting_tasks_in_turns",
]
