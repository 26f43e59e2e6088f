"""Saying which request was over a server's message limit, and how to raise it.

gRPC refuses a message over the receiver's limit with only ``RESOURCE_EXHAUSTED:
Received message larger than max (10866787 vs. 4194304)``: a user registering a
100,000-task flow saw that and nothing about what was large or what to change.
"""

from __future__ import annotations

import re

import grpc
from google.protobuf.message import Message

from headwater.v1 import control_plane_pb2 as cp
from headwater.wire import GRPC_MESSAGE_LIMIT, limit_flag, limit_variable

__all__ = ["over_message_limit"]

#: gRPC's wording for a message over the receiver's limit: (its size vs. the limit).
_LARGER_THAN_MAX = re.compile(r"larger than max \((\d+) vs\. (\d+)\)")
_LIMIT = "max_message_bytes"


def _size(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    return f"{n:,} bytes"


def over_message_limit(exc: grpc.RpcError, request: object) -> str | None:
    """What to tell a user whose ``request`` the server refused as larger than its
    message limit: what was large (a flow's graph and its task count), the limit and
    how to raise it; None for any other error, or when the refused message was not
    this request (an answer over this client's own receive limit)."""
    code = exc.code() if hasattr(exc, "code") else None
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    found = _LARGER_THAN_MAX.search(details)
    if code != grpc.StatusCode.RESOURCE_EXHAUSTED or found is None:
        return None
    if not isinstance(request, Message):
        return None
    size, limit = request.ByteSize(), int(found.group(2))
    if size <= limit:
        return None
    if isinstance(request, cp.RegisterFlowRequest):
        graph = request.graph
        tasks = len(graph.tasks)
        what = (
            f"flow {graph.name!r} has {tasks:,} task{_s(tasks)}: its graph is a "
            f"{size / 1e6:.1f} MB message"
        )
        smaller = (
            "; or put fewer tasks in the graph: map one task over a list that a task "
            "returns, which the server expands into task runs (docs/limits.md)"
        )
        largest = max(graph.tasks, key=lambda node: node.ByteSize(), default=None)
        if largest is not None and 2 * largest.ByteSize() > size:
            # A few tasks, one of them given a large value written in the flow body
            # (`inc.map(list(range(150_000)))`): fewer tasks would not help.
            what += (
                f", {largest.ByteSize() / 1e6:.1f} MB of it the arguments of task "
                f"{largest.id!r} written in the flow body"
            )
            smaller = (
                "; or have a task return that data, or pass it as a parameter, rather "
                "than writing it into the flow body (docs/limits.md)"
            )
    else:
        what, smaller = f"the request is a {size / 1e6:.1f} MB message", ""
    default = "" if limit == GRPC_MESSAGE_LIMIT else f", {_size(GRPC_MESSAGE_LIMIT)} by default"
    return (
        f"{what}, over the server's message limit of {_size(limit)} ({_LIMIT}{default}): "
        f"raise it on the server with {limit_flag(_LIMIT)} or {limit_variable(_LIMIT)}, "
        f"and start its workers with the same {limit_flag(_LIMIT)} (the server refuses "
        "workers that accept less); this client sends messages of any size and needs no "
        f"setting{smaller}"
    )


def _s(n: int) -> str:
    return "" if n == 1 else "s"
