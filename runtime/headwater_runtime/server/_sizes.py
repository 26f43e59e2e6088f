"""The encoded size of a large message, computed a part at a time.

upb computes ``ByteSize()`` by serializing the whole message: for a reduce's
Assignment of a million inputs (~30 MB) that is one C call holding the GIL for
~0.5 s, whichever thread makes it, and every other client waits that long. Here the
size is summed over the parts instead (each repeated field longer than ``MANY`` item
by item, by protobuf's wire format), so a thread that sizes a large message gives the
GIL up between parts like any Python code. Below ``MANY`` items ``ByteSize()`` is used
as it is.
"""

from __future__ import annotations

from typing import Any

from headwater.v1 import payload_pb2, worker_pb2

#: Repeated fields from this many items on are sized item by item.
MANY = 1_000


def _varint(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def _field(length: int) -> int:
    """A length-delimited field of ``length`` bytes (field numbers below 16: a one-byte
    tag)."""
    return 1 + _varint(length) + length


def value_size(value: payload_pb2.Value) -> int:
    """``value.ByteSize()``, a part at a time when it has many elements."""
    items = value.items
    if len(items) < MANY:
        return value.ByteSize()
    kind = value.WhichOneof("kind")
    size = _field(getattr(value, kind).ByteSize()) if kind is not None else 0
    for item in items:
        size += _field(value_size(item))
    return size


def input_size(msg: worker_pb2.InputValue) -> int:
    """``msg.ByteSize()``, a part at a time when it holds many values."""
    kind = msg.WhichOneof("kind")
    if kind == "list" and len(msg.list.items) >= MANY:
        inner = sum(_field(input_size(item)) for item in msg.list.items)
        size = _field(inner + (2 if msg.list.tuple else 0))
    elif kind == "map" and len(msg.map.entries) >= MANY:
        inner = 0
        for entry in msg.map.entries:
            key = len(entry.key.encode())
            body = (_field(key) if key else 0) + (
                _field(input_size(entry.value)) if entry.HasField("value") else 0
            )
            inner += _field(body)
        size = _field(inner)
    elif kind == "value" and len(msg.value.items) >= MANY:
        size = _field(value_size(msg.value))
    else:
        return msg.ByteSize()
    return size + sum(_field(p.ByteSize()) for p in msg.path)


def assignment_size(msg: worker_pb2.Assignment) -> int:
    """``msg.ByteSize()``, each input a part at a time."""
    inputs = msg.inputs
    if not any(_many(inputs[name]) for name in inputs):
        return msg.ByteSize()
    rest = worker_pb2.Assignment()
    for field, value in msg.ListFields():
        if field.name != "inputs":
            _copy(rest, field, value)
    size = rest.ByteSize()
    for name in inputs:  # a map entry writes its key and value even when empty
        size += _field(_field(len(name.encode())) + _field(input_size(inputs[name])))
    return size


def _many(msg: worker_pb2.InputValue) -> bool:
    kind = msg.WhichOneof("kind")
    if kind == "list":
        return len(msg.list.items) >= MANY
    if kind == "map":
        return len(msg.map.entries) >= MANY
    return kind == "value" and len(msg.value.items) >= MANY


def _copy(into: Any, field: Any, value: Any) -> None:
    """Set one field of ``into`` as ``value`` (a field's value from ``ListFields``)."""
    target = getattr(into, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        for key in value:  # a map (of scalars or messages)
            if hasattr(value[key], "CopyFrom"):
                target[key].CopyFrom(value[key])
            else:
                target[key] = value[key]
    elif hasattr(target, "extend"):  # repeated (``label`` is gone from newer protobuf)
        target.extend(value)
    elif field.message_type is not None:
        target.CopyFrom(value)
    else:
        setattr(into, field.name, value)
