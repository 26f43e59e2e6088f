"""GraphSpec <-> FlowGraph message.

``graph_to_proto`` encodes constants and parameter defaults (json when exact, else
pickle; json is required for portable tasks). ``graph_from_proto`` keeps them encoded
(EncodedValue): the control plane never decodes user payloads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from headwater.v1 import graph_pb2, payload_pb2

from ._codec import ENCODING_KEY, EncodedValue, EncodingError, encode
from ._graph import (
    NO_RETRY,
    CacheSpec,
    Const,
    DictOf,
    FromTask,
    GraphError,
    GraphSpec,
    InputSpec,
    ListOf,
    Param,
    ParamSpec,
    RetrySpec,
    SubflowSpec,
    TaskSpec,
    Trigger,
    json_consumers,
)
from ._time import duration, seconds

_TRIGGER_TO_PROTO = {
    Trigger.ALL_SUCCESSFUL: graph_pb2.TRIGGER_ALL_SUCCESSFUL,
    Trigger.ALL_FINISHED: graph_pb2.TRIGGER_ALL_FINISHED,
    Trigger.ALL_FAILED: graph_pb2.TRIGGER_ALL_FAILED,
    Trigger.ANY_SUCCESSFUL: graph_pb2.TRIGGER_ANY_SUCCESSFUL,
    Trigger.ANY_FAILED: graph_pb2.TRIGGER_ANY_FAILED,
    Trigger.NONE_FAILED: graph_pb2.TRIGGER_NONE_FAILED,
}
_TRIGGER_FROM_PROTO = {v: k for k, v in _TRIGGER_TO_PROTO.items()}
_TRIGGER_FROM_PROTO[graph_pb2.TRIGGER_UNSPECIFIED] = Trigger.ALL_SUCCESSFUL


def encode_payload(value: Any, *, portable: bool, where: str) -> payload_pb2.Payload:
    """A Payload message for a value; EncodingError (a TypeError) names ``where``."""
    if isinstance(value, EncodedValue):  # already encoded (a graph read from proto)
        return payload_pb2.Payload(data=value.data, metadata=value.metadata)
    try:
        encoded = encode(value, portable=portable)
    except EncodingError as exc:
        raise EncodingError(f"{where}: {exc}") from exc
    return payload_pb2.Payload(data=encoded.data, metadata=encoded.metadata)


def path_to_proto(parts: Iterable[str | int]) -> list[payload_pb2.PathElement]:
    """PathElements for a path (a str is a mapping key, an int a sequence index)."""
    return [
        payload_pb2.PathElement(key=p) if isinstance(p, str) else payload_pb2.PathElement(index=p)
        for p in parts
    ]


def path_from_proto(elements: Iterable[payload_pb2.PathElement]) -> tuple[str | int, ...]:
    """Inverse of path_to_proto; an element with neither key nor index is an error."""
    path: list[str | int] = []
    for p in elements:
        which = p.WhichOneof("selector")
        if which is None:
            raise GraphError("a path element has neither key nor index")
        path.append(p.key if which == "key" else p.index)
    return tuple(path)


def _input_to_proto(spec: InputSpec, portable: bool, where: str) -> graph_pb2.Input:
    if isinstance(spec, FromTask):
        path = path_to_proto(spec.path)
        return graph_pb2.Input(task_output=graph_pb2.TaskOutput(task_id=spec.task_id, path=path))
    if isinstance(spec, Param):
        return graph_pb2.Input(parameter=spec.name)
    if isinstance(spec, Const):
        return graph_pb2.Input(constant=encode_payload(spec.value, portable=portable, where=where))
    if isinstance(spec, ListOf):
        items = [_input_to_proto(i, portable, where) for i in spec.items]
        return graph_pb2.Input(list=graph_pb2.InputList(items=items, tuple=spec.is_tuple))
    if isinstance(spec, DictOf):
        entries = [
            graph_pb2.InputMapEntry(key=k, value=_input_to_proto(v, portable, where))
            for k, v in spec.entries
        ]
        return graph_pb2.Input(map=graph_pb2.InputMap(entries=entries))
    raise TypeError(f"unknown input {spec!r}")


def graph_to_proto(graph: GraphSpec) -> graph_pb2.FlowGraph:
    """Encode a GraphSpec; TypeError names the task and argument of a bad constant."""
    msg = graph_pb2.FlowGraph(
        name=graph.name,
        version=graph.version,
        description=graph.description,
        reference_task_ids=list(graph.reference_task_ids),
        value_dependent=graph.value_dependent,
        parameters_digest=graph.parameters_digest,
        code_digest=graph.code_digest,
    )
    if graph.timeout is not None:
        msg.timeout.CopyFrom(duration(graph.timeout))
    readers = json_consumers(graph).params
    for p in graph.params:
        param = msg.parameters.add(
            name=p.name, required=p.required, type=p.type_name, json_schema=p.json_schema
        )
        if not p.required:
            where = f"flow {graph.name!r}, default of parameter {p.name!r}"
            reader = readers.get(p.name)
            if reader is not None:
                where += f" (read by task {reader[0]!r}, argument {reader[1]!r}, as json)"
            payload = encode_payload(p.default, portable=reader is not None, where=where)
            param.default_value.CopyFrom(payload)
    for t in graph.tasks:
        node = msg.tasks.add(
            id=t.id,
            name=t.name,
            task_type=t.task_type,
            wait_for=list(t.wait_for),
            case_gates=list(t.gates),
            trigger=_TRIGGER_TO_PROTO[t.trigger],
            tags=list(t.tags),
            required_labels=dict(t.labels),
            resources=dict(t.resources),
            version=t.version,
            portable=t.portable,
            argument_order=list(t.argument_order),
            code_digest=t.code_digest,
        )
        subflow = t.subflow
        if subflow is not None:
            node.subflow.flow_name = subflow.flow_name
            node.subflow.flow_version = subflow.flow_version
            node.subflow.mapped_parameters.extend(subflow.mapped_parameters)
        for arg, spec in t.inputs.items():
            where = f"task {t.id!r}, argument {arg!r}"
            if isinstance(spec, Const) and isinstance(spec.value, list | tuple | range):
                # Element by element, so a control plane can hand element i to child i
                # without decoding anything.
                if t.mapped is not None and arg in t.mapped:
                    spec = ListOf(tuple(Const(v) for v in spec.value))
                elif subflow is not None and arg in subflow.mapped_parameters:
                    # (the child's other uses of it see the same sequence type)
                    spec = ListOf(tuple(Const(v) for v in spec.value), type(spec.value) is tuple)
            node.inputs[arg].CopyFrom(_input_to_proto(spec, t.portable, where))
        r = t.retry
        if r != NO_RETRY:
            node.retry.max_retries = r.max_retries
            node.retry.delay.CopyFrom(duration(r.delay))
            node.retry.backoff_factor = r.backoff
            if r.max_delay is not None:
                node.retry.max_delay.CopyFrom(duration(r.max_delay))
            node.retry.jitter = r.jitter
            node.retry.non_retryable_errors.extend(r.non_retryable)
        if t.timeout is not None:
            node.timeout.CopyFrom(duration(t.timeout))
        if t.schedule_to_start_timeout is not None:
            node.schedule_to_start_timeout.CopyFrom(duration(t.schedule_to_start_timeout))
        if t.cache is not None:
            node.cache.key_source = (
                graph_pb2.CACHE_KEY_SOURCE_FUNCTION
                if t.cache.by_function
                else graph_pb2.CACHE_KEY_SOURCE_INPUTS
            )
            node.cache.version = t.cache.version
            if t.cache.expiry is not None:
                node.cache.expiry.CopyFrom(duration(t.cache.expiry))
        if t.mapped is not None:
            node.map.mapped_inputs.extend(t.mapped)
    if graph.result is not None:
        msg.result.CopyFrom(_input_to_proto(graph.result, False, f"flow {graph.name!r} result"))
    return msg


def _input_from_proto(msg: graph_pb2.Input, where: str) -> InputSpec:
    kind = msg.WhichOneof("source")
    if kind == "task_output":
        try:
            path = path_from_proto(msg.task_output.path)
        except GraphError as exc:
            raise GraphError(f"{where}: {exc}") from None
        return FromTask(msg.task_output.task_id, path)
    if kind == "constant":
        c = msg.constant
        if ENCODING_KEY not in c.metadata:
            raise GraphError(f"{where}: constant payload has no 'encoding' metadata")
        return Const(EncodedValue(bytes(c.data), dict(c.metadata)))
    if kind == "parameter":
        return Param(msg.parameter)
    if kind == "list":
        return ListOf(tuple(_input_from_proto(i, where) for i in msg.list.items), msg.list.tuple)
    if kind == "map":
        keys = [e.key for e in msg.map.entries]
        if len(set(keys)) != len(keys):
            raise GraphError(f"{where}: a map input repeats a key")
        return DictOf(tuple((e.key, _input_from_proto(e.value, where)) for e in msg.map.entries))
    raise GraphError(f"{where}: input has no source")


def _param_from_proto(flow: str, p: graph_pb2.ParameterSpec) -> ParamSpec:
    if p.required:
        return ParamSpec(p.name, None, True, p.type, p.json_schema)
    where = f"flow {flow!r}, parameter {p.name!r}"
    if not p.HasField("default_value"):
        raise GraphError(f"{where}: not required, so it needs a default value")
    if ENCODING_KEY not in p.default_value.metadata:
        raise GraphError(f"{where}: default payload has no 'encoding' metadata")
    default = EncodedValue(bytes(p.default_value.data), dict(p.default_value.metadata))
    return ParamSpec(p.name, default, False, p.type, p.json_schema)


def graph_from_proto(msg: graph_pb2.FlowGraph) -> GraphSpec:
    """Decode and validate a FlowGraph; GraphError names the task and problem."""
    if not msg.name:
        raise GraphError("flow graph has no name")
    tasks = []
    for n in msg.tasks:
        if not n.task_type:
            raise GraphError(f"task {n.id!r} has no task_type")
        retry = NO_RETRY
        if n.HasField("retry"):
            r = n.retry
            retry = RetrySpec(
                max_retries=r.max_retries,
                delay=seconds(r.delay),
                backoff=r.backoff_factor or 1.0,
                max_delay=seconds(r.max_delay) if r.HasField("max_delay") else None,
                jitter=r.jitter,
                non_retryable=tuple(r.non_retryable_errors),
            )
        cache = None
        if n.HasField("cache"):
            cache = CacheSpec(
                expiry=seconds(n.cache.expiry) if n.cache.HasField("expiry") else None,
                version=n.cache.version,
                by_function=n.cache.key_source == graph_pb2.CACHE_KEY_SOURCE_FUNCTION,
            )
        trigger = _TRIGGER_FROM_PROTO.get(n.trigger)
        if trigger is None:
            raise GraphError(f"task {n.id!r} has an unknown trigger value {n.trigger}")
        tasks.append(
            TaskSpec(
                id=n.id,
                name=n.name or n.id,
                task_type=n.task_type,
                inputs={
                    arg: _input_from_proto(i, f"task {n.id!r}, argument {arg!r}")
                    for arg, i in n.inputs.items()
                },
                wait_for=tuple(n.wait_for),
                gates=tuple(n.case_gates),
                retry=retry,
                timeout=seconds(n.timeout) if n.HasField("timeout") else None,
                trigger=trigger,
                cache=cache,
                mapped=tuple(n.map.mapped_inputs) if n.HasField("map") else None,
                tags=tuple(n.tags),
                labels=dict(n.required_labels),
                resources=dict(n.resources),
                version=n.version,
                portable=n.portable,
                argument_order=tuple(n.argument_order),
                code_digest=n.code_digest,
                subflow=(
                    SubflowSpec(
                        n.subflow.flow_name,
                        n.subflow.flow_version,
                        mapped_parameters=tuple(n.subflow.mapped_parameters),
                    )
                    if n.HasField("subflow")
                    else None
                ),
                schedule_to_start_timeout=(
                    seconds(n.schedule_to_start_timeout)
                    if n.HasField("schedule_to_start_timeout")
                    else None
                ),
            )
        )
    params = tuple(_param_from_proto(msg.name, p) for p in msg.parameters)
    graph = GraphSpec(
        name=msg.name,
        version=msg.version,
        tasks=tuple(tasks),
        params=params,
        result=_input_from_proto(msg.result, f"flow {msg.name!r} result")
        if msg.HasField("result")
        else None,
        reference_task_ids=tuple(msg.reference_task_ids),
        description=msg.description,
        value_dependent=msg.value_dependent,
        parameters_digest=msg.parameters_digest,
        timeout=seconds(msg.timeout) if msg.HasField("timeout") else None,
        code_digest=msg.code_digest,
    )
    if graph.value_dependent and not graph.parameters_digest:
        raise GraphError(
            f"flow {msg.name!r}: a value-dependent graph needs the parameters_digest of "
            "the values it was built for"
        )
    graph.validate()
    return graph


ParameterValue = payload_pb2.Value | payload_pb2.Payload | EncodedValue


def parameters_digest(values: Mapping[str, ParameterValue]) -> str:
    """The digest of a run's encoded parameter values (defaults filled in), computed
    alike by an SDK building a value-dependent graph and by a control plane checking
    that a run's parameters are the ones the graph was built for; neither decodes a
    value. A value held by reference is identified by its SHA-256 (or payload id)."""
    h = hashlib.sha256()
    for name in sorted(values):
        value = values[name]
        if isinstance(value, payload_pb2.Value) and value.HasField("ref"):
            ref = value.ref
            metadata = dict(ref.metadata)
            sha = ref.sha256 or f"payload:{ref.payload_id}"
        else:
            if isinstance(value, payload_pb2.Value):
                value = value.inline
            metadata, data = dict(value.metadata), bytes(value.data)
            sha = hashlib.sha256(data).hexdigest()
        line = json.dumps([name, sorted(metadata.items()), sha], separators=(",", ":"))
        h.update(line.encode() + b"\n")
    return h.hexdigest()
