"""The ``headwater`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from typing import Any

import grpc

from headwater_runtime.engine import FlowRunState, GraphError, ParameterError

from ._cli_remote import add_runs_command
from ._cli_schedules import add_schedules_command
from ._client import ServerError
from ._errors import FlowDefinitionError, UsageError
from ._loader import LoadError, load_flow
from ._payloads import EncodingError
from ._run import FlowRun

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


def parse_params(items: list[str]) -> dict[str, Any]:
    """``k=v`` pairs; each value is parsed as JSON when it is valid JSON, else kept as
    a string (so ``--param n=3`` gives 3 and ``--param name=bob`` gives "bob")."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--param expects KEY=VALUE, got {item!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def _summary(run: FlowRun) -> str:
    counts = Counter(r.state.name for r in run.task_runs.values())
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    duration = f" in {run.duration:.3f}s" if run.duration is not None else ""
    return f"flow run {run.id[:8]} of {run.flow_name!r}: {run.state.name}{duration} ({parts})"


def cmd_run(args: argparse.Namespace) -> int:
    params = parse_params(args.param)
    flow = load_flow(args.target)
    if args.server:
        from ._cli_remote import run_on_server

        return run_on_server(flow, params, args.server, args.token)
    run = flow.run(max_workers=args.workers, max_concurrency=args.max_concurrency, **params)
    print(_summary(run), file=sys.stderr)
    for failure in run.failures:
        print(f"  {failure.key}: {failure.state.name}: {failure.failure}", file=sys.stderr)
    if run.state is FlowRunState.SUCCESS:
        print(_render(run.result))
        return EXIT_OK
    return EXIT_CANCELLED if run.state is FlowRunState.CANCELLED else EXIT_FAILED


def _render(value: Any) -> str:
    try:
        return json.dumps(value, indent=2, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def cmd_graph(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    graph = load_flow(args.target).compile()
    print(json_format.MessageToJson(graph, indent=2))
    return EXIT_OK


def parse_labels(items: list[str]) -> dict[str, str]:
    """``k=v`` pairs, kept as strings."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--label expects KEY=VALUE, got {item!r}")
        labels[key.strip()] = value
    return labels


def cmd_worker(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading

    from ._worker import Worker, WorkerError

    if not args.server:
        raise UsageError("--server HOST:PORT is required (or set HEADWATER_SERVER)")
    if ":" not in args.server:
        raise UsageError(f"--server expects HOST:PORT, got {args.server!r}")
    if not args.module:
        raise UsageError("give at least one --module with the tasks this worker runs")
    if args.slots is not None and args.slots < 1:
        raise UsageError(f"--slots must be at least 1, got {args.slots}")
    labels = parse_labels(args.label)
    # Like `python -m`, find modules in the current directory.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())

    def connected(worker: Worker) -> None:
        print(
            f"headwater worker {worker.name} connected to {worker.server} "
            f"({len(worker.tasks)} capabilities, {worker.slots} slots)",
            file=sys.stderr,
            flush=True,
        )

    worker = Worker(
        args.server,
        args.module,
        labels=labels,
        slots=args.slots,
        name=args.name,
        token=args.token or os.environ.get("HEADWATER_TOKEN") or None,
        on_connect=connected,
    )
    # Task logs at INFO and up are sent to the server (and printed here).
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    def on_signal(signum: int, _frame: object) -> None:
        # stop() cancels the gRPC call: do that off the interrupted main thread.
        threading.Thread(target=worker.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker.run()
    except WorkerError as exc:
        print(f"headwater: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def add_worker_command(sub: Any) -> None:
    worker = sub.add_parser(
        "worker",
        help="run tasks for a Headwater server",
        description="Connect to a control plane and run the tasks defined in the given "
        "modules (plus the built-in headwater.case and headwater.merge). Reconnects on "
        "its own; SIGTERM or Ctrl-C stops it (exit 0); a refused token exits 1.",
    )
    worker.add_argument(
        "--server",
        default=os.environ.get("HEADWATER_SERVER"),
        metavar="HOST:PORT",
        help="control plane address (default: $HEADWATER_SERVER)",
    )
    worker.add_argument(
        "--module",
        "-m",
        action="append",
        default=[],
        metavar="MODULE",
        help="package.module or path/to/file.py whose @tasks to run (repeatable)",
    )
    worker.add_argument(
        "--label",
        "-l",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="affinity label, e.g. gpu=true (repeatable)",
    )
    worker.add_argument(
        "--slots", type=int, default=None, help="most tasks running at once (default: CPUs + 4)"
    )
    worker.add_argument("--name", default=None, help="display name (default: HOSTNAME-PID)")
    worker.add_argument(
        "--token", default=None, help="bearer token for the server (default: $HEADWATER_TOKEN)"
    )
    worker.set_defaults(func=cmd_worker)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="headwater",
        description="Headwater workflow runtime: run flows embedded or on a server, run the "
        "server and its workers, inspect flow runs, and schedule flows on a server.",
    )
    parser.add_argument("--version", action="version", version=f"headwater {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a flow (in this process, or on a server with --server); print its result",
        description="Run a flow and print its result as JSON: embedded (in this process, on a "
        "thread pool) by default, or on a server with --server. Exit code 0 when the run "
        "succeeds, 1 when it fails, 130 when it is cancelled (Ctrl-C).",
    )
    run.add_argument("target", help="FILE.py[:FLOW] or package.module[:FLOW]")
    run.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="flow parameter; VALUE is parsed as JSON when valid, else taken as a string",
    )
    run.add_argument("--workers", type=int, default=None, help="thread pool size")
    run.add_argument(
        "--max-concurrency", type=int, default=None, help="most task runs executing at once"
    )
    run.add_argument(
        "--server",
        default=None,
        metavar="HOST:PORT",
        help="run on this Headwater server instead of in this process (deploys the flow)",
    )
    run.add_argument("--token", default=None, help="bearer token for --server (or HEADWATER_TOKEN)")
    run.set_defaults(func=cmd_run)

    graph = sub.add_parser(
        "graph",
        help="print a flow's compiled graph as JSON",
        description="Compile a flow and print its FlowGraph message as JSON.",
    )
    graph.add_argument("target", help="FILE.py[:FLOW] or package.module[:FLOW]")
    graph.set_defaults(func=cmd_graph)
    from headwater_runtime.server._cli import add_server_command

    add_server_command(sub)
    add_worker_command(sub)
    add_runs_command(sub)
    add_schedules_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (
        UsageError,
        LoadError,
        GraphError,
        EncodingError,
        FlowDefinitionError,
        ParameterError,
    ) as exc:
        print(f"headwater: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ServerError as exc:
        print(f"headwater: error: {exc}", file=sys.stderr)
        refused = exc.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
        return EXIT_USAGE if refused else EXIT_FAILED


if __name__ == "__main__":
    raise SystemExit(main())
