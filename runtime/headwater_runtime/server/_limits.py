"""Checking what peers send against the server's limits (``headwater.wire.Limits``).

Every size a peer states is checked where it enters the server, before anything is
built from it: a flow graph's tasks, edges and input nesting (RegisterFlow), a
parameter's size and a value's elements (CreateFlowRun, CreateSchedule), a worker's
result (its elements become child task runs of a mapped task). Upload sizes are
checked by the PayloadService itself, message sizes by gRPC.

A size over a limit raises ``LimitExceeded`` (RESOURCE_EXHAUSTED; a worker's result
fails its task); a value that contradicts itself raises ``InvalidValue``
(INVALID_ARGUMENT). Both name what was wrong. docs/limits.md lists the limits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sized

from headwater.v1 import graph_pb2, payload_pb2
from headwater.wire import (
    ENCODING_KEY,
    JSON,
    LENGTH_KEY,
    MAX_NAME,
    PICKLE,
    STRUCTURAL,
    GraphError,
    LimitExceeded,
    Limits,
)

__all__ = [
    "METADATA_VALUE_CHARS",
    "TRACE_VALUE_CHARS",
    "InvalidValue",
    "LimitExceeded",
    "check_entries",
    "check_graph",
    "check_parameter",
    "check_strings",
    "check_value",
]

#: The longest value of a run's trace context (W3C baggage may take 8,192 bytes).
TRACE_VALUE_CHARS = 8192
#: The longest value of an upload's metadata (a payload's preview, a schema).
METADATA_VALUE_CHARS = 65_536

#: Longest ``headwater.length`` text read as a number (a longer one is refused before
#: ``int()`` spends time on it).
_LENGTH_DIGITS = 18


class InvalidValue(ValueError):
    """A value contradicts itself (its declared length is not its element count)."""


def check_entries(what: str, entries: Sized, limits: Limits) -> None:
    """LimitExceeded when ``entries`` (a list or map of a request) holds more than
    ``max_list_items``."""
    if len(entries) > limits.max_list_items:
        raise limits.exceeded("max_list_items", f"{what} has {len(entries)} entries")


def check_strings(what: str, strings: Mapping[str, str], longest: int = MAX_NAME) -> str:
    """What is too long in a map of a request ("" when nothing is): the first key over
    MAX_NAME characters, or value over ``longest``."""
    for key, text in strings.items():
        if len(key) > MAX_NAME:
            return f"{what} has a key of {len(key)} characters (at most {MAX_NAME})"
        if len(text) > longest:
            return f"{what}[{key[:40]!r}] is {len(text)} characters long (at most {longest})"
    return ""


def check_graph(msg: graph_pb2.FlowGraph, limits: Limits) -> None:
    """Refuse a flow graph with too many tasks or edges, inputs nested too deep, or a
    task mapped over a list in the graph with more elements than ``max_map_width``
    (``LimitExceeded``), or a task whose type, tags or required labels are too many or
    too long (``max_list_items``; MAX_NAME characters: GraphError), before it is
    decoded into a GraphSpec."""
    flow = f"flow {msg.name!r}"
    tasks = len(msg.tasks)
    if tasks > limits.max_graph_tasks:
        raise limits.exceeded("max_graph_tasks", f"{flow} has {tasks} tasks")
    edges = 0
    for node in msg.tasks:
        task = f"{flow}, task {node.id[:MAX_NAME]!r},"
        if len(node.task_type) > MAX_NAME:
            raise GraphError(
                f"{task} has a task_type of {len(node.task_type)} characters (at most {MAX_NAME})"
            )
        check_entries(f"{task} tags", node.tags, limits)
        check_entries(f"{task} required_labels", node.required_labels, limits)
        problem = check_strings(f"{task} tags", dict.fromkeys(node.tags, "")) or check_strings(
            f"{task} required_labels", node.required_labels
        )
        if problem:
            raise GraphError(problem)
        edges += len(node.wait_for)
        for arg in node.map.mapped_inputs:  # a map over a list in the graph itself
            source = node.inputs.get(arg)
            if source is not None and source.WhichOneof("source") == "list":
                width = len(source.list.items)
                if width > limits.max_map_width:
                    raise limits.exceeded(
                        "max_map_width", f"{task} maps argument {arg!r} over {width} elements"
                    )
        for arg, source in node.inputs.items():
            edges += _references(source, limits, f"task {node.id!r}, argument {arg!r}", 1)
        if edges > limits.max_graph_edges:
            raise limits.exceeded(
                "max_graph_edges", f"{flow} has over {limits.max_graph_edges} upstream references"
            )
    if msg.HasField("result"):
        _references(msg.result, limits, f"{flow}'s result", 1)


def graph_weight(msg: graph_pb2.FlowGraph, large: int) -> int:
    """About what building a graph makes, and a run of it at its start: its tasks plus
    the items of their list and dict inputs (top level; a map over a constant list of
    100,000 items, in a three-task graph, makes 100,000 task runs). A server treats a
    graph or run this heavy as large (_gc.py). A graph of ``large`` tasks or more is
    not looked into (it is large either way)."""
    weight = len(msg.tasks)
    if weight >= large:
        return weight
    for node in msg.tasks:
        for source in node.inputs.values():
            kind = source.WhichOneof("source")
            if kind == "list":
                weight += len(source.list.items)
            elif kind == "map":
                weight += len(source.map.entries)
    return weight


def _references(source: graph_pb2.Input, limits: Limits, where: str, depth: int) -> int:
    """How many upstream references an input holds; LimitExceeded when it nests lists
    and maps deeper than ``max_nesting``."""
    if depth > limits.max_nesting:
        raise limits.exceeded(  # (not walked further: it may nest deeper still)
            "max_nesting", f"{where} nests inputs at least {depth} levels deep"
        )
    kind = source.WhichOneof("source")
    if kind == "task_output":
        return 1
    if kind == "list":
        return sum(_references(i, limits, where, depth + 1) for i in source.list.items)
    if kind == "map":
        return sum(_references(e.value, limits, where, depth + 1) for e in source.map.entries)
    return 0


def check_value(value: payload_pb2.Value, limits: Limits, what: str) -> None:
    """Refuse a value whose elements (``items``, and ``headwater.length`` declaring
    their number) exceed ``max_map_width``, that nests elements deeper than
    ``max_nesting`` (LimitExceeded), or whose declared length is not a whole number
    matching its elements (InvalidValue). ``what`` names the value in messages."""
    stack = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        items = current.items
        count = len(items)
        if count > limits.max_map_width:
            raise limits.exceeded("max_map_width", f"{what} has {count} elements")
        kind = current.WhichOneof("kind")
        metadata = (
            current.inline.metadata
            if kind == "inline"
            else current.ref.metadata
            if kind == "ref"
            else None
        )
        raw = metadata.get(LENGTH_KEY) if metadata is not None else None
        if raw is not None:
            if not (raw.isascii() and raw.isdigit()) or len(raw) > _LENGTH_DIGITS:
                raise InvalidValue(
                    f"{what} declares {LENGTH_KEY} {raw[:40]!r}, which is not a whole number"
                )
            length = int(raw)
            if length > limits.max_map_width:
                raise limits.exceeded("max_map_width", f"{what} declares {length} elements")
            if length != count:
                raise InvalidValue(
                    f"{what} declares {length} elements ({LENGTH_KEY}) but carries {count}"
                )
        if count:
            if depth + 1 > limits.max_nesting:
                # (the walk stops here: the value may nest deeper still)
                raise limits.exceeded(
                    "max_nesting",
                    f"{what} nests elements at least {depth + 1} levels deep (the value "
                    "itself is level 1)",
                )
            # Elements rarely have elements of their own: only those are walked further.
            stack.extend((item, depth + 1) for item in items if item.items)


#: The payload encodings there are (docs/payloads.md; decoders refuse any other).
ENCODINGS = (JSON, PICKLE, *STRUCTURAL)


def check_parameter(name: str, value: payload_pb2.Value, limits: Limits) -> str | None:
    """Why a parameter value sent in a request cannot be accepted as it is: a message
    for INVALID_ARGUMENT (no value, no encoding), None when fine; raises LimitExceeded
    for a value too large to send inline (it should go by reference) or with too many
    elements, InvalidValue for one that contradicts itself."""
    kind = value.WhichOneof("kind")
    if kind is None:
        return f"parameter {name!r} has no value"
    metadata = value.inline.metadata if kind == "inline" else value.ref.metadata
    if ENCODING_KEY not in metadata:
        return f"parameter {name!r} has no 'encoding' metadata"
    encoding = metadata[ENCODING_KEY]
    if encoding not in ENCODINGS:
        # (Taken, it failed every run of a schedule, each fire: a hostile trial.)
        shown = encoding if len(encoding) <= 40 else encoding[:40] + "..."
        return (
            f"parameter {name!r} has encoding {shown!r}, which no task can decode (the "
            f"encodings are {', '.join(ENCODINGS)}: docs/payloads.md)"
        )
    size = value.ByteSize()
    if size > limits.max_parameter_bytes:
        if value.items:
            # A list a task maps over goes with every element in the request (payloads.md).
            how = (
                f"with its {len(value.items)} elements (a task maps over it, so every "
                "element goes in the request: return the list from a task and map over "
                "that instead)"
            )
        else:
            how = "inline (upload a value this large with PayloadService and send its reference)"
        raise limits.exceeded("max_parameter_bytes", f"parameter {name!r} is {size} bytes {how}")
    check_value(value, limits, f"parameter {name!r}")
    return None


#: The longest reason a cancel or retry is given (characters): it becomes the run's
#: message and an audit entry's detail, listed on every page of runs (a reason of a
#: million characters made each answer listing the run 3 MB; a user trial).
REASON_LIMIT = 4_000


def check_reason(reason: str) -> None:
    """InvalidValue for a cancel's or retry's reason over REASON_LIMIT characters."""
    if len(reason) > REASON_LIMIT:
        raise InvalidValue(
            f"the reason is {len(reason):,} characters long (at most {REASON_LIMIT:,})"
        )
