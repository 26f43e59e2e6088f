"""``@flow``: a function whose task calls form a graph, run embedded or on a server."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, Unpack, overload

from headwater.wire import GraphSpec, ParameterError, bind_params
from headwater_runtime.embedded import (
    PROCESS_CACHE,
    EmbeddedRun,
    Executor,
    ThreadExecutor,
    relaxed_gc,
)
from headwater_runtime.engine import StateEntry, TaskRunRecord
from headwater_runtime.execution import current_task

from . import _compiler
from ._code import SourceSnapshot, defined_in_a_class
from ._errors import FlowDefinitionError
from ._options import FlowOptions, ParsedOptions, check_label, check_names, parse_options
from ._params import ParameterTypes
from ._run import FlowRun
from ._signals import FlowRunFailed

if TYPE_CHECKING:
    from headwater.v1 import graph_pb2

    from ._client import Client

P = ParamSpec("P")
R = TypeVar("R")

#: Keyword names ``Flow.run`` takes for itself; flow parameters may not use them.
RUN_OPTIONS = frozenset({"executor", "max_workers", "max_concurrency", "on_transition"})


class Flow(Generic[P, R]):
    """A flow. ``flow(**params)`` runs it embedded and returns its result;
    ``flow.run(**params)`` returns a FlowRun; ``flow.compile(**params)`` returns the
    graph for those parameter values (the same graph for all values unless the body
    uses a parameter as a value: docs/flows.md).

    Called inside another flow's body, a flow is a *subflow*: a node of that flow's
    graph that runs as a child flow run (docs/flows.md); called inside a task while it
    runs, it starts a child flow run of that task run and returns its result.

    Args:
        fn: the flow function; its parameters are the flow's parameters.
        name: the flow's name on a server (default: the function's name).
        version: the version to register it as (default: numbered by the server).
        **options: how its calls as a subflow are retried, timed out and triggered, as
            for a task (see ``flow``).
    """

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        version: str = "",
        **options: Unpack[FlowOptions],
    ) -> None:
        if not callable(fn):
            raise FlowDefinitionError(f"@flow needs a function, got {type(fn).__name__}")
        if inspect.iscoroutinefunction(fn) or inspect.isgeneratorfunction(fn):
            raise FlowDefinitionError(f"flow {fn.__name__!r} must be a plain function")
        self.fn = fn
        self.name = check_label("flow", name or fn.__name__)
        self.version = version
        check_names(options, FlowOptions, self.name, kind="flow", also=("name", "version"))
        self._options: FlowOptions = options
        #: Retries, timeout, trigger and tags of the node a call inside a flow adds.
        self.call_options: ParsedOptions = _flow_options(options, self.name)
        self._source = SourceSnapshot(fn)
        self.description = inspect.getdoc(fn) or ""
        self.signature = inspect.signature(fn)
        first = next(iter(self.signature.parameters), None)
        if first == "self" and defined_in_a_class(fn):
            # (Called on an instance, the Flow got no self: "missing required parameter
            # 'self'", a user trial.)
            raise FlowDefinitionError(
                f"flow {self.name!r}: @flow on a method is not supported (self would be one "
                "of its parameters); make the flow a plain function"
            )
        self.parameters = _compiler.param_specs(self.name, self.signature)
        clash = RUN_OPTIONS & {p.name for p in self.parameters}
        if clash:
            raise FlowDefinitionError(
                f"flow {self.name!r}: parameter name(s) {sorted(clash)} are reserved for "
                "run options; rename them"
            )
        #: Set once the body is seen using a parameter as a value: (name, use, line).
        self._value_use: tuple[str, str, str] | None = None
        #: The parameters a task of it maps over (``_compiler.mapped_parameters``).
        self._mapped_parameters: tuple[str, ...] | None = None
        self._types: ParameterTypes | None = None
        functools.update_wrapper(self, fn)

    @property
    def code_digest(self) -> str:
        """The digest of the flow function's code (as for tasks): what a worker reports
        for the flows it can build graphs of."""
        return self._source.digest()

    def map(self, /, *args: Any, **kwargs: Any) -> Any:
        """Not supported: a subflow cannot be mapped (FlowDefinitionError saying what to
        do instead)."""
        raise FlowDefinitionError(
            f"flow {self.name!r}: a subflow cannot be mapped (.map is for tasks); call it "
            f"once per element of a list known while the flow is built ([{self.name}(x) "
            "for x in items]), or map a task that does the child's work"
        )

    def with_options(self, **overrides: Unpack[FlowOptions]) -> Flow[P, R]:
        """A copy of this flow whose calls as a subflow use these options."""
        check_names(overrides, FlowOptions, self.name, kind="flow")
        merged: FlowOptions = {**self._options, **overrides}
        return Flow(self.fn, name=self.name, version=self.version, **merged)

    @property
    def types(self) -> ParameterTypes:
        """The parameters' annotations and their validators (read on first use)."""
        if self._types is None:
            types = ParameterTypes(self.name, self.fn, [p.name for p in self.parameters])
            # Defaults are converted as given values are (`day: date = "2026-01-02"`
            # gave the body a str), leniently: a default that does not fit stays as
            # written (`limit: int = None`, a common shorthand).
            self.parameters = [
                p if p.required else replace(p, default=types.convert_default(p.name, p.default))
                for p in self.parameters
            ]
            self._types = types
        return self._types

    @property
    def value_dependent(self) -> bool:
        """Whether the body is known to use a parameter as a value, so that its graph
        depends on the values (known after the first compile that took such a path)."""
        return _compiler.value_use(self) is not None

    def validate(self, /, *args: Any, **params: Any) -> dict[str, Any]:
        """The parameter values of a call, checked and converted against the
        annotations (defaults not filled in). ParameterError for an unknown parameter
        or a value that does not fit."""
        return self.types.validate(self.bind(*args, **params))

    def complete(self, given: dict[str, Any], *, required: bool = True) -> dict[str, Any] | None:
        """``given`` with defaults filled in; a missing required parameter is a
        ParameterError, or None when not ``required``."""
        try:
            return bind_params(GraphSpec(self.name, (), tuple(self.parameters)), given)
        except ParameterError:
            if required:
                raise
            return None

    def prepare_run(self, params: dict[str, Any]) -> tuple[GraphSpec, dict[str, Any]]:
        """The graph and the checked, converted parameters (defaults filled in) of a
        run with these parameter values (as a subflow's child run is started)."""
        values = self.complete(self.validate(**params))
        assert values is not None
        graph = _compiler.build_graph(self, values)
        remote = [t for t in graph.tasks if t.fn is None and t.subflow is None]
        if remote:
            raise FlowDefinitionError(
                f"flow {self.name!r} uses task {remote[0].name!r} ({remote[0].task_type}), "
                "which is implemented in another language and runs only on a server: use "
                "`headwater run FILE:FLOW --server HOST:PORT` or Client.run(...)"
            )
        return graph, values

    def graph(self, /, *args: Any, **params: Any) -> GraphSpec:
        """The engine's graph for these parameter values (live Python constants,
        callables attached). Without values, the symbolic graph; ParameterError when
        the flow needs values to build its graph and a required one is missing."""
        values = self.complete(self.validate(*args, **params), required=False)
        return _compiler.build_graph(self, values)

    def compile(self, /, *args: Any, **params: Any) -> graph_pb2.FlowGraph:
        """The FlowGraph message for these parameter values (constants encoded, each
        parameter's type and JSON Schema filled in), e.g. to inspect or send."""
        from ._graphs import compile_graph  # protobuf: only when asked

        given = self.validate(*args, **params)
        return compile_graph(self, given, self.complete(given, required=False), served=False)[0]

    def deploy(self, client: Client) -> str:
        """Register this flow on a server; returns the version it is stored as."""
        return client.deploy(self)

    def bind(self, /, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Parameter values by name from a call's arguments (as given, unchecked)."""
        try:
            return dict(self.signature.bind_partial(*args, **kwargs).arguments)
        except TypeError as exc:
            known = [p.name for p in self.parameters]
            accepts = f"; it accepts: {', '.join(sorted(known)) or 'none'}"
            unknown = "unexpected keyword" in str(exc)  # (as the CLI and the server say)
            raise ParameterError(f"flow {self.name!r}: {exc}{accepts if unknown else ''}") from None

    def parse_params(self, raw: dict[str, str]) -> dict[str, Any]:
        """Values given as text (``headwater run -p k=v``), converted to each
        parameter's annotation; ParameterError for an unknown name or a bad value."""
        known = {p.name for p in self.parameters}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ParameterError(
                f"flow {self.name!r} got unknown parameter(s) "
                f"{', '.join(map(repr, unknown))}; it accepts: {', '.join(sorted(known)) or 'none'}"
            )
        return {name: self.types.from_text(name, text) for name, text in raw.items()}

    def run(
        self,
        /,
        *args: Any,
        executor: Executor | None = None,
        max_workers: int | None = None,
        max_concurrency: int | None = None,
        on_transition: Callable[[TaskRunRecord, StateEntry], None] | None = None,
        **params: Any,
    ) -> FlowRun:
        """Run embedded and return the FlowRun; never raises for a task failure.

        Args:
            executor: where tasks run (default: a ThreadExecutor).
            max_workers: thread pool size when no executor is given.
            max_concurrency: most task runs executing at once in this flow run.
            on_transition: called with (task run, state entry) on every state change,
                in the calling thread (e.g. to show progress).
        """
        if _compiler.current_context() is not None:
            raise FlowDefinitionError(
                f"flow {self.name!r}: inside a flow, call it ({self.name}(...)) to run it "
                "as a subflow; .run() starts a flow run of its own"
            )
        if executor is not None and max_workers is not None:
            raise FlowDefinitionError("pass either executor= or max_workers=, not both")
        for option, value in (("max_workers", max_workers), ("max_concurrency", max_concurrency)):
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise ValueError(f"flow {self.name!r}: {option} must be an int >= 1, got {value!r}")
        running = current_task()
        if running is not None and running[0] is not None:
            if executor is not None or max_workers is not None:
                raise FlowDefinitionError(
                    f"flow {self.name!r} was called inside a task: it runs as a child of "
                    "that task run, where the task runs; executor= and max_workers= "
                    "choose where a top-level run runs"
                )
            return self._run_in_task(running, self.bind(*args, **params))
        with relaxed_gc():  # compiling allocates a few objects per task too
            graph, values = self.prepare_run(self.bind(*args, **params))
            embedded = EmbeddedRun(
                graph,
                values,
                executor=executor or ThreadExecutor(max_workers),
                max_concurrency=max_concurrency,
                cache=PROCESS_CACHE,
                on_transition=on_transition,
            )
            embedded.run()
        return FlowRun.from_embedded(embedded)._raise_if_interrupted(embedded)

    def _run_in_task(self, running: tuple[Any, str, int], given: dict[str, Any]) -> FlowRun:
        """A flow called by a task while it runs: a child flow run of that task run, in
        the task's host (this process, or the server the worker serves)."""
        launcher, key, attempt = running
        if isinstance(launcher, EmbeddedRun):
            graph, values = self.prepare_run(given)
            # (its engine is released by the parent's FlowRun, which holds this run)
            return FlowRun.from_embedded(launcher.run_child(graph, values, key), held=False)
        run: FlowRun = launcher.run_flow(self, self.validate(**given), key, attempt)
        return run

    def __call__(self, /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run embedded; return the flow's result or raise FlowRunFailed. Inside a flow
        body, add a subflow node instead (its result is a reference, as a task's)."""
        ctx = _compiler.current_context()
        if ctx is not None:
            # A TaskRef to the child's result stands in for R, as for a task call.
            return ctx.add_subflow(self, args, dict(kwargs))  # type: ignore[return-value]
        # The keywords mix the flow's parameters with run()'s options (executor=...).
        keywords: dict[str, Any] = kwargs
        flow_run = self.run(*args, **keywords)
        try:
            flow_run.raise_for_state()
        except FlowRunFailed:
            # This frame is in the error's traceback: holding the run here tied the
            # run's values into a cycle with it (a failed run's values waited for the
            # cycle collector; the error holds the run for whoever catches it).
            del flow_run
            raise
        result: R = flow_run.result  # the decoded return value of the flow function
        return result

    def __repr__(self) -> str:
        return f"<Flow {self.name}>"


def _flow_options(options: FlowOptions, name: str) -> ParsedOptions:
    """``parse_options`` for a flow: its errors say "flow", not "task"."""
    try:
        return parse_options(options, name, remote=False)
    except (ValueError, TypeError) as exc:
        text, said = str(exc), f"task {name!r}:"
        if not text.startswith(said):
            raise
        raise type(exc)(f"flow {name!r}:{text[len(said) :]}") from None


@overload
def flow(fn: Callable[P, R], /) -> Flow[P, R]: ...
@overload
def flow(
    *, name: str | None = ..., version: str = ..., **options: Unpack[FlowOptions]
) -> Callable[[Callable[P, R]], Flow[P, R]]: ...
def flow(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Declare a flow: ``@flow`` or ``@flow(name=..., version=..., retries=...)``.

    Options:
        name: the flow's name on a server (default: the function's name).
        version: the version to register it as (default: numbered by the server).
        retries, retry_delay, backoff, max_retry_delay, retry_jitter, timeout, trigger,
            tags: how a call of this flow inside another flow (a subflow node) is
            retried, timed out and triggered, exactly as for a task (see ``task``). A
            retry runs a new child flow run; a timeout cancels the child.
        timeout: also bounds a top-level run of the flow (each run attempt): at the
            deadline its unfinished task runs are cancelled and it fails.
    """
    if fn is not None:
        return Flow(fn, **options)
    return lambda f: Flow(f, **options)
