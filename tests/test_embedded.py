"""The embedded host on real threads: parallelism, limits, timeouts of stuck tasks,
cancellation (from another thread and Ctrl-C), caching across runs, identity of
values, skips and branches, and how failures reach the caller.

Every wait is bounded: events and barriers have timeouts, runs that could hang are run
on a helper thread joined with a deadline.
"""

from __future__ import annotations

import _thread
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from headwater import (
    FlowRunCancelled,
    FlowRunFailed,
    FlowRunState,
    Skip,
    TaskRunState,
    ThreadExecutor,
    case,
    flow,
    merge,
    task,
    unmapped,
)
from headwater._run import FlowRun
from headwater_runtime.embedded import PROCESS_CACHE, EmbeddedRun

S = TaskRunState
BOUND = 20.0  # seconds: far beyond what any of these runs needs


def bounded(fn: Callable[[], Any], timeout: float = BOUND) -> Any:
    """Call ``fn`` on a helper thread; fail the test if it has not returned in time."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"did not return within {timeout}s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def poll(condition: Callable[[], bool], timeout: float = BOUND, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


# ------------------------------------------------------------------ parallelism


def test_independent_tasks_run_in_parallel() -> None:
    barrier = threading.Barrier(2, timeout=BOUND)

    @task
    def meet(i: int) -> int:
        barrier.wait()  # only returns when the other task is running too
        return i

    @flow
    def both() -> list[int]:
        return [meet(0), meet(1)]

    run = bounded(lambda: both.run(max_workers=2))
    assert run.state is FlowRunState.SUCCESS, run.failures
    assert run.result == [0, 1]


def test_max_concurrency_one_serialises_tasks() -> None:
    lock = threading.Lock()
    inside = 0
    most = 0

    @task
    def work(i: int) -> int:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        # Give any task that would (wrongly) run alongside this one a chance to start.
        time.sleep(0.02)
        with lock:
            inside -= 1
        return i

    @flow
    def wide() -> list[int]:
        return work.map(list(range(6)))

    run = bounded(lambda: wide.run(max_workers=4, max_concurrency=1))
    assert run.state is FlowRunState.SUCCESS
    assert run.result == list(range(6))
    assert most == 1
    starts = sorted(run.task_run(f"work[{i}]").started_at for i in range(6))
    ends = sorted(run.task_run(f"work[{i}]").ended_at for i in range(6))
    assert all(end <= start for end, start in zip(ends, starts[1:], strict=False))


def test_embedded_run_limits_to_the_smaller_of_pool_and_max_concurrency() -> None:
    @task
    def one() -> int:
        return 1

    @flow
    def f() -> int:
        return one()

    assert EmbeddedRun(f.graph(), executor=ThreadExecutor(3)).engine.max_concurrency == 3
    limited = EmbeddedRun(f.graph(), executor=ThreadExecutor(3), max_concurrency=2)
    assert limited.engine.max_concurrency == 2
    assert limited.run().state is FlowRunState.SUCCESS


# --------------------------------------------------------------------- timeouts


def test_stuck_task_times_out_and_is_interrupted() -> None:
    stop = threading.Event()
    exited = threading.Event()

    @task(timeout=0.2)
    def spin() -> None:
        try:
            n = 0
            while not stop.is_set():  # pure Python: the interruption lands here
                n += 1
        finally:
            exited.set()

    @task
    def after(x: None) -> str:
        return "never"

    @flow
    def stuck() -> str:
        return after(spin())

    executor = ThreadExecutor(2)
    try:
        run = bounded(lambda: stuck.run(executor=executor))
        assert run.state is FlowRunState.FAILED
        spun = run.task_run("spin")
        assert spun.state is S.TIMED_OUT
        assert spun.failure is not None and spun.failure.timed_out
        assert run.task_run("after").state is S.TRIGGER_FAILED
        assert run.failures[0].key == "spin"
        assert exited.wait(BOUND), "the stuck thread was never interrupted"
        assert not stop.is_set()
        assert executor.interrupted == 1
    finally:
        stop.set()


def test_task_blocked_in_a_c_call_times_out_and_the_pool_keeps_its_size() -> None:
    release = threading.Event()
    seen: list[type[BaseException]] = []

    @task(timeout=0.2)
    def blocked() -> str:
        try:
            release.wait(BOUND)  # a C call: the interruption lands when it returns
            return "late"
        except BaseException as exc:
            seen.append(type(exc))
            raise

    @task(trigger="all_finished")
    def next_one(x: str) -> str:
        return f"ran after {x}"

    @flow
    def f() -> str:
        return next_one(blocked())

    executor = ThreadExecutor(1)
    try:
        # One thread, stuck: the second task can only run on the replacement thread.
        run = bounded(lambda: f.run(executor=executor))
        assert run.task_run("blocked").state is S.TIMED_OUT
        assert run.task_run("next_one").state is S.SUCCESS
        # Only the returned task is a reference task, and it succeeded.
        assert run.state is FlowRunState.SUCCESS
        assert run.result == "ran after None"
        assert seen == []
    finally:
        release.set()
    poll(lambda: bool(seen), what="the blocked thread to be interrupted")
    assert seen[0].__name__ == "TaskInterrupted"
    assert run.task_run("blocked").result is None, "its late result is refused"


def test_retry_after_timeout_succeeds() -> None:
    stop = threading.Event()
    attempts = 0

    @task(timeout=0.2, retries=1)
    def sometimes_stuck() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            while not stop.is_set():
                pass
        return "done"

    @flow
    def f() -> str:
        return sometimes_stuck()

    try:
        run = bounded(lambda: f.run(max_workers=1))
    finally:
        stop.set()
    assert run.state is FlowRunState.SUCCESS
    assert run.result == "done"
    record = run.task_run("sometimes_stuck")
    assert [a.outcome for a in record.attempts] == [S.TIMED_OUT, S.SUCCESS]
    assert S.RETRYING in record.states


# ------------------------------------------------------------------- cancellation


def test_cancel_from_another_thread_cancels_running_and_pending_tasks() -> None:
    started = threading.Event()
    release = threading.Event()
    interrupted = threading.Event()
    ran_after = threading.Event()

    @task
    def block() -> int:
        started.set()
        try:
            while not release.wait(0.01):
                pass
        except BaseException:
            interrupted.set()
            raise
        return 1

    @task
    def after(x: int) -> int:
        ran_after.set()
        return x

    @flow
    def f() -> int:
        return after(block())

    embedded = EmbeddedRun(f.graph(), executor=ThreadExecutor(2))
    canceller = threading.Thread(
        target=lambda: started.wait(BOUND) and embedded.cancel("user said stop")
    )
    canceller.start()
    try:
        engine = bounded(embedded.run)
    finally:
        canceller.join(BOUND)
        release.set()
    assert engine.state is FlowRunState.CANCELLED
    assert engine.runs["block"].state is S.CANCELLED
    assert engine.runs["after"].state is S.CANCELLED
    assert engine.flow_history[-1][2] == "user said stop"
    assert interrupted.wait(BOUND), "the running task was interrupted"
    assert not ran_after.is_set()
    with pytest.raises(FlowRunCancelled):
        FlowRun.from_engine(embedded.id, engine).raise_for_state()


def test_cancel_before_run_cancels_the_run() -> None:
    @task
    def t() -> int:
        return 1

    @flow
    def f() -> int:
        return t()

    embedded = EmbeddedRun(f.graph(), executor=ThreadExecutor(1))
    embedded.cancel("changed my mind")
    engine = bounded(embedded.run)
    assert engine.state is FlowRunState.CANCELLED
    assert engine.runs["t"].state is S.CANCELLED
    # The task may have been handed to a thread before the request was read; it must
    # not have produced a result.
    assert engine.runs["t"].result is None


def _interrupting_flow() -> tuple[Any, threading.Event]:
    release = threading.Event()

    @task
    def press_ctrl_c() -> int:
        _thread.interrupt_main()  # as if the user pressed Ctrl-C
        deadline = time.monotonic() + BOUND
        while not release.wait(0.01) and time.monotonic() < deadline:
            pass
        return 1

    @task
    def later(x: int) -> int:
        return x

    @flow
    def interrupted_flow() -> int:
        return later(press_ctrl_c())

    return interrupted_flow, release


def test_ctrl_c_cancels_the_run() -> None:
    f, release = _interrupting_flow()
    try:
        run = f.run(max_workers=2)
    except KeyboardInterrupt:  # pragma: no cover - the behaviour under test failed
        pytest.fail("KeyboardInterrupt escaped the embedded run")
    finally:
        release.set()
    assert run.state is FlowRunState.CANCELLED
    assert run.task_run("press_ctrl_c").state is S.CANCELLED
    assert run.task_run("later").state is S.CANCELLED
    assert "interrupted" in run.message


def test_ctrl_c_makes_the_flow_call_raise_flow_run_cancelled() -> None:
    f, release = _interrupting_flow()
    try:
        with pytest.raises(FlowRunCancelled) as info:
            f()
    except KeyboardInterrupt:  # pragma: no cover - the behaviour under test failed
        pytest.fail("KeyboardInterrupt escaped the embedded run")
    finally:
        release.set()
    assert isinstance(info.value, FlowRunFailed)
    assert info.value.flow_run.state.name == "CANCELLED"


# ------------------------------------------------------------------------ caching


def test_results_are_cached_across_runs_in_one_process() -> None:
    calls: list[int] = []

    @task(cache_for=3600)
    def expensive(x: int) -> dict[str, int]:
        calls.append(x)
        return {"x": x}

    @flow
    def f(x: int = 3) -> dict[str, int]:
        return expensive(x)

    first = f.run()
    second = f.run()
    assert first.task_run("expensive").state is S.SUCCESS
    assert second.task_run("expensive").state is S.CACHED
    assert calls == [3]
    assert second.result == {"x": 3}
    assert second.result is first.result, "the cached object itself, not a copy"
    third = f.run(x=4)
    assert third.task_run("expensive").state is S.SUCCESS
    assert calls == [3, 4]
    assert len(PROCESS_CACHE) == 2


def test_cache_key_fn_decides_what_counts_as_the_same_call() -> None:
    calls: list[int] = []

    @task(cache_key_fn=lambda inputs: f"parity-{inputs['x'] % 2}")
    def parity(x: int) -> str:
        calls.append(x)
        return "odd" if x % 2 else "even"

    @flow
    def f(x: int) -> str:
        return parity(x)

    assert f(x=1) == "odd"
    assert f(x=3) == "odd"
    assert f(x=2) == "even"
    assert calls == [1, 2]


def test_a_failing_cache_key_fn_runs_the_task_uncached_with_a_warning() -> None:
    calls: list[int] = []

    def bad_key(inputs: dict[str, Any]) -> str:
        raise RuntimeError("no key today")

    @task(cache_key_fn=bad_key)
    def t(x: int) -> int:
        calls.append(x)
        return x

    @flow
    def f() -> int:
        return t(1)

    for _ in range(2):
        with pytest.warns(RuntimeWarning, match="could not compute a cache key"):
            assert f() == 1
    assert calls == [1, 1]


def test_cache_entries_expire() -> None:
    calls: list[int] = []

    @task(cache_for=0.2)
    def short_lived() -> int:
        calls.append(1)
        return len(calls)

    @flow
    def f() -> int:
        return short_lived()

    first = f.run()
    assert first.result == 1
    key = first.task_run("short_lived").cache_key
    assert key
    entry = PROCESS_CACHE.get(key)
    assert entry is not None and entry.expires_at is not None
    expires_at = entry.expires_at
    poll(lambda: time.time() > expires_at, what="the cache entry to expire")
    second = f.run()
    assert second.task_run("short_lived").state is S.SUCCESS
    assert second.result == 2
    assert calls == [1, 1]


# ------------------------------------------------------------------- identity


def test_values_pass_between_tasks_without_copies() -> None:
    produced: list[Any] = []
    seen: dict[str, Any] = {}
    each_seen: list[tuple[Any, Any]] = []
    config = {"threshold": 3}

    @task
    def make() -> list[dict[str, int]]:
        value = [{"i": i} for i in range(3)]
        produced.append(value)
        return value

    @task
    def use(rows: list[dict[str, int]], cfg: dict[str, int]) -> None:
        seen["use"] = (rows, cfg)

    @task
    def each(row: dict[str, int], cfg: dict[str, int]) -> dict[str, int]:
        each_seen.append((row, cfg))
        return row

    @task
    def gather(rows: list[dict[str, int]]) -> list[dict[str, int]]:
        seen["gather"] = rows
        return rows

    @flow
    def f() -> list[dict[str, int]]:
        rows = make()
        use(rows, config)
        return gather(each.map(rows, unmapped(config)))

    result = f()
    (value,) = produced
    rows, cfg = seen["use"]
    assert rows is value, "a downstream task gets the object its upstream returned"
    assert cfg is config, "a constant from the flow body is passed as is"
    assert sorted(id(row) for row, _ in each_seen) == sorted(id(v) for v in value)
    assert all(cfg is config for _, cfg in each_seen)
    assert all(a is b for a, b in zip(seen["gather"], value, strict=True))
    assert result is seen["gather"], "the flow returns the very object"


# --------------------------------------------------------------- skips, branches


def test_skip_raised_or_returned() -> None:
    @task
    def maybe(mode: str) -> str:
        if mode == "raise":
            raise Skip("nothing to do")
        if mode == "return":
            return Skip("returned a skip")  # type: ignore[return-value]
        return mode

    @task
    def downstream(x: str) -> str:
        return x

    @task(trigger="all_finished")
    def always(x: str) -> str:
        return f"saw {x}"

    @flow
    def f(mode: str) -> str:
        m = maybe(mode)
        downstream(m)
        return always(m)

    for mode, reason in (("raise", "nothing to do"), ("return", "returned a skip")):
        run = f.run(mode=mode)
        assert run.state.name == "SUCCESS"
        record = run.task_run("maybe")
        assert record.state is S.SKIPPED
        assert record.history[-1].message == reason
        assert run.task_run("downstream").state is S.SKIPPED
        assert run.result == "saw None"
    assert f(mode="go") == "saw go"


def test_case_and_merge_take_one_branch() -> None:
    ran: list[str] = []

    @task
    def size(n: int) -> str:
        return "big" if n > 10 else "small"

    @task
    def handle_big(n: int) -> str:
        ran.append("big")
        return f"{n} is big"

    @task
    def handle_small(n: int) -> str:
        ran.append("small")
        return f"{n} is small"

    @flow
    def branch(n: int) -> str:
        kind = size(n)
        with case(kind, "big"):
            big = handle_big(n)
        with case(kind, "small"):
            small = handle_small(n)
        return merge(big, small)

    assert branch(n=20) == "20 is big"
    assert ran == ["big"]
    run = branch.run(n=1)
    assert run.result == "1 is small"
    assert ran == ["big", "small"]
    assert run.task_run("handle_big").state is S.SKIPPED
    assert run.task_run("handle_small").state is S.SUCCESS
    assert run.state.name == "SUCCESS"


# ---------------------------------------------------------------------- failures


def test_flow_call_raises_flow_run_failed_chained_to_the_task_error() -> None:
    @task
    def fine() -> int:
        return 1

    @task
    def broken(x: int) -> int:
        raise ValueError(f"bad input {x}")

    @flow
    def f() -> int:
        return broken(fine())

    with pytest.raises(FlowRunFailed) as info:
        f()
    error = info.value
    assert not isinstance(error, FlowRunCancelled)
    assert "broken" in str(error) and "bad input 1" in str(error)
    assert isinstance(error.__cause__, ValueError)
    assert str(error.__cause__) == "bad input 1"
    assert error.flow_run.state.name == "FAILED"
    assert [f.key for f in error.flow_run.failures] == ["broken"]
    failure = error.flow_run.failures[0].failure
    assert failure is not None and failure.type == "builtins.ValueError"
    assert "ValueError" in failure.traceback


def test_successful_flow_run_reports_its_state_and_task_runs() -> None:
    @task
    def double(x: int) -> int:
        return 2 * x

    @flow
    def f(x: int = 2) -> int:
        return double(x)

    run = f.run()
    assert run.state.name == "SUCCESS"
    assert run.ok and run.result == 4 and run.failures == []
    assert run.parameters == {"x": 2}
    assert run.task_run("double").states == [S.PENDING, S.SCHEDULED, S.RUNNING, S.SUCCESS]
    with pytest.raises(KeyError, match="no task run 'nope'"):
        run.task_run("nope")
    assert f(x=5) == 10


def test_no_retry_on_matches_subclasses() -> None:
    attempts = 0

    @task(retries=3, no_retry_on=[LookupError])
    def lookup() -> int:
        nonlocal attempts
        attempts += 1
        raise KeyError("missing")

    @flow
    def f() -> int:
        return lookup()

    run = f.run()
    assert run.state is FlowRunState.FAILED
    assert attempts == 1


def test_etl_with_a_flaky_step_and_cleanup_after_a_failure() -> None:
    first_call: set[int] = set()
    lock = threading.Lock()
    cleaned = threading.Event()

    @task
    def extract(n: int) -> list[int]:
        return list(range(n))

    @task(retries=2, retry_delay=0.01, backoff=2.0)
    def transform(x: int) -> int:
        with lock:
            first = x not in first_call
            first_call.add(x)
        if first and x % 2 == 0:
            raise ConnectionError(f"flaky for {x}")
        return x * 10

    @task
    def load(values: list[int], fail: bool) -> int:
        if fail:
            raise OSError("warehouse is down")
        return sum(values)

    @task(trigger="all_finished")
    def cleanup() -> str:
        cleaned.set()
        return "cleaned"

    @flow
    def etl(n: int = 4, fail: bool = False) -> int:
        loaded = load(transform.map(extract(n)), fail)
        cleanup(wait_for=[loaded])
        return loaded

    assert etl(n=4) == 60
    first_call.clear()
    run = etl.run(n=4, fail=True)
    assert run.state is FlowRunState.FAILED
    for i in range(4):
        record = run.task_run(f"transform[{i}]")
        assert record.state is S.SUCCESS
        assert (S.RETRYING in record.states) == (i % 2 == 0)
    assert run.task_run("load").state is S.FAILED
    assert run.task_run("cleanup").state is S.SUCCESS
    assert cleaned.is_set()
    assert [f.key for f in run.failures] == ["load"]
    with pytest.raises(FlowRunFailed, match="load"):
        run.raise_for_state()
