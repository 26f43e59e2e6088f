"""AccessService: named credentials over the API (admin only), and their messages."""

from __future__ import annotations

import grpc

from headwater.v1 import access_pb2, access_pb2_grpc
from headwater.wire import timestamp
from headwater_runtime.store import Conflict, CredentialRow, NotFound

from ._access import CALLER, AccessControl, new_credential
from ._core import ServerCore
from ._details import detail
from ._io import to_its_end


def credential_message(row: CredentialRow) -> access_pb2.Credential:
    """A stored credential as the API shows it (never its hash)."""
    message = access_pb2.Credential(
        name=row.name, role=row.role, subject=row.subject, created_by=row.created_by
    )
    message.created_at.CopyFrom(timestamp(row.created_at))
    if row.revoked_at is not None:
        message.revoked_at.CopyFrom(timestamp(row.revoked_at))
    return message


class AccessServicer(access_pb2_grpc.AccessServiceServicer):
    """AccessService over the store; changes apply to the running server at once.

    Args:
        core: the server's state (store, threads, clock, audit).
        access: the server's credentials in memory.
    """

    def __init__(self, core: ServerCore, access: AccessControl) -> None:
        self.core = core
        self.access = access

    async def CreateCredential(
        self,
        request: access_pb2.CreateCredentialRequest,
        context: grpc.aio.ServicerContext[
            access_pb2.CreateCredentialRequest, access_pb2.CreateCredentialResponse
        ],
    ) -> access_pb2.CreateCredentialResponse:
        """Store a credential and return its token, once."""
        try:
            row, token = new_credential(
                request.name,
                request.role,
                subject=request.subject,
                created_by=CALLER.get().name,
                now=self.core.clock.now(),
            )
            await to_its_end(self._create(row), "storing a new credential")
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, detail(str(exc)))
        except Conflict as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, detail(str(exc)))
        return access_pb2.CreateCredentialResponse(credential=credential_message(row), token=token)

    async def ListCredentials(
        self,
        request: access_pb2.ListCredentialsRequest,
        context: grpc.aio.ServicerContext[
            access_pb2.ListCredentialsRequest, access_pb2.ListCredentialsResponse
        ],
    ) -> access_pb2.ListCredentialsResponse:
        """Credentials, oldest first."""
        rows = await self.core.io.read(self.core.store.list_credentials, request.include_revoked)
        return access_pb2.ListCredentialsResponse(credentials=[credential_message(r) for r in rows])

    async def RevokeCredential(
        self,
        request: access_pb2.RevokeCredentialRequest,
        context: grpc.aio.ServicerContext[
            access_pb2.RevokeCredentialRequest, access_pb2.RevokeCredentialResponse
        ],
    ) -> access_pb2.RevokeCredentialResponse:
        """Revoke a credential: calls with it fail from now on."""
        try:
            row = await to_its_end(self._revoke(request.name), "revoking a credential")
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, detail(str(exc)))
        return access_pb2.RevokeCredentialResponse(credential=credential_message(row))

    # A change is stored, applied and audited to its end even when its caller goes
    # away meanwhile (a revoked credential must not stay valid until a restart).

    async def _create(self, row: CredentialRow) -> None:
        await self.core.io.write(self.core.store.add_credential, row)
        await self.access.reload()
        await self.core.audit("credential.create", "credential", row.name, row.role)

    async def _revoke(self, name: str) -> CredentialRow:
        row = await self.core.io.write(
            self.core.store.revoke_credential, name, self.core.clock.now()
        )
        await self.access.reload()
        await self.core.audit("credential.revoke", "credential", row.name, row.role)
        return row
