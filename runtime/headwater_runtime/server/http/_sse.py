"""Server-sent events: the live half of the HTTP API.

Each stream is fed by the server's watch machinery (``ServerCore.watch`` and
``Notices``), which note changes only after the commit that stored them. A handler
waits on its queues, merges what is queued into one event (a 10,000-task fan-out
finishing becomes a few events, not 10,000), and writes it. A comment line every
``KEEPALIVE`` seconds keeps idle connections open through proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

#: Seconds between keep-alive comments on an idle stream.
KEEPALIVE = 15.0
#: Upper bound on task run changes merged into one event.
MERGE_MAX = 5000


class EventStream:
    """One open ``text/event-stream`` answer.

    Args:
        request: the request it answers.
    """

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )

    async def open(self) -> None:
        """Send the headers."""
        await self.response.prepare(self.request)

    async def send(self, event: str, data: Any) -> None:
        """Send one event with JSON data."""
        text = json.dumps(data, separators=(",", ":"))
        await self.response.write(f"event: {event}\ndata: {text}\n\n".encode())

    async def comment(self) -> None:
        """Send a keep-alive comment."""
        await self.response.write(b": keep-alive\n\n")


async def next_of(
    waiters: dict[str, Callable[[], Awaitable[Any]]], idle: float = KEEPALIVE
) -> list[tuple[str, Any]]:
    """Wait for the first of several named awaitables (each a fresh call): the name
    and result of every one that finished (several may, at once), or [] after
    ``idle`` seconds of nothing (time for a keep-alive)."""
    tasks = {asyncio.ensure_future(make()): name for name, make in waiters.items()}
    try:
        done, _ = await asyncio.wait(tasks, timeout=idle, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        for task in tasks:
            if not task.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    # Every finished one counts: a queue item taken by a finished get is not lost.
    return [(tasks[t], t.result()) for t in tasks if t in done and not t.cancelled()]


def take_all(queue: asyncio.Queue[Any], first: Any, limit: int = MERGE_MAX) -> list[Any]:
    """``first`` and what is queued behind it (up to ``limit`` items)."""
    items = [first]
    while len(items) < limit and not queue.empty():
        items.append(queue.get_nowait())
    return items


__all__ = ["KEEPALIVE", "EventStream", "next_of", "take_all"]
