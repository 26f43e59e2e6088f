"""Bearer-token authentication for every RPC (except the standard health service)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

import grpc

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

if TYPE_CHECKING:
    # grpc's handler types are generic only in its stubs; at run time (where pdoc reads
    # annotations) they cannot be subscripted.
    _Handler: TypeAlias = grpc.RpcMethodHandler[_Req, _Resp]
else:

    class _Handler(Generic[_Req, _Resp]):
        """Stands for ``grpc.RpcMethodHandler`` in annotations read at run time."""


# Load balancers and orchestrators probe health without credentials.
_OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuse calls whose ``authorization`` metadata is not ``Bearer <token>``.

    Args:
        token: the token every call must carry (not empty).
    """

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("the server token must not be empty")
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler[_Req, _Resp] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler[_Req, _Resp] | None:
        """The call's handler when its token matches (or it is a health check); else
        a handler that fails the call with UNAUTHENTICATED."""
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_OPEN_PREFIXES):
            return handler
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else bytes(value)
                if hmac.compare_digest(given, self._expected):
                    return handler
                return _deny(handler, "invalid token")
        return _deny(handler, "missing token: send metadata 'authorization: Bearer <token>'")


def _deny(handler: _Handler[_Req, _Resp], message: str) -> _Handler[_Req, _Resp]:
    """A handler of the same streaming kind that fails with UNAUTHENTICATED."""

    async def abort(_request: Any, context: grpc.aio.ServicerContext[_Req, _Resp]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    deserialize, serialize = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort, deserialize, serialize)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort, deserialize, serialize)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort, deserialize, serialize)
    return grpc.stream_stream_rpc_method_handler(abort, deserialize, serialize)
