"""The Python task worker: dials a control plane, holds one Connect stream, runs tasks.

Threads: ``run()`` reads the server's messages; gRPC drains a request generator fed
from a queue (which also sends the heartbeats); attempts run on threads of their own
(``_worker_attempts``). Values cross the wire through ``_worker_codec``.

Reconnects: a broken stream is dialled again with exponential backoff, capped at half a
second for the first 30 s after a connection that worked broke (a restarting server is
usually back by then, and its queued work should not wait for our backoff). ``Hello.running``
names the attempts still executing *and* those whose outcome the server has not
acknowledged; the ones the Welcome keeps go on (their outcomes are sent again), the
others are abandoned. A bad token, or a refusal before any Welcome (protocol, a
server without the worker gateway), stops the worker with WorkerError.

Several servers (``"a:1,b:2"``, servers sharing one PostgreSQL database): the worker
connects to one; when it cannot, or a standby refuses it, it tries the leader that
standby named (if it is one of the addresses) or the next address. A standby's refusal
is retried after a short pause rather than the growing backoff: a takeover is near.
"""

from __future__ import annotations

import collections
import logging
import os
import platform
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from queue import Empty, SimpleQueue
from types import ModuleType
from typing import Any

import grpc

from headwater.v1 import worker_pb2, worker_pb2_grpc
from headwater.wire import (
    BATCH,
    DRAIN,
    GRPC_MESSAGE_LIMIT,
    NOT_READY,
    PROTOCOL_VERSION,
    STANDBY_REFUSAL,
    Addresses,
    ConnectionSettings,
    PayloadTransfer,
    TLSSettings,
    explain_unreachable,
    gather,
    leader_hint,
    limit_variable,
    message_limit,
    open_channel,
    seconds,
)
from headwater_runtime.embedded import default_thread_count

from ._builtins import BUILTIN_TASKS
from ._loader import LoadError, load_file, load_module
from ._task import Task
from ._worker_attempts import Attempts, fencing, key_of
from ._worker_codec import failure
from ._worker_flows import FlowLauncher, GraphBuilder, collect_flows, offers

log = logging.getLogger("headwater.worker")

#: Reconnect backoff: INITIAL doubling up to MAX, times a random factor in [0.5, 1].
BACKOFF_INITIAL, BACKOFF_MAX = 0.1, 5.0
#: For this long after a connection that had been welcomed broke, tries are at most
#: BACKOFF_SOON apart: a restarting server is usually back within seconds, and queued
#: work should start at most about that long after it listens again.
SOON_WINDOW, BACKOFF_SOON = 30.0, 0.5
#: Pause before trying again after a standby refused the worker (a takeover is near).
STANDBY_PAUSE = 0.25
#: Ack.code of a refused report (google.rpc.Code FAILED_PRECONDITION).
FAILED_PRECONDITION = 9
#: Heartbeat interval used when the Welcome gives none.
DEFAULT_HEARTBEAT = 10.0
#: Tasks' log records kept while the worker has no server (a restart), for the next
#: one: at most this many (~the lines of a chatty task for minutes; the oldest go).
OFFLINE_LOGS = 10_000
#: Refusals that retrying cannot fix: a bad token, or a server that will not take this
#: worker (protocol, no worker gateway) before it ever welcomed it.
_FATAL = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
_FATAL_BEFORE_WELCOME = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED,
}
# gRPC's own reconnect backoff (1 s growing to 120 s) would delay ours.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5000),
]
#: Marker put on a session's queue to make the request generator send a heartbeat.
_BEAT = worker_pb2.ConnectRequest()
#: Seconds between two lines saying that one address refuses or cannot be reached.
SAY_EVERY = 10.0
#: Seconds a stopping worker waits for the server to close its stream after giving
#: its attempts back (then it cancels the stream: the server counts them lost).
GIVE_BACK_WAIT = 2.0


def reconnect_delay(failures: int, since_lost: float) -> float:
    """How long to wait before the next try (before jitter), after ``failures`` failed
    tries, ``since_lost`` seconds after a welcomed connection broke."""
    cap = BACKOFF_SOON if since_lost < SOON_WINDOW else BACKOFF_MAX
    return min(cap, BACKOFF_INITIAL * 2.0**failures)


class WorkerError(Exception):
    """The server refused the worker for good (bad token, incompatible protocol)."""


def import_module(target: str) -> ModuleType:
    """``path/to/file.py`` (imported under its stem) or ``package.module``."""
    if target.endswith(".py") or "/" in target:
        return load_file(target)
    try:
        return load_module(target)
    except LoadError:
        raise
    except Exception as exc:
        raise LoadError(f"cannot import {target}: {type(exc).__name__}: {exc}") from exc


def collect_tasks(modules: Iterable[ModuleType]) -> dict[str, Task[..., Any]]:
    """Every Task in the modules' namespaces, plus the built-ins, by task type."""
    tasks: dict[str, Task[..., Any]] = {t.task_type: t for t in BUILTIN_TASKS}
    for module in modules:
        # A remote task is implemented elsewhere: this worker cannot run it.
        found = [obj for obj in vars(module).values() if isinstance(obj, Task) and obj.has_function]
        if not found:
            log.warning("module %s defines no @task", module.__name__)
        for task in found:
            other = tasks.setdefault(task.task_type, task)
            if other.fn is not task.fn:
                raise LoadError(
                    f"task type {task.task_type!r} is defined twice (in {module.__name__} "
                    "and elsewhere); give one of them another task_type="
                )
    return tasks


@dataclass(eq=False)
class _Session:
    """One Connect stream."""

    hello: worker_pb2.Hello
    outbox: SimpleQueue[worker_pb2.ConnectRequest | None] = field(default_factory=SimpleQueue)
    welcome: worker_pb2.Welcome | None = None
    call: Any = None
    last_received: float = field(default_factory=time.monotonic)
    interval: float = DEFAULT_HEARTBEAT
    next_beat: float | None = None
    batching: bool = False  # the Welcome lists the "batch" feature


def _request_batch(messages: list[worker_pb2.ConnectRequest]) -> worker_pb2.ConnectRequest:
    return worker_pb2.ConnectRequest(batch=worker_pb2.ConnectRequestBatch(messages=messages))


class Worker:
    """A task worker. ``run()`` blocks until ``stop()`` (or a fatal refusal, which
    raises WorkerError); it reconnects on its own when the stream breaks.

    Args:
        server: ``HOST:PORT`` of the control plane, or several comma-separated
            (servers sharing one database: the worker follows the leader).
        modules: modules (``pkg.mod``) or files (``path/x.py``) whose tasks to run.
        labels: affinity labels, e.g. ``{"gpu": "true"}``.
        slots: most attempts running at once (default: CPUs + 4, at most 32).
        name: display name (default ``HOSTNAME-PID``).
        token: bearer token sent with every call.
        on_connect: called once, after the first Welcome.
        allow_stale_code: report no code digests, so the server gives this worker
            tasks whatever code the run's graph was built with (docs/flows.md, "No
            stale code"); by default a task whose code here differs is not given to it.
        tls: how to secure the connection (default: HEADWATER_TLS, HEADWATER_TLS_CA,
            HEADWATER_TLS_CERT and HEADWATER_TLS_KEY; plaintext when none is set).
        max_message_bytes: the largest message the worker accepts (default:
            HEADWATER_MAX_MESSAGE_BYTES, else gRPC's 4 MiB). A server started with a
            larger ``--max-message-bytes`` refuses a worker below it (docs/limits.md).
    """

    #: Optional protocol features a kind of worker adds to its Hello.
    extra_features: tuple[str, ...] = ()

    def __init__(
        self,
        server: str,
        modules: Iterable[str] = (),
        *,
        labels: Mapping[str, str] | None = None,
        slots: int | None = None,
        name: str | None = None,
        token: str | None = None,
        on_connect: Callable[[Worker], None] | None = None,
        allow_stale_code: bool = False,
        tls: TLSSettings | None = None,
        max_message_bytes: int | None = None,
    ) -> None:
        if not server:
            raise ValueError("the server address must be HOST:PORT")
        self.max_message_bytes = message_bytes(max_message_bytes)
        self._channel_options = [
            *_CHANNEL_OPTIONS,
            ("grpc.max_receive_message_length", self.max_message_bytes),
        ]
        self.addresses = Addresses(server)
        self.slots = default_thread_count() if slots is None else slots
        if self.slots < 1:
            raise ValueError(f"slots must be at least 1, got {self.slots}")
        self.server = server
        self.labels = dict(labels or {})
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.worker_id = os.urandom(16).hex()
        imported = [import_module(m) for m in modules]
        self.tasks = collect_tasks(imported)
        self.flows = collect_flows(imported)
        self.allow_stale_code = allow_stale_code
        # Taken now, as imported: the digests say which code this process runs.
        self.code_digests = {} if allow_stale_code else _digests(self.tasks)
        self.tls = tls if tls is not None else TLSSettings.from_env()
        settings = ConnectionSettings(server, token, self.tls)
        self.metadata = settings.metadata()
        self._on_connect = on_connect
        self._stop = threading.Event()
        # Its own generator: the reconnect jitter must not touch the global random state
        # of the application the worker may be embedded in.
        self._jitter = random.Random()
        self._session: _Session | None = None
        #: Tasks' log records written while no session was welcomed, and how many more.
        self._offline_logs: collections.deque[worker_pb2.ConnectRequest] = collections.deque(
            maxlen=OFFLINE_LOGS
        )
        self._offline_dropped = 0
        self._connected_once = False
        self._payload_channel: grpc.Channel | None = None
        self._payload_address = ""
        #: The server drained this worker and asked it to exit once idle (Drain).
        self.exit_when_idle = False
        #: Set when the worker stopped because a drain asked it to.
        self.drained = False
        self.attempts = Attempts(self.tasks, self.slots, self.name, self._send)
        self.attempts.launcher = FlowLauncher(settings, self.attempts.lending)
        self.builder = GraphBuilder(self.flows, self._send)
        self._lock = self.attempts.lock

    # Lifecycle ---------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The server address the worker uses now (one of ``server``'s)."""
        return self.addresses.current

    def _current_payload_channel(self) -> grpc.Channel:
        channel = self._payload_channel
        assert channel is not None  # (set before the first transfer)
        return channel

    def _use_payload_channel(self) -> None:
        """Payload transfers go to the server the worker is connected to."""
        old = self._payload_channel
        if old is not None and self._payload_address == self.address:
            return
        channel = open_channel(self.address, self.tls, self._channel_options)
        self._payload_channel, self._payload_address = channel, self.address
        # (A transfer under way when the worker moves to another server goes on there.)
        self.attempts.transfer = PayloadTransfer(
            channel, self.metadata, follow=self._current_payload_channel
        )
        self.builder.transfer = self.attempts.transfer
        if old is not None:
            old.close()

    def run(self) -> None:
        """Serve until stopped; raises WorkerError when the server refuses for good."""
        self._use_payload_channel()
        logging.getLogger().addHandler(self.attempts.log_handler)
        try:
            failures = 0
            lost_at = -SOON_WINDOW  # when a welcomed connection last broke (monotonic)
            said: dict[str, float] = {}  # address -> when its refusal was last logged
            while not self._stop.is_set():
                address = self.address
                welcomed, why, hint = self._session_once()
                if self._stop.is_set():
                    break
                standby = STANDBY_REFUSAL in why
                if welcomed:
                    failures, lost_at = 0, time.monotonic()
                    log.warning("lost the connection to %s (%s); reconnecting", address, why)
                elif time.monotonic() - said.get(address, -SAY_EVERY) >= SAY_EVERY:
                    # Once per address per SAY_EVERY: during a failover the dead leader
                    # and the standby answer in turn, and each turn was a line.
                    said[address] = time.monotonic()
                    if standby:
                        log.warning("%s stands by (%s); waiting for a leader", address, why)
                    else:
                        if why.startswith("UNAVAILABLE"):  # a TLS mismatch says so, with the fix
                            why = explain_unreachable(address, self.tls) or why
                        log.warning("cannot connect to %s (%s); retrying", address, why)
                if not welcomed and self.addresses.several:
                    self.addresses.advance(hint)
                delay = reconnect_delay(failures, time.monotonic() - lost_at)
                if standby:
                    # A standby answered: a takeover is due within its lease. Do not
                    # let the dead leader's refusals grow the backoff meanwhile.
                    delay, failures = STANDBY_PAUSE, 0
                else:
                    failures += 1
                self._stop.wait(delay * self._jitter.uniform(0.5, 1.0))
        finally:
            logging.getLogger().removeHandler(self.attempts.log_handler)
            self.attempts.abandon_all()
            self.attempts.close()
            if self._payload_channel is not None:
                self._payload_channel.close()

    def stop(self) -> None:
        """Stop taking work and make ``run()`` return. The worker says it is stopping
        (``Stopping``: the server assigns it nothing more), the attempts running now are
        interrupted and given back (``TaskCancelled`` the server did not ask for: it
        dispatches them again and counts no loss), then the stream is ended; one the
        server has not closed within ``GIVE_BACK_WAIT`` seconds is cancelled."""
        self._stop.set()
        with self._lock:
            session = self._session
        if session is None or session.call is None:
            return
        if session.welcome is None:
            session.call.cancel()
            return
        session.outbox.put(worker_pb2.ConnectRequest(stopping=worker_pb2.Stopping()))
        for message in self.attempts.give_back_all():
            session.outbox.put(message)
        session.outbox.put(None)  # the end of the stream, once they are sent
        cancel = threading.Timer(GIVE_BACK_WAIT, session.call.cancel)
        cancel.daemon = True
        cancel.start()

    # One session -------------------------------------------------------------------

    def _session_once(self) -> tuple[bool, str, str]:
        """Connect and serve until the stream ends: whether the server welcomed us, why
        the stream ended, and the leader a standby named ("" if none)."""
        channel = open_channel(self.address, self.tls, self._channel_options)
        with self._lock:
            session = _Session(self._hello())
            self._session = session
        code, details = grpc.StatusCode.OK, "the server closed the stream"
        hint = ""
        try:
            stub = worker_pb2_grpc.WorkerGatewayServiceStub(channel)
            with self._lock:
                session.call = stub.Connect(self._requests(session), metadata=self.metadata)
                if self._stop.is_set():
                    session.call.cancel()
            for response in session.call:
                session.last_received = time.monotonic()
                try:
                    self._handle(session, response)
                except Exception:
                    log.exception("could not handle a %s", response.WhichOneof("message"))
                self._exit_if_drained()
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
            hint = leader_hint(exc)
        finally:
            with self._lock:
                self._session = None
            session.outbox.put(None)
            channel.close()
        welcomed = session.welcome is not None
        fatal = code in _FATAL or (not welcomed and code in _FATAL_BEFORE_WELCOME)
        if fatal and not self._stop.is_set():
            raise WorkerError(f"the server at {self.address} refused this worker: {details}")
        return welcomed, f"{code.name}: {details}", hint

    def _hello(self) -> worker_pb2.Hello:
        return worker_pb2.Hello(
            worker_id=self.worker_id,
            name=self.name,
            protocol_version=PROTOCOL_VERSION,
            capabilities=sorted(self.tasks),
            labels=self.labels,
            slots=self.slots,
            runtime=worker_pb2.RuntimeInfo(
                language="python",
                language_version=platform.python_version(),
                sdk_version=_sdk_version(),
                hostname=socket.gethostname(),
                pid=os.getpid(),
            ),
            running=[fencing(t) for t in self.attempts.held()],
            features=[BATCH, DRAIN, *self.builder.feature, *self.extra_features],
            code_digests=self.code_digests,
            flows=offers(self.flows),
            max_message_bytes=self.max_message_bytes,
        )

    def _requests(self, session: _Session) -> Iterator[worker_pb2.ConnectRequest]:
        """What gRPC sends: the Hello, then the session's queue, plus heartbeats."""

        def beat() -> worker_pb2.ConnectRequest:
            session.next_beat = time.monotonic() + session.interval
            return worker_pb2.ConnectRequest(heartbeat=self.attempts.heartbeat())

        def ready() -> Any:  # a ConnectRequest, None (the end) or NOT_READY
            try:
                queued = session.outbox.get_nowait()
            except Empty:
                return NOT_READY
            return beat() if queued is _BEAT else queued

        yield worker_pb2.ConnectRequest(hello=session.hello)
        while True:
            timeout = None
            if session.next_beat is not None:
                timeout = max(0.0, session.next_beat - time.monotonic())
            try:
                message = session.outbox.get(timeout=timeout)
            except Empty:
                message = _BEAT
            if message is None:
                return
            if message is _BEAT:
                self._exit_if_drained()
                if self._server_silent(session):
                    session.call.cancel()
                    return
                message = beat()
            elif session.batching and not session.outbox.empty():
                message, done = gather(message, ready, _request_batch)
                if done:
                    yield message
                    return
            yield message

    def _exit_if_drained(self) -> None:
        """A drain asked this worker to exit once idle: stop when it holds no attempt
        and every outcome was acknowledged."""
        if self.exit_when_idle and not self._stop.is_set() and not self.attempts.held():
            log.warning("drained and idle: exiting")
            self.drained = True
            threading.Thread(target=self.stop, daemon=True).start()

    def _server_silent(self, session: _Session) -> bool:
        """Whether the server has said nothing (not even a HeartbeatAck) for longer
        than its heartbeat timeout plus one interval: then the stream is presumed dead."""
        welcome = session.welcome
        limit = seconds(welcome.heartbeat_timeout) if welcome is not None else 0.0
        silent = time.monotonic() - session.last_received
        if limit > 0 and silent > limit + session.interval:
            log.warning("no message from %s for %.1fs", self.address, silent)
            return True
        return False

    def _send(self, message: worker_pb2.ConnectRequest) -> None:
        """Queue a message on the current session once it is welcomed. Otherwise a
        task's log record is kept (up to OFFLINE_LOGS) for the next Welcome, and
        anything else dropped (outcomes are kept by Attempts and sent again after the
        next Welcome)."""
        session = self._session
        if session is not None and session.welcome is not None and not self._stop.is_set():
            session.outbox.put(message)
        elif message.HasField("log") and not self._stop.is_set():
            # (What a task printed while its server restarted was lost: 20 of 40 lines,
            # a user trial.) The oldest go first when there are too many.
            with self._lock:  # (_welcome sends them under it: none is left behind)
                session = self._session
                if session is not None and session.welcome is not None:
                    session.outbox.put(message)
                    return
                if len(self._offline_logs) == self._offline_logs.maxlen:
                    self._offline_dropped += 1
                self._offline_logs.append(message)

    # Server messages ---------------------------------------------------------------

    def _handle(self, session: _Session, response: worker_pb2.ConnectResponse) -> None:
        kind = response.WhichOneof("message")
        if kind == "batch":
            for inner in response.batch.messages:
                if inner.WhichOneof("message") not in ("batch", "welcome"):
                    self._handle(session, inner)
            return
        elif kind == "welcome":
            self._welcome(session, response.welcome)
        elif session.welcome is None:
            log.warning("ignoring a %s sent before the Welcome", kind)
        elif kind == "assignment":
            self.attempts.assign(response.assignment)
        elif kind == "cancel":
            self.attempts.cancel(key_of(response.cancel.token))
        elif kind == "export_value":
            self._export(response.export_value)
        elif kind == "build_graph":
            self.builder.request(response.build_graph)
        elif kind == "release_values":
            self._release(response.release_values)
        elif kind == "heartbeat_ack":
            for token in response.heartbeat_ack.cancel:
                self.attempts.cancel(key_of(token))
        elif kind == "cache_decision":
            decision = response.cache_decision
            self.attempts.decided(key_of(decision.token), decision.hit)
        elif kind == "drain":
            self.exit_when_idle = response.drain.exit_when_idle and not response.drain.cancelled
            log.warning(
                "the server %s this worker%s",
                "resumed" if response.drain.cancelled else "drained",
                "; exiting once idle" if self.exit_when_idle else "",
            )
        elif kind == "ack":
            ack = response.ack
            resent = self.attempts.acked(key_of(ack.token))
            if not ack.accepted and resent and ack.code == FAILED_PRECONDITION:
                # Sent again after a reconnect (its first answer was lost with the
                # session): usually the server had stored it before it restarted.
                log.info(
                    "the server did not take the outcome of %s attempt %d sent again after "
                    "reconnecting (stored before the server restarted, or settled "
                    "meanwhile): %s",
                    ack.token.task_run_id,
                    ack.token.attempt,
                    ack.reason or "no reason given",
                )
            elif not ack.accepted:
                log.warning(
                    "the server refused the outcome of %s attempt %d: %s",
                    ack.token.task_run_id,
                    ack.token.attempt,
                    ack.reason or "no reason given",
                )

    def _release(self, request: worker_pb2.ReleaseValues) -> None:
        """Only a Dask bridge worker holds values (and lists the feature that asks)."""

    def _export(self, request: worker_pb2.ExportValue) -> None:
        """Only a Dask bridge worker holds values outside the control plane."""
        error = failure(
            "headwater.NotHeld",
            f"this worker holds no value {request.payload_id!r} (it is not a Dask bridge)",
            retryable=False,
        )
        answer = worker_pb2.ValueExported(payload_id=request.payload_id, error=error)
        self._send(worker_pb2.ConnectRequest(value_exported=answer))

    def _welcome(self, session: _Session, welcome: worker_pb2.Welcome) -> None:
        interval = seconds(welcome.heartbeat_interval)
        held = {key_of(t) for t in session.hello.running}
        keep = {key_of(t) for t in welcome.keep_running}
        with self._lock:
            session.interval = interval if interval > 0 else DEFAULT_HEARTBEAT
            session.batching = BATCH in welcome.features
            self.attempts.inline_limit = int(welcome.inline_payload_limit)
            self.builder.inline_limit = self.attempts.inline_limit
            self.attempts.max_message_bytes = message_limit(welcome.max_message_bytes)
            self.builder.max_message_bytes = self.attempts.max_message_bytes
            resend = self.attempts.keep(held, keep)
            session.welcome = welcome
            self._use_payload_channel()
            # What tasks logged meanwhile, before the outcomes that follow it (the
            # server takes the records of the attempts this session holds).
            for message in self._offline_logs:
                session.outbox.put(message)
            if self._offline_dropped:
                log.warning(
                    "%d log records of tasks written while the server was away were "
                    "dropped (more than %d)",
                    self._offline_dropped,
                    OFFLINE_LOGS,
                )
            self._offline_logs.clear()
            self._offline_dropped = 0
            for message in resend:
                session.outbox.put(message)
            session.outbox.put(_BEAT)
            first = not self._connected_once
            self._connected_once = True
        if first and self._on_connect is not None:
            self._on_connect(self)
        elif not first:
            log.info("reconnected to %s", self.address)


def message_bytes(given: int | None) -> int:
    """The worker's largest accepted message: ``given``, else the environment's, else
    gRPC's default; ValueError naming the setting when it is not a size in bytes."""
    variable = limit_variable("max_message_bytes")
    source = "the worker's --max-message-bytes"
    if given is None:
        text = os.environ.get(variable, "").strip()
        if not text:
            return GRPC_MESSAGE_LIMIT
        try:
            given = int(text)
        except ValueError:
            raise ValueError(f"{variable} must be a number of bytes, got {text!r}") from None
        source = variable  # (the setting came from there: name it, not the flag)
    if given < GRPC_MESSAGE_LIMIT:
        raise ValueError(
            f"{source} must be at least {GRPC_MESSAGE_LIMIT} (gRPC's default), got {given}"
        )
    return given


def _digests(tasks: Mapping[str, Task[..., Any]]) -> dict[str, str]:
    """The code digest of every task this worker runs that has one, by task type."""
    digests = {task_type: task.code_digest for task_type, task in tasks.items()}
    return {task_type: digest for task_type, digest in digests.items() if digest}


def _sdk_version() -> str:
    from . import __version__

    return __version__
