"""Replaying an engine's journal rebuilds the run exactly (what a restarted server does)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from headwater.wire import Const, FailureInfo, FromTask, GraphSpec, RetrySpec, TaskSpec
from headwater_runtime.engine import (
    DELAY_RULE,
    CancelTask,
    FlowRunEngine,
    JournaledEngine,
    JournalEntry,
    RunTask,
    TaskFailed,
    TaskStarted,
    TaskSucceeded,
    replay,
)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def now(self) -> float:
        return self.t


def _graph() -> GraphSpec:
    from headwater.wire import TaskSpec

    retry = RetrySpec(max_retries=2, delay=5.0, backoff=2.0, jitter=0.5)
    return GraphSpec(
        "journal",
        (
            TaskSpec("src", "src", "t.src", inputs={"n": Const(3)}),
            TaskSpec(
                "work", "work", "t.work", inputs={"x": FromTask("src")}, mapped=("x",), retry=retry
            ),
            TaskSpec("slow", "slow", "t.slow", timeout=10.0, retry=RetrySpec(max_retries=1)),
            TaskSpec("total", "total", "t.total", inputs={"xs": FromTask("work")}),
        ),
        result=FromTask("total"),
    )


def _snapshot(engine: FlowRunEngine) -> dict[str, Any]:
    return {
        "state": engine.state,
        "runs": {
            k: (r.state, r.attempt, r.retries_used, r.result, r.dispatched, tuple(r.history))
            for k, r in engine.runs.items()
        },
        "timers": engine.next_timer_at,
        "in_flight": engine.in_flight,
    }


def _drive() -> tuple[list[JournalEntry], list[dict[str, Any]]]:
    """Run the graph to completion (non-auto-start, like the server), journaling every
    input and snapshotting the engine after each one."""
    clock = Clock()
    journal: list[JournalEntry] = []
    engine = FlowRunEngine(_graph(), {}, clock=clock, auto_start=False)
    host = JournaledEngine(engine, journal.append)
    snapshots: list[dict[str, Any]] = []
    pending = list(host.start())
    snapshots.append(_snapshot(engine))
    failed_once: set[str] = set()
    while not engine.finished:
        runs = [c for c in pending if isinstance(c, RunTask)]
        pending = [c for c in pending if not isinstance(c, RunTask | CancelTask)]
        for command in runs:
            key, attempt = command.run.key, command.attempt
            clock.t += 1
            pending += host.handle(TaskStarted(key, attempt))
            snapshots.append(_snapshot(engine))
            clock.t += 1
            if key == "slow" and attempt == 1:
                continue  # never answers: its timeout fires
            if key.startswith("work[") and key not in failed_once:
                failed_once.add(key)
                failure = FailureInfo("builtins.OSError", "flaky")
                pending += host.handle(TaskFailed(key, attempt, failure))
            else:
                inputs = command.inputs
                value = list(range(inputs["n"])) if key == "src" else inputs.get("x", inputs)
                pending += host.handle(TaskSucceeded(key, attempt, value))
            snapshots.append(_snapshot(engine))
        if not engine.finished and not any(isinstance(c, RunTask) for c in pending):
            due = engine.next_timer_at
            assert due is not None, "stuck without timers"
            clock.t = due
            pending += host.fire_due_timers()
            snapshots.append(_snapshot(engine))
    return journal, snapshots


def test_the_driven_run_exercises_retries_and_timeouts() -> None:
    journal, snapshots = _drive()
    final = snapshots[-1]
    assert final["state"].name == "SUCCESS"
    assert final["runs"]["slow"][1] == 2  # timed out once, succeeded on attempt 2
    assert final["runs"]["work[0]"][2] == 1  # one retry used
    assert any(e.kind == "timers" for e in journal)


@pytest.mark.parametrize("cut", [1, 2, 5, 9, 14, 20, -1])
def test_replaying_a_prefix_rebuilds_the_engine_exactly(cut: int) -> None:
    journal, snapshots = _drive()
    cut = len(journal) if cut == -1 else min(cut, len(journal))
    rebuilt = replay(_graph(), {}, journal[:cut], clock=Clock(), auto_start=False)
    assert _snapshot(rebuilt) == snapshots[cut - 1]
    rebuilt.validate()


@pytest.mark.parametrize("cut", [1, 2, 5, 9, 14, 20, -1])
def test_a_replay_hands_over_the_attempts_in_flight_as_it_made_them(cut: int) -> None:
    """``in_flight`` holds exactly the attempts in flight at the journal's end, each the
    RunTask ``resend`` would give (same attempt, same inputs), retried and timed-out
    attempts replaced by their successors."""
    journal, _ = _drive()
    cut = len(journal) if cut == -1 else min(cut, len(journal))
    in_flight: dict[str, RunTask] = {}
    rebuilt = replay(
        _graph(), {}, journal[:cut], clock=Clock(), auto_start=False, in_flight=in_flight
    )
    dispatched = {key: run.attempt for key, run in rebuilt.runs.items() if run.dispatched}
    assert dispatched or cut == len(journal), "a cut mid-run has attempts in flight"
    assert {key: c.attempt for key, c in in_flight.items()} == dispatched
    for key, command in in_flight.items():
        again = rebuilt.resend(key)
        assert command.run is rebuilt.runs[key]
        assert (command.attempt, command.inputs, command.deadline) == (
            again.attempt,
            again.inputs,
            again.deadline,
        )


def test_replayed_engine_continues_with_the_live_clock() -> None:
    journal, _ = _drive()
    # Cut right after the first dispatch of "slow" started; the rebuilt engine must
    # still time it out when the live clock passes its deadline.
    idx = next(
        i
        for i, e in enumerate(journal)
        if e.event is not None and getattr(e.event, "key", "") == "slow"
    )
    live = Clock()
    rebuilt = replay(_graph(), {}, journal[: idx + 1], clock=live, auto_start=False)
    assert rebuilt.runs["slow"].state.name == "RUNNING"
    due = rebuilt.next_timer_at
    assert due is not None
    live.t = due
    commands = rebuilt.fire_due_timers()
    assert any(isinstance(c, CancelTask) for c in commands)
    assert rebuilt.runs["slow"].state.name in ("RETRYING", "SCHEDULED")


def test_a_replay_keeps_the_jitter_seed_its_journal_started_with() -> None:
    """The seed that spreads retry delays is journaled with START: a replay retries at
    the journaled moments whatever seed the host passes, and a journal from before
    seeds ("") replays with the unseeded delays it was run with."""
    for seed in ("run-1", ""):
        clock = Clock()
        journal: list[JournalEntry] = []
        engine = FlowRunEngine(_graph(), {}, clock=clock, auto_start=False, seed=seed)
        host = JournaledEngine(engine, journal.append)
        host.start()
        clock.t += 1
        host.handle(TaskStarted("src", 1))
        host.handle(TaskSucceeded("src", 1, [0, 1, 2]))
        host.handle(TaskStarted("work[0]", 1))
        host.handle(TaskFailed("work[0]", 1, FailureInfo("builtins.OSError", "flaky")))
        assert journal[0].seed == seed
        rebuilt = replay(_graph(), {}, journal, clock=Clock(), auto_start=False, seed="other")
        assert rebuilt.seed == seed
        assert rebuilt.next_timer_at == engine.next_timer_at
        # and its delay rule: the one it started with (a journal from before it: 0)
        assert journal[0].delay_rule == engine.delay_rule == DELAY_RULE
        older = [dataclasses.replace(journal[0], delay_rule=0), *journal[1:]]
        assert replay(_graph(), {}, older, clock=Clock(), auto_start=False).delay_rule == 0


def test_a_replayed_run_keeps_the_deadline_of_its_own_timeout() -> None:
    """A run's own timeout counts from its start as journaled: a server that restarts
    mid-run stops the run at the same moment it would have, and a replay of the whole
    journal ends FAILED the same way."""
    graph = GraphSpec("limited", (TaskSpec("slow", "slow", "t.slow"),), timeout=60.0)
    clock = Clock()
    journal: list[JournalEntry] = []
    engine = FlowRunEngine(graph, {}, clock=clock, auto_start=False, timeout=60.0)
    host = JournaledEngine(engine, journal.append)
    host.start()
    clock.t += 1
    host.handle(TaskStarted("slow", 1))
    live = Clock()
    live.t = clock.t + 30  # the restarted server, half a minute later
    rebuilt = replay(graph, {}, journal, clock=live, auto_start=False, timeout=60.0)
    assert rebuilt.next_timer_at == 1060.0
    live.t = 1060.0
    cancels = [c for c in rebuilt.fire_due_timers() if isinstance(c, CancelTask)]
    assert [c.run.key for c in cancels] == ["slow"]
    assert rebuilt.state.name == "FAILED"
    clock.t = 1060.0
    host.fire_due_timers()
    whole = replay(graph, {}, journal, clock=Clock(), auto_start=False, timeout=60.0)
    assert _snapshot(whole) == _snapshot(engine) == _snapshot(rebuilt)
    assert whole.flow_history[-1] == (
        whole.state,
        1060.0,
        "the flow run exceeded its timeout of 60s",
    )
