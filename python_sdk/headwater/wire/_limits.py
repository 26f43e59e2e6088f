"""Sizes every side of the wire agrees on (one definition each).

gRPC refuses messages above 4 MiB by default; Headwater keeps every message it builds
well under that and moves larger values through PayloadService in chunks.
"""

from __future__ import annotations

MiB = 1 << 20

#: gRPC's default largest message (what a peer with default settings accepts).
GRPC_MESSAGE_LIMIT = 4 * MiB
#: Hard ceiling for a message Headwater builds (the gRPC limit minus headroom for
#: the envelope around the values).
MESSAGE_LIMIT = GRPC_MESSAGE_LIMIT - 64 * 1024
#: Inline value bytes allowed in one message, all values together (results,
#: assignments); above it values go by reference.
MESSAGE_BUDGET = 3 * MiB
#: Largest single value sent inline; larger ones are uploaded and sent by reference.
#: The server announces its own in ``Welcome.inline_payload_limit``.
INLINE_PAYLOAD_LIMIT = 1 * MiB
#: Size of one chunk of a payload upload or download (and the most a server accepts).
CHUNK_SIZE = 1 * MiB
#: Most bytes gathered into one batch of stream messages.
BATCH_BYTES = 1 * MiB
#: Longest stack trace, failure message or log line sent; the rest is cut (a deep
#: recursion's traceback must not make a message the peer refuses).
TEXT_LIMIT = 64 * 1024
#: Default largest payload a server accepts (a 300 MB array must pass; bound the disk).
MAX_PAYLOAD_BYTES = 4 << 30


def cut_text(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` shortened to about ``limit`` characters, keeping its head and tail."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... ({len(text) - limit} characters cut) ...\n{text[-half:]}"
