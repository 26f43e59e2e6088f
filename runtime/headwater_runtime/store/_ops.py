"""What the store keeps for day-two operations (docs/operations.md): flow run
attempts, late marks, concurrency limits, workers and their drains, webhooks and their
delivery outbox.

``OpsStore`` is part of the ``Store`` protocol (``Store`` extends it); a store for
another database implements these methods too. Threads as for the rest of the store:
the ``put_*``/``delete_*``/``delivery_*`` methods are called from the writer thread,
the others from reader threads. Rows that must be stored in the same transaction as
run state (a run attempt, a late mark, a webhook delivery caused by a state change)
travel in the ``WriteBatch`` instead (``run_attempts``, ``late``, ``deliveries``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

#: Tables with a row per flow run, deleted with the run by ``prune`` (every store).
PER_RUN_TABLES = ("run_attempts", "late_runs")
#: SQL (both stores) for a payload ``p`` whose bytes are not in the database but in a
#: payload directory (``--payload-dir``): a prune not given the directory keeps it.
PAYLOAD_IN_A_DIRECTORY = (
    "(p.size > 0 AND NOT EXISTS (SELECT 1 FROM payload_chunks c WHERE c.id = p.id))"
)


def whole_families(
    candidates: dict[str, str], existing: Callable[[list[str]], set[str]]
) -> list[str]:
    """The runs ``prune`` may delete, of ``candidates`` (finished long enough ago: run
    id -> its parent run's id, "" for a top-level run): a child run goes only with its
    parent, so a run whose parent (or an ancestor's parent) is still there and not a
    candidate is kept. ``existing(ids)``: which of these run ids the store has. Prune
    deleted the finished children of a running parent, whose subflow node then named a
    run that no longer existed."""
    outside = sorted({p for p in candidates.values() if p and p not in candidates})
    kept = existing(outside) if outside else set()
    changed = bool(kept)
    while changed:  # a child of a kept run is kept, down the generations
        changed = False
        for run_id, parent in candidates.items():
            if parent in kept and run_id not in kept:
                kept.add(run_id)
                changed = True
    return [run_id for run_id in candidates if run_id not in kept]


@dataclass(frozen=True, slots=True)
class RunAttemptRow:
    """One attempt of a flow run: 1 for its first run, one more per retry from
    failure. ``state`` is the FlowRunState it is in (RUNNING until it ends)."""

    flow_run_id: str
    attempt: int
    started_at: float
    state: int
    ended_at: float | None = None
    message: str = ""


@dataclass(frozen=True, slots=True)
class LateRow:
    """A flow run that did not start within the late threshold, and why."""

    flow_run_id: str
    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class LimitRow:
    """A concurrency and/or rate limit on a task tag (0: that kind is not limited)."""

    tag: str
    concurrency: int = 0
    rate: int = 0
    rate_period: float = 0.0


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """A worker as last seen (by name: the latest session of that name)."""

    name: str
    worker_id: str
    capabilities: tuple[str, ...]
    labels: dict[str, str]
    slots: int
    version: str
    language: str
    hostname: str
    connected_at: float
    last_seen: float


@dataclass(frozen=True, slots=True)
class DrainRow:
    """A drain on the workers of a name (until resumed)."""

    name: str
    exit_when_idle: bool
    at: float


@dataclass(frozen=True, slots=True)
class WebhookRow:
    """A webhook: where to POST, and for which flows, states and late runs."""

    id: str
    url: str
    flow_names: tuple[str, ...] = ()
    states: tuple[int, ...] = ()
    late: bool = False
    secret: str = ""
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """A webhook delivery in the outbox: the JSON body to POST, how often it was
    tried, and when to try next. ``id`` is assigned by the store (0 before)."""

    webhook_id: str
    body: bytes
    next_at: float
    created_at: float
    attempts: int = 0
    id: int = 0
    last_error: str = ""


@dataclass(frozen=True, slots=True)
class DeliveryCounts:
    """A webhook's deliveries not made yet, given up, and its latest error."""

    pending: int = 0
    failed: int = 0
    last_error: str = ""


@dataclass(slots=True)
class OpsWrites:
    """Operations rows stored in the same transaction as the run state that caused
    them (a part of ``WriteBatch``)."""

    run_attempts: list[RunAttemptRow] = field(default_factory=list)
    late: list[LateRow] = field(default_factory=list)
    deliveries: list[DeliveryRow] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.run_attempts or self.late or self.deliveries)

    def absorb(self, newer: OpsWrites) -> None:
        """Append a later batch's rows after these."""
        self.run_attempts.extend(newer.run_attempts)
        self.late.extend(newer.late)
        self.deliveries.extend(newer.deliveries)


class OpsStore(Protocol):
    """The operations part of the Store protocol (see the module docstring)."""

    # flow run attempts and late marks (written through WriteBatch)
    def run_attempts(self, flow_run_id: str) -> list[RunAttemptRow]:
        """A flow run's attempts, oldest first (none for a run stored before attempts
        were recorded)."""
        ...

    def late_runs(self, flow_run_ids: Sequence[str]) -> dict[str, LateRow]:
        """The late marks of these runs, by run id (runs never late are left out)."""
        ...

    def count_flow_runs(self) -> dict[int, int]:
        """How many flow runs are in each state (FlowRunState value -> count)."""
        ...

    # concurrency limits
    def put_limit(self, row: LimitRow) -> None:
        """Create or replace a tag's limit."""
        ...

    def delete_limit(self, tag: str) -> None:
        """Remove a tag's limit; NotFound if it has none."""
        ...

    def list_limits(self) -> list[LimitRow]:
        """Every limit, by tag."""
        ...

    # workers
    def put_worker(self, row: WorkerRow) -> None:
        """Record a worker (replacing what was recorded under its name)."""
        ...

    def list_workers(self) -> list[WorkerRow]:
        """Every worker recorded, by name."""
        ...

    def put_drain(self, row: DrainRow) -> None:
        """Drain the workers of a name (replacing an earlier drain of it)."""
        ...

    def delete_drain(self, name: str) -> None:
        """Lift the drain of a name (nothing happens if there is none)."""
        ...

    def list_drains(self) -> list[DrainRow]:
        """Every drain, by name."""
        ...

    # webhooks and their outbox (deliveries are added through WriteBatch)
    def put_webhook(self, row: WebhookRow) -> None:
        """Create a webhook."""
        ...

    def delete_webhook(self, webhook_id: str) -> None:
        """Remove a webhook and its deliveries; NotFound if it does not exist."""
        ...

    def list_webhooks(self) -> list[WebhookRow]:
        """Every webhook, oldest first."""
        ...

    def delivery_counts(self) -> dict[str, DeliveryCounts]:
        """Pending and failed deliveries per webhook id (webhooks with none left out)."""
        ...

    def due_deliveries(self, now: float, limit: int) -> list[DeliveryRow]:
        """Each webhook's oldest pending delivery due at ``now`` (at most ``limit``
        webhooks'), oldest first: one webhook's backlog never hides another's."""
        ...

    def next_delivery_at(self) -> float | None:
        """When the earliest pending delivery is due (None: none is pending)."""
        ...

    def delivery_done(self, delivery_id: int) -> None:
        """A delivery was made: remove it."""
        ...

    def delivery_failed(
        self, delivery_id: int, attempts: int, next_at: float | None, error: str
    ) -> None:
        """A try failed: try again at ``next_at``, or give up (kept, counted as
        failed) when it is None."""
        ...
