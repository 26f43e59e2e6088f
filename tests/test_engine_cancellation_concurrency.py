"""Cancelling a flow run, and bounding the task runs in flight."""

from __future__ import annotations

import pytest
from engine_helpers import (
    Driver,
    S,
    check_engines,  # noqa: F401  (autouse fixture)
    flow,
    task,
    up,
)

from headwater.wire import CacheSpec, Const, FlowRunState, RetrySpec
from headwater_runtime.engine import (
    CancelRequested,
    CancelTask,
    EventIgnored,
    FlowFinished,
    RunTask,
    TaskSucceeded,
)


def test_cancel_stops_running_attempts_and_cancels_everything_unfinished() -> None:
    g = flow(
        task("done"),
        task("running"),
        task("retrying", retry=RetrySpec(max_retries=1, delay=30)),
        task("checking", cache=CacheSpec()),
        task("pending", "running"),
        task("m", inputs={"x": Const([1, 2])}, mapped=["x"]),
        task("mapped_pending", "m"),
    )
    d = Driver(g)
    d.succeed("done", 1)
    d.fail("retrying")
    d.succeed("m[0]")
    assert d.state("retrying") is S.RETRYING and d.state("checking") is S.SCHEDULED

    commands = d.cancel("user asked")
    cancels = {c.run.key: c for c in commands if isinstance(c, CancelTask)}
    assert set(cancels) == {"running", "m[1]"}
    assert all(c.reason == "user asked" and c.attempt == 1 for c in cancels.values())
    assert not [c for c in commands if isinstance(c, RunTask)]
    assert commands[-1] == FlowFinished(FlowRunState.CANCELLED)

    assert d.state("done") is S.SUCCESS, "finished runs keep their state"
    assert d.state("m[0]") is S.SUCCESS and d.state("m") is S.MAPPED
    for key in ("running", "retrying", "checking", "pending", "m[1]", "mapped_pending"):
        assert d.state(key) is S.CANCELLED, key
        assert d.runs[key].history[-1].message == "user asked"
    assert d.runs["running"].attempts[0].outcome is S.CANCELLED
    assert d.engine.state is FlowRunState.CANCELLED
    assert d.engine.flow_history[-1][2] == "user asked"
    assert d.engine.in_flight == 0


def test_results_arriving_after_cancel_are_ignored() -> None:
    d = Driver(flow(task("a"), task("b", "a")))
    d.cancel()
    late = d.send(TaskSucceeded("a", 1, "late"))
    assert len(late) == 1 and isinstance(late[0], EventIgnored)
    assert late[0].reason == (
        "stale attempt 1 of task run 'a': the attempt was cancelled; the flow run ended CANCELLED"
    )
    assert d.state("a") is S.CANCELLED and d.runs["a"].result is None
    assert d.state("b") is S.CANCELLED
    assert d.tick(1000) == []


def test_cancel_and_a_result_in_one_batch() -> None:
    d = Driver(flow(task("a"), task("b", "a")))
    commands = d.send(CancelRequested("x"), TaskSucceeded("a", 1, "late"))
    assert d.engine.state is FlowRunState.CANCELLED
    assert d.state("a") is S.CANCELLED
    assert not [c for c in commands if isinstance(c, RunTask)]
    assert any(isinstance(c, EventIgnored) for c in commands)


def test_cancel_clears_retry_and_timeout_timers() -> None:
    d = Driver(flow(task("a", retry=RetrySpec(max_retries=1, delay=5)), task("b", timeout=5)))
    d.fail("a")
    d.cancel()
    assert d.tick(100) == []
    assert d.state("a") is S.CANCELLED and d.state("b") is S.CANCELLED
    assert [a.outcome for a in d.runs["b"].attempts] == [S.CANCELLED]


def test_a_task_run_cancelled_while_it_waits_to_retry_keeps_the_failure_it_waited_after() -> None:
    """An embedded run said only "a CANCELLED" for a task cancelled in its retry delay
    (a server showed its error; a user trial). Its history entry stays without one."""
    d = Driver(flow(task("a", retry=RetrySpec(max_retries=3, delay=30)), task("b")))
    d.fail("a")
    d.cancel()
    run = d.runs["a"]
    assert run.state is S.CANCELLED and run.history[-1].failure is None
    assert run.failure is not None and run.failure == run.attempts[-1].failure
    assert d.runs["b"].failure is None  # (cancelled while it ran: no failure of its own)


def test_cancel_during_the_run_of_a_failed_flow_still_cancels() -> None:
    d = Driver(flow(task("a"), task("b")))
    d.fail("a")
    d.cancel("stop")
    assert d.engine.state is FlowRunState.CANCELLED


def test_cancel_twice_and_cancel_after_the_end_change_nothing() -> None:
    d = Driver(flow(task("a")))
    d.cancel("first")
    assert d.only_ignored(d.cancel("second"))
    assert d.engine.flow_history[-1][2] == "first"
    assert d.finished_state() is FlowRunState.CANCELLED


# ------------------------------------------------------------------- concurrency


def test_max_concurrency_bounds_dispatches() -> None:
    d = Driver(flow(*(task(f"t{i}") for i in range(5))), max_concurrency=2)
    assert d.dispatched() == ["t0", "t1"]
    assert d.state("t2") is S.SCHEDULED
    d.succeed("t1")
    assert d.dispatched() == ["t2"]
    d.fail("t0")
    assert d.dispatched() == ["t3"]
    d.skip("t2")
    assert d.dispatched() == ["t4"]
    d.complete()
    assert d.max_seen_in_flight == 2
    assert d.engine.state is FlowRunState.FAILED


def test_max_concurrency_one_serialises_a_wide_map() -> None:
    g = flow(task("m", inputs={"x": Const(list(range(6)))}, mapped=["x"]), task("r", "m"))
    d = Driver(g, max_concurrency=1)
    order = []
    while not d.engine.finished:
        (key,) = d.in_flight
        order.append(key)
        d.succeed(key, key)
    assert order == [f"m[{i}]" for i in range(6)] + ["r"]
    assert d.max_seen_in_flight == 1


def test_retry_and_lost_worker_free_and_retake_slots() -> None:
    spec = RetrySpec(max_retries=1, delay=10)
    d = Driver(flow(task("a", retry=spec), task("b"), task("c")), max_concurrency=2)
    assert d.dispatched() == ["a", "b"]
    d.fail("a")
    assert d.dispatched() == ["c"], "a retrying run gives its slot away"
    assert d.tick(10) == [], "no free slot for a's retry yet"
    assert d.state("a") is S.SCHEDULED
    d.lose("b")
    assert d.dispatched() == ["b"], "a lost run goes first"
    d.succeed("c")
    assert d.dispatched() == ["a"]
    d.complete()
    assert d.engine.state is FlowRunState.SUCCESS
    assert d.max_seen_in_flight == 2


def test_timed_out_attempt_frees_its_slot() -> None:
    d = Driver(flow(task("a", timeout=1), task("b")), max_concurrency=1)
    assert d.dispatched() == ["a"]
    commands = d.tick(1)
    assert [type(c) for c in commands] == [CancelTask, RunTask]
    assert d.dispatched() == ["b"]


def test_cancelled_flow_dispatches_nothing_queued() -> None:
    d = Driver(flow(*(task(f"t{i}") for i in range(3))), max_concurrency=1)
    d.cancel()
    assert all(d.state(f"t{i}") is S.CANCELLED for i in range(3))
    assert not d.dispatched()


@pytest.mark.parametrize("limit", [1, 2, 3])
def test_concurrency_limit_holds_over_a_graph(limit: int) -> None:
    g = flow(
        task("m", inputs={"x": Const(list(range(5)))}, mapped=["x"]),
        task("n", inputs={"x": up("m")}, mapped=["x"]),
        task("r", "n"),
        task("s"),
    )
    d = Driver(g, max_concurrency=limit)
    d.complete()
    assert d.max_seen_in_flight == limit
    assert d.engine.state is FlowRunState.SUCCESS


def test_cancel_before_start_is_not_lost() -> None:
    """A cancel request that arrives before the run starts must not vanish: the engine
    either refuses it visibly (EventIgnored) or honours it when the run starts."""
    d = Driver(flow(task("a"), task("b", "a")), start=False)
    answer = d.cancel("too early")
    refused = any(isinstance(c, EventIgnored) for c in answer)
    d.start()
    honoured = d.engine.state is FlowRunState.CANCELLED and not d.dispatched()
    assert refused or honoured, "the cancel request was silently dropped"
