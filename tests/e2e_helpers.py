"""Helpers for end-to-end tests: real `headwater server` / `headwater worker`
subprocesses whose output lines are collected, and polling with a deadline."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

#: Upper bound on any single wait in an end-to-end test (seconds).
BOUND = 60.0

#: The Node.js worker (installed by ``make setup``: npm ci in this directory).
NODE_WORKER = Path(__file__).resolve().parents[1] / "examples" / "node_worker"


class Proc:
    """A subprocess whose output lines are collected by a reader thread."""

    def __init__(self, args: list[str], env: dict[str, str], stream: str) -> None:
        self.popen = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="backslashreplace",  # a task may print bytes that are not UTF-8
            env=env,
        )
        self.lines: list[str] = []
        self.other: list[str] = []
        main = self.popen.stdout if stream == "stdout" else self.popen.stderr
        rest = self.popen.stderr if stream == "stdout" else self.popen.stdout
        self.readers = [
            threading.Thread(target=self._read, args=(pipe, sink), daemon=True)
            for pipe, sink in ((main, self.lines), (rest, self.other))
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(pipe: object, sink: list[str]) -> None:
        for line in pipe:  # type: ignore[attr-defined]
            sink.append(line.rstrip("\n"))

    def _read_all(self) -> bool:
        """Whether every line of the main stream is in ``lines``: its reader thread has
        seen the end of the pipe. The process having exited is not enough: its last
        lines may still be in the pipe, or in the reader's hands, for a moment."""
        return not self.readers[0].is_alive()

    def wait_line(self, fragment: str, timeout: float = BOUND) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ended = self._read_all()  # (before the look: a line read meanwhile counts)
            for line in self.lines:
                if fragment in line:
                    return line
            if ended:
                break
            time.sleep(0.02)
        raise AssertionError(f"no line with {fragment!r}; got {self.lines} / {self.other}")

    def wait_lines(self, fragment: str, count: int, timeout: float = BOUND) -> list[str]:
        """The lines with ``fragment`` once there are ``count`` of them, or those there
        are when the process's output ends or ``timeout`` passes (a process logs a step a
        little after its effect shows elsewhere)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ended = self._read_all()
            found = [line for line in self.lines if fragment in line]
            if len(found) >= count or ended:
                return found
            time.sleep(0.02)
        return [line for line in self.lines if fragment in line]

    def wait(self, timeout: float = BOUND) -> int:
        """The exit status once the process has ended and everything it wrote is in
        ``lines`` and ``other``. ``popen.wait`` returns at the exit, while the reader
        threads may still hold its last lines: an assertion on them right after it
        can miss the line the process wrote just before exiting."""
        code = self.popen.wait(timeout)
        self._close()
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)
        self._close()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.send_signal(signal.SIGKILL)
                self.popen.wait(10)
        self._close()

    def _close(self) -> None:
        for reader in self.readers:
            reader.join(10)
        for pipe in (self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()


class Cluster:
    """Starts `headwater` subprocesses with a shared environment; ``stop()`` ends them
    all (SIGTERM, then SIGKILL), in start order."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[Proc] = []

    def __call__(
        self, kind: str, *args: str, worker: str = "", env: Mapping[str, str] | None = None
    ) -> Proc:
        """Start ``headwater KIND ARGS``; ``env`` adds to (or overrides) the shared one."""
        cmd = [sys.executable, "-m", "headwater._cli", kind, *args]
        stream = "stdout" if kind == "server" else "stderr"
        return self.spawn(cmd, stream, {"HW_WORKER": worker, **(env or {})})

    def spawn(self, cmd: list[str], stream: str, env: Mapping[str, str] | None = None) -> Proc:
        """Start any command (e.g. ``node_worker_args(...)``) with the shared environment."""
        proc = Proc(cmd, {**self.env, **(env or {})}, stream)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()
        # pytest shows this only when the test failed: what every process said.
        for proc in self.procs:
            print(f"--- {' '.join(proc.popen.args)}", *proc.lines, *proc.other, sep="\n")


#: The lease of PostgreSQL-backed test servers: a server restarted after a SIGKILL
#: waits this long for the dead one's lease (the default, 10 s, would slow tests).
TEST_LEASE = "2s"


def start_server(
    start: Callable[..., Proc], db: str | Path, port: int = 0, *extra: str
) -> tuple[Proc, str]:
    """A server on ``db`` (a SQLite path or a PostgreSQL URL, the ``db`` fixture);
    the server and its ``HOST:PORT`` once it serves (leads)."""
    lease = ("--lease", TEST_LEASE) if str(db).startswith("postgresql://") else ()
    # A free HTTP port each time: a restarted server keeps its gRPC port, and the one
    # after it may have been taken meanwhile.
    http = ("--http-port", "0")
    server = start("server", "--port", str(port), "--db", str(db), *lease, *http, *extra)
    line = server.wait_line("headwater server listening on")
    return server, line.split("listening on ", 1)[1].split(" ", 1)[0]


def start_worker(
    start: Callable[..., Proc], address: str, name: str, *extra: str, module: str = "e2e_tasks"
) -> Proc:
    worker = start(
        "worker", "--server", address, "--module", module, "--name", name, *extra, worker=name
    )
    worker.wait_line("connected to")
    return worker


def node_worker_args(address: str, name: str, *extra: str) -> list[str]:
    """The command line of the Node.js worker (its status lines go to stderr)."""
    node = shutil.which("node")
    assert node, "Node.js is needed (CI has Node 20)"
    installed = (NODE_WORKER / "node_modules").is_dir()
    assert installed, "run `make setup` (npm ci for the Node worker)"
    script = str(NODE_WORKER / "bin" / "worker.js")
    return [node, script, "--server", address, "--name", name, *extra]


def poll(condition: Callable[[], bool], what: str, timeout: float = BOUND) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
