"""Leading and standing by: several servers on one PostgreSQL database.

With SQLite a server always leads. With PostgreSQL every server competes for the
lease (``store.Lease``): the one that holds it serves; the others are *standbys*
that answer the health service ``NOT_SERVING`` and refuse every other call with
``UNAVAILABLE``, naming the leader (in the details and in the trailing metadata
``headwater-leader``), so clients and workers given every address move to it.

A standby watches the lease and takes the lead as soon as it expires, that is at
most one lease period after the leader last renewed it (the leader renews every
quarter period). The new leader sweeps uploads the old one left, recovers the
unfinished runs from the journal, and serves. A leader that cannot renew (another
server took over while it was paused, or it lost the database) or whose commit was
fenced steps down: it stops serving and starts again as a standby. Its writes after
the takeover were refused by the store (the epoch fences every transaction), so
nothing it did after it lost the lead was stored or released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from headwater.wire import LEADER_METADATA, STANDBY_REFUSAL
from headwater_runtime.store import Fenced, Store

from ._auth import _Handler

if TYPE_CHECKING:
    from headwater_runtime.store import Lease

log = logging.getLogger("headwater.server")

#: Calls a standby still answers: health checks (they say NOT_SERVING) and reflection.
_ALWAYS_OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class Leadership:
    """Whether this server may serve now, and who leads when it may not.

    Args:
        lease: the PostgreSQL lease (None: a SQLite store, which always leads).
    """

    def __init__(self, lease: Lease | None) -> None:
        self.lease = lease
        self.leading = lease is None
        self.leader = ""  # HOST:PORT of the leader, as the lease names it
        self.epoch = 0

    @classmethod
    def for_store(cls, store: Store, address: str, duration: float) -> Leadership:
        """A PostgreSQL store competes for its lease; any other store leads at once."""
        # Looked up, not imported: a store whose module was never imported is not one
        # (and a SQLite server does not import psycopg, ~60 ms of its start).
        postgres = sys.modules.get("headwater_runtime.store._postgres")
        if postgres is None or not isinstance(store, postgres.PostgresStore):
            return cls(None)
        from headwater_runtime.store import Lease

        return cls(Lease(store, uuid.uuid4().hex, address, duration))

    def refusal(self) -> str:
        """What a standby answers calls with."""
        who = f"the leader is {self.leader}" if self.leader else "no server leads right now"
        if self.leader and self.lease is not None and self.leader == self.lease.address:
            # This address's previous server (killed, restarted on the same port): its
            # lease still names it until it runs out, then this one takes the lead.
            who = f"a previous server at {self.leader} leads until its lease runs out"
        return f"{STANDBY_REFUSAL}: {who} (lease epoch {self.epoch}); call the leader"

    async def try_lead(self) -> bool:
        """Take the lead if nobody holds the lease (always True without a lease)."""
        if self.lease is None:
            return True
        lease = self.lease
        epoch = await asyncio.to_thread(lease.acquire)
        if epoch is not None:
            self.epoch, self.leader = epoch, lease.address
            return True
        state = await asyncio.to_thread(lease.read)
        self.epoch, self.leader = state.epoch, state.address
        return False

    async def wait_to_lead(self) -> None:
        """Stand by until the lease expires, then take the lead. Wakes when the lease
        read last is due to expire (at most every quarter period), so a leader that
        died is replaced within one lease period of its last renewal."""
        assert self.lease is not None
        lease = self.lease
        while True:
            try:
                state = await asyncio.to_thread(lease.read)
                self.epoch, self.leader = state.epoch, state.address
                if state.remaining < 0 and await self.try_lead():
                    return
                wait = min(max(state.remaining, 0.0) + 0.01, lease.duration / 4)
            except Exception as exc:  # the database is away: keep trying
                log.warning("cannot read the leader lease (%s); trying again", exc)
                wait = lease.duration / 4
            await asyncio.sleep(wait)

    async def keep(self, fenced: Callable[[], bool]) -> str:
        """Renew the lease every quarter period until it is lost; why it was lost.
        ``fenced`` says whether a commit was refused for a newer epoch (then this
        server steps down at once, without waiting for the next renewal)."""
        assert self.lease is not None
        lease = self.lease
        tick = min(0.25, lease.duration / 8)
        renew_every = lease.duration / 4
        loop = asyncio.get_running_loop()
        renewed = next_renewal = loop.time()
        while True:
            await asyncio.sleep(tick)
            if fenced():
                return "a write was refused: another server took the lead"
            now = loop.time()
            if now < next_renewal:
                continue
            next_renewal = now + renew_every
            # A renewal that hangs (a network partition) counts as failed once the
            # lease would have run out: the leader steps down within its lease.
            left = max(tick, renewed + lease.duration - now)
            try:
                renewal = asyncio.to_thread(lease.renew)
                if not await asyncio.wait_for(renewal, left):
                    return "another server took the lead (the lease epoch moved on)"
                renewed = loop.time()
            except Exception as exc:
                why = str(exc) or "no answer from the database"
                if loop.time() - renewed >= lease.duration:
                    return f"the lease could not be renewed for a whole period ({why})"
                log.warning("cannot renew the leader lease (%s); trying again", why)

    def give_up(self) -> None:
        """This server stepped down: a renewal still in flight renews nothing."""
        if self.lease is not None:
            self.lease.given_up = True
        self.leading = False

    async def release(self) -> None:
        """Give the lease up (a clean stop): a standby takes over at once."""
        if self.lease is not None and self.leading:
            self.leading = False
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.lease.release)


def is_fenced(error: BaseException | None) -> bool:
    """Whether a commit failed because another server took the lead."""
    return isinstance(error, Fenced)


class LeaderGate(grpc.aio.ServerInterceptor):
    """Refuses calls with UNAVAILABLE, naming the leader, while this server stands by
    (health checks and reflection still answer).

    Args:
        leadership: says whether this server leads.
    """

    def __init__(self, leadership: Leadership) -> None:
        self.leadership = leadership

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler[Any, Any] | None:
        """The call's handler while leading; else one that refuses it."""
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or self.leadership.leading
            or handler_call_details.method.startswith(_ALWAYS_OPEN)
        ):
            return handler
        return _refuse(handler, self.leadership)


def _refuse(handler: _Handler[Any, Any], leadership: Leadership) -> _Handler[Any, Any]:
    """A handler of the same streaming kind that fails with UNAVAILABLE."""

    async def abort(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if leadership.leader:
            context.set_trailing_metadata(((LEADER_METADATA, leadership.leader),))
        await context.abort(grpc.StatusCode.UNAVAILABLE, leadership.refusal())

    async def abort_stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        # An async generator, like the streaming servicers: an interceptor in front
        # (authentication) iterates what the handler returns.
        await abort(request, context)
        yield  # never reached: abort raises

    deserialize, serialize = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort, deserialize, serialize)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort_stream, deserialize, serialize)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort, deserialize, serialize)
    return grpc.stream_stream_rpc_method_handler(abort_stream, deserialize, serialize)
