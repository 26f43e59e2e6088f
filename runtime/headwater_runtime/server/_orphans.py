"""Attempts handed to a worker before a restart, waiting for that worker to return.

A restarted server knows, for each attempt in flight whose delivery was stored, the
worker it was handed to: its holder (``WorkerSession.holder``: its ``worker_id``,
bound to its credential when the server checks credentials). Such an attempt is an
orphan until then:

- that worker reconnects naming it in ``Hello.running``: it adopts it (no other
  worker may, whatever it names: a user trial took another worker's attempt over so,
  and its forged result became the run's);
- that worker reconnects without naming it: it does not hold it (the server stopped
  before the assignment left, or the worker dropped it), so it is dispatched again
  at once, and no loss is counted (a user trial saw such attempts wait out the
  heartbeat window, then charged as lost, although no worker had ever run them);
- nobody claims it within the heartbeat window: lost, as a worker that held it is
  gone.

A delivery stored before holders were (schema version 5) has no holder: the first
session that could have been given it adopts it, as then.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from ._assignments import Token
from ._dispatch import WorkerSession


@dataclass
class Orphan:
    """An attempt held at the crash, not reclaimed yet."""

    flow_run_id: str
    #: When it is counted lost (the server's clock).
    deadline: float
    #: Who was handed it (``WorkerSession.holder``); None: not known.
    holder: str | None


class Orphans:
    """The orphans of a restarted server, by token, and their deadlines in order (the
    timer loop asks for the next one on every turn: a scan of 20,000 orphans each
    turn, for the whole heartbeat window, was not free)."""

    def __init__(self) -> None:
        self._held: dict[Token, Orphan] = {}
        #: (deadline, token), the earliest first; entries of orphans gone or postponed
        #: since are skipped when they come up.
        self._deadlines: list[tuple[float, Token]] = []

    def __contains__(self, token: object) -> bool:
        return token in self._held

    def __len__(self) -> int:
        return len(self._held)

    def add(self, token: Token, orphan: Orphan) -> None:
        """An attempt to wait for."""
        self._held[token] = orphan
        heapq.heappush(self._deadlines, (orphan.deadline, token))

    def get(self, token: Token) -> Orphan | None:
        """The orphan of this token (None: none)."""
        return self._held.get(token)

    def for_session(self, token: Token, session: WorkerSession) -> Orphan | None:
        """The orphan ``session`` may adopt for ``token``: one handed to its worker (or
        to an unknown one)."""
        orphan = self._held.get(token)
        if orphan is None or orphan.holder not in (None, session.holder):
            return None
        return orphan

    def pop(self, token: Token) -> Orphan:
        """Stop waiting for this attempt."""
        return self._held.pop(token)

    def not_named(self, holders: set[str], named: Iterable[Token] = ()) -> list[Token]:
        """The orphans handed to one of ``holders`` (workers that are back) other than
        ``named`` (those they reclaimed)."""
        skip = set(named)
        return [
            token
            for token, orphan in self._held.items()
            if orphan.holder in holders and token not in skip
        ]

    def expired(self, now: float, at_most: int) -> list[tuple[Token, Orphan]]:
        """The orphans whose deadline passed, removed: at most ``at_most`` of them (the
        rest stay due)."""
        found: list[tuple[Token, Orphan]] = []
        while len(found) < at_most and self._deadlines and self._deadlines[0][0] <= now:
            deadline, token = heapq.heappop(self._deadlines)
            orphan = self._held.get(token)
            if orphan is not None and orphan.deadline == deadline:
                del self._held[token]
                found.append((token, orphan))
        return found

    def next_deadline(self) -> float | None:
        """When the next orphan is counted lost (None: none is waited for)."""
        heap = self._deadlines
        while heap:
            deadline, token = heap[0]
            orphan = self._held.get(token)
            if orphan is not None and orphan.deadline == deadline:
                return deadline
            heapq.heappop(heap)  # (gone, or postponed: its new entry is in the heap)
        return None

    def postpone(self, seconds: float) -> None:
        """Every deadline ``seconds`` later (the server itself did not run meanwhile)."""
        for orphan in self._held.values():
            orphan.deadline += seconds
        self._deadlines = [(o.deadline, token) for token, o in self._held.items()]
        heapq.heapify(self._deadlines)


__all__ = ["Orphan", "Orphans"]
