"""Assembling a task run's inputs from upstream results, constants and parameters.

Pure functions over the engine's nodes; the ValueOps do the assembling, so the same
code serves live Python objects and the server's opaque payload handles.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from headwater.wire import Const, DictOf, FromTask, InputSpec, ListOf, Param, TaskRunState

from ._nodes import Node
from ._records import TaskRunRecord
from ._values import ValueOps


def attempt_inputs(
    run: TaskRunRecord, nodes: Mapping[str, Node], params: Mapping[str, Any], values: ValueOps
) -> dict[str, Any]:
    """The arguments of an attempt of ``run`` by name (element i for mapped child i)."""
    spec = run.spec
    if run.map_index < 0:
        return _plain_inputs(spec.inputs, nodes, params, values)
    node: Node = run._node
    shared = node.shared_inputs
    assert shared is not None and spec.mapped is not None
    i = run.map_index
    inputs: dict[str, Any] = {}
    for arg, src in spec.inputs.items():
        if arg in shared:
            value = shared[arg]
            inputs[arg] = values.item(value, i) if arg in spec.mapped else value
        else:
            assert isinstance(src, FromTask)
            upstream = nodes[src.task_id].run.children
            assert upstream is not None
            value = upstream[i].result
            inputs[arg] = values.select(value, src.path) if src.path else value
    return inputs


def _plain_inputs(
    specs: Mapping[str, InputSpec],
    nodes: Mapping[str, Node],
    params: Mapping[str, Any],
    values: ValueOps,
) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for arg, src in specs.items():
        kind = type(src)
        # The common inputs in short (``resolve`` gives the same values).
        if kind is FromTask and not src.path:  # type: ignore[union-attr]
            upstream = nodes[src.task_id].run  # type: ignore[union-attr]
            if upstream.state is not TaskRunState.MAPPED:
                inputs[arg] = upstream.result
                continue
        elif kind is Const:
            inputs[arg] = src.value  # type: ignore[union-attr]
            continue
        inputs[arg] = resolve(src, nodes, params, values)
    return inputs


def resolve(
    src: InputSpec, nodes: Mapping[str, Node], params: Mapping[str, Any], values: ValueOps
) -> Any:
    """The value an input spec stands for (a mapped task's result is the list of its
    children's results)."""
    if isinstance(src, FromTask):
        run = nodes[src.task_id].run
        if run.state is TaskRunState.MAPPED:
            assert run.children is not None
            value = values.make_list([c.result for c in run.children], False)
        else:
            value = run.result
        return values.select(value, src.path) if src.path else value
    if isinstance(src, Const):
        return src.value
    if isinstance(src, Param):
        return params[src.name]
    if isinstance(src, ListOf):
        return values.make_list(
            [resolve(i, nodes, params, values) for i in src.items], src.is_tuple
        )
    if isinstance(src, DictOf):
        return values.make_dict({k: resolve(v, nodes, params, values) for k, v in src.entries})
    raise AssertionError(f"unknown input {src!r}")
