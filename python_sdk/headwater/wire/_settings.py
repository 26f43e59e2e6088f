"""Environment variables every Headwater process reads, named once.

Entry points (the CLI, ``Client``, ``Worker``, ``headwater server``) build their
settings from defaults, then these variables, then their own flags or arguments; code
below them is handed the result and never reads the environment itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

#: ``HOST:PORT`` of the control plane (clients, workers, the CLI).
ENV_SERVER = "HEADWATER_SERVER"
#: Bearer token: required by a server started with it, sent by clients and workers.
ENV_TOKEN = "HEADWATER_TOKEN"
#: The server's database (a SQLite path).
ENV_DB = "HEADWATER_DB"
#: How long the server keeps finished runs (a duration such as 30d; unset: forever).
ENV_RETENTION = "HEADWATER_RETENTION"
# The server's other settings (runtime/headwater_runtime/server/_config.py reads them).
#: The server's TOML configuration file.
ENV_CONFIG = "HEADWATER_CONFIG"
#: The interface the server binds.
ENV_HOST = "HEADWATER_HOST"
#: The server's gRPC port.
ENV_PORT = "HEADWATER_PORT"
#: The port of the server's /metrics (Prometheus).
ENV_METRICS_PORT = "HEADWATER_METRICS_PORT"
#: How often workers send heartbeats.
ENV_HEARTBEAT_INTERVAL = "HEADWATER_HEARTBEAT_INTERVAL"
#: How long the server waits for a silent worker before its attempts count as lost.
ENV_HEARTBEAT_TIMEOUT = "HEADWATER_HEARTBEAT_TIMEOUT"
#: When a run that has not started counts as late.
ENV_LATE_AFTER = "HEADWATER_LATE_AFTER"
#: The web UI's base URL (links in webhook bodies).
ENV_UI_URL = "HEADWATER_UI_URL"

#: Every variable above with what it sets (the README's table is checked against it).
VARIABLES: dict[str, str] = {
    ENV_SERVER: "HOST:PORT of the control plane, for clients, workers and the CLI",
    ENV_TOKEN: "bearer token the server requires and clients and workers send",
    ENV_DB: "the server's SQLite database path",
    ENV_RETENTION: "how long the server keeps finished runs, e.g. 30d (default: forever)",
    ENV_CONFIG: "the server's TOML configuration file (docs/operations.md)",
    ENV_HOST: "the interface the server binds (default 127.0.0.1)",
    ENV_PORT: "the server's gRPC port (default 50051)",
    ENV_METRICS_PORT: "the port of the server's /metrics for Prometheus (default: not served)",
    ENV_HEARTBEAT_INTERVAL: "how often workers send heartbeats (default 5s)",
    ENV_HEARTBEAT_TIMEOUT: "how long a silent worker keeps its attempts (default 20s)",
    ENV_LATE_AFTER: "when a run that has not started is marked late (default 1m; 0: never)",
    ENV_UI_URL: "the web UI's base URL, for links to runs in webhook bodies",
}


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """Where a client or worker connects, and with which credential."""

    server: str | None = None
    token: str | None = None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        server: str | None = None,
        token: str | None = None,
    ) -> ConnectionSettings:
        """Explicit values first, then HEADWATER_SERVER / HEADWATER_TOKEN."""
        env = os.environ if environ is None else environ
        return cls(
            server=server or env.get(ENV_SERVER) or None,
            token=token if token is not None else (env.get(ENV_TOKEN) or None),
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """gRPC call metadata carrying the token (empty without one)."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()
