"""Roles a credential can have, and what each one includes (defined once).

The server checks every call against the role it requires (the table is
``headwater_runtime.server.REQUIRED_ROLES``; docs/security.md prints it); the CLI and
the client name roles when they create credentials.
"""

from __future__ import annotations

import enum


class Role(enum.Enum):
    """What a credential may do.

    - ``ADMIN``: everything, including credentials.
    - ``OPERATOR``: deploy flows, create, cancel and retry runs, schedules, limits; and
      all a viewer may.
    - ``VIEWER``: read only: flows, runs, task runs, results, logs, schedules, the UI.
    - ``WORKER``: the worker gateway, uploads, and downloads of only the payloads of the
      attempts it holds or that it uploaded itself.
    """

    ADMIN = "admin"
    OPERATOR = "operator"
    VIEWER = "viewer"
    WORKER = "worker"

    @property
    def grants(self) -> frozenset[Role]:
        """The roles this one includes (itself among them)."""
        return _GRANTS[self]

    @classmethod
    def parse(cls, name: str) -> Role:
        """The role called ``name``; ValueError listing the roles otherwise."""
        try:
            return cls(name.strip().lower())
        except ValueError:
            names = ", ".join(r.value for r in cls)
            raise ValueError(f"unknown role {name!r}: choose one of {names}") from None


_GRANTS: dict[Role, frozenset[Role]] = {
    Role.ADMIN: frozenset(Role),
    Role.OPERATOR: frozenset({Role.OPERATOR, Role.VIEWER}),
    Role.VIEWER: frozenset({Role.VIEWER}),
    Role.WORKER: frozenset({Role.WORKER}),
}
