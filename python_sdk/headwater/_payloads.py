"""Encoding values as payloads: ``json`` (any language) or ``pickle`` (Python only).

A value is encoded as json only when decoding gives back an equal value of the same
types (so a tuple, a set or a float NaN is not json); otherwise cloudpickle is used.
Portable tasks (implemented in other languages) must use json.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

JSON = "json"
PICKLE = "pickle"


@dataclass(frozen=True, slots=True)
class EncodedValue:
    """Encoded bytes and their metadata (``encoding`` included)."""

    data: bytes
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def encoding(self) -> str:
        return self.metadata.get("encoding", "")


class EncodingError(TypeError):
    """A value cannot be encoded as asked."""


def is_json_exact(value: Any, depth: int = 0) -> bool:
    """Whether json round-trips the value to an equal value of the same types."""
    if depth > 100:
        return False
    if value is None or type(value) is bool:
        return True
    if type(value) is str:  # subclasses (StrEnum...) would come back as plain str
        return True
    if isinstance(value, int):
        return type(value) is int
    if isinstance(value, float):
        return type(value) is float and math.isfinite(value)
    if type(value) is list:
        return all(is_json_exact(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(type(k) is str and is_json_exact(v, depth + 1) for k, v in value.items())
    return False


def encode(value: Any, *, portable: bool = False) -> EncodedValue:
    """Encode a value; json when exact (required when portable), else pickle."""
    if is_json_exact(value):
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        try:
            return EncodedValue(text.encode("utf-8"), {"encoding": JSON})
        except UnicodeEncodeError as exc:  # a lone surrogate is not valid UTF-8
            if portable:
                raise EncodingError(f"a string cannot be sent as UTF-8 json ({exc})") from exc
    if portable:
        raise EncodingError(
            f"a {type(value).__name__} cannot be sent as json (portable tasks accept "
            "None, bool, int, finite float, str, list and dict with string keys)"
        )
    try:
        data = cloudpickle.dumps(value)
    except Exception as exc:
        raise EncodingError(
            f"a {type(value).__name__} cannot be serialised ({type(exc).__name__}: {exc})"
        ) from exc
    return EncodedValue(data, {"encoding": PICKLE})


def decode(encoded: EncodedValue) -> Any:
    """Decode a payload (pickle only ever decoded in Python SDK processes)."""
    encoding = encoded.encoding
    if encoding == JSON:
        return json.loads(encoded.data.decode("utf-8"))
    if encoding == PICKLE:
        return cloudpickle.loads(encoded.data)
    raise EncodingError(f"unknown payload encoding {encoding!r}")


def decode_value(value: Any, fetch: Any = None) -> Any:
    """Decode a ``headwater.v1.Value`` message into a Python value.

    Handles the structural encodings a control plane uses for results it assembled
    without decoding anything (``headwater.list``, ``headwater.tuple``,
    ``headwater.dict``, ``headwater.select``; elements in ``items``). ``fetch`` is
    called with a PayloadRef and must return its bytes (large values).
    """
    kind = value.WhichOneof("kind")
    if kind == "ref":
        if fetch is None:
            raise EncodingError("the value is stored by reference; a fetch function is needed")
        meta = dict(value.ref.metadata)
        return decode(EncodedValue(fetch(value.ref), meta))
    payload = value.inline
    encoding = payload.metadata.get("encoding", "")
    if encoding == "headwater.list":
        return [decode_value(v, fetch) for v in value.items]
    if encoding == "headwater.tuple":
        return tuple(decode_value(v, fetch) for v in value.items)
    if encoding == "headwater.dict":
        keys = json.loads(payload.data)
        return {k: decode_value(v, fetch) for k, v in zip(keys, value.items, strict=True)}
    if encoding == "headwater.select":
        selected = decode_value(value.items[0], fetch)
        for part in json.loads(payload.data):
            selected = selected[part]
        return selected
    return decode(EncodedValue(bytes(payload.data), dict(payload.metadata)))
