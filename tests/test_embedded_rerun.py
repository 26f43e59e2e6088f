"""FlowRun.retry(): an embedded run retried from its failure, in this process, with
the results of the task runs that succeeded still in memory (side effects counted)."""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from typing import Any

import pytest

from headwater import FlowRunState, TaskRunState, flow, task
from headwater._loader import load_file

calls: Counter[str] = Counter()
broken: set[int] = set()
#: The object ``numbers`` returned, to check the retry reuses it rather than a copy.
made: list[Any] = []


@task
def numbers(n: int) -> list[int]:
    calls["numbers"] += 1
    made.append(list(range(n)))
    return made[-1]


@task
def square(x: int) -> int:
    calls[f"square-{x}"] += 1
    if x in broken:
        raise ValueError(f"element {x} is broken")
    return x * x


@task
def plus_one(x: int) -> int:
    calls[f"plus_one-{x}"] += 1
    return x + 1


@task
def total(xs: list[int]) -> int:
    calls["total"] += 1
    return sum(xs)


@task
def first(xs: list[int]) -> int:
    calls["first"] += 1
    return xs[0]


@flow
def pipeline(n: int = 4) -> dict[str, int]:
    xs = numbers(n)
    return {"total": total(plus_one.map(square.map(xs))), "first": first(xs)}


@pytest.fixture(autouse=True)
def fresh() -> None:
    calls.clear()
    broken.clear()
    made.clear()


def test_retry_reruns_only_the_failed_mapped_child_and_its_downstream() -> None:
    broken.add(2)
    run = pipeline.run(n=4)
    assert run.state is FlowRunState.FAILED and run.attempt == 1
    assert run.task_run("plus_one[2]").state is TaskRunState.TRIGGER_FAILED
    before = Counter(calls)

    broken.clear()
    seen: list[str] = []
    again = run.retry(reason="fixed", on_transition=lambda r, e: seen.append(r.key))
    assert again.state is FlowRunState.SUCCESS and again.id == run.id and again.attempt == 2
    assert again.result == {"total": 1 + 2 + 5 + 10, "first": 0}
    assert calls - before == Counter({"square-2": 1, "plus_one-4": 1, "total": 1})
    assert again.task_run("numbers").result is made[0], "the kept result, not a copy"
    states = again.task_run("square[2]").states
    assert states[-5:] == [
        TaskRunState.FAILED,
        TaskRunState.PENDING,
        TaskRunState.SCHEDULED,
        TaskRunState.RUNNING,
        TaskRunState.SUCCESS,
    ]
    assert "square[2]" in seen and "square[1]" not in seen
    with pytest.raises(RuntimeError, match="only a FAILED or CANCELLED run can be retried"):
        again.retry()


def test_a_run_that_fails_again_can_be_retried_again() -> None:
    broken.update({1, 2})
    run = pipeline.run(n=3)
    broken.discard(1)
    second = run.retry()
    assert second.state is FlowRunState.FAILED and second.attempt == 2
    broken.clear()
    third = second.retry(max_workers=2)
    assert third.state is FlowRunState.SUCCESS and third.attempt == 3
    assert (calls["square-0"], calls["square-1"], calls["square-2"]) == (1, 2, 3)
    assert third.task_run("square[2]").attempt == 3


@task
def noisy_square(x: int) -> int:
    print(f"squaring {x}")
    if x in broken:
        raise ValueError(f"element {x} is broken")
    return x * x


@flow
def child_flow(x: int) -> int:
    return noisy_square(x)


@task
def loud_first(xs: list[int]) -> int:
    print(f"picking {xs[0]}")
    return xs[0]


@flow
def parent_flow() -> int:
    return child_flow(loud_first([2, 3]))


def test_a_retried_run_keeps_the_child_runs_and_logs_of_its_earlier_attempts() -> None:
    """A user trial: after retry() the FlowRun listed no child run (the subflow's new
    child, and the failed one, could not be reached) and no log line."""
    broken.add(2)
    run = parent_flow.run()
    assert run.state is FlowRunState.FAILED and len(run.children) == 1
    broken.clear()
    again = run.retry()
    assert again.state is FlowRunState.SUCCESS and again.result == 4
    assert [c.state for c in again.children] == [FlowRunState.FAILED, FlowRunState.SUCCESS]
    assert again.children[0].id == run.children[0].id
    assert all(c.parent_id == again.id for c in again.children)
    assert [line.message for line in run.logs] == ["picking 2"]
    assert [line.message for line in again.logs] == ["picking 2"]  # (kept, not run again)
    assert [line.message for line in again.children[1].logs] == ["squaring 2"]


def test_a_task_defined_again_since_the_run_is_named_in_a_warning(tmp_path: Any) -> None:
    """A notebook's "fix the cell, retry" ran the old task again with no word of it (a
    trial): retry() keeps the run's code, and now says which tasks were redefined."""
    (tmp_path / "cells_retry.py").write_text(
        "from headwater import flow, task\n"
        "@task\n"
        "def load() -> list[int]:\n"
        "    return [1, 2]\n"
        "@task\n"
        "def parse(rows: list[int]) -> int:\n"
        "    raise ValueError('a bug')\n"
        "@flow\n"
        "def pipe() -> int:\n"
        "    return parse(load())\n"
    )
    try:
        cells = load_file(str(tmp_path / "cells_retry.py"))
        first = cells.pipe.run()
        assert first.state is FlowRunState.FAILED
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert first.retry().state is FlowRunState.FAILED  # nothing redefined: quiet
        exec("@task\ndef parse(rows: list[int]) -> int:\n    return sum(rows)\n", cells.__dict__)
        with pytest.warns(UserWarning) as said:
            again = first.retry()
        assert again.state is FlowRunState.FAILED  # the code the run started with
        (warning,) = said
        assert str(warning.message) == (
            f"flow run {first.id[:8]}: 'parse' was defined again since it ran; retry() "
            "runs the code the run started with. To run the new code, run the flow again "
            "(cache_for= on its slow tasks keeps their results)"
        )
        assert warning.filename == __file__
        assert cells.pipe.run().result == 3
    finally:
        sys.modules.pop("cells_retry", None)


def test_a_failed_runs_repr_says_why() -> None:
    """A notebook shows a run by its repr: it said FAILED and nothing of why (a trial)."""
    broken.add(2)
    run = pipeline.run(n=3)
    assert run.state is FlowRunState.FAILED
    said = repr(run)
    assert said.startswith(f"<FlowRun pipeline FAILED tasks={len(run.task_runs)} id={run.id[:8]}: ")
    assert "element 2 is broken" in said and said.endswith(">")
    broken.clear()
    fine = pipeline.run(n=3)
    assert repr(fine) == f"<FlowRun pipeline SUCCESS tasks={len(fine.task_runs)} id={fine.id[:8]}>"


def test_a_notebook_shows_a_run_as_html_with_its_tasks() -> None:
    """Jupyter shows ``_repr_html_``: the run's state, why it failed and its tasks
    added up per task (a notebook had the one-line repr only, a trial); what a task or
    message says is escaped."""
    broken.add(2)
    run = pipeline.run(n=3)
    shown = run._repr_html_()
    assert shown.startswith("<div class='headwater-run'><div><b>pipeline</b> <span ")
    assert ">FAILED</span>" in shown and f"run {run.id}" in shown
    assert "element 2 is broken" in shown
    # square is mapped over 3 elements: one row with 2 SUCCESS and 1 FAILED.
    square_row = shown.split("<td style='text-align:left'>square</td>", 1)[1].split("</tr>")[0]
    assert square_row.startswith("<td>3</td>")
    assert "1 <span style='color:#cf222e;font-weight:600'>FAILED</span>" in square_row
    assert "2 <span style='color:#1a7f37;font-weight:600'>SUCCESS</span>" in square_row
    broken.clear()
    fine = pipeline.run(n=3)
    assert "<pre" not in fine._repr_html_()  # no message under a success

    from headwater._html import run_html

    hostile = run_html(
        "<f>", "FAILED", "id&1", None, "<script>x</script>", [("<t>", "<t>", "SUCCESS", 1, 0.0, "")]
    )
    assert "<script>" not in hostile and "&lt;script&gt;" in hostile
    assert "&lt;f&gt;" in hostile and "&lt;t&gt;" in hostile and "0.00s" in hostile
