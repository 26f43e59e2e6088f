"""A Python flow whose middle step runs on the Node.js worker: ``images.resize``.

Run it on a server with a Python worker (for the Python tasks) and the Node worker::

    headwater server --port 50051 &
    headwater worker --server 127.0.0.1:50051 --module examples/node_worker/flow.py &
    node examples/node_worker/bin/worker.js --server 127.0.0.1:50051 &
    headwater run examples/node_worker/flow.py --server 127.0.0.1:50051 --param size=64
"""

from __future__ import annotations

from typing import Any

from headwater import flow, remote_task, task, unmapped

# Implemented in handlers.js; the arguments and the result travel as json.
resize = remote_task("images.resize", parameters=["image", "width"], retries=2, timeout=30)


@task
def gradient(size: int) -> dict[str, Any]:
    """A greyscale test image: one byte per pixel."""
    pixels = bytes((x + y) % 256 for y in range(size) for x in range(size))
    return {"width": size, "height": size, "pixels": pixels}


@task
def widths(size: int, count: int) -> list[int]:
    return [max(1, size >> i) for i in range(1, count + 1)]


@task
def describe(images: list[dict[str, Any]]) -> list[str]:
    return [f"{i['width']}x{i['height']} ({len(i['pixels'])} bytes)" for i in images]


@flow
def thumbnails(size: int = 64, count: int = 3) -> list[str]:
    """Resize one image to several widths on Node, then describe them in Python."""
    return describe(resize.map(unmapped(gradient(size)), widths(size, count)))
