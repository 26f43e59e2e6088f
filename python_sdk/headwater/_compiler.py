"""Tracing compiler: runs a flow function with references to build a GraphSpec.

Calls to tasks inside the flow function add nodes and return TaskRefs (Prefect 1
style): nothing executes at compile time. The GraphSpec keeps constants as the live
objects the author passed (an embedded run never copies them); ``graph_to_proto``
encodes them when a FlowGraph message is needed.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from headwater.wire import (
    Const,
    DictOf,
    FromTask,
    GraphSpec,
    InputSpec,
    ListOf,
    Param,
    ParamSpec,
    TaskSpec,
    Trigger,
    iter_task_refs,
)
from headwater.wire._json_codec import JsonCodecError, dumps

from ._errors import FlowDefinitionError
from ._refs import ParamRef, Ref, TaskRef, contains_ref, unmapped

if TYPE_CHECKING:
    from ._flow import Flow
    from ._task import Task

_current: contextvars.ContextVar[_Context | None] = contextvars.ContextVar(
    "headwater_compile_context", default=None
)


def current_context() -> _Context | None:
    """The flow being compiled in this thread, if any."""
    return _current.get()


class _Context:
    def __init__(self, flow_name: str, params: set[str]) -> None:
        self.flow_name = flow_name
        self.params = params
        self.nodes: list[TaskSpec] = []
        self.node_ids: dict[str, TaskSpec] = {}
        self.name_counts: dict[str, int] = {}
        self.task_types_by_name: dict[str, str] = {}
        self.mapped_nodes: set[str] = set()
        self.case_stack: list[str] = []

    def _new_id(self, name: str) -> str:
        count = self.name_counts.get(name, 0) + 1
        self.name_counts[name] = count
        node_id = name if count == 1 else f"{name}-{count}"
        while node_id in self.node_ids:  # e.g. a task literally named "load-2"
            count += 1
            self.name_counts[name] = count
            node_id = f"{name}-{count}"
        return node_id

    def to_input(self, value: Any, task_name: str, arg: str) -> InputSpec:
        if isinstance(value, TaskRef):
            return FromTask(value.node_id, value.path)
        if isinstance(value, ParamRef):
            return Param(value.name)
        if isinstance(value, unmapped):
            raise FlowDefinitionError(
                f"task {task_name!r}, argument {arg!r}: unmapped() only applies to "
                "arguments of task.map(...)"
            )
        if isinstance(value, Ref):
            raise FlowDefinitionError(
                f"task {task_name!r}, argument {arg!r}: unsupported reference"
            )
        if contains_ref(value):
            if isinstance(value, set | frozenset):
                raise FlowDefinitionError(
                    f"task {task_name!r}, argument {arg!r}: a set cannot hold task results "
                    "(they are not hashable until they run); use a list"
                )
            if isinstance(value, list | tuple):
                return ListOf(
                    tuple(self.to_input(v, task_name, arg) for v in value),
                    isinstance(value, tuple),
                )
            if isinstance(value, dict):
                if not all(isinstance(k, str) for k in value):
                    raise FlowDefinitionError(
                        f"task {task_name!r}, argument {arg!r}: a dict holding task "
                        "results must have string keys"
                    )
                return DictOf(
                    tuple((k, self.to_input(v, task_name, arg)) for k, v in value.items())
                )
        return Const(value)

    def add_call(
        self, task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], *, mapped: bool
    ) -> TaskRef:
        wait_for = kwargs.pop("wait_for", None)
        existing = self.task_types_by_name.setdefault(task.name, task.task_type)
        if existing != task.task_type:
            raise ValueError(
                f"flow {self.flow_name!r}: two different tasks are named {task.name!r} "
                f"({existing} and {task.task_type}); give one of them another name="
            )
        arguments = task.bind_arguments(args, kwargs)
        mapped_args: list[str] = []
        inputs: dict[str, InputSpec] = {}
        for arg, value in arguments.items():
            if isinstance(value, unmapped):
                if not mapped:
                    raise FlowDefinitionError(
                        f"task {task.name!r}, argument {arg!r}: unmapped() only applies "
                        "to arguments of task.map(...)"
                    )
                value = value.value
            elif mapped:
                mapped_args.append(arg)
            inputs[arg] = self.to_input(value, task.name, arg)
            if task.portable:
                _check_json_constants(inputs[arg], task.name, arg, arg in mapped_args)
        if mapped and not mapped_args:
            raise FlowDefinitionError(
                f"task {task.name!r}: .map() needs at least one argument that is not unmapped()"
            )
        deps: dict[str, None] = dict.fromkeys(self.case_stack)
        for item in _as_list(wait_for, task.name):
            if not isinstance(item, TaskRef):
                raise FlowDefinitionError(
                    f"task {task.name!r}: wait_for takes task results from this flow, "
                    f"got {type(item).__name__}"
                )
            deps[item.node_id] = None
        for spec in inputs.values():
            if isinstance(spec, Const | Param):
                continue
            for ref in (spec,) if isinstance(spec, FromTask) else iter_task_refs(spec):
                if ref.task_id not in self.node_ids:
                    raise ValueError(
                        f"task {task.name!r} got the result of task {ref.task_id!r}, "
                        f"which is not part of flow {self.flow_name!r}"
                    )
        for dep in deps:
            if dep not in self.node_ids:
                raise ValueError(f"task {task.name!r} waits for unknown task {dep!r}")
        node_id = self._new_id(task.name)
        node = TaskSpec(
            id=node_id,
            name=task.name,
            task_type=task.task_type,
            inputs=inputs,
            wait_for=tuple(deps),
            retry=task.retry,
            timeout=task.timeout,
            trigger=task.trigger,
            cache=task.cache,
            mapped=tuple(mapped_args) if mapped else None,
            tags=task.tags,
            labels=task.labels,
            resources=task.resources,
            version=task.version,
            portable=task.portable,
            argument_order=task.argument_order,
            fn=task.fn if task.has_function else None,
            no_retry_on=task.no_retry_on,
        )
        self.nodes.append(node)
        self.node_ids[node_id] = node
        return TaskRef(node_id, mapped)


def _check_json_constants(spec: InputSpec, task_name: str, arg: str, mapped: bool) -> None:
    """A portable task reads only json: its constants must be json-encodable."""
    if isinstance(spec, ListOf):
        for item in spec.items:
            _check_json_constants(item, task_name, arg, False)
    elif isinstance(spec, DictOf):
        for _, item in spec.entries:
            _check_json_constants(item, task_name, arg, False)
    elif isinstance(spec, Const):
        value = spec.value
        if mapped and isinstance(value, tuple | range):
            value = list(value)  # mapped over element by element
        try:
            dumps(value)
        except JsonCodecError as exc:
            raise FlowDefinitionError(
                f"task {task_name!r}, argument {arg!r}: {exc}; the task reads only json "
                "(it is portable or implemented in another language)"
            ) from None


def _as_list(value: Any, task_name: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, list | tuple | set):
        return list(value)
    if isinstance(value, TaskRef):
        return [value]
    raise FlowDefinitionError(f"task {task_name!r}: wait_for must be a list of task results")


def trace(flow: Flow[..., Any]) -> GraphSpec:
    """Compile a flow function into a validated GraphSpec."""
    params = flow.parameters
    ctx = _Context(flow.name, {p.name for p in params})
    refs = {p.name: ParamRef(p.name) for p in params}
    token = _current.set(ctx)
    try:
        returned = flow.fn(**refs)
    finally:
        _current.reset(token)
    if inspect.isawaitable(returned) or inspect.isgenerator(returned):
        raise FlowDefinitionError(
            f"flow {flow.name!r} must be a plain function (not async or a generator)"
        )
    result = (
        None if returned is None else ctx.to_input(returned, f"<result of {flow.name}>", "return")
    )
    reference_ids: tuple[str, ...] = ()
    if result is not None:
        reference_ids = tuple(dict.fromkeys(r.task_id for r in iter_task_refs(result)))
    graph = GraphSpec(
        name=flow.name,
        version=flow.version,
        tasks=tuple(ctx.nodes),
        params=tuple(params),
        result=result,
        reference_task_ids=reference_ids,
        description=flow.description,
    )
    graph.validate()
    return graph


def map_eagerly(task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """``task.map(...)`` outside a flow: a plain loop over the zipped arguments."""
    iterables: dict[str, list[Any]] = {}
    fixed: dict[str, Any] = {}
    for arg, value in task.bind_arguments(args, kwargs).items():
        if isinstance(value, unmapped):
            fixed[arg] = value.value
        else:
            iterables[arg] = list(value)
    lengths = {len(v) for v in iterables.values()}
    if len(lengths) > 1:
        raise ValueError(f"task {task.name!r}: mapped arguments have different lengths")
    n = lengths.pop() if lengths else 0
    out = []
    for i in range(n):
        call = dict(fixed)
        call.update({arg: values[i] for arg, values in iterables.items()})
        out.append(task.fn(**call))
    return out


def param_specs(flow_name: str, signature: inspect.Signature) -> list[ParamSpec]:
    """Flow parameters from the flow function's signature."""
    specs = []
    for p in signature.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise FlowDefinitionError(
                f"flow {flow_name!r}: *args and **kwargs parameters are not supported"
            )
        if p.kind is p.POSITIONAL_ONLY:
            raise FlowDefinitionError(
                f"flow {flow_name!r}: positional-only parameters are not supported"
            )
        required = p.default is inspect.Parameter.empty
        specs.append(ParamSpec(p.name, None if required else p.default, required))
    return specs


# ------------------------------------------------------------------ conditionals


@contextmanager
def case(value: Any, expected: Any = True) -> Iterator[None]:
    """Tasks called inside ``with case(ref, v):`` run only when the task result ``ref``
    equals ``v`` at run time, and are SKIPPED otherwise. Use ``merge`` after a pair of
    branches to continue with whichever ran."""
    from ._builtins import case_check

    ctx = current_context()
    if ctx is None:
        raise RuntimeError("headwater.case() is only meaningful inside a @flow function")
    check = case_check(value, expected)
    assert isinstance(check, TaskRef)
    ctx.case_stack.append(check.node_id)
    try:
        yield
    finally:
        ctx.case_stack.pop()


def merge(*branches: Any) -> Any:
    """The first branch result that was not skipped (for use after ``case`` blocks)."""
    from ._builtins import merge_task

    if not branches:
        raise FlowDefinitionError("merge() needs at least one branch")
    ctx = current_context()
    if ctx is None:
        return next((b for b in branches if b is not None), None)
    saved, ctx.case_stack = ctx.case_stack, []
    try:
        return merge_task(list(branches))
    finally:
        ctx.case_stack = saved


__all__ = ["Trigger", "case", "current_context", "map_eagerly", "merge", "param_specs", "trace"]
