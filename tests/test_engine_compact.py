"""A first-attempt success keeps its history compactly (TaskRunRecord.compact); what
``history``, ``attempts``, ``started_at`` and ``ended_at`` say must not change."""

from __future__ import annotations

from engine_helpers import Driver, check_engines, failure, flow, task

from headwater.wire import TaskRunState
from headwater_runtime.engine import AttemptRecord, StateEntry

S = TaskRunState
__all__ = ["check_engines"]


def _seen(driver: Driver) -> dict[str, list[StateEntry]]:
    seen: dict[str, list[StateEntry]] = {}

    def observe(run: object, entry: StateEntry) -> None:
        seen.setdefault(run.key, []).append(entry)  # type: ignore[attr-defined]

    driver.engine.on_transition = observe
    return seen


def test_a_compacted_history_reads_exactly_as_it_was_recorded() -> None:
    driver = Driver(flow(task("a"), task("b", "a")))
    driver.clock.advance(1)
    driver.succeed("a", 1)
    driver.clock.advance(2)
    driver.started("b")
    driver.clock.advance(3)
    driver.succeed("b", 2)
    for key in ("a", "b"):
        run = driver.runs[key]
        assert run._compact is not None, f"{key} was not compacted"
        history = run.history
        assert [e.state for e in history] == [S.PENDING, S.SCHEDULED, S.RUNNING, S.SUCCESS]
        assert [e.attempt for e in history] == [0, 0, 1, 1]
        assert all(e.message == "" and e.failure is None for e in history)
        assert run.attempts == [
            AttemptRecord(1, history[2].timestamp, run.attempts[0].ended_at, S.SUCCESS)
        ]
        assert run.started_at == history[2].timestamp
        assert run.ended_at == history[-1].timestamp
        assert run.history[-1] is history[-1], "the terminal entry is the one recorded"
    b = driver.runs["b"].history
    assert b[3].timestamp - b[0].timestamp == 6.0


def test_the_compacted_entries_equal_those_observers_saw() -> None:
    driver = Driver(flow(task("a"), task("b", "a")), start=False)
    seen = _seen(driver)
    driver.start()
    driver.succeed("a", 1)
    driver.succeed("b", 2)
    for key in ("a", "b"):
        run = driver.runs[key]
        assert run._compact is not None
        assert run.history[1:] == seen[key]


def test_anything_unusual_keeps_the_full_lists() -> None:
    from headwater.wire import RetrySpec

    driver = Driver(flow(task("a", retry=RetrySpec(max_retries=1))))
    driver.fail("a", failure())
    driver.succeed("a", 1)
    run = driver.runs["a"]
    assert run._compact is None
    assert [e.state for e in run.history][-3:] == [S.SCHEDULED, S.RUNNING, S.SUCCESS]
    assert len(run.attempts) == 2
