"""Schedules through real gRPC channels: an in-process server fires runs that an
in-test worker completes; bad schedules get clear status codes; Client and CLI."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import logging
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from e2e_helpers import poll
from test_client import ServerThread
from test_run_manager import value_of
from test_server_protocol import AUTH, fake_worker, proto_pipeline, run_against_server, status_of

from headwater import Client, ScheduleInfo, ServerError
from headwater._cli import main
from headwater.v1 import control_plane_pb2 as cp
from headwater.v1 import control_plane_pb2_grpc, payload_pb2, run_pb2, worker_pb2
from headwater.wire import decode_value


def test_a_short_interval_schedule_fires_runs_a_worker_completes(db: str) -> None:
    async def body(channel: grpc.aio.Channel) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        await client.RegisterFlow(
            cp.RegisterFlowRequest(graph=proto_pipeline.compile()), metadata=AUTH
        )
        schedule = run_pb2.Schedule(
            flow_name="proto_pipeline", parameters={"n": value_of(2)}, enabled=True
        )
        schedule.interval.FromMilliseconds(200)
        created = (
            await client.CreateSchedule(cp.CreateScheduleRequest(schedule=schedule), metadata=AUTH)
        ).schedule
        assert created.id and created.enabled and created.timezone == "UTC"
        assert created.next_run_at.ToNanoseconds() > created.created_at.ToNanoseconds()
        stop = asyncio.Event()
        worker = asyncio.create_task(fake_worker(channel, stop))
        # Poll (bounded by run_against_server's deadline) until two runs have succeeded.
        while True:
            listed = await client.ListFlowRuns(cp.ListFlowRunsRequest(), metadata=AUTH)
            done = [r for r in listed.flow_runs if r.state == 4]  # SUCCESS
            if len(done) >= 2:
                break
            await asyncio.sleep(0.05)
        paused = await client.PauseSchedule(cp.PauseScheduleRequest(id=created.id), metadata=AUTH)
        assert not paused.schedule.enabled
        stop.set()
        worker.cancel()
        assert {r.schedule_id for r in listed.flow_runs} == {created.id}
        keys = [r.idempotency_key for r in listed.flow_runs]
        assert len(set(keys)) == len(keys)
        assert all(k.startswith(f"schedule/{created.id}/") for k in keys)
        result = await client.GetTaskRunResult(
            cp.GetTaskRunResultRequest(flow_run_id=done[0].id, task_id="scale", map_index=-1),
            metadata=AUTH,
        )
        assert decode_value(result.result) == [0, 10]  # the stored parameter n=2 was used
        (shown,) = (await client.ListSchedules(cp.ListSchedulesRequest(), metadata=AUTH)).schedules
        assert (shown.id, shown.enabled) == (created.id, False)
        resumed = await client.ResumeSchedule(
            cp.ResumeScheduleRequest(id=created.id), metadata=AUTH
        )
        assert resumed.schedule.enabled
        await client.DeleteSchedule(cp.DeleteScheduleRequest(id=created.id), metadata=AUTH)
        listed_after = await client.ListSchedules(cp.ListSchedulesRequest(), metadata=AUTH)
        assert list(listed_after.schedules) == []

    run_against_server(db, body)


def _schedule(**fields: object) -> run_pb2.Schedule:
    fields.setdefault("flow_name", "proto_pipeline")
    return run_pb2.Schedule(**fields)  # type: ignore[arg-type]


def _every(seconds: float, **fields: object) -> run_pb2.Schedule:
    msg = _schedule(**fields)
    msg.interval.FromNanoseconds(round(seconds * 1e9))
    return msg


def test_bad_schedule_requests_get_clear_status_codes(db: str) -> None:
    async def body(channel: grpc.aio.Channel) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        await client.RegisterFlow(
            cp.RegisterFlowRequest(graph=proto_pipeline.compile()), metadata=AUTH
        )
        no_value = worker_pb2.Assignment().inputs.get_or_create("x").value
        unknown_encoding = payload_pb2.Value(
            inline=payload_pb2.Payload(data=b"1", metadata={"encoding": "zzz"})
        )
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        cases = [
            (_schedule(flow_name="nope", cron="* * * * *"), grpc.StatusCode.NOT_FOUND, "'nope'"),
            (_schedule(cron="not a cron"), invalid, "five fields"),
            (_schedule(cron="61 * * * *"), invalid, "invalid cron expression '61 * * * *'"),
            (_schedule(cron="0 0 30 2 *"), invalid, "'0 0 30 2 *' never fires"),
            (_schedule(cron="0 9 * * *", timezone="Nowhere/Town"), invalid, "'Nowhere/Town'"),
            (_every(0), invalid, "interval must be positive"),
            (_every(-3), invalid, "interval must be positive"),
            # (its first fire past 9999-12-31 failed with UNKNOWN, a hostile trial)
            (_every(3e11), invalid, "interval must be at most 3155760000 seconds (100 years)"),
            (_schedule(), invalid, "needs an interval or a cron"),
            (_every(60, flow_name=""), invalid, "flow_name is required"),
            (_every(60, parameters={"zzz": value_of(1)}), invalid, "'zzz'"),
            (_every(60, parameters={"n": no_value}), invalid, "no value"),
            (  # (taken, every fire of the schedule failed: a hostile trial)
                _every(60, parameters={"n": unknown_encoding}),
                invalid,
                "parameter 'n' has encoding 'zzz', which no task can decode (the encodings "
                "are json, pickle, headwater.list",
            ),
        ]
        for schedule, code, fragment in cases:
            got, details = await status_of(
                client.CreateSchedule(cp.CreateScheduleRequest(schedule=schedule), metadata=AUTH)
            )
            assert (got, fragment in details, "\n" in details) == (code, True, False), details
        for call in (
            client.DeleteSchedule(cp.DeleteScheduleRequest(id="missing"), metadata=AUTH),
            client.PauseSchedule(cp.PauseScheduleRequest(id="missing"), metadata=AUTH),
            client.ResumeSchedule(cp.ResumeScheduleRequest(id="missing"), metadata=AUTH),
        ):
            got, details = await status_of(call)
            assert got == grpc.StatusCode.NOT_FOUND
            assert details == "schedule 'missing' does not exist"
        listed = await client.ListSchedules(cp.ListSchedulesRequest(), metadata=AUTH)
        assert list(listed.schedules) == []

    run_against_server(db, body)


@pytest.fixture
def server(db: str) -> Iterator[ServerThread]:
    s = ServerThread(db, token="tok")
    yield s
    s.stop()


def test_client_creates_lists_pauses_resumes_and_deletes_schedules(server: ServerThread) -> None:
    with Client(server.address, token="tok") as client:
        hourly = client.create_schedule(
            proto_pipeline, every=timedelta(hours=1), params={"n": 4, "factor": 2}
        )
        assert isinstance(hourly, ScheduleInfo)
        assert (hourly.flow_name, hourly.every, hourly.cron) == (
            "proto_pipeline",
            timedelta(hours=1),
            "",
        )
        assert hourly.parameters == {"n": 4, "factor": 2}
        assert hourly.flow_version == "1"  # a Flow object is deployed and pinned
        assert not hourly.paused and hourly.next_run_at is not None
        assert hourly.created_at is not None
        assert hourly.next_run_at - hourly.created_at == timedelta(hours=1)
        nightly = client.create_schedule(
            "proto_pipeline", cron="0 2 * * *", timezone="Europe/Berlin", paused=True, version="1"
        )
        assert (nightly.cron, nightly.timezone, nightly.paused) == (
            "0 2 * * *",
            "Europe/Berlin",
            True,
        )
        # Paused: no next run, as created, listed and paused (the stored time would be
        # long past by the time it is resumed, which fires at the first time after now).
        assert nightly.next_run_at is None
        assert nightly.spec == "cron '0 2 * * *' (Europe/Berlin)"
        assert {s.id for s in client.list_schedules()} == {hourly.id, nightly.id}
        assert client.list_schedules("other") == []
        resumed = client.resume_schedule(nightly.id)
        assert resumed.paused is False and resumed.next_run_at is not None
        assert resumed.next_run_at > datetime.now(UTC)
        paused = client.pause_schedule(hourly.id)
        assert paused.paused is True and paused.next_run_at is None
        assert {s.id: s.next_run_at for s in client.list_schedules()}[hourly.id] is None
        # "" named the only schedule (every id starts with it; a trial deleted it so),
        # and a whole id in capitals was "does not exist".
        for act in (client.delete_schedule, client.pause_schedule, client.resume_schedule):
            with pytest.raises(ValueError, match="give a schedule id"):
                act("")
        client.delete_schedule(hourly.id.upper())
        assert [s.id for s in client.list_schedules()] == [nightly.id]
        with pytest.raises(ServerError, match="does not exist") as info:
            client.delete_schedule(hourly.id)
        assert info.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(ServerError, match="invalid cron expression") as info:
            client.create_schedule("proto_pipeline", cron="99 * * * *")
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(ValueError, match="exactly one of every"):
            client.create_schedule("proto_pipeline")
        with pytest.raises(ValueError, match="every must be > 0"):
            client.create_schedule("proto_pipeline", every=0)
        # By name, unpinned: it fires the latest version; its runs name the schedule.
        often = client.create_schedule("proto_pipeline", every=0.1, params={"n": 1})
        assert often.flow_version == ""
        poll(lambda: len(client.list_runs()) >= 1, "a scheduled run")
        client.delete_schedule(often.id)
        runs = client.list_runs()
        assert {(r.schedule_id, r.flow_version) for r in runs} == {(often.id, "1")}


FLOW_FILE = """
from headwater import flow, task

@task
def shout(text: str) -> str:
    return text.upper()

@flow
def greet(text: str = "hi") -> str:
    return shout(text)
"""


def headwater_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "headwater._cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_schedules_large_parameter_outlives_every_prune(server: ServerThread) -> None:
    """A parameter too large to inline is uploaded and referenced by the schedule; the
    schedule recorded no reference, so a prune (the server's own, every 10 minutes)
    collected it a day later and every fire failed to download it."""
    import time

    from test_client import greet

    big = "x" * (3 << 20)
    with Client(server.address, token="tok") as client:
        made = client.create_schedule(greet, every=timedelta(hours=1), params={"text": big})
        assert server.running is not None
        store = server.running.store
        report = store.prune(None, time.time() + 86_400, grace=0.0)  # past any grace
        assert report.payloads == 0, report
        (listed,) = client.list_schedules()
        assert listed.id == made.id and listed.parameters == {"text": big}  # downloadable
        # A schedule an older server stored has no references: a server records them
        # when it loads the schedules (at start).
        row = store.get_schedule(made.id)
        store.put_schedule(dataclasses.replace(row, payload_ids=()))
        server.running.core.schedules.load()
        assert store.prune(None, time.time() + 86_400, grace=0.0).payloads == 0


def test_an_identical_schedule_is_returned_not_made_twice(db: str) -> None:
    """A deploy script that creates its schedules ran twice: two schedules, and every
    fire ran the flow twice. An identical request (flow, version, timing, time zone,
    parameters, catch-up) returns the schedule that exists, paused or not, audited
    once; any difference makes a new one; identical requests at once make one."""
    from test_server_protocol import TOKEN, serving

    async def main() -> None:
        async with serving(db, token=TOKEN, heartbeat_interval=0.5) as running:
            core = running.core
            requests = core.schedule_requests
            await core.register_flow(proto_pipeline.compile())

            def hourly(n: int = 1, tz: str = "", catchup: bool = False) -> run_pb2.Schedule:
                msg = _schedule(parameters={"n": value_of(n)}, enabled=True)
                msg.cron, msg.timezone, msg.catchup = "0 * * * *", tz, catchup
                return msg

            first, made, _ = await requests.create(hourly())
            assert made
            again, made_again, _ = await requests.create(hourly())
            assert (again.id, made_again) == (first.id, False)
            await requests.set_enabled(first.id, False)  # an operator pauses it
            paused, made, _ = await requests.create(hourly())  # the deploy runs again
            assert (paused.id, paused.enabled, made) == (first.id, False, False)
            others = [
                await requests.create(hourly(n=2)),
                await requests.create(hourly(tz="Europe/Berlin")),
                await requests.create(hourly(catchup=True)),
            ]
            assert all(made for _, made, _ in others)
            assert len({s.id for s, *_ in others} | {first.id}) == 4
            together = await asyncio.gather(*(requests.create(hourly(n=3)) for _ in range(8)))
            assert len({s.id for s, *_ in together}) == 1
            assert sum(made for _, made, _ in together) == 1
            stored = await core.io.read(core.store.list_schedules, "proto_pipeline")
            assert len(stored) == 5

    asyncio.run(main())


def test_a_named_schedule_replaces_its_flows_schedule_of_that_name(db: str) -> None:
    """A deploy after a change of the flow's code (a new version), its parameters or its
    timing made a second schedule beside the first, both firing (the CLI and the docs
    said to delete the old one by hand). A schedule created with the name of one of its
    flow's replaces it in one transaction: a new id, the same fire times (same timing),
    the old one's pause; a name another flow's schedule has is refused."""
    from test_client import greet

    async def body(channel: grpc.aio.Channel) -> None:
        client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
        for graph in (proto_pipeline.compile(), greet.compile()):
            await client.RegisterFlow(cp.RegisterFlowRequest(graph=graph), metadata=AUTH)

        async def create(msg: run_pb2.Schedule) -> cp.CreateScheduleResponse:
            request = cp.CreateScheduleRequest(schedule=msg)
            return await client.CreateSchedule(request, metadata=AUTH)

        async def stored() -> list[run_pb2.Schedule]:
            listed = await client.ListSchedules(cp.ListSchedulesRequest(), metadata=AUTH)
            return list(listed.schedules)

        def hourly(n: int, name: str = "hourly") -> run_pb2.Schedule:
            return _schedule(
                parameters={"n": value_of(n)}, enabled=True, cron="0 * * * *", name=name
            )

        first = await create(hourly(1))
        assert (first.created, first.replaced, first.schedule.name) == (True, "", "hourly")
        unnamed = (await create(hourly(1, name=""))).schedule  # no name: a schedule beside
        second = await create(hourly(2))
        assert second.created and second.replaced == first.schedule.id
        new = second.schedule
        assert new.id not in (first.schedule.id, unnamed.id)
        assert (new.created_at, new.next_run_at) == (
            first.schedule.created_at,
            first.schedule.next_run_at,
        )
        assert {s.id for s in await stored()} == {new.id, unnamed.id}
        same = await create(hourly(2))  # identical: returned as it is
        assert (same.created, same.replaced, same.schedule.id) == (False, "", new.id)
        paused = await client.PauseSchedule(cp.PauseScheduleRequest(id=new.id), metadata=AUTH)
        assert not paused.schedule.enabled
        third = await create(hourly(3))  # the deploy after an operator paused it
        assert third.replaced == new.id and not third.schedule.enabled
        assert not third.schedule.HasField("next_run_at")  # (paused: none shown)
        # A name is unique on the server: another flow's schedule cannot take it.
        taken = _schedule(flow_name="greet", cron="0 * * * *", enabled=True, name="hourly")
        code, details = await status_of(create(taken))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        assert details == (
            f"schedule name 'hourly' is taken by schedule {third.schedule.id} of flow "
            "'proto_pipeline': delete that schedule or choose another name"
        )
        for bad, fragment in [("x" * 201, "at most 200"), ("a\x1b[2Jb", "control characters")]:
            code, details = await status_of(create(hourly(4, name=bad)))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and fragment in details, details
        assert {s.id for s in await stored()} == {third.schedule.id, unnamed.id}
        # Two deploys at once: one replaces the schedule, the other what the first stored.
        both = await asyncio.gather(create(hourly(5)), create(hourly(6)))
        first_, second_ = sorted(both, key=lambda b: b.replaced != third.schedule.id)
        assert (first_.replaced, second_.replaced) == (third.schedule.id, first_.schedule.id)
        assert {s.id for s in await stored()} == {second_.schedule.id, unnamed.id}
        # Runs are listed by the name, as by an id.
        listed = await client.ListFlowRuns(
            cp.ListFlowRunsRequest(schedule_id="hourly"), metadata=AUTH
        )
        assert list(listed.flow_runs) == []

    run_against_server(db, body)


def test_the_client_and_the_cli_get_the_identical_schedule_that_exists(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Client(server.address, token="tok") as client:
        params = {"n": 4, "factor": 2}
        first = client.create_schedule(proto_pipeline, every=3600, params=params)
        again = client.create_schedule(proto_pipeline, every=3600, params=params)
        assert again.id == first.id and len(client.list_schedules()) == 1
        created = [e for e in client.audit("schedule") if e.action == "schedule.create"]
        assert [e.object_id for e in created] == [first.id]  # audited once: made once
    path = tmp_path / "greet.py"
    path.write_text(FLOW_FILE)
    where = ("--server", server.address, "--token", "tok")
    outs = []
    for _ in range(2):
        code = main(["schedules", "create", str(path), "--every", "1h", *where])
        out, _ = capsys.readouterr()
        assert code == 0
        outs.append(out.strip())
    assert outs[1] == outs[0] + "  (exists already: identical)"


def test_cli_schedules_create_list_pause_delete(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "greet.py"
    path.write_text(FLOW_FILE)
    where = ("--server", server.address, "--token", "tok")
    # The real command once; the rest in-process (same code, without an interpreter
    # start per call).
    created = headwater_cli(
        "schedules", "create", str(path), "--every", "1h30m", "--param", "text=yo", *where
    )
    assert created.returncode == 0, created.stderr
    schedule_id, state, flow_name, *_ = created.stdout.split()
    assert (state, flow_name) == ("active", "greet")
    assert "every 1h30m" in created.stdout

    def cli(*args: str) -> tuple[int, str, str]:
        code = main(["schedules", *args, *where])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = cli("create", str(path), "--cron", "*/5 * * * *", "--paused", "--catchup")
    assert code == 0 and " paused " in out
    code, out, _ = cli("list")
    assert code == 0 and len(out.splitlines()) == 2
    # a catch-up schedule says so (only --json did: a user trial)
    assert [line.split("  ")[3] for line in out.splitlines() if " paused " in line] == [
        "cron '*/5 * * * *' (catch-up)"
    ]
    code, out, _ = cli("list", "--json")
    listed = {s["id"]: s for s in json.loads(out)}
    assert code == 0 and len(listed) == 2
    assert listed[schedule_id]["every"] == 5400 and listed[schedule_id]["parameters"] == {
        "text": "yo"
    }
    assert [s["cron"] for s in listed.values() if s["paused"]] == ["*/5 * * * *"]
    # A cron schedule in a zone says its next time there, named (a bare local time
    # beside "(Europe/Berlin)" read as Berlin's: a trial).
    code, out, _ = cli("create", str(path), "--cron", "30 2 * * *", "--timezone", "Asia/Tokyo")
    assert code == 0 and re.search(r" next \d{4}-\d\d-\d\d 02:30:00 Asia/Tokyo$", out), out
    code, _, _ = cli("delete", out.split()[0])
    assert code == 0
    code, out, _ = cli("create", str(path), "--cron", "30 2 * * *")  # UTC, said so too
    assert code == 0 and re.search(r" next \d{4}-\d\d-\d\d 02:30:00 UTC$", out), out
    code, _, _ = cli("delete", out.split()[0])
    assert code == 0
    code, out, _ = cli("pause", schedule_id[:8])  # a unique prefix, as for run ids
    assert code == 0 and out.startswith(f"{schedule_id}  paused ")
    code, _, err = cli("resume", "")
    assert code == 2 and "give a schedule id" in err
    code, out, _ = cli("delete", schedule_id)
    assert code == 0 and schedule_id in out
    for args, fragment in [
        (("delete", schedule_id), "does not exist"),
        (("create", str(path), "--cron", "bad cron"), "five fields"),
        (("create", str(path), "--every", "soon"), "--every expects a duration"),
        (("create", str(path)), "exactly one of --every"),
    ]:
        code, _, err = cli(*args)
        assert code == 2, err
        assert err.count("\n") == 1 and fragment in err, err
    with Client(server.address, token="tok") as client:
        (left,) = client.list_schedules()
        assert left.cron == "*/5 * * * *" and left.paused
    # runs list --schedule: only the runs a schedule made, by its name or id, as
    # docs/schedules.md says (the option did not exist; the Client and the HTTP API had
    # the filter, a user trial)
    code, out, _ = cli("create", str(path), "--every", "200ms", "--name", "fast")
    assert code == 0, out
    fast_id = out.split()[0]
    with Client(server.address, token="tok") as client:
        poll(lambda: len(client.list_runs(schedule_id=fast_id)) >= 2, "two fires of 'fast'")
        by_hand = client.run("greet", {"text": "by hand"}).id
        client.pause_schedule("fast")  # (a fire under way may still land: compared below)

        def made() -> set[str]:
            return {r.id for r in client.list_runs(schedule_id=fast_id, limit=1000)}

        for which in ("fast", fast_id, fast_id[:8]):
            before = made()
            code = main(["runs", "list", "--schedule", which, "--limit", "1000", "--json", *where])
            out, _ = capsys.readouterr()
            rows = json.loads(out)
            listed = {r["id"] for r in rows}
            assert code == 0 and len(before) >= 2 and before <= listed <= made(), which
            assert by_hand not in listed
            # Each says the fire time it was for: on the schedule's 200 ms grid.
            fires = sorted(datetime.fromisoformat(r["fire_time"]) for r in rows)
            steps = {round((b - a).total_seconds() / 0.2, 6) for a, b in itertools.pairwise(fires)}
            assert all(step == int(step) >= 1 for step in steps), steps
    code = main(["runs", "list", "--schedule", "fast", "--state", "failed", *where])
    out, err = capsys.readouterr()
    assert (code, out) == (0, "") and err == "no flow runs match --schedule fast --state failed\n"


def test_a_deploy_with_a_schedule_name_changes_that_schedule_after_a_code_change(
    server: ServerThread, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As a deploy script would: `schedules create FILE --name` after each change of the
    flow's code. Unnamed, the second deploy (a new version) added a second schedule and
    both fired; named, it replaces the first, and the name serves as the schedule's
    handle for pause, resume and delete (CLI and Client)."""
    path = tmp_path / "greet.py"
    where = ("--server", server.address, "--token", "tok")

    def cli(*args: str) -> tuple[int, str, str]:
        code = main(["schedules", *args, *where])
        out, err = capsys.readouterr()
        return code, out, err

    path.write_text(FLOW_FILE)
    code, out, _ = cli("create", str(path), "--every", "1h")  # unnamed, then a change:
    unnamed = out.split()[0]
    path.write_text(FLOW_FILE.replace("text.upper()", "text.upper() + '?'"))
    code, out, err = cli("create", str(path), "--every", "1h")
    assert code == 0 and err == (
        f"note: flow 'greet' has 1 other active schedule(s) with the same timing "
        f"({unnamed[:8]} (v1)): they fire too. Delete them, or give schedules a --name: "
        "creating one with a name replaces the schedule of that name.\n"
    )
    for schedule_id in (unnamed, out.split()[0]):
        assert cli("delete", schedule_id)[0] == 0
    path.write_text(FLOW_FILE)
    code, out, _ = cli("create", str(path), "--every", "1h", "--name", "greet-hourly")
    first_id, name, state, _, version, *_ = out.split()
    assert code == 0 and (name, state, version) == ("greet-hourly", "active", "v1")  # (stored)
    path.write_text(FLOW_FILE.replace("text.upper()", "text.upper() + '!'"))  # a new version
    code, out, _ = cli("create", str(path), "--every", "1h", "--name", "greet-hourly")
    assert code == 0 and out.rstrip().endswith(f"(replaces {first_id})"), out
    second_id, _, _, _, version, *_ = out.split()
    assert second_id != first_id and version == "v3"  # (v2: the unnamed one's)
    code, out, _ = cli("list", "--json")
    (listed,) = json.loads(out)
    assert (listed["id"], listed["name"], listed["flow_version"]) == (
        second_id,
        "greet-hourly",
        "3",
    )
    code, _, err = cli("create", str(path), "--every", "1h", "--name", "a\nb")
    assert code == 2 and err == (
        "headwater: error: --name 'a\\nb' must not contain control characters\n"
    )
    code, out, _ = cli("pause", "greet-hourly")
    assert code == 0 and out.startswith(f"{second_id}  greet-hourly  paused ")
    with Client(server.address, token="tok") as client:
        assert client.resume_schedule("greet-hourly").id == second_id
        created = [e for e in client.audit("schedule") if e.action == "schedule.create"]
        assert [(e.object_id, e.detail) for e in created[:2]] == [  # (newest first)
            (second_id, f"greet, replacing {first_id}"),
            (first_id, "greet"),
        ]
        assert client.delete_schedule("greet-hourly") == second_id
        assert client.list_schedules() == []


def test_durations_are_written_and_shown_in_one_short_form() -> None:
    """The documented 1 ms interval floor could not be given (`--every 1ms` was refused)
    and intervals were shown as Python timedeltas (`every 0:00:00.500000`), not in the
    form --every takes (a user trial)."""
    from headwater.wire import format_duration, parse_duration

    for text, seconds in [("1ms", 0.001), ("500ms", 0.5), ("1.5s", 1.5), ("10s", 10.0),
                          ("1h30m", 5400.0), ("2d3h", 183600.0), ("1m0.25s", 60.25)]:  # fmt: skip
        assert parse_duration(text) == pytest.approx(seconds)
        assert format_duration(seconds) == text
    assert format_duration(7 * 86400) == "7d" and format_duration(3600.0004) == "1h"
    assert parse_duration("1m30s") == 90.0  # (minutes then seconds, not "ms")
    with pytest.raises(ValueError, match="such as 90, 500ms, 30s"):
        parse_duration("5 minutes")


def test_schedules_fire_and_change_with_their_store_work_off_the_event_loop(db: str) -> None:
    """A fire created its run on the event loop: a large scheduled flow held every client
    and worker up for as long as its run took to build and store (and the loop waited
    there for the writer thread's transaction). Creating, pausing, resuming and deleting
    a schedule wrote there too. Now each runs on the store's threads, and a fire's run
    and its schedule's next time are still stored together."""
    from test_server_protocol import TOKEN, serving

    watched = ("create_flow_run", "put_schedule", "get_schedule", "delete_schedule")
    seen: dict[str, set[str]] = {name: set() for name in watched}

    def record(name: str, method: Any) -> Any:
        def recorded(*args: Any, **kwargs: Any) -> Any:
            seen[name].add(threading.current_thread().name)
            return method(*args, **kwargs)

        return recorded

    async def main() -> str:
        async with (
            serving(db, token=TOKEN, heartbeat_interval=0.5, heartbeat_timeout=3600.0) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            store = running.core.store
            for name in watched:
                setattr(store, name, record(name, getattr(store, name)))
            client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
            graph = proto_pipeline.compile()
            await client.RegisterFlow(cp.RegisterFlowRequest(graph=graph), metadata=AUTH)
            schedule = _schedule(parameters={"n": value_of(1)}, enabled=True)
            schedule.interval.FromMilliseconds(100)
            request = cp.CreateScheduleRequest(schedule=schedule)
            created = (await client.CreateSchedule(request, metadata=AUTH)).schedule
            while True:  # bounded by the wait_for below
                listed = await client.ListFlowRuns(cp.ListFlowRunsRequest(), metadata=AUTH)
                if len(listed.flow_runs) >= 2:
                    break
                await asyncio.sleep(0.05)
            assert {r.schedule_id for r in listed.flow_runs} == {created.id}
            stored = store.get_schedule(created.id)  # (on the loop: the test's own read)
            assert stored.next_run_at > created.next_run_at.ToNanoseconds() / 1e9
            for call, message in [
                (client.PauseSchedule, cp.PauseScheduleRequest(id=created.id)),
                (client.ResumeSchedule, cp.ResumeScheduleRequest(id=created.id)),
                (client.DeleteSchedule, cp.DeleteScheduleRequest(id=created.id)),
            ]:
                await call(message, metadata=AUTH)
            loop_thread = threading.current_thread().name
            seen["get_schedule"].discard(loop_thread)  # (the test's read above)
            return loop_thread

    loop_thread = asyncio.run(asyncio.wait_for(main(), 60))
    assert all(seen.values()), seen
    on_loop = {name for name, threads in seen.items() if loop_thread in threads}
    assert on_loop == set(), f"{sorted(on_loop)} ran on the event loop's thread"


def _first_fire_after_a_failure(
    db: str, caplog: pytest.LogCaptureFixture, fail_once: Any
) -> tuple[list[str], str]:
    """A catch-up schedule every 0.3 s, whose first fire meets the failure
    ``fail_once(core)`` installs: the first run's idempotency key must be the first
    fire's (checked here); returns the keys of the runs listed then (newest first) and
    the one server log line saying the fire is tried again."""
    from test_server_protocol import TOKEN, serving

    from headwater.wire import fire_key

    async def main() -> tuple[str, float, list[str]]:
        async with (
            serving(db, token=TOKEN, heartbeat_interval=0.5, heartbeat_timeout=3600.0) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            fail_once(running.core)
            client = control_plane_pb2_grpc.ControlPlaneServiceStub(channel)
            graph = proto_pipeline.compile()
            await client.RegisterFlow(cp.RegisterFlowRequest(graph=graph), metadata=AUTH)
            schedule = _every(0.3, parameters={"n": value_of(1)}, enabled=True, catchup=True)
            request = cp.CreateScheduleRequest(schedule=schedule)
            created = (await client.CreateSchedule(request, metadata=AUTH)).schedule
            while True:  # bounded by the wait_for below
                listed = await client.ListFlowRuns(cp.ListFlowRunsRequest(), metadata=AUTH)
                if listed.flow_runs:
                    break
                await asyncio.sleep(0.05)
            keys = [r.idempotency_key for r in listed.flow_runs]
            return created.id, created.next_run_at.ToNanoseconds() / 1e9, keys

    with caplog.at_level(logging.WARNING, "headwater.scheduler"):
        schedule_id, first, keys = asyncio.run(asyncio.wait_for(main(), 60))
    assert keys[-1] == fire_key(schedule_id, first)  # the oldest run: the first fire's
    (said,) = [r.getMessage() for r in caplog.records if "could not fire" in r.getMessage()]
    return keys, said


def test_a_fire_the_store_fails_is_fired_again_not_skipped(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A fire whose run cannot be stored (the disk is full) keeps its fire time: it is
    fired again a moment later (with catch-up, as here, that time's run is created;
    without, only the latest time due then, as after downtime)."""
    from headwater_runtime.store import StoreUnavailable

    failures = [StoreUnavailable("database or disk is full")]

    def fail_once(core: Any) -> None:
        create = core.store.create_flow_run

        def failing_once(*args: Any, **kwargs: Any) -> Any:
            if failures:
                raise failures.pop()
            return create(*args, **kwargs)

        core.store.create_flow_run = failing_once

    _, said = _first_fire_after_a_failure(db, caplog, fail_once)
    assert not failures  # (the first fire met the failure)
    assert "database or disk is full" in said and "trying again in 1s" in said


def test_a_fire_whose_graph_build_is_unavailable_is_asked_again_a_moment_later(
    db: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A fire whose graph build failed because the worker left (BuildUnavailable) was
    fired again at once: a builder that left as soon as it was asked had the scheduler
    spin. It keeps its fire time and is fired again a second later."""
    from headwater_runtime.server._builds import BuildUnavailable

    calls: list[Any] = []

    def fail_once(core: Any) -> None:
        create = core.creation.create

        async def unavailable_once(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            if len(calls) == 1:
                raise BuildUnavailable("worker 'w' left before building the graph")
            return await create(*args, **kwargs)

        core.creation.create = unavailable_once

    _, said = _first_fire_after_a_failure(db, caplog, fail_once)
    assert len(calls) >= 2
    assert "left before building the graph" in said and "trying again in 1s" in said


def test_a_pause_beside_a_delete_does_not_bring_the_schedule_back(db: str) -> None:
    """A pause read the schedule on a reader thread, then stored it paused: a delete that
    came between the two was undone (the schedule stored again, and in the scheduler).
    Here the pause's store work straddles a delete: the schedule stays deleted and the
    pause says it is not found."""
    import contextvars

    from test_server_protocol import TOKEN, serving

    from headwater_runtime.store import NotFound

    pausing = contextvars.ContextVar("pausing", default=False)

    async def main() -> None:
        async with serving(db, token=TOKEN, heartbeat_interval=0.5) as running:
            core = running.core
            requests = core.schedule_requests
            await core.register_flow(proto_pipeline.compile())
            schedule = _schedule(parameters={"n": value_of(1)}, enabled=True)
            schedule.interval.FromSeconds(3600)
            created, *_ = await requests.create(schedule)
            read, write = core.io.read, core.io.write
            held, release = asyncio.Event(), asyncio.Event()

            async def read_then_hold(fn: Any, *args: Any, **kwargs: Any) -> Any:
                got = await read(fn, *args, **kwargs)
                if pausing.get() and not held.is_set():
                    held.set()
                    await release.wait()
                return got

            async def hold_then_write(fn: Any, *args: Any, **kwargs: Any) -> Any:
                if pausing.get() and not held.is_set():
                    held.set()
                    await release.wait()
                return await write(fn, *args, **kwargs)

            core.io.read, core.io.write = read_then_hold, hold_then_write
            context = contextvars.copy_context()
            context.run(pausing.set, True)
            pause = asyncio.get_running_loop().create_task(
                requests.set_enabled(created.id, False), context=context
            )
            await held.wait()  # the pause's first store work: done (a read) or not yet
            await requests.delete(created.id)
            release.set()
            with pytest.raises(NotFound):
                await pause
            with pytest.raises(NotFound):
                await read(core.store.get_schedule, created.id)
            assert created.id not in core.schedules._active

    asyncio.run(asyncio.wait_for(main(), 60))
