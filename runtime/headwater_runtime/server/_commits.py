"""The commit pipeline: the run manager's batches go to the store one at a time, on
the writer thread, and nothing they cover leaves the server before they are stored.

What a commit covers (``Release``): the effects of the engines' commands (assignments
to send, attempts to cancel), the Acks of worker reports, watch notes and waiters of
``durable()``. While a commit is on the writer thread the loop keeps working; what
happens meanwhile waits for the next commit.

A commit that fails (disk full, I/O error) loses nothing: its batch and release are
put back in front of what happened since, and the commit is tried again with backoff
(50 ms doubling to 2 s) until the store takes it. Meanwhile ``on_failing`` tells the
server to hand out no more assignments: their deliveries could not be recorded, and
after a crash every attempt sent without a recorded delivery may run twice. Callers
of ``durable()`` are told at once, with the store's own words, so a client gets
RESOURCE_EXHAUSTED naming the cause rather than a hang. Sequence numbers are assigned
once, in order, so a retried batch never collides with what was stored.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from headwater.v1 import run_pb2, worker_pb2
from headwater_runtime.store import Fenced, Store, WriteBatch

from ._gc import Collector, release_later
from ._io import StoreIO
from ._runs import RunManager

log = logging.getLogger("headwater.server")

#: When busy, how long reports gather before one commit covers them all (seconds).
BATCH_WINDOW = 0.002
#: Backoff of a failing commit: FIRST doubling up to MAX (seconds).
RETRY_FIRST, RETRY_MAX = 0.05, 2.0

Send = Callable[[worker_pb2.ConnectResponse], None]


@dataclass
class Release:
    """What one commit covers, released only once it is stored."""

    effects: list[Callable[[], None]] = field(default_factory=list)
    acks: list[tuple[Send, worker_pb2.ConnectResponse]] = field(default_factory=list)
    notes: list[tuple[str, run_pb2.TaskRun | None]] = field(default_factory=list)
    changed: set[str] = field(default_factory=set)
    flow_changed: set[str] = field(default_factory=set)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    #: Flow runs that stored new log records (their log followers are told).
    logged: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(
            self.effects
            or self.acks
            or self.notes
            or self.changed
            or self.flow_changed
            or self.waiters
            or self.logged
        )

    def absorb(self, newer: Release) -> None:
        """Append what a later release holds (this one goes out first)."""
        self.effects.extend(newer.effects)
        self.acks.extend(newer.acks)
        self.notes.extend(newer.notes)
        self.changed |= newer.changed
        self.flow_changed |= newer.flow_changed
        self.waiters.extend(newer.waiters)
        self.logged |= newer.logged


class Committer:
    """Commits the run manager's batches one at a time, on the store's writer thread.

    Args:
        store: the store.
        io: where store calls run.
        runs: whose batches to commit.
        deliver: carries out a release once its commit is stored.
        on_failing: called with True when a commit fails after one succeeded (or none
            was tried), with False when one succeeds again.
    """

    def __init__(
        self,
        store: Store,
        io: StoreIO,
        runs: RunManager,
        deliver: Callable[[Release], None],
        on_failing: Callable[[bool], None] | None = None,
    ) -> None:
        self.store = store
        self.io = io
        self.runs = runs
        self.deliver = deliver
        self.on_failing = on_failing
        self.pending = Release()
        self.error: BaseException | None = None  # the last commit's, until one succeeds
        self.failures = 0
        self.commits = 0
        #: Done when the commit under way is stored or has failed (None: none is).
        self._task: asyncio.Future[None] | None = None
        self._handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._last = 0.0
        self._retry_at = 0.0
        self._closed = False
        #: Called with the seconds each stored commit took (metrics).
        self.on_commit: Callable[[float], None] | None = None

    @property
    def busy(self) -> bool:
        """A commit is on the writer thread."""
        return self._task is not None

    def _has_work(self) -> bool:
        return self.runs.has_writes or bool(self.pending)

    def request(self) -> None:
        """Commit soon: at the end of this loop tick when idle, after a short
        gathering window when a commit just finished (many worker reports per
        transaction when busy), or when a failing commit's backoff ends."""
        if self._handle is not None or self._task is not None or self._closed:
            return
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        delay = max(self._retry_at - now, BATCH_WINDOW if now - self._last < BATCH_WINDOW else 0)
        if delay > 0:
            self._handle = loop.call_later(delay, self._start)
        else:
            self._handle = loop.call_soon(self._start)

    def _start(self) -> None:
        self._handle = None
        if self._task is not None or not self._has_work():
            return
        batch, effects = self.runs.detach()
        release, self.pending = self.pending, Release()
        release.effects = effects + release.effects
        if not batch:  # nothing to store: what it covers can go at once
            self._released(release)
            return
        # Queued for the writer thread now, its outcome taken by a done-callback: a
        # task in between cost the assignments a turn of the loop each way.
        began = time.monotonic()
        loop = asyncio.get_running_loop()
        self._task = loop.create_future()
        try:
            stored = self.io.writing(_commit, self.store, batch, self.runs.collector)
        except Exception as exc:  # (the writer thread has stopped: the server stops)
            stored = loop.create_future()
            stored.set_exception(exc)
        stored.add_done_callback(functools.partial(self._committed, batch, release, began))

    def _committed(
        self, batch: Any, release: Release, began: float, stored: asyncio.Future[None]
    ) -> None:
        try:
            if stored.cancelled():  # (the loop is closing)
                self.runs.reattach(batch, release.effects)
                return
            exc = stored.exception()
            if isinstance(exc, Exception):
                self._failed(exc, batch, release)
            elif exc is not None:
                raise exc
            else:
                self._stored(began, release)
        finally:
            done, self._task = self._task, None
            if done is not None and not done.done():
                done.set_result(None)
            self._last = time.monotonic()
            if self._has_work():
                self.request()

    def _stored(self, began: float, release: Release) -> None:
        recovered = self.failures > 0
        if recovered:
            log.warning(
                "the server's state is stored again (after %d failed attempts)",
                self.failures,
            )
        self.failures = 0
        self.error = None
        self._retry_at = 0.0
        self.commits += 1
        if recovered and self.on_failing is not None:
            self.on_failing(False)  # before the release: its assignments may go out
        if self.on_commit is not None:
            self.on_commit(time.monotonic() - began)
        self._released(release)

    def _failed(self, exc: Exception, batch: Any, release: Release) -> None:
        if isinstance(self.error, Fenced):
            # Fenced stays the reason: the server is stepping down, and a retry meeting
            # its store's threads gone ("cannot schedule new futures after shutdown")
            # was logged as a failure to store the server's state (a trial).
            exc = self.error
        self.failures += 1
        self.error = exc
        if self.failures == 1 and self.on_failing is not None:
            self.on_failing(True)
        delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (self.failures - 1))
        self._retry_at = time.monotonic() + delay
        if isinstance(exc, Fenced):  # no retry can help: this server steps down
            if self.failures == 1:
                log.warning("another server leads now: %s", exc)
        else:
            level = logging.WARNING if self.failures > 1 else logging.ERROR
            log.log(
                level,
                "could not store the server's state (%s); keeping it in memory and trying "
                "again in %.2fs (attempt %d)",
                exc,
                delay,
                self.failures,
            )
        waiters, release.waiters = release.waiters, []
        self.runs.reattach(batch, release.effects)
        release.effects = []
        release.absorb(self.pending)
        self.pending = release
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(exc)

    def _released(self, release: Release) -> None:
        self.deliver(release)
        for waiter in release.waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def durable(self) -> None:
        """Wait until everything done so far is stored; raise the store's error at once
        if the commit that covers it fails (the writes stay queued and are retried)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.waiters.append(waiter)
        self.request()
        await waiter

    def close(self) -> None:
        """Commit nothing more: the server has stopped (after ``drain``). Without this,
        a retry timer of a failing commit outlives the server, which matters when the
        process goes on (a leader that stepped down starts again as a standby)."""
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    async def drain(self, attempts: int = 3) -> bool:
        """Commit what is left (on shutdown); gives up after ``attempts`` failures,
        saying what is lost (nothing a worker or client was told of). Whether it all
        was stored (or left to the new leader, when another server leads)."""
        for _ in range(attempts):
            if isinstance(self.error, Fenced):
                break  # another server leads: it resumes the runs from the store
            if self._handle is not None:
                self._handle.cancel()
                self._handle = None
            if self._task is not None:
                await asyncio.shield(self._task)
            if not self._has_work():
                return True
            self._retry_at = 0.0
            self._start()
            if self._task is not None:
                await asyncio.shield(self._task)
            if not self._has_work():
                return True
        if isinstance(self.error, Fenced):
            log.warning(
                "stepping down with changes the new leader will not see: it resumes the "
                "runs from their last stored state (nothing a worker or client was told of "
                "is lost)"
            )
            return True
        log.error(
            "stopping with state that could not be stored (%s): the runs resume from their "
            "last stored state",
            self.error,
        )
        return False


def _commit(store: Store, batch: WriteBatch, collector: Collector) -> None:
    """Commit a batch, then let go of its rows (a large batch's on the releasing
    thread, ``release_later``; a failed one is kept: it is put back and retried).
    While a large batch is committed, no full collection runs
    (``Collector.committing``)."""
    rows = len(batch.events) + len(batch.task_runs) + len(batch.states) + len(batch.logs)
    with collector.committing(rows):
        store.commit(batch)
    release_later(batch.take_rows())
