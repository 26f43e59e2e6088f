"""Concurrency and rate limits by task tag, across every flow run and worker.

``@task(tags=["db"])`` plus ``headwater limits set db --concurrency 3``: at most 3
attempts of tasks tagged ``db`` run at once on the whole server. The dispatcher asks
``TagLimits`` before it hands an attempt to a worker:

* an attempt holds a **lease** on each of its tags from the moment it is handed to a
  worker (or adopted by one after a restart) until it ends: a result, a failure, a
  skip, a cache hit, a cancel acknowledged, or its worker lost. Leases are counted for
  every tag, limited or not, so a limit set while tasks run sees them at once;
* an attempt whose tag is at its limit **waits** here (parked, per tag, first come
  first served) and shows ``waiting on limit db (3/3)``; when a lease on the tag is
  released, as many waiting attempts as there are free slots go back to the
  dispatcher's queue;
* a **rate** limit (``--rate 10/s``) bounds the attempts of a tag started in any
  window of its period; a waiting attempt is woken when the window frees a start.

Limits are kept in the store (they survive restarts); leases and the waiting queue are
in memory and rebuilt after a restart: attempts a worker held at the crash keep their
lease while the server waits for that worker to reclaim them (docs/operations.md).
This module does no I/O; the clock is injected.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator

from headwater_runtime.store import LimitRow

from ._assignments import PendingAssignment

Token = tuple[str, int]  # (task run id, attempt)


def limit_text(row: LimitRow) -> str:
    """A limit as people write it: ``3 at once, 10 per 1s``."""
    parts = []
    if row.concurrency:
        parts.append(f"{row.concurrency} at once")
    if row.rate:
        parts.append(f"{row.rate} per {row.rate_period:g}s")
    return ", ".join(parts) or "no limit"


class TagLimits:
    """Limits, leases and waiting attempts (see the module docstring).

    Args:
        clock: seconds (for rate windows).
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.limits: dict[str, LimitRow] = {}
        self._holders: dict[str, set[Token]] = {}
        self._leases: dict[Token, tuple[str, ...]] = {}
        self._starts: dict[str, deque[float]] = {}
        self._waiting: dict[str, deque[PendingAssignment]] = {}
        self._waiting_on: dict[Token, str] = {}
        #: A restarted server is resuming its unfinished runs: the attempts workers held
        #: at the crash get their leases back only as their own run is resumed, so the
        #: counts are short until every run is; meanwhile attempts under a concurrency
        #: limit wait (``resumed_all``).
        self.resuming = False

    # ------------------------------------------------------------------ limits

    def set(self, row: LimitRow) -> list[PendingAssignment]:
        """Create or replace a limit; the attempts it no longer holds back."""
        self.limits[row.tag] = row
        if not row.rate:
            self._starts.pop(row.tag, None)
        return self.release_waiting(row.tag)

    def delete(self, tag: str) -> list[PendingAssignment]:
        """Remove a limit; every attempt waiting on it."""
        self.limits.pop(tag, None)
        self._starts.pop(tag, None)
        return self.release_waiting(tag)

    def running(self, tag: str) -> int:
        """Attempts with ``tag`` holding a lease now."""
        return len(self._holders.get(tag, ()))

    def waiting(self, tag: str) -> int:
        """Attempts waiting on ``tag``'s limit now."""
        return len(self._waiting.get(tag, ()))

    # ------------------------------------------------------------------ leases

    def blocking(self, tags: Iterable[str]) -> str | None:
        """The first of ``tags`` whose limit an attempt must wait for (None: it may run)."""
        now = None
        for tag in tags:
            row = self.limits.get(tag)
            if row is None:
                continue
            if row.concurrency and (self.resuming or self.running(tag) >= row.concurrency):
                return tag
            if row.rate:
                now = self.clock() if now is None else now
                if self._window(tag, row, now) >= row.rate:
                    return tag
        return None

    def acquire(self, token: Token, tags: Iterable[str]) -> None:
        """An attempt was handed to (or adopted by) a worker: it holds its tags."""
        if token in self._leases:
            return
        tags = tuple(dict.fromkeys(tags))
        if not tags:
            return
        self._leases[token] = tags
        now = None
        for tag in tags:
            self._holders.setdefault(tag, set()).add(token)
            row = self.limits.get(tag)
            if row is not None and row.rate:
                now = self.clock() if now is None else now
                self._starts.setdefault(tag, deque()).append(now)

    def release(self, token: Token) -> list[PendingAssignment]:
        """An attempt ended (or its worker was lost): its leases end; the attempts that
        may now run (to put back in the dispatcher's queue)."""
        tags = self._leases.pop(token, ())
        freed: list[PendingAssignment] = []
        for tag in tags:
            holders = self._holders.get(tag)
            if holders is not None:
                holders.discard(token)
                if not holders:
                    del self._holders[tag]
            freed.extend(self.release_waiting(tag))
        return freed

    def holds(self, token: Token) -> bool:
        """Whether an attempt holds leases."""
        return token in self._leases

    # ----------------------------------------------------------------- waiting

    def wait(self, pending: PendingAssignment, tag: str) -> None:
        """Hold an attempt until ``tag`` has room."""
        self._waiting.setdefault(tag, deque()).append(pending)
        self._waiting_on[pending.token] = tag

    def take(self, token: Token) -> PendingAssignment | None:
        """Remove a waiting attempt (cancelled, or adopted by a reconnecting worker)."""
        tag = self._waiting_on.pop(token, None)
        if tag is None:
            return None
        queue = self._waiting[tag]
        for pending in queue:
            if pending.token == token:
                queue.remove(pending)
                if not queue:
                    del self._waiting[tag]
                return pending
        return None

    def release_waiting(self, tag: str) -> list[PendingAssignment]:
        """The attempts waiting on ``tag`` that its limit lets run now, oldest first."""
        queue = self._waiting.get(tag)
        if not queue:
            return []
        row = self.limits.get(tag)
        room = len(queue)
        if row is not None and row.concurrency:
            room = min(room, row.concurrency - self.running(tag))
        if row is not None and row.rate:
            room = min(room, row.rate - self._window(tag, row, self.clock()))
        freed = [queue.popleft() for _ in range(max(0, room))]
        if not queue:
            del self._waiting[tag]
        for pending in freed:
            self._waiting_on.pop(pending.token, None)
        return freed

    def resumed_all(self) -> list[PendingAssignment]:
        """Every unfinished run is resumed, the held attempts' leases are back: the
        attempts that may run now (``resuming``)."""
        self.resuming = False
        freed: list[PendingAssignment] = []
        for tag in list(self._waiting):
            freed.extend(self.release_waiting(tag))
        return freed

    def due(self) -> list[PendingAssignment]:
        """Attempts waiting on a rate limit whose window has room now."""
        freed: list[PendingAssignment] = []
        for tag in [t for t in self._waiting if self.limits.get(t, _NONE).rate]:
            freed.extend(self.release_waiting(tag))
        return freed

    @property
    def next_wake_at(self) -> float | None:
        """When the earliest rate window with waiting attempts frees a start."""
        wake: float | None = None
        for tag in self._waiting:
            row = self.limits.get(tag)
            starts = self._starts.get(tag)
            if row is None or not row.rate or not starts:
                continue
            at = starts[0] + row.rate_period
            wake = at if wake is None else min(wake, at)
        return wake

    def reason(self, token: Token) -> str:
        """Why an attempt waits here ("" when it does not): ``waiting on limit db (3/3)``."""
        tag = self._waiting_on.get(token)
        if tag is None:
            return ""
        row = self.limits.get(tag, _NONE)
        if row.concurrency and self.resuming:
            return f"waiting on limit {tag}: the server is resuming its runs after a restart"
        if row.concurrency and self.running(tag) >= row.concurrency:
            return f"waiting on limit {tag} ({self.running(tag)}/{row.concurrency})"
        if row.rate:
            return f"waiting on rate limit {tag} ({row.rate} per {row.rate_period:g}s)"
        return f"waiting on limit {tag}"

    def waiting_by_tag(self) -> dict[str, int]:
        """How many attempts wait on each tag's limit."""
        return {tag: len(queue) for tag, queue in self._waiting.items()}

    def waiting_attempts(self) -> Iterator[PendingAssignment]:
        """Every attempt waiting on a limit."""
        for queue in self._waiting.values():
            yield from queue

    def _window(self, tag: str, row: LimitRow, now: float) -> int:
        """Starts of ``tag`` in the rate window ending now (older ones forgotten)."""
        starts = self._starts.get(tag)
        if not starts:
            return 0
        while starts and starts[0] <= now - row.rate_period:
            starts.popleft()
        return len(starts)


_NONE = LimitRow("")
