"""``headwater audit``: who (credential name) did what, newest first, against a real
server (in-process, on SQLite), with operator and viewer credentials of their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from e2e_helpers import BOUND
from test_client import ServerThread

from headwater import Client, flow, task
from headwater._cli import main

ADMIN_TOKEN = "tok"


@task
def shout(text: str) -> str:
    return text.upper()


@flow
def audited(text: str = "hi") -> str:
    return shout(text)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    s = ServerThread(tmp_path / "hw.db", token=ADMIN_TOKEN)
    yield s
    s.stop()


def test_audit_lists_who_set_a_limit_and_paused_a_schedule_newest_first(
    server: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    with Client(server.address, token=ADMIN_TOKEN) as admin:
        _, ops_token = admin.create_token("ops", "operator")
        _, eyes_token = admin.create_token("eyes", "viewer")
    with Client(server.address, token=ops_token) as ops:
        schedule = ops.create_schedule(audited, every=3600)

    def cli(token: str, *args: str) -> tuple[int, str, str]:
        code = main([*args, "--server", server.address, "--token", token])
        out, err = capsys.readouterr()
        return code, out, err

    # The operator changes things with the CLI; a viewer reads the log.
    assert cli(ops_token, "limits", "set", "db", "--concurrency", "3")[0] == 0
    code, out, _ = cli(eyes_token, "limits", "list", "--json")
    assert code == 0 and json.loads(out) == [
        {"tag": "db", "concurrency": 3, "rate": 0, "rate_period": 0.0, "running": 0, "waiting": 0}
    ]
    assert cli(ops_token, "limits", "delete", "nothing", "--json")[0] == 2
    assert cli(ops_token, "schedules", "pause", schedule.id)[0] == 0
    code, out, err = cli(eyes_token, "audit")
    assert code == 0, err
    # time (2 words), credential, action, object kind, object id, detail
    lines = [line.split(None, 6)[2:] for line in out.splitlines()]
    assert lines[:2] == [
        ["ops", "schedule.pause", "schedule", schedule.id],
        ["ops", "limit.set", "limit", "db", "concurrency 3"],
    ]
    actions = [(actor, action) for actor, action, *_ in lines]
    assert ("ops", "schedule.create") in actions and ("ops", "deploy") in actions
    assert actions[-2:] == [("server-token", "credential.create")] * 2

    code, out, _ = cli(eyes_token, "audit", "--kind", "limit")
    assert code == 0 and [line.split()[2:5] for line in out.splitlines()] == [
        ["ops", "limit.set", "limit"]
    ]
    code, out, _ = cli(eyes_token, "audit", "--object", schedule.id)
    assert [line.split()[3] for line in out.splitlines()] == ["schedule.pause", "schedule.create"]
    # The 8 digits every listing prints name the schedule (they found nothing, a user
    # trial), and a run's too.
    code, short, _ = cli(eyes_token, "audit", "--object", schedule.id[:8].upper())
    assert (code, short) == (0, out)
    code, out, _ = cli(eyes_token, "audit", "--limit", "1")
    assert code == 0 and len(out.splitlines()) == 1 and "schedule.pause" in out
    with Client(server.address, token=ops_token) as ops:
        run_id = ops.run(audited).id
    code, out, _ = cli(eyes_token, "audit", "--object", run_id[:8])
    assert code == 0 and [line.split()[3:6] for line in out.splitlines()] == [
        ["run", "flow_run", run_id]
    ]
    code, out, err = cli(eyes_token, "audit", "--object", "ffffffff")
    assert (code, out) == (0, "") and "no audit entries match --object ffffffff" in err

    # A kind the server does not know, and a page size out of range: one line, exit 2.
    code, out, err = cli(eyes_token, "audit", "--kind", "webhok")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1, err
    assert "unknown audit object kind 'webhok': use one of flow, flow_run, schedule" in err
    code, _, err = cli(eyes_token, "audit", "--limit", "0")
    assert code == 2 and err == "headwater: error: --limit must be in 1..1000, got 0\n"


def test_the_audit_command_and_runs_show_print_local_time(server: ServerThread) -> None:
    """The real commands, in a time zone 5 h 45 min east of UTC: the printed times are
    that zone's (``runs show`` printed its audit lines in UTC, marked Z, while every
    other listing used local time: an operator trial)."""
    with Client(server.address, token=ADMIN_TOKEN) as admin:
        admin.set_limit("db", concurrency=2)
        run_id = admin.run(audited).id  # (no worker: it waits, which is all it needs)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADWATER_")}

    def printed(*args: str) -> list[str]:
        shown = subprocess.run(
            [sys.executable, "-m", "headwater._cli", *args, "--server", server.address],
            env={**env, "HEADWATER_TOKEN": ADMIN_TOKEN, "TZ": "XYZ-05:45"},
            capture_output=True,
            text=True,
            timeout=BOUND,
            check=False,
        )
        assert shown.returncode == 0, shown.stderr
        return shown.stdout.splitlines()

    (line,) = printed("audit", "--kind", "limit")
    (run_line,) = [line for line in printed("runs", "show", run_id) if " run by " in line]
    there = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=5, minutes=45)
    for shown, said in [
        (line, "server-token  limit.set  limit db  concurrency 2"),
        (run_line, f"run by server-token ({audited.name}:1)"),
    ]:
        day, clock, rest = shown.split(None, 2)
        assert rest == said
        at = datetime.strptime(f"{day} {clock}", "%Y-%m-%d %H:%M:%S")
        assert abs(there - at) < timedelta(minutes=5), (shown, there)


def test_an_empty_listing_says_so_on_stderr_and_prints_nothing_on_stdout(
    server: ServerThread, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every listing of a server with nothing to list printed nothing at all: it read as
    a hang or a failure (an operator trial). Now one line on stderr says what is empty
    (naming the filters that narrowed it); stdout stays empty for scripts, and --json
    is still an empty list."""
    cases = [
        (["runs", "list"], "no flow runs"),
        (["runs", "list", "--flow", "etl", "--state", "FAILED"], "no flow runs match --flow etl"),
        (["schedules", "list"], "no schedules"),
        (["schedules", "list", "--flow", "etl"], "no schedules match --flow etl"),
        (["workers", "list"], "no workers"),
        (["workers", "list", "--online"], "no online workers"),
        (["limits", "list"], "no limits"),
        (["webhooks", "list"], "no webhooks"),
        (["tokens", "list"], "no valid credentials (revoked ones: --all)"),
        (["tokens", "list", "--all"], "no credentials"),
        (["audit", "--kind", "schedule"], "no audit entries match --kind schedule"),
    ]
    for args, said in cases:
        code = main([*args, "--server", server.address, "--token", ADMIN_TOKEN])
        out, err = capsys.readouterr()
        assert (code, out) == (0, ""), (args, code, out, err)
        assert err.strip().splitlines()[-1].startswith(said), (args, err)
    code = main(["runs", "list", "--json", "--server", server.address, "--token", ADMIN_TOKEN])
    assert (code, capsys.readouterr().out.strip()) == (0, "[]")
