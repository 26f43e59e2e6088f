"""PostgreSQL tables for credentials and the audit log (a mixin of PostgresStore).

The same behaviour as ``_sqlite_access``: every credential change increments
``credentials_generation`` in the same transaction, so every server sharing the
database (and one running while ``headwater tokens --db`` changes a credential) sees
the change within its poll interval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg

from ._base import AuditRow, Conflict, CredentialRow, NotFound

T = TypeVar("T")
Conn = psycopg.Connection[tuple[Any, ...]]

_CRED_COLS = "name, role, secret_hash, subject, created_at, created_by, revoked_at"
_AUDIT_COLS = "at, actor, action, object_kind, object_id, detail"


def _credential(row: Sequence[Any]) -> CredentialRow:
    name, role, secret_hash, subject, created_at, created_by, revoked_at = row
    return CredentialRow(
        name=str(name),
        role=str(role),
        secret_hash=str(secret_hash),
        subject=str(subject),
        created_at=float(created_at),
        created_by=str(created_by),
        revoked_at=None if revoked_at is None else float(revoked_at),
    )


def _bump(conn: Conn) -> None:
    conn.execute("UPDATE credentials_generation SET generation = generation + 1 WHERE id = 1")


def insert_audit(conn: Conn, row: AuditRow) -> None:
    """Insert an audit entry (inside the caller's transaction)."""
    conn.execute(
        f"INSERT INTO audit ({_AUDIT_COLS}) VALUES (%s, %s, %s, %s, %s, %s)",
        (row.at, row.actor, row.action, row.object_kind, row.object_id, row.detail),
    )


class PostgresAccessTables:
    """Credentials and audit entries (see the Store protocol for each method)."""

    # Provided by PostgresStore.
    def _write(
        self, work: Callable[[Conn], T], *, pipeline: bool = False, fenced: bool = True
    ) -> T:
        raise NotImplementedError

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def add_credential(self, row: CredentialRow) -> None:
        """Store a new credential; Conflict when a valid one has its name or subject."""

        def work(conn: Conn) -> None:
            # One credential change at a time: the check below, then the insert.
            conn.execute("SELECT 1 FROM credentials_generation WHERE id = 1 FOR UPDATE")
            taken = conn.execute(
                "SELECT name FROM credentials WHERE revoked_at IS NULL AND "
                "(name=%s OR (subject <> '' AND subject=%s))",
                (row.name, row.subject),
            ).fetchone()
            if taken is not None:
                what = (
                    f"is already called {row.name!r}"
                    if taken[0] == row.name
                    else f"({taken[0]!r}) already has the subject {row.subject!r}"
                )
                raise Conflict(f"a valid credential {what}: revoke it first, or choose another")
            conn.execute(
                f"INSERT INTO credentials ({_CRED_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (
                    row.name,
                    row.role,
                    row.secret_hash,
                    row.subject,
                    row.created_at,
                    row.created_by,
                    row.revoked_at,
                ),
            )
            _bump(conn)

        self._write(work)

    def list_credentials(self, include_revoked: bool = False) -> list[CredentialRow]:
        """Credentials, oldest first (only valid ones unless ``include_revoked``)."""
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        rows = self._read(f"SELECT {_CRED_COLS} FROM credentials{where} ORDER BY id")
        return [_credential(r) for r in rows]

    def revoke_credential(self, name: str, now: float) -> CredentialRow:
        """Revoke the valid credential ``name``; NotFound when there is none."""

        def work(conn: Conn) -> CredentialRow:
            found = conn.execute(
                f"UPDATE credentials SET revoked_at=%s WHERE name=%s AND revoked_at IS NULL "
                f"RETURNING {_CRED_COLS}",
                (now, name),
            ).fetchone()
            if found is None:
                raise NotFound(f"no valid credential is called {name!r}")
            _bump(conn)
            return dataclasses.replace(_credential(found), revoked_at=now)

        return self._write(work)

    def credentials_generation(self) -> int:
        """Grows with every credential change (polled by a running server)."""
        rows = self._read("SELECT generation FROM credentials_generation WHERE id = 1")
        return int(rows[0][0]) if rows else 0

    def add_audit(self, row: AuditRow) -> None:
        """Record who did what."""
        self._write(lambda conn: insert_audit(conn, row))

    def audit_entries(
        self, object_kind: str = "", object_id: str = "", limit: int = 100
    ) -> list[AuditRow]:
        """Audit entries, newest first, optionally about one kind or object."""
        where: list[str] = []
        args: list[object] = []
        if object_kind:
            where.append("object_kind=%s")
            args.append(object_kind)
        if object_id:
            where.append("object_id=%s")
            args.append(object_id)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self._read(
            f"SELECT {_AUDIT_COLS} FROM audit{clause} ORDER BY id DESC LIMIT %s",
            (*args, limit),
        )
        return [
            AuditRow(float(a), str(b), str(c), str(d), str(e), str(f)) for a, b, c, d, e, f in rows
        ]
