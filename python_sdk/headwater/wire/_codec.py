"""Encoding values as payloads: ``json`` (any language) or ``pickle`` (Python only).

For a portable consumer (a task implemented in another language) a value is written
as json with ``$`` tags for bytes, dates, big integers and non-finite floats
(``_json_codec``; docs/payloads.md), or fails with EncodingError. Otherwise a value is
json only when plain JSON gives back an equal value of the same types (so a tuple, a
set or a float NaN is pickled), which keeps Python-to-Python values exactly as they were.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from ._json_codec import JsonCodecError, dumps, is_plain, loads

#: Payload metadata key naming how the bytes are encoded.
ENCODING_KEY = "encoding"
JSON = "json"
PICKLE = "pickle"
#: Structural encodings a control plane builds from other values without decoding
#: them; their elements are in ``Value.items``.
LIST, TUPLE, DICT, SELECT = (
    "headwater.list",
    "headwater.tuple",
    "headwater.dict",
    "headwater.select",
)
STRUCTURAL = (LIST, TUPLE, DICT, SELECT)
#: Metadata key on a result split into elements: how many (read by the control plane).
LENGTH_KEY = "headwater.length"
#: PayloadRef metadata a server adds to a Dask ref: the ``worker_id`` of the bridge that
#: reported it (a restarted server knows who holds the values of the runs it resumes).
HOLDER_KEY = "headwater.holder"
#: Metadata key on a result whose part at a path was split: the path as JSON.
SPLIT_PATH_KEY = "headwater.split_path"
#: ``PayloadRef.location`` of a value held in a Dask bridge worker's cluster.
DASK_LOCATION = "dask"
#: PayloadRef metadata a server adds to a Dask ref a client asked for that its holder
#: could not export: why (a result Dask cannot serialise), said to whoever reads it.
UNEXPORTABLE_KEY = "headwater.unexportable"


@dataclass(frozen=True, slots=True)
class EncodedValue:
    """Encoded bytes and their metadata (``encoding`` included)."""

    data: bytes
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def encoding(self) -> str:
        """The ``encoding`` metadata (``json``, ``pickle`` or a structural one); "" if unset."""
        return self.metadata.get(ENCODING_KEY, "")


class EncodingError(TypeError):
    """A value cannot be encoded as asked, or a payload cannot be decoded."""


def encode(value: Any, *, portable: bool = False) -> EncodedValue:
    """Encode a value: tagged json when portable (or EncodingError), else plain json
    when exact, else pickle."""
    plain = is_plain(value)
    if portable or plain:
        try:
            return EncodedValue(dumps(value, plain=plain), {ENCODING_KEY: JSON})
        except JsonCodecError as exc:
            if portable:
                raise EncodingError(str(exc)) from None
    try:
        data = cloudpickle.dumps(value)
    except Exception as exc:
        raise EncodingError(
            f"a {type(value).__name__} cannot be serialised ({type(exc).__name__}: {exc})"
        ) from exc
    return EncodedValue(data, {ENCODING_KEY: PICKLE})


def decode(encoded: EncodedValue) -> Any:
    """Decode a payload (pickle only ever decoded in Python SDK processes)."""
    encoding = encoded.encoding
    if encoding == JSON:
        try:
            return loads(encoded.data)
        except JsonCodecError as exc:
            raise EncodingError(str(exc)) from None
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
    encoding = payload.metadata.get(ENCODING_KEY, "")
    if encoding == LIST:
        return [decode_value(v, fetch) for v in value.items]
    if encoding == TUPLE:
        return tuple(decode_value(v, fetch) for v in value.items)
    if encoding == DICT:
        keys = json.loads(payload.data)
        return {k: decode_value(v, fetch) for k, v in zip(keys, value.items, strict=True)}
    if encoding == SELECT:
        selected = decode_value(value.items[0], fetch)
        for part in json.loads(payload.data):
            selected = selected[part]
        return selected
    return decode(EncodedValue(bytes(payload.data), dict(payload.metadata)))
