"""The ``headwater`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from typing import Any

from headwater_runtime.engine import FlowRunState, GraphError, ParameterError

from ._errors import FlowDefinitionError
from ._loader import LoadError, load_flow
from ._payloads import EncodingError
from ._run import FlowRun

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


class UsageError(Exception):
    """A wrong flag or argument: printed as one line, exit code 2."""


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


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="headwater",
        description="Headwater workflow runtime: run flows embedded or inspect their graphs.",
    )
    parser.add_argument("--version", action="version", version=f"headwater {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a flow in this process and print its result",
        description="Run a flow embedded (in this process, on a thread pool) and print its "
        "result as JSON. Exit code 0 when the run succeeds, 1 when it fails, 130 when it "
        "is cancelled (Ctrl-C).",
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


if __name__ == "__main__":
    raise SystemExit(main())
