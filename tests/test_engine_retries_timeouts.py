"""Retries (delay, backoff, cap, jitter, non-retryable errors), timeouts, lost workers."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from engine_helpers import (
    Driver,
    S,
    check_engines,  # noqa: F401  (autouse fixture)
    failure,
    flow,
    task,
)

from headwater.wire import FlowRunState, RetrySpec
from headwater_runtime.engine import (
    MAX_GIVEN_BACK,
    CancelTask,
    RunRetried,
    RunTask,
    TaskFailed,
    TaskLost,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
    retry_delay,
)

RETRY_CYCLE = [S.RUNNING, S.RETRYING, S.SCHEDULED]


def test_immediate_retry_goes_running_retrying_scheduled_running() -> None:
    d = Driver(flow(task("a", retry=RetrySpec(max_retries=2))))
    d.fail("a", failure(message="first"))
    assert d.dispatched() == ["a"]
    assert d.run_task("a").attempt == 2
    d.fail("a", failure(message="second"))
    assert d.run_task("a").attempt == 3
    d.succeed("a", "ok")

    run = d.runs["a"]
    assert run.states == [S.PENDING, S.SCHEDULED, *RETRY_CYCLE, *RETRY_CYCLE, S.RUNNING, S.SUCCESS]
    assert run.retries_used == 2 and run.attempt == 3 and run.result == "ok"
    assert [a.number for a in run.attempts] == [1, 2, 3]
    assert [a.outcome for a in run.attempts] == [S.FAILED, S.FAILED, S.SUCCESS]
    assert [a.failure.message if a.failure else None for a in run.attempts] == [
        "first",
        "second",
        None,
    ]
    retrying = [e for e in run.history if e.state is S.RETRYING]
    assert [e.attempt for e in retrying] == [1, 2]
    assert retrying[0].failure is not None and retrying[0].failure.message == "first"
    assert "attempt 1 failed" in retrying[0].message
    assert d.engine.state is FlowRunState.SUCCESS


def test_retries_exhausted_fail_with_the_last_failure() -> None:
    d = Driver(flow(task("a", retry=RetrySpec(max_retries=1)), task("b", "a")))
    d.fail("a", failure(message="first"))
    d.fail("a", failure(message="second"))
    run = d.runs["a"]
    assert run.state is S.FAILED
    assert len(run.attempts) == 2 and run.retries_used == 1
    assert run.failure is not None and run.failure.message == "second"
    assert run.history[-1].failure is run.failure
    assert d.state("b") is S.TRIGGER_FAILED
    assert d.engine.state is FlowRunState.FAILED


def test_retry_waits_for_its_delay() -> None:
    d = Driver(flow(task("a", retry=RetrySpec(max_retries=1, delay=10))))
    t0 = d.clock.now()
    d.clock.advance(1)
    d.fail("a")
    assert d.state("a") is S.RETRYING
    assert d.dispatched() == []
    assert d.engine.next_timer_at == t0 + 1 + 10
    assert d.engine.in_flight == 0, "a retrying run holds no slot"
    assert d.tick(9.999) == []
    assert d.state("a") is S.RETRYING
    d.tick(0.001)
    assert d.dispatched() == ["a"]
    assert d.run_task("a").attempt == 2
    assert d.runs["a"].attempts[1].started_at == t0 + 11
    assert "retrying in 10s" in d.runs["a"].history[-3].message


def _observed_delays(spec: RetrySpec, failures: int) -> list[float]:
    d = Driver(flow(task("a", retry=spec)))
    delays = []
    for _ in range(failures):
        d.fail("a")
        due = d.engine.next_timer_at
        assert due is not None and d.state("a") is S.RETRYING
        delays.append(due - d.clock.now())
        d.tick(due - d.clock.now())
        assert d.state("a") is S.RUNNING
    return delays


def test_exponential_backoff_is_capped_by_max_delay() -> None:
    spec = RetrySpec(max_retries=6, delay=1, backoff=2, max_delay=5)
    assert _observed_delays(spec, 6) == [1, 2, 4, 5, 5, 5]


def test_backoff_without_cap_keeps_growing() -> None:
    spec = RetrySpec(max_retries=4, delay=0.5, backoff=3)
    assert _observed_delays(spec, 4) == [0.5, 1.5, 4.5, 13.5]


def test_constant_delay_with_backoff_one() -> None:
    assert _observed_delays(RetrySpec(max_retries=3, delay=2), 3) == [2, 2, 2]


@pytest.mark.parametrize("jitter", [0.1, 0.5, 1.0])
def test_jitter_stays_within_its_bounds(jitter: float) -> None:
    spec = RetrySpec(max_retries=10, delay=1, backoff=2, max_delay=20, jitter=jitter)
    below = above = 0
    for k in range(200):
        key = f"task-{k}[{k % 7}]"
        for n in range(1, 8):
            base = min(1 * 2 ** (n - 1), 20)
            d = retry_delay(spec, n, key)
            assert base * (1 - jitter) - 1e-9 <= d <= min(base * (1 + jitter), 20) + 1e-9
            below += d < base
            above += d > base
    assert below > 0 and above > 0, "jitter spreads delays both ways"


def test_jitter_is_deterministic_and_differs_between_runs() -> None:
    spec = RetrySpec(max_retries=3, delay=10, jitter=0.5)
    first = [retry_delay(spec, n, f"k{i}") for i in range(50) for n in (1, 2, 3)]
    again = [retry_delay(spec, n, f"k{i}") for i in range(50) for n in (1, 2, 3)]
    assert first == again
    assert len(set(first)) > 40, "different runs and retry numbers get different delays"
    # Replaying a run through two engines gives the same decisions.
    assert _observed_delays(spec, 3) == _observed_delays(spec, 3)
    expected = [retry_delay(spec, n, "a") for n in (1, 2, 3)]
    assert _observed_delays(spec, 3) == pytest.approx(expected, rel=1e-9)


def test_jitter_spreads_the_retries_of_different_flow_runs_of_one_task() -> None:
    """The same task in 20 runs of one flow: each run retries at its own moments (they
    all retried in lockstep, hammering a flaky API together)."""
    spec = RetrySpec(max_retries=3, delay=10, jitter=0.5)
    runs = {
        tuple(retry_delay(spec, n, "load[3]", f"run-{r}") for n in (1, 2, 3)) for r in range(20)
    }
    assert len(runs) == 20
    seeded = Driver(flow(task("a", retry=spec)), seed="run-7")
    seeded.fail("a")
    assert seeded.engine.next_timer_at == seeded.clock.now() + retry_delay(spec, 1, "a", "run-7")


def test_no_jitter_means_exact_delays() -> None:
    spec = RetrySpec(max_retries=3, delay=3, backoff=2)
    assert [retry_delay(spec, n, "x") for n in (1, 2, 3)] == [3, 6, 12]
    assert retry_delay(RetrySpec(max_retries=1, jitter=0.5), 1, "x") == 0


def test_non_retryable_error_type_is_not_retried() -> None:
    spec = RetrySpec(max_retries=3, non_retryable=("builtins.KeyError",))
    d = Driver(flow(task("a", retry=spec), task("b", retry=spec)))
    d.fail("a", failure("builtins.KeyError", "missing"))
    assert d.states("a") == [S.PENDING, S.SCHEDULED, S.RUNNING, S.FAILED]
    assert d.runs["a"].retries_used == 0
    d.fail("b", failure("builtins.ValueError"))
    assert d.state("b") is S.RUNNING and d.attempt("b") == 2, "other errors are retried"


def test_failure_marked_not_retryable_is_not_retried() -> None:
    d = Driver(flow(task("a", retry=RetrySpec(max_retries=3, delay=1))))
    d.fail("a", failure(retryable=False))
    assert d.state("a") is S.FAILED
    assert len(d.runs["a"].attempts) == 1
    assert d.engine.next_timer_at is None


# ---------------------------------------------------------------------- timeouts


def test_timeout_without_retries_times_out_and_cancels_the_attempt() -> None:
    d = Driver(flow(task("a", timeout=5), task("b", "a")))
    t0 = d.clock.now()
    assert d.run_task("a").deadline == t0 + 5
    assert d.engine.next_timer_at == t0 + 5
    assert d.tick(4.999) == []
    assert d.state("a") is S.RUNNING

    commands = d.tick(0.001)
    cancels = [c for c in commands if isinstance(c, CancelTask)]
    assert len(cancels) == 1
    assert cancels[0].run.key == "a" and cancels[0].attempt == 1
    assert cancels[0].reason == "timed out"
    run = d.runs["a"]
    assert run.states == [S.PENDING, S.SCHEDULED, S.RUNNING, S.TIMED_OUT]
    assert run.failure is not None and run.failure.timed_out
    assert run.failure.type == "headwater.TaskTimeout"
    assert "'a'" in run.failure.message and "5s" in run.failure.message
    assert run.attempts[0].outcome is S.TIMED_OUT and run.attempts[0].ended_at == t0 + 5
    assert d.state("b") is S.TRIGGER_FAILED
    assert d.engine.state is FlowRunState.FAILED
    first = d.engine.failed_runs()[0]
    assert (first.key, first.state) == ("a", S.TIMED_OUT)

    late = d.send(TaskSucceeded("a", 1, "too late"))
    assert [type(c).__name__ for c in late] == ["EventIgnored"]
    assert late[0].reason == (
        "stale attempt 1 of task run 'a': the attempt timed out; the flow run ended FAILED"
    )
    assert run.result is None


def test_result_before_the_deadline_disarms_the_timeout() -> None:
    d = Driver(flow(task("a", timeout=5), task("b")))
    d.clock.advance(4)
    d.succeed("a", 1)
    assert d.tick(10) == []
    assert d.state("a") is S.SUCCESS


def test_retry_after_timeout_runs_a_fresh_attempt() -> None:
    d = Driver(flow(task("a", timeout=5, retry=RetrySpec(max_retries=1))))
    t0 = d.clock.now()
    commands = d.tick(5)
    kinds = [type(c).__name__ for c in commands]
    assert kinds == ["CancelTask", "RunTask"]
    cancel, rerun = commands
    assert isinstance(cancel, CancelTask) and cancel.attempt == 1
    assert isinstance(rerun, RunTask) and rerun.attempt == 2
    assert rerun.deadline == t0 + 10, "each attempt gets its own deadline"
    run = d.runs["a"]
    assert run.states == [S.PENDING, S.SCHEDULED, *RETRY_CYCLE, S.RUNNING]
    retrying = run.history[3]
    assert retrying.failure is not None and retrying.failure.timed_out
    assert "timed out" in retrying.message
    assert run.attempts[0].outcome is S.TIMED_OUT

    (fenced,) = d.ignored(d.send(TaskSucceeded("a", 1, "late")))
    assert fenced.reason == (
        "stale attempt 1 of task run 'a': the attempt timed out; attempt 2 replaced it"
    )
    d.clock.advance(4)
    d.succeed("a", "second try")
    assert run.state is S.SUCCESS and run.result == "second try"
    assert d.tick(100) == []


def test_retry_after_timeout_with_a_delay() -> None:
    d = Driver(flow(task("a", timeout=5, retry=RetrySpec(max_retries=1, delay=3))))
    d.tick(5)
    assert d.state("a") is S.RETRYING
    assert d.tick(2.9) == []
    d.tick(0.1)
    assert d.state("a") is S.RUNNING and d.attempt("a") == 2
    d.tick(5)
    assert d.state("a") is S.TIMED_OUT, "second attempt times out too, no retries left"
    assert [a.outcome for a in d.runs["a"].attempts] == [S.TIMED_OUT, S.TIMED_OUT]


def test_timeout_listed_as_non_retryable_is_final() -> None:
    spec = RetrySpec(max_retries=3, non_retryable=("headwater.TaskTimeout",))
    d = Driver(flow(task("a", timeout=1, retry=spec)))
    d.tick(1)
    assert d.state("a") is S.TIMED_OUT


def test_worker_reported_timeout_ends_timed_out() -> None:
    d = Driver(flow(task("a")))
    d.fail("a", failure("headwater.TaskTimeout", "worker deadline", timed_out=True))
    assert d.state("a") is S.TIMED_OUT
    assert d.runs["a"].attempts[0].outcome is S.TIMED_OUT


def test_without_auto_start_the_timeout_counts_from_task_started() -> None:
    d = Driver(flow(task("a", timeout=5)), auto_start=False)
    t0 = d.clock.now()
    assert d.states("a") == [S.PENDING, S.SCHEDULED]
    assert d.run_task("a").deadline is None
    assert d.engine.next_timer_at is None
    d.clock.advance(3)
    d.started("a")
    assert d.state("a") is S.RUNNING
    assert d.engine.next_timer_at == t0 + 8
    assert d.tick(4.9) == []
    d.tick(0.1)
    assert d.state("a") is S.TIMED_OUT


@pytest.mark.parametrize(
    ("reported", "expected"),
    [(-2.0, -2.0), (-9.0, -5.0), (1.0, 0.0), (None, 0.0)],
    ids=["within", "before-scheduled", "in-the-future", "not-said"],
)
def test_task_started_gives_running_the_workers_start_within_its_window(
    reported: float | None, expected: float
) -> None:
    """A worker reports TaskStarted a moment after the start (the Python worker 50 ms
    later) with the real start: RUNNING, the attempt's start and so its duration take
    it (a 1 s task showed 0.95 s on a server), kept between the attempt's SCHEDULED
    state and now (another machine's clock). The backstop timeout still counts from
    now: the worker times the attempt itself."""
    d = Driver(flow(task("a", timeout=10)), auto_start=False)
    d.clock.advance(5)  # SCHEDULED at t0 - 5 from the report's point of view
    now = d.clock.now()
    at = None if reported is None else now + reported
    d.send(TaskStarted("a", 1, at))
    running = d.runs["a"].history[-1]
    assert running.state is S.RUNNING and running.timestamp == now + expected
    assert d.runs["a"].attempts[0].started_at == now + expected
    assert d.engine.next_timer_at == now + 10
    d.clock.advance(1)
    d.succeed("a", "v")
    assert d.runs["a"].attempts[0].ended_at == now + 1


@pytest.mark.parametrize(
    "outcome",
    [
        TaskSucceeded("a", 1, "v", started_at=0.0),
        TaskFailed("a", 1, failure(), started_at=0.0),
        TaskSkipped("a", 1, "no", started_at=0.0),
    ],
    ids=["succeeded", "failed", "skipped"],
)
def test_an_outcome_without_task_started_gives_running_its_start(outcome: Any) -> None:
    """A task shorter than the Python worker's TaskStarted delay ends with no TaskStarted
    sent: its outcome says when it started, and RUNNING takes that (a duration of about
    0 was shown), within the same window as TaskStarted's."""
    d = Driver(flow(task("a")), auto_start=False)
    d.clock.advance(5)
    now = d.clock.now()
    d.send(dataclasses.replace(outcome, started_at=now - 0.03))
    (running,) = [h for h in d.runs["a"].history if h.state is S.RUNNING]
    assert running.timestamp == now - 0.03
    assert d.runs["a"].attempts[0].started_at == now - 0.03


@pytest.mark.parametrize(
    ("outcome", "final"),
    [
        (TaskSucceeded("a", 1, "v"), S.SUCCESS),
        (TaskFailed("a", 1, failure(retryable=False)), S.FAILED),
        (TaskFailed("a", 1, failure()), S.RETRYING),
        (TaskSkipped("a", 1, "no"), S.SKIPPED),
    ],
    ids=["succeeded", "failed", "retrying", "skipped"],
)
@pytest.mark.parametrize(
    ("reported", "expected"),
    [(-20.0, -20.0), (-40.0, -30.0), (5.0, 0.0), (None, 0.0)],
    ids=["within", "before-running", "in-the-future", "not-said"],
)
def test_an_outcome_gives_the_attempt_the_end_its_worker_says_within_its_window(
    outcome: Any, final: S, reported: float | None, expected: float
) -> None:
    """An outcome a worker held while the server was away arrives late: the attempt
    ended when the worker says (``ended_at``), kept between its RUNNING state and now
    (another machine's clock); it ended when it arrived, so its duration took in the
    outage (a 6 s task showed 27 s, a user trial)."""
    retry = RetrySpec(max_retries=1, delay=0.0)
    d = Driver(flow(task("a", retry=retry)), auto_start=False)
    d.send(TaskStarted("a", 1))
    d.clock.advance(30)  # RUNNING at now - 30
    now = d.clock.now()
    at = None if reported is None else now + reported
    d.send(dataclasses.replace(outcome, ended_at=at))
    (attempt,) = d.runs["a"].attempts[:1]
    assert attempt.started_at == now - 30 and attempt.ended_at == now + expected
    ended = next(h for h in d.runs["a"].history if h.state is final)
    assert ended.timestamp == now + expected


def test_without_auto_start_a_result_without_started_is_accepted() -> None:
    """A worker may report the outcome of an attempt before (or without) its started
    message; the engine must take it, not crash with IllegalTransition."""
    for event, final in (
        (TaskSucceeded("a", 1, "v"), S.SUCCESS),
        (TaskFailed("a", 1, failure()), S.FAILED),
        (TaskSkipped("a", 1, "nothing to do"), S.SKIPPED),
    ):
        d = Driver(flow(task("a")), auto_start=False)
        d.send(event)
        assert d.state("a") is final
        assert d.engine.finished


def test_without_auto_start_a_retryable_failure_without_started_is_retried() -> None:
    d = Driver(flow(task("a", retry=RetrySpec(max_retries=1))), auto_start=False)
    d.fail("a")
    assert d.dispatched() == ["a"] and d.attempt("a") == 2
    d.started("a")
    d.succeed("a", 1)
    assert d.state("a") is S.SUCCESS


# --------------------------------------------- attempts no worker ever started


def _start_timeout(retryable: bool = False) -> TaskFailed:
    info = failure("headwater.ScheduleToStartTimeout", "no worker started it", retryable=retryable)
    return TaskFailed("a", 1, info, never_started=True)


def test_an_attempt_no_worker_started_fails_from_scheduled_without_running() -> None:
    """A schedule_to_start_timeout: the host fails an attempt no worker took. The run
    never ran, so its history has no RUNNING and it has no attempt record (no start
    time, no duration); the attempt number stays used, as the host dispatched it."""
    d = Driver(flow(task("a", timeout=5), task("b", "a")), auto_start=False)
    d.clock.advance(30)
    event = _start_timeout()
    d.send(event)
    run = d.runs["a"]
    assert run.states == [S.PENDING, S.SCHEDULED, S.FAILED]
    assert run.attempts == [] and run.attempt == 1
    assert run.failure is event.failure and run.history[-1].failure is event.failure
    assert run.history[-1].attempt == 1
    assert d.engine.next_timer_at is None, "no task timeout armed for what never ran"
    assert d.engine.in_flight == 0
    assert d.state("b") is S.TRIGGER_FAILED
    assert d.engine.state is FlowRunState.FAILED
    (late,) = d.ignored(d.send(TaskSucceeded("a", 1, "late")))
    assert late.reason == (
        "stale attempt 1 of task run 'a': the attempt already ended FAILED; "
        "the flow run ended FAILED"
    )


def test_an_attempt_no_worker_started_is_not_retried_when_its_failure_is_not() -> None:
    d = Driver(flow(task("a", retry=RetrySpec(max_retries=2))), auto_start=False)
    d.send(_start_timeout(retryable=False))
    run = d.runs["a"]
    assert run.states == [S.PENDING, S.SCHEDULED, S.FAILED]
    assert run.retries_used == 0 and d.dispatched() == []


def test_an_attempt_no_worker_started_is_retried_when_its_failure_may_be() -> None:
    d = Driver(flow(task("a", retry=RetrySpec(max_retries=1))), auto_start=False)
    d.send(_start_timeout(retryable=True))
    assert d.dispatched() == ["a"] and d.attempt("a") == 2
    d.started("a")
    d.succeed("a", "ok")
    run = d.runs["a"]
    assert run.states == [S.PENDING, S.SCHEDULED, S.RETRYING, S.SCHEDULED, S.RUNNING, S.SUCCESS]
    assert [a.number for a in run.attempts] == [2] and run.retries_used == 1
    assert "attempt 1 failed" in run.history[2].message


def test_never_started_changes_nothing_for_an_attempt_that_started() -> None:
    """A host whose report crossed the worker's start: the attempt did run."""
    d = Driver(flow(task("a")), auto_start=False)
    d.started("a")
    d.send(_start_timeout())
    run = d.runs["a"]
    assert run.states == [S.PENDING, S.SCHEDULED, S.RUNNING, S.FAILED]
    assert [a.outcome for a in run.attempts] == [S.FAILED]


# ------------------------------------------------------------------ lost workers


def test_lost_worker_redispatches_without_using_a_retry() -> None:
    d = Driver(flow(task("a", timeout=10)))
    t0 = d.clock.now()
    d.clock.advance(4)
    d.lose("a")
    assert d.dispatched() == ["a"]
    rerun = d.run_task("a")
    assert rerun.attempt == 2 and rerun.deadline == t0 + 14
    run = d.runs["a"]
    assert run.states == [S.PENDING, S.SCHEDULED, S.RUNNING, S.SCHEDULED, S.RUNNING]
    assert run.retries_used == 0 and run.lost_count == 1
    assert run.attempts[0].outcome is S.CANCELLED
    assert run.attempts[0].failure is not None
    assert run.attempts[0].failure.type == "headwater.WorkerLost"
    (late,) = d.ignored(d.send(TaskSucceeded("a", 1, "late")))
    assert late.reason == (
        "stale attempt 1 of task run 'a': the attempt was lost (the worker session running "
        "it ended); attempt 2 replaced it"
    )
    # The first attempt's deadline (t0 + 10) no longer applies.
    assert d.tick(6) == []
    assert run.state is S.RUNNING
    d.succeed("a", "ok")
    assert run.state is S.SUCCESS


def test_lost_too_many_times_fails() -> None:
    d = Driver(flow(task("a", retry=RetrySpec(max_retries=5))), max_lost=2)
    d.lose("a")
    d.lose("a")
    assert d.state("a") is S.RUNNING and d.attempt("a") == 3
    d.lose("a")
    run = d.runs["a"]
    assert run.state is S.FAILED
    assert run.failure is not None and run.failure.type == "headwater.WorkerLost"
    assert "3 time(s)" in run.failure.message
    assert run.retries_used == 0
    assert d.engine.state is FlowRunState.FAILED


def test_a_report_about_an_attempt_lost_before_it_started_says_it_was_lost() -> None:
    """Without auto_start an attempt has no record until it starts (TaskStarted); a
    report about one whose worker was lost first is still refused as lost."""
    d = Driver(flow(task("a")), auto_start=False, max_lost=1)
    d.lose("a")
    lost = (
        "stale attempt 1 of task run 'a': "
        "the attempt was lost (the worker session running it ended)"
    )
    assert d.attempt("a") == 2, "dispatched again at once"
    (replaced,) = d.ignored(d.send(TaskSucceeded("a", 1, "late")))
    assert replaced.reason == f"{lost}; attempt 2 replaced it"
    d.lose("a")
    assert d.engine.state is FlowRunState.FAILED
    (ended,) = d.ignored(d.send(TaskSucceeded("a", 2, "late")))
    assert ended.reason == f"{lost.replace('attempt 1', 'attempt 2')}; the flow run ended FAILED"


def test_max_lost_zero_fails_on_the_first_loss() -> None:
    d = Driver(flow(task("a")), max_lost=0)
    d.lose("a")
    assert d.state("a") is S.FAILED
    assert d.in_flight == {}


def test_lost_and_failed_attempts_are_counted_separately() -> None:
    d = Driver(flow(task("a", retry=RetrySpec(max_retries=1))), max_lost=1)
    d.lose("a")
    d.fail("a")
    assert d.state("a") is S.RUNNING and d.attempt("a") == 3
    d.succeed("a", 3)
    outcomes = [a.outcome for a in d.runs["a"].attempts]
    assert outcomes == [S.CANCELLED, S.FAILED, S.SUCCESS]


# ------------------------------------------------------------ the run's own timeout


def test_a_run_over_its_timeout_cancels_what_is_unfinished_and_fails() -> None:
    """A top-level run given ``timeout`` (GraphSpec.timeout, passed by its host): at
    the deadline every unfinished task run is cancelled (running attempts told to
    stop) and the run ends FAILED saying why; what succeeded stays."""
    d = Driver(flow(task("a"), task("b"), task("c", "b")), timeout=30)
    t0 = d.clock.now()
    assert d.engine.next_timer_at == t0 + 30
    d.succeed("a", 1)
    assert d.tick(29.999) == []
    commands = d.tick(0.001)
    cancels = [c for c in commands if isinstance(c, CancelTask)]
    assert [(c.run.key, c.reason) for c in cancels] == [
        ("b", "the flow run exceeded its timeout of 30s")
    ]
    assert d.state("a") is S.SUCCESS
    assert d.state("b") is S.CANCELLED and d.state("c") is S.CANCELLED
    assert d.engine.state is FlowRunState.FAILED
    assert d.engine.flow_history[-1][2] == "the flow run exceeded its timeout of 30s"
    assert d.engine.timed_out == "the flow run exceeded its timeout of 30s"
    # What failed it: the task run it stopped while it ran first, then what was left.
    assert [(f.key, f.state) for f in d.engine.failed_runs()] == [
        ("b", S.CANCELLED),
        ("c", S.CANCELLED),
    ]
    assert d.engine.next_timer_at is None
    assert d.ignored(d.succeed("b", "late"))  # the stopped attempt's result is not taken


def test_a_run_that_ends_in_time_leaves_no_timer_and_a_child_run_has_none() -> None:
    d = Driver(flow(task("a")), timeout=30)
    d.succeed("a", 1)
    assert d.engine.state is FlowRunState.SUCCESS
    assert d.engine.next_timer_at is None
    assert d.tick(60) == []
    child = Driver(flow(task("a")))  # a host gives a child run no timeout of its own
    assert child.engine.next_timer_at is None
    with pytest.raises(ValueError, match="timeout must be > 0 seconds, got 0"):
        Driver(flow(task("a")), timeout=0, register=False)


def test_a_retried_run_gets_its_whole_timeout_again() -> None:
    d = Driver(flow(task("a"), task("b", "a")), timeout=10)
    d.tick(10)
    assert d.engine.state is FlowRunState.FAILED
    d.clock.advance(100)
    restart = d.send(RunRetried("again"))
    assert d.dispatched(restart) == ["a"]
    assert d.engine.timed_out is None and d.engine.interrupted == []
    assert d.engine.next_timer_at == d.clock.now() + 10
    d.succeed("a", 1)
    d.tick(9)
    d.succeed("b", 2)
    assert d.engine.state is FlowRunState.SUCCESS
    assert d.tick(10) == []


def test_a_timed_out_run_names_what_was_running_before_its_reference_tasks() -> None:
    """combine(quick(), slow()) over its timeout: the run was waiting for `slow`, which
    is named first (it named only `combine`, the returned task, which never ran)."""
    d = Driver(
        flow(task("quick"), task("slow"), task("combine", "quick", "slow"), reference=["combine"]),
        timeout=5,
    )
    d.succeed("quick", 1)
    d.tick(5)
    assert [(f.key, f.state) for f in d.engine.failed_runs()] == [
        ("slow", S.CANCELLED),
        ("combine", S.CANCELLED),
    ]


def test_attempts_given_back_count_no_loss_up_to_their_own_bound() -> None:
    """A worker stopping on purpose gives its attempts back (TaskCancelled unasked).
    Those counted as losses: a long task caught by four rolling restarts of the
    workers failed with headwater.WorkerLost. Give-backs now count on their own, up
    to MAX_GIVEN_BACK (a worker that gives back whatever it gets); losses still count
    towards max_lost, and a retry of the run starts both counts again."""
    d = Driver(flow(task("a")), max_lost=1)
    for _ in range(5):  # five rolling restarts
        d.send(TaskLost("a", d.attempt("a"), "the worker stopped", given_back=True))
    run = d.runs["a"]
    assert d.state("a") is S.RUNNING and d.attempt("a") == 6
    assert run.lost_count == 0
    assert run.attempts[-2].failure is not None
    assert run.attempts[-2].failure.message == "the worker stopped (5 time(s))"
    d.lose("a")  # a real loss still counts (max_lost=1: one is allowed)
    assert d.state("a") is S.RUNNING
    d.succeed("a", "ok")
    assert d.engine.state is FlowRunState.SUCCESS
    bounded = Driver(flow(task("b")), max_lost=0)
    for _ in range(MAX_GIVEN_BACK):
        bounded.send(TaskLost("b", bounded.attempt("b"), given_back=True))
    assert bounded.state("b") is S.RUNNING
    bounded.send(TaskLost("b", bounded.attempt("b"), given_back=True))
    failed = bounded.runs["b"]
    assert failed.state is S.FAILED and failed.failure is not None
    assert failed.failure.type == "headwater.WorkerLost"
    assert f"gave it back ({MAX_GIVEN_BACK + 1} time(s))" in failed.failure.message


def test_retries_at_the_cap_are_spread_below_it_not_sent_together() -> None:
    """A user trial: the jittered delay was capped again at max_retry_delay, so half
    of the retries that reached the cap waited exactly max_retry_delay (1000 runs: 500
    at 60 s). Rule 1 reflects a delay past the cap below it; rule 0, the journals
    written before it, keeps the old delays (they replay the same)."""
    from headwater.wire import RetrySpec
    from headwater_runtime.engine import DELAY_RULE, retry_delay

    policy = RetrySpec(max_retries=5, delay=60, backoff=2, max_delay=60, jitter=0.5)
    now = [retry_delay(policy, 3, "load", seed=f"run{i}") for i in range(1000)]
    assert DELAY_RULE == 1 and all(30 <= d <= 60 for d in now)
    assert sum(d == 60 for d in now) <= 1 and max(now) > 59 and min(now) < 31
    old = [retry_delay(policy, 3, "load", seed=f"run{i}", rule=0) for i in range(1000)]
    assert all(30 <= d <= 60 for d in old) and sum(d == 60 for d in old) > 400
    # below the cap, both rules give the same delays
    low = RetrySpec(max_retries=5, delay=1, backoff=2, max_delay=60, jitter=0.5)
    assert [retry_delay(low, 2, "k", f"r{i}") for i in range(50)] == [
        retry_delay(low, 2, "k", f"r{i}", rule=0) for i in range(50)
    ]
