"""Wide maps off the event loop: a result with many elements, and a reduce over them.

A map over a result of 100,000 elements makes 100,000 child task runs, and the reduce
after it takes 100,000 inputs. Done on the event loop, the first stopped every other
call for ~2.4 s and the second for ~0.4 s (ten times that at a million); a map of a
cached task over 5,000 elements (a cache lookup each) stopped them for ~0.35 s. So:

* a worker's result with at least ``WIDE_RESULT`` elements is applied on a reader
  thread, its run set aside meanwhile (``RunManager.set_aside``: its writes go to a
  sink of its own, calls for it wait); the run rejoins on the loop, and the worker's
  Ack goes out with the commit that stores what it made;
* an attempt with at least ``WIDE_INPUTS`` inputs has its Assignment built (and its Dask-held
  inputs looked for) on a reader thread, then is submitted to the dispatcher, unless
  it was cancelled or lost meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import TypeVar

from grpc import StatusCode

from headwater.v1 import worker_pb2
from headwater_runtime.engine import CacheChecked, CheckCache, Event, EventIgnored

from ._assignments import PendingAssignment
from ._dispatch import Dispatcher, WorkerSession
from ._exports import dask_values
from ._io import StoreIO
from ._run_cache import Split, hit_width
from ._runs import ActiveRun, RunManager

log = logging.getLogger("headwater.server")

T = TypeVar("T")

#: Why the server refuses a report: its status and message.
Refusal = tuple[StatusCode, str]
#: Acknowledges a worker's report with the next commit: (session, token, ignored,
#: refused), as ``ServerCore._ack``.
Ack = Callable[[WorkerSession, worker_pb2.FencingToken, list[EventIgnored], Refusal | None], None]
#: The event a worker's result makes, and the refusal when the server cannot take it
#: (a limit, a value that contradicts itself): ``ServerCore._result_event``.
Decide = Callable[[], tuple[Event, Refusal | None]]


def prebuild(pending: PendingAssignment) -> None:
    """Build an attempt's Assignment (which sizes it) and find the inputs that hold
    Dask refs now, on a reader thread: for a reduce over a wide map each walks every
    input, ~0.4 s on the event loop at 100,000."""
    pending.dask_values = dask_values(pending.assignment)


class WideWork:
    """Applies wide results and builds wide assignments on reader threads.

    Args:
        runs: the live runs.
        dispatcher: frees slots, takes the attempts built here.
        io: the store's reader threads.
        ack: acknowledges a worker's report after the next commit.
        touch: wakes the commit pipeline.
    """

    def __init__(
        self,
        runs: RunManager,
        dispatcher: Dispatcher,
        io: StoreIO,
        ack: Ack,
        touch: Callable[[], None],
    ) -> None:
        self.runs = runs
        self.dispatcher = dispatcher
        self.io = io
        self.ack = ack
        self.touch = touch

    def expand(
        self,
        session: WorkerSession,
        token: worker_pb2.FencingToken,
        flow_run_id: str,
        decide: Decide,
        width: int,
    ) -> bool:
        """Check and apply a result of ``width`` elements off the loop (``decide``
        checks it against the limits, walking every element, and makes its event);
        False when its run cannot be set aside (do it all on the loop). The worker's
        slot is freed now."""
        active = self.runs.set_aside(flow_run_id, expanding=width)
        if active is None:
            return False
        self.dispatcher.finished((token.task_run_id, token.attempt))

        def apply() -> tuple[list[EventIgnored], Refusal | None]:  # on a reader thread
            event, refused = decide()
            return self.runs.handle_aside(active, event, width), refused

        def acknowledge(result: tuple[list[EventIgnored], Refusal | None] | None) -> None:
            # (None: a bug, the result was not applied. Unacknowledged, the worker sends
            # it again when it reconnects.)
            if result is not None:
                self.ack(session, token, *result)

        self.aside(active, f"applying the result of {token.task_run_id}", apply, acknowledge)
        self.touch()
        return True

    def fire_timers(self, flow_run_id: str) -> bool:
        """Fire a run's due timers off the loop (``RunManager.fire_timers_aside``: a
        run timeout cancels every unfinished task run); False when it cannot be set
        aside (do it on the loop). Its timers are armed again when it rejoins."""
        active = self.runs.set_aside(flow_run_id, working=True)
        if active is None:
            return False
        work = functools.partial(self.runs.fire_timers_aside, active)
        self.aside(active, f"firing the timers of {flow_run_id}", work)
        return True

    def aside(
        self,
        active: ActiveRun,
        what: str,
        work: Callable[[], T],
        then: Callable[[T | None], None] | None = None,
    ) -> asyncio.Future[T]:
        """``work()`` on a reader thread for a run set aside (``RunManager.set_aside``),
        then, on the loop, even if the server stops meanwhile: the run rejoins, a
        failure (a bug) is logged as ``what`` failed, ``then`` gets the result (None when
        it failed), and the commit pipeline is woken. Returns the work's future."""
        job = asyncio.ensure_future(self.io.read(work))

        def rejoin(done: asyncio.Future[T]) -> None:
            self.runs.rejoin(active)
            failed = done.cancelled() or done.exception() is not None
            if failed:
                log.error(
                    "%s failed", what, exc_info=None if done.cancelled() else done.exception()
                )
            if then is not None:
                then(None if failed else done.result())
            self.touch()

        job.add_done_callback(rejoin)
        return job

    def submit(self, pending: PendingAssignment) -> None:
        """Build an attempt's Assignment off the loop, then submit it if it is still
        due (``RunManager.submit_wide``)."""
        job = asyncio.ensure_future(self.io.read(prebuild, pending))

        def submit(done: asyncio.Future[None]) -> None:
            if not done.cancelled() and done.exception() is not None:
                log.error("building the assignment of %s failed", pending.token[0],
                          exc_info=done.exception())  # fmt: skip
            if self.runs.due(pending):  # built again on the loop if that failed
                self.dispatcher.submit(pending)
            self.touch()

        job.add_done_callback(submit)

    def check_cache(self, flow_run_id: str, command: CheckCache, split: Split) -> None:
        """Look a task's cache up on a reader thread (``RunManager.check_cache_later``),
        then apply what it found on the loop, or, for a hit a map makes at least
        ``WIDE_RESULT`` children of, on a reader thread with the run set aside (as a
        worker's wide result). A task run that moved on meanwhile (cancelled, its run
        retried) is left alone; one whose run is worked on off the loop meanwhile
        waits until it rejoins. A lookup the store cannot answer is a miss: the task
        runs. One the server stopped before applying is made again when the run is
        resumed (``FlowRunEngine.pending_cache_checks``)."""
        run = command.run
        seen = len(run.history)  # (a change to the task run adds to it)
        job = asyncio.ensure_future(self.io.read(self.runs.check_cache, command, split))

        def apply(done: asyncio.Future[CacheChecked]) -> None:
            if done.cancelled():
                return  # the server stops: made again when the run is resumed
            if self.runs.waiting(flow_run_id):  # worked on off the loop: once it rejoins
                self.runs.later(flow_run_id, functools.partial(apply, done))
                return
            active = self.runs.runs.get(flow_run_id)
            if active is None or active.engine.runs.get(run.key) is not run:
                return  # the run ended, or the task run was replaced (a flow run retry)
            if len(run.history) != seen:
                return
            error = done.exception()
            if error is not None:
                log.warning(
                    "could not look up the cache of task run %s of flow run %s (%s): it "
                    "runs as for a miss",
                    run.key,
                    flow_run_id,
                    error,
                )
                checked = CacheChecked(run.key, "", None)
            else:
                checked = done.result()
            width = hit_width(checked, split)
            if self.runs.wide_result(width):
                aside = self.runs.set_aside(flow_run_id, expanding=width)
                if aside is not None:
                    work = functools.partial(self.runs.handle_aside, aside, checked, width)
                    self.aside(aside, f"applying the cache hit of {run.key}", work)
                    return
            self.runs.handle(flow_run_id, checked)
            self.touch()

        job.add_done_callback(apply)
