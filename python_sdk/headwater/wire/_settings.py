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
#: The server's HTTP port (web UI and JSON API), or ``off``.
ENV_HTTP_PORT = "HEADWATER_HTTP_PORT"

#: Every variable above with what it sets (the README's table is checked against it).
VARIABLES: dict[str, str] = {
    ENV_SERVER: "HOST:PORT of the control plane, for clients, workers and the CLI",
    ENV_TOKEN: "bearer token the server requires and clients and workers send",
    ENV_DB: "the server's SQLite database path",
    ENV_RETENTION: "how long the server keeps finished runs, e.g. 30d (default: forever)",
    ENV_HTTP_PORT: "the server's web UI port, or off (default: the gRPC port + 1)",
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
