"""Flow run parameters on the server: checks and their stored form (never decoded)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from headwater.v1 import payload_pb2
from headwater.wire import ENCODING_KEY, JSON, STRUCTURAL, EncodedValue, GraphSpec, ParameterError
from headwater.wire import json_consumers as _json_consumers

from ._journal import payload_ids
from ._values import to_result_value


def param_values(params: Mapping[str, Any]) -> dict[str, payload_pb2.Value]:
    """Bound parameters (payloads or encoded defaults) as Value messages to store."""
    return {name: to_result_value(value) for name, value in params.items()}


def param_payload_ids(values: Mapping[str, payload_pb2.Value]) -> tuple[str, ...]:
    """Stored payloads that parameters reference (kept while their run is)."""
    return tuple(dict.fromkeys(p for v in values.values() for p in payload_ids(v)))


def _encoding(value: Any) -> str:
    """The encoding of a parameter's payload that is not json, or "" when all json."""
    if isinstance(value, EncodedValue):
        return "" if value.encoding == JSON else value.encoding or "(none)"
    if not isinstance(value, payload_pb2.Value):
        return type(value).__name__
    kind = value.WhichOneof("kind")
    meta = value.ref.metadata if kind == "ref" else value.inline.metadata
    encoding = meta.get(ENCODING_KEY, "")
    if encoding in STRUCTURAL:
        return next((e for e in map(_encoding, value.items) if e), "")
    return "" if encoding == JSON else encoding or "(none)"


def check_json_params(graph: GraphSpec, params: Mapping[str, Any]) -> None:
    """Parameters that portable tasks read must be json (ParameterError otherwise)."""
    for name, (task, arg) in _json_consumers(graph).params.items():
        encoding = _encoding(params.get(name))
        if encoding:
            raise ParameterError(
                f"task {task!r}, argument {arg!r}: parameter {name!r} is encoded as "
                f"{encoding}, but the task reads only json (it is portable or implemented "
                "in another language); pass a json value (docs/payloads.md)"
            )
