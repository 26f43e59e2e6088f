"""A stand-in for ``sys.stdout`` / ``sys.stderr`` that passes everything but
``write`` on to the stream it replaced: the runtime's capture of what a task prints
and the compiler's hold on what a flow body prints in its first pass both build on it."""

from __future__ import annotations

import io
from typing import Any


class StreamStandIn(io.TextIOBase):
    """Passes flush, isatty, fileno, encoding and any other attribute to ``original``;
    subclasses decide what ``write`` does."""

    def __init__(self, original: Any) -> None:
        """``original``: the stream this one stands in for."""
        self.original = original

    def write(self, text: str) -> int:
        """Write to the original stream."""
        written: int = self.original.write(text)
        return written

    def flush(self) -> None:
        """Flush the original stream."""
        self.original.flush()

    def isatty(self) -> bool:
        """Whether the original stream is a terminal."""
        return bool(self.original.isatty())

    def fileno(self) -> int:
        """The original stream's file descriptor."""
        return int(self.original.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        """The original stream's encoding."""
        return str(getattr(self.original, "encoding", "utf-8"))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)
