"""``@flow``: a function whose task calls form a graph, run embedded or on a server."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from headwater.wire import GraphSpec, ParameterError, bind_params
from headwater_runtime.embedded import (
    PROCESS_CACHE,
    EmbeddedRun,
    Executor,
    ThreadExecutor,
    relaxed_gc,
)
from headwater_runtime.engine import StateEntry, TaskRunRecord

from . import _compiler
from ._errors import FlowDefinitionError
from ._params import ParameterTypes
from ._run import FlowRun

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

    Args:
        fn: the flow function; its parameters are the flow's parameters.
        name: the flow's name on a server (default: the function's name).
        version: the version to register it as (default: numbered by the server).
    """

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        version: str = "",
    ) -> None:
        if not callable(fn):
            raise FlowDefinitionError(f"@flow needs a function, got {type(fn).__name__}")
        if inspect.iscoroutinefunction(fn) or inspect.isgeneratorfunction(fn):
            raise FlowDefinitionError(f"flow {fn.__name__!r} must be a plain function")
        self.fn = fn
        self.name = name or fn.__name__
        self.version = version
        self.description = inspect.getdoc(fn) or ""
        self.signature = inspect.signature(fn)
        self.parameters = _compiler.param_specs(self.name, self.signature)
        clash = RUN_OPTIONS & {p.name for p in self.parameters}
        if clash:
            raise FlowDefinitionError(
                f"flow {self.name!r}: parameter name(s) {sorted(clash)} are reserved for "
                "run options; rename them"
            )
        #: Set once the body is seen using a parameter as a value: (name, use, line).
        self._value_use: tuple[str, str, str] | None = None
        self._types: ParameterTypes | None = None
        functools.update_wrapper(self, fn)

    @property
    def types(self) -> ParameterTypes:
        """The parameters' annotations and their validators (read on first use)."""
        if self._types is None:
            self._types = ParameterTypes(self.name, self.fn, [p.name for p in self.parameters])
        return self._types

    @property
    def value_dependent(self) -> bool:
        """Whether the body is known to use a parameter as a value, so that its graph
        depends on the values (known after the first compile that took such a path)."""
        return _compiler.value_use(self) is not None

    def validate(self, *args: Any, **params: Any) -> dict[str, Any]:
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

    def graph(self, *args: Any, **params: Any) -> GraphSpec:
        """The engine's graph for these parameter values (live Python constants,
        callables attached). Without values, the symbolic graph; ParameterError when
        the flow needs values to build its graph and a required one is missing."""
        values = self.complete(self.validate(*args, **params), required=False)
        return _compiler.build_graph(self, values)

    def compile(self, *args: Any, **params: Any) -> graph_pb2.FlowGraph:
        """The FlowGraph message for these parameter values (constants encoded, each
        parameter's type and JSON Schema filled in), e.g. to inspect or send."""
        from ._graphs import compile_graph  # protobuf: only when asked

        given = self.validate(*args, **params)
        return compile_graph(self, given, self.complete(given, required=False))[0]

    def deploy(self, client: Client) -> str:
        """Register this flow on a server; returns the version it is stored as."""
        return client.deploy(self)

    def bind(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Parameter values by name from a call's arguments (as given, unchecked)."""
        try:
            return dict(self.signature.bind_partial(*args, **kwargs).arguments)
        except TypeError as exc:
            raise ParameterError(f"flow {self.name!r}: {exc}") from None

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
                f"flow {self.name!r} was called inside another flow; subflows are not "
                "supported yet: call its tasks directly, or run it from a task"
            )
        if executor is not None and max_workers is not None:
            raise FlowDefinitionError("pass either executor= or max_workers=, not both")
        values = self.complete(self.validate(*args, **params))
        assert values is not None
        with relaxed_gc():  # compiling allocates a few objects per task too
            return self._run(values, executor, max_workers, max_concurrency, on_transition)

    def _run(
        self,
        values: dict[str, Any],
        executor: Executor | None,
        max_workers: int | None,
        max_concurrency: int | None,
        on_transition: Callable[[TaskRunRecord, StateEntry], None] | None,
    ) -> FlowRun:
        graph = _compiler.build_graph(self, values)
        remote = [t for t in graph.tasks if t.fn is None]
        if remote:
            raise FlowDefinitionError(
                f"flow {self.name!r} uses task {remote[0].name!r} ({remote[0].task_type}), "
                "which is implemented in another language and runs only on a server: use "
                "`headwater run FILE:FLOW --server HOST:PORT` or Client.run(...)"
            )
        embedded = EmbeddedRun(
            graph,
            values,
            executor=executor or ThreadExecutor(max_workers),
            max_concurrency=max_concurrency,
            cache=PROCESS_CACHE,
            on_transition=on_transition,
        )
        engine = embedded.run()
        return FlowRun.from_engine(embedded.id, engine)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run embedded; return the flow's result or raise FlowRunFailed."""
        # The keywords mix the flow's parameters with run()'s options (executor=...).
        keywords: dict[str, Any] = kwargs
        flow_run = self.run(*args, **keywords)
        flow_run.raise_for_state()
        result: R = flow_run.result  # the decoded return value of the flow function
        return result

    def __repr__(self) -> str:
        return f"<Flow {self.name}>"


@overload
def flow(fn: Callable[P, R], /) -> Flow[P, R]: ...
@overload
def flow(
    *, name: str | None = ..., version: str = ...
) -> Callable[[Callable[P, R]], Flow[P, R]]: ...
def flow(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Declare a flow: ``@flow`` or ``@flow(name=..., version=...)``."""
    if fn is not None:
        return Flow(fn, **options)
    return lambda f: Flow(f, **options)
