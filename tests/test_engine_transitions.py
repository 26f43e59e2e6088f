"""The transition table: every allowed transition is one the engine really makes, an
illegal one raises with the run's history, and events that do not fit are ignored."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from engine_helpers import (
    Driver,
    S,
    check_engines,  # noqa: F401  (autouse fixture)
    failure,
    flow,
    task,
    up,
)

from headwater.wire import CacheSpec, Const, FlowRunState, RetrySpec, Trigger
from headwater_runtime.engine import (
    TRANSITIONS,
    CacheEntry,
    CancelRequested,
    EventIgnored,
    IllegalTransition,
    TaskFailed,
    TaskLost,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
)

Scenario = Callable[[], Driver]


def _pending_scheduled() -> Driver:
    return Driver(flow(task("a")))


def _pending_skipped() -> Driver:
    d = Driver(flow(task("up"), task("a", "up")))
    d.skip("up")
    return d


def _pending_trigger_failed() -> Driver:
    d = Driver(flow(task("up"), task("a", "up")))
    d.fail("up")
    return d


def _pending_cancelled() -> Driver:
    d = Driver(flow(task("up"), task("a", "up")))
    d.cancel()
    return d


def _pending_mapped() -> Driver:
    return Driver(flow(task("a", inputs={"x": Const([1])}, mapped=["x"])))


def _pending_failed() -> Driver:
    return Driver(flow(task("a", inputs={"x": Const(3)}, mapped=["x"])))


def _scheduled_running() -> Driver:
    return Driver(flow(task("a")))


def _scheduled_cached() -> Driver:
    d = Driver(flow(task("a", cache=CacheSpec())))
    d.cache("a", "k", CacheEntry("v", None))
    return d


def _scheduled_cancelled() -> Driver:
    d = Driver(flow(task("a", cache=CacheSpec())))  # waiting for its cache check
    d.cancel()
    return d


def _scheduled_failed() -> Driver:
    d = Driver(flow(task("up"), task("a", inputs={"x": up("up", "nope")})))
    d.succeed("up", {})
    return d


def _scheduled_retrying() -> Driver:
    # No worker took the attempt in time (schedule_to_start_timeout), and the host's
    # failure may be retried.
    d = Driver(flow(task("a", retry=RetrySpec(max_retries=1, delay=10))), auto_start=False)
    d.send(TaskFailed("a", 1, failure(), never_started=True))
    return d


def _running_success() -> Driver:
    d = Driver(flow(task("a")))
    d.succeed("a")
    return d


def _running_cached() -> Driver:
    d = Driver(flow(task("a", cache=CacheSpec(by_function=True))))
    d.cache("a", "", None)  # the key comes from the worker
    d.started("a")
    d.send(TaskSucceeded("a", 1, "v", cache_key="k", cached=True))
    return d


def _running_failed() -> Driver:
    d = Driver(flow(task("a")))
    d.fail("a")
    return d


def _running_timed_out() -> Driver:
    d = Driver(flow(task("a", timeout=5)))
    d.tick(5)
    return d


def _running_cancelled() -> Driver:
    d = Driver(flow(task("a")))
    d.cancel()
    return d


def _running_skipped() -> Driver:
    d = Driver(flow(task("a")))
    d.skip("a")
    return d


def _running_retrying() -> Driver:
    d = Driver(flow(task("a", retry=RetrySpec(max_retries=1, delay=10))))
    d.fail("a")
    return d


def _running_scheduled() -> Driver:
    d = Driver(flow(task("a")))
    d.lose("a")
    return d


def _retrying_scheduled() -> Driver:
    d = _running_retrying()
    d.tick(10)
    return d


def _retrying_cancelled() -> Driver:
    d = _running_retrying()
    d.cancel()
    return d


SCENARIOS: dict[tuple[S, S], Scenario] = {
    (S.PENDING, S.SCHEDULED): _pending_scheduled,
    (S.PENDING, S.SKIPPED): _pending_skipped,
    (S.PENDING, S.TRIGGER_FAILED): _pending_trigger_failed,
    (S.PENDING, S.CANCELLED): _pending_cancelled,
    (S.PENDING, S.MAPPED): _pending_mapped,
    (S.PENDING, S.FAILED): _pending_failed,
    (S.SCHEDULED, S.RUNNING): _scheduled_running,
    (S.SCHEDULED, S.CACHED): _scheduled_cached,
    (S.SCHEDULED, S.CANCELLED): _scheduled_cancelled,
    (S.SCHEDULED, S.FAILED): _scheduled_failed,
    (S.SCHEDULED, S.RETRYING): _scheduled_retrying,
    (S.RUNNING, S.SUCCESS): _running_success,
    (S.RUNNING, S.CACHED): _running_cached,
    (S.RUNNING, S.FAILED): _running_failed,
    (S.RUNNING, S.TIMED_OUT): _running_timed_out,
    (S.RUNNING, S.CANCELLED): _running_cancelled,
    (S.RUNNING, S.SKIPPED): _running_skipped,
    (S.RUNNING, S.RETRYING): _running_retrying,
    (S.RUNNING, S.SCHEDULED): _running_scheduled,
    (S.RETRYING, S.SCHEDULED): _retrying_scheduled,
    (S.RETRYING, S.CANCELLED): _retrying_cancelled,
}


def test_scenarios_cover_the_whole_table() -> None:
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert set(SCENARIOS) == table


@pytest.mark.parametrize(
    ("before", "after"), list(SCENARIOS), ids=[f"{a.name}->{b.name}" for a, b in SCENARIOS]
)
def test_engine_makes_the_transition(before: S, after: S) -> None:
    d = SCENARIOS[(before, after)]()
    assert ("a", before, after) in d.transitions
    assert (before, after) in zip(d.states("a"), d.states("a")[1:], strict=False)


def test_terminal_states_have_no_way_out() -> None:
    for state in S:
        assert (TRANSITIONS[state] == frozenset()) == state.is_terminal
        assert not (state.is_success and state.is_failure)


def test_illegal_transition_raises_with_the_history() -> None:
    d = Driver(flow(task("a")))
    d.succeed("a", 1)
    run = d.runs["a"]
    with pytest.raises(IllegalTransition) as info:
        d.engine._transition(run, S.RUNNING)
    message = str(info.value)
    assert "'a'" in message and "SUCCESS -> RUNNING" in message
    assert "PENDING@0, SCHEDULED@0, RUNNING@1, SUCCESS@1" in message
    assert run.state is S.SUCCESS and run.states[-1] is S.SUCCESS, "state left untouched"


def test_illegal_transition_from_pending() -> None:
    d = Driver(flow(task("up"), task("a", "up")))
    with pytest.raises(IllegalTransition, match=r"'a': PENDING -> SUCCESS.*history: PENDING@0"):
        d.engine._transition(d.runs["a"], S.SUCCESS)


# ---------------------------------------------------------------- ignored events


def _only_ignored(commands: list, reason: str) -> EventIgnored:
    assert len(commands) == 1 and isinstance(commands[0], EventIgnored), commands
    assert reason in commands[0].reason, commands[0].reason
    return commands[0]


def test_event_for_an_unknown_run_is_ignored() -> None:
    d = Driver(flow(task("a")))
    event = TaskSucceeded("nope", 1, None)
    ignored = _only_ignored(d.send(event), "unknown task run 'nope'")
    assert ignored.event is event
    assert d.state("a") is S.RUNNING


def test_stale_attempt_is_ignored() -> None:
    d = Driver(flow(task("a", retry=RetrySpec(max_retries=1))))
    d.fail("a")
    assert d.attempt("a") == 2
    replaced = (
        "stale attempt 1 of task run 'a': the attempt already ended FAILED; attempt 2 replaced it"
    )
    ignored = _only_ignored(d.send(TaskSucceeded("a", 1, "late")), replaced)
    assert ignored.reason == replaced, "the whole reason, word for word"
    _only_ignored(d.send(TaskFailed("a", 1, failure())), replaced)
    _only_ignored(d.send(TaskSkipped("a", 1)), replaced)
    _only_ignored(d.send(TaskLost("a", 1)), replaced)
    future = "stale attempt 3 of task run 'a': no such attempt was dispatched"
    assert _only_ignored(d.send(TaskSucceeded("a", 3, "future")), future).reason == future
    assert d.state("a") is S.RUNNING and d.runs["a"].result is None
    d.succeed("a", "fresh")
    assert d.runs["a"].result == "fresh"


def test_duplicate_result_is_ignored() -> None:
    d = Driver(flow(task("a"), task("b")))
    d.succeed("a", 1)
    duplicate = "stale attempt 1 of task run 'a': the attempt already ended SUCCESS"
    assert _only_ignored(d.send(TaskSucceeded("a", 1, 2)), duplicate).reason == duplicate
    _only_ignored(d.send(TaskFailed("a", 1, failure())), duplicate)
    assert d.state("a") is S.SUCCESS and d.runs["a"].result == 1


def test_event_for_a_run_never_dispatched_is_ignored() -> None:
    d = Driver(flow(task("up"), task("a", "up")))
    never = "of task run 'a': no such attempt was dispatched"
    _only_ignored(d.send(TaskSucceeded("a", 0, 1)), f"stale attempt 0 {never}")
    _only_ignored(d.send(TaskStarted("a", 1)), f"stale attempt 1 {never}")
    assert d.state("a") is S.PENDING


def test_events_before_start_and_after_the_end_are_ignored() -> None:
    d = Driver(flow(task("a")), start=False)
    _only_ignored(
        d.send(TaskSucceeded("a", 1, None)),
        "stale attempt 1 of task run 'a': no such attempt was dispatched; the flow run is PENDING",
    )
    d.start()
    d.succeed("a")
    assert d.engine.state is FlowRunState.SUCCESS
    _only_ignored(
        d.send(TaskSucceeded("a", 1, None)),
        "stale attempt 1 of task run 'a': the attempt already ended SUCCESS; "
        "the flow run ended SUCCESS",
    )
    _only_ignored(d.send(TaskSucceeded("nope", 1, None)), "unknown task run 'nope'")
    assert d.only_ignored(d.send(CancelRequested())), "cancelling a finished run does nothing"
    assert d.engine.state is FlowRunState.SUCCESS


def test_started_for_a_running_attempt_changes_nothing() -> None:
    d = Driver(flow(task("a")))
    assert d.started("a") == []
    assert d.states("a") == [S.PENDING, S.SCHEDULED, S.RUNNING]
    assert len(d.runs["a"].attempts) == 1


def test_trigger_verdicts_have_messages() -> None:
    d = Driver(flow(task("x"), task("a", "x", trigger=Trigger.ANY_FAILED)))
    d.succeed("x")
    entry = d.runs["a"].history[-1]
    assert entry.state is S.TRIGGER_FAILED
    assert "any_failed" in entry.message
