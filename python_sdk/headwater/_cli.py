"""The ``headwater`` command."""

from __future__ import annotations

from . import _grpc_env  # noqa: F401  (first: before anything imports grpc)

# isort: split
import argparse
import os
import re
import signal
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
    TLSConfigError,
    parse_addresses,
    parse_duration,
    printable,
)
from headwater_runtime.tracing import (
    Tracing,
    TracingConfigError,
    configure_tracing,
    tracing_settings_from_env,
)

from ._cli_connect import add_tls_args, at_least_one, tls_from_args
from ._cli_ops import add_ops_commands
from ._cli_prune import add_prune_command
from ._cli_remote import add_runs_command
from ._cli_render import result_text, user_output_to_stderr
from ._cli_schedules import add_schedules_command
from ._cli_tokens import add_tokens_command
from ._client import ServerError
from ._errors import CommandError, FlowDefinitionError, Terminated, Unreachable, UsageError
from ._flow import Flow
from ._loader import LoadError, load_flow, modules_from_cwd
from ._run import FlowRun
from ._signals import FlowRunInterrupted
from ._worker_stop import DEFAULT_GRACE

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_CANCELLED = 0, 1, 2, 3, 130
#: What each exit status means (``headwater --help`` lists it).
EXIT_STATUSES = (
    "exit status: 0 success; 1 the flow run failed, or the command did; 2 a usage error, or "
    "a request the server refused (bad input, not found, not in that state, already there, "
    "no or a wrong credential, a role that may not); "
    "3 the server (or --dask's scheduler, or --db's database server) could not be reached "
    "or is unavailable "
    "(restarting, a standby, its database away): try again; 130 cancelled or interrupted"
)


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
        if key in params:  # (the last one won, silently: a user trial)
            raise UsageError(
                f"--param {key} is given twice ({key}={params[key]}, {item}): give it once"
            )
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
    line = f"flow run {run.id[:8]} of {run.flow_name!r}: {run.state.name}{duration}"
    line += f" ({parts})" if parts else ""  # (a flow with no task: "()" a user trial)
    engine = run._engine
    if engine is not None and engine.timed_out is not None:  # (no task failed to say so)
        line += f": {engine.timed_out}"
    elif run.state is FlowRunState.FAILED and not run.failures and run.message:
        line += f": {run.message.splitlines()[0][:500]}"  # e.g. its result could not be built
    return line


def _show_embedded(run: FlowRun, *, full: bool) -> None:
    """The summary table and each failed task run's error and traceback (stderr)."""
    from ._cli_render import console, outcome_lines, summary_table

    err = console(sys.stderr)
    rows = []
    for record in run.task_runs.values():
        rows.append(
            (record.task_id, record.key, record.state.name, record.attempt, record.run_seconds, "")
        )
    if rows:
        err.print(summary_table(rows))
    # Root causes first, as FlowRun.failures lists them (then any other failed task run).
    order = {failure.key: i for i, failure in enumerate(run.failures)}
    failed = [r for r in run.task_runs.values() if r.state.is_failure and r.failure is not None]
    for record in sorted(failed, key=lambda r: order.get(r.key, len(order))):
        if record.failure is not None:
            err.print(printable(f"{record.key}: {record.state.name}"), markup=False)
            said = record.history[-1].message if record.history else ""
            for line in outcome_lines(record.state.name, record.failure, said, full=full):
                err.print(f"  {printable(line)}", markup=False)


def traced(service_name: str) -> Tracing:
    """Install tracing from the OTEL_* variables for this command (shut it down on
    exit so buffered spans are exported)."""
    return configure_tracing(tracing_settings_from_env(service_name=service_name))


def cmd_run(args: argparse.Namespace) -> int:
    """``headwater run``: run a flow embedded (or on a server); print its result as JSON."""
    with user_output_to_stderr():
        flow = load_flow(args.target)
        params = flow_params(flow, args.param)
    tracing = traced("headwater")
    # SIGTERM (a supervisor, `timeout`) stops the run as Ctrl-C does: cancelled (on a
    # server too, unless --detach) rather than the process ending with the run left
    # RUNNING, or its tasks killed mid-way with no summary.
    signal.signal(signal.SIGTERM, _as_ctrl_c)
    try:
        return _run(args, flow, params)
    finally:
        tracing.shutdown()


def _as_ctrl_c(signum: int, frame: Any) -> None:
    raise Terminated


def _run(args: argparse.Namespace, flow: Any, params: dict[str, Any]) -> int:
    if args.server:
        local = [
            flag
            for flag, given in (
                ("--dask", args.dask is not None),
                ("--workers", args.workers is not None),
                ("--max-concurrency", args.max_concurrency is not None),
            )
            if given
        ]
        if local:
            raise UsageError(
                f"{' and '.join(local)} {'applies' if len(local) == 1 else 'apply'} to a run "
                "in this process; it cannot be used with --server (a server's workers have "
                "their --slots, and concurrency limits: headwater limits)"
            )
        from ._cli_remote import run_on_server

        return run_on_server(flow, params, args.server, args)
    if args.detach:
        raise UsageError("--detach leaves a run on a server; it needs --server")
    remote = [
        flag
        for flag, given in (
            ("--token", args.token),
            ("--tls", args.tls),
            ("--tls-ca", args.tls_ca),
            ("--tls-cert", args.tls_cert),
            ("--tls-key", args.tls_key),
        )
        if given is not None
    ]
    if remote:  # (they were ignored: a user took the run for a server's)
        raise UsageError(
            f"{' and '.join(remote)} {'is' if len(remote) == 1 else 'are'} for a run on a "
            "server; add --server HOST:PORT (without it the flow runs in this process)"
        )
    if os.environ.get(ENV_SERVER):  # (the other commands' default --server)
        print(
            f"headwater run: running in this process ({ENV_SERVER} does not send a run to "
            "a server: add --server to run it there)",
            file=sys.stderr,
        )
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
    from ._cli_render import Progress

    _log_tasks_at_info()
    try:
        # What tasks print goes to stderr: stdout holds only the result (`| jq` works).
        with user_output_to_stderr(), Progress(f"flow {flow.name!r}") as progress:
            try:
                run = flow.run(
                    executor=executor,
                    max_workers=args.workers,
                    max_concurrency=args.max_concurrency,
                    on_transition=lambda r, e: progress.update(r.key, r.task_id, e.state.name),
                    **params,
                )
            except FlowRunInterrupted as interrupted:  # cancelled: its summary, exit 130
                run = interrupted.flow_run
    except ConnectionError as exc:  # the Dask scheduler could not be reached: try again
        print(f"headwater: error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    _show_embedded(run, full=args.full)
    print(_summary(run), file=sys.stderr)
    gone = getattr(executor, "gone", None)
    if gone is not None and run.state is FlowRunState.FAILED:  # (its scheduler went away)
        print(f"headwater: error: {gone}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if run.state is FlowRunState.SUCCESS:
        print(result_text(run.result))
        return EXIT_OK
    return EXIT_CANCELLED if run.state is FlowRunState.CANCELLED else EXIT_FAILED


def _log_tasks_at_info() -> None:
    """Let tasks' INFO records reach FlowRun.logs (logging's default drops them below
    WARNING) unless the application configured logging itself."""
    import logging

    root = logging.getLogger()
    if not root.handlers and root.level == logging.WARNING:
        root.setLevel(logging.INFO)


def check_dask(where: str) -> None:
    """UsageError unless ``--dask`` is 'local' or a scheduler address: a mistyped one
    (``--dask lcoal``) waited out Dask's 20 s connect timeout, then printed two
    tracebacks and exited 1 (a user trial)."""
    if where == "local":
        return
    expected = "--dask expects 'local' or a scheduler address like tcp://HOST:PORT"
    if not where:
        raise UsageError(expected)
    try:
        from distributed.comm.addressing import parse_address, parse_host_port
    except ImportError:
        return  # (the executor says what to install)
    try:
        parse_host_port(parse_address(where)[1])
    except ValueError as exc:
        raise UsageError(f"{expected}, got {where!r} ({exc})") from None


def dask_executor(where: str) -> Any:
    """A DaskExecutor for ``--dask local`` (a LocalCluster for this run) or an address."""
    check_dask(where)
    from headwater_runtime.dask import DaskExecutor

    if where == "local":  # (its workers print to stderr: stdout holds only the result)
        return DaskExecutor(None, print_to_stderr=True)
    return DaskExecutor(where)


def cmd_graph(args: argparse.Namespace) -> int:
    """``headwater graph``: print a flow's compiled graph (text, DOT, Mermaid or JSON)."""
    from ._cli_graph import render

    with user_output_to_stderr():
        flow = load_flow(args.target)
        graph = flow.compile(**flow_params(flow, args.param))
    print(render(graph, args.format))
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

    from ._worker import Worker, WorkerError, message_bytes
    from ._worker_stop import StopOnSignal

    if not args.server:
        raise UsageError("no server given: pass --server HOST:PORT or set HEADWATER_SERVER")
    try:
        parse_addresses(args.server)
    except ValueError as exc:
        raise UsageError(f"--server expects HOST:PORT[,HOST:PORT...]: {exc}") from None
    modules = [*args.modules, *args.module]
    if not modules:
        raise UsageError(
            "give at least one module with the tasks this worker runs: "
            "headwater worker FILE.py (or --module package.module)"
        )
    if args.slots is not None and args.slots < 1:
        raise UsageError(f"--slots must be at least 1, got {args.slots}")
    try:
        args.grace = parse_duration(args.grace)
    except ValueError as exc:
        raise UsageError(f"--grace {exc}") from None
    try:
        args.max_message_bytes = message_bytes(args.max_message_bytes)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    labels = parse_labels(args.label)
    modules_from_cwd()

    # Before the Worker: it decides once whether to trace, and gRPC channels it opens
    # must be instrumented.
    tracing = traced("headwater-worker")

    def connected(worker: Worker) -> None:
        on_dask = getattr(worker, "dask_address", None)
        print(
            f"headwater worker {worker.name} connected to {worker.address} "
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
        "tls": tls_from_args(args),
        "on_connect": connected,
    }
    if args.allow_stale_code:
        options["allow_stale_code"] = True
    options["max_message_bytes"] = args.max_message_bytes
    if args.dask is not None:
        check_dask(args.dask)
        from ._worker_dask import DaskBridgeWorker

        try:
            worker: Worker = DaskBridgeWorker(args.server, modules, dask=args.dask, **options)
        except ConnectionError as exc:  # (the scheduler could not be reached: try again)
            print(f"headwater: error: {exc}", file=sys.stderr)
            return EXIT_UNAVAILABLE
    else:
        worker = Worker(args.server, modules, **options)
    # Task logs at INFO and up are sent to the server (and printed here).
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    # SIGTERM / SIGINT stop the worker from a watcher thread, within the grace period
    # whatever its task threads do (_worker_stop says why not from a signal handler).
    stopper = StopOnSignal(worker.stop, args.grace, name=f"worker {worker.name}")
    stopper.install()
    try:
        worker.run()
    except WorkerError as exc:  # refused by the server, for good: as any refused request
        print(f"headwater: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ConnectionError as exc:  # a Dask bridge's scheduler went away: try again
        print(f"headwater: error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        stopper.uninstall()
        tracing.shutdown()
    return EXIT_OK


def add_worker_command(sub: Any) -> None:
    """Add ``headwater worker`` and its flags to the CLI's subcommands."""
    worker = sub.add_parser(
        "worker",
        help="run tasks for a Headwater server",
        description="Connect to a control plane and run the tasks defined in the given "
        "modules (plus the built-in headwater.case and headwater.merge). Reconnects on "
        "its own; SIGTERM or Ctrl-C stops it: running tasks are given back to the server "
        "(it runs them again elsewhere) and the worker exits 0, or 1 with every thread's "
        "stack if it could not stop within --grace; a second signal exits at once. A "
        "refused token (or protocol) exits 2. With "
        "--dask it is a Dask bridge: tasks run on a Dask cluster and their results stay "
        "there. OTEL_TRACES_EXPORTER=otlp|console traces every task it runs "
        "(docs/tracing.md).",
    )
    worker.add_argument(
        "--server",
        default=os.environ.get(ENV_SERVER),
        metavar="HOST:PORT[,...]",
        help="control plane address, or several servers sharing one PostgreSQL database "
        "(the worker follows the leader) (default: $HEADWATER_SERVER)",
    )
    worker.add_argument(
        "modules",
        nargs="*",
        metavar="MODULE",
        help="package.module or path/to/file.py whose @tasks to run (a file inside a "
        "package is imported under its dotted name, pkg/jobs.py as pkg.jobs)",
    )
    worker.add_argument(
        "--module",
        "-m",
        action="append",
        default=[],
        metavar="MODULE",
        help="a MODULE as well, given as an option (repeatable)",
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
        "--grace",
        default=f"{DEFAULT_GRACE:g}s",
        metavar="DURATION",
        help="longest the worker takes to stop after SIGTERM or Ctrl-C, e.g. 10s (default "
        "%(default)s); past it the process exits with status 1 whatever its tasks are doing",
    )
    worker.add_argument(
        "--allow-stale-code",
        action="store_true",
        help="run tasks whatever code the run's graph was built with: report no code "
        "digests (by default a task whose code here differs from the run's is not given "
        "to this worker, and the run says why it waits)",
    )
    worker.add_argument(
        "--max-message-bytes",
        type=int,
        default=None,
        metavar="BYTES",
        help="largest message the worker accepts; a server started with a larger "
        "--max-message-bytes refuses the worker (default: $HEADWATER_MAX_MESSAGE_BYTES, "
        "else 4194304)",
    )
    worker.add_argument(
        "--token", default=None, help="bearer token for the server (default: $HEADWATER_TOKEN)"
    )
    add_tls_args(worker)
    worker.set_defaults(func=cmd_worker)


def _name_parsers(parser: argparse.ArgumentParser) -> None:
    """Each (sub)command's parser remembers itself (``cli_parser``): an unrecognized
    argument is then reported with that command's usage line, not the top one."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.set_defaults(cli_parser=sub)
                _name_parsers(sub)


def build_parser() -> argparse.ArgumentParser:
    """The ``headwater`` argument parser with every subcommand."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="headwater",
        description="Headwater workflow runtime: run flows embedded or on a server, run the "
        "server and its workers, inspect flow runs, and schedule flows on a server.",
        epilog=EXIT_STATUSES,
    )
    parser.add_argument("--version", action="version", version=f"headwater {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run a flow (in this process, or on a server with --server); print its result",
        description="Run a flow and print its result as JSON: embedded (in this process, on a "
        "thread pool) by default, also when HEADWATER_SERVER is set, or on a server with "
        "--server. Progress is shown live on a "
        "terminal (plain lines otherwise), then a summary and each failed task's error "
        "and traceback. Exit code 0 when the run succeeds, 1 when it fails, 3 when the "
        "server cannot be reached, 130 when it "
        "is cancelled (Ctrl-C or SIGTERM cancels it; with --server --detach it is left "
        "running). "
        "With --dask the "
        "tasks run on a Dask cluster (the flow is still driven from this process). "
        "OTEL_TRACES_EXPORTER=otlp|console exports the run as a trace (docs/tracing.md).",
    )
    run.add_argument(
        "target",
        help="FILE.py[:FLOW] or package.module[:FLOW]; without FLOW, the one flow the "
        "module defines (flows it imports do not count)",
    )
    run.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="flow parameter, converted to its annotation (n=3, day=2026-01-02, "
        "ids=[1,2]); unannotated: parsed as JSON when valid, else a string",
    )
    run.add_argument(
        "--workers", type=at_least_one, default=None, help="thread pool size (not with --server)"
    )
    run.add_argument(
        "--dask",
        default=None,
        metavar="local|ADDRESS",
        help="run the tasks on a Dask cluster: 'local' starts a LocalCluster for the run, "
        "or give a scheduler address (tcp://HOST:PORT); results stay in the cluster",
    )
    run.add_argument(
        "--max-concurrency",
        type=at_least_one,
        default=None,
        help="most task runs executing at once (not with --server)",
    )
    run.add_argument(
        "--server",
        default=None,
        metavar="HOST:PORT[,...]",
        help="run on this Headwater server instead of in this process (deploys the flow); "
        "several comma-separated: the one leading",
    )
    run.add_argument("--token", default=None, help="bearer token for --server (or HEADWATER_TOKEN)")
    run.add_argument(
        "--detach",
        action="store_true",
        help="with --server: Ctrl-C or SIGTERM leaves the run running on the server "
        "(default: cancel it)",
    )
    run.add_argument(
        "--full", action="store_true", help="print failed tasks' whole tracebacks (not trimmed)"
    )
    add_tls_args(run)
    run.set_defaults(func=cmd_run)

    graph = sub.add_parser(
        "graph",
        help="print a flow's compiled graph (text, DOT, Mermaid or JSON)",
        description="Compile a flow and print its graph: as text (the default: one line per "
        "task with the tasks and parameters it takes its inputs from), Graphviz DOT, a "
        "Mermaid flowchart, or "
        "the FlowGraph message as JSON. A flow whose body uses its parameters as values "
        "(range(n), if n > 8) has a graph per set of values: give them with --param "
        "(docs/flows.md).",
    )
    graph.add_argument(
        "--format",
        choices=["text", "dot", "mermaid", "json"],
        default="text",
        help="(default text)",
    )
    graph.add_argument(
        "target", help="FILE.py[:FLOW] or package.module[:FLOW] (as for headwater run)"
    )
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
    add_tokens_command(sub)
    add_ops_commands(sub)
    _name_parsers(parser)
    return parser


def _negative_values(argv: list[str]) -> list[str]:
    """``--every -5s`` as ``--every=-5s``: argparse takes a value that starts with a
    dash and is not a plain number for an option, and answers "expected one argument"
    instead of the flag's own message about the value."""
    out: list[str] = []
    for arg in argv:
        flag = out[-1] if out else ""
        if flag.startswith("--") and flag != "--" and "=" not in flag and _DASHED.match(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


#: A value that starts with a dash and a digit but is not a plain number (``-5s``).
_DASHED = re.compile(r"-\d+(\.\d+)?[^\d.]")


def main(argv: list[str] | None = None) -> int:
    """Run the ``headwater`` command; returns the exit code (2 for a usage error, with
    one line on stderr instead of a traceback)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(_negative_values(sys.argv[1:] if argv is None else argv))
    # `headwater tokens revoke --db DB NAME`: argparse takes ACTION and its optional
    # argument together, before the options, and left NAME over ("unrecognized
    # arguments", a user trial). A command of that shape names that argument.
    late = getattr(args, "late_positional", None)
    if late and len(extra) == 1 and not extra[0].startswith("-") and getattr(args, late) is None:
        setattr(args, late, extra.pop())
    if extra:  # (the deepest command's parser, whose usage line fits)
        getattr(args, "cli_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
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
        TLSConfigError,
    ) as exc:
        print(f"headwater: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"headwater: error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE if isinstance(exc, Unreachable) else EXIT_FAILED
    except ServerError as exc:
        print(f"headwater: error: {exc}", file=sys.stderr)
        if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return EXIT_UNAVAILABLE  # (a script may try again; the run may be fine)
        refused = exc.code in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.ALREADY_EXISTS,
            # (1 said "the flow run failed" to a script whose token was refused)
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
        )
        # A request over one of the server's limits is refused for what it holds, as
        # bad input is (it exited 1, "failed", a user trial); RESOURCE_EXHAUSTED also
        # says a full disk, which stays 1.
        refused = refused or (
            exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            and "over this server's limit" in str(exc)
        )
        return EXIT_USAGE if refused else EXIT_FAILED
    except KeyboardInterrupt:
        print("headwater: interrupted", file=sys.stderr)
        return EXIT_CANCELLED
    except BrokenPipeError:
        # `headwater runs show ID | head`: the reader left; no traceback, and none
        # again when Python flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        # The flow body's own error while its graph was built (`list(range(n))` with
        # a huge n, a `raise` in the body): nothing ran. One line, as for a flow
        # defined wrongly; ~30 lines of Headwater's frames were printed before.
        from ._compiler import body_error

        said = body_error(exc)
        if not said:
            raise
        print(f"headwater: error: {said}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
