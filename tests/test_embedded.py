"""The embedded host on every executor (a thread pool, a real Dask LocalCluster):
parallelism, limits, timeouts of stuck tasks, cancellation (from another thread and
Ctrl-C), skips and branches, and how failures reach the caller. Caching and how values
pass between tasks: test_embedded_values.py.

Each test runs once per executor (the ``backend`` fixture). Task functions may run in
Dask worker processes, so they signal through files (``Probe``), never through objects
of the test process. Every wait is bounded: probes are polled with a deadline, runs
that could hang are run on a helper thread joined with a deadline.
"""

from __future__ import annotations

import _thread
import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from _backends import BOUND, Backend, Probe, StoppedClock, bounded, poll

from headwater import (
    FlowRunCancelled,
    FlowRunFailed,
    FlowRunInterrupted,
    FlowRunState,
    Skip,
    TaskRunState,
    case,
    flow,
    merge,
    task,
    unmapped,
)
from headwater._run import FlowRun
from headwater_runtime.embedded import EmbeddedRun, SystemClock

S = TaskRunState


@pytest.fixture
def probe(tmp_path: Path) -> Probe:
    return Probe(tmp_path)


# ------------------------------------------------------------------ parallelism


def test_independent_tasks_run_in_parallel(backend: Backend, probe: Probe) -> None:
    @task
    def meet(i: int) -> int:
        probe.set(f"arrived-{i}")
        # Only returns when the other task is running too.
        assert probe.wait(f"arrived-{1 - i}"), "the other task did not run alongside"
        return i

    @flow
    def both() -> list[int]:
        return [meet(0), meet(1)]

    run = bounded(lambda: both.run(executor=backend.executor(2)))
    assert run.state is FlowRunState.SUCCESS, run.failures
    assert run.result == [0, 1]


def test_max_concurrency_one_serialises_tasks(backend: Backend, probe: Probe) -> None:
    inside = probe.root / "inside"

    @task
    def work(i: int) -> int:
        try:
            os.close(os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            probe.add("overlaps", i)  # another task is running at the same time
            return i
        # Give any task that would (wrongly) run alongside this one a chance to start.
        time.sleep(0.02)
        os.remove(inside)
        return i

    @flow
    def wide() -> list[int]:
        return work.map(list(range(6)))

    run = bounded(lambda: wide.run(executor=backend.executor(4), max_concurrency=1))
    assert run.state is FlowRunState.SUCCESS
    assert run.result == list(range(6))
    assert probe.items("overlaps") == []
    starts = sorted(run.task_run(f"work[{i}]").started_at for i in range(6))
    ends = sorted(run.task_run(f"work[{i}]").ended_at for i in range(6))
    assert all(end <= start for end, start in zip(ends, starts[1:], strict=False))


def test_embedded_run_limits_to_the_smaller_of_pool_and_max_concurrency(
    backend: Backend,
) -> None:
    @task
    def one() -> int:
        return 1

    @flow
    def f() -> int:
        return one()

    executor = backend.executor(3)
    # Dask: a multiple of the cluster's 4 threads (attempts queue in Dask, see slots).
    assert executor.slots == (4 * executor.attempts_per_thread if backend.remote else 3)
    assert EmbeddedRun(f.graph(), executor=executor).engine.max_concurrency == executor.slots
    limited = EmbeddedRun(f.graph(), executor=backend.executor(3), max_concurrency=2)
    assert limited.engine.max_concurrency == 2
    assert limited.run().state is FlowRunState.SUCCESS


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_concurrency", "2"), ("max_concurrency", 0), ("max_workers", 1.5), ("max_workers", True)],
)
def test_a_bad_pool_or_concurrency_size_is_one_clear_error(option: str, value: Any) -> None:
    @task
    def one() -> int:
        return 1

    @flow
    def sized() -> int:
        return one()

    with pytest.raises(ValueError, match=rf"^flow 'sized': {option} must be an int >= 1, got "):
        sized.run(**{option: value})


# --------------------------------------------------------------------- timeouts


def test_stuck_task_times_out_and_is_interrupted(backend: Backend, probe: Probe) -> None:
    @task(timeout=0.2)
    def spin() -> None:
        try:
            n = 0
            while not probe.is_set("stop"):  # Python code: the interruption lands here
                n += 1
        finally:
            probe.set("exited")

    @task
    def after(x: None) -> str:
        return "never"

    @flow
    def stuck() -> str:
        return after(spin())

    executor = backend.executor(2)
    try:
        run = bounded(lambda: stuck.run(executor=executor))
        assert run.state is FlowRunState.FAILED
        spun = run.task_run("spin")
        assert spun.state is S.TIMED_OUT
        assert spun.failure is not None and spun.failure.timed_out
        assert run.task_run("after").state is S.TRIGGER_FAILED
        assert run.failures[0].key == "spin"
        assert probe.wait("exited"), "the stuck task was never interrupted"
        assert not probe.is_set("stop")
        # Dask: interrupted by the engine's timer (a cancel) or by the worker's own
        # watchdog, whichever comes first; the worker's report may still be on its way.
        poll(lambda: executor.interrupted == 1, what="the interruption to be counted")
        assert executor.interrupted == 1
    finally:
        probe.set("stop")


def _release(fifo: Path) -> None:
    """Make a reader blocked opening ``fifo`` return (if there is one)."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError as exc:
        if exc.errno != errno.ENXIO:  # ENXIO: nobody is reading (never started)
            raise


def test_task_blocked_in_a_c_call_times_out_and_the_pool_keeps_its_size(
    backend: Backend, probe: Probe
) -> None:
    fifo = probe.root / "fifo"
    os.mkfifo(fifo)

    @task(timeout=0.2)
    def blocked() -> str:
        try:
            # A C call: opening a FIFO blocks until a writer opens it; an
            # interruption only lands when it returns.
            with open(fifo) as f:
                f.read()
            return "late"
        except BaseException as exc:
            probe.add("seen", type(exc).__name__)
            raise

    @task(trigger="all_finished")
    def next_one(x: str) -> str:
        return f"ran after {x}"

    @flow
    def f() -> str:
        return next_one(blocked())

    # Threads: one thread, stuck, so the second task can only run on the replacement.
    try:
        run = bounded(lambda: f.run(executor=backend.executor(1)))
        assert run.task_run("blocked").state is S.TIMED_OUT
        assert run.task_run("next_one").state is S.SUCCESS
        # Only the returned task is a reference task, and it succeeded.
        assert run.state is FlowRunState.SUCCESS
        assert run.result == "ran after None"
        assert probe.items("seen") == []
    finally:
        _release(fifo)
    poll(lambda: bool(probe.items("seen")), what="the blocked task to be interrupted")
    assert probe.items("seen") == ["TaskInterrupted"]
    assert run.task_run("blocked").result is None, "its late result is refused"


def test_retry_after_timeout_succeeds(
    backend: Backend, probe: Probe, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The engine's clock stands still: the first attempt moves it past its deadline
    # (on Dask its worker's watchdog times it out: that clock is real), and the second
    # is never cut off, however slowly a loaded machine runs or reports it (with a
    # real 0.2 s, the second attempt's result had to be back within 0.2 s of its start).
    clock = StoppedClock()
    monkeypatch.setattr(SystemClock, "now", clock.now)

    @task(timeout=0.2, retries=1)
    def sometimes_stuck() -> str:
        probe.add("attempts", 1)
        if probe.count("attempts") == 1:
            clock.advance(1.0)
            while not probe.is_set("stop"):
                pass
        return "done"

    @flow
    def f() -> str:
        return sometimes_stuck()

    try:
        run = bounded(lambda: f.run(executor=backend.executor(1)))
    finally:
        probe.set("stop")
    assert run.state is FlowRunState.SUCCESS
    assert run.result == "done"
    record = run.task_run("sometimes_stuck")
    assert [a.outcome for a in record.attempts] == [S.TIMED_OUT, S.SUCCESS]
    assert S.RETRYING in record.states


# ------------------------------------------------------------------- cancellation


def test_cancel_from_another_thread_cancels_running_and_pending_tasks(
    backend: Backend, probe: Probe
) -> None:
    @task
    def block() -> int:
        probe.set("started")
        try:
            while not probe.is_set("release"):
                time.sleep(0.01)
        except BaseException:
            probe.set("interrupted")
            raise
        return 1

    @task
    def after(x: int) -> int:
        probe.set("ran_after")
        return x

    @flow
    def f() -> int:
        return after(block())

    embedded = EmbeddedRun(f.graph(), executor=backend.executor(2))
    canceller = threading.Thread(
        target=lambda: probe.wait("started") and embedded.cancel("user said stop")
    )
    canceller.start()
    try:
        engine = bounded(embedded.run)
    finally:
        canceller.join(BOUND)
    try:
        assert engine.state is FlowRunState.CANCELLED
        assert engine.runs["block"].state is S.CANCELLED
        assert engine.runs["after"].state is S.CANCELLED
        assert engine.flow_history[-1][2] == "user said stop"
        assert probe.wait("interrupted"), "the running task was interrupted"
        assert not probe.is_set("ran_after")
        with pytest.raises(FlowRunCancelled):
            FlowRun.from_engine(embedded.id, engine).raise_for_state()
    finally:
        probe.set("release")


def test_cancel_before_run_cancels_the_run(backend: Backend) -> None:
    @task
    def t() -> int:
        return 1

    @flow
    def f() -> int:
        return t()

    embedded = EmbeddedRun(f.graph(), executor=backend.executor(1))
    embedded.cancel("changed my mind")
    engine = bounded(embedded.run)
    assert engine.state is FlowRunState.CANCELLED
    assert engine.runs["t"].state is S.CANCELLED
    # The task may have been handed to a thread before the request was read; it must
    # not have produced a result.
    assert engine.runs["t"].result is None


def _interrupting_flow(probe: Probe) -> tuple[Any, threading.Thread]:
    """A flow, and a thread that presses Ctrl-C (interrupts the main thread, which
    runs the flow) once its first task is running."""

    @task
    def wait_for_ctrl_c() -> int:
        probe.set("started")
        deadline = time.monotonic() + BOUND
        while not probe.is_set("release") and time.monotonic() < deadline:
            time.sleep(0.01)
        return 1

    @task
    def later(x: int) -> int:
        return x

    @flow
    def interrupted_flow() -> int:
        return later(wait_for_ctrl_c())

    presser = threading.Thread(
        target=lambda: probe.wait("started") and _thread.interrupt_main(), daemon=True
    )
    return interrupted_flow, presser


def test_ctrl_c_cancels_the_run_then_raises_flow_run_interrupted(
    backend: Backend, probe: Probe
) -> None:
    """The run is cancelled and ends, then the interrupt goes on: a KeyboardInterrupt
    holding the run (it returned the CANCELLED run, so a loop of runs, a notebook cell,
    went on with the next: a notebook trial)."""
    f, presser = _interrupting_flow(probe)
    presser.start()
    try:
        with pytest.raises(FlowRunInterrupted) as info:
            f.run(executor=backend.executor(2))
    finally:
        probe.set("release")
        presser.join(BOUND)
    assert isinstance(info.value, KeyboardInterrupt)
    assert not isinstance(info.value, Exception)  # (`except Exception` lets it through)
    run = info.value.flow_run
    assert run.state is FlowRunState.CANCELLED
    assert run.task_run("wait_for_ctrl_c").state is S.CANCELLED
    assert run.task_run("later").state is S.CANCELLED
    assert "interrupted" in run.message
    assert str(info.value) == (
        "flow run of 'interrupted_flow' interrupted: cancelled (interrupted (Ctrl-C))"
    )


def test_ctrl_c_stops_a_loop_of_flow_calls_even_inside_except_exception(
    backend: Backend, probe: Probe
) -> None:
    f, presser = _interrupting_flow(probe)
    presser.start()
    calls = 0
    try:
        with pytest.raises(FlowRunInterrupted) as info:
            for _ in range(3):
                calls += 1
                try:
                    f(executor=backend.executor(2))
                except Exception:  # pragma: no cover - the behaviour under test failed
                    pytest.fail("the interrupt was caught as an Exception")
    finally:
        probe.set("release")
        presser.join(BOUND)
    assert calls == 1
    assert info.value.flow_run.state.name == "CANCELLED"


# --------------------------------------------------------------- skips, branches


def test_skip_raised_or_returned(backend: Backend) -> None:
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

    executor = backend.executor()
    for mode, reason in (("raise", "nothing to do"), ("return", "returned a skip")):
        run = f.run(mode=mode, executor=executor)
        assert run.state.name == "SUCCESS"
        record = run.task_run("maybe")
        assert record.state is S.SKIPPED
        assert record.history[-1].message == reason
        assert run.task_run("downstream").state is S.SKIPPED
        assert run.result == "saw None"
    assert f(mode="go", executor=executor) == "saw go"  # type: ignore[call-arg]


def test_case_and_merge_take_one_branch(backend: Backend, probe: Probe) -> None:
    @task
    def size(n: int) -> str:
        return "big" if n > 10 else "small"

    @task
    def handle_big(n: int) -> str:
        probe.add("ran", "big")
        return f"{n} is big"

    @task
    def handle_small(n: int) -> str:
        probe.add("ran", "small")
        return f"{n} is small"

    @flow
    def branch(n: int) -> str:
        kind = size(n)
        with case(kind, "big"):
            big = handle_big(n)
        with case(kind, "small"):
            small = handle_small(n)
        return merge(big, small)

    executor = backend.executor()
    assert branch(n=20, executor=executor) == "20 is big"  # type: ignore[call-arg]
    assert probe.items("ran") == ["big"]
    run = branch.run(n=1, executor=executor)
    assert run.result == "1 is small"
    assert probe.items("ran") == ["big", "small"]
    assert run.task_run("handle_big").state is S.SKIPPED
    assert run.task_run("handle_small").state is S.SUCCESS
    assert run.state.name == "SUCCESS"


# ---------------------------------------------------------------------- failures


def test_flow_call_raises_flow_run_failed_chained_to_the_task_error(backend: Backend) -> None:
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
        f(executor=backend.executor())  # type: ignore[call-arg]
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
    assert "in broken" in failure.traceback, "the traceback shows the task's own frame"


def test_an_exception_whose_str_raises_fails_its_task_run(backend: Backend) -> None:
    """A task's exception whose ``__str__`` raises: its task run FAILED with what
    Python's own tracebacks say for it (the thread describing the failure died on it,
    and the run waited for the attempt forever)."""

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("str exploded")

    @task
    def odd() -> int:
        raise Unprintable()

    @flow
    def f() -> int:
        return odd()

    run = f.run(executor=backend.executor())
    assert run.state is FlowRunState.FAILED
    (failed,) = run.failures
    assert failed.failure is not None
    assert failed.failure.type.endswith("Unprintable")
    assert failed.failure.message == "<exception str() failed>"
    assert "in odd" in failed.failure.traceback


def test_a_failure_of_the_hosts_own_around_a_task_fails_it_rather_than_the_run_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An error of the embedded host's own while it runs a task or describes its outcome
    (a bug; a task's exception whose ``__str__`` raised was one) fails the attempt: the
    thread died on it and the run waited for good."""
    from headwater_runtime.embedded import _threads

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("describing the outcome broke")

    @task
    def fine() -> int:
        return 1

    @flow
    def f() -> int:
        return fine()

    monkeypatch.setattr(_threads, "execute", broken)
    run = f.run()
    assert run.state is FlowRunState.FAILED
    (failed,) = run.failures
    assert failed.failure is not None
    assert (failed.failure.type, failed.failure.message) == (
        "builtins.RuntimeError",
        "describing the outcome broke",
    )


def test_successful_flow_run_reports_its_state_and_task_runs(backend: Backend) -> None:
    @task
    def double(x: int) -> int:
        return 2 * x

    @flow
    def f(x: int = 2) -> int:
        return double(x)

    executor = backend.executor()
    run = f.run(executor=executor)
    assert run.state.name == "SUCCESS"
    assert run.ok and run.result == 4 and run.failures == []
    assert run.parameters == {"x": 2}
    assert run.task_run("double").states == [S.PENDING, S.SCHEDULED, S.RUNNING, S.SUCCESS]
    with pytest.raises(KeyError, match="no task run 'nope'"):
        run.task_run("nope")
    assert f(x=5, executor=executor) == 10  # type: ignore[call-arg]


def test_no_retry_on_matches_subclasses(backend: Backend, probe: Probe) -> None:
    @task(retries=3, no_retry_on=[LookupError])
    def lookup() -> int:
        probe.add("attempts", 1)
        raise KeyError("missing")

    @flow
    def f() -> int:
        return lookup()

    run = f.run(executor=backend.executor())
    assert run.state is FlowRunState.FAILED
    assert probe.count("attempts") == 1


def test_etl_with_a_flaky_step_and_cleanup_after_a_failure(backend: Backend, probe: Probe) -> None:
    @task
    def extract(n: int) -> list[int]:
        return list(range(n))

    @task(retries=2, retry_delay=0.01, backoff=2.0)
    def transform(x: int, round_: int) -> int:
        first = not probe.is_set(f"seen-{round_}-{x}")
        probe.set(f"seen-{round_}-{x}")
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
        probe.set("cleaned")
        return "cleaned"

    @flow
    def etl(n: int = 4, fail: bool = False, round_: int = 0) -> int:
        loaded = load(transform.map(extract(n), unmapped(round_)), fail)
        cleanup(wait_for=[loaded])
        return loaded

    executor = backend.executor()
    assert etl(n=4, executor=executor) == 60  # type: ignore[call-arg]
    run = etl.run(n=4, fail=True, round_=1, executor=executor)
    assert run.state is FlowRunState.FAILED
    for i in range(4):
        record = run.task_run(f"transform[{i}]")
        assert record.state is S.SUCCESS
        assert (S.RETRYING in record.states) == (i % 2 == 0)
    assert run.task_run("load").state is S.FAILED
    assert run.task_run("cleanup").state is S.SUCCESS
    assert probe.is_set("cleaned")
    assert [f.key for f in run.failures] == ["load"]
    with pytest.raises(FlowRunFailed, match="load"):
        run.raise_for_state()


def test_a_failed_tasks_exception_starts_at_the_task_function() -> None:
    """The cause a flow call raises from is the task's exception: its traceback began
    with three of Headwater's frames (execute, the output capture, the call by name)
    before the task's own (a notebook trial)."""
    import traceback

    @task
    def broken_row(x: int) -> int:
        raise ValueError(f"row {x}")

    @flow
    def rows(x: int = 3) -> int:
        return broken_row(x)

    with pytest.raises(FlowRunFailed) as info:
        rows()
    cause = info.value.__cause__
    assert isinstance(cause, ValueError)
    frames = traceback.extract_tb(cause.__traceback__)
    assert [f.name for f in frames] == ["broken_row"]
