"""Retention for the PostgreSQL store: its side of a prune (``_prune.PruneDB``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from ._ops import PER_RUN_TABLES
from ._payloads import DirectoryBlobs

if TYPE_CHECKING:
    from ._postgres import PostgresStore

Conn = psycopg.Connection[tuple[Any, ...]]
T = TypeVar("T")

#: Tables a prune deletes from (VACUUMed after, so their space is reused).
PRUNED_TABLES = (
    "flow_runs",
    "run_events",
    "task_runs",
    "task_run_states",
    "logs",
    "run_values",
    "payload_refs",
    "payloads",
    "payload_chunks",
    "cache_entries",
    "audit",
    *PER_RUN_TABLES,
)


class PostgresPruning:
    """The PostgreSQL side of a prune: fenced transactions of the store's pool, the
    payload directory, and a VACUUM at the end."""

    mark = "%s"
    lock_rows = " FOR UPDATE"

    def __init__(
        self,
        store: PostgresStore,
        pool: ConnectionPool[Conn],
        blobs: DirectoryBlobs | None,
    ) -> None:
        """``blobs``: the store's payload directory, if it was given one."""
        self._store = store
        self._pool = pool
        self.blobs = blobs

    def write(self, work: Callable[[Conn], T]) -> T:
        """``work(connection)`` in one transaction fenced by the server's epoch."""
        return self._store._write(work)

    def read(self, work: Callable[[Conn], T]) -> T:
        """``work(connection)`` on a pooled connection, reading only."""
        return self._store._reading(work)

    def give_back(self, deleted: bool) -> bool:
        """VACUUM what the prune deleted from, so new rows reuse the space (autovacuum
        would too, later), once. Best effort: a failure here loses nothing."""
        if deleted:
            with contextlib.suppress(psycopg.Error), self._pool.connection() as conn:
                conn.execute(f"VACUUM {', '.join(PRUNED_TABLES)}")
        return False

    def pause(self, step: float) -> float:
        """No pause between steps: other writers wait only for the rows a step locks."""
        return 0.0

    def reclaimed(self, deleted_bytes: int, file_bytes: int) -> int:
        """The bytes of the values and payloads deleted (PostgreSQL keeps its files'
        size; VACUUM makes the space reusable)."""
        return deleted_bytes
