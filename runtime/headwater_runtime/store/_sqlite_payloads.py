"""Chunked payload uploads into SQLite (see ``SQLiteStore.begin_payload``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import uuid

from headwater.wire import CHUNK_SIZE

from ._base import PayloadMeta, StoreUnavailable
from ._sqlite_schema import _transaction


class PayloadWriter:
    """One payload upload in progress (see SQLiteStore.begin_payload). All its calls
    must come from the thread that began it (the server's writer thread).

    Args:
        db: the connection of the thread that began it.
        metadata: the payload's metadata (``encoding`` included).
        size: the declared size in bytes.
        sha256: the declared SHA-256 ("" when not given).
        now: when the upload began (seconds since the epoch).
    """

    def __init__(
        self, db: sqlite3.Connection, metadata: dict[str, str], size: int, sha256: str, now: float
    ) -> None:
        self._db = db
        self.id = uuid.uuid4().hex
        self.metadata = dict(metadata)
        self.size = size
        self.expected_sha256 = sha256
        self.created_at = now
        self._digest = hashlib.sha256()
        self._buffer = bytearray()
        self._index = 0
        self.received = 0
        self._done = False

    def write(self, chunk: bytes) -> None:
        """Append bytes; ValueError once they exceed the declared size."""
        if self._done:
            raise ValueError("payload upload already finished")
        self.received += len(chunk)
        if self.received > self.size:
            raise ValueError(f"payload is larger than its declared size of {self.size} bytes")
        self._digest.update(chunk)
        self._buffer += chunk
        while len(self._buffer) >= CHUNK_SIZE:
            self._store(bytes(self._buffer[:CHUNK_SIZE]))
            del self._buffer[:CHUNK_SIZE]

    def _store(self, data: bytes) -> None:
        index = self._index

        def insert() -> None:
            self._db.execute("INSERT INTO payload_chunks VALUES (?, ?, ?)", (self.id, index, data))

        _transaction(self._db, insert)
        self._index += 1

    def finish(self) -> PayloadMeta:
        """Check size and hash, then make the payload visible."""
        if self.received != self.size:
            raise ValueError(f"payload has {self.received} bytes but declared {self.size}")
        actual = self._digest.hexdigest()
        if self.expected_sha256 and self.expected_sha256 != actual:
            raise ValueError("payload bytes do not match the declared sha256")
        if self._buffer:
            self._store(bytes(self._buffer))
            self._buffer.clear()

        def publish() -> None:
            self._db.execute(
                "INSERT INTO payloads VALUES (?, ?, ?, ?, ?)",
                (
                    self.id,
                    self.size,
                    json.dumps(self.metadata, sort_keys=True),
                    actual,
                    self.created_at,
                ),
            )

        _transaction(self._db, publish)
        self._done = True
        return PayloadMeta(self.id, self.size, self.metadata, actual)

    def abort(self) -> None:
        """Forget the chunks stored so far."""
        if not self._done:
            self._done = True
            with contextlib.suppress(sqlite3.Error, StoreUnavailable):
                _transaction(
                    self._db,
                    lambda: self._db.execute("DELETE FROM payload_chunks WHERE id=?", (self.id,)),
                )
