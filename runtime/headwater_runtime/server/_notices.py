"""What changed, for live views: runs, logs and workers (the HTTP UI's event streams).

The commit pipeline tells the core what each stored commit changed; the core passes
that on here (``runs_changed``, ``logs_stored``), and worker sessions coming and going
(``worker_connected``, ``worker_disconnected``). Subscribers get asyncio queues of
notes, on the event loop, only after the commit: a view never shows a state a crash
could take back. Notes are coalesced by the queues themselves (``MergedSets``,
``LatestPerKey``): a view that reads slowly, or not at all (a stalled client whose
stream is held back by flow control), makes the server keep a bounded number of notes
(about one per thing that changed), never one per change; the reader gets the newest
state of each.

The worker directory remembers workers that have left (offline) so that the UI can
show them, up to ``OFFLINE_KEPT`` of them; it lives in memory (a restarted server
starts with the workers that reconnect).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from headwater_runtime.store import WorkerRow

from ._dispatch import WorkerSession

#: Offline workers remembered (the oldest are forgotten first).
OFFLINE_KEPT = 200

T = TypeVar("T")


@dataclass
class WorkerRecord:
    """A worker the server has seen: its Hello, and its session while connected."""

    worker_id: str
    name: str
    capabilities: tuple[str, ...]
    labels: dict[str, str]
    slots: int
    connected_at: float
    last_seen: float
    session: WorkerSession | None = field(default=None, repr=False)
    disconnected_at: float | None = None

    @property
    def online(self) -> bool:
        """Whether a session of this worker is connected."""
        return self.session is not None

    @classmethod
    def recorded(cls, row: WorkerRow) -> WorkerRecord:
        """An offline worker as the store recorded it (one that left before this server
        started): it left about when it was last heard from."""
        return cls(
            row.worker_id,
            row.name,
            row.capabilities,
            dict(row.labels),
            row.slots,
            row.connected_at,
            row.last_seen,
            disconnected_at=row.last_seen,
        )

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON-able data (the HTTP API's worker object)."""
        session = self.session
        return {
            "worker_id": self.worker_id,
            "name": self.name,
            "online": session is not None,
            "capabilities": list(self.capabilities),
            "labels": dict(self.labels),
            "slots": self.slots,
            "slots_used": len(session.running) if session is not None else 0,
            "connected_at": self.connected_at,
            "last_seen": session.last_seen if session is not None else self.last_seen,
            "disconnected_at": self.disconnected_at,
        }


class MergedSets(asyncio.Queue[set[T]]):
    """A queue of sets in which the sets put while none is taken merge into one: it
    holds at most one set (of the ids that changed since its reader last looked)."""

    def _put(self, item: set[T]) -> None:
        pending: Any = self._queue  # type: ignore[attr-defined]
        if pending:
            pending[-1] |= item
        else:
            pending.append(set(item))


class LatestPerKey(asyncio.Queue[T]):
    """A queue of every item put, until its reader falls behind: once more than
    ``backlog`` items are pending, the pending items collapse to the newest of each key
    (in the order of their newest put). A reader that keeps up sees every item; one
    that stalls gets each key's latest item, and the queue never holds more items
    than ``backlog`` or twice the number of keys, whichever is larger.

    Args:
        key: an item's key (newer items of a key replace older ones when collapsing).
        backlog: pending items kept one by one before collapsing.
    """

    def __init__(self, key: Callable[[T], Hashable], backlog: int) -> None:
        self._key = key
        self._backlog = self._collapse_at = backlog
        super().__init__()

    def _put(self, item: T) -> None:
        pending: Any = self._queue  # type: ignore[attr-defined]
        pending.append(item)
        if len(pending) > self._collapse_at:
            newest: dict[Hashable, T] = {}
            for old in pending:
                key = self._key(old)
                newest.pop(key, None)
                newest[key] = old
            pending.clear()
            pending.extend(newest.values())
            # (collapsing again only after as many puts: amortised O(1) per put)
            self._collapse_at = max(self._backlog, 2 * len(pending))

    def _get(self) -> T:
        pending: Any = self._queue  # type: ignore[attr-defined]
        item: T = pending.popleft()
        if not pending:
            self._collapse_at = self._backlog
        return item


def drain(queue: asyncio.Queue[set[T]], first: set[T]) -> set[T]:
    """``first`` with every note already queued behind it (one wake-up for many)."""
    merged = set(first)
    while not queue.empty():
        merged |= queue.get_nowait()
    return merged


class Notices:
    """Fan-out of stored changes to the queues of live views (see module docstring)."""

    def __init__(self) -> None:
        self._runs: set[asyncio.Queue[set[str]]] = set()
        self._logs: dict[str, set[asyncio.Queue[set[str]]]] = {}
        self._workers: set[asyncio.Queue[set[str]]] = set()
        self.workers: OrderedDict[str, WorkerRecord] = OrderedDict()

    # ------------------------------------------------------------ subscriptions

    def subscribe_runs(self) -> asyncio.Queue[set[str]]:
        """A queue of sets of flow run ids whose state or task runs a commit changed."""
        queue: asyncio.Queue[set[str]] = MergedSets()
        self._runs.add(queue)
        return queue

    def subscribe_logs(self, flow_run_id: str) -> asyncio.Queue[set[str]]:
        """A queue noted (with ``{flow_run_id}``) whenever the run's new log records
        have been stored."""
        queue: asyncio.Queue[set[str]] = MergedSets()
        self._logs.setdefault(flow_run_id, set()).add(queue)
        return queue

    def subscribe_workers(self) -> asyncio.Queue[set[str]]:
        """A queue of sets of worker ids that connected or disconnected."""
        queue: asyncio.Queue[set[str]] = MergedSets()
        self._workers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[set[str]]) -> None:
        """Stop noting on a queue any ``subscribe_*`` returned."""
        self._runs.discard(queue)
        self._workers.discard(queue)
        for run_id, queues in list(self._logs.items()):
            queues.discard(queue)
            if not queues:
                del self._logs[run_id]

    # -------------------------------------------------------------- the server

    def runs_changed(self, flow_run_ids: set[str]) -> None:
        """A commit changed these runs (called after it was stored)."""
        if flow_run_ids:
            for queue in self._runs:
                queue.put_nowait(set(flow_run_ids))

    def logs_stored(self, flow_run_ids: set[str]) -> None:
        """A commit stored log records of these runs."""
        for run_id in flow_run_ids:
            for queue in self._logs.get(run_id, ()):
                queue.put_nowait({run_id})

    def worker_connected(self, session: WorkerSession, now: float) -> None:
        """A worker session began."""
        record = WorkerRecord(
            worker_id=session.worker_id,
            name=session.name,
            capabilities=tuple(sorted(session.capabilities)),
            labels=dict(session.labels),
            slots=session.slots,
            connected_at=now,
            last_seen=now,
            session=session,
        )
        self.workers.pop(session.worker_id, None)
        self.workers[session.worker_id] = record
        self._workers_changed(session.worker_id)

    def worker_disconnected(self, session: WorkerSession, now: float) -> None:
        """A worker session ended (the worker left, or missed its heartbeats)."""
        record = self.workers.get(session.worker_id)
        if record is None or record.session is not session:
            return  # a newer session of the same worker replaced it
        record.session = None
        record.last_seen = session.last_seen
        record.disconnected_at = now
        offline = [w for w, r in self.workers.items() if r.session is None]
        for worker_id in offline[: max(0, len(offline) - OFFLINE_KEPT)]:
            del self.workers[worker_id]
        self._workers_changed(session.worker_id)

    def drain_changed(self, name: str) -> None:
        """The workers of ``name`` were drained or resumed."""
        self._workers_changed(name)

    def _workers_changed(self, worker_id: str) -> None:
        for queue in self._workers:
            queue.put_nowait({worker_id})


__all__ = ["OFFLINE_KEPT", "LatestPerKey", "MergedSets", "Notices", "WorkerRecord", "drain"]
