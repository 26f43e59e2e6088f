"""Keeping assignments under gRPC's message limit.

Workers send results up to ``inline_payload_limit`` (1 MiB) inline, so a task that
takes many results at once (a reduce over a mapped task) can be handed more inline
bytes than one message may carry (4 MiB). Before such an assignment is sent, the
control plane moves its largest inline values into the payload store and sends
references instead. It stores the bytes as they are: nothing is decoded.
"""

from __future__ import annotations

from headwater.v1 import payload_pb2, worker_pb2
from headwater.wire import ENCODING_KEY, MESSAGE_BUDGET, STRUCTURAL, chunks
from headwater_runtime.store import Store

from ._sizes import assignment_size, value_size

#: Largest assignment sent as it is; above it, inline values move to the store.
ASSIGNMENT_BUDGET = MESSAGE_BUDGET
#: Inline values this small stay inline: a reference to a stored copy is no smaller.
SPILL_MIN_BYTES = 256


def _inline_values(value: payload_pb2.Value, out: list[payload_pb2.Value]) -> None:
    kind = value.WhichOneof("kind")
    if kind == "inline" and value.inline.metadata.get(ENCODING_KEY, "") not in STRUCTURAL:
        out.append(value)
    for item in value.items:  # elements of structural encodings
        _inline_values(item, out)


def _input_values(msg: worker_pb2.InputValue, out: list[payload_pb2.Value]) -> None:
    kind = msg.WhichOneof("kind")
    if kind == "value":
        _inline_values(msg.value, out)
    elif kind == "list":
        for item in msg.list.items:
            _input_values(item, out)
    elif kind == "map":
        for entry in msg.map.entries:
            _input_values(entry.value, out)


def spill_inputs(
    assignment: worker_pb2.Assignment, store: Store, budget: int = ASSIGNMENT_BUDGET
) -> int:
    """Move the largest inline input values to the store until the assignment fits in
    ``budget`` bytes; returns how many were moved."""
    return fit_inputs(assignment, store, budget)[0]


def fit_inputs(
    assignment: worker_pb2.Assignment, store: Store, budget: int = ASSIGNMENT_BUDGET
) -> tuple[int, int]:
    """``spill_inputs``: how many values moved, and the assignment's encoded size
    afterwards (sized a part at a time, not in one long C call for a wide reduce)."""
    size = assignment_size(assignment)
    if size <= budget:
        return 0, size
    values: list[payload_pb2.Value] = []
    for argument in assignment.inputs.values():
        _input_values(argument, values)
    return _spill(values, size, budget, store)


def spill_value(value: payload_pb2.Value, store: Store, budget: int = ASSIGNMENT_BUDGET) -> int:
    """Move the largest inline parts of a value (a flow or task result an answer
    carries) to the store until it fits in ``budget`` bytes; returns how many moved.
    On the writer thread: it stores payloads."""
    size = value_size(value)
    if size <= budget:
        return 0
    values: list[payload_pb2.Value] = []
    _inline_values(value, values)
    return _spill(values, size, budget, store)[0]


def _spill(
    values: list[payload_pb2.Value], size: int, budget: int, store: Store
) -> tuple[int, int]:
    """Replace the largest of ``values`` by references to stored copies until ``size``
    is within ``budget``; how many moved, and the size then. Only values larger than a
    reference move: a million tiny inputs (a reduce over a wide map) would each grow,
    and each cost a stored payload. An assignment still over the workers' limit then
    is not sent (``_assignments.oversize_failure``)."""
    values = [v for v in values if len(v.inline.data) > SPILL_MIN_BYTES]
    values.sort(key=lambda v: len(v.inline.data), reverse=True)
    moved = 0
    for part in values:
        if size <= budget:
            break
        data = bytes(part.inline.data)
        meta = store.put_payload(chunks(data), dict(part.inline.metadata), len(data))
        before = part.ByteSize()
        part.ref.CopyFrom(  # replaces the inline payload (one of the two)
            payload_pb2.PayloadRef(
                payload_id=meta.id, size_bytes=meta.size, metadata=meta.metadata, sha256=meta.sha256
            )
        )
        size -= before - part.ByteSize()
        moved += 1
    return moved, size
