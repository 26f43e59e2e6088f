"""Authentication and authorization of every RPC: who calls (``AccessControl``) and
whether their role may (``REQUIRED_ROLES``).

The interceptor wraps each call's handler: the wrapper reads the call's metadata and
its TLS peer (a client certificate's subject), refuses it with ``UNAUTHENTICATED`` (no,
an unknown or a revoked credential) or ``PERMISSION_DENIED`` (a role that may not make
this call), and otherwise serves it with ``CALLER`` set to the credential, so that
servicers can record who did what and limit what a worker reads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeAlias, TypeVar

import grpc

from ._access import CALLER, AccessControl, Caller, Refused, Unknown
from ._roles import REQUIRED_ROLES, allows, describe

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

if TYPE_CHECKING:
    # grpc's handler types are generic only in its stubs; at run time (where pdoc reads
    # annotations) they cannot be subscripted.
    _Handler: TypeAlias = grpc.RpcMethodHandler[_Req, _Resp]
else:

    class _Handler(Generic[_Req, _Resp]):
        """Stands for ``grpc.RpcMethodHandler`` in annotations read at run time."""


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Check every call's credential and role (open methods and an open server pass).

    Args:
        access: the server's credentials.
    """

    def __init__(self, access: AccessControl) -> None:
        self.access = access

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler[_Req, _Resp] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler[_Req, _Resp] | None:
        """The call's handler, wrapped to check its caller first."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        needed = REQUIRED_ROLES.get(method)
        if handler is None or needed == ():
            return handler
        if not self.access.enabled:
            return handler
        access = self.access
        metadata = handler_call_details.invocation_metadata
        short = method.rsplit(".", 1)[-1]

        async def check(context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
            try:
                try:
                    caller = access.authenticate(metadata, context.auth_context())
                except Unknown:  # another process may just have made it
                    await access.refresh()
                    caller = access.authenticate(metadata, context.auth_context())
            except Refused as exc:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
                raise AssertionError("unreachable") from None
            if needed is None or not allows(caller.role, needed):
                roles = describe(needed) if needed is not None else "a role nobody has"
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"credential {caller.name!r} (role {caller.role.value}) may not call "
                    f"{short}: it needs one of the roles {roles}",
                )
            CALLER.set(caller)
            return caller

        return _wrap(handler, check)


class TokenAuthInterceptor(AuthInterceptor):
    """Require one admin token on every call (a server's ``--token`` alone; for
    servers assembled by hand, as tests do).

    Args:
        token: the token every call must carry (not empty).
    """

    def __init__(self, token: str) -> None:
        super().__init__(AccessControl(admin_token=token))


def _wrap(
    handler: _Handler[_Req, _Resp],
    check: Callable[[grpc.aio.ServicerContext[Any, Any]], Awaitable[Caller]],
) -> _Handler[_Req, _Resp]:
    """A handler of the same streaming kind that runs ``check`` before the real one."""
    deserialize, serialize = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary:
        inner_uu: Any = handler.unary_unary

        async def unary_unary(request: Any, context: Any) -> Any:
            await check(context)
            return await inner_uu(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserialize, serialize)
    if handler.stream_unary:
        inner_su: Any = handler.stream_unary

        async def stream_unary(requests: Any, context: Any) -> Any:
            await check(context)
            return await inner_su(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, deserialize, serialize)
    inner: Any = handler.unary_stream or handler.stream_stream

    async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
        await check(context)
        async for response in inner(request, context):
            yield response

    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, deserialize, serialize)
    return grpc.stream_stream_rpc_method_handler(streaming, deserialize, serialize)
