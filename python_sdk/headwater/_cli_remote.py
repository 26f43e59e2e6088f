"""CLI commands that talk to a server: ``headwater runs ...`` and ``run --server``."""

from __future__ import annotations

import argparse
import contextvars
import os
import queue
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
from rich.text import Text

from headwater.wire import (
    ENV_SERVER,
    TASK_RUN_ID_SEPARATOR,
    FlowRunState,
    TaskRunState,
    fire_time_of,
    parse_duration,
    printable,
)
from headwater.wire import task_run_id as make_task_run_id
from headwater_runtime.tracing import cli_span

from ._cli_connect import add_connection_args, at_least_one, connect
from ._cli_render import (
    Progress,
    console,
    duration_text,
    json_text,
    nothing_listed,
    outcome_lines,
    plain,
    result_text,
    state_text,
    summary_rows,
    summary_table,
    user_output_to_stderr,
    waiting_label,
)
from ._client import REWATCH_PAUSE, Client, ClientClosed, RemoteFlowRun, ServerError, TaskRunInfo
from ._errors import Terminated, UsageError

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 130
#: Seconds without any change after which ``run --server`` asks why task runs wait.
QUIET = 2.0


def server_address(args: argparse.Namespace) -> str:
    """``--server``, else HEADWATER_SERVER; UsageError when neither is set."""
    address: str | None = args.server or os.environ.get(ENV_SERVER)
    if not address:
        raise UsageError("no server given: pass --server HOST:PORT or set HEADWATER_SERVER")
    return address


def _exit_code(state: FlowRunState) -> int:
    if state is FlowRunState.SUCCESS:
        return EXIT_OK
    return EXIT_CANCELLED if state is FlowRunState.CANCELLED else EXIT_FAILED


_json = json_text  # (the name the other commands import)


def local_time(at: datetime | None) -> str:
    """``at`` in local time, as the CLI prints times (``2026-01-02 03:04:05``)."""
    return at.astimezone().strftime("%Y-%m-%d %H:%M:%S") if at is not None else ""


def follow_run(client: Client, run: RemoteFlowRun, *, logs: bool = False) -> RemoteFlowRun:
    """Show a run's progress until it ends (task run changes; why task runs wait when
    nothing changes for a while); with ``logs``, what its tasks print and log too, as
    `headwater runs logs --follow` shows it. The run as it ended."""
    changes: queue.Queue[tuple[str, Any]] = queue.Queue()
    logs_done = threading.Event()

    def follow_logs() -> None:
        try:
            for entry in client.iter_logs(run.id, follow=True):  # (ends with the run)
                changes.put(("log", entry))
        except (ServerError, ClientClosed):
            pass  # (a restart or an outage: `headwater runs logs` still has them all)
        finally:
            logs_done.set()
            changes.put(("logs", None))

    def watch() -> None:
        try:
            for _, change in client.watch(run.id):
                changes.put(("change", change))
            changes.put(("end", None))
        except ServerError as exc:
            changes.put(("error", exc))
        except ClientClosed:  # (the command closed its client: it is done with the run)
            pass

    # In this context (a copy): the watch call is part of the CLI's trace when tracing.
    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(watch,), name="headwater-watch", daemon=True).start()
    if logs:
        threading.Thread(
            target=contextvars.copy_context().run,
            args=(follow_logs,),
            name="headwater-logs",
            daemon=True,
        ).start()
    else:
        logs_done.set()
    ended = False
    with Progress(f"flow run {run.id[:8]} of {run.flow_name!r}") as progress:
        while True:
            if ended and logs_done.is_set() and changes.empty():
                break
            try:
                # (Once the run has ended, its last log records a moment more at most.)
                kind, item = changes.get(timeout=LOGS_AFTER_END if ended else QUIET)
            except queue.Empty:
                if ended:
                    break
                try:
                    waiting = client.waiting(run.id)  # (not every task run: a line per task)
                except ServerError as exc:
                    if exc.code not in _OUTAGE:
                        raise
                    continue  # a restart: the watch rides it out, or gives up, for us
                progress.waits(waiting)
                continue
            if kind == "end":
                ended = True
            elif kind == "log":
                progress.note(log_line(item))
            elif kind == "error":
                raise item
            elif kind == "change" and item is not None:
                progress.update(item.key, item.task_id, item.state.name, item.message)
    return get_riding(client, run.id)


#: Seconds a finished run's log follower may still take to hand over its last records.
LOGS_AFTER_END = 2.0


def log_line(entry: Any) -> str:
    """A log record as `runs logs` prints it: time, level, task run (attempt), message."""
    at = entry.at.astimezone().strftime("%H:%M:%S.%f")[:-3]
    attempt = f"#{entry.attempt}" if entry.attempt > 1 else ""
    return f"{at} {entry.level:8} {entry.key}{attempt}  {entry.message}"


#: What a server that is going away answers: unreachable, or it ended the call as it
#: stopped (a restart, a leader stepping down).
_OUTAGE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


def get_riding(client: Client, run_id: str) -> RemoteFlowRun:
    """``client.get`` (with task runs), asked again every ``REWATCH_PAUSE`` seconds for
    up to the client's timeout while the server is unavailable (restarting), as
    ``Client.watch`` does."""
    deadline = time.monotonic() + client.timeout
    while True:
        try:
            return client.get(run_id, include_task_runs=True)
        except ServerError as exc:
            if exc.code not in _OUTAGE or time.monotonic() >= deadline:
                raise
        time.sleep(REWATCH_PAUSE)


def show_outcome(run: RemoteFlowRun, *, full: bool = False) -> None:
    """The summary table, each failed task run's error and traceback, the final line
    (stderr), and a successful run's result as JSON (stdout)."""
    err = console(sys.stderr)
    if run.task_runs:
        err.print(summary_table(summary_rows(run.task_runs)))
    show_failures(err, run.task_runs, full=full)
    took = f" in {duration_text(run.duration)}" if run.duration is not None else ""
    if run.attempt > 1 and run.attempt_duration is not None and run.duration is not None:
        took = (
            f" in {duration_text(run.attempt_duration)} (run attempt {run.attempt}; "
            f"{duration_text(run.duration)} since the first started)"
        )
    # As an embedded run's line: the task runs by state, then the run's message only
    # when no failed task run says why (a timeout, a cancel's reason).
    counts = Counter(t.state.name for t in run.task_runs)
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    said = any(t.state.is_failure for t in run.task_runs)
    note = f": {run.message.splitlines()[0][:500]}" if run.message and not said else ""
    err.print(
        Text.assemble(
            printable(f"flow run {run.id[:8]} of {run.flow_name!r}: "),
            state_text(run.state.name),
            took,
            f" ({parts})" if parts else "",
            printable(note),
        )
    )
    if run.state is FlowRunState.SUCCESS:
        print(result_text(run.result))


def show_failures(out: Any, task_runs: list[TaskRunInfo], *, full: bool = False) -> None:
    """Each failed task run's error type, message and traceback; why waiting ones wait,
    a line per task and reason (a mapped task's 100,000 waiting children are one)."""
    waiting: dict[tuple[str, str], list[str]] = {}  # (task id, reason) -> keys
    for task in task_runs:
        if task.failure is not None and task.state.is_failure:
            out.print(Text.assemble(printable(f"{task.key}: "), state_text(task.state.name)))
            for line in outcome_lines(task.state.name, task.failure, task.message, full=full):
                out.print(f"  {printable(line)}", markup=False)
        elif task.waiting:
            # Most reasons start with "waiting" (the server's words); say it once.
            said = task.waiting
            said = said if said.startswith("waiting") else f"waiting: {said}"
            waiting.setdefault((task.task_id, said), []).append(task.key)
    for (task_id, said), keys in waiting.items():
        label = waiting_label(task_id, len(keys), keys[0])
        out.print(printable(f"{label}: {said}"), style="yellow", markup=False)


def run_on_server(flow: Any, params: dict[str, Any], address: str, args: argparse.Namespace) -> int:
    """Deploy, run and follow; prints the result as JSON like an embedded run. Ctrl-C
    cancels the run (``--detach``: leaves it running) and returns 130."""
    detach, full = getattr(args, "detach", False), getattr(args, "full", False)
    # The CLI's own span (when tracing): the flow span on the server becomes its child.
    with connect(args, address) as client, cli_span(f"run {flow.name}") as failed:
        with user_output_to_stderr():  # (its graph is built here: the body runs)
            run = client.run(flow, params)
        where = client._addresses.current  # the server that took it (of several given)
        print(f"flow run {run.id} of {run.flow_name!r} created on {where}", file=sys.stderr)
        try:
            final = follow_run(client, run, logs=True)  # (task prints on stderr, as embedded)
        except KeyboardInterrupt as stop:
            how = "SIGTERM" if isinstance(stop, Terminated) else "Ctrl-C"
            return _interrupted(client, run, detach, how)
        show_outcome(final, full=full)
        if final.state is not FlowRunState.SUCCESS:
            failed(f"flow run {final.state.name}")
        return _exit_code(final.state)


#: Task runs ``runs show`` lists a line each; over that, a line per task (``--all``: each
#: task run): rich takes ~5 s to lay out 20,000 rows, and a wide map has 100,000.
SHOW_TASK_RUNS = 500

#: How long a cancelled ``headwater run --server`` waits for the run to end, to show
#: its summary (a task that ignores its cancel keeps it RUNNING).
CANCEL_SUMMARY_WAIT = 10.0


def _short_task_run(task_run_id: str) -> str:
    """A task run id with its flow run's id shortened as the CLI shows run ids
    (``1a2b3c4d/etl[3]``)."""
    flow_run_id, sep, key = task_run_id.partition(TASK_RUN_ID_SEPARATOR)
    return f"{flow_run_id[:8]}{sep}{key}"


def _interrupted(client: Client, run: RemoteFlowRun, detach: bool, how: str = "Ctrl-C") -> int:
    try:
        if detach:
            print(
                f"\nleft flow run {run.id} running on the server; follow it with: "
                f"headwater runs watch {run.id[:8]}",
                file=sys.stderr,
            )
        else:
            client.cancel(run.id, f"cancelled from the CLI ({how})")
            print(f"\ncancelled flow run {run.id}", file=sys.stderr)
            try:  # the summary, as an embedded run shows it, once the run has ended
                final = client.wait(run.id, timeout=CANCEL_SUMMARY_WAIT)
            except (TimeoutError, ServerError):
                return EXIT_CANCELLED
            show_outcome(final)
    except KeyboardInterrupt:
        print(f"\nstopped; flow run {run.id} may still be running", file=sys.stderr)
    return EXIT_CANCELLED


def _fire_time(run: RemoteFlowRun) -> str | None:
    """A scheduled run's fire time in ISO 8601 (its idempotency key names it:
    ``fire_time_of``); None for another run."""
    fired = fire_time_of(run.idempotency_key) if run.schedule_id else None
    return datetime.fromtimestamp(fired, UTC).isoformat() if fired is not None else None


def _run_json(run: RemoteFlowRun) -> dict[str, Any]:
    def when(at: datetime | None) -> str | None:
        return at.isoformat() if at is not None else None

    out: dict[str, Any] = {
        "id": run.id,
        "flow_name": run.flow_name,
        "flow_version": run.flow_version,
        "state": run.state.name,
        "message": run.message,
        "created_at": when(run.created_at),
        "started_at": when(run.started_at),
        "ended_at": when(run.ended_at),
        "duration": run.duration,
        "schedule_id": run.schedule_id,
        # The time a schedule's fire was for (a fire after downtime is created later
        # than that: which time a run was for could not be told, a trial).
        "fire_time": _fire_time(run),
        # (the text listings and the HTTP API had them; --json did not, a user trial)
        "attempt": run.attempt,
        "late": bool(run.late_reason),
        "late_reason": run.late_reason,
        "parent_id": run.parent_id or None,
    }
    if run.task_runs:
        out["task_runs"] = [
            {
                "key": t.key,
                "task_id": t.task_id,
                "state": t.state.name,
                "attempts": t.attempts,
                "worker": t.worker,
                "duration": t.duration,
                "waiting": t.waiting,
                "failure": None
                if t.failure is None
                else {
                    "type": t.failure.type,
                    "message": t.failure.message,
                    "traceback": t.failure.traceback,
                },
                "result": None
                if t.result is None
                else {
                    "size_bytes": t.result.size_bytes,
                    "encoding": t.result.encoding,
                    "preview": t.result.preview,
                },
            }
            for t in run.task_runs
        ]
    return out


def _states(names: list[str]) -> list[FlowRunState]:
    states = []
    for part in names:
        for name in part.split(","):
            try:
                states.append(FlowRunState[name.strip().upper()])
            except KeyError:
                known = ", ".join(s.name.lower() for s in FlowRunState)
                raise UsageError(f"--state {name!r} is not a state; use one of {known}") from None
    return states


def _list(client: Client, args: argparse.Namespace) -> int:
    since = None
    if args.since:
        try:
            since = datetime.now(UTC) - timedelta(seconds=parse_duration(args.since))
        except ValueError as exc:
            raise UsageError(f"--since {exc}") from None
    if args.schedule is not None and not args.schedule.strip():  # (it listed every run)
        raise UsageError("--schedule needs a schedule id, name or id prefix")
    runs = client.list_runs(
        flow_name=args.flow or "",
        limit=args.limit,
        states=_states(args.state),
        since=since,
        schedule_id=args.schedule or "",
    )
    if args.json:
        print(_json([_run_json(r) for r in runs]))
        return EXIT_OK
    if not runs:
        states = [("--state", state) for state in args.state or ()]
        filters = [("--flow", args.flow), ("--since", args.since), ("--schedule", args.schedule)]
        nothing_listed("flow runs", [*filters, *states])
        return EXIT_OK
    out = console()
    if not out.is_terminal:  # plain, one run a line: easy to grep and cut
        for run in runs:
            origin = f"  schedule {run.schedule_id}" if run.schedule_id else ""
            if run.parent_task_run_id:
                origin += f"  child of {_short_task_run(run.parent_task_run_id)}"
            said = f"  {_message_line(run.message, 200)}" if run.message else ""
            line = (
                f"{run.id[:8]}  {run.state.name:9}  {run.flow_name} v{run.flow_version}  "
                f"{local_time(run.started_at or run.created_at)}  "
                f"{duration_text(run.duration) or '-'}{origin}{_attempt_and_late(run)}{said}"
            )
            print(printable(line))
        return EXIT_OK
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    for column in ("run", "flow", "state", "started", "duration", "origin"):
        table.add_column(column)
    # Why a run failed or was cancelled (its first line; --json and `runs show` have all)
    table.add_column("message", overflow="ellipsis", no_wrap=True, max_width=60)
    for run in runs:
        origin = f"schedule {run.schedule_id[:8]}" if run.schedule_id else ""
        if run.parent_task_run_id:
            origin = f"child of {_short_task_run(run.parent_task_run_id)}"
        table.add_row(
            run.id[:8],
            plain(f"{run.flow_name} v{run.flow_version}"),
            state_text(run.state.name),
            local_time(run.started_at or run.created_at),
            duration_text(run.duration),
            plain(f"{origin}{_attempt_and_late(run)}".strip()),
            plain(_message_line(run.message, 500)),
        )
    out.print(table)
    return EXIT_OK


def _message_line(message: str, most: int) -> str:
    """A run's message as one listing cell: its first line, cut at ``most``."""
    line = message.splitlines()[0] if message else ""
    return line if len(line) <= most else line[: most - 1] + "…"


def _show(client: Client, run_id: str, args: argparse.Namespace) -> int:
    run = client.get(run_id, include_task_runs=True)
    if args.json:
        payload = _run_json(run)
        if run.state is FlowRunState.SUCCESS:
            payload["result"] = run.result
        print(_json(payload))
        return EXIT_OK
    out = console()
    took = f"  {duration_text(run.duration)}" if run.duration is not None else ""
    head = f"  {run.flow_name} v{run.flow_version}{took}  {run.message}".rstrip()
    head += _attempt_and_late(run)
    out.print(Text.assemble(f"{run.id}  ", state_text(run.state.name), printable(head)))
    if run.parent_task_run_id:
        parent = f"  parent: flow run {run.parent_id}, task run {run.parent_task_run_id}"
        out.print(printable(parent), markup=False)
    from rich.table import Table

    listed = [task for task in run.task_runs if task.state is not TaskRunState.MAPPED]
    if len(listed) > SHOW_TASK_RUNS and not args.all:
        out.print(summary_table(summary_rows(run.task_runs)))
        out.print(
            f"  ({len(listed):,} task runs: a line per task; --all lists each task run, "
            "--json gives them all)",
            markup=False,
            highlight=False,
        )
    else:
        table = Table(show_edge=False, pad_edge=False)
        for column in ("task run", "state", "attempts", "time", "worker", "states"):
            table.add_column(column)
        for task in listed:
            table.add_row(
                plain(task.key),
                state_text(task.state.name),
                str(task.attempts),
                duration_text(task.duration),
                plain(task.worker),
                " > ".join(s.name for s in task.states),
            )
        out.print(table)
    for task in run.task_runs:
        for child in task.child_run_ids:
            out.print(printable(f"  {task.key}: child flow run {child}"), markup=False)
    show_failures(out, run.task_runs, full=args.full)  # with why each waiting one waits
    for note in run.audit:
        detail = f" ({printable(note.detail)})" if note.detail else ""
        out.print(
            f"  {local_time(note.at)}  {note.action} by {note.actor}{detail}",
            markup=False,
            highlight=False,
        )
    if run.state is FlowRunState.SUCCESS:
        print(result_text(run.result))
    return EXIT_OK


def _logs(client: Client, run_id: str, args: argparse.Namespace) -> int:
    task = args.task or ""
    task_run_id = make_task_run_id(run_id, task) if "[" in task else ""
    task_id = "" if "[" in task else task
    entries = client.iter_logs(
        run_id, task_run_id, task_id=task_id, follow=args.follow, page_size=args.page_size
    )
    printed = 0
    for entry in entries:
        print(printable(log_line(entry)), flush=args.follow)
        printed += 1
    if not printed:  # (on stderr: a pipeline reading the records gets none)
        of = f"task {task!r} of flow run {run_id}" if task else f"flow run {run_id}"
        print(
            f"no log records for {of}: its tasks printed and logged nothing here (tasks "
            "run by a Dask bridge worker log to the Dask workers' own output: docs/dask.md)",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    """``headwater runs list|show|watch|cancel|retry|logs``; ``watch`` (and ``retry
    --wait``) exits like ``run``."""
    address = server_address(args)
    with connect(args, address) as client:
        if args.action == "list":
            return _list(client, args)
        if args.action == "watch":  # (started while a server restarts: it waits for it)
            try:
                final = follow_run(client, get_riding(client, args.run_id))
            except KeyboardInterrupt:
                return EXIT_CANCELLED
            show_outcome(final, full=args.full)
            return _exit_code(final.state)
        run_id = client.get(args.run_id).id  # a unique prefix names the run
        if args.action == "show":
            return _show(client, run_id, args)
        if args.action == "cancel":
            run = client.cancel(run_id, args.reason)
            ended = run.state is not FlowRunState.CANCELLED and run.state.is_terminal
            note = "  (it had already ended: nothing to cancel)" if ended else ""
            print(f"{run.id}  {run.state.name}{note}")
            return EXIT_OK
        if args.action == "retry":
            reason = "" if args.reason == _CANCEL_REASON else args.reason
            run = client.retry(run_id, reason)
            print(f"{run.id}  {run.state.name}  run attempt {run.attempt}")
            if not args.wait:
                return EXIT_OK
            try:
                final = follow_run(client, run)
            except KeyboardInterrupt:
                return EXIT_CANCELLED
            show_outcome(final, full=args.full)
            return _exit_code(final.state)
        if args.action == "logs":
            try:
                return _logs(client, run_id, args)
            except KeyboardInterrupt:
                return EXIT_CANCELLED
    raise UsageError(f"unknown action {args.action!r}")


_CANCEL_REASON = "cancelled from the CLI"


def _attempt_and_late(run: Any) -> str:
    said = f"run attempt {run.attempt}"
    attempt = f"  {said}" if run.attempt > 1 and said not in (run.message or "") else ""
    late = f"  LATE ({run.late_reason})" if run.late_reason else ""
    return attempt + late


def add_runs_command(sub: Any) -> None:
    """Add ``headwater runs`` and its actions (each with its own flags and --help)."""
    runs = sub.add_parser(
        "runs",
        help="list, show, watch, cancel or retry flow runs on a server, or read their logs",
        description="Inspect and control flow runs on a Headwater server. A run id may be "
        "shortened to any prefix only one run has (the 8 characters the CLI prints). "
        "`headwater runs ACTION --help` lists an action's flags.",
    )
    add_connection_args(runs)  # (also accepted before the action, as before)
    # The actions' own copies leave nothing when not given: a flag given before the
    # action keeps its value.
    connection = argparse.ArgumentParser(add_help=False)
    add_connection_args(connection, argparse.SUPPRESS)
    actions = runs.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, summary: str, description: str, run_id: bool = True) -> Any:
        parser = actions.add_parser(
            name, parents=[connection], help=summary, description=description
        )
        if run_id:
            parser.add_argument("run_id", help="flow run id or unique prefix")
        return parser

    listing = action(
        "list", "list flow runs, newest first", "List flow runs, newest first.", run_id=False
    )
    listing.add_argument("--flow", help="only runs of this flow")
    listing.add_argument(
        "--state",
        action="append",
        default=[],
        metavar="STATE",
        help="only runs in this state (pending, scheduled, running, success, failed, "
        "cancelled; repeatable)",
    )
    listing.add_argument(
        "--since", metavar="DURATION", help="only runs created this recently, e.g. 1h, 2d"
    )
    listing.add_argument(
        "--schedule",
        metavar="SCHEDULE",
        help="only runs this schedule created (its id, name or a unique id prefix; the id of "
        "a schedule deleted or replaced since)",
    )
    listing.add_argument("--limit", type=at_least_one, default=20, help="how many (default 20)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    show = action(
        "show",
        "a run with its task runs, failures and audit entries",
        "Print a run with its task runs, failures, audit entries and, when it succeeded, "
        "its result.",
    )
    show.add_argument("--json", action="store_true", help="print JSON")
    show.add_argument("--full", action="store_true", help="print whole tracebacks (not trimmed)")
    show.add_argument(
        "--all",
        action="store_true",
        help=f"a line for each task run however many (over {SHOW_TASK_RUNS}: a line per task)",
    )
    watch = action(
        "watch",
        "follow a run to its end (exit code as for 'run')",
        "Follow a run's progress until it ends; the exit code is that of 'headwater run'.",
    )
    watch.add_argument("--full", action="store_true", help="print whole tracebacks (not trimmed)")
    cancel = action("cancel", "cancel a run", "Cancel a run (its running attempts are stopped).")
    cancel.add_argument("--reason", default=_CANCEL_REASON, help="why (stored with the run)")
    retry = action(
        "retry",
        "run a FAILED or CANCELLED run again from its failure",
        "Run a FAILED or CANCELLED run again from its failure (same run id, next run "
        "attempt): task runs that succeeded are kept with their results, the others run "
        "again.",
    )
    retry.add_argument("--reason", default=_CANCEL_REASON, help="why (stored with the run)")
    retry.add_argument(
        "--wait", action="store_true", help="watch the run to its end (exit code as for 'run')"
    )
    retry.add_argument("--full", action="store_true", help="print whole tracebacks (not trimmed)")
    logs = action("logs", "print a run's log records", "Print a run's log records, oldest first.")
    logs.add_argument(
        "--task",
        metavar="NAME",
        help="only this task (its mapped children too) or task run (name[i])",
    )
    logs.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="keep printing new records until the run ends",
    )
    logs.add_argument(
        "--page-size",
        type=int,
        default=1000,
        help="records read per request (default 1000)",
    )
    runs.set_defaults(func=cmd_runs)
