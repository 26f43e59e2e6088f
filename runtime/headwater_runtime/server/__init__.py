"""The control plane: ``headwater server``.

The run manager hosts one engine per active flow run durably (journal, projections,
commit before effects, crash recovery); the dispatcher matches ready attempts to
connected workers; the servicers (ControlPlane, WorkerGateway, Payload, Access, plus
health and reflection) are thin adapters over them; the scheduler fires schedules.
Every call passes the auth interceptor (credentials, roles, TLS peers). See
docs/durability.md, docs/worker-protocol.md and docs/security.md.

Public names are listed in ``__init__.pyi`` and load lazily, so the CLI can offer
``headwater server`` without importing the server's dependencies (``headwater[server]``).
"""

from headwater.wire.lazy import attach_stub

__getattr__, __dir__, __all__ = attach_stub(__name__, __file__)
