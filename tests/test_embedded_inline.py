"""Short tasks run inline, on the embedded run's own thread (issue 18): what a task sees
there is what it sees on a pool thread. Its output is kept in the run's logs (issue
14), a flow it calls is a child of its task run (issue 13), and a task with a timeout
never runs inline (nothing could interrupt it there).

Each flow is a chain, so every call after the first is dispatched once an earlier one
was timed; ``INLINE_LIMIT`` is raised for these tests, so that whether a call runs
inline does not depend on how loaded the machine is (the limit itself is a tuning
figure: benchmarks/).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from headwater import FlowRunState, flow, task
from headwater_runtime.embedded import ThreadExecutor, _threads

N = 20

log = logging.getLogger("inline-test")


@pytest.fixture(autouse=True)
def every_task_is_short(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_threads, "INLINE_LIMIT", 60.0)


@task
def say(i: int, before: int) -> int:
    print(f"printed {i}")
    log.warning("logged %d", i)
    return before + i


@flow
def speak() -> int:
    total = 0
    for i in range(N):
        total = say(i, total)
    return total


def test_output_of_tasks_run_inline_is_kept_in_the_run_logs() -> None:
    executor = ThreadExecutor(2)
    run = speak.run(executor=executor)
    assert run.state is FlowRunState.SUCCESS and run.result == sum(range(N))
    assert executor.ran_inline == N - 1  # all but the first, which was timed on the pool
    by_task: dict[str, list[tuple[str, str, str]]] = {}
    for entry in run.logs:
        key = entry.task_run_id.split("/", 1)[1]
        by_task.setdefault(key, []).append((entry.level, entry.logger, entry.message))
    assert len(by_task) == N
    for i, lines in enumerate(by_task.values()):
        assert lines == [
            ("INFO", "stdout", f"printed {i}"),
            ("WARNING", "inline-test", f"logged {i}"),
        ]


@task
def double(x: int) -> int:
    return x * 2


@flow
def doubled(x: int) -> int:
    return double(x)


THREADS: list[str] = []


@task
def maybe_call(i: int, before: int) -> int:
    if i < N - 1:
        return before + i
    THREADS.append(threading.current_thread().name)
    return before + doubled(i)  # the last call: a child flow run of this task run


@flow
def caller() -> int:
    total = 0
    for i in range(N):
        total = maybe_call(i, total)
    return total


def test_a_flow_called_by_a_task_run_inline_is_a_child_of_its_task_run() -> None:
    THREADS.clear()
    executor = ThreadExecutor(2)
    run = caller.run(executor=executor)
    assert run.state is FlowRunState.SUCCESS, run.message
    assert run.result == sum(range(N - 1)) + 2 * (N - 1)
    assert [threading.current_thread().name] == THREADS  # it ran inline
    (child,) = run.children
    assert child.parent_id == run.id and child.parent_task_run == f"maybe_call-{N}"
    assert child.state is FlowRunState.SUCCESS and child.result == 2 * (N - 1)


@task(timeout=30)
def bounded_say(i: int, before: int) -> int:
    return before + i


@flow
def bounded_speak() -> int:
    total = 0
    for i in range(N):
        total = bounded_say(i, total)
    return total


def test_a_task_with_a_timeout_never_runs_inline() -> None:
    executor = ThreadExecutor(2)
    run = bounded_speak.run(executor=executor)
    assert run.state is FlowRunState.SUCCESS and run.result == sum(range(N))
    assert executor.ran_inline == 0


def test_inline_false_keeps_every_task_on_the_pool() -> None:
    executor = ThreadExecutor(2, inline=False)
    run = speak.run(executor=executor)
    assert run.state is FlowRunState.SUCCESS and executor.ran_inline == 0
    assert len(run.logs) == 2 * N


@task
def awaits(i: int, before: int) -> int:
    async def fetch() -> int:
        await asyncio.sleep(0)
        return i

    return before + asyncio.run(fetch())


@flow
def fetch_all() -> int:
    total = 0
    for i in range(N):
        total = awaits(i, total)
    return total


def test_no_task_runs_inline_where_an_event_loop_runs() -> None:
    """A flow called in a Jupyter cell runs where the kernel's loop runs: inline,
    ``asyncio.run`` in a task failed ("cannot be called from a running event loop")
    for 5-8 tasks of 20 (a notebook trial)."""
    executor = ThreadExecutor(2)

    async def cell() -> Any:
        return fetch_all.run(executor=executor)

    run = asyncio.run(cell())
    assert run.state is FlowRunState.SUCCESS and run.result == sum(range(N))
    assert executor.ran_inline == 0
    outside = ThreadExecutor(2)  # without a loop the short calls do run inline
    assert fetch_all.run(executor=outside).result == sum(range(N))
    assert outside.ran_inline > 0
