"""Several server addresses, and following the leader among them.

Servers sharing one PostgreSQL database: one leads, the others stand by and refuse
every call with ``UNAVAILABLE``, naming the leader in the details and in the
trailing metadata ``headwater-leader``. Clients and workers are given every address
(``--server a:1,b:2``, or ``HEADWATER_SERVER``) and use ``Addresses`` to pick the
next one to try: the leader a standby named, if it is one of them, else the next in
the list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Trailing metadata of a standby's refusal: ``HOST:PORT`` of the leader it knows of.
LEADER_METADATA = "headwater-leader"
#: Start of a standby's refusal text (the rest names the leader).
STANDBY_REFUSAL = "this Headwater server is a standby"
#: Trailing metadata of a refusal the server made because its store cannot serve the
#: call now (its database is down, its disk full): ``CAUSE_STORE``. A client then says
#: so, rather than "cannot reach the server".
CAUSE_METADATA = "headwater-cause"
CAUSE_STORE = "store"


def parse_addresses(text: str) -> tuple[str, ...]:
    """``"a:1, b:2"`` -> ``("a:1", "b:2")``; ValueError names a part that is not
    ``HOST:PORT``."""
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    if not parts:
        raise ValueError("no server address given: expected HOST:PORT[,HOST:PORT...]")
    for part in parts:
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"server address {part!r} is not HOST:PORT")
    return parts


def leader_hint(error: Any) -> str:
    """The leader a standby named in a refused call (a ``grpc.RpcError``), or ""."""
    return _trailing(error, LEADER_METADATA)


def refusal_cause(error: Any) -> str:
    """Why the server refused a call (a ``grpc.RpcError``): ``CAUSE_STORE``, or ""."""
    return _trailing(error, CAUSE_METADATA)


def _trailing(error: Any, name: str) -> str:
    """A trailing metadata value of a failed call ("" when it has none)."""
    metadata = getattr(error, "trailing_metadata", None)
    if not callable(metadata):
        return ""
    try:
        pairs = metadata() or ()
    except Exception:
        return ""
    for key, value in pairs:
        if key == name:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""


class Addresses:
    """The servers a client or worker may use, and the one it uses now.

    Args:
        addresses: ``HOST:PORT`` strings, or one comma-separated string.
    """

    def __init__(self, addresses: str | Sequence[str]) -> None:
        text = addresses if isinstance(addresses, str) else ",".join(addresses)
        self.all = parse_addresses(text)
        self._index = 0

    @property
    def current(self) -> str:
        """The address to use now."""
        return self.all[self._index]

    @property
    def several(self) -> bool:
        """Whether there is more than one address to try."""
        return len(self.all) > 1

    def __str__(self) -> str:
        return ",".join(self.all)

    def advance(self, hint: str = "") -> str:
        """Move on after the current address failed: to ``hint`` (the leader a standby
        named) when it is one of the addresses, else to the next one. The new current
        address."""
        if hint in self.all:
            self._index = self.all.index(hint)
        else:
            self._index = (self._index + 1) % len(self.all)
        return self.current
