"""Payload chunks kept in SQLite (``payload_chunks``), for ``SQLiteStore.begin_payload``."""

from __future__ import annotations

import json
import sqlite3

from ._base import PayloadMeta
from ._sqlite_schema import _transaction


class SQLiteChunks:
    """The chunks of one upload as ``payload_chunks`` rows, each chunk its own small
    transaction (a long upload never holds the write lock commits need). All calls
    come from the thread that began the upload (the server's writer thread).

    Args:
        db: the connection of the thread that began the upload.
        payload_id: the payload's id.
    """

    def __init__(self, db: sqlite3.Connection, payload_id: str) -> None:
        self._db = db
        self._id = payload_id

    def put(self, index: int, data: bytes) -> None:
        """Store one chunk."""
        _transaction(
            self._db,
            lambda: self._db.execute(
                "INSERT INTO payload_chunks VALUES (?, ?, ?)", (self._id, index, data)
            ),
        )

    def done(self) -> None:
        """Nothing to do: every chunk was committed as it came."""

    def discard(self) -> None:
        """Delete the chunks stored so far."""
        _transaction(
            self._db,
            lambda: self._db.execute("DELETE FROM payload_chunks WHERE id=?", (self._id,)),
        )


def publish_payload(db: sqlite3.Connection, meta: PayloadMeta, created_at: float) -> None:
    """Store a finished payload's row: from now on it can be read."""
    _transaction(
        db,
        lambda: db.execute(
            "INSERT INTO payloads (id, size, metadata, sha256, created_at, uploader) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                meta.id,
                meta.size,
                json.dumps(meta.metadata, sort_keys=True),
                meta.sha256,
                created_at,
                meta.uploader,
            ),
        ),
    )
