"""Values on the server: opaque payload handles the control plane never decodes.

A handle is a ``Value`` message (what a worker or client sent), a ``Composite`` the
engine assembled (the list of a mapped task's results, a list/dict mixing several
results), or a ``Selected`` part of a value (``result["rows"]``) that the consuming
worker selects after decoding. ``to_input_value`` turns a handle into the
``InputValue`` tree an assignment carries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from headwater.v1 import payload_pb2, worker_pb2
from headwater.wire import (
    DICT,
    ENCODING_KEY,
    JSON,
    LENGTH_KEY,
    LIST,
    SELECT,
    SPLIT_PATH_KEY,
    STRUCTURAL,
    TUPLE,
    EncodedValue,
    path_to_proto,
)

NULL = payload_pb2.Value(inline=payload_pb2.Payload(data=b"null", metadata={ENCODING_KEY: JSON}))


@dataclass(frozen=True, slots=True)
class Composite:
    """A list, tuple or dict assembled from handles by the engine."""

    kind: str  # "list", "tuple" or "dict"
    items: tuple[Any, ...]
    keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Selected:
    """Part of a value, selected by the worker that decodes it."""

    base: Any
    path: tuple[str | int, ...]


def _metadata(value: payload_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "inline":
        return value.inline.metadata
    if kind == "ref":
        return value.ref.metadata
    return {}


def _split_at(value: Any, path: tuple[str | int, ...]) -> bool:
    """Whether a worker split this value at exactly this path (see split_path): with
    its elements, or with a length of 0 (an empty part has none to send: mapping over
    it failed as over a value without elements, where every other host maps over no
    elements, a re-trial)."""
    if not isinstance(value, payload_pb2.Value):
        return False
    metadata = _metadata(value)
    if not value.items and metadata.get(LENGTH_KEY) != "0":
        return False
    raw = metadata.get(SPLIT_PATH_KEY)
    return raw is not None and json.loads(raw) == list(path)


def _structural_part(value: payload_pb2.Value, head: str | int) -> payload_pb2.Value | None:
    """Entry ``head`` of a value in a structural encoding (a list, tuple or dict the
    engine assembled, as ``to_result_value`` stores it); None for any other value."""
    if value.WhichOneof("kind") != "inline":
        return None
    encoding = value.inline.metadata.get(ENCODING_KEY)
    if encoding == DICT and isinstance(head, str):
        keys = json.loads(value.inline.data)
        at = keys.index(head) if isinstance(keys, list) and head in keys else len(value.items)
        return value.items[at] if at < len(value.items) else None
    if encoding in (LIST, TUPLE) and isinstance(head, int) and -len(value.items) <= head:
        return value.items[head] if head < len(value.items) else None
    return None


class ServerValues:
    """ValueOps over payload handles (see headwater_runtime.engine.ValueOps)."""

    def length(self, value: Any) -> int | None:
        """The number of elements, known only when the engine assembled the value or
        the worker that produced it split it into elements; else None."""
        if isinstance(value, Composite):
            return len(value.items) if value.kind != "dict" else None
        if isinstance(value, Selected):
            if _split_at(value.base, value.path):
                return int(_metadata(value.base).get(LENGTH_KEY, len(value.base.items)))
            return None
        if isinstance(value, payload_pb2.Value):
            metadata = _metadata(value)
            if SPLIT_PATH_KEY in metadata:  # the items are of a part, not of the whole
                return None
            raw = metadata.get(LENGTH_KEY)
            if raw is not None:
                return int(raw)
            encoding = metadata.get(ENCODING_KEY)
            if encoding in (LIST, TUPLE):
                return len(value.items)  # (an assembled list may be empty)
            if encoding in STRUCTURAL:  # a dict, or a part its consumer selects: its
                return None  # items are not its elements
            return len(value.items) if value.items else None
        return None

    def item(self, value: Any, index: int) -> Any:
        """Element ``index`` of a value split into elements (the worker sent each)."""
        if isinstance(value, Selected):
            return value.base.items[index]
        return value.items[index]

    def select(self, value: Any, path: tuple[str | int, ...]) -> Any:
        """The part at ``path``: taken directly from a Composite, else a Selected that
        the consuming worker applies after decoding."""
        if isinstance(value, Composite) and path:
            head, rest = path[0], path[1:]
            if value.kind == "dict" and isinstance(head, str):
                picked = value.items[value.keys.index(head)]
                return self.select(picked, rest) if rest else picked
            if value.kind != "dict" and isinstance(head, int):
                picked = value.items[head]
                return self.select(picked, rest) if rest else picked
        if isinstance(value, Selected):
            return Selected(value.base, (*value.path, *path))
        if path and isinstance(value, payload_pb2.Value) and value.items:
            picked = _structural_part(value, path[0])
            if picked is not None:  # (a child flow's result: assembled, then stored)
                return self.select(picked, path[1:]) if len(path) > 1 else picked
        return Selected(value, path)

    def make_list(self, items: list[Any], is_tuple: bool) -> Any:
        """A Composite list (or tuple) of the handles."""
        return Composite("tuple" if is_tuple else "list", tuple(items))

    def make_dict(self, entries: dict[str, Any]) -> Any:
        """A Composite dict of the handles."""
        return Composite("dict", tuple(entries.values()), tuple(entries))

    def describe(self, value: Any) -> str:
        """What the value is, as far as the server can tell without decoding it."""
        # The control plane never decodes values, so it cannot name their type.
        if isinstance(value, Composite):
            return "a dict" if value.kind == "dict" else f"a {value.kind}"
        if isinstance(value, Selected):
            path = "".join(f"[{p!r}]" for p in value.path)
            return f"the result part {path}"
        return "the result"


SERVER_VALUES = ServerValues()


def split_part(handle: Any) -> Any:
    """A part of a result that its worker split (``result["rows"]``, mapped over) as
    the list of its elements, which a child flow run can map over; any other handle
    unchanged."""
    if isinstance(handle, Selected) and _split_at(handle.base, handle.path):
        return Composite("list", tuple(handle.base.items))
    return handle


def _encoded(value: EncodedValue) -> payload_pb2.Value:
    return payload_pb2.Value(inline=payload_pb2.Payload(data=value.data, metadata=value.metadata))


def _without_elements(value: payload_pb2.Value) -> payload_pb2.Value:
    """A split result without its separately sent elements: a consumer of the whole
    value decodes only the value itself, so sending the elements would double the
    assignment. Structural encodings keep their items (they are the value)."""
    if not value.items:
        return value
    kind = value.WhichOneof("kind")
    if kind == "ref":
        return payload_pb2.Value(ref=value.ref)
    if kind == "inline" and value.inline.metadata.get(ENCODING_KEY, "") not in STRUCTURAL:
        return payload_pb2.Value(inline=value.inline)
    return value


def to_input_value(handle: Any, *, elements: bool = True) -> worker_pb2.InputValue:
    """The InputValue tree for a handle (None, a missing result, becomes json null).

    ``elements=False`` drops the separately sent elements of split results (for
    assignments); journals, projections and the cache keep them."""
    msg = worker_pb2.InputValue()
    fill_input_value(msg, handle, elements=elements)
    return msg


def fill_input_value(msg: worker_pb2.InputValue, handle: Any, *, elements: bool = True) -> None:
    """``to_input_value`` written into ``msg`` (an empty InputValue, usually a field of
    the assignment being built): every part is made in place, in the message's own
    memory. A reduce over 100,000 results made 100,000 standalone messages that were
    then copied, and copied again into the assignment (~200 MB at the peak)."""
    if handle is None:
        msg.value.CopyFrom(NULL)
    elif isinstance(handle, payload_pb2.Value):
        if elements or not handle.items:
            msg.value.CopyFrom(handle)
        else:
            msg.value.CopyFrom(_without_elements(handle))
    elif isinstance(handle, EncodedValue):  # a graph constant or parameter default
        payload = msg.value.inline
        payload.data = handle.data
        payload.metadata.update(handle.metadata)
    elif isinstance(handle, Selected):
        fill_input_value(msg, handle.base, elements=elements)
        msg.path.extend(path_to_proto(handle.path))
    elif isinstance(handle, Composite):
        if handle.kind == "dict":
            entries = msg.map.entries
            msg.map.SetInParent()  # an empty dict is still a map
            for key, item in zip(handle.keys, handle.items, strict=True):
                entry = entries.add()
                entry.key = key
                fill_input_value(entry.value, item, elements=elements)
        else:
            sequence = msg.list
            sequence.SetInParent()  # an empty list is still a list
            sequence.tuple = handle.kind == "tuple"
            add = sequence.items.add
            for item in handle.items:
                fill_input_value(add(), item, elements=elements)
    else:
        raise TypeError(f"not a value handle: {type(handle).__name__}")


def to_result_value(handle: Any) -> payload_pb2.Value:
    """A handle as one Value, for flow results and stored parameters.

    Composites use structural encodings whose elements are in ``Value.items``:
    ``headwater.list`` / ``headwater.tuple`` (no data), ``headwater.dict`` (data: the
    keys as a JSON list), ``headwater.select`` (data: the path as a JSON list; one item,
    the value to select from). SDK decoders rebuild the Python value from them.
    """
    if handle is None:
        return NULL
    if isinstance(handle, payload_pb2.Value):
        return handle
    if isinstance(handle, EncodedValue):
        return _encoded(handle)
    if isinstance(handle, Selected):
        payload = payload_pb2.Payload(
            data=json.dumps(list(handle.path)).encode(), metadata={ENCODING_KEY: SELECT}
        )
        return payload_pb2.Value(inline=payload, items=[to_result_value(handle.base)])
    if isinstance(handle, Composite):
        data = json.dumps(list(handle.keys)).encode() if handle.kind == "dict" else b""
        encoding = {"list": LIST, "tuple": TUPLE, "dict": DICT}[handle.kind]
        payload = payload_pb2.Payload(data=data, metadata={ENCODING_KEY: encoding})
        return payload_pb2.Value(inline=payload, items=[to_result_value(i) for i in handle.items])
    raise TypeError(f"not a value handle: {type(handle).__name__}")


def from_input_value(msg: worker_pb2.InputValue) -> Any:
    """Inverse of to_input_value (used to store composite results and journal them)."""
    kind = msg.WhichOneof("kind")
    if kind == "list":
        base: Any = Composite(
            "tuple" if msg.list.tuple else "list",
            tuple(from_input_value(i) for i in msg.list.items),
        )
    elif kind == "map":
        base = Composite(
            "dict",
            tuple(from_input_value(e.value) for e in msg.map.entries),
            tuple(e.key for e in msg.map.entries),
        )
    else:
        base = msg.value
    if msg.path:
        parts: tuple[str | int, ...] = tuple(
            p.key if p.WhichOneof("selector") == "key" else p.index for p in msg.path
        )
        return Selected(base, parts)
    return base
