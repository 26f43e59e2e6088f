"""What the fault suite (tests/test_faults.py) counts, and how it judges the counts.

Two sources of truth are compared:

* the side effects: every execution of a task appends a START and an END line to one
  file (tests/fault_tasks.py), in the order they happened;
* what the server recorded: its SQLite database, read (read-only) right after each
  SIGKILL of the server, while no server runs, and at the end.

A *kill* is the moment the server was SIGKILLed; ``pos`` is how many effect lines the
file had just after it died, so a line at a position ``>= pos`` was written after the
kill (a line written between the kill and the count can only come from an assignment
sent before the kill, which the rules below allow for).

The rules (docs/durability.md, "Restarts: no loss, no stall"):

1. A task whose success was recorded before a kill never runs again after it.
2. A task runs more than once only when it was in flight at a kill (dispatched, not
   finished) and its delivery to a worker was not yet recorded (the instant between
   sending an assignment and the next commit): then it is sent again at once, and
   another worker may start it too. An attempt whose delivery was recorded waits for
   its worker and is never started elsewhere.
3. The delivery record is true. Proof from the outside: if, while one server process
   ran, worker W started X, then finished Y (started in that process's life too), and
   Y's success was recorded before the kill, then X's delivery was recorded too: it
   was queued for the store before X's assignment left the server (or, for an
   assignment the previous process sent, when W's Hello named X; W reconnects before
   it is given Y), Y's result reached the server after that, and the store writes
   batches in order. So X, still in flight, must show as delivered in the snapshot.
4. No loss is charged when no worker died: every task run ends at attempt 1.
5. The store is whole at every kill and at the end: every value a journal entry, a
   task run or a flow result refers to is stored, and each run's journal is numbered
   1, 2, 3... without a gap.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fault_tasks import EFFECTS

from headwater.v1 import journal_pb2
from headwater.wire import TaskRunState
from headwater_runtime.server._journal import stored_ids

Key = tuple[str, str, int]  # (run tag, task id, map index)

_IN_FLIGHT = (TaskRunState.SCHEDULED.value, TaskRunState.RUNNING.value)


@dataclass(frozen=True)
class Line:
    """One line of the effects file."""

    pos: int
    t: float
    kind: str  # START | END
    key: Key
    worker: str


def read_effects(directory: Path) -> list[Line]:
    path = directory / EFFECTS
    if not path.exists():
        return []
    data = path.read_text()
    # Workers may be appending as this reads. A line is one write(), but the kernel
    # copies a write page by page and moves the file's end after each: a read can end
    # inside a line that crosses a page boundary. Only whole lines count (the rest is
    # read whole next time); split, a torn line failed the unpacking below.
    data = data[: data.rfind("\n") + 1]
    lines = []
    for pos, text in enumerate(data.splitlines()):
        t, kind, tag, task, index, worker = text.split(" ")
        lines.append(Line(pos, float(t), kind, (tag, task, int(index)), worker))
    return lines


def count_effects(directory: Path, kind: str = "START", tags: Iterable[str] = ()) -> int:
    wanted = set(tags)
    return sum(
        1 for x in read_effects(directory) if x.kind == kind and (not wanted or x.key[0] in wanted)
    )


@dataclass(frozen=True)
class Row:
    """A task run as the store has it."""

    state: int
    attempt: int
    delivered: int
    worker: str


@dataclass
class Snapshot:
    """The store's task runs at one moment (after a kill, or at the end)."""

    pos: int
    rows: dict[Key, Row]
    #: What rule 5 found wrong with the store.
    broken: list[str] = field(default_factory=list)
    #: How many effect lines there were when the server process that this snapshot
    #: outlived became ready (0 for the first one).
    since: int = 0

    @property
    def succeeded(self) -> set[Key]:
        return {k for k, r in self.rows.items() if r.state == TaskRunState.SUCCESS.value}

    @property
    def in_flight(self) -> set[Key]:
        return {k for k, r in self.rows.items() if r.state in _IN_FLIGHT}

    @property
    def delivered(self) -> set[Key]:
        """In flight, and the store says which worker holds it (delivery recorded)."""
        return {
            k
            for k, r in self.rows.items()
            if r.state in _IN_FLIGHT and r.delivered and r.delivered == r.attempt
        }


def snapshot(db: Path, tags: Mapping[str, str], pos: int, since: int = 0) -> Snapshot:
    """The task runs of the runs in ``tags`` (flow run id -> tag), read-only."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        found = conn.execute(
            "SELECT flow_run_id, task_id, map_index, state, attempt, delivered, worker_id "
            "FROM task_runs"
        ).fetchall()
        rows = {
            (tags[run], task, index): Row(state, attempt, delivered, worker)
            for run, task, index, state, attempt, delivered, worker in found
            if run in tags
        }
        broken = _integrity(conn)
    finally:
        conn.close()
    return Snapshot(pos, rows, broken, since)


def _integrity(conn: sqlite3.Connection) -> list[str]:
    """Rule 5: references to values that are not stored; gaps in journal numbers."""
    stored = {v for (v,) in conn.execute("SELECT id FROM run_values")}
    broken = [
        f"journal entry {run} #{seq} refers to a value that is not stored"
        for run, seq, value in conn.execute("SELECT flow_run_id, seq, value_id FROM run_events")
        if value and value not in stored
    ]
    broken += [
        f"task run {run}/{key}'s result is not stored"
        for run, key, value in conn.execute("SELECT flow_run_id, key, result_id FROM task_runs")
        if value and value not in stored
    ]
    for run, result in conn.execute("SELECT id, result FROM flow_runs"):
        if result:
            tree = journal_pb2.StoredValue.FromString(result)
            if any(v not in stored for v in stored_ids(tree)):
                broken.append(f"flow run {run}'s result refers to a value that is not stored")
    seqs: dict[str, list[int]] = defaultdict(list)
    for run, seq in conn.execute("SELECT flow_run_id, seq FROM run_events ORDER BY 1, 2"):
        seqs[run].append(seq)
    broken += [
        f"flow run {run}'s journal is numbered {found[:3]}...{found[-3:]}"
        for run, found in seqs.items()
        if found != list(range(1, len(found) + 1))
    ]
    return broken


@dataclass
class Tally:
    """What the rules found, over all kills of one scenario."""

    kills: int = 0
    tasks: int = 0  # task runs that executed a function (recorded at the end)
    executions: int = 0  # START lines
    in_flight_duplicates: int = 0  # allowed by rule 2
    max_duplicates_per_kill: int = 0
    reexecuted_successes: list[str] = field(default_factory=list)  # rule 1
    reexecuted_held: list[str] = field(default_factory=list)  # rule 2
    unexplained: list[str] = field(default_factory=list)  # rule 2
    proven_deliveries: int = 0  # rule 3: checked
    false_deliveries: list[str] = field(default_factory=list)  # rule 3: violated
    losses: list[str] = field(default_factory=list)  # rule 4
    not_run: list[str] = field(default_factory=list)  # recorded success, never executed
    broken_store: list[str] = field(default_factory=list)  # rule 5
    #: Per kill: (attempts in flight, of them recorded delivered, started again after).
    per_kill: list[tuple[int, int, int]] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = []
        for name in (
            "reexecuted_successes",
            "reexecuted_held",
            "unexplained",
            "false_deliveries",
            "losses",
            "not_run",
            "broken_store",
        ):
            found = getattr(self, name)
            if found:
                out.append(f"{name} ({len(found)}): {'; '.join(found[:5])}")
        return out

    def add(self, other: Tally) -> None:
        for f in dataclasses.fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if f.name == "max_duplicates_per_kill":
                setattr(self, f.name, max(mine, theirs))
            elif isinstance(mine, list):
                mine.extend(theirs)
            else:
                setattr(self, f.name, mine + theirs)


def judge(lines: list[Line], kills: list[Snapshot], final: Snapshot) -> Tally:
    """Apply the rules of this module to one scenario's effects and snapshots."""
    tally = Tally(kills=len(kills))
    starts: dict[Key, list[Line]] = defaultdict(list)
    for line in lines:
        if line.kind == "START":
            starts[line.key].append(line)
    # A mapped task's parent run ends MAPPED, not SUCCESS: every SUCCESS ran a function.
    tally.tasks = len(final.succeeded)
    tally.not_run = [str(k) for k in sorted(final.succeeded - set(starts))]
    tally.executions = sum(len(v) for v in starts.values())
    per_kill: dict[int, int] = defaultdict(int)
    for key, runs in starts.items():
        for later in runs[1:]:
            k = _last_kill_before(kills, later.pos)
            what = f"{key} started again at line {later.pos} on {later.worker}"
            if k is None:
                tally.unexplained.append(what + " (no kill before it)")
                continue
            kill = kills[k]
            if key in kill.succeeded:
                tally.reexecuted_successes.append(what + f" (recorded SUCCESS at kill {k + 1})")
            elif key in kill.delivered:
                tally.reexecuted_held.append(what + f" (recorded delivered at kill {k + 1})")
            elif key in kill.in_flight:
                tally.in_flight_duplicates += 1
                per_kill[k] += 1
            else:
                tally.unexplained.append(what + f" (not in flight at kill {k + 1})")
    tally.max_duplicates_per_kill = max(per_kill.values(), default=0)
    tally.per_kill = [
        (len(kill.in_flight), len(kill.delivered), per_kill.get(i, 0))
        for i, kill in enumerate(kills)
    ]
    for i, kill in enumerate(kills):
        _check_deliveries(lines, kill, i, tally)
        tally.broken_store += [f"at kill {i + 1}: {b}" for b in kill.broken]
    tally.broken_store += [f"at the end: {b}" for b in final.broken]
    for key, row in final.rows.items():
        if key in starts and row.attempt != 1:
            tally.losses.append(f"{key} ended at attempt {row.attempt}")
    return tally


def _last_kill_before(kills: list[Snapshot], pos: int) -> int | None:
    found = None
    for i, kill in enumerate(kills):
        if kill.pos <= pos:
            found = i
    return found


def _check_deliveries(lines: list[Line], kill: Snapshot, index: int, tally: Tally) -> None:
    """Rule 3 at one kill, within the life of the server process it ended."""
    per_key: dict[Key, list[Line]] = defaultdict(list)
    for line in lines[: kill.pos]:
        per_key[line.key].append(line)
    # Y: recorded SUCCESS, run exactly once so far, in this life, START and END on one
    # worker: the position of the latest such END per worker.
    latest_end: dict[str, int] = {}
    for key in kill.succeeded:
        seen = per_key.get(key, [])
        if (
            [x.kind for x in seen] == ["START", "END"]
            and seen[0].worker == seen[1].worker
            and seen[0].pos >= kill.since
        ):
            latest_end[seen[1].worker] = max(latest_end.get(seen[1].worker, -1), seen[1].pos)
    for key in kill.in_flight:
        for line in per_key.get(key, []):
            if line.kind != "START" or line.pos < kill.since:
                continue
            if latest_end.get(line.worker, -1) < line.pos:
                continue
            tally.proven_deliveries += 1
            if key not in kill.delivered:
                tally.false_deliveries.append(
                    f"{key}: started on {line.worker} at line {line.pos}, which then finished "
                    f"a task recorded before kill {index + 1}, but its delivery is not recorded"
                )
            break


# ------------------------------------------------------------------ the figures


@dataclass
class Figures:
    """One scenario's row in the table printed at the end of the session."""

    scenario: str
    seed: int
    kills: int = 0
    runs: int = 0
    failed_runs: int = 0
    tasks: int = 0
    executions: int = 0
    reexecuted: int = 0
    duplicates: int = 0
    max_dup_per_kill: int = 0
    slots: int = 0
    restart_s: list[float] = field(default_factory=list)
    extra: str = ""


FIGURES: list[Figures] = []


def format_figures(figures: list[Figures]) -> list[str]:
    head = (
        "scenario",
        "seed",
        "faults",
        "runs",
        "failed runs",
        "tasks",
        "executions",
        "re-executed",
        "duplicates",
        "max dup/kill",
        "slots",
        "max kill->1st start s",
    )
    rows = []
    for f in figures:
        rows.append(
            (
                f.scenario,
                str(f.seed),
                str(f.kills),
                str(f.runs),
                str(f.failed_runs),
                str(f.tasks),
                str(f.executions),
                str(f.reexecuted),
                str(f.duplicates),
                str(f.max_dup_per_kill),
                str(f.slots),
                f"{max(f.restart_s):.2f}" if f.restart_s else "-",
            )
        )
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    out = [" | ".join(c.ljust(w) for c, w in zip(head, widths, strict=True))]
    out.append("-+-".join("-" * w for w in widths))
    out += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    out += [f"{f.scenario}: {f.extra}" for f in figures if f.extra]
    out.append(
        "faults: server SIGKILLs, worker signals or full-disk episodes; re-executed: "
        "recorded successes or held attempts started again (must be 0); duplicates: "
        "extra starts of attempts in flight at a fault (allowed: fault_helpers.py); "
        "max kill->1st start: seconds from a server SIGKILL to the first task start "
        "after its restart (a new process: imports, recovery, the workers' reconnect)"
    )
    return out
