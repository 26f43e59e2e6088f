"""``python fault_server.py --port P --db PATH --heartbeat-interval S --heartbeat-timeout S``:
the same server as ``headwater server`` (``serve_forever``), with a heartbeat window
short enough for the fault suite to stop a worker past it in seconds rather than the
default 20 s. ``ServerSettings`` has the fields; the CLI does not expose them
(docs/worker-protocol.md §4), so the suite starts the server through this script."""

from __future__ import annotations

import argparse
import asyncio

from headwater_runtime.server._app import serve_forever, settings_from_env


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--db", required=True)
    parser.add_argument("--heartbeat-interval", type=float, required=True)
    parser.add_argument("--heartbeat-timeout", type=float, required=True)
    args = parser.parse_args()
    settings = settings_from_env(
        port=args.port,
        db=args.db,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
    )
    asyncio.run(serve_forever(settings))


if __name__ == "__main__":
    main()
