"""``headwater server`` stops within ``--stop-timeout`` on SIGTERM, every time.

A stop stores what is left and gives up the PostgreSQL lease: with a database that
does not answer (every PostgreSQL process SIGSTOPped, as a hung database host or a
network partition leaves it), both wait forever, and the server never exited. Now the
first signal arms a deadline (faulthandler's watchdog: it fires even while the event
loop is stuck in a call), and a second signal ends the process at once. Each test
runs its own PostgreSQL server, since it freezes it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import BOUND, Proc, poll, start_server
from pg_cluster import TempPostgres, temp_postgres

pytestmark = pytest.mark.e2e


@pytest.fixture
def private_pg(postgres: TempPostgres) -> Iterator[TempPostgres]:
    """A PostgreSQL server of this test's own (``postgres`` decides whether PostgreSQL
    tests run here: in CI they must)."""
    with temp_postgres() as server:
        yield server


def _processes(server: TempPostgres) -> list[int]:
    """The postmaster and every process it started (its backends among them)."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(
        ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, timeout=30
    ).stdout.split()
    return [postmaster, *map(int, children)]


def _signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # (a backend that ended)
            os.kill(pid, sig)


@contextlib.contextmanager
def _frozen(server: TempPostgres) -> Iterator[None]:
    """Every process of the PostgreSQL server stopped (SIGSTOP) for the block."""
    frozen = _processes(server)
    _signal_all(frozen, signal.SIGSTOP)
    try:
        yield
    finally:
        _signal_all(frozen, signal.SIGCONT)


def _start(tmp_path: Path, url: str, *extra: str) -> Proc:
    def start(*args: str) -> Proc:
        return Proc([sys.executable, "-m", "headwater._cli", *args], dict(os.environ), "stdout")

    server, _ = start_server(start, url, 0, *extra)
    return server


@pytest.mark.timeout(180)
def test_a_stop_its_database_never_answers_ends_at_the_stop_timeout(
    private_pg: TempPostgres, tmp_path: Path
) -> None:
    server = _start(tmp_path, private_pg.database(), "--stop-timeout", "2s")
    try:
        with _frozen(private_pg):
            server.popen.send_signal(signal.SIGTERM)
            code = server.popen.wait(BOUND)  # it hung here, forever
    finally:
        server.stop()
    stderr = "\n".join(server.other)
    assert code == 1, stderr
    assert "headwater server stopping (at most 2s; a second signal exits at once)" in stderr
    assert "Timeout (0:00:02)!" in stderr  # faulthandler's deadline fired,
    assert "Thread 0x" in stderr and "most recent call first" in stderr  # with the stacks


@pytest.mark.timeout(180)
def test_a_second_signal_ends_a_stop_that_hangs_at_once(
    private_pg: TempPostgres, tmp_path: Path
) -> None:
    server = _start(tmp_path, private_pg.database(), "--stop-timeout", "10m")
    try:
        with _frozen(private_pg):
            server.popen.send_signal(signal.SIGTERM)
            poll(lambda: any("server stopping" in x for x in server.other), "the stop to begin")
            server.popen.send_signal(signal.SIGINT)
            code = server.popen.wait(BOUND)
    finally:
        server.stop()
    # Killed by the signal (its default action): without the change, the second
    # signal only asked again for the stop that hung, and this waited in vain.
    assert code == -signal.SIGINT
