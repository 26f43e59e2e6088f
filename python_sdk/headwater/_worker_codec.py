"""The worker's side of the wire: inputs in, results and failures out, large values in
chunks through PayloadService (``headwater.wire.PayloadTransfer``).

Kept apart from the session logic in ``_worker`` so each half stays small. Nothing
here holds state: the worker passes in a ``PayloadTransfer`` bound to its channel.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from headwater.v1 import payload_pb2, state_pb2, worker_pb2
from headwater.wire import (
    GRPC_MESSAGE_LIMIT,
    INLINE_PAYLOAD_LIMIT,
    LENGTH_KEY,
    MESSAGE_BUDGET,
    SPLIT_PATH_KEY,
    EncodedValue,
    EncodingError,
    FailureInfo,
    PayloadTransfer,
    decode_value,
    encode,
    failure_to_proto,
    message_budget,
    message_ceiling,
)
from headwater_runtime.engine import PYTHON_VALUES

# Inputs --------------------------------------------------------------------------------


def decode_input(msg: worker_pb2.InputValue, transfer: PayloadTransfer) -> Any:
    """The Python value of one assignment argument (decoded, assembled, then selected)."""
    kind = msg.WhichOneof("kind")
    value: Any
    if kind == "value":
        value = decode_value(msg.value, transfer.download)
    elif kind == "list":
        items = [decode_input(i, transfer) for i in msg.list.items]
        value = tuple(items) if msg.list.tuple else items
    elif kind == "map":
        value = {e.key: decode_input(e.value, transfer) for e in msg.map.entries}
    else:
        value = None
    for element in msg.path:
        value = value[element.key if element.WhichOneof("selector") == "key" else element.index]
    return value


def decode_inputs(assignment: worker_pb2.Assignment, transfer: PayloadTransfer) -> dict[str, Any]:
    """Arguments by name, in ``argument_order`` first (then any others)."""
    names = [n for n in assignment.argument_order if n in assignment.inputs]
    names += sorted(n for n in assignment.inputs if n not in set(names))
    return {name: decode_input(assignment.inputs[name], transfer) for name in names}


# Results -------------------------------------------------------------------------------


def _elements(value: Any) -> list[Any] | None:
    """The elements of a sequence result, as the embedded host maps over them
    (``PythonValues``): a DataFrame has none (its length counts rows, its ``[i]`` picks
    a column) and a pandas Series's are taken by position, not by label. (A worker split
    a DataFrame into its columns, and a Series by its index's labels: other results
    than embedded, or a KeyError, a user trial.)"""
    if PYTHON_VALUES.length(value) is None:
        return None
    if isinstance(value, list | tuple):
        return list(value)
    try:
        return [PYTHON_VALUES.item(value, i) for i in range(len(value))]
    except Exception as exc:
        raise EncodingError(
            f"a {type(value).__name__} result cannot be split into elements "
            f"({type(exc).__name__}: {exc})"
        ) from exc


def _part(value: Any, path: Sequence[str | int]) -> Any:
    """The part of a result a downstream task maps over; None when the path does not
    fit (the mapped task then fails with "not a sequence", as embedded)."""
    for element in path:
        try:
            value = value[element]
        except (LookupError, TypeError):
            return None
    return value


class _Packer:
    """Turns encoded values into Value messages, inline while the budget allows."""

    def __init__(
        self, transfer: PayloadTransfer, inline_limit: int, budget: int = MESSAGE_BUDGET
    ) -> None:
        self.transfer = transfer
        self.budget = budget
        self.limit = min(inline_limit if inline_limit > 0 else INLINE_PAYLOAD_LIMIT, budget)
        self.inline_total = 0

    def inline(self, size: int) -> bool:
        """Whether a value of ``size`` bytes travels inline (it then counts against the
        budget)."""
        if size <= self.limit and self.inline_total + size <= self.budget:
            self.inline_total += size
            return True
        return False

    def value(self, encoded: EncodedValue) -> payload_pb2.Value:
        if self.inline(len(encoded.data)):
            return payload_pb2.Value(
                inline=payload_pb2.Payload(data=encoded.data, metadata=encoded.metadata)
            )
        return payload_pb2.Value(ref=self.transfer.upload(encoded))


def encode_result(
    value: Any,
    *,
    result_encoding: str,
    split: bool,
    inline_limit: int,
    transfer: PayloadTransfer,
    split_path: Sequence[str | int] = (),
    max_message_bytes: int = GRPC_MESSAGE_LIMIT,
) -> payload_pb2.Value:
    """A task's result as a Value: inline when small, else uploaded; with each element
    (of the whole result, or of the part at ``split_path``) in ``items`` when the
    result is to be split. ``max_message_bytes``: the largest message the server
    accepts (``Welcome.max_message_bytes``). Raises EncodingError."""
    portable = result_encoding == "json"
    if result_encoding not in ("", "json", "pickle"):
        raise EncodingError(f"unknown result encoding {result_encoding!r}")
    encoded = encode(value, portable=portable)
    elements = _elements(_part(value, split_path)) if split else None
    ceiling = message_ceiling(max_message_bytes)
    packer = _Packer(transfer, inline_limit, message_budget(max_message_bytes))
    encoded_items: list[EncodedValue] = []
    order: list[int] = []
    if elements is not None:
        meta = {**encoded.metadata, LENGTH_KEY: str(len(elements))}
        if split_path:
            meta[SPLIT_PATH_KEY] = json.dumps(list(split_path))
        encoded = EncodedValue(encoded.data, meta)
        encoded_items = [encode(e, portable=portable) for e in elements]
        # Smallest first, so as many as possible stay inline; then back in order.
        order = sorted(range(len(encoded_items)), key=lambda i: len(encoded_items[i].data))
        sizes = [len(encoded_items[i].data) for i in order]
        _check_split_fits(sizes, len(encoded.data), packer, ceiling)
    result = packer.value(encoded)
    if elements is not None:
        # Which elements go by reference (uploaded smallest first), then every element
        # built in place, in order: a million standalone Values copied into the result
        # cost ~2 KB and ~10 µs each.
        refs = {
            i: transfer.upload(encoded_items[i])
            for i in order
            if not packer.inline(len(encoded_items[i].data))
        }
        add = result.items.add
        for i, item in enumerate(encoded_items):
            element = add()
            ref = refs.get(i)
            if ref is None:
                payload = element.inline
                payload.data = item.data
                for key, text in item.metadata.items():
                    payload.metadata[key] = text
            else:
                element.ref.CopyFrom(ref)
    if result.ByteSize() > ceiling:
        raise EncodingError(
            f"the result split into {len(elements or ())} elements does not fit in one "
            "message, even with every element sent by reference"
        )
    return result


#: The least a split element sent by reference adds to the result message: its
#: PayloadRef (a 32-hex id, a 64-hex SHA-256, size, metadata) and framing.
REF_ITEM_BYTES = 120
#: What an inline element adds beyond its encoded bytes (its metadata and framing).
INLINE_ITEM_BYTES = 24


def _check_split_fits(sizes: list[int], whole: int, packer: _Packer, ceiling: int) -> None:
    """Refuse, before anything is uploaded, a split result whose elements cannot fit
    in one message even with every element that is not inline sent by reference
    (each reference still takes ~``REF_ITEM_BYTES``): uploading a million elements one
    by one, only to fail at the end, took many minutes. ``whole``: the size of the
    whole result's encoding; ``sizes``: the elements' encoded sizes, smallest first;
    ``packer``: its largest inline value and inline budget; ``ceiling``: the largest
    message. The estimate is a lower bound of the message's size: what passes may
    still be refused after."""
    limit = packer.limit
    budget = packer.budget
    if whole <= limit:  # the whole result inline
        budget -= whole
        size = whole + INLINE_ITEM_BYTES
    else:
        size = REF_ITEM_BYTES
    for item in sizes:
        if item <= limit and item <= budget:
            budget -= item
            size += item + INLINE_ITEM_BYTES
        else:
            size += REF_ITEM_BYTES
        if size > ceiling:
            raise EncodingError(
                f"the result split into {len(sizes):,} elements does not fit in one "
                f"message ({ceiling // 1024:,} KiB under the server's max_message_bytes), "
                "even with elements sent by reference: map over fewer, larger elements "
                "(chunks of the list), or raise max_message_bytes on the server and its "
                "workers (docs/limits.md)"
            )


# Failures ------------------------------------------------------------------------------


def failure(
    type_: str, message: str, *, retryable: bool, cause: FailureInfo | None = None
) -> state_pb2.Failure:
    """A Failure raised by the worker itself (not by the task's code)."""
    return failure_to_proto(
        FailureInfo(type=type_, message=message, retryable=retryable, cause=cause)
    )
