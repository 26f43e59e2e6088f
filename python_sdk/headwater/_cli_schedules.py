"""``headwater schedules create|list|delete|pause|resume`` against a server."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from headwater.wire import check_name, parse_duration, printable

from ._cli_connect import add_connection_args, connect
from ._cli_remote import EXIT_OK, _json, local_time, server_address
from ._cli_render import nothing_listed, user_output_to_stderr
from ._errors import UsageError
from ._loader import load_flow
from ._schedule_info import ScheduleInfo


def parse_every(text: str) -> float:
    """``90``, ``30s``, ``5m``, ``1h``, ``1h30m``, ``2d``, ``1w`` -> seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"--every {exc}") from None


def _line(s: ScheduleInfo) -> str:
    state = "paused" if s.paused else "active"
    version = f" v{s.flow_version}" if s.flow_version else " (latest)"
    nxt = f"next {_next_time(s)}" if s.next_run_at and not s.paused else ""
    named = f"  {printable(s.name)}" if s.name else ""
    spec = f"{s.spec} (catch-up)" if s.catchup else s.spec  # (said by --json only)
    return f"{s.id}{named}  {state:6}  {s.flow_name}{version}  {spec}  {nxt}".rstrip()


def _next_time(s: ScheduleInfo) -> str:
    """The next fire time: a cron schedule's in its own time zone, named (beside the
    spec "(Europe/Berlin)" a bare local time read as Berlin's: a trial); other
    schedules' in local time, as the CLI prints times."""
    if s.cron and s.next_run_at is not None:  # (UTC's too: it read as local time)
        from zoneinfo import ZoneInfo

        there = s.next_run_at.astimezone(ZoneInfo(s.timezone))
        return f"{there.strftime('%Y-%m-%d %H:%M:%S')} {s.timezone}"
    return local_time(s.next_run_at)


def schedule_json(s: ScheduleInfo) -> dict[str, Any]:
    """A schedule as JSON (``schedules list --json``): times in ISO 8601, ``every`` in
    seconds."""
    return {
        "id": s.id,
        "name": s.name,
        "flow_name": s.flow_name,
        "flow_version": s.flow_version,
        "every": s.every.total_seconds() if s.every is not None else None,
        "cron": s.cron,
        "timezone": s.timezone,
        "paused": s.paused,
        "catchup": s.catchup,
        "next_run_at": s.next_run_at.isoformat() if s.next_run_at else None,
        "created_at": s.created_at.isoformat() if s.created_at else None,
        "parameters": s.parameters,
    }


def _warn_of_twins(listed: list[ScheduleInfo], made: ScheduleInfo) -> None:
    """A new unnamed schedule beside another of its flow with the same timing (a deploy
    of changed code: a new version) is most likely meant to replace it: say that both
    fire, and how a name avoids it (on stderr: stdout stays the one line)."""
    twins = [s for s in listed if s.id != made.id and s.spec == made.spec and not s.paused]
    if twins:
        shown = ", ".join(f"{s.id[:8]} (v{s.flow_version or ' latest'})" for s in twins[:3])
        print(
            f"note: flow {made.flow_name!r} has {len(twins)} other active schedule(s) with "
            f"the same timing ({shown}): they fire too. Delete them, or give schedules a "
            "--name: creating one with a name replaces the schedule of that name.",
            file=sys.stderr,
        )


def cmd_schedules(args: argparse.Namespace) -> int:
    """``headwater schedules create|list|delete|pause|resume``; prints one line each."""
    address = server_address(args)
    with connect(args, address) as client:
        if args.action == "create":
            from ._cli import flow_params

            if (args.every is None) == (args.cron is None):
                raise UsageError("give exactly one of --every DURATION or --cron EXPRESSION")
            if args.name:
                try:
                    check_name("--name", args.name)
                except ValueError as exc:
                    raise UsageError(str(exc)) from None
            with user_output_to_stderr():  # (the module loads, the flow's body runs)
                flow = load_flow(args.target)
                schedule, created, replaced = client._create_schedule(
                    flow,
                    parse_every(args.every) if args.every is not None else None,
                    args.cron,
                    flow_params(flow, args.param),
                    args.timezone,
                    args.paused,
                    args.catchup,
                    "",
                    args.name or "",
                )
            # (an identical schedule is not made twice: the one that exists is shown)
            if not created:
                note = "  (exists already: identical)"
            elif replaced:
                note = f"  (replaces {replaced})"
            else:
                note = ""
            print(_line(schedule) + note)
            if created and not replaced and not schedule.name:
                _warn_of_twins(client.list_schedules(schedule.flow_name), schedule)
        elif args.action == "list":
            listed = client.list_schedules(args.flow or "")
            if args.json:
                print(_json([schedule_json(schedule) for schedule in listed]))
            elif not listed:
                nothing_listed("schedules", [("--flow", args.flow)])
            else:
                for schedule in listed:
                    print(_line(schedule))
        else:
            if not args.schedule_id:
                raise UsageError("give a schedule id or name (see 'schedules list')")
            try:  # (the Client takes a name, or a unique prefix of the id)
                if args.action == "delete":
                    print(f"schedule {client.delete_schedule(args.schedule_id)} deleted")
                elif args.action == "pause":
                    print(_line(client.pause_schedule(args.schedule_id)))
                else:
                    print(_line(client.resume_schedule(args.schedule_id)))
            except ValueError as exc:  # an ambiguous prefix
                raise UsageError(str(exc)) from None
    return EXIT_OK


def add_schedules_command(sub: Any) -> None:
    """Add ``headwater schedules`` and its actions to the CLI's subcommands."""
    schedules = sub.add_parser(
        "schedules",
        help="create, list, pause, resume or delete schedules on a server",
        description="Schedules make a Headwater server create runs of a flow at fixed "
        "intervals or at the times of a cron expression (docs/schedules.md).",
    )
    actions = schedules.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="deploy a flow and schedule its runs",
        description="Deploy a flow and create a schedule for it. After downtime only the most "
        "recent missed time fires, unless --catchup.",
    )
    create.add_argument("target", help="FILE.py[:FLOW] or package.module[:FLOW]")
    create.add_argument(
        "--every",
        metavar="DURATION",
        help="interval: 90, 500ms, 30s, 5m, 1h, 1h30m, 1d (at least 1ms)",
    )
    create.add_argument("--cron", metavar="EXPRESSION", help='five-field cron, e.g. "*/5 * * * *"')
    create.add_argument(
        "--timezone", default="UTC", help="IANA time zone the cron is read in (default UTC)"
    )
    create.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="flow parameter for every run, converted to its annotation (as for `headwater run`)",
    )
    create.add_argument(
        "--name",
        help="name the schedule (unique on the server): creating one with the name of "
        "this flow's schedule replaces that schedule, keeping its pause (and, with the "
        "same timing, its fire times); pause, resume and delete take the name too",
    )
    create.add_argument(
        "--paused",
        action="store_true",
        help="create it paused (a replacement of a named one keeps that one's pause)",
    )
    create.add_argument(
        "--catchup", action="store_true", help="after downtime, fire every missed time"
    )
    add_connection_args(create)
    listing = actions.add_parser(
        "list",
        help="list schedules",
        description="List a server's schedules, one line each: id, name, active or paused, "
        "flow and version, timing (marked '(catch-up)' when every missed time fires) and "
        "the next fire time (local; a cron schedule's in its own time zone, named).",
    )
    listing.add_argument("--flow", help="only schedules of this flow")
    listing.add_argument("--json", action="store_true", help="print JSON")
    add_connection_args(listing)
    for name, what in [
        ("delete", "delete a schedule (its runs are kept)"),
        ("pause", "stop a schedule from creating runs"),
        ("resume", "resume a paused schedule from its next fire time after now"),
    ]:
        action = actions.add_parser(name, help=what, description=what[0].upper() + what[1:] + ".")
        action.add_argument(
            "schedule_id",
            help="schedule id, name, or a unique prefix of an id (see 'schedules list')",
        )
        add_connection_args(action)
    schedules.set_defaults(func=cmd_schedules)
