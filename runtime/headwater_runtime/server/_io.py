"""Store work off the event loop: one writer thread, a few reader threads, and one
thread for the store's upkeep.

The server's event loop never waits on the database: commits, run creation and
payload uploads run on a single writer thread (so writes keep their order), and
queries on reader threads (SQLite in WAL mode lets readers run beside the writer).
A large request therefore delays other clients' calls only by the loop's own work.
The store's upkeep (SQLite: copying the write-ahead log back into the database file,
several ms for 4 MB) runs beside the writes, on a thread of its own, unless the store
asks for its next upkeep between writes.

The writer and the readers are ``_Lane`` threads rather than ``loop.run_in_executor``:
a call and its result each cross between threads once (a queue, then one
``call_soon_threadsafe``), where the executor's concurrent Future, its condition and
the callbacks chaining it to an asyncio Future took ~25 µs more CPU per call here (of
~75 µs; a one-task run makes four or five such calls).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar, cast

P = ParamSpec("P")
T = TypeVar("T")

log = logging.getLogger("headwater.server")

#: Reader threads (queries of runs, task runs, logs, payload chunks).
READERS = 4
#: Seconds between two upkeeps of the store (SQLite: copying the write-ahead log back
#: into the database file; at most a few MB under full load).
UPKEEP_EVERY = 0.1


class StoreIO:
    """Runs store calls on the writer thread or the reader threads.

    Args:
        readers: how many reader threads.
        upkeep: the store's ``checkpoint``: called with ``beside_writes``, it returns
            whether the next upkeep should run between writes (``Store.checkpoint``).
        upkeep_every: seconds between upkeeps.
    """

    def __init__(
        self,
        readers: int = READERS,
        upkeep: Callable[[bool], bool] | None = None,
        upkeep_every: float = UPKEEP_EVERY,
    ) -> None:
        self._writer = _Lane(1, "headwater-store-writer")
        self._readers = _Lane(readers, "headwater-store-reader")
        self._upkeeper = ThreadPoolExecutor(1, thread_name_prefix="headwater-store-upkeep")
        self._upkeep = upkeep
        self._upkeep_every = upkeep_every
        self._upkeep_at: float | None = None  # when the last upkeep was queued (monotonic)
        #: The upkeep queued or under way, if any (no other is queued meanwhile).
        self._upkeeping: Future[None] | None = None
        self._between_writes = False  # the store asked for its next upkeep between writes

    async def write(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on the writer thread (after the writes before it).
        Then, at most every ``upkeep_every`` seconds and one at a time, the store's
        upkeep runs: on its own thread, beside the writes that follow; or, when the
        store asked for it, on the writer thread, after this write's result is on its
        way back and before the next write."""
        return await self.writing(fn, *args, **kwargs)

    def writing(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[T]:
        """``write``, queued at once: the Future of its outcome (for a caller that goes
        on with a done-callback rather than a task of its own: the commits)."""
        done = self._writer.call(functools.partial(fn, *args, **kwargs))
        if self._upkeep is not None and (self._upkeeping is None or self._upkeeping.done()):
            now = time.monotonic()
            # (None: none yet. The monotonic clock counts from the machine's boot: a
            # start of 0 held the first upkeep back on a machine up for less than
            # upkeep_every, which a test with an hour's interval met in CI.)
            if self._upkeep_at is None or now - self._upkeep_at >= self._upkeep_every:
                self._upkeep_at = now
                beside = not self._between_writes
                once = functools.partial(self._upkeep_once, self._upkeep, beside)
                on = self._upkeeper.submit if beside else self._writer.submit
                self._upkeeping = on(once)
        return done

    def _upkeep_once(self, upkeep: Callable[[bool], bool], beside_writes: bool) -> None:
        """One upkeep (it reports its own failures; anything else is logged here)."""
        try:
            self._between_writes = upkeep(beside_writes)
        except Exception:
            log.exception("the store's upkeep failed")

    async def read(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on a reader thread."""
        return await self._readers.call(functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Wait for the calls under way, then stop the threads."""
        self._writer.close()
        self._readers.close()
        self._upkeeper.shutdown(wait=True)


class _Lane:
    """``threads`` threads (started with the first call) taking calls from one queue in
    order; each call's outcome goes back to its caller's loop with one
    ``call_soon_threadsafe``. A call whose caller was cancelled before it began does
    not run (as with ``run_in_executor``); one under way runs to its end.

    Args:
        threads: how many threads.
        name: the threads' names are ``name_0``, ``name_1``...
    """

    def __init__(self, threads: int, name: str) -> None:
        self._size = threads
        self._name = name
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"cannot schedule new calls after shutdown ({self._name})")
        if not self._threads:
            with self._lock:
                while len(self._threads) < self._size:
                    name = f"{self._name}_{len(self._threads)}"
                    # (Daemon: a StoreIO never closed does not hold the interpreter's
                    # exit; the server closes its own after the last commit.)
                    thread = threading.Thread(target=self._work, name=name, daemon=True)
                    thread.start()
                    self._threads.append(thread)

    def call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """``fn()`` on one of the threads; its outcome as a Future of the running loop."""
        self._check_open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((fn, loop, future))
        return future

    def submit(self, fn: Callable[[], None]) -> Future[None]:
        """``fn()`` on one of the threads, for a caller that polls or wraps its
        outcome (the store's upkeep)."""
        self._check_open()
        future: Future[None] = Future()
        self._calls.put((fn, None, future))
        return future

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, loop, future = call
            del call
            if loop is None:
                assert isinstance(future, Future)
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:
                        future.set_exception(exc)
                continue
            future = cast("asyncio.Future[Any]", future)
            if future.cancelled():  # its caller went away before it began
                continue
            try:
                outcome, failed = fn(), False
            except BaseException as exc:
                outcome, failed = exc, True
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, future, outcome, failed)
            del fn, loop, future, outcome

    def close(self) -> None:
        """Run the calls queued and under way, then stop the threads."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._calls.put(None)
        for thread in threads:
            thread.join()


#: A lane's call: the function, and the loop and Future its outcome goes to (no loop:
#: a concurrent Future).
_Call = tuple[
    Callable[[], Any], "asyncio.AbstractEventLoop | None", "asyncio.Future[Any] | Future[Any]"
]


def _settle(future: asyncio.Future[Any], outcome: Any, failed: bool) -> None:
    if future.done():  # cancelled while it ran
        return
    if failed:
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


#: Work whose caller went away, held until it ends (the loop keeps only weak references).
_CARRIED: set[asyncio.Task[Any]] = set()


async def to_its_end(
    work: Coroutine[Any, Any, T], what: str, refusals: tuple[type[BaseException], ...] = ()
) -> T:
    """``work`` (a store write, then what must follow it on the loop) carried to its
    end even when the caller is cancelled meanwhile; the caller still sees its
    cancellation. A gRPC call is cancelled when its client goes away; cancelled between
    a write and its follow-up, the write stood (it ran on the writer thread) and the
    follow-up never ran: a run stored RUNNING but never handed to the dispatcher (its
    first task SCHEDULED until a restart, a user trial), a revoked credential still
    accepted, a stored limit not applied. ``what`` names the work in the log line of
    its failure, which nobody waits for once the caller is gone; an exception of
    ``refusals`` (the request's own fault, such as a flow that is not registered) is
    logged at DEBUG only: it is no failure of the server's."""
    task = asyncio.get_running_loop().create_task(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            _CARRIED.add(task)
            task.add_done_callback(functools.partial(_carried, what, refusals))
        raise


def _carried(what: str, refusals: tuple[type[BaseException], ...], task: asyncio.Task[Any]) -> None:
    _CARRIED.discard(task)
    exc = None if task.cancelled() else task.exception()
    if exc is not None:
        level = logging.DEBUG if isinstance(exc, refusals) else logging.WARNING
        log.log(level, "%s (its caller went away) failed: %s", what, exc)
