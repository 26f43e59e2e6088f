"""CLI commands that talk to a server: ``headwater runs ...`` and ``run --server``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from headwater.wire import ENV_SERVER, FlowRunState
from headwater_runtime.tracing import cli_span

from ._client import Client
from ._errors import UsageError

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 130


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


def run_on_server(flow: Any, params: dict[str, Any], address: str, token: str | None) -> int:
    """Deploy, run and wait; prints the result as JSON like an embedded run."""
    # The CLI's own span (when tracing): the flow span on the server becomes its child.
    with Client(address, token=token) as client, cli_span(f"run {flow.name}"):
        run = client.run(flow, params)
        print(f"flow run {run.id} of {run.flow_name!r} created on {address}", file=sys.stderr)
        for _, change in client.watch(run.id):
            if change is not None:
                print(f"  {change.key}: {change.state.name}", file=sys.stderr)
        final = client.get(run.id, include_task_runs=True)
        print(f"flow run {final.id[:8]}: {final.state.name} {final.message}", file=sys.stderr)
        if final.state is FlowRunState.SUCCESS:
            print(json.dumps(final.result, indent=2, default=repr))
        return _exit_code(final.state)


def cmd_runs(args: argparse.Namespace) -> int:
    """``headwater runs list|show|watch|cancel|retry|logs``; ``watch`` (and ``retry
    --wait``) exits like ``run``."""
    address = server_address(args)
    with Client(address, token=args.token) as client:
        if args.action == "list":
            for run in client.list_runs(flow_name=args.flow or "", limit=args.limit):
                origin = f"  schedule {run.schedule_id}" if run.schedule_id else ""
                print(
                    f"{run.id}  {run.state.name:9}  {run.flow_name} v{run.flow_version}{origin}"
                    f"{_attempt_and_late(run)}"
                )
            return EXIT_OK
        if not args.run_id:
            raise UsageError(f"'runs {args.action}' needs a flow run id")
        if args.action == "show":
            run = client.get(args.run_id, include_task_runs=True)
            print(
                f"{run.id}  {run.state.name}  {run.flow_name} v{run.flow_version}  "
                f"{run.message}{_attempt_and_late(run)}".rstrip()
            )
            for task in run.task_runs:
                states = " > ".join(s.name for s in task.states)
                worker = f"  on {task.worker}" if task.worker else ""
                waiting = f"  ({task.waiting})" if task.waiting else ""
                print(
                    f"  {task.key:30} {task.state.name:15} attempts={task.attempts}"
                    f"{worker}{waiting}  {states}"
                )
            if run.state is FlowRunState.SUCCESS:
                print(json.dumps(run.result, indent=2, default=repr))
            return EXIT_OK
        if args.action == "watch":
            current = client.get(args.run_id)
            for current, change in client.watch(args.run_id):  # noqa: B007
                if change is not None:
                    print(f"{change.key}: {change.state.name} {change.message}".rstrip())
            print(f"flow run: {current.state.name}")
            return _exit_code(current.state)
        if args.action == "cancel":
            run = client.cancel(args.run_id, args.reason)
            print(f"{run.id}  {run.state.name}")
            return EXIT_OK
        if args.action == "retry":
            reason = "" if args.reason == _CANCEL_REASON else args.reason
            run = client.retry(args.run_id, reason)
            print(f"{run.id}  {run.state.name}  run attempt {run.attempt}")
            if not args.wait:
                return EXIT_OK
            for current, change in client.watch(args.run_id):  # noqa: B007
                if change is not None:
                    print(f"{change.key}: {change.state.name} {change.message}".rstrip())
            print(f"flow run: {current.state.name}")
            return _exit_code(current.state)
        if args.action == "logs":
            for entry in client.logs(args.run_id, args.task_run or ""):
                print(f"{entry.at:%H:%M:%S} {entry.level:8} {entry.task_run_id} {entry.message}")
            return EXIT_OK
    raise UsageError(f"unknown action {args.action!r}")


_CANCEL_REASON = "cancelled from the CLI"


def _attempt_and_late(run: Any) -> str:
    attempt = f"  run attempt {run.attempt}" if run.attempt > 1 else ""
    late = f"  LATE ({run.late_reason})" if run.late_reason else ""
    return attempt + late


def add_runs_command(sub: Any) -> None:
    """Add ``headwater runs`` and its flags to the CLI's subcommands."""
    runs = sub.add_parser(
        "runs",
        help="list, show, watch, cancel or retry flow runs on a server, or read their logs",
        description="Inspect and control flow runs on a Headwater server. 'retry' runs a "
        "FAILED or CANCELLED run again from its failure (same run id, next run attempt): "
        "task runs that succeeded are kept with their results, the others run again.",
    )
    runs.add_argument("action", choices=["list", "show", "watch", "cancel", "retry", "logs"])
    runs.add_argument("run_id", nargs="?", help="flow run id (all actions but list)")
    runs.add_argument("--server", help="HOST:PORT (or HEADWATER_SERVER)")
    runs.add_argument("--token", default=None, help="bearer token (or HEADWATER_TOKEN)")
    runs.add_argument("--flow", help="list: only runs of this flow")
    runs.add_argument("--limit", type=int, default=20, help="list: how many (default 20)")
    runs.add_argument("--reason", default=_CANCEL_REASON, help="cancel, retry: why")
    runs.add_argument(
        "--wait",
        action="store_true",
        help="retry: watch the run to its end (exit code as for 'run')",
    )
    runs.add_argument("--task-run", help="logs: only this task run id")
    runs.set_defaults(func=cmd_runs)
