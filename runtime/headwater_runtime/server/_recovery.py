"""Resuming unfinished runs after a restart (a part of ``RunManager``, kept apart for
size).

``recover()`` does it all at once (tests, tools). The server listens first and then
resumes run by run: ``unfinished()`` lists the runs and holds the calls for each (as
for a run set aside), ``replay()`` rebuilds one from its journal on a reader thread and
sorts out its attempts in flight, ``resume()`` makes it live on the event loop
(docs/durability.md, Restarts).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from headwater.wire import split_task_run_id, task_run_id
from headwater_runtime.engine import REPLAYS, Command, EventIgnored
from headwater_runtime.store import Delivery, FlowRunRow, Store
from headwater_runtime.tracing import extract

from ._assignments import ReadyAttempts
from ._children import ChildRuns
from ._gc import Collector
from ._sink import Sink

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from ._runs import ActiveRun


@dataclass
class Recovery:
    """What ``recover()`` found in flight.

    Attributes:
        held: attempts a worker had been handed (flow run id, task run id, attempt):
            they wait for that worker to reconnect and claim them, and count as lost
            only if nobody does within the heartbeat window.
        resent: attempts that never reached a worker, dispatched again at once
            (flow run id, task run id, attempt); they are not a loss.
        refused: runs not resumed, with why (a journal this server cannot replay).
        resumed: how many runs were resumed.
        seconds: how long replaying them took.
    """

    held: list[tuple[str, str, int]] = field(default_factory=list)
    resent: list[tuple[str, str, int]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    resumed: int = 0
    seconds: float = 0.0


@dataclass
class Resumed:
    """A stored run replayed by ``RunManager.replay``, not live yet: the attempts a
    worker held (waiting for it) and those sent again, as in ``Recovery``."""

    active: ActiveRun
    held: list[tuple[str, str, int]] = field(default_factory=list)
    resent: list[tuple[str, str, int]] = field(default_factory=list)
    #: Who was handed each held attempt, by (task run id, attempt).
    deliveries: dict[tuple[str, int], Delivery] = field(default_factory=dict)


class RunRecovery:
    """Resuming unfinished runs (a mixin of ``RunManager``)."""

    store: Store
    runs: dict[str, ActiveRun]
    collector: Collector
    children: ChildRuns
    tracer: Tracer | None
    _aside: dict[str, list[Callable[[], object]]]
    _workers: dict[tuple[str, str], tuple[str, str | None]]
    #: What each run to resume stored (``Store.run_sizes``), read once by ``unfinished``.
    _stored: dict[str, int]

    if TYPE_CHECKING:  # RunManager's

        def rebuild(self, row: FlowRunRow, stored_size: int | None = None) -> ActiveRun:
            """(RunManager.rebuild.)"""
            ...

        def _run_attempt(self, active: ActiveRun) -> None: ...

        def _process(
            self, active: ActiveRun, commands: list[Command], *, whole_run: bool = False
        ) -> list[EventIgnored]: ...

        def rejoin(self, active: ActiveRun) -> None:
            """(RunsAside.rejoin.)"""
            ...

    def recover(self) -> Recovery:
        """Rebuild every unfinished run from its journal, here and now (see
        ``Recovery``). The server does the same run by run after it listens
        (``unfinished``, ``replay`` on a reader thread, ``resume``)."""
        began = time.monotonic()
        rows, refused = self.unfinished()
        found = Recovery(refused=refused)
        for row in rows:
            resumed = self.replay(row)
            found.held.extend(resumed.held)
            found.resent.extend(resumed.resent)
            self.resume(resumed)
        found.resumed = len(rows)
        found.seconds = time.monotonic() - began
        return found

    def unfinished(self) -> tuple[list[FlowRunRow], list[tuple[str, str]]]:
        """The stored runs to resume, smallest first, and those this server cannot
        (with why: a journal of an engine it cannot replay). Each run to resume waits
        for its ``resume`` as a run set aside does: the calls for it are held, in
        order. Smallest first: a run with a 100,000-element map in flight takes
        seconds to replay, and the queued work of the other runs does not wait for it."""
        rows: list[FlowRunRow] = []
        refused: list[tuple[str, str]] = []
        for row in self.store.unfinished_flow_runs():
            if row.engine_version not in REPLAYS:
                refused.append(
                    (
                        row.id,
                        f"flow run {row.id} has a journal of engine version "
                        f"{row.engine_version or '(none)'}, and this server replays only "
                        f"{', '.join(sorted(REPLAYS))}: a newer Headwater worked on it "
                        "last (a run started before an upgrade takes the new version at "
                        "its next outcome); finish it with a server of that version, "
                        "or cancel it",
                    )
                )
                continue
            self._aside[row.id] = []
            self.children.link(row)
            rows.append(row)
        self._stored = self.store.run_sizes([row.id for row in rows]) if rows else {}
        rows.sort(key=lambda row: self._stored.get(row.id, 0))  # stable: oldest first if alike
        return rows, refused

    def replaying(self, flow_run_id: str) -> bool:
        """Whether a stored unfinished run waits for its ``resume``."""
        return flow_run_id in self._aside and flow_run_id not in self.runs

    def replay(self, row: FlowRunRow) -> Resumed:
        """An unfinished run (``unfinished``) rebuilt from its journal, with its
        attempts in flight sorted out: those a worker had been handed wait for it, the
        others are sent again, unchanged. Its writes and effects go to a sink of its
        own, for ``resume``. May run on a reader thread: a run with a 100,000-element
        map in flight takes seconds."""
        active = self.rebuild(row, self._stored.pop(row.id, None))
        active.sink = Sink()
        active.large = len(active.engine.runs) >= self.collector.large  # mapped ones too
        if self.tracer is not None:
            from headwater_runtime.tracing import RunTracer  # OpenTelemetry: only when on

            # A child of the flow span of the process that started the run.
            parent = extract(row.trace_context)
            active.trace = RunTracer(
                self.tracer,
                row.flow_name,
                row.id,
                parent,
                resumed=True,
                attempt=active.engine.run_attempt,
            )
        resumed = Resumed(active)
        with self.collector.building(len(active.engine.runs)):  # 100,000 resends too
            self._sort_out(row, active, resumed)
            for effect in active.sink.effects:  # laid out here: the loop only hands over
                if type(effect) is ReadyAttempts:
                    effect.lay_out()
        return resumed

    def _sort_out(self, row: FlowRunRow, active: ActiveRun, resumed: Resumed) -> None:
        """A replayed run's attempts in flight: held for the worker it was delivered
        to, or sent again (``replay``)."""
        if active.seq == 0:
            # Created, then the server died before the tick that journals its start
            # was committed: start it now, or it would never run.
            self._run_attempt(active)
            self._process(active, active.journal.start())
        else:
            delivered = self.store.delivered(row.id)
            resent: list[Command] = []
            # As the replay made them: their inputs are not assembled a second time.
            replayed, active.replayed = active.replayed, {}
            for run in active.engine.runs.values():
                if not run.dispatched:
                    continue
                token = (row.id, task_run_id(row.id, run.key), run.attempt)
                if active.trace is not None:
                    active.trace.dispatched(run, run.attempt, resumed=True)
                delivery = delivered.get(run.key)
                if delivery is not None and delivery.attempt == run.attempt:
                    active.delivered[run.key] = run.attempt
                    resumed.held.append(token)
                    resumed.deliveries[token[1:]] = delivery
                else:
                    command = replayed.get(run.key)
                    if command is None or command.run is not run or command.attempt != run.attempt:
                        command = active.engine.resend(run.key)
                    resent.append(command)
                    resumed.resent.append(token)
            # Handed to the dispatcher together (one effect per task type), as a new
            # run's attempts are: 78,000 queued attempts of a wide map took ~1.9 s one
            # by one.
            self._process(active, resent)
            # Cache lookups made off the loop whose outcome was not stored (the server
            # stopped first): made again, here (the run is not on the loop yet).
            self._process(active, list[Command](active.engine.pending_cache_checks()))

    def resume(self, resumed: Resumed) -> None:
        """A replayed run (``replay``) is live: on the event loop. Its writes join the
        open batch, then the calls for it that waited are carried out (``rejoin``)."""
        active = resumed.active
        for (tid, _), delivery in resumed.deliveries.items():  # (shown, and kept if stored)
            self._workers[(active.row.id, split_task_run_id(tid)[1])] = (
                delivery.worker,
                delivery.holder,
            )
        self.runs[active.row.id] = active
        if active.large:
            self.collector.large_run_started()
        self.rejoin(active)

    def abandon(self, flow_run_id: str) -> None:
        """A run that could not be replayed is not resumed; the calls that waited for
        it are dropped (it stays unfinished in the store)."""
        self._aside.pop(flow_run_id, None)
        self._stored.pop(flow_run_id, None)
