"""The audit log's object kinds and page size (defined once).

The server records who did what to an object of one of these kinds and refuses to
list any other kind; the CLI (``headwater audit``) and the web UI's audit page offer
them as filters (docs/security.md#audit).
"""

from __future__ import annotations

#: The kinds of object the audit log records entries about.
AUDIT_KINDS: tuple[str, ...] = ("flow", "flow_run", "schedule", "limit", "worker", "credential")
#: Most audit entries one listing returns.
AUDIT_PAGE_MAX = 1000


def audit_kind(name: str) -> str:
    """``name`` when it is an audit object kind or "" (any kind); ValueError naming the
    kinds otherwise."""
    if name and name not in AUDIT_KINDS:
        raise ValueError(f"unknown audit object kind {name!r}: use one of {', '.join(AUDIT_KINDS)}")
    return name
