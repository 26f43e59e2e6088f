"""The ``headwater`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from typing import Any

import grpc

from headwater.wire import (
    ENV_SERVER,
    ConnectionSettings,
    EncodingError,
    FlowRunState,
    GraphError,
    ParameterError,
)
from headwater_runtime.tracing import (
    Tracing,
    TracingConfigError,
    configure_tracing,
    tracing_settings_from_env,
)

from ._cli_ops import add_ops_commands
from ._cli_prune import add_prune_command
from ._cli_remote import add_runs_command
from ._cli_schedules import add_schedules_command
from ._client import ServerError
from ._errors import FlowDefinitionError, UsageError
from ._flow import Flow
from ._loader import LoadError, load_flow
from ._run import FlowRun

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130


def parse_params(items: list[str]) -> dict[str, str]:
    """``k=v`` pairs as text; ``Flow.parse_params`` converts each to the parameter's
    annotation (``n=3`` -> 3 for ``n: int``, ``day=2026-01-02`` -> a date), and an
    unannotated parameter's value is parsed as JSON when it is valid JSON, else kept as
    a string (so ``--param n=3`` gives 3 and ``--param name=bob`` gives "bob")."""
    params: dict[str, str] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--param expects KEY=VALUE, got {item!r}")
        params[key] = raw
    return params


def flow_params(flow: Flow[..., Any], items: list[str]) -> dict[str, Any]:
    """The ``--param`` values of a command, converted and checked for ``flow``
    (ParameterError, exit code 2, before anything runs)."""
    return flow.validate(**flow.parse_params(parse_params(items)))


def _summary(run: FlowRun) -> str:
    counts = Counter(r.state.name for r in run.task_runs.values())
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    duration = f" in {run.duration:.3f}s" if run.duration is not None else ""
    return f"flow run {run.id[:8]} of {run.flow_name!r}: {run.state.name}{duration} ({parts})"


def traced(service_name: str) -> Tracing:
    """Install tracing from the OTEL_* variables for this command (shut it down on
    exit so buffered spans are exported)."""
    return configure_tracing(tracing_settings_from_env(service_name=service_name))


def cmd_run(args: argparse.Namespace) -> int:
    """``headwater run``: run a flow embedded (or on a server); print its result as JSON."""
    flow = load_flow(args.target)
    params = flow_params(flow, args.param)
    tracing = traced("headwater")
    try:
        return _run(args, flow, params)
    finally:
        tracing.shutdown()


def _run(args: argparse.Namespace, flow: Any, params: dict[str, Any]) -> int:
    if args.server:
        if args.dask is not None:
            raise UsageError(
                "--dask runs the flow in this process; it cannot be used with --server"
            )
        from ._cli_remote import run_on_server

        return run_on_server(flow, params, args.server, args.token)
    executor = None
    if args.dask is not None:
        if args.workers is not None:
            raise UsageError("--workers sizes the thread pool; it cannot be used with --dask")
        executor = dask_executor(args.dask)
        # The flow's file may not be importable on the cluster's workers: ship its
        # functions by value rather than by module name.
        module = sys.modules.get(flow.fn.__module__)
        if module is not None and module.__name__ != "__main__":
            import cloudpickle

            cloudpickle.register_pickle_by_value(module)
    try:
        run = flow.run(
            executor=executor,
            max_workers=args.workers,
            max_concurrency=args.max_concurrency,
            **params,
        )
    except ConnectionError as exc:  # the Dask scheduler could not be reached
        print(f"headwater: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(_summary(run), file=sys.stderr)
    for failure in run.failures:
        print(f"  {failure.key}: {failure.state.name}: {failure.failure}", file=sys.stderr)
    if run.state is FlowRunState.SUCCESS:
        print(_render(run.result))
        return EXIT_OK
    return EXIT_CANCELLED if run.state is FlowRunState.CANCELLED else EXIT_FAILED


def dask_executor(where: str) -> Any:
    """A DaskExecutor for ``--dask local`` (a LocalCluster for this run) or an address."""
    if not where:
        raise UsageError("--dask expects 'local' or a scheduler address like tcp://HOST:PORT")
    from headwater_runtime.dask import DaskExecutor

    return DaskExecutor(None if where == "local" else where)


def _render(value: Any) -> str:
    try:
        return json.dumps(value, indent=2, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def cmd_graph(args: argparse.Namespace) -> int:
    """``headwater graph``: print a flow's compiled FlowGraph as JSON."""
    from google.protobuf import json_format

    flow = load_flow(args.target)
    graph = flow.compile(**flow_params(flow, args.param))
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
    """``headwater worker``: run the given modules' tasks for a server until stopped."""
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

    # Before the Worker: it decides once whether to trace, and gRPC channels it opens
    # must be instrumented.
    tracing = traced("headwater-worker")

    def connected(worker: Worker) -> None:
        on_dask = getattr(worker, "dask_address", None)
        print(
            f"headwater worker {worker.name} connected to {worker.server} "
            f"({len(worker.tasks)} capabilities, {worker.slots} slots"
            + (f", tasks run on the Dask cluster at {on_dask})" if on_dask else ")"),
            file=sys.stderr,
            flush=True,
        )

    options: dict[str, Any] = {
        "labels": labels,
        "slots": args.slots,
        "name": args.name,
        "token": ConnectionSettings.from_env(token=args.token).token,
        "on_connect": connected,
    }
    if args.dask is not None:
        if not args.dask:
            raise UsageError("--dask expects 'local' or a scheduler address like tcp://HOST:PORT")
        from ._worker_dask import DaskBridgeWorker

        try:
            worker: Worker = DaskBridgeWorker(args.server, args.module, dask=args.dask, **options)
        except ConnectionError as exc:
            print(f"headwater: error: {exc}", file=sys.stderr)
            return EXIT_FAILED
    else:
        worker = Worker(args.server, args.module, **options)
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
    finally:
        tracing.shutdown()
    return EXIT_OK


def add_worker_command(sub: Any) -> None:
    """Add ``headwater worker`` and its flags to the CLI's subcommands."""
    worker = sub.add_parser(
        "worker",
        help="run tasks for a Headwater server",
        description="Connect to a control plane and run the tasks defined in the given "
        "modules (plus the built-in headwater.case and headwater.merge). Reconnects on "
        "its own; SIGTERM or Ctrl-C stops it (exit 0); a refused token exits 1. With "
        "--dask it is a Dask bridge: tasks run on a Dask cluster and their results stay "
        "there. OTEL_TRACES_EXPORTER=otlp|console traces every task it runs "
        "(docs/tracing.md).",
    )
    worker.add_argument(
        "--server",
        default=os.environ.get(ENV_SERVER),
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
        "--slots",
        type=int,
        default=None,
        help="most tasks running at once (default: CPUs + 4; with --dask, the cluster's threads)",
    )
    worker.add_argument(
        "--dask",
        default=None,
        metavar="local|ADDRESS",
        help="a Dask bridge: run the tasks on a Dask cluster ('local' starts a LocalCluster, "
        "or a scheduler address tcp://HOST:PORT); results stay in the cluster",
    )
    worker.add_argument("--name", default=None, help="display name (default: HOSTNAME-PID)")
    worker.add_argument(
        "--token", default=None, help="bearer token for the server (default: $HEADWATER_TOKEN)"
    )
    worker.set_defaults(func=cmd_worker)


def build_parser() -> argparse.ArgumentParser:
    """The ``headwater`` argument parser with every subcommand."""
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
        "succeeds, 1 when it fails, 130 when it is cancelled (Ctrl-C). With --dask the "
        "tasks run on a Dask cluster (the flow is still driven from this process). "
        "OTEL_TRACES_EXPORTER=otlp|console exports the run as a trace (docs/tracing.md).",
    )
    run.add_argument("target", help="FILE.py[:FLOW] or package.module[:FLOW]")
    run.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="flow parameter, converted to its annotation (n=3, day=2026-01-02, "
        "ids=[1,2]); unannotated: parsed as JSON when valid, else a string",
    )
    run.add_argument("--workers", type=int, default=None, help="thread pool size")
    run.add_argument(
        "--dask",
        default=None,
        metavar="local|ADDRESS",
        help="run the tasks on a Dask cluster: 'local' starts a LocalCluster for the run, "
        "or give a scheduler address (tcp://HOST:PORT); results stay in the cluster",
    )
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
        description="Compile a flow and print its FlowGraph message as JSON. A flow whose "
        "body uses its parameters as values (range(n), if n > 8) has a graph per set of "
        "values: give them with --param (docs/flows.md).",
    )
    graph.add_argument("target", help="FILE.py[:FLOW] or package.module[:FLOW]")
    graph.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="flow parameter to build the graph for (as for `headwater run`)",
    )
    graph.set_defaults(func=cmd_graph)
    from headwater_runtime.server import add_server_command

    add_server_command(sub)
    add_worker_command(sub)
    add_runs_command(sub)
    add_schedules_command(sub)
    add_prune_command(sub)
    add_ops_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``headwater`` command; returns the exit code (2 for a usage error, with
    one line on stderr instead of a traceback)."""
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
        TracingConfigError,
    ) as exc:
        print(f"headwater: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ServerError as exc:
        print(f"headwater: error: {exc}", file=sys.stderr)
        refused = exc.code in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        return EXIT_USAGE if refused else EXIT_FAILED
    except BrokenPipeError:
        # `headwater runs show ID | head`: the reader left; no traceback, and none
        # again when Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
