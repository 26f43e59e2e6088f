"""Decoding a large message off the event loop, a slice at a time.

protobuf decodes a message in one C call that holds the GIL: a 2 MB FlowGraph of
100,000 tasks takes 40-100 ms, and on the event loop (where gRPC calls a method's
deserializer) every other client waits that long; on another thread too, since the
GIL is held throughout. ``parse_in_slices`` cuts the encoded message at field
boundaries into slices of about ``SLICE`` bytes and merges them one by one into the
message, on a worker thread: between two slices the thread gives the GIL up like any
Python code, so the loop waits a slice's decoding at most (well under a millisecond).

Merging slices is parsing the whole, by protobuf's own rule (a message's encoding
may be split anywhere between fields, and concatenated encodings merge): repeated
fields append in order, a singular field's last value wins, and a singular message
field that occurs twice is merged, which is how a large sub-message (a
RegisterFlowRequest's one ``graph`` field) is cut in turn: its slices are written as
several occurrences of the same field. Anything unexpected in the bytes (a malformed
varint, a group) makes the slicer give up; the caller then decodes the whole message
in one call, which reports what is wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: Messages larger than this are decoded off the loop, in slices.
LARGE = 256 * 1024
#: About how many bytes one slice holds.
SLICE = 32 * 1024


class _Unsliceable(Exception):
    """The bytes are not what the slicer can cut (the whole parse will say why)."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Unsliceable
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(data: bytes) -> Iterator[tuple[int, int, int, int, int, int]]:
    """(field number, wire type, start of the field, end of its tag, start of its
    value, end) of each top-level field of an encoded message."""
    pos = 0
    while pos < len(data):
        start = pos
        key, pos = _varint(data, pos)
        tag_end = pos
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, end = _varint(data, pos)
        elif wire == 1:
            end = pos + 8
        elif wire == 5:
            end = pos + 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            end = pos + length
        else:
            raise _Unsliceable  # groups (3, 4) and invalid wire types
        if end > len(data):
            raise _Unsliceable
        yield number, wire, start, tag_end, pos, end
        pos = end


def _repeated(field: Any) -> bool:
    """Whether a field is repeated: ``is_repeated`` where protobuf has it (5.x and
    newer), ``label`` on the oldest supported protobuf (4.25), which lacks it."""
    repeated = getattr(field, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return bool(field.label == field.LABEL_REPEATED)


def slices(descriptor: Any, data: bytes, size: int = SLICE) -> Iterator[bytes]:
    """``data`` (an encoded message of type ``descriptor``) as encodings of about
    ``size`` bytes whose merge is the message."""
    pending: list[bytes] = []
    held = 0
    for number, wire, start, tag_end, value, end in _fields(data):
        field = descriptor.fields_by_number.get(number)
        if (
            wire == 2
            and end - value > size
            and field is not None
            and field.type == field.TYPE_MESSAGE
            and not _repeated(field)
        ):
            if pending:
                yield b"".join(pending)
                pending, held = [], 0
            tag = data[start:tag_end]
            for part in slices(field.message_type, data[value:end], size):
                yield tag + _encode_varint(len(part)) + part
            continue
        pending.append(data[start:end])
        held += end - start
        if held >= size:
            yield b"".join(pending)
            pending, held = [], 0
    if pending:
        yield b"".join(pending)


def parse_in_slices(cls: Any, data: bytes) -> Any:
    """The message of class ``cls`` encoded in ``data``, decoded a slice at a time
    (see the module docstring); DecodeError as from ``cls.FromString``."""
    message = cls()
    try:
        for part in slices(cls.DESCRIPTOR, data):
            message.MergeFromString(part)
    except _Unsliceable:
        return cls.FromString(data)
    return message


#: Encoded lengths of elements up to this size, ready (most elements are small).
_LENGTHS = [_encode_varint(n) for n in range(1 << 14)]


def length_delimited(number: int, data: bytes) -> bytes:
    """``data`` encoded as length-delimited field ``number`` of a message (its tag, its
    length, itself): one element of a repeated message field."""
    size = len(data)
    length = _LENGTHS[size] if size < len(_LENGTHS) else _encode_varint(size)
    return _encode_varint(number << 3 | 2) + length + data


def serialize_in_slices(message: Any, field_name: str, size: int = 1000) -> bytes:
    """``message.SerializeToString(deterministic=True)``, byte for byte, built a
    piece at a time so that the GIL is given up between pieces: a 100,000-task
    FlowGraph is ~12 MB, one C call of 11-50 ms on this machine, during which no other
    thread (the event loop) runs.

    The pieces: the fields numbered before ``field_name`` (a repeated message field),
    then its elements ``size`` at a time, each with its tag and length, then the fields
    after it. That is the whole encoding: protobuf writes known fields in field-number
    order and unknown fields last. A message with unknown fields or map fields of its
    own is encoded in one call, as is one whose Python protobuf cannot tell unknown
    fields (a nested element's unknown fields are in its own encoding either way)."""
    descriptor = message.DESCRIPTOR
    field = descriptor.fields_by_name[field_name]
    try:
        from google.protobuf.unknown_fields import UnknownFieldSet
    except ImportError:  # pragma: no cover - protobuf without it
        return bytes(message.SerializeToString(deterministic=True))
    if len(UnknownFieldSet(message)) or any(
        f.message_type is not None and f.message_type.GetOptions().map_entry
        for f in descriptor.fields
    ):
        return bytes(message.SerializeToString(deterministic=True))
    before, after = type(message)(), type(message)()
    for other, value in message.ListFields():
        if other.number == field.number:
            continue
        target = before if other.number < field.number else after
        if _repeated(other):
            getattr(target, other.name).extend(value)
        elif other.type == other.TYPE_MESSAGE:
            getattr(target, other.name).CopyFrom(value)
        else:
            setattr(target, other.name, value)
    tag = _encode_varint(field.number << 3 | 2)
    lengths = _LENGTHS
    out = [before.SerializeToString(deterministic=True)]
    elements = getattr(message, field_name)
    for at in range(0, len(elements), size):
        piece = []
        for element in elements[at : at + size]:
            encoded = element.SerializeToString(deterministic=True)
            n = len(encoded)
            piece.append(tag + (lengths[n] if n < len(lengths) else _encode_varint(n)) + encoded)
        out.append(b"".join(piece))
    out.append(after.SerializeToString(deterministic=True))
    return b"".join(out)
