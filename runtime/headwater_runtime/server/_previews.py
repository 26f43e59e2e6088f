"""Describing values without sending them: sizes, encodings and short previews.

A listing (``GetFlowRun`` with its task runs, ``ListFlowRuns``, ``WatchFlowRun``, the
HTTP API) must fit in one message whatever the run produced, so a result larger than
``LISTED_VALUE_LIMIT`` is left out and a ``ValueSummary`` stands in for it: its size,
its encoding and a preview. The server never decodes user payloads: a json text is
shown as the text it is (cut short), a list or dict the engine assembled by its
shape, and a pickle not at all. The value itself is fetched on demand
(``GetTaskRunResult``, ``GetFlowRunResult``), its large parts by reference.

A value stored by reference (above the 1 MiB inline limit) is previewed as an inline
one is, but its preview is made once, when its bytes are uploaded: PayloadService
keeps the first ``PREVIEW_BYTES`` that stream past anyway and puts the preview in the
reference's metadata (``PREVIEW_KEY``). The results, parameters and listings that hold
the reference then carry their preview with them, and reading a run costs no payload
read at all (reading even one stored chunk per listed value would cost a listing of
many large results up to a chunk, 1 MiB, each). A reference made before this (or by a
Dask bridge, whose bytes the server never sees) has no preview.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Mapping

from headwater.v1 import payload_pb2, run_pb2
from headwater.wire import DICT, ENCODING_KEY, JSON, LIST, SELECT, STRUCTURAL, TUPLE

#: Largest result (serialized Value, bytes) a listing carries; larger ones are
#: described by a ValueSummary and fetched on demand.
LISTED_VALUE_LIMIT = 16 * 1024
#: Longest preview text, in characters.
PREVIEW_CHARS = 200
#: Elements of an assembled list or dict shown in its preview.
PREVIEW_ITEMS = 3
#: Bytes of a json text read for its preview (a character is at most 4 bytes).
PREVIEW_BYTES = PREVIEW_CHARS * 4
#: PayloadRef metadata key: the preview the server made when the bytes were uploaded.
PREVIEW_KEY = "headwater.preview"
#: Marks a preview cut short.
_MORE = "…"


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


def _cut(text: str, limit: int, truncated: bool = False) -> str:
    """``text`` with its whitespace collapsed, at most ``limit`` characters, ending with
    "…" when cut here or when it is only the start of the value (``truncated``)."""
    text = " ".join(text.split())
    if len(text) > limit:
        return text[: limit - 1] + _MORE
    if truncated and not text.endswith(_MORE):
        return text[: limit - 1] + _MORE if len(text) >= limit else text + _MORE
    return text


def json_text_preview(head: bytes, size: int, limit: int = PREVIEW_CHARS) -> str:
    """The preview of a json text of ``size`` bytes from its first bytes ``head``
    (``limit * 4`` are enough): the text as it starts, marked "…" when cut short."""
    # A character cut in two at the end of ``head`` is dropped, not shown as U+FFFD.
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(head, final=len(head) >= size)
    return _cut(text, limit, truncated=len(head) < size)


def upload_metadata(metadata: Mapping[str, str], head: bytes, size: int) -> dict[str, str]:
    """The metadata of an uploaded payload's reference: a json text's preview made from
    its first bytes ``head`` (``PREVIEW_BYTES`` of them) under ``PREVIEW_KEY``; any
    ``PREVIEW_KEY`` the uploader sent is dropped (only the server makes previews)."""
    out = {k: v for k, v in metadata.items() if k != PREVIEW_KEY}
    if out.get(ENCODING_KEY, "") == JSON:
        out[PREVIEW_KEY] = json_text_preview(head[:PREVIEW_BYTES], size)
    return out


def preview(value: payload_pb2.Value, limit: int = PREVIEW_CHARS) -> str:
    """A short text showing what a value is, without decoding user payloads beyond
    reading a json text as text ("" for pickles, and for references stored without a
    preview: see the module docstring)."""
    encoding = _encoding(value)
    kind = value.WhichOneof("kind")
    if kind == "ref":
        # Made at upload (at most PREVIEW_CHARS, "…" marked); cut again for a smaller
        # limit, and bounded whatever a worker put there.
        made = value.ref.metadata.get(PREVIEW_KEY, "") if encoding == JSON else ""
        return _cut(made, limit)
    if kind != "inline":
        return ""
    data = value.inline.data
    if encoding == JSON:
        return json_text_preview(data[: limit * 4], len(data), limit)
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


__all__ = [
    "LISTED_VALUE_LIMIT",
    "PREVIEW_BYTES",
    "PREVIEW_KEY",
    "bounded",
    "json_text_preview",
    "preview",
    "summarize",
    "upload_metadata",
    "value_size",
]
