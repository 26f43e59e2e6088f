"""Per-node bookkeeping and small helpers of the flow run state machine."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ._records import FailureInfo, TaskRunRecord
from ._spec import GraphSpec, ParameterError, TaskSpec, iter_params, iter_task_refs
from ._states import TaskRunState


class Clock(Protocol):
    """Source of the current time in seconds (epoch-based)."""

    def now(self) -> float: ...


@dataclass(frozen=True, slots=True)
class FlowRunFailure:
    """A task whose failure failed the flow run."""

    key: str
    state: TaskRunState
    failure: FailureInfo | None


class Node:
    """Per-task bookkeeping (not per run)."""

    __slots__ = (
        "complete",
        "elem_dependents",
        "elem_remaining",
        "elem_sources",
        "index",
        "run",
        "shared_inputs",
        "spec",
        "unfinished_children",
        "whole_dependents",
        "whole_remaining",
        "whole_sources",
    )

    def __init__(self, spec: TaskSpec, index: int) -> None:
        self.spec = spec
        self.index = index
        self.run: TaskRunRecord
        self.whole_sources: list[Node] = []
        self.elem_sources: list[Node] = []
        self.whole_dependents: list[Node] = []
        self.elem_dependents: list[Node] = []
        self.whole_remaining = 0
        self.elem_remaining = 0
        self.unfinished_children = 0
        self.complete = False
        self.shared_inputs: dict[str, Any] | None = None


def unmappable(arg: str, upstream: TaskRunRecord) -> str:
    return (
        f"cannot map over argument {arg!r}: task {upstream.key!r} ended "
        f"{upstream.state.name} and has no result"
    )


def final_states(node: Node, out: list[TaskRunState]) -> None:
    """A complete upstream node's final states: its children's when it mapped."""
    run = node.run
    if run.state is TaskRunState.MAPPED:
        out.extend(c.state for c in run.children or ())
    else:
        out.append(run.state)


def bind_params(graph: GraphSpec, given: Mapping[str, Any]) -> dict[str, Any]:
    """Parameter values with defaults filled in; TypeError for unknown or missing ones."""
    known = {p.name: p for p in graph.params}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ParameterError(
            f"flow {graph.name!r} got unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(known) or 'none'}"
        )
    bound: dict[str, Any] = {}
    for name, spec in known.items():
        if name in given:
            bound[name] = given[name]
        elif spec.required:
            raise ParameterError(f"flow {graph.name!r} is missing required parameter {name!r}")
        else:
            bound[name] = spec.default
    return bound


@dataclass(frozen=True, slots=True)
class JsonConsumers:
    """Where values must be json because a portable task reads them.

    ``producers`` maps an upstream task id, and ``params`` a flow parameter, to the
    first portable consumer that reads it, as ``(task name, argument)``.
    """

    producers: Mapping[str, tuple[str, str]]
    params: Mapping[str, tuple[str, str]]


def json_consumers(graph: GraphSpec) -> JsonConsumers:
    """The task results and parameters that portable tasks read (so must be json)."""
    producers: dict[str, tuple[str, str]] = {}
    params: dict[str, tuple[str, str]] = {}
    for task in graph.tasks:
        if not task.portable:
            continue
        for arg, spec in task.inputs.items():
            for ref in iter_task_refs(spec):
                producers.setdefault(ref.task_id, (task.name, arg))
            for name in iter_params(spec):
                params.setdefault(name, (task.name, arg))
    return JsonConsumers(producers, params)
