"""Recording and replaying what a flow run's engine was told.

The engine is deterministic: the same graph, parameters, events and clock readings
give the same decisions. A durable host therefore journals every input (start,
events, timer checks) with the clock reading at that moment, and after a restart
replays the journal through a fresh engine to rebuild the run exactly; it then
re-dispatches (or re-attaches to) the attempts that were in flight.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from headwater.wire import GraphSpec

from ._events import Command, Event, RunTask
from ._machine import FlowRunEngine
from ._values import PYTHON_VALUES, ValueOps

START = "start"
EVENT = "event"
TIMERS = "timers"

#: The version of the engine's decisions. Raise it whenever the same journal would make
#: the engine decide differently (a changed rule, a new event): a server records it
#: with every run and refuses to replay a journal written by an engine it cannot
#: reproduce (docs/durability.md).
ENGINE_VERSION = "8"
#: Engine versions whose journals this engine replays to the same decisions. Version 2
#: added the flow run retry (RunRetried, engine/_rerun.py); version 3 the failure of an
#: attempt no worker started (TaskFailed.never_started: SCHEDULED -> FAILED); version 4
#: case gates (TaskSpec.gates: a task inside a case that did not match is SKIPPED
#: whatever its trigger); version 5 a top-level run's own timeout (GraphSpec.timeout);
#: version 6 attempts given back that count no loss (TaskLost.given_back); version 7 an
#: attempt's end by its worker's clock (TaskSucceeded/TaskFailed/TaskSkipped.ended_at);
#: version 8 the retry delay rule (START's delay_rule: a jittered delay past
#: max_retry_delay reflected below it, not capped). Older journals have none of them
#: (their graphs no gates and no run timeout, their START no delay rule: the old one),
#: so they replay the same.
REPLAYS = frozenset({"1", "2", "3", "4", "5", "6", "7", ENGINE_VERSION})


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One input to the engine: ``kind`` START, EVENT (with ``event``) or TIMERS."""

    kind: str
    at: float
    event: Event | None = None
    #: START only: the engine's jitter seed (``FlowRunEngine.seed``; "" in journals
    #: written before it existed, whose retries then replay with the old delays).
    seed: str = ""
    #: START only: the engine's retry delay rule (``FlowRunEngine.delay_rule``; 0 in
    #: journals written before it existed, which replay with that rule).
    delay_rule: int = 0


class _ReplayClock:
    def __init__(self) -> None:
        self.at = 0.0

    def now(self) -> float:
        return self.at


class JournaledEngine:
    """Wraps an engine so that every input is also handed to ``record``.

    Args:
        engine: the engine to drive.
        record: called with each JournalEntry before the engine sees the input, so a
            host can store it in the same transaction as the effects it causes.
    """

    def __init__(self, engine: FlowRunEngine, record: Callable[[JournalEntry], None]) -> None:
        self.engine = engine
        self.record = record

    def start(self) -> list[Command]:
        """Journal START, then start the engine; its commands."""
        engine = self.engine
        self.record(
            JournalEntry(START, engine.clock.now(), seed=engine.seed, delay_rule=engine.delay_rule)
        )
        return self.engine.start()

    def handle(self, event: Event) -> list[Command]:
        """Journal the event, then hand it to the engine; its commands."""
        self.record(JournalEntry(EVENT, self.engine.clock.now(), event))
        return self.engine.handle(event)

    def fire_due_timers(self) -> list[Command]:
        """Fire the engine's due timers, journaling TIMERS only when one is due (so an
        idle check leaves no entry)."""
        due = self.engine.next_timer_at
        now = self.engine.clock.now()
        if due is None or due > now:
            return []
        self.record(JournalEntry(TIMERS, now))
        return self.engine.fire_due_timers()


def replay(
    graph: GraphSpec,
    params: Mapping[str, Any],
    entries: Iterable[JournalEntry],
    *,
    clock: Any,
    values: ValueOps = PYTHON_VALUES,
    in_flight: dict[str, RunTask] | None = None,
    **engine_options: Any,
) -> FlowRunEngine:
    """Rebuild an engine from its journal, then hand it ``clock`` for what follows.

    Commands produced while replaying are dropped: they were carried out before. The
    journal must come from an engine that was started right after it was built.
    ``in_flight``, when given, is filled with the RunTask of every attempt still in
    flight at the journal's end, as the replay made it (task run key -> RunTask): a
    host sending those attempts again uses them as they are, where ``resend`` would
    assemble their inputs a second time (~5 µs each: 80,000 queued children of a wide
    map took 0.5 s).
    """
    entries = list(entries)
    replay_clock = _ReplayClock()
    # Hosts build the engine and start it in one go, so the START entry's time is the
    # time the run's task records were created.
    replay_clock.at = entries[0].at if entries else clock.now()
    engine = FlowRunEngine(graph, params, clock=replay_clock, values=values, **engine_options)
    made: dict[str, RunTask] = {}
    for entry in entries:
        replay_clock.at = entry.at
        if entry.kind == START:
            engine.seed = entry.seed
            engine.delay_rule = entry.delay_rule
            commands = engine.start()
        elif entry.kind == EVENT:
            assert entry.event is not None
            commands = engine.handle(entry.event)
        elif entry.kind == TIMERS:
            commands = engine.fire_due_timers()
        else:
            raise ValueError(f"unknown journal entry kind {entry.kind!r}")
        if in_flight is not None:
            for command in commands:
                if type(command) is RunTask:
                    made[command.run.key] = command
    engine.clock = clock
    if in_flight is not None:
        runs = engine.runs
        for key, command in made.items():
            run = command.run
            if runs.get(key) is run and run.dispatched and run.attempt == command.attempt:
                in_flight[key] = command
    return engine
