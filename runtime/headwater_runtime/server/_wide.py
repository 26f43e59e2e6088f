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
import logging
from collections.abc import Callable

from grpc import StatusCode

from headwater.v1 import worker_pb2
from headwater_runtime.engine import Event, EventIgnored

from ._assignments import PendingAssignment
from ._dispatch import Dispatcher, WorkerSession
from ._exports import dask_values
from ._io import StoreIO
from ._runs import RunManager

log = logging.getLogger("headwater.server")

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

        job = asyncio.ensure_future(self.io.read(apply))

        def rejoin(done: asyncio.Future[tuple[list[EventIgnored], Refusal | None]]) -> None:
            self.runs.rejoin(active)
            if done.cancelled() or done.exception() is not None:
                # A bug: the result was not applied. Unacknowledged, the worker sends it
                # again when it reconnects.
                log.error(
                    "applying the result of %s failed", token.task_run_id, exc_info=done.exception()
                )
            else:
                self.ack(session, token, *done.result())
            self.touch()

        job.add_done_callback(rejoin)  # even if the server stops meanwhile
        self.touch()
        return True

    def fire_timers(self, flow_run_id: str) -> bool:
        """Fire a run's due timers off the loop (``RunManager.fire_timers_aside``: a
        run timeout cancels every unfinished task run); False when it cannot be set
        aside (do it on the loop)."""
        active = self.runs.set_aside(flow_run_id, working=True)
        if active is None:
            return False
        job = asyncio.ensure_future(self.io.read(self.runs.fire_timers_aside, active))

        def rejoin(done: asyncio.Future[None]) -> None:
            self.runs.rejoin(active)  # (its timers are armed again)
            if not done.cancelled() and done.exception() is not None:
                log.error("firing the timers of %s failed", flow_run_id,
                          exc_info=done.exception())  # fmt: skip
            self.touch()

        job.add_done_callback(rejoin)  # even if the server stops meanwhile
        return True

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
