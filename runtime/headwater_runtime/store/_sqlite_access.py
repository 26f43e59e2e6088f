"""SQLite tables for credentials and the audit log (a mixin of SQLiteStore).

Credentials are looked up by a server in memory (``headwater_runtime.server``); these
methods are its durable side and what ``headwater tokens --db`` uses offline. Every
change bumps ``meta.credentials_generation`` in the same transaction, so a running
server sees a credential revoked by another process within a second.
"""

from __future__ import annotations

import dataclasses
import sqlite3

from ._base import AuditRow, Conflict, CredentialRow, NotFound
from ._sqlite_schema import _transaction

_CRED_COLS = "name, role, secret_hash, subject, created_at, created_by, revoked_at"
_GENERATION = "credentials_generation"


def _credential(row: tuple[object, ...]) -> CredentialRow:
    name, role, secret_hash, subject, created_at, created_by, revoked_at = row
    return CredentialRow(
        name=str(name),
        role=str(role),
        secret_hash=str(secret_hash),
        subject=str(subject),
        created_at=float(created_at),  # type: ignore[arg-type]
        created_by=str(created_by),
        revoked_at=None if revoked_at is None else float(revoked_at),  # type: ignore[arg-type]
    )


def _bump(db: sqlite3.Connection) -> None:
    db.execute(
        "INSERT INTO meta VALUES (?, '1') ON CONFLICT(key) DO UPDATE "
        "SET value = CAST(value AS INTEGER) + 1",
        (_GENERATION,),
    )


def insert_audit(db: sqlite3.Connection, row: AuditRow) -> None:
    """Insert an audit entry (inside the caller's transaction)."""
    db.execute(
        "INSERT INTO audit (at, actor, action, object_kind, object_id, detail) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (row.at, row.actor, row.action, row.object_kind, row.object_id, row.detail),
    )


class AccessTables:
    """Credentials and audit entries (see the Store protocol for each method)."""

    @property
    def _db(self) -> sqlite3.Connection:  # provided by SQLiteStore
        raise NotImplementedError

    def add_credential(self, row: CredentialRow) -> None:
        """Store a new credential; Conflict when a valid one has its name or subject."""
        db = self._db

        def work() -> None:
            taken = db.execute(
                "SELECT name FROM credentials WHERE revoked_at IS NULL AND "
                "(name=? OR (subject != '' AND subject=?))",
                (row.name, row.subject),
            ).fetchone()
            if taken is not None:
                what = (
                    f"is already called {row.name!r}"
                    if taken[0] == row.name
                    else f"({taken[0]!r}) already has the subject {row.subject!r}"
                )
                raise Conflict(f"a valid credential {what}: revoke it first, or choose another")
            db.execute(
                f"INSERT INTO credentials ({_CRED_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
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
            _bump(db)

        _transaction(db, work)

    def list_credentials(self, include_revoked: bool = False) -> list[CredentialRow]:
        """Credentials, oldest first (only valid ones unless ``include_revoked``)."""
        where = "" if include_revoked else " WHERE revoked_at IS NULL"
        rows = self._db.execute(f"SELECT {_CRED_COLS} FROM credentials{where} ORDER BY id")
        return [_credential(r) for r in rows]

    def revoke_credential(self, name: str, now: float) -> CredentialRow:
        """Revoke the valid credential ``name``; NotFound when there is none."""
        db = self._db

        def work() -> CredentialRow:
            found = db.execute(
                f"SELECT id, {_CRED_COLS} FROM credentials WHERE name=? AND revoked_at IS NULL",
                (name,),
            ).fetchone()
            if found is None:
                raise NotFound(f"no valid credential is called {name!r}")
            db.execute("UPDATE credentials SET revoked_at=? WHERE id=?", (now, found[0]))
            _bump(db)
            return dataclasses.replace(_credential(found[1:]), revoked_at=now)

        return _transaction(db, work)

    def credentials_generation(self) -> int:
        """Grows with every credential change (polled by a running server)."""
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (_GENERATION,)).fetchone()
        return 0 if row is None else int(row[0])

    def add_audit(self, row: AuditRow) -> None:
        """Record who did what."""
        db = self._db
        _transaction(db, lambda: insert_audit(db, row))

    def audit_entries(
        self, object_kind: str = "", object_id: str = "", limit: int = 100
    ) -> list[AuditRow]:
        """Audit entries, newest first, optionally about one kind or object."""
        where: list[str] = []
        args: list[object] = []
        if object_kind:
            where.append("object_kind=?")
            args.append(object_kind)
        if object_id:
            where.append("object_id=?")
            args.append(object_id)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self._db.execute(
            "SELECT at, actor, action, object_kind, object_id, detail FROM audit"
            f"{clause} ORDER BY id DESC LIMIT ?",
            (*args, limit),
        )
        return [AuditRow(*r) for r in rows]
