"""Store work off the event loop: one writer thread, a few reader threads.

The server's event loop never waits on the database: commits, run creation and
payload uploads run on a single writer thread (so writes keep their order), and
queries on reader threads (SQLite in WAL mode lets readers run beside the writer).
A large request therefore delays other clients' calls only by the loop's own work.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

#: Reader threads (queries of runs, task runs, logs, payload chunks).
READERS = 4


class StoreIO:
    """Runs store calls on the writer thread or the reader threads.

    Args:
        readers: how many reader threads.
    """

    def __init__(self, readers: int = READERS) -> None:
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="headwater-store-writer")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="headwater-store-reader")

    async def write(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on the writer thread (after the writes before it)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, functools.partial(fn, *args, **kwargs))

    async def read(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on a reader thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        """Wait for the calls under way, then stop the threads."""
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
