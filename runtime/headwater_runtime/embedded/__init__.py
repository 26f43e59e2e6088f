"""The embedded host: run a flow in this process, on threads (or Dask)."""

from ._cache import (
    PROCESS_CACHE,
    ResultCache,
    cache_key,
    cache_snapshot,
    make_cache_key,
    stable_hash,
    thaw,
    warn_at_task,
)
from ._gc import RUN_GC_THRESHOLD, relaxed_gc
from ._host import EmbeddedRun, Executor, SubflowTarget, SystemClock, child_executor
from ._threads import INLINE_LIMIT, ThreadExecutor, default_thread_count

__all__ = [
    "INLINE_LIMIT",
    "PROCESS_CACHE",
    "RUN_GC_THRESHOLD",
    "EmbeddedRun",
    "Executor",
    "ResultCache",
    "SubflowTarget",
    "SystemClock",
    "ThreadExecutor",
    "cache_key",
    "cache_snapshot",
    "child_executor",
    "default_thread_count",
    "make_cache_key",
    "relaxed_gc",
    "stable_hash",
    "thaw",
    "warn_at_task",
]
