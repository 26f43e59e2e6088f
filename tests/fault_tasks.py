"""The flow the fault suite (tests/test_faults.py) runs on real workers.

Every task appends one line when it starts and one just before it returns to the file
``$HW_FAULT_DIR/effects.log``, so the suite can count executions (side effects) and
compare them with what the server recorded. Each line is one ``os.write`` on a file
opened with ``O_APPEND``: lines from all worker processes land whole, in the order they
were written, which is what lets the suite order "task X started" before "task Y
finished".

A line: ``TIME START|END TAG TASK INDEX WORKER``. ``TAG`` is the run's ``tag``
parameter (unique per run), ``TASK`` the task node id, ``INDEX`` the map index (-1 for
an unmapped task), ``WORKER`` the worker's name (``HW_WORKER``).

A run can be held at a point (``hold``): while the file ``$HW_FAULT_DIR/hold-TAG``
exists and holds a number N, every task of run TAG whose START line is past the run's
first N START lines waits, after writing it, until the file is removed. So once a run
has N starts, later tasks fill every worker's slots and stay in flight: a fault sent
then always catches work in flight, whatever the machine's speed (no race between the
suite's polling and the tasks' few milliseconds).

Task durations are a hash of (tag, task, index): the same for every execution of one
task run, different across task runs, 5-60 ms. Values differ between runs too (they are
offset by ``base(tag)``), so no run's value is already stored by another run: a value
the server failed to store shows up as missing.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from headwater import flow, task, unmapped

EFFECTS = "effects.log"


def _effect(kind: str, tag: str, name: str, index: int) -> int:
    """Append one line; returns the file's size just after it (where the line ends)."""
    path = Path(os.environ["HW_FAULT_DIR"]) / EFFECTS
    line = f"{time.time():.6f} {kind} {tag} {name} {index} {os.environ.get('HW_WORKER', '?')}\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        return os.lseek(fd, 0, os.SEEK_CUR)
    finally:
        os.close(fd)


def hold_path(directory: Path, tag: str) -> Path:
    return directory / f"hold-{tag}"


def _wait_if_held(tag: str, end: int) -> None:
    """Wait while run ``tag`` is held and this task's START line (ending at byte
    ``end``) is past the held number of its run's starts."""
    directory = Path(os.environ["HW_FAULT_DIR"])
    hold = hold_path(directory, tag)
    try:
        limit = int(hold.read_text())
    except (FileNotFoundError, ValueError):
        return
    with open(directory / EFFECTS, "rb") as f:
        before = f.read(end).decode().splitlines()
    if sum(1 for x in before if x.split(" ")[1:3] == ["START", tag]) <= limit:
        return
    while hold.exists():
        time.sleep(0.005)


def _work(tag: str, name: str, index: int) -> None:
    """Start line, a deterministic 5-60 ms of "work" (after a hold), end line."""
    _wait_if_held(tag, _effect("START", tag, name, index))
    digest = hashlib.sha256(f"{tag}/{name}/{index}".encode()).digest()
    time.sleep(0.005 + digest[0] / 255 * 0.055)
    _effect("END", tag, name, index)


def base(tag: str) -> int:
    """The run's value offset (the same in every process: not Python's salted hash)."""
    return int(hashlib.sha256(tag.encode()).hexdigest()[:8], 16) * 1000


@task
def source(n: int, tag: str) -> list[int]:
    _work(tag, "source", -1)
    return [base(tag) + i for i in range(n)]


@task
def double(x: int, tag: str) -> int:
    _work(tag, "double", x - base(tag))
    return 2 * x


@task
def shift(x: int, tag: str) -> int:
    _work(tag, "shift", x // 2 - base(tag))
    return x + 1


@task
def total(values: list[int], tag: str) -> int:
    _work(tag, "total", -1)
    return sum(values)


@task
def who(x: int, tag: str) -> str:
    """Which worker ran it (the suite checks whose result the server kept)."""
    _work(tag, "who", x - base(tag))
    return os.environ.get("HW_WORKER", "?")


@flow
def chaos(n: int = 150, tag: str = "t") -> int:
    """2n + 2 task runs: a source, two element-wise maps, a reduce (``expected``)."""
    doubled = double.map(source(n, tag), unmapped(tag))
    return total(shift.map(doubled, unmapped(tag)), tag)


@flow
def workers(n: int = 40, tag: str = "w") -> list[str]:
    """n independent task runs that each return the name of the worker that ran them."""
    return who.map(source(n, tag), unmapped(tag))


def expected(n: int, tag: str) -> int:
    """``chaos(n, tag)``'s result: the sum of 2x + 1 over its source's n numbers."""
    return 2 * n * base(tag) + n * n
