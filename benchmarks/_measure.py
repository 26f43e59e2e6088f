"""Resident-memory readings for the current process.

On Linux the peak comes from ``VmHWM`` in ``/proc/self/status``, and writing ``5`` to
``/proc/self/clear_refs`` resets it to the current RSS, so the peak of one phase can be
read on its own. Elsewhere ``ru_maxrss`` (the process's lifetime peak) is the fallback.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_mb(field: str) -> float | None:
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # the kernel reports kB
    return None


def _maxrss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float:
    """Resident set size now (falls back to the peak where it cannot be read)."""
    rss = _status_mb("VmRSS")
    return rss if rss is not None else _maxrss_mb()


def reset_peak() -> bool:
    """Reset the peak-RSS mark to the current RSS; False where the OS cannot."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb() -> float:
    """Highest resident set size since the last ``reset_peak()`` (or process start)."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else _maxrss_mb()
