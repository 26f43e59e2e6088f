"""A schedule on a real server subprocess that is SIGKILLed and restarted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_helpers import Proc, poll, start_server
from test_e2e_server import TOKEN, cluster, flows  # noqa: F401  (cluster is a fixture)

from headwater import Client

pytestmark = pytest.mark.e2e


def _fire_ms(key: str) -> int:
    """The fire time (epoch milliseconds) named by a scheduled run's key."""
    from datetime import UTC, datetime

    stamp = key.rsplit("/", 1)[1].rstrip("Z")
    whole, ms = stamp.split(".")
    seconds = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return round(seconds) * 1000 + int(ms)


def test_a_catchup_schedule_fires_every_time_once_across_a_server_sigkill(
    tmp_path: Path,
    db: str,
    cluster: Callable[..., Proc],  # noqa: F811
) -> None:
    server, address = start_server(cluster, db)
    port = address.rsplit(":", 1)[1]
    module = flows(tmp_path)
    with Client(address, token=TOKEN) as client:
        schedule = client.create_schedule(
            module.etl,  # type: ignore[attr-defined]
            every=0.25,
            params={"n": 1},
            catchup=True,
        )
        poll(lambda: len(client.list_runs(limit=1000)) >= 3, "three scheduled runs")
    server.kill()
    server, address = start_server(cluster, db, int(port))
    with Client(address, token=TOKEN) as client:
        before = len(client.list_runs(limit=1000))
        poll(lambda: len(client.list_runs(limit=1000)) >= before + 3, "runs after the restart")
        client.pause_schedule(schedule.id)
        runs = client.list_runs(limit=1000)
    assert {r.schedule_id for r in runs} == {schedule.id}
    assert schedule.created_at is not None
    anchor = round(schedule.created_at.timestamp() * 1000)
    steps = sorted((_fire_ms(r.idempotency_key) - anchor) / 250 for r in runs)
    # Every fire time 1, 2, ..., n exactly once: none doubled by the restart, none
    # skipped while the server was down (catch-up fires them after the restart).
    assert steps == list(range(1, len(runs) + 1))
