"""The worker stream's "batch" feature (``_protocol.BATCH``), for both ends.

Merge the messages already queued behind one into a single stream message, never
waiting for more (so batching adds no latency; it only spares the per-message cost
when several are ready)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf.message import Message

from ._limits import BATCH_BYTES

#: What ``next_ready`` returns when nothing more is queued.
NOT_READY: Any = object()

M = TypeVar("M", bound=Message)


def gather(first: M, next_ready: Callable[[], Any], wrap: Callable[[list[M]], M]) -> tuple[M, bool]:
    """``first`` plus what ``next_ready`` hands out (``NOT_READY``: nothing queued;
    ``None``: the queue's end-of-stream marker), as one message made by ``wrap`` (a
    single message stays as it is); and whether the end marker was reached."""
    messages = [first]
    size = first.ByteSize()
    done = False
    while size < BATCH_BYTES:
        message = next_ready()
        if message is NOT_READY:
            break
        if message is None:
            done = True
            break
        messages.append(message)
        size += message.ByteSize()
    return (first if len(messages) == 1 else wrap(messages)), done
