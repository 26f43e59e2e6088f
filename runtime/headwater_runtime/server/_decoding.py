"""Malformed requests are refused with INVALID_ARGUMENT, for every RPC, in one place.

gRPC decodes a request with the method's deserializer before the servicer runs; when
that fails (bytes that are not the message, invalid UTF-8 in a string field, nesting
deeper than protobuf's 100 levels) grpc.aio answers ``UNKNOWN: Unexpected
DecodeError``, which tells a client nothing and looks like a server bug.
``DecodeInterceptor`` swaps each method's deserializer for one that returns a
``Malformed`` marker instead of raising, and wraps the method so that the marker, as
the request or as any message of a request stream (a worker's Connect stream, an
upload), ends the call with INVALID_ARGUMENT naming the method and what was wrong.

The same wrapper answers a store that cannot be reached or written (PostgreSQL
down, a disk full) with UNAVAILABLE (RESOURCE_EXHAUSTED when out of space) and the
store's words, for every RPC: a read a servicer does not guard would otherwise end
as ``UNKNOWN: Unexpected StoreUnavailable``, which clients do not retry.

It also keeps large messages from stopping the event loop while they are
decoded: one over ``LARGE`` bytes is not decoded by the deserializer (which gRPC calls
on the loop) but handed over as ``Deferred`` and decoded on a worker thread, a slice
at a time (``_slices``), before the method sees it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from headwater.wire import CAUSE_METADATA, CAUSE_STORE
from headwater_runtime.store import StoreUnavailable

from ._auth import _Handler, _Req, _Resp
from ._details import detail
from ._slices import LARGE, parse_in_slices

#: The status of a call whose request (or one of whose messages) cannot be decoded.
MALFORMED = grpc.StatusCode.INVALID_ARGUMENT


class Malformed:
    """Stands for a message that could not be decoded (never reaches a servicer).

    Args:
        error: what the decoder said.
    """

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


class Deferred:
    """A large message, to be decoded off the event loop (``decoded``).

    Args:
        cls: its message class.
        data: its encoding.
    """

    __slots__ = ("cls", "data")

    def __init__(self, cls: Any, data: bytes) -> None:
        self.cls = cls
        self.data = data

    async def decoded(self) -> Any:
        """The message, decoded in slices on a worker thread; Malformed when it is not
        one."""
        try:
            return await asyncio.to_thread(parse_in_slices, self.cls, self.data)
        except Exception as exc:
            return Malformed(str(exc) or type(exc).__name__)


def lenient(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A deserializer that returns ``Malformed`` instead of raising, and ``Deferred``
    for a message too large to decode on the event loop."""
    cls = getattr(deserialize, "__self__", None)  # the class of Message.FromString
    sliceable = cls is not None and hasattr(cls, "DESCRIPTOR")

    def parse(data: bytes) -> Any:
        if sliceable and len(data) > LARGE:
            return Deferred(cls, data)
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError, or anything else a parser raises
            return Malformed(str(exc) or type(exc).__name__)

    return parse


async def refuse(context: grpc.aio.ServicerContext[Any, Any], method: str, bad: Malformed) -> None:
    """End the call: the request could not be decoded."""
    await context.abort(MALFORMED, f"{method}: malformed request message ({bad.error})")


async def store_refusal(
    context: grpc.aio.ServicerContext[Any, Any],
    exc: StoreUnavailable,
    advice: str = "try again later",
) -> None:
    """End the call: the store could not be reached or written (the client may retry;
    the trailing metadata tells it the server answered, and why)."""
    code = grpc.StatusCode.RESOURCE_EXHAUSTED if exc.full else grpc.StatusCode.UNAVAILABLE
    cause = ((CAUSE_METADATA, CAUSE_STORE),)
    await context.abort(code, detail(f"{exc}; {advice}"), trailing_metadata=cause)


class _Stream:
    """A request stream that stops at the first malformed message.

    Read by the method's own task (an upload, a worker's first message), the malformed
    message ends the call at once. Read by another task (the worker gateway reads a
    stream on a task of its own while the method's task writes to it), the stream just
    ends there: ending the call from that task could collide with a message being
    written (gRPC refuses a status while a send is under way). The method then ends
    as it does when a stream ends, and ``guard`` ends the call with the refusal.
    """

    def __init__(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any], method: str
    ) -> None:
        self.requests = requests
        self.context = context
        self.method = method
        self.owner = asyncio.current_task()
        self.malformed: Malformed | None = None

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for message in self.requests:
            request = await message.decoded() if isinstance(message, Deferred) else message
            if isinstance(request, Malformed):
                if asyncio.current_task() is self.owner:
                    await refuse(self.context, self.method, request)
                self.malformed = request
                return
            yield request

    async def refuse_late(self) -> None:
        """End the call with the refusal the stream held back (if any)."""
        if self.malformed is not None:
            await refuse(self.context, self.method, self.malformed)


async def _results(outcome: Any) -> AsyncIterator[Any]:
    """The responses of a response-streaming method, whichever way it is written
    (an async generator, or a coroutine that writes with ``context.write``)."""
    if inspect.isasyncgen(outcome):
        async for response in outcome:
            yield response
    else:
        await outcome


def _encoded_or(serialize: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """The method's serializer, passing an answer already encoded (``bytes``, made off
    the event loop: a 34 MB GetFlowRun answer) through as it is."""
    if serialize is None:
        return None

    def encode(response: Any) -> bytes:
        return response if isinstance(response, bytes) else serialize(response)

    return encode


def guard(handler: _Handler[_Req, _Resp], method: str) -> _Handler[_Req, _Resp]:
    """The same method with a lenient deserializer and the refusal of malformed
    messages (``handler`` unchanged when it has no deserializer)."""
    deserialize = handler.request_deserializer
    if deserialize is None:
        return handler
    parse, serialize = lenient(deserialize), _encoded_or(handler.response_serializer)
    # The behaviours are coroutines and async generators here (grpc.aio), whatever the
    # grpc stubs' synchronous signatures say: Any.

    if handler.unary_unary is not None:
        inner_uu: Any = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            if isinstance(request, Deferred):
                request = await request.decoded()
            if isinstance(request, Malformed):
                await refuse(context, method, request)
            try:
                return await inner_uu(request, context)
            except StoreUnavailable as exc:
                await store_refusal(context, exc)

        return grpc.unary_unary_rpc_method_handler(unary_unary, parse, serialize)
    if handler.unary_stream is not None:
        inner_us: Any = handler.unary_stream

        async def unary_stream(request: Any, context: Any) -> AsyncIterator[Any]:
            if isinstance(request, Deferred):
                request = await request.decoded()
            if isinstance(request, Malformed):
                await refuse(context, method, request)
            try:
                async for response in _results(inner_us(request, context)):
                    yield response
            except StoreUnavailable as exc:
                await store_refusal(context, exc)

        return grpc.unary_stream_rpc_method_handler(unary_stream, parse, serialize)
    if handler.stream_unary is not None:
        inner_su: Any = handler.stream_unary

        async def stream_unary(requests: Any, context: Any) -> Any:
            stream = _Stream(requests, context, method)
            try:
                response = await inner_su(aiter(stream), context)
            except StoreUnavailable as exc:
                await store_refusal(context, exc)
            await stream.refuse_late()
            return response

        return grpc.stream_unary_rpc_method_handler(stream_unary, parse, serialize)
    inner_ss: Any = handler.stream_stream
    assert inner_ss is not None

    async def stream_stream(requests: Any, context: Any) -> AsyncIterator[Any]:
        stream = _Stream(requests, context, method)
        try:
            async for response in _results(inner_ss(aiter(stream), context)):
                yield response
        except StoreUnavailable as exc:
            await store_refusal(context, exc)
        await stream.refuse_late()

    return grpc.stream_stream_rpc_method_handler(stream_stream, parse, serialize)


class DecodeInterceptor(grpc.aio.ServerInterceptor):
    """Answers undecodable requests, and undecodable messages of request streams, with
    INVALID_ARGUMENT naming the method (see the module docstring)."""

    def __init__(self) -> None:
        # One wrapped handler per method: intercept_service runs for every call.
        self._guarded: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler[_Req, _Resp] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler[_Req, _Resp] | None:
        """The method's handler, guarded (None for an unknown method: UNIMPLEMENTED)."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        known = self._guarded.get(method)
        if known is not None and known[0] is handler:
            guarded: _Handler[_Req, _Resp] = known[1]
            return guarded
        guarded = guard(handler, method)
        self._guarded[method] = (handler, guarded)
        return guarded
