"""Fewer garbage collections while an embedded run builds and drives its graph.

A run allocates a few container objects per task run (its graph node, record, state
history, events) and keeps most of them until it ends. With CPython's default
thresholds (700, 10, 10) every 700 allocations start a young collection, and the
older generations are traversed again and again as the live heap grows: at 100,000
tasks that cost about a third of the run's CPU time (a 100k fan-out: 4.2 s with the
collector on, 2.7 s with it off, benchmarks/README.md). While a run is in progress the
first threshold is raised to ``RUN_GC_THRESHOLD``: young collections still happen, and
still find cycles, but 70 times less often, so the long-lived heap is walked far less.
The thresholds in force before the outermost run are put back when it ends (unless
someone changed them meanwhile). A process that turned automatic collection off
(threshold 0) or raised it further is left alone.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

#: The first-generation threshold while a run is in progress (CPython's default: 700).
RUN_GC_THRESHOLD = 50_000

_lock = threading.Lock()
_depth = 0
_saved: tuple[int, int, int] | None = None


@contextmanager
def relaxed_gc() -> Iterator[None]:
    """Raise the collector's first threshold for the duration (nests; thread-safe)."""
    global _depth, _saved
    with _lock:
        _depth += 1
        if _depth == 1:
            current = gc.get_threshold()
            if 0 < current[0] < RUN_GC_THRESHOLD:
                _saved = current
                gc.set_threshold(RUN_GC_THRESHOLD, current[1], current[2])
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                if gc.get_threshold()[0] == RUN_GC_THRESHOLD:
                    gc.set_threshold(*_saved)
                _saved = None
