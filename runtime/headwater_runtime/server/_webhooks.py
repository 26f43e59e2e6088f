"""Webhooks: POST a JSON body to a URL when a flow run changes state (or is late).

At least once, never blocking the server:

1. A state change of a flow run (started, retried, ended) or a late mark adds one
   delivery per matching webhook to the **outbox** (``webhook_outbox``), in the same
   transaction as the change itself: a crash cannot lose one without the other.
2. After that commit, the ``Deliverer`` (an asyncio task) reads due deliveries on a
   reader thread and POSTs each from a thread of its own (urllib, with a timeout), a
   few at once, at most one per webhook: a receiver that hangs holds back only its own
   deliveries (one batch used to wait for its slowest POST, so a hanging receiver
   delayed every other webhook's, a user trial). The server's event loop never waits
   on a receiver.
3. A 2xx answer deletes the delivery. Anything else (an error status, a refused
   connection, a timeout) schedules the next try with exponential backoff
   (``webhook_backoff`` doubling up to ``webhook_backoff_max``); after
   ``webhook_max_attempts`` tries the delivery is given up and kept, counted as failed
   in ``headwater webhooks list``. A restart resumes the outbox where it was.

A delivery may arrive more than once (a crash between the POST and its deletion):
each carries its id in ``X-Headwater-Delivery`` for receivers that deduplicate. With a
secret, ``X-Headwater-Signature`` is the hex HMAC-SHA256 of the body.

The body:

    {"event": "flow_run.state_changed", "flow_run_id": "...", "flow_name": "etl",
     "flow_version": "3", "state": "FAILED", "message": "...", "attempt": 1,
     "late": false, "late_reason": "", "at": "2026-01-02T03:04:05.678+00:00",
     "url": "http://ui.example/runs/<id>"}

``event`` is ``flow_run.late`` for a late mark (``state`` is then RUNNING). ``url``
links to the run in the web UI when the server knows the UI's address (``ui_url``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlparse

from headwater.wire import WEBHOOK_STATES, FlowRunState
from headwater_runtime.store import (
    DeliveryRow,
    FlowRunRow,
    OpsWrites,
    Store,
    StoreUnavailable,
    WebhookRow,
)

from ._io import StoreIO, to_its_end

log = logging.getLogger("headwater.server")

EVENT_STATE = "flow_run.state_changed"
EVENT_LATE = "flow_run.late"
#: Deliveries tried at once.
CONCURRENCY = 4


class WebhookError(ValueError):
    """A webhook that cannot be created (a bad URL); INVALID_ARGUMENT."""


@dataclass(frozen=True)
class DeliverySettings:
    """How webhook deliveries are tried."""

    max_attempts: int = 10
    backoff: float = 1.0
    backoff_max: float = 300.0
    timeout: float = 10.0


#: The longest webhook URL (as browsers and most servers take; 200,000 characters
#: were stored, and shown in every listing: a hostile trial).
MAX_URL = 2048


#: The flow run states a webhook can fire for (headwater.wire.WEBHOOK_STATES).
EVENT_STATES = WEBHOOK_STATES


def check_url(url: str) -> str:
    """A webhook URL, checked (WebhookError names what is wrong)."""
    if len(url) > MAX_URL:
        raise WebhookError(f"webhook URL is {len(url):,} characters long (at most {MAX_URL:,})")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise WebhookError(f"webhook URL {url!r} must be an http:// or https:// URL")
    if any(c <= " " or c == "\x7f" for c in url):
        raise WebhookError(f"webhook URL {url!r} must not contain spaces or control characters")
    try:
        port = parsed.port  # (ValueError for a port that is not a number in range)
    except ValueError as exc:
        raise WebhookError(f"webhook URL {url!r} has a bad port: {exc}") from None
    if not parsed.hostname or port == 0:
        raise WebhookError(f"webhook URL {url!r} must name a host (and a port from 1)")
    return url


def run_link(ui_url: str, flow_run_id: str) -> str:
    """The run's page in the web UI ("" when the server does not know the UI's URL)."""
    return f"{ui_url.rstrip('/')}/runs/{flow_run_id}" if ui_url else ""


def body(
    event: str,
    row: FlowRunRow,
    attempt: int,
    at: float,
    ui_url: str,
    late_reason: str = "",
) -> bytes:
    """The JSON body of a delivery (see the module docstring)."""
    doc = {
        "event": event,
        "flow_run_id": row.id,
        "flow_name": row.flow_name,
        "flow_version": row.flow_version,
        "state": FlowRunState(row.state).name,
        "message": row.message,
        "attempt": attempt,
        "late": bool(late_reason),
        "late_reason": late_reason,
        "at": datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds"),
        "url": run_link(ui_url, row.id),
    }
    return json.dumps(doc, sort_keys=True).encode()


class Webhooks:
    """The webhooks (kept in memory, stored in the store) and what they are sent.

    Args:
        store: where webhooks and the outbox are kept.
        io: the store's threads.
        clock: seconds since the epoch.
        ui_url: the web UI's base URL, for links ("" for none).
    """

    def __init__(
        self, store: Store, io: StoreIO, clock: Callable[[], float], ui_url: str = ""
    ) -> None:
        self.store = store
        self.io = io
        self.clock = clock
        self.ui_url = ui_url
        self.hooks: dict[str, WebhookRow] = {}

    def load(self) -> None:
        """Read the stored webhooks (at start, off the loop)."""
        self.hooks = {w.id: w for w in self.store.list_webhooks()}

    async def create(
        self,
        url: str,
        flow_names: tuple[str, ...] = (),
        states: tuple[int, ...] = (),
        late: bool = False,
        secret: str = "",
    ) -> WebhookRow:
        """Store a new webhook; WebhookError for a bad URL."""
        for state in states:
            try:
                named = FlowRunState(state)
            except ValueError:
                raise WebhookError(f"{state} is not a flow run state") from None
            if named not in EVENT_STATES:  # (taken, such a webhook never fired: a user trial)
                raise WebhookError(
                    f"a flow run never changes to {named.name} after it is created: a webhook "
                    f"fires for {', '.join(s.name for s in EVENT_STATES)} (and late marks)"
                )
        row = WebhookRow(
            uuid.uuid4().hex, check_url(url), flow_names, states, late, secret, self.clock()
        )
        await to_its_end(self._add(row), "storing a webhook")
        return row

    async def _add(self, row: WebhookRow) -> None:
        await self.io.write(self.store.put_webhook, row)
        self.hooks[row.id] = row

    async def delete(self, webhook_id: str) -> None:
        """Remove a webhook and its pending deliveries (NotFound if unknown)."""
        await to_its_end(self._delete(webhook_id), "removing a webhook")

    async def _delete(self, webhook_id: str) -> None:
        await self.io.write(self.store.delete_webhook, webhook_id)
        self.hooks.pop(webhook_id, None)

    def matching(self, row: FlowRunRow, *, late: bool = False) -> list[WebhookRow]:
        """The webhooks told about this change of ``row`` (a late mark with ``late``)."""
        found = []
        for hook in self.hooks.values():
            if hook.flow_names and row.flow_name not in hook.flow_names:
                continue
            if late:
                if hook.late:
                    found.append(hook)
            elif not hook.states or row.state in hook.states:
                found.append(hook)
        return found

    def enqueue(self, ops: OpsWrites, row: FlowRunRow, attempt: int, late_reason: str = "") -> int:
        """Add the deliveries of a change to the batch being gathered (stored with the
        change); how many."""
        hooks = self.matching(row, late=bool(late_reason))
        if not hooks:
            return 0
        now = self.clock()
        event = EVENT_LATE if late_reason else EVENT_STATE
        data = body(event, row, attempt, now, self.ui_url, late_reason)
        for hook in hooks:
            ops.deliveries.append(DeliveryRow(hook.id, data, next_at=now, created_at=now))
        return len(hooks)


class Deliverer:
    """Makes the outbox's deliveries (see the module docstring).

    Args:
        webhooks: the webhooks (their URLs and secrets).
        settings: attempts and backoff.
        on_outcome: called with True or False after each try (metrics).
    """

    def __init__(
        self,
        webhooks: Webhooks,
        settings: DeliverySettings,
        on_outcome: Callable[[bool], None] | None = None,
    ) -> None:
        self.webhooks = webhooks
        self.settings = settings
        self.on_outcome = on_outcome
        self.delivered = 0
        self.failures = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Deliveries being made, by webhook id (one at most per webhook).
        self._inflight: dict[str, asyncio.Task[None]] = {}
        #: Deliveries ended so far: a read of the outbox during which one ended may hold
        #: that delivery as it was before (still due, one try short) and is not acted on.
        self._ended = 0
        self._threads = concurrent.futures.ThreadPoolExecutor(
            CONCURRENCY, thread_name_prefix="headwater-webhook"
        )

    def start(self) -> None:
        """Begin delivering (on the event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop delivering; deliveries not made stay in the outbox for the next start."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._inflight.values()):
            task.cancel()
        self._inflight.clear()
        self._threads.shutdown(wait=False, cancel_futures=True)

    def wake(self) -> None:
        """New deliveries were stored: look at the outbox now."""
        self._wake.set()

    async def _run(self) -> None:
        store, io = self.webhooks.store, self.webhooks.io
        while True:
            # Cleared before the outbox is read, not after: a wake() while it is read
            # (a delivery stored meanwhile) was lost, and that delivery waited for the
            # next one, up to 60 s.
            self._wake.clear()
            try:
                started = False
                room = CONCURRENCY - len(self._inflight)
                if room > 0:
                    # (each webhook's oldest due delivery: those of busy ones are skipped)
                    ended = self._ended
                    due = await io.read(
                        store.due_deliveries, self.webhooks.clock(), room + len(self._inflight)
                    )
                    if ended != self._ended:
                        # A delivery ended while the outbox was read: what was read may
                        # show it as before its outcome was written (it was tried one
                        # time too many). Read again.
                        continue
                    for delivery in due:
                        if room > 0 and delivery.webhook_id not in self._inflight:
                            self._start(delivery)
                            started, room = True, room - 1
                if started:
                    continue
                next_at = await io.read(store.next_delivery_at)
                if self._inflight and next_at is not None:
                    # Due deliveries of a webhook whose POST is under way wait for it
                    # (its end wakes this loop); look again within a second meanwhile.
                    next_at = max(next_at, self.webhooks.clock() + 1.0)
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:  # the database is away: one line, as elsewhere
                log.warning("cannot read the webhook outbox (%s); trying again shortly", exc)
                next_at = self.webhooks.clock() + 1.0
            except Exception:
                log.exception("webhook deliveries failed; trying again shortly")
                next_at = self.webhooks.clock() + 1.0
            wait = 60.0 if next_at is None else max(0.0, next_at - self.webhooks.clock())
            try:
                async with asyncio.timeout(min(wait, 60.0)):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _start(self, delivery: DeliveryRow) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver_one(delivery))
        self._inflight[delivery.webhook_id] = task

    async def _deliver_one(self, delivery: DeliveryRow) -> None:
        try:
            await self._deliver(delivery)
        except asyncio.CancelledError:
            raise
        except StoreUnavailable as exc:
            log.warning("cannot record a webhook delivery (%s); it is tried again", exc)
        except Exception:
            log.exception("webhook delivery %d failed; it is tried again", delivery.id)
        finally:
            self._inflight.pop(delivery.webhook_id, None)
            self._ended += 1
            self._wake.set()

    async def _deliver(self, delivery: DeliveryRow) -> None:
        hook = self.webhooks.hooks.get(delivery.webhook_id)
        store, io = self.webhooks.store, self.webhooks.io
        if hook is None:  # deleted meanwhile (its deliveries went with it)
            return
        loop = asyncio.get_running_loop()
        error = await loop.run_in_executor(self._threads, self._post, hook, delivery)
        if self.on_outcome is not None:
            self.on_outcome(error is None)
        if error is None:
            self.delivered += 1
            await io.write(store.delivery_done, delivery.id)
            return
        self.failures += 1
        attempts = delivery.attempts + 1
        next_at: float | None = None
        delay = 0.0
        if attempts < self.settings.max_attempts:
            delay = min(self.settings.backoff_max, self.settings.backoff * 2 ** (attempts - 1))
            next_at = self.webhooks.clock() + delay
        then = "giving up" if next_at is None else f"trying again in {delay:g}s"
        log.log(
            logging.WARNING if next_at is None else logging.INFO,
            "webhook %s: delivery %d to %s failed (%s); %s",
            hook.id,
            delivery.id,
            hook.url,
            error,
            then,
        )
        await io.write(store.delivery_failed, delivery.id, attempts, next_at, error)

    def _post(self, hook: WebhookRow, delivery: DeliveryRow) -> str | None:
        """POST one delivery (in a thread); None on success, else why it failed."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "headwater-webhook",
            "X-Headwater-Delivery": str(delivery.id),
        }
        if hook.secret:
            mac = hmac.new(hook.secret.encode(), delivery.body, hashlib.sha256)
            headers["X-Headwater-Signature"] = mac.hexdigest()
        request = urllib.request.Request(hook.url, delivery.body, headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout) as answer:
                status = answer.status
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (OSError, ValueError, http.client.HTTPException) as exc:  # InvalidURL too
            return f"{type(exc).__name__}: {exc}"
        return None if 200 <= status < 300 else f"HTTP {status}"
