"""``headwater limits|workers|webhooks|audit ...`` against a server (docs/operations.md,
docs/security.md#audit)."""

from __future__ import annotations

import argparse
import dataclasses
from datetime import UTC, datetime
from typing import Any

from headwater.wire import (
    AUDIT_KINDS,
    AUDIT_PAGE_MAX,
    MAX_COUNT,
    WEBHOOK_STATES,
    FlowRunState,
    parse_rate,
    printable,
)

from ._access_info import AuditEntry
from ._cli_connect import add_connection_args, connect
from ._cli_remote import EXIT_OK, _json, local_time, server_address
from ._cli_render import nothing_listed
from ._client_ops import LimitInfo, WebhookInfo, WorkerInfo
from ._errors import UsageError

# ------------------------------------------------------------------------- limits


def limit_line(limit: LimitInfo) -> str:
    """``db  concurrency 3  rate 10/1s  running 3  waiting 5``."""
    parts = [limit.tag]
    if limit.concurrency:
        parts.append(f"concurrency {limit.concurrency}")
    if limit.rate:
        parts.append(f"rate {limit.rate}/{limit.rate_period:g}s")
    parts.append(f"running {limit.running}")
    parts.append(f"waiting {limit.waiting}")
    return "  ".join(parts)


def cmd_limits(args: argparse.Namespace) -> int:
    """``headwater limits set|list|delete``."""
    if args.json and args.action != "list":
        raise UsageError("--json: only for 'limits list'")
    with connect(args, server_address(args)) as client:
        if args.action == "list":
            limits = client.list_limits()
            if args.json:  # (as workers list --json: a user trial missed it)
                print(_json([dataclasses.asdict(limit) for limit in limits]))
                return EXIT_OK
            if not limits:
                nothing_listed("limits")
            for limit in limits:
                print(limit_line(limit))
            return EXIT_OK
        if not args.tag:
            raise UsageError(f"'limits {args.action}' needs a TAG")
        if args.action == "delete":
            client.delete_limit(args.tag)
            print(f"limit of tag {args.tag} deleted")
            return EXIT_OK
        if args.concurrency is None and args.rate is None:
            raise UsageError("'limits set' needs --concurrency N, --rate COUNT/PERIOD or both")
        if args.concurrency is not None and not 1 <= args.concurrency <= MAX_COUNT:
            raise UsageError(f"--concurrency must be 1 to {MAX_COUNT:,}, got {args.concurrency}")
        rate = None
        if args.rate is not None:
            try:
                rate = parse_rate(args.rate)
            except ValueError as exc:
                raise UsageError(f"--rate {exc}") from None
        limit = client.set_limit(args.tag, concurrency=args.concurrency or 0, rate=rate)
        print(limit_line(limit))
        return EXIT_OK


def add_limits_command(sub: Any) -> None:
    """Add ``headwater limits``."""
    limits = sub.add_parser(
        "limits",
        help="concurrency and rate limits by task tag, across all runs and workers",
        description="Limit the task runs of tasks tagged TAG (@task(tags=[...])) on the whole "
        "server: at most N running at once (--concurrency) and/or at most COUNT started per "
        "PERIOD (--rate 10/s, 100/m, 5/10s). 'set' replaces the tag's whole limit: give both "
        "flags to keep both. A task run waiting for a limit shows 'waiting on "
        "limit TAG (N/N)' in 'headwater runs show'. Limits survive server restarts.",
    )
    limits.add_argument("action", choices=["set", "list", "delete"])
    limits.add_argument("tag", nargs="?", help="the tag (set, delete)")
    limits.add_argument("--concurrency", type=int, default=None, help="set: most running at once")
    limits.add_argument(
        "--rate", default=None, metavar="COUNT/PERIOD", help="set: most started per period"
    )
    limits.add_argument("--json", action="store_true", help="list: as a JSON list, for scripts")
    add_connection_args(limits)
    limits.set_defaults(func=cmd_limits, late_positional="tag")


# ------------------------------------------------------------------------ workers


def _ago(when: datetime | None) -> str:
    if when is None:
        return "never"
    seconds = max(0.0, (datetime.now(UTC) - when).total_seconds())
    return f"{seconds:.0f}s ago" if seconds < 120 else local_time(when)


def worker_line(worker: WorkerInfo) -> str:
    """One worker: name, online/offline (drained), slots, heartbeat, version, what it
    runs."""
    status = "online" if worker.online else "offline"
    if worker.draining:
        status += ", draining" + (" (exit when idle)" if worker.exit_when_idle else "")
    labels = ",".join(f"{k}={v}" for k, v in sorted(worker.labels.items())) or "-"
    version = f"{worker.language} {worker.version}".strip() or "-"
    slots = f"{worker.slots_used}/{worker.slots}" if worker.online else f"-/{worker.slots}"
    return printable(
        f"{worker.name}  {status}  slots {slots}  heartbeat {_ago(worker.last_heartbeat)}  "
        f"version {version}  labels {labels}  capabilities {','.join(worker.capabilities)}"
    )


def worker_json(worker: WorkerInfo) -> dict[str, Any]:
    """A worker as JSON (``workers list --json``): its last heartbeat in ISO 8601."""
    body = dataclasses.asdict(worker)
    body["last_heartbeat"] = worker.last_heartbeat.isoformat() if worker.last_heartbeat else None
    return body


def cmd_workers(args: argparse.Namespace) -> int:
    """``headwater workers list|drain|resume``."""
    with connect(args, server_address(args)) as client:
        if args.action == "list":
            listed = client.list_workers(online_only=args.online)
            if args.json:
                print(_json([worker_json(worker) for worker in listed]))
            elif not listed:
                nothing_listed("online workers" if args.online else "workers")
            else:
                for worker in listed:
                    print(worker_line(worker))
            return EXIT_OK
        if not args.name:
            raise UsageError(f"'workers {args.action}' needs a worker NAME")
        if args.action == "drain":
            workers = client.drain_worker(args.name, exit_when_idle=args.exit)
        else:
            workers = client.resume_worker(args.name)
        for worker in workers:
            print(worker_line(worker))
        return EXIT_OK


def add_workers_command(sub: Any) -> None:
    """Add ``headwater workers``."""
    workers = sub.add_parser(
        "workers",
        help="list the workers of a server; drain one for maintenance",
        description="List the workers a server knows (online or offline, capabilities, "
        "labels, slots used/total, last heartbeat, version), or drain the workers of a "
        "name: they finish the attempts they run and take no new ones until resumed "
        "(--exit: they exit once idle).",
    )
    workers.add_argument("action", choices=["list", "drain", "resume"])
    workers.add_argument("name", nargs="?", help="worker name (drain, resume)")
    workers.add_argument("--online", action="store_true", help="list: only connected workers")
    workers.add_argument("--json", action="store_true", help="list: print JSON")
    workers.add_argument(
        "--exit", action="store_true", help="drain: ask the worker to exit once idle"
    )
    add_connection_args(workers)
    workers.set_defaults(func=cmd_workers, late_positional="name")


# ----------------------------------------------------------------------- webhooks


def webhook_line(hook: WebhookInfo) -> str:
    """One webhook: id, URL, filters, deliveries."""
    flows = ",".join(hook.flows) or "every flow"
    states = ",".join(s.name for s in hook.states) or "every state"
    late = " + late runs" if hook.late else ""
    error = f"  last error: {hook.last_error}" if hook.last_error else ""
    return (
        f"{hook.id}  {hook.url}  {flows}  {states}{late}  pending {hook.pending}  "
        f"failed {hook.failed}{error}"
    )


def _state(name: str) -> FlowRunState:
    state = FlowRunState.__members__.get(name.strip().upper())
    if state not in WEBHOOK_STATES:
        names = ", ".join(s.name for s in WEBHOOK_STATES)
        raise UsageError(f"--state {name!r} is not a state a webhook fires for ({names})")
    return state


def cmd_webhooks(args: argparse.Namespace) -> int:
    """``headwater webhooks create|list|delete``."""
    if args.action != "create":
        given = [f for f, v in (("--flow", args.flow), ("--state", args.state),
                 ("--late", args.late), ("--secret", args.secret)) if v]  # fmt: skip
        if given:  # (taken and ignored by list, a user trial)
            raise UsageError(f"{', '.join(given)}: only for 'webhooks create'")
        if args.action == "list" and args.target:
            raise UsageError("'webhooks list' takes no URL or id")
    states = [_state(s) for s in args.state or ()]
    with connect(args, server_address(args)) as client:
        if args.action == "list":
            hooks = client.list_webhooks()
            if not hooks:
                nothing_listed("webhooks")
            for hook in hooks:
                print(webhook_line(hook))
            return EXIT_OK
        if not args.target:
            what = "URL" if args.action == "create" else "webhook ID"
            raise UsageError(f"'webhooks {args.action}' needs a {what}")
        if args.action == "delete":  # (the Client takes a unique prefix of the id)
            try:
                print(f"webhook {client.delete_webhook(args.target)} deleted")
            except ValueError as exc:  # an ambiguous prefix
                raise UsageError(str(exc)) from None
            return EXIT_OK
        hook = client.create_webhook(
            args.target,
            flows=args.flow or (),
            states=states,
            late=args.late,
            secret=args.secret or "",
        )
        print(webhook_line(hook))
        return EXIT_OK


def add_webhooks_command(sub: Any) -> None:
    """Add ``headwater webhooks``."""
    hooks = sub.add_parser(
        "webhooks",
        help="POST flow run state changes to a URL",
        description="Tell a URL (a JSON POST) when a flow run changes state, optionally only "
        "for some flows and states, and when a run is late. Deliveries are made at least "
        "once, retried with backoff, and survive server restarts (docs/operations.md).",
    )
    hooks.add_argument("action", choices=["create", "list", "delete"])
    hooks.add_argument(
        "target", nargs="?", help="create: the URL; delete: the webhook id (or a unique prefix)"
    )
    hooks.add_argument(
        "--flow", action="append", help="create: only runs of this flow (repeatable)"
    )
    hooks.add_argument(
        "--state",
        action="append",
        help="create: only changes to this state, e.g. FAILED (repeatable)",
    )
    hooks.add_argument("--late", action="store_true", help="create: also when a run is late")
    hooks.add_argument("--secret", default=None, help="create: sign each body (HMAC-SHA256)")
    add_connection_args(hooks)
    hooks.set_defaults(func=cmd_webhooks, late_positional="target")


# -------------------------------------------------------------------------- audit


def audit_line(entry: AuditEntry) -> str:
    """``2026-01-02 03:04:05  ops  limit.set  limit db  concurrency 3`` (local time)."""
    line = f"{local_time(entry.at)}  {entry.actor}  {entry.action}  "
    line += f"{entry.object_kind} {entry.object_id}"
    return printable(f"{line}  {entry.detail}" if entry.detail else line)


def cmd_audit(args: argparse.Namespace) -> int:
    """``headwater audit [--kind KIND] [--object ID] [--limit N]``."""
    if not 1 <= args.limit <= AUDIT_PAGE_MAX:
        raise UsageError(f"--limit must be in 1..{AUDIT_PAGE_MAX}, got {args.limit}")
    with connect(args, server_address(args)) as client:
        entries = client.audit(args.kind or "", args.object or "", args.limit)
    if not entries:
        nothing_listed("audit entries", [("--kind", args.kind), ("--object", args.object)])
    for entry in entries:
        print(audit_line(entry))
    return EXIT_OK


def add_audit_command(sub: Any) -> None:
    """Add ``headwater audit``."""
    audit = sub.add_parser(
        "audit",
        help="who (credential name) deployed, ran, cancelled, paused or changed what",
        description="Print a server's audit log, newest first, one line per entry: the "
        "time (local), the credential, the action, the object's kind and id, and details. "
        "Entries record flows deployed, runs created, cancelled and retried, schedules "
        "created, paused, resumed and deleted, limits set and deleted, workers drained "
        "and resumed, credentials created and revoked (docs/security.md#audit).",
    )
    audit.add_argument(
        "--kind",
        default=None,
        metavar="KIND",
        help=f"only entries about this kind of object: {', '.join(AUDIT_KINDS)}",
    )
    audit.add_argument(
        "--object",
        default=None,
        metavar="ID",
        help="only entries about this object (a run id or schedule id, or a unique "
        "prefix of one; a flow's NAME:VERSION, a limit's tag, a worker or credential name)",
    )
    audit.add_argument(
        "--limit",
        type=int,
        default=100,
        metavar="N",
        help=f"print at most N entries, the newest (1..{AUDIT_PAGE_MAX}, default 100)",
    )
    add_connection_args(audit)
    audit.set_defaults(func=cmd_audit)


def add_ops_commands(sub: Any) -> None:
    """Add ``headwater limits``, ``workers``, ``webhooks`` and ``audit``."""
    add_limits_command(sub)
    add_workers_command(sub)
    add_webhooks_command(sub)
    add_audit_command(sub)
