"""Runs worked on off the event loop (a part of ``RunManager``, kept apart for size).

A run is set aside while a reader thread cancels it (100,000 queued attempts) or makes
the children of a wide result, and held the same way while it is resumed after a
restart (_recovery.py). Meanwhile its writes go to a sink of its own and the calls
for it wait in order (``later``); ``rejoin`` makes it live again on the loop and
carries them out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from headwater.wire import TaskRunState
from headwater_runtime.engine import CancelRequested, Command, Event, EventIgnored, TaskRunRecord

from ._assignments import ReadyAttempts
from ._gc import Collector
from ._sink import Sink

if TYPE_CHECKING:
    from ._runs import ActiveRun

# How much work goes off the loop below ``Collector.large`` (10,000), from which a run
# counts as large (every such run's cancel and wide results go off the loop):
#: Elements from which a worker's result is applied off the event loop, its run set
#: aside (``WideWork.expand``): each mapped child it makes costs the loop ~25 µs, ~70 µs
#: with a cache lookup (a 5,000-element map stopped every other call for ~0.12 s, ~0.26
#: s for a cached task).
WIDE_RESULT = 128
#: Inputs from which an attempt's Assignment is built off the loop (``WideWork.submit``):
#: ~4 µs an input.
WIDE_INPUTS = 1_000
#: Task runs from which a run is cancelled, its due timers fired (a run timeout cancels
#: every unfinished task run) and its retry made, off the loop (``cancel_aside``,
#: ``fire_timers_aside``, ``retry_aside``): ~10-20 µs a task run on the loop (a 9,000-task
#: run's cancel held it ~0.1 s in one callback, a 20,000-task run's timeout 0.13 s, its
#: retry 0.38 s).
CANCEL_ASIDE = 1_000


class RunsAside:
    """Runs set aside and the calls waiting for them (a mixin of ``RunManager``)."""

    runs: dict[str, ActiveRun]
    collector: Collector
    listeners: list[Callable[[str, TaskRunRecord | None], None]]
    notes_rejoined: Callable[[str, list[object]], None]
    ended_listeners: list[Callable[[Mapping[TaskRunState, int]], None]]
    _sink: Sink
    _aside: dict[str, list[Callable[[], object]]]
    _cancelling: set[str]

    if TYPE_CHECKING:  # RunManager's

        def _process(
            self, active: ActiveRun, commands: list[Command], *, whole_run: bool = False
        ) -> list[EventIgnored]: ...

        def _arm_timer(self, active: ActiveRun) -> None: ...

    def set_aside(
        self, flow_run_id: str, *, expanding: int = 0, working: bool = False
    ) -> ActiveRun | None:
        """Take a live run aside, to be worked on off the loop (``cancel_aside`` or
        ``handle_aside`` on a reader thread, then ``rejoin`` on the loop): cancelling
        100,000 queued attempts, or making 100,000 mapped children of one result,
        takes seconds. Until it rejoins, its writes go to a sink of its own and calls
        for it wait; while it is cancelled, attempt outcomes are refused as stale
        (``handle``). ``expanding``: for a result with that many elements (with
        ``Collector.large`` or more, the run is large from then on, whatever its graph's
        size). ``working``: to fire its due timers or make its retry
        (``fire_timers_aside``, ``retry_aside``; outcomes wait meanwhile, as nothing is
        being cancelled yet). None (do it on the loop) for a small run (one of fewer than
        ``CANCEL_ASIDE`` task runs, unless to expand), one not live, or one aside
        already."""
        active = self.runs.get(flow_run_id)
        if (
            active is None
            or not (active.large or expanding or self.worked_aside(active))
            or active.sink is not None
            or flow_run_id in self._aside
        ):
            return None
        if not active.large and expanding >= self.collector.large:
            # (retired off the loop when it ends, like any large run)
            active.large = True
            self.collector.large_run_started()
        self._aside[flow_run_id] = []
        if not (expanding or working):
            self._cancelling.add(flow_run_id)
        active.sink = Sink()
        return active

    def worked_aside(self, active: ActiveRun) -> bool:
        """Whether a run is cancelled, its timers fired and its retry made off the loop."""
        return len(active.engine.runs) >= min(CANCEL_ASIDE, self.collector.large)

    def handle_aside(self, active: ActiveRun, event: Event, width: int) -> list[EventIgnored]:
        """Apply an event to a run set aside (``set_aside(expanding=width)``): on a
        reader thread. ``width``: about how many task runs it makes (no full collection
        meanwhile, and what it builds frozen, as for a large run's build: _gc.py)."""
        with self.collector.building(width):
            ignored = self._process(active, active.journal.handle(event))
            assert active.sink is not None
            for effect in active.sink.effects:  # laid out here: the loop only hands over
                if type(effect) is ReadyAttempts:
                    effect.lay_out()
        return ignored

    def fire_timers_aside(self, active: ActiveRun) -> None:
        """Fire the due timers of a run set aside (``set_aside(working=True)``): on a
        reader thread. A run that ends here (its timeout: every unfinished task run
        cancelled) leaves the dispatcher whole (``whole_run``)."""
        with self.collector.building(len(active.engine.runs)):
            commands = active.journal.fire_due_timers()
            ended = active.engine.state.is_terminal
            self._process(active, commands, whole_run=ended)

    def cancel_aside(self, active: ActiveRun, reason: str) -> None:
        """Cancel a run set aside (``set_aside``): on a reader thread."""
        cancel = CancelRequested(reason or "cancelled by request")
        # It makes a few rows per task run: no full collection meanwhile (_gc.py).
        with self.collector.building(len(active.engine.runs)):  # mapped ones too
            self._process(active, active.journal.handle(cancel), whole_run=True)

    def rejoin(self, active: ActiveRun) -> None:
        """A run set aside is live again (on the loop, whether or not its cancel
        raised): what it wrote joins the open batch, after everything gathered
        meanwhile (none of it this run's: its calls waited); then the calls for it that
        waited are carried out, in order."""
        sink, active.sink = active.sink, None
        assert sink is not None, "rejoin() takes a run set aside once"
        run_id = active.row.id
        self._cancelling.discard(run_id)
        ended, sink.ended = sink.ended, {}
        batch, effects = sink.take()
        self._sink.batch.absorb(batch)
        self._sink.effects.extend(effects)
        self._tell_ended(ended)
        notes, sink.notes = sink.notes, {}
        if notes:  # the task runs changed meanwhile, as they are now
            self.notes_rejoined(run_id, list(notes.values()))
        for listener in self.listeners:
            listener(run_id, None)
        self._arm_timer(active)
        for call in self._aside.pop(run_id, []):
            call()

    def _tell_ended(self, ended: Mapping[TaskRunState, int]) -> None:
        if ended:
            for listener in self.ended_listeners:
                listener(ended)

    def waiting(self, flow_run_id: str) -> bool:
        """Whether calls for a run wait (``later``): it is being resumed, or worked on
        off the loop."""
        return flow_run_id in self._aside

    def later(self, flow_run_id: str, call: Callable[[], object]) -> None:
        """Carry out ``call`` once a waiting run (``waiting``) is live again, in order."""
        self._aside[flow_run_id].append(call)
