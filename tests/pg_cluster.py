"""A throwaway PostgreSQL server for tests and benchmarks: Debian's ``postgresql``
package (``initdb`` + ``pg_ctl``) in a temporary directory, on a free port.

``initdb`` refuses to run as root, so as root (CI) the cluster is created and run by
the package's ``postgres`` user (``runuser -u postgres --``) in a directory it owns.
``make setup`` installs the package with apt-get when it is missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: The stores the server and end-to-end tests run against: both, unless
#: HEADWATER_TEST_STORES names fewer (``make test-oldest`` runs SQLite only: the
#: ``postgres`` extra is not installed in that venv).
STORES = [s for s in os.environ.get("HEADWATER_TEST_STORES", "sqlite,postgres").split(",") if s]


class PostgresMissing(RuntimeError):
    """Debian's ``postgresql`` package (initdb, pg_ctl) is not installed."""


def _binaries() -> Path:
    """The directory holding initdb and pg_ctl (newest major version first)."""
    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(found, "initdb").exists() and Path(found, "pg_ctl").exists():
            return Path(found)
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl") is not None:
        return Path(initdb).resolve().parent
    raise PostgresMissing(
        "PostgreSQL is not installed (no initdb/pg_ctl): apt-get install postgresql "
        "(make setup does this)"
    )


def available() -> bool:
    """Whether initdb and pg_ctl are installed."""
    try:
        _binaries()
    except PostgresMissing:
        return False
    return True


def _free_port() -> int:
    # initdb/pg_ctl need a port number up front (postgres cannot report one it picked).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TempPostgres:
    """A PostgreSQL server in a temporary directory; ``stop()`` removes it all.

    Args:
        durable: keep PostgreSQL's defaults (fsync on); False turns fsync and
            synchronous_commit off, which is what tests want (the process, not the
            machine, is what they kill).
    """

    def __init__(self, *, durable: bool = False) -> None:
        self.bin = _binaries()
        self.root = Path(tempfile.mkdtemp(prefix="headwater-pg-"))
        self.data = self.root / "data"
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres")
            os.chmod(self.root, 0o700)
        self._run(
            "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
            "--no-sync",
        )  # fmt: skip
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.root}",
            "-c max_connections=200",
        ]
        if not durable:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        # The port is probed free just before the start (not before initdb, seconds
        # earlier), and a start that finds it taken meanwhile (by any process on the
        # machine binding port 0) tries another one.
        log = self.root / "log"
        for tries_left in reversed(range(5)):
            self.port = _free_port()
            before = log.stat().st_size if log.exists() else 0
            try:
                self._run(
                    "pg_ctl", "-D", str(self.data), "-l", str(log), "-w", "-t", "60",
                    "-o", " ".join([f"-p {self.port}", *options]), "start",
                )  # fmt: skip
                break
            except RuntimeError:
                taken = False
                if log.exists():
                    with log.open("rb") as said:
                        said.seek(before)
                        taken = b"Address already in use" in said.read()
                if not taken or not tries_left:
                    raise
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bin / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            log = self.root / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}{tail}")

    def database(self, name: str | None = None) -> str:
        """A new, empty database; its URL."""
        return create_database(self.url, name)

    def schema_url(self, name: str | None = None) -> str:
        """A URL whose tables live in a new, empty schema of the ``postgres`` database
        (much cheaper than a database per test; leases are per schema too)."""
        import psycopg

        name = name or f"hw_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return f"{self.url}?options=-csearch_path%3D{name}"

    def stop(self) -> None:
        """Stop the server (immediately) and remove its directory."""
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def create_database(admin_url: str, name: str | None = None) -> str:
    """A new, empty database on the server ``admin_url`` connects to; its URL."""
    import psycopg

    name = name or f"hw_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def database_for(request: Any, store: str, folder: Path) -> str:
    """A fresh ``--db`` of the given kind for a test: a SQLite file in ``folder``, or
    a PostgreSQL URL whose tables live in a new schema of the session's PostgreSQL
    server (the ``postgres`` fixture, got through the pytest ``request``)."""
    if store == "sqlite":
        return str(folder / "hw.db")
    server: TempPostgres = request.getfixturevalue("postgres")
    return server.schema_url()


@contextlib.contextmanager
def temp_postgres(*, durable: bool = False) -> Iterator[TempPostgres]:
    """A TempPostgres for the duration of the block."""
    server = TempPostgres(durable=durable)
    try:
        yield server
    finally:
        server.stop()
