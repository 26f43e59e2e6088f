"""Payload bytes behind a small interface: where the chunks live.

A payload's description (size, metadata, SHA-256, when it was made) is a row of the
store's ``payloads`` table either way; its bytes are CHUNK_SIZE chunks kept by a
``Blobs``: the database itself (the default: ``payload_chunks`` rows), or a directory
(``--payload-dir``, e.g. a mount every server sees), one file per payload. Bytes are
written chunk by chunk as they arrive and read one chunk at a time: a payload is
never held whole in memory.

A payload whose file exists in the directory is read from it, any other from the
database, so a store can start or stop using a directory with payloads of both
kinds already stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

from headwater.wire import CHUNK_SIZE

from ._base import PayloadMeta, StoreUnavailable


class ChunkSink(Protocol):
    """Where one upload's chunks go, in order (index 0, 1, ...)."""

    def put(self, index: int, data: bytes) -> None:
        """Store chunk ``index`` (CHUNK_SIZE bytes; the last may be shorter)."""
        ...

    def done(self) -> None:
        """Every chunk is written: make them durable (before the payload row exists)."""
        ...

    def discard(self) -> None:
        """Forget what was written (the upload failed or was aborted)."""
        ...


class PayloadWriter:
    """One payload upload in progress: checks the declared size and SHA-256, cuts the
    bytes into CHUNK_SIZE chunks for a ``ChunkSink``, then publishes the payload's row.
    All its calls come from one thread (the server's writer thread).

    Args:
        sink_for: makes the sink of a payload id.
        publish: stores the finished payload's row (in a transaction of its own).
        metadata: the payload's metadata (``encoding`` included).
        size: the declared size in bytes.
        sha256: the declared SHA-256 ("" when not given).
        now: when the upload began (seconds since the epoch).
        uploader: the credential that sends it ("": the server itself).
    """

    def __init__(
        self,
        sink_for: Callable[[str], ChunkSink],
        publish: Callable[[PayloadMeta, float], None],
        metadata: dict[str, str],
        size: int,
        sha256: str,
        now: float,
        uploader: str = "",
    ) -> None:
        self.id = uuid.uuid4().hex
        self.uploader = uploader
        self._sink = sink_for(self.id)
        self._publish = publish
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
        self._sink.put(self._index, data)
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
        self._sink.done()
        meta = PayloadMeta(self.id, self.size, self.metadata, actual, self.uploader)
        self._publish(meta, self.created_at)
        self._done = True
        return meta

    def abort(self) -> None:
        """Forget the chunks stored so far."""
        if not self._done:
            self._done = True
            with contextlib.suppress(Exception):
                self._sink.discard()


def write_all(writer: PayloadWriter, chunks: Iterator[bytes]) -> PayloadMeta:
    """A whole payload through ``writer`` (``Store.put_payload``): its chunks, then its
    row; what was stored of it is forgotten if anything fails."""
    try:
        for chunk in chunks:
            writer.write(chunk)
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


class DirectoryBlobs:
    """Payload bytes as files in a directory (``--payload-dir``).

    A finished payload is ``DIR/ab/abcdef...`` (its id, under its first two
    characters); an upload in progress is ``DIR/.uploads/ID``, written chunk by chunk,
    fsynced and renamed into place before the payload's row is stored, so a row
    never points at a partial file. Uploads a crash cut short are removed by
    ``sweep`` (stores call it when they start, or when they take the lead).

    Args:
        root: the directory (created if missing).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.uploads = self.root / ".uploads"
        try:
            self.uploads.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RuntimeError(f"cannot use the payload directory {self.root}: {exc}") from exc

    def path(self, payload_id: str) -> Path:
        """Where a finished payload's bytes are."""
        return self.root / payload_id[:2] / payload_id

    def sink(self, payload_id: str) -> ChunkSink:
        """A sink writing ``payload_id``'s chunks to its upload file."""
        return _FileSink(self, payload_id)

    def holds(self, payload_id: str) -> bool:
        """Whether this directory has the payload's bytes."""
        return self.path(payload_id).exists()

    def read_chunk(self, payload_id: str, index: int) -> bytes | None:
        """Chunk ``index`` of a payload (b"" past the end), or None when the
        directory does not have the payload."""
        try:
            with open(self.path(payload_id), "rb") as f:
                f.seek(index * CHUNK_SIZE)
                return f.read(CHUNK_SIZE)
        except FileNotFoundError:
            return None

    def size_of(self, payload_ids: Sequence[str]) -> int:
        """Bytes on disk of these payloads (those the directory has)."""
        total = 0
        for payload_id in payload_ids:
            with contextlib.suppress(FileNotFoundError):
                total += self.path(payload_id).stat().st_size
        return total

    def delete(self, payload_ids: Sequence[str]) -> None:
        """Remove payloads' files (after their rows are gone; missing ones are fine)."""
        for payload_id in payload_ids:
            with contextlib.suppress(FileNotFoundError):
                self.path(payload_id).unlink()

    def sweep(self, older_than: float = 0.0) -> int:
        """Remove upload files not written to for ``older_than`` seconds (all with 0):
        uploads a crash cut short. How many were removed."""
        removed = 0
        limit = time.time() - older_than
        for entry in self.uploads.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if older_than <= 0 or entry.stat().st_mtime < limit:
                    entry.unlink()
                    removed += 1
        return removed


class _FileSink:
    def __init__(self, blobs: DirectoryBlobs, payload_id: str) -> None:
        self._blobs = blobs
        self._id = payload_id
        self._temp = blobs.uploads / payload_id
        self._file: BinaryIO | None = None
        self._next = 0

    def put(self, index: int, data: bytes) -> None:
        if index != self._next:
            raise ValueError(f"chunk {index} of payload {self._id} out of order")
        try:
            if self._file is None:
                self._file = open(self._temp, "wb")  # noqa: SIM115 (closed in done/discard)
            self._file.write(data)
        except OSError as exc:
            self.discard()
            raise _unavailable(self._blobs.root, exc) from exc
        self._next += 1

    def done(self) -> None:
        final = self._blobs.path(self._id)
        try:
            if self._file is None:  # an empty payload
                self._file = open(self._temp, "wb")  # noqa: SIM115
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            final.parent.mkdir(exist_ok=True)
            os.replace(self._temp, final)
            _fsync_dir(final.parent)
        except OSError as exc:
            self.discard()
            raise _unavailable(self._blobs.root, exc) from exc

    def discard(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self._temp.unlink()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unavailable(root: Path, exc: OSError) -> StoreUnavailable:
    import errno

    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return StoreUnavailable(f"cannot write to the payload directory {root}: {exc}", full=full)
