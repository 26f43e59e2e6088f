"""What the client shows of credentials and the audit log (plain dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from headwater.v1 import access_pb2
from headwater.v1 import control_plane_pb2 as cp
from headwater.wire import to_datetime


@dataclass(frozen=True)
class CredentialInfo:
    """A named credential on a server (its secret is never shown again)."""

    name: str
    role: str
    #: The client certificate subject that stands in for a token ("" for a token).
    subject: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class AuditEntry:
    """Who (a credential name) did what to which object, and when."""

    at: datetime
    actor: str
    action: str
    object_kind: str
    object_id: str
    detail: str = ""


def credential_info(msg: access_pb2.Credential) -> CredentialInfo:
    """A Credential message as a CredentialInfo."""
    return CredentialInfo(
        name=msg.name,
        role=msg.role,
        subject=msg.subject,
        created_at=to_datetime(msg.created_at),
        created_by=msg.created_by,
        revoked_at=to_datetime(msg.revoked_at) if msg.HasField("revoked_at") else None,
    )


def audit_entry(msg: cp.AuditEntry) -> AuditEntry:
    """An AuditEntry message as an AuditEntry."""
    return AuditEntry(
        at=to_datetime(msg.at),
        actor=msg.actor,
        action=msg.action,
        object_kind=msg.object_kind,
        object_id=msg.object_id,
        detail=msg.detail,
    )
