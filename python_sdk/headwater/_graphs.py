"""A flow's FlowGraph message for one run's parameters, and those parameters encoded.

The one place that turns (flow, parameter values) into what a control plane stores and
runs: ``Flow.compile``, ``Client.run``/``deploy``/``create_schedule`` and the CLI all
go through ``compile_graph``, so a value-dependent graph always carries the digest of
the very bytes sent as the run's parameters (docs/flows.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Set
from typing import TYPE_CHECKING, Any

from headwater.v1 import graph_pb2, payload_pb2
from headwater.wire import (
    LENGTH_KEY,
    EncodingError,
    GraphError,
    GraphSpec,
    ParameterError,
    encode,
    graph_to_proto,
    json_consumers,
    parameters_digest,
)

from ._compiler import build_graph
from ._errors import FlowDefinitionError

if TYPE_CHECKING:
    from ._flow import Flow

#: Encodes one parameter value (``portable``: json only) as a Value message.
Encoder = Callable[[Any, bool], payload_pb2.Value]
#: Registers a subflow's graph and returns the version to pin ("" leaves it to the
#: server: the latest, or a graph built for the node's inputs).
Pin = Callable[["Flow[..., Any]"], str]


def inline_value(value: Any, portable: bool) -> payload_pb2.Value:
    """A Value carrying the encoded bytes inline (nothing is uploaded)."""
    encoded = encode(value, portable=portable)
    return payload_pb2.Value(
        inline=payload_pb2.Payload(data=encoded.data, metadata=encoded.metadata)
    )


def _check_mapped(mapped: Set[str], given: Mapping[str, Any], defaults: Mapping[str, Any]) -> None:
    """ParameterError for a run's parameter that a task maps over but that is no list
    or tuple: the server refused it (when left to its default) asking for it to be
    passed, or took it and failed the task, while the usual mistake is a ``.map()``
    call that maps over an argument meant to be passed whole (a user trial)."""
    for name in sorted(mapped):
        if name not in given and name not in defaults:
            continue
        value = given[name] if name in given else defaults[name]
        if not isinstance(value, list | tuple):
            raise ParameterError(
                f"parameter {name!r} is a {type(value).__name__}, but a task maps over it: "
                "on a server a task maps over a list or tuple parameter only; pass a list, "
                "or, if each call should get the whole value, wrap it in unmapped(...) "
                "where the flow passes it to .map()"
            )


def with_types(flow: Flow[..., Any], graph: GraphSpec) -> GraphSpec:
    """The graph with each parameter's type name and JSON Schema filled in."""
    params = []
    for p in graph.params:
        type_name, schema = flow.types.schema(p.name)
        params.append(dataclasses.replace(p, type_name=type_name, json_schema=schema))
    return dataclasses.replace(graph, params=tuple(params))


def compile_graph(
    flow: Flow[..., Any],
    given: Mapping[str, Any],
    values: Mapping[str, Any] | None,
    encoder: Encoder = inline_value,
    pin: Pin | None = None,
    *,
    for_run: bool = False,
    served: bool = True,
) -> tuple[graph_pb2.FlowGraph, dict[str, payload_pb2.Value]]:
    """(the FlowGraph for a run, the run's given parameters encoded).

    ``given`` are the validated values the caller passes, ``values`` the same with
    defaults filled in (None when a required one is missing: only a symbolic graph can
    be built then). A list or tuple parameter a task maps over is encoded with its
    elements, its default too when it is not given (a graph's default is one value).
    For a value-dependent graph, ``parameters_digest`` is computed from the encoded
    ``given`` values and the defaults as encoded in the message, which is what a
    control plane computes for the run. ``pin`` registers the graphs of the
    subflows the flow calls and gives the version each node runs. ``for_run``: the
    values are a run's, so a parameter a task maps over must be a list or tuple (a
    server maps over the elements sent with it; ParameterError otherwise).
    ``served``: the graph goes to a server, whose workers must be able to offer its
    tasks (``Flow.compile`` for a look at the message does not check it).
    """
    graph = with_types(flow, build_graph(flow, values))
    if served:
        _check_importable(graph)
    readers = json_consumers(graph).params
    mapped = graph.mapped_params()
    encoded: dict[str, payload_pb2.Value] = {}
    sent = dict(given)
    defaults = values or {}
    for name in mapped - given.keys():
        if isinstance(defaults.get(name), list | tuple):
            sent[name] = defaults[name]
    if for_run:
        _check_mapped(mapped, given, defaults)
    for name, value in sent.items():
        reader = readers.get(name)
        portable = reader is not None
        try:
            encoded[name] = encoder(value, portable)
            if name in mapped and isinstance(value, list | tuple):
                # A task maps over it: the server maps over a value's elements.
                items = [encoder(element, portable) for element in value]
                encoded[name] = with_elements(encoded[name], items)
        except EncodingError as exc:
            if reader is None:  # (pickle refused it: a lock, a generator, an open file)
                raise ParameterError(
                    f"parameter {name!r} cannot be sent to the server: {exc}"
                ) from None
            raise ParameterError(
                f"task {reader[0]!r}, argument {reader[1]!r}: parameter {name!r} must be "
                f"json (the task is portable or implemented in another language), but {exc}"
            ) from None
    msg = graph_to_proto(graph)
    if pin is not None:
        for spec, node in zip(graph.tasks, msg.tasks, strict=True):
            if spec.subflow is not None and spec.subflow.flow is not None:
                node.subflow.flow_version = pin(spec.subflow.flow)
    if graph.value_dependent:
        bound: dict[str, Any] = dict(encoded)
        for p in msg.parameters:
            if p.name not in bound and not p.required:
                bound[p.name] = p.default_value
        msg.parameters_digest = parameters_digest(bound)
        msg.code_digest = flow.code_digest
    return msg, encoded


def _check_importable(graph: GraphSpec) -> None:
    """FlowDefinitionError for a task defined inside a function (its task type names
    ``<locals>``): a worker offers the tasks of its modules' namespaces, so none could
    ever run it, and the run waited for good (a user trial). Embedded, it runs."""
    for spec in graph.tasks:
        if "<locals>" in spec.task_type:
            raise FlowDefinitionError(
                f"flow {graph.name!r}: task {spec.name!r} is defined inside a function "
                f"({spec.task_type}), so no worker can offer it: define it at module level "
                "for a server to run it"
            )


def with_elements(whole: payload_pb2.Value, items: list[payload_pb2.Value]) -> payload_pb2.Value:
    """``whole`` with its elements in ``items`` and their number in its metadata, as a
    worker sends a split result (docs/payloads.md): the control plane, which never
    decodes a value, maps over its elements."""
    value = payload_pb2.Value()
    value.CopyFrom(whole)
    metadata = value.ref.metadata if value.HasField("ref") else value.inline.metadata
    metadata[LENGTH_KEY] = str(len(items))
    value.items.extend(items)
    return value


#: A list parameter of a run by name goes with its elements inline only when the
#: whole and its elements take at most this many bytes (``with_elements_inline``): half
#: the server's default ``max_parameter_bytes``, which counts both.
ELEMENTS_INLINE = 512 * 1024


def with_elements_inline(
    whole: payload_pb2.Value, elements: list[Any] | tuple[Any, ...], bound: int = ELEMENTS_INLINE
) -> payload_pb2.Value | None:
    """``with_elements`` with every element inline, when the value and its elements
    take at most ``ELEMENTS_INLINE`` bytes together (and ``bound``: the server's
    parameter limit); else None (sent whole, as before: a parameter nothing maps over
    is never refused for its elements)."""
    items: list[payload_pb2.Value] = []
    size = whole.ByteSize()
    for element in elements:
        try:
            item = inline_value(element, False)
        except EncodingError:
            return None
        size += item.inline.ByteSize()
        if size > min(ELEMENTS_INLINE, bound):
            return None
        items.append(item)
    return with_elements(whole, items)


def subflow_graph(
    flow: Flow[..., Any], encoder: Encoder = inline_value, pin: Pin | None = None
) -> graph_pb2.FlowGraph | None:
    """The one graph of a flow called as a subflow, when its structure does not depend
    on its parameters (registered with the parent and pinned); None when it does (the
    server then has a worker build it for each child run's values)."""
    try:
        graph = build_graph(flow, None)
    except (FlowDefinitionError, GraphError):
        raise
    except Exception:  # needs values (ParameterError), or fails on placeholders
        return None
    if graph.value_dependent:
        return None
    return compile_graph(flow, {}, None, encoder, pin)[0]


__all__ = ["Encoder", "Pin", "compile_graph", "inline_value", "subflow_graph", "with_types"]
