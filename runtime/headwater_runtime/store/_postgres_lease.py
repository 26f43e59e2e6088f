"""The leader lease of servers sharing one PostgreSQL database.

One row (``leader_lease``) says who leads, at which epoch, until when. Times are the
database's own clock (``clock_timestamp()``), so the servers' clocks need not agree.

- **Take the lead** when the lease has expired: one UPDATE that bumps the epoch, so of
  two standbys trying at once exactly one wins.
- **Renew** (the leader, every fraction of the lease): only while the epoch is still
  its own; a failed renewal means another server took over.
- **Release** on a clean shutdown: the lease expires at once, and a standby takes over
  without waiting for it to run out.

The epoch taken is what the store fences every write with (``PostgresStore.epoch``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import psycopg

from ._postgres import PostgresStore

log = logging.getLogger("headwater.server")


@dataclass(frozen=True)
class LeaseState:
    """The lease as the database has it.

    Attributes:
        holder: the id of the server that holds (or last held) it ("" if none ever did).
        address: the ``HOST:PORT`` that server serves on (what standbys name).
        epoch: bumped by every takeover (0: nobody ever led).
        remaining: seconds until it expires (negative: expired).
    """

    holder: str
    address: str
    epoch: int
    remaining: float


class Lease:
    """One server's view of the lease.

    Args:
        store: the PostgreSQL store (its ``epoch`` is set when this server leads).
        holder: this server's id (unique per process).
        address: the ``HOST:PORT`` clients and workers reach this server at.
        duration: seconds a lease lasts without renewal.
    """

    def __init__(self, store: PostgresStore, holder: str, address: str, duration: float) -> None:
        if duration <= 0:
            raise ValueError(f"the lease must last more than 0 seconds, got {duration}")
        self.store = store
        self.holder = holder
        self.address = address
        self.duration = duration
        #: Set when this server stepped down: a renewal still waiting for a connection
        #: (the database was away) must not extend the lease once it gets one (it
        #: did, and kept this server's next start standing by for a lease period).
        self.given_up = False

    def read(self) -> LeaseState:
        """The lease as it is now."""
        with self.store.connection() as conn:
            # A released lease (and a new database's) expires at -infinity, which
            # PostgreSQL cannot subtract a time from: it reads as NULL, long expired.
            row = conn.execute(
                "SELECT holder, address, epoch, CASE WHEN isfinite(expires_at) "
                "THEN EXTRACT(EPOCH FROM expires_at - clock_timestamp())::float8 END "
                "FROM leader_lease WHERE id = 1"
            ).fetchone()
        if row is None:  # pragma: no cover - migration 2 inserts the row
            return LeaseState("", "", 0, -math.inf)
        remaining = -math.inf if row[3] is None else float(row[3])
        return LeaseState(str(row[0]), str(row[1]), int(row[2]), remaining)

    def acquire(self) -> int | None:
        """Take the lead if the lease has expired: the new epoch (also set as the
        store's fence), or None when another server holds it.

        The lease row is locked (shared) by every fenced write of the leader. A leader
        paused in the middle of one (SIGSTOP, a frozen VM, a stalled network) holds
        that lock until it resumes, and PostgreSQL's idle-in-transaction timeout does
        not end it when the pause came between two messages of one statement batch.
        So the UPDATE waits at most ``lock_wait`` seconds; if the lock is still held
        and the lease has run out, the sessions holding it are ended
        (``pg_terminate_backend``: their transactions roll back, nothing of them is
        stored) and the lead is taken at the next try."""
        with self.store.connection() as conn:
            try:
                with conn.transaction():
                    conn.execute(f"SET LOCAL lock_timeout = {self._lock_wait_ms()}")
                    row = conn.execute(
                        "UPDATE leader_lease SET holder = %s, address = %s, "
                        "epoch = epoch + 1, "
                        "expires_at = clock_timestamp() + make_interval(secs => %s) "
                        "WHERE id = 1 AND expires_at < clock_timestamp() RETURNING epoch",
                        (self.holder, self.address, self.duration),
                    ).fetchone()
            except psycopg.errors.LockNotAvailable:
                self._end_stalled_writers(conn)
                return None
        if row is None:
            return None
        self.store.epoch = int(row[0])
        return self.store.epoch

    def _lock_wait_ms(self) -> int:
        """How long a takeover waits for the lease row's lock (ms): a quarter of the
        lease, at most a second."""
        return max(1, int(min(1.0, self.duration / 4) * 1000))

    def _end_stalled_writers(self, conn: Any) -> None:
        """End the sessions that lock the lease row, if the lease has run out (see
        ``acquire``); a leader that renews in time is never touched."""
        try:
            ended = conn.execute(
                "SELECT pg_terminate_backend(l.pid) FROM pg_locks l "
                "WHERE l.relation = 'leader_lease'::regclass AND l.granted "
                "AND l.mode = 'RowShareLock' AND l.pid <> pg_backend_pid() "
                "AND (SELECT expires_at < clock_timestamp() FROM leader_lease WHERE id = 1)"
            ).fetchall()
        except psycopg.Error as exc:  # e.g. not allowed: wait for the leader instead
            log.warning("cannot end the stalled leader's sessions (%s)", exc)
            return
        if ended:
            log.warning(
                "the lease ran out while its holder kept a write open (paused?): "
                "ended %d of its database sessions to take over",
                len(ended),
            )

    def renew(self) -> bool:
        """Extend the lease this server holds; False when another server took over
        (its epoch is no longer ours)."""
        epoch = self.store.epoch
        if epoch is None or self.given_up:
            return False
        # Within the lease period: a pool waiting 30 s for a connection to a database
        # that is gone kept the leader believing it led for three lease periods.
        with self.store.connection(timeout=self.duration / 2) as conn:
            if self.given_up:  # (stepped down while it waited for the connection)
                return False
            row = conn.execute(
                "UPDATE leader_lease SET expires_at = clock_timestamp() + "
                "make_interval(secs => %s) WHERE id = 1 AND epoch = %s RETURNING epoch",
                (self.duration, epoch),
            ).fetchone()
        return row is not None

    def release(self) -> None:
        """Give the lease up (a clean shutdown): standbys may take over at once."""
        epoch = self.store.epoch
        if epoch is None:
            return
        with self.store.connection() as conn:
            conn.execute(
                "UPDATE leader_lease SET expires_at = '-infinity' WHERE id = 1 AND epoch = %s",
                (epoch,),
            )
