"""What the CLI prints of text it did not write (task errors, log lines, worker names):
control characters are shown as escapes, never sent to the operator's terminal."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from headwater import _cli_render, flow, task
from headwater._cli_render import (
    PLAIN_LINES,
    Progress,
    failure_lines,
    printable,
    summary_table,
)
from headwater.wire import FailureInfo


def test_control_characters_are_written_as_escapes_but_tab_and_newline_stay() -> None:
    text = "red \x1b[31mtext\x07\x08 tab\there\nnext line \x9b2J \x7f"
    shown = printable(text)
    assert shown == "red \\x1b[31mtext\\x07\\x08 tab\there\nnext line \\x9b2J \\x7f"
    assert printable(shown) == shown  # nothing left to escape
    assert printable("plain é ∑ 漢字") == "plain é ∑ 漢字"  # printable text as is


def test_bidirectional_controls_are_written_as_escapes() -> None:
    """U+202E in a name would show "report\u202eexe.txt" as "reporttxt.exe" (a user
    trial); every embedding, override and isolate is shown as its escape."""
    shown = printable("report\u202eexe.txt \u2066x\u2069 \u202a")
    assert shown == "report\\u202eexe.txt \\u2066x\\u2069 \\u202a"
    assert printable(shown) == shown


def test_a_failure_with_escapes_in_its_message_and_traceback_prints_them_escaped() -> None:
    cause = FailureInfo("builtins.OSError", "disk \x1b]0;pwned\x07 gone")
    failure = FailureInfo(
        "builtins.RuntimeError",
        "step\r failed",
        traceback='  File "x.py", line 1\n    \x1b[2J',
        cause=cause,
    )
    lines = failure_lines(failure)
    assert lines[0] == "builtins.RuntimeError: step\\x0d failed"
    assert lines[2] == "      \\x1b[2J"
    assert lines[-1] == "  builtins.OSError: disk \\x1b]0;pwned\\x07 gone"
    assert not any(ch in "\x1b\x07\r" for line in lines for ch in line)


def test_names_with_brackets_are_shown_as_written_never_as_markup() -> None:
    """A worker named 'pcli[/]w' made every table that showed it raise rich's
    MarkupError (headwater run --server exited 1 after a good run); a task named
    't[bold]x' was shown as 'tx'."""
    rows = [
        ("t[bold]x", "t[bold]x", "SUCCESS", 1, 0.5, "pcli[/]w"),
        ("esc\x1b[2J", "esc\x1b[2J", "FAILED", 1, None, ""),
    ]
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=False).print(summary_table(rows))
    text = out.getvalue()
    assert "t[bold]x" in text and "pcli[/]w" in text
    assert "esc\\x1b[2J" in text and "\x1b" not in text


def test_the_summary_adds_up_a_tasks_run_times_under_a_header_saying_so() -> None:
    """A map of three 0.5 s tasks read "time 1.51s" under a run of 0.51 s, like wall
    time (a user trial): the column is "task time", its runs' durations added up."""
    rows = [("speak", f"speak[{i}]", "SUCCESS", 1, 0.5, "w1") for i in range(3)]
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=False).print(summary_table(rows))
    header, line = (
        row.replace("┃", " ").replace("│", " ") for row in out.getvalue().splitlines()[:3:2]
    )
    assert header.split() == ["task", "runs", "states", "attempts", "task", "time", "workers"]
    assert line.split() == ["speak", "3", "3", "SUCCESS", "3", "1.50s", "w1"]
    # An attempt that ran for no measurable time reads 0.00s, not blank as if it never
    # ran (a Node.js task failing within its millisecond clock, a trial); one that never
    # ran stays blank.
    out = io.StringIO()
    rows = [("fast", "fast", "FAILED", 1, 0.0, "w1"), ("never", "never", "CANCELLED", 0, None, "")]
    Console(file=out, width=200, force_terminal=False).print(summary_table(rows))
    fast, never = (row.replace("│", " ").split() for row in out.getvalue().splitlines()[2:4])
    assert fast == ["fast", "1", "1", "FAILED", "1", "0.00s", "w1"]
    assert never == ["never", "1", "1", "CANCELLED", "0"]


def test_dot_keeps_letters_graphviz_would_show_as_escapes() -> None:
    from headwater import flow, task
    from headwater._cli_graph import as_dot

    @task(name="café_load")
    def load() -> int:
        return 1

    @flow(name="données")
    def pipeline() -> int:
        return load()

    dot = as_dot(pipeline.graph())
    assert 'digraph "données"' in dot and '"café_load"' in dot and "\\u00" not in dot


@task(resources={"GPU": 1, "MEMORY": 8e9}, tags=["db", "nightly"], labels={"pool": "gpu"})
def trains(x: int) -> int:
    return x


@flow
def training(n: int = 1) -> int:
    return trains(n)


def test_graph_text_shows_where_a_task_can_run() -> None:
    """`headwater graph` showed labels but not resources or tags: the options that
    decide where (a Dask worker with a GPU) and under which limits a task runs."""
    from headwater._cli_graph import as_text

    (line,) = [t for t in as_text(training.graph()).splitlines() if t.startswith("  trains")]
    assert line.endswith(
        "[labels pool=gpu; resources GPU=1,MEMORY=8e+09; tags db,nightly]  <- parameter n"
    )


def test_plain_progress_prints_the_first_changes_then_failures_and_summaries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not on a terminal (CI logs, a pipe), progress is one line per task run change,
    up to PLAIN_LINES of them; a wide map then gets a line per failure and a summary
    every SUMMARY_EVERY seconds (30,000 elements printed 60,000 lines, and the command
    ended half a minute after its run: a user trial)."""
    monkeypatch.setattr(_cli_render, "SUMMARY_EVERY", 3600.0)
    out = io.StringIO()
    with Progress("flow run x", out=out) as progress:
        for i in range(PLAIN_LINES + 50):
            progress.update(f"t[{i}]", "t", "SUCCESS")
        progress.update("bad", "b", "FAILED", "boom")
    lines = out.getvalue().splitlines()
    assert lines[:PLAIN_LINES] == [f"  t[{i}]: SUCCESS" for i in range(PLAIN_LINES)]
    assert f"more than {PLAIN_LINES} task run changes" in lines[PLAIN_LINES]
    assert lines[PLAIN_LINES + 1 :] == ["  bad: FAILED boom"]

    monkeypatch.setattr(_cli_render, "SUMMARY_EVERY", 0.0)  # a summary at each change
    out = io.StringIO()
    with Progress("flow run y", out=out) as progress:
        for i in range(PLAIN_LINES + 2):
            progress.update(f"t[{i}]", "t", "SUCCESS")
        progress.update("u", "u", "RUNNING")
    *_, last = out.getvalue().splitlines()
    assert last.startswith(f"  {PLAIN_LINES + 2}/{PLAIN_LINES + 3} done, 1 running, 0 failed, ")


def test_results_print_as_strict_json_nan_and_infinity_included() -> None:
    """`headwater run ... | jq` and --json: a float JSON has no number for was printed
    bare (NaN), which strict readers refuse and jq reads as null (a newcomer's trial);
    it is its repr, as other values JSON cannot hold."""
    import json

    value = {"mean": float("nan"), "bounds": (float("-inf"), 1.5), "max": float("inf")}
    for text in (_cli_render.result_text(value), _cli_render.json_text(value)):
        assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}")) == {
            "mean": "nan",
            "bounds": ["-inf", 1.5],
            "max": "inf",
        }


def test_a_task_cancelled_during_a_retry_says_why_before_the_earlier_failure() -> None:
    """A task whose first attempt timed out, cancelled during its retry, showed
    "slow: CANCELLED" over "headwater.TaskTimeout: ... exceeded its timeout of 3s", as
    if the timeout were why (a user trial): the cancel's reason comes first, the earlier
    attempt's failure is labelled as such. A failed task run shows its failure as before."""
    timeout = FailureInfo("headwater.TaskTimeout", "task 'slow' exceeded its timeout of 3s")
    assert _cli_render.outcome_lines("CANCELLED", timeout, "stop \x1b[31mit") == [
        "cancelled: stop \x1b[31mit",
        "an earlier attempt failed:",
        "  headwater.TaskTimeout: task 'slow' exceeded its timeout of 3s",
    ]
    assert _cli_render.outcome_lines("CANCELLED", None, "stop it") == ["cancelled: stop it"]
    assert _cli_render.outcome_lines("FAILED", timeout, "ignored") == [
        "headwater.TaskTimeout: task 'slow' exceeded its timeout of 3s"
    ]
