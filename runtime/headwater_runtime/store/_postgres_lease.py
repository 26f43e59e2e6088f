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

import math
from dataclasses import dataclass

from ._postgres import PostgresStore


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

    def read(self) -> LeaseState:
        """The lease as it is now."""
        with self.store.connection() as conn:
            row = conn.execute(
                "SELECT holder, address, epoch, "
                "EXTRACT(EPOCH FROM expires_at - clock_timestamp())::float8 "
                "FROM leader_lease WHERE id = 1"
            ).fetchone()
        if row is None:  # pragma: no cover - migration 2 inserts the row
            return LeaseState("", "", 0, -math.inf)
        return LeaseState(str(row[0]), str(row[1]), int(row[2]), float(row[3]))

    def acquire(self) -> int | None:
        """Take the lead if the lease has expired: the new epoch (also set as the
        store's fence), or None when another server holds it."""
        with self.store.connection() as conn:
            row = conn.execute(
                "UPDATE leader_lease SET holder = %s, address = %s, epoch = epoch + 1, "
                "expires_at = clock_timestamp() + make_interval(secs => %s) "
                "WHERE id = 1 AND expires_at < clock_timestamp() RETURNING epoch",
                (self.holder, self.address, self.duration),
            ).fetchone()
        if row is None:
            return None
        self.store.epoch = int(row[0])
        return self.store.epoch

    def renew(self) -> bool:
        """Extend the lease this server holds; False when another server took over
        (its epoch is no longer ours)."""
        epoch = self.store.epoch
        if epoch is None:
            return False
        with self.store.connection() as conn:
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
