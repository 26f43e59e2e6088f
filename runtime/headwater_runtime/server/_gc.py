"""Garbage collection around large graphs and runs, so that building one does not stop
the event loop.

CPython's cycle collector stops every thread while it runs, for a time proportional
to the objects it scans. Building a 100,000-task graph and its run creates about two
million objects, and while they are created the collector runs again and again over
the growing heap (seconds each on a loaded machine): every other client waits, though
the building itself happens on a reader thread. So:

* while a large graph is parsed and validated, or a large run is built and started,
  full collections are held off (``Collector.building``: the oldest generation's
  threshold is raised; a count, since builds may overlap on reader threads), and
  everything is frozen *before* each young collection (``_freeze_young``), which
  then has nothing to traverse. A young collection traversed whatever large
  container the build had just made (a list of 100,000 nodes, a dict growing to
  100,000 task runs): 2.7-3.9 ms alone, 4-7 ms on a loaded server, with the GIL held
  on whichever thread it ran; now ~0.02 ms. A build makes no garbage cycles (a
  100,000-task run's build leaves none for a full collection after ``unfreeze``);
  cycles other threads drop meanwhile are collected once things are unfrozen;
* while a large batch is committed (a 100,000-task run's start or cancel), full
  collections are held off too (``Collector.committing``): encoding it makes
  hundreds of thousands of short-lived objects, which set off full collections of
  the whole heap; nothing is frozen then;
* at the end of such a build, everything alive is frozen (``gc.freeze``): the
  collector no longer scans it, so later collections stay as short as they were
  before the run existed. A graph is freed by reference counting once unused, frozen
  or not (it holds no reference cycles);
* frozen objects are never collected by the cycle collector, though reference
  counting still frees them. When a large run ends, the run manager hands it to the
  collector's own thread (``retire``), which breaks its reference cycles
  (``FlowRunEngine.release``: node <-> task run, upstream <-> downstream, the
  observer closures) and lets go of its task runs one at a time, so its million
  objects are freed by reference counting, with no collection and off the event
  loop: a full collection after a 100,000-task run stopped the loop ~0.4 s. When
  the last large run has ended and nothing is being built, the run manager first lets
  go of the large graphs it cached (``last_large_run_ended``: their tasks freed one at
  a time; the next run reads the graph back from the store), then the collector
  unfreezes (no collection): whatever else was frozen with the builds (little, and
  garbage cycles of that moment) is the collector's again. A cached 100,000-task graph
  given back to the collector made every later full collection cost ~100 ms more.

Small graphs and runs (below ``LARGE``) change nothing: the collector runs as usual.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

#: Tasks from which a graph or a run counts as large.
LARGE = 10_000
#: Seconds between two upkeeps (``Collector.upkeep``) at the most.
UPKEEP_INTERVAL = 0.5
#: Items from which ``release_later`` frees containers on the releasing thread.
SMALL_RELEASE = 1_000
#: An oldest-generation threshold no build reaches (young collections go on).
_NEVER = 1 << 30


class Collector:
    """Pauses and freezes the cycle collector around large builds (module docstring).

    Args:
        large: tasks from which a graph or a run counts as large.
    """

    def __init__(self, large: int = LARGE) -> None:
        self.large = large
        self._lock = threading.Lock()
        self._building = 0
        self._holds = 0  # builds and commits under way that hold off full collections
        self._thresholds = gc.get_threshold()
        self.live_large_runs = 0
        self._young_seen = -1  # young collections counted at the last upkeep
        self._upkept_at = -UPKEEP_INTERVAL  # time.monotonic() of the last upkeep
        self._upkeeps = 0  # young collections upkeep made
        self.unfrozen = 0  # times everything frozen was given back to the collector
        self.froze = False
        #: Called on the releasing thread when the last large run has ended, before
        #: everything frozen goes back to the collector: what only large runs needed
        #: (a cached 100,000-task graph) is let go of there, so that the collector does
        #: not scan it at every full collection from then on (~100 ms each).
        self.last_large_run_ended: list[Callable[[], None]] = []

    def _hold(self) -> None:  # with the lock held
        if self._holds == 0:
            self._thresholds = gc.get_threshold()
            young, middle, _ = self._thresholds
            gc.set_threshold(young, middle, _NEVER)
        self._holds += 1

    def _unhold(self) -> None:  # with the lock held
        self._holds -= 1
        if self._holds == 0:
            gc.set_threshold(*self._thresholds)

    @contextlib.contextmanager
    def building(self, tasks: int) -> Iterator[None]:
        """Around building a graph or run of ``tasks`` tasks: no full collection
        meanwhile, and what was built frozen afterwards, when it is large."""
        if tasks < self.large:
            yield
            return
        with self._lock:
            self._hold()
            if self._building == 0:
                gc.callbacks.append(_freeze_young)
            self._building += 1
        try:
            yield
        finally:
            with self._lock:
                self._building -= 1
                if self._building == 0:
                    with contextlib.suppress(ValueError):
                        gc.callbacks.remove(_freeze_young)
                    gc.freeze()
                    self.froze = True
                self._unhold()

    @contextlib.contextmanager
    def committing(self, rows: int) -> Iterator[None]:
        """Around committing a batch of ``rows`` rows: no full collection meanwhile,
        when it is large (a 100,000-task run's start or cancel). Its encoding makes
        hundreds of thousands of short-lived objects, which set off full collections
        of the whole heap (7-16 ms each, seen on PostgreSQL). Nothing is frozen: the
        batch is let go of right after."""
        if rows < self.large:
            yield
            return
        with self._lock:
            self._hold()
        try:
            yield
        finally:
            with self._lock:
                self._unhold()

    def upkeep(self) -> None:
        """Collect the young generations when CPython has not since the last upkeep, at
        most every ``UPKEEP_INTERVAL`` seconds (the timer loop calls this at each of
        its wake-ups). CPython starts a young
        collection when allocations outnumber deallocations by its threshold; while
        the releasing thread frees old objects (a committed batch's rows, a finished
        run's task runs), deallocations keep that count down and no young collection
        happens at all. Over a 300,000-task run, the young generations then grew for
        minutes with gRPC's per-call garbage cycles, and the collection that finally
        came stopped the event loop ~0.5 s (1.8 s over a million). Every tenth one
        takes the middle generation too, as CPython would; never the oldest (a full
        collection walks the whole heap)."""
        now = time.monotonic()
        if now - self._upkept_at < UPKEEP_INTERVAL:  # the timer loop runs at every wake-up
            return
        self._upkept_at = now
        seen = sum(s["collections"] for s in gc.get_stats()[:2])
        if seen == self._young_seen:
            self._upkeeps += 1
            gc.collect(1 if self._upkeeps % 10 == 0 else 0)
            seen = sum(s["collections"] for s in gc.get_stats()[:2])
        self._young_seen = seen

    def large_run_started(self) -> None:
        """A large run built under ``building`` is live."""
        with self._lock:
            self.live_large_runs += 1

    def retire(self, release: Callable[[], None]) -> None:
        """A large run ended: ``release`` (which breaks its cycles and lets go of its
        task runs one at a time) runs on the releasing thread, then
        ``large_run_ended``; the event loop only hands it over."""
        _releaser().submit(self._retire, release)

    def _retire(self, release: Callable[[], None]) -> None:
        try:
            release()
        finally:
            self.large_run_ended()

    def large_run_ended(self) -> None:
        """A large run ended, its reference cycles broken (see the module docstring):
        once no large run is left and nothing is being built, everything frozen is the
        collector's again."""
        with self._lock:
            self.live_large_runs = max(0, self.live_large_runs - 1)
            if self._building or self.live_large_runs:
                return
        for hook in self.last_large_run_ended:
            hook()
        with self._lock:  # a build or run that started meanwhile keeps it frozen
            if self._building or self.live_large_runs or not self.froze:
                return
            gc.unfreeze()
            self.froze = False
            self.unfrozen += 1

    def close(self) -> None:
        """The server stops: give everything frozen back to the collector (a process
        that goes on, such as a test run, must not keep it forever)."""
        with self._lock:
            if self.froze:
                gc.unfreeze()
                self.froze = False


_RELEASER: list[ThreadPoolExecutor] = []
_RELEASER_LOCK = threading.Lock()


def _freeze_young(phase: str, info: dict[str, Any]) -> None:
    """While a large build is under way: freeze everything before each young
    collection, which then has nothing to traverse (see the module docstring)."""
    if phase == "start" and info.get("generation", 2) < 2:
        gc.freeze()


def _releaser() -> ThreadPoolExecutor:
    """The process's one releasing thread (started when first needed)."""
    with _RELEASER_LOCK:
        if not _RELEASER:
            _RELEASER.append(ThreadPoolExecutor(1, thread_name_prefix="headwater-release"))
        return _RELEASER[0]


def release_later(containers: list[Any]) -> None:
    """Let go of large containers (dicts, deques, lists; None is skipped) on the
    releasing thread, one item at a time: freeing 100,000 queued attempts at once holds
    the GIL, and so the event loop, for tens of milliseconds; item by item, the loop
    gets it back every switch interval. The caller must hold no other reference.
    Containers of at most ``SMALL_RELEASE`` items in all are let go of here: handing
    them over cost more (a thread woken per commit) than freeing them."""
    if sum(len(c) for c in containers if c is not None) > SMALL_RELEASE:
        _releaser().submit(_empty, containers)


def release_now(containers: list[Any]) -> None:
    """``release_later`` in this thread (the releasing thread's own work)."""
    _empty(containers)


def _empty(containers: list[Any]) -> None:
    while containers:
        container = containers.pop()
        if isinstance(container, dict):
            while container:
                container.popitem()
        elif container is not None:
            while container:
                container.pop()
