"""WAL checkpoints on a thread of their own, for the server that claimed the database.

SQLite copies the write-ahead log back into the database file (a *checkpoint*) inside
the commit that makes the log pass 1,000 pages. That commit then takes several ms
instead of a fraction of one (measured: 6 % of a busy server's commits, two thirds of
its commit time), and while it runs nothing the commit covers leaves the server:
workers wait for their next assignments, clients for their answers. So the server's
connections do not checkpoint (``wal_autocheckpoint=0``); this thread does, with a
connection of its own, a PASSIVE checkpoint (it never blocks the writer or readers)
at most every ``INTERVAL`` seconds and only when something was committed since the
last one (``PRAGMA data_version`` changes when another connection commits).

A checkpoint that fails (a full disk: the database file cannot grow) is tried again
at the next interval; meanwhile the log grows, as it would with SQLite's own
checkpoints failing, and commits go on or fail on their own.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger("headwater.store")

#: Seconds between checkpoints while commits go on (the log grows by a few MB at most
#: in that time under full load: about what SQLite's own 1,000-page threshold lets it).
INTERVAL = 0.1


class Checkpointer:
    """Checkpoints ``path``'s WAL on a daemon thread until ``stop()``.

    Args:
        path: the database file.
        interval: seconds between checks (default ``INTERVAL``).
    """

    def __init__(self, path: str, interval: float | None = None) -> None:
        self.path = path
        self.interval = INTERVAL if interval is None else interval
        self.checkpoints = 0  # PASSIVE checkpoints run (tests, metrics)
        self._stop = threading.Event()
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._seen = self._version()  # the first checkpoint waits for a commit
        self._thread = threading.Thread(
            target=self._run, name="headwater-store-checkpoint", daemon=True
        )
        self._thread.start()

    def _version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval):
            try:
                version = self._version()
                if version == self._seen:
                    continue  # nothing committed since the last checkpoint
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                self._seen = version
                self.checkpoints += 1
                if failing:
                    log.warning("the database's write-ahead log is checkpointed again")
                failing = False
            except sqlite3.Error as exc:
                if not failing:
                    log.warning(
                        "could not checkpoint the database's write-ahead log (%s); it keeps "
                        "growing until a checkpoint succeeds (tried again every %gs)",
                        exc,
                        self.interval,
                    )
                failing = True

    def stop(self) -> None:
        """End the thread (after the checkpoint under way, if any) and its connection."""
        self._stop.set()
        self._thread.join()
        self._db.close()
