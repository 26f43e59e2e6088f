"""Value-dependent builds (``VERSION@DIGEST12``) and retention, for every store.

A flow whose graph depends on its parameter values stores one build per distinct
graph (docs/flows.md): an hourly flow over a changing list of items adds one a run,
~100 bytes per task each, for good. A prune with a cut-off therefore also deletes the
builds no stored run and no schedule uses and none has used since the cut-off
(numbered versions, which a deploy makes, stay). A build's ``created_at`` is the last
time it was registered or a run or schedule was stored with it: ``put_flow`` of a
stored build, ``create_flow_run`` and ``put_schedule`` move it forward
(``touch_build``, in their own transaction), and refuse with ``NotFound`` a build a
prune deleted meanwhile. So a prune, which checks ``created_at`` again as it deletes,
can never leave a run or schedule naming a build that is gone: whichever transaction
comes second sees what the first did (SQLite takes one writer at a time; on
PostgreSQL the delete waits for the touched row and checks it again).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from headwater.v1 import run_pb2
from headwater.wire import BUILD_SEPARATOR, is_build_version

from ._base import NotFound

#: SQL ``LIKE`` pattern of a build's version (as a parameter: ``%`` is psycopg's mark).
BUILD_VERSIONS = f"%{BUILD_SEPARATOR}%"


def build_gone(name: str, version: str) -> NotFound:
    """The refusal of a run or schedule of a build that is not stored (deleted by a
    prune, or never registered)."""
    return NotFound(
        f"flow {name!r} version {version!r} is not registered: a build for particular "
        "parameter values that no run or schedule has used within the run retention "
        "period is deleted; run or deploy the flow from its code again"
    )


def touch_build(
    execute: Callable[..., Any], latest: str, mark: str, name: str, version: str, at: float
) -> None:
    """In a write transaction: mark build ``version`` of flow ``name`` used at ``at``
    (its ``created_at`` moves forward, never back); NotFound when it is not stored.
    Nothing for a numbered version (never deleted). ``latest``: the database's SQL
    function of the larger of two values (``max`` or ``GREATEST``); ``mark``: its
    parameter placeholder."""
    if not is_build_version(version):
        return
    cur = execute(
        f"UPDATE flows SET created_at = {latest}(created_at, {mark}) "
        f"WHERE name = {mark} AND version = {mark}",
        (at, name, version),
    )
    if cur.rowcount == 0:
        raise build_gone(name, version)


def schedule_build(body: bytes) -> str:
    """The build a stored schedule (its Schedule message) runs; "" for a numbered
    version or an unpinned one."""
    try:
        version = run_pb2.Schedule.FromString(body).flow_version
    except Exception:  # (written by a server; a body it cannot read pins nothing)
        return ""
    return version if is_build_version(version) else ""
