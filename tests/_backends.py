"""Run the embedded host's behavioural tests on every executor (threads and Dask).

Task functions may run in other processes (Dask workers), so tests observe them with
``Probe``: files in a temporary directory, which threads and worker processes see alike.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headwater_runtime.embedded import ThreadExecutor

BOUND = 20.0  # seconds: far beyond what any of these runs needs


def poll(condition: Callable[[], bool], timeout: float = BOUND, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def bounded(fn: Callable[[], Any], timeout: float = BOUND) -> Any:
    """Call ``fn`` on a helper thread; fail the test if it has not returned in time."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"did not return within {timeout}s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@dataclass(frozen=True)
class Probe:
    """Signals and logs that work across threads and processes on one machine."""

    root: Path

    def set(self, name: str, text: str = "") -> None:
        tmp = self.root / f".{name}.{uuid.uuid4().hex}"
        tmp.write_text(text)
        os.replace(tmp, self.root / name)  # atomic: readers never see it half-written

    def is_set(self, name: str) -> bool:
        return (self.root / name).exists()

    def read(self, name: str) -> str:
        return (self.root / name).read_text()

    def wait(self, name: str, timeout: float = BOUND) -> bool:
        deadline = time.monotonic() + timeout
        while not self.is_set(name):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def add(self, name: str, item: object) -> None:
        # One small O_APPEND write per item: concurrent writers do not interleave.
        with open(self.root / name, "a") as f:
            f.write(f"{item}\n")

    def items(self, name: str) -> list[str]:
        path = self.root / name
        return path.read_text().splitlines() if path.exists() else []

    def count(self, name: str) -> int:
        return len(self.items(name))


@dataclass(frozen=True)
class Backend:
    """One executor kind: how to make an executor for a test."""

    name: str
    make: Callable[[int], Any]

    def executor(self, threads: int = 4) -> Any:
        """An executor; ``threads`` sizes a thread pool (a Dask cluster has its own)."""
        return self.make(threads)

    @property
    def remote(self) -> bool:
        return self.name != "threads"


THREADS = Backend("threads", ThreadExecutor)


class StoppedClock:
    """The embedded host's clock for a test of a deadline (``SystemClock.now``,
    monkeypatched): it stands still until ``advance`` moves it. A deadline then passes
    when the test says so (e.g. from the task that must be cut off, once it runs), never
    because a loaded machine ran the run's other work slowly; a deadline that must not
    pass never does. Only the engine reads it: a Dask worker's own watchdog keeps to
    real time, and a task on a Dask worker that advances it moves a copy."""

    def __init__(self) -> None:
        self.at = time.time()

    def now(self) -> float:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += seconds
