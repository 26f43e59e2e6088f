"""Late runs: a flow run that has not started within ``late_after`` seconds.

A run (created by a client or fired by a schedule) *starts* when its first task run
leaves the queue: an attempt begins (RUNNING), or a task run ends without one (a cache
hit, a skip). A run still not started ``late_after`` seconds after it was created (a
retried run: after its retry) is marked late, once per run attempt, with the reason
the dispatcher gives for its first waiting attempt:

* ``waiting: no connected worker offers etl.load`` (no worker),
* ``waiting on limit db (3/3)`` (a concurrency or rate limit),
* ``waiting: every worker offering etl.load is drained`` (paused workers),
* ``waiting for a free slot: ...`` (every suitable worker busy).

The mark is stored with the run (``late_runs``) in the next commit and shown by the
API (``FlowRun.late``, ``late_reason``), the CLI and the UI; webhooks that ask for late
runs are told. Pure bookkeeping: the caller gives it the time and the reasons.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from headwater.wire import TaskRunState

#: Task run states that do not start a run. MAPPED is among them: a mapped task over a
#: parameter or a literal list expands as the run begins, before any child runs, so a
#: run whose first task is such a map must not count as started by it.
NOT_STARTED = frozenset({TaskRunState.PENDING, TaskRunState.SCHEDULED, TaskRunState.MAPPED})


class LateRuns:
    """Runs not started yet, and when each becomes late.

    Args:
        late_after: seconds; None turns late marks off.
    """

    def __init__(self, late_after: float | None) -> None:
        self.late_after = late_after
        self._due: dict[str, float] = {}
        # (due, run id), oldest first; entries no longer in _due are skipped (a cheap
        # check on every turn of the server's loop, however many runs wait).
        self._heap: list[tuple[float, str]] = []

    def created(self, flow_run_id: str, at: float) -> None:
        """A run (or a retry of it) began at ``at`` and no task run of it has started."""
        if self.late_after is not None and self.late_after > 0:
            due = at + self.late_after
            self._due[flow_run_id] = due
            heapq.heappush(self._heap, (due, flow_run_id))

    def started(self, flow_run_id: str, state: TaskRunState | None) -> None:
        """A task run of the run changed to ``state`` (None: the run itself ended)."""
        if state is None or state not in NOT_STARTED:
            self._due.pop(flow_run_id, None)

    def due(self, now: float) -> list[str]:
        """Runs that became late by ``now`` (each returned once)."""
        late = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, run_id = heapq.heappop(heap)
            if self._due.get(run_id) == at:
                del self._due[run_id]
                late.append(run_id)
        return late

    @property
    def next_at(self) -> float | None:
        """When the next run becomes late, if none starts before."""
        heap = self._heap
        while heap and self._due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None


def late_reason(waiting: list[str], fallback: Callable[[], str] | None = None) -> str:
    """The reason to show for a late run: its first waiting attempt's, else why no
    attempt is ready (a retry delay, a cache check)."""
    if waiting:
        return waiting[0]
    if fallback is not None:
        return fallback()
    return "no task run is ready to run yet"
