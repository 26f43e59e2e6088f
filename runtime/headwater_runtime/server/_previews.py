"""Describing values without sending them: sizes, encodings and short previews.

A listing (``GetFlowRun`` with its task runs, ``ListFlowRuns``, ``WatchFlowRun``, the
HTTP API) must fit in one message whatever the run produced, so a result larger than
``LISTED_VALUE_LIMIT`` is left out and a ``ValueSummary`` stands in for it: its size,
its encoding and a preview. The server never decodes user payloads: a json text is
shown as the text it is (cut short), a list or dict the engine assembled by its
shape, and a pickle not at all. The value itself is fetched on demand
(``GetTaskRunResult``, ``GetFlowRunResult``), its large parts by reference.
"""

from __future__ import annotations

import json

from headwater.v1 import payload_pb2, run_pb2
from headwater.wire import DICT, ENCODING_KEY, JSON, LIST, SELECT, STRUCTURAL, TUPLE

#: Largest result (serialized Value, bytes) a listing carries; larger ones are
#: described by a ValueSummary and fetched on demand.
LISTED_VALUE_LIMIT = 16 * 1024
#: Longest preview text, in characters.
PREVIEW_CHARS = 200
#: Elements of an assembled list or dict shown in its preview.
PREVIEW_ITEMS = 3


def _encoding(value: payload_pb2.Value) -> str:
    kind = value.WhichOneof("kind")
    if kind == "inline":
        return str(value.inline.metadata.get(ENCODING_KEY, ""))
    if kind == "ref":
        return str(value.ref.metadata.get(ENCODING_KEY, ""))
    return ""


def value_size(value: payload_pb2.Value) -> int:
    """The bytes of a value's encoding, counting the elements of assembled values
    (a split result's separately sent elements are copies: not counted twice)."""
    kind = value.WhichOneof("kind")
    if kind == "ref":
        return int(value.ref.size_bytes)
    if kind != "inline":
        return 0
    if value.inline.metadata.get(ENCODING_KEY, "") in STRUCTURAL:
        return len(value.inline.data) + sum(value_size(v) for v in value.items)
    return len(value.inline.data)


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def preview(value: payload_pb2.Value, limit: int = PREVIEW_CHARS) -> str:
    """A short text showing what a value is, without decoding user payloads beyond
    reading a json text as text ("" for pickles and values stored by reference)."""
    encoding = _encoding(value)
    if value.WhichOneof("kind") != "inline":
        return ""
    data = bytes(value.inline.data)
    if encoding == JSON:
        return _cut(data[: limit * 4].decode("utf-8", "replace"), limit)
    if encoding in (LIST, TUPLE):
        shown = [preview(v, limit // PREVIEW_ITEMS) or "…" for v in value.items[:PREVIEW_ITEMS]]
        more = len(value.items) - len(shown)
        if more > 0:
            shown.append(f"… {more} more")
        opening, closing = ("[", "]") if encoding == LIST else ("(", ")")
        return _cut(opening + ", ".join(shown) + closing, limit)
    if encoding == DICT:
        keys = json.loads(data)
        shown = [
            f"{json.dumps(k)}: {preview(v, limit // PREVIEW_ITEMS) or '…'}"
            for k, v in zip(keys[:PREVIEW_ITEMS], value.items, strict=False)
        ]
        if len(keys) > PREVIEW_ITEMS:
            shown.append(f"… {len(keys) - PREVIEW_ITEMS} more")
        return _cut("{" + ", ".join(shown) + "}", limit)
    if encoding == SELECT and value.items:
        path = "".join(f"[{json.dumps(p)}]" for p in json.loads(data))
        return _cut(f"({preview(value.items[0], limit) or '…'}){path}", limit)
    return ""


def summarize(value: payload_pb2.Value, *, omitted: bool = False) -> run_pb2.ValueSummary:
    """A value's ValueSummary (size, encoding, preview)."""
    return run_pb2.ValueSummary(
        size_bytes=value_size(value),
        encoding=_encoding(value),
        preview=preview(value),
        omitted=omitted,
    )


def bounded(
    value: payload_pb2.Value, limit: int = LISTED_VALUE_LIMIT
) -> tuple[payload_pb2.Value | None, run_pb2.ValueSummary]:
    """The value if it may be listed (None when larger than ``limit``), and its summary."""
    if value.ByteSize() <= limit:
        return value, summarize(value)
    return None, summarize(value, omitted=True)


__all__ = ["LISTED_VALUE_LIMIT", "bounded", "preview", "summarize", "value_size"]
