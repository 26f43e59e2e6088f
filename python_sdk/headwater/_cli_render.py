"""How the CLI shows runs: live progress, summary tables, failures (rich).

On a terminal, progress is a live panel (done / running / failed / total, per task,
elapsed) and tables are drawn; piped into a file or another program, the same facts
come out as plain lines, one per change, with no colour or cursor movement.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from headwater.wire import FailureInfo, TaskRunState, printable

if TYPE_CHECKING:
    from ._client import WaitingInfo

#: Traceback lines shown without --full (the last ones: where it failed).
TRACEBACK_LINES = 12
_COLOURS = {
    "SUCCESS": "green",
    "CACHED": "cyan",
    "FAILED": "red",
    "TIMED_OUT": "red",
    "TRIGGER_FAILED": "magenta",
    "CANCELLED": "bright_black",
    "SKIPPED": "bright_black",
    "RUNNING": "blue",
    "RETRYING": "yellow",
    "SCHEDULED": "bright_black",
    "PENDING": "bright_black",
}
_ACTIVE = {TaskRunState.RUNNING, TaskRunState.RETRYING}


def nothing_listed(what: str, filters: Iterable[tuple[str, Any]] = ()) -> None:
    """Say on stderr that a listing is empty (stdout stays empty for scripts): an empty
    listing printed nothing at all, which read as a hang or a failure. ``filters``:
    (option, value) of the options given, named in the line when they narrowed it
    (``--flow etl``; one with no value did not)."""
    given = [f"{option} {value}" for option, value in filters if value]
    narrowed = f" match {' '.join(given)}" if given else ""
    print(f"no {what}{narrowed}", file=sys.stderr)


def user_output_to_stderr() -> contextlib.AbstractContextManager[Any]:
    """While the user's code runs in a command whose stdout is its output (a module's
    top level as it loads, a flow body while its graph is built): what that code
    prints goes to stderr, so stdout holds only the command's own output (`| jq`
    works; the prints of a flow body reached the JSON of `run --server` and `graph`)."""
    return contextlib.redirect_stdout(sys.stderr)


def plain(text: str) -> Text:
    """Text from outside (a task or flow name, a key, a worker's name) for a rich table
    or line: never read as markup (``t[bold]x`` stays itself, ``a[/]b`` is no error),
    control characters shown as escapes."""
    return Text(printable(text))


def result_text(value: Any) -> str:
    """A run's result as the CLI prints it: JSON (indented; values JSON has no form
    for as their repr), or the whole value's repr when JSON cannot hold it (a dict
    with tuple keys)."""
    import json

    try:
        return json.dumps(_finite(value), indent=2, default=repr, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)


def json_text(value: Any) -> str:
    """``--json`` output: always valid JSON (values JSON has no form for as their
    repr, dict keys JSON cannot hold as theirs)."""
    import json

    try:
        return json.dumps(_finite(value), indent=2, default=repr, allow_nan=False)
    except (TypeError, ValueError):
        return json.dumps(_finite(_json_safe(value)), indent=2, default=repr)


def _finite(value: Any) -> Any:
    """``value`` with each float JSON has no number for (nan, inf) as its repr: printed
    bare (``NaN``), strict JSON readers refused the whole output and jq read null."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        keys_ok = (str, int, float, bool, type(None))
        return {(k if isinstance(k, keys_ok) else repr(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def console(file: TextIO | None = None) -> Console:
    """A rich Console on ``file`` (stdout), plain text when it is not a terminal."""
    return _Console(file=file or sys.stdout, highlight=False, soft_wrap=True)


class _Console(Console):
    """A reader that leaves early (`headwater runs show ID | head`) ends the command as
    for any output (exit 0, ``main``): rich's own answer is SystemExit(1), and `runs
    show | head` exited 1 where `runs list | head` exited 0 (a user trial)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


def state_text(name: str) -> Text:
    """A state name in its colour."""
    return Text(name, style=_COLOURS.get(name, ""))


def duration_text(seconds: float | None) -> str:
    """``0.42s``, ``12.3s``, ``4m 05s``, ``1h 02m``; "" when unknown."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def outcome_lines(state: str, failure: Any, message: str, *, full: bool = False) -> list[str]:
    """The lines under a failed or cancelled task run's name: its error and traceback;
    for a cancelled one, why it was cancelled, then what an earlier attempt failed with
    (a cancel during a retry showed the first attempt's timeout as if it were why)."""
    if state != "CANCELLED":
        return failure_lines(failure, full=full) if failure is not None else []
    lines = [f"cancelled: {message}"] if message else []
    if failure is not None:
        lines.append("an earlier attempt failed:")
        lines += [f"  {line}" for line in failure_lines(failure, full=full)]
    return lines


def failure_lines(failure: FailureInfo, *, full: bool = False) -> list[str]:
    """A failure as text: ``type: message``, then its traceback (its last
    TRACEBACK_LINES lines unless ``full``) and causes."""
    lines = [printable(f"{failure.type}: {failure.message}")]
    trace = printable(failure.traceback).rstrip().splitlines()
    if trace:
        if not full and len(trace) > TRACEBACK_LINES:
            cut = len(trace) - TRACEBACK_LINES
            lines.append(f"  ... {cut} traceback lines cut (--full shows them)")
            trace = trace[-TRACEBACK_LINES:]
        lines.extend(f"  {line}" for line in trace)
    if failure.cause is not None:
        lines.append("caused by:")
        lines.extend(f"  {line}" for line in failure_lines(failure.cause, full=full))
    return lines


@dataclass
class TaskSummary:
    """What the summary table shows of one task node (its mapped children together)."""

    task_id: str
    states: Counter[str] = field(default_factory=Counter)
    attempts: int = 0
    duration: float = 0.0
    #: Whether an attempt of it ran (its time is known, 0 included).
    ran: bool = False
    workers: set[str] = field(default_factory=set)


def waiting_label(task_id: str, count: int, first_key: str) -> str:
    """How the CLI names waiting task runs of one task that wait for one reason: the
    task run's key for one, the task and how many for more."""
    return first_key if count == 1 else f"{task_id} ({count:,} task runs)"


def summary_rows(
    task_runs: Iterable[Any],
) -> list[tuple[str, str, str, int, float | None, str]]:
    """``summary_table``'s rows of task runs (TaskRunInfo)."""
    return [
        (t.task_id, t.key, t.state.name, t.attempts, t.run_seconds, t.worker) for t in task_runs
    ]


def task_summaries(
    rows: Iterable[tuple[str, str, str, int, float | None, str]],
) -> dict[str, TaskSummary]:
    """(task id, key, state, attempts, duration, worker) per task run, added up per task
    node, in order (a mapped node counts its children; the CLI's summary, a notebook's
    view of a run)."""
    nodes: dict[str, TaskSummary] = {}
    for task_id, _key, state, attempts, duration, worker in rows:
        if state == "MAPPED":
            nodes.setdefault(task_id, TaskSummary(task_id))
            continue
        node = nodes.setdefault(task_id, TaskSummary(task_id))
        node.states[state] += 1
        node.attempts += attempts
        node.duration += duration or 0.0
        node.ran = node.ran or duration is not None
        if worker:
            node.workers.add(worker)
    return nodes


def summary_table(
    rows: Iterable[tuple[str, str, str, int, float | None, str]], title: str = ""
) -> Table:
    """A table of task nodes: (task id, key, state, attempts, duration, worker) per task
    run, grouped by task node (a mapped node shows its children's counts)."""
    nodes = task_summaries(rows)
    table = Table(title=title or None, title_justify="left", show_edge=False, pad_edge=False)
    # "task time": how long its task runs' attempts ran, added up (a map of 0.5 s tasks
    # read 1.5 s under a run that took 0.5 s, as if it were wall time; and the hours a
    # run sat FAILED before its retry counted too: user trials).
    for column in ("task", "runs", "states", "attempts", "task time", "workers"):
        table.add_column(column, justify="right" if column in ("runs", "attempts") else "left")
    for node in nodes.values():
        states = Text(", ").join(state_text(f"{n} {s}") for s, n in sorted(node.states.items()))
        table.add_row(
            plain(node.task_id),
            str(sum(node.states.values())),
            states,
            str(node.attempts),
            # (0.00s when its attempts ran for no time it could measure: a Node.js task
            # failing within a ms read blank, as if it never ran, a trial)
            duration_text(node.duration) if node.ran else "",
            plain(", ".join(sorted(node.workers))),
        )
    return table


#: Plain progress (not a terminal): task run changes printed one per line, at most.
PLAIN_LINES = 200
#: Then seconds between two summary lines.
SUMMARY_EVERY = 5.0


class Progress:
    """Live progress of a run: done / running / failed / total, per task, elapsed.

    On a terminal a rich Live panel (redrawn a few times a second); otherwise one plain
    line per task run change, to ``out`` (stderr), for the first ``PLAIN_LINES``
    changes; after that a line for each failure and a summary every ``SUMMARY_EVERY``
    seconds (a map over 30,000 elements printed 60,000 lines, and the command ended
    half a minute after its run).

    Args:
        title: what runs, e.g. ``flow run 1a2b3c4d of 'etl'``.
        out: where progress goes.
    """

    def __init__(self, title: str, out: TextIO | None = None) -> None:
        self.title = title
        self.out = out or sys.stderr
        self.console = console(self.out)
        self.started = time.monotonic()
        self.states: dict[str, tuple[str, str]] = {}  # key -> (task id, state)
        #: Why task runs wait, from the latest look (``waits``): a task run's key, or a
        #: task and how many of its task runs, and the reason.
        self.waiting: dict[str, str] = {}
        self._said: set[tuple[str, str]] = set()  # (task id, reason) printed (plain)
        self.changes = 0  # task run changes seen (plain output)
        self.summarized = 0.0  # when the last summary line was printed (monotonic)
        self.live: Live | None = None
        if self.console.is_terminal:
            self.live = Live(
                console=self.console, refresh_per_second=4, transient=True, get_renderable=self
            )

    def __enter__(self) -> Progress:
        if self.live is not None:
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()

    def update(self, key: str, task_id: str, state: str, message: str = "") -> None:
        """A task run changed state."""
        self.states[key] = (task_id, state)
        self.waiting.pop(key, None)
        if self.live is not None:
            return
        self.changes += 1
        if self.changes == PLAIN_LINES + 1:
            print(
                f"  (more than {PLAIN_LINES} task run changes: from now on a line for each "
                f"failure and a summary every {SUMMARY_EVERY:g}s)",
                file=self.out,
                flush=True,
            )
            self.summarized = time.monotonic()
        if self.changes <= PLAIN_LINES or TaskRunState[state].is_failure:
            detail = f" {message}" if message and state != "SUCCESS" else ""
            print(printable(f"  {key}: {state}{detail}"), file=self.out, flush=True)
        elif time.monotonic() - self.summarized >= SUMMARY_EVERY:
            self.summarized = time.monotonic()
            print(f"  {self.summary()}", file=self.out, flush=True)

    def note(self, line: str) -> None:
        """A line of the run's output (what a task printed or logged), above the live
        panel on a terminal."""
        if self.live is not None:
            self.console.print(plain(line), soft_wrap=True)
        else:
            print(printable(line), file=self.out, flush=True)

    def tallies(self) -> tuple[int, int, int, int]:
        """Task runs done, running, failed, and in all (mapped parents left out)."""
        counts = self.counts()
        done = sum(n for s, n in counts.items() if TaskRunState[s].is_terminal)
        failed = sum(n for s, n in counts.items() if TaskRunState[s].is_failure)
        running = sum(n for s, n in counts.items() if TaskRunState[s] in _ACTIVE)
        return done, running, failed, sum(counts.values())

    def summary(self) -> str:
        """``done/total done, N running, N failed, elapsed``."""
        done, running, failed, total = self.tallies()
        elapsed = duration_text(time.monotonic() - self.started)
        return f"{done:,}/{total:,} done, {running:,} running, {failed:,} failed, {elapsed}"

    def waits(self, waiting: Iterable[WaitingInfo]) -> None:
        """Why task runs wait for a worker (``Client.waiting``: a line per task and
        reason; a wide map's waiting children are one), shown until the next look.
        Plain output prints each task and reason once."""
        self.waiting = {}
        for entry in waiting:
            label = waiting_label(entry.task_id, entry.count, entry.first_key)
            self.waiting[label] = entry.reason
            said = (entry.task_id, entry.reason)
            if self.live is None and said not in self._said:
                self._said.add(said)
                print(printable(f"  {label}: {entry.reason}"), file=self.out, flush=True)

    def counts(self) -> Counter[str]:
        """Task runs per state (mapped parents left out)."""
        return Counter(state for _, state in self.states.values() if state != "MAPPED")

    def __call__(self) -> Any:
        """The live panel (rich calls this to redraw)."""
        done, running, failed, total = self.tallies()
        elapsed = duration_text(time.monotonic() - self.started)
        head = Text.assemble(
            (self.title, "bold"),
            f"  {done}/{total} done, ",
            (f"{running} running", "blue"),
            ", ",
            (f"{failed} failed", "red" if failed else ""),
            f"  {elapsed}",
        )
        per_task: dict[str, Counter[str]] = {}
        for task_id, state in self.states.values():
            if state != "MAPPED":
                per_task.setdefault(task_id, Counter())[state] += 1
        table = Table.grid(padding=(0, 2))
        for task_id, states in list(per_task.items())[-12:]:
            table.add_row(
                plain(task_id), Text(", ").join(state_text(f"{n} {s}") for s, n in states.items())
            )
        reasons = [
            Text(printable(f"{k}: {v}"), style="yellow") for k, v in list(self.waiting.items())[:5]
        ]
        return Group(head, table, *reasons)


__all__ = [
    "TRACEBACK_LINES",
    "Progress",
    "console",
    "duration_text",
    "failure_lines",
    "state_text",
    "summary_rows",
    "summary_table",
    "waiting_label",
]
