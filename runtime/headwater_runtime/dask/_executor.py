"""DaskExecutor: run an embedded flow's task functions on a Dask cluster.

The engine stays in this process; task attempts are Dask tasks. A result stays in the
cluster as the future of its attempt, and a downstream task receives that future as an
argument of ``client.submit`` (Dask resolves it on the worker), so large data never
passes through this process. Only the flow's result is gathered for the caller.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from queue import SimpleQueue
from typing import Any

from distributed import Client, Future, LocalCluster

from headwater.wire import FailureInfo, TaskSpec
from headwater_runtime.embedded import (
    ResultCache,
    cache_snapshot,
    make_cache_key,
    thaw,
    warn_at_task,
)
from headwater_runtime.engine import (
    CacheEntry,
    Event,
    RunTask,
    Step,
    TaskFailed,
    TaskLost,
    TaskSkipped,
    TaskStarted,
    TaskSucceeded,
)
from headwater_runtime.execution import Caller, failure_from_exception

from ._remote import (
    Outcome,
    OutputToStderr,
    compute_cache_key,
    interrupt,
    run_attempt,
    select,
)
from ._values import DaskValues, Part, holds_remote, locate

#: A cache entry whose value the run's own cluster holds: the cache, the key, the
#: task's name and function.
_Cached = tuple[ResultCache, str, str, "Callable[..., Any] | None"]
log = logging.getLogger("headwater.dask")

_Selections = dict[str, tuple[Any, tuple[Step, ...]]]

#: Seconds between two looks at the Dask client while a run goes on (its scheduler
#: may have gone for good: the client then closes, and nothing it holds ever ends).
CLUSTER_CHECK = 1.0
#: The failure type of attempts a closed Dask client held (not retried).
DASK_UNAVAILABLE = "headwater.DaskUnavailable"


class DaskExecutor:
    """Runs task functions on a Dask cluster (``dask.distributed``).

    Args:
        address: scheduler address (``"tcp://host:8786"``) of a running cluster; None
            starts a LocalCluster for each run and closes it after.
        client: an existing ``distributed.Client`` to use instead (left open).
        n_workers: worker processes of the LocalCluster (address=None only).
        threads_per_worker: threads per LocalCluster worker (address=None only).
        resources: resources every LocalCluster worker declares, e.g. ``{"GPU": 1}``.
        slots: most attempts submitted at once (default: ``attempts_per_thread`` x the
            cluster's total threads, so workers are not idle while the next attempts
            travel to them; Dask queues the excess, and a timeout counts from the
            attempt's start on a worker).
        connect_timeout: seconds to wait for the scheduler at ``address``.
        print_to_stderr: the LocalCluster's worker processes write what tasks print
            to their standard error, not to the standard output they share with this
            process (address=None only; ``headwater run --dask local``, whose stdout
            holds only the result).
    """

    #: Attempts in flight per Dask worker thread, by default (see ``slots``). Measured
    #: on the benchmarks' 1,000-task layered DAG: 1 per thread costs ~2x raw Dask
    #: futures (every task waits for a round trip to this process), 16 is on par.
    attempts_per_thread = 16

    def __init__(
        self,
        address: str | None = None,
        *,
        client: Client | None = None,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        resources: Mapping[str, float] | None = None,
        slots: int | None = None,
        connect_timeout: float = 10.0,
        print_to_stderr: bool = False,
    ) -> None:
        if address is not None and client is not None:
            raise ValueError("pass either address= or client=, not both")
        local_options = (n_workers, threads_per_worker, resources)
        if (address is not None or client is not None) and any(
            o is not None for o in local_options
        ):
            raise ValueError(
                "n_workers, threads_per_worker and resources configure the LocalCluster "
                "that address=None starts; they cannot apply to an existing cluster"
            )
        for name, value in (("n_workers", n_workers), ("threads_per_worker", threads_per_worker)):
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if slots is not None and slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.address = address
        self.n_workers = n_workers
        self.threads_per_worker = threads_per_worker
        self.resources = dict(resources or {})
        self._given_client = client
        self._slots = slots
        self.connect_timeout = connect_timeout
        self.print_to_stderr = print_to_stderr
        self._client: Client | None = None
        self._cluster: LocalCluster | None = None
        self._values: DaskValues | None = None
        self._lock = threading.Lock()
        self._futures: dict[tuple[str, int], tuple[Future[Any], str]] = {}
        self._completions: SimpleQueue[Event] | None = None
        self._run_id = ""
        #: Cache entries whose value is a future of this executor's own cluster: the
        #: cache, the key, the task's name and function (gathered at ``shutdown``).
        self._cached: list[_Cached] = []
        self._servable: set[tuple[tuple[str, float], ...]] = set()
        self._tokens: dict[str, tuple[str, int]] = {}
        self._topic: str | None = None
        self.interrupted = 0
        #: Why the cluster cannot be used any more (its client closed: the scheduler
        #: went away and did not come back in time), or None. The CLI exits 3 then.
        self.gone: str | None = None
        self._watching: threading.Event | None = None
        self._scheduler_id = ""

    def for_child(self) -> DaskExecutor:
        """An executor on the same cluster (same client) for a child flow run."""
        return DaskExecutor(client=self.client, slots=self._slots)

    # ------------------------------------------------------------- connection

    @property
    def client(self) -> Client:
        """The Dask client (connecting, or starting the LocalCluster, on first use)."""
        if self._client is None:
            self._connect()
        assert self._client is not None
        return self._client

    def _connect(self) -> None:
        if self._given_client is not None:
            if client_closed(self._given_client):  # (AttributeError ... 'ncores' deep
                # in distributed: a trial)
                raise ValueError(
                    "DaskExecutor(client=...): that distributed.Client is closed; give an open one"
                )
            self._client = self._given_client
        elif self.address is not None:
            self._client = connect_client(self.address, self.connect_timeout)
        else:
            self._cluster = LocalCluster(
                n_workers=self.n_workers,
                threads_per_worker=self.threads_per_worker,
                processes=True,
                dashboard_address=":0",  # None still binds 8787 (health routes)
                silence_logs=logging.ERROR,
                resources=self.resources or None,
            )
            self._client = Client(self._cluster, set_as_default=False)
            if self.print_to_stderr:
                self._client.register_plugin(OutputToStderr())
        self._values = DaskValues(self._client)

    @property
    def slots(self) -> int:
        """``slots`` if given, else ``attempts_per_thread`` x the cluster's threads."""
        if self._slots is not None:
            return self._slots
        threads: dict[str, int] = self.client.nthreads()
        return max(1, self.attempts_per_thread * sum(threads.values()))

    @property
    def values(self) -> DaskValues:
        """DaskValues: results are futures in the cluster (connects on first use)."""
        if self._values is None:
            self._connect()
        assert self._values is not None
        return self._values

    # ------------------------------------------------------------ Executor API

    def start(self, completions: SimpleQueue[Event]) -> None:
        """Get ready for a run: outcomes go to ``completions``, and workers' reports of
        attempts starting arrive on a Dask topic of this run."""
        self._completions = completions
        self._run_id = uuid.uuid4().hex[:12]
        self._servable.clear()
        self._tokens.clear()
        self._topic = f"headwater-started-{self._run_id}"
        self.client.subscribe_topic(self._topic, self._started)
        self._scheduler_id = _scheduler_id(self.client)
        with closed_client_ignored():
            if not self.client.nthreads():  # (the run waited, saying nothing: a trial)
                address = getattr(self.client.scheduler, "address", "") or self.address
                log.warning(
                    "the Dask cluster at %s has no workers: its tasks wait until one "
                    "joins (start `dask worker %s`)",
                    address,
                    address,
                )
        self._watching = threading.Event()
        threading.Thread(
            target=self._watch, args=(self.client, self._watching), name="headwater-dask-watch",
            daemon=True,
        ).start()  # fmt: skip

    def _watch(self, client: Client, stop: threading.Event) -> None:
        """Fail the attempts in flight once the client has closed (its scheduler went
        away and did not come back within the client's reconnect time): their futures
        never end, and the run waited for them forever (a user trial)."""
        while not stop.wait(CLUSTER_CHECK):
            self._subscribe_again()
            if client_closed(client):
                self._mark_gone(client)
                with self._lock:
                    held = list(self._futures)
                    self._futures.clear()
                for key, attempt in held:
                    self._fail_gone(key, attempt)
                return

    def _mark_gone(self, client: Client) -> None:
        if self.gone is None:
            address = getattr(client.scheduler, "address", "") or self.address or "?"
            self.gone = (
                f"the Dask client closed: the scheduler at {address} went away "
                "(restart the scheduler and its workers, then run the flow again)"
            )
            log.error("%s", self.gone)

    def _fail_gone(self, key: str, attempt: int) -> None:
        completions = self._completions
        if completions is not None:
            failure = FailureInfo(DASK_UNAVAILABLE, self.gone or "", retryable=False)
            completions.put(TaskFailed(key, attempt, failure))

    def submit(self, tasks: list[tuple[RunTask, Caller]]) -> None:
        """Submit attempts; those with the same resources go in one ``client.map``."""
        if self.gone is not None:  # (nothing submitted now would ever end)
            for command, _ in tasks:
                self._fail_gone(command.run.key, command.attempt)
            return
        groups: dict[tuple[tuple[str, float], ...], list[tuple[RunTask, Caller]]]
        groups = defaultdict(list)
        for item in tasks:
            groups[tuple(sorted(item[0].run.spec.resources.items()))].append(item)
        client = self.client
        for resources, group in groups.items():
            if resources and resources not in self._servable:
                if not self._can_serve(dict(resources)):
                    self._refuse(group, dict(resources))
                    continue
                self._servable.add(resources)
            columns: list[list[Any]] = [[] for _ in range(9)]
            keys: list[str] = []
            for command, caller in group:
                spec = command.run.spec
                plain, selections = self._split(command.inputs)
                token = self._token(command.run.key, command.attempt, spec)
                row = (
                    caller,
                    plain,
                    selections,
                    token,
                    command.run.name,
                    command.attempt,
                    spec.no_retry_on,
                    spec.timeout,
                    self._topic,
                )
                for column, value in zip(columns, row, strict=True):
                    column.append(value)
                keys.append(token)
            try:
                with _pickling_errors_unlogged():
                    futures = client.map(
                        run_attempt,
                        *columns,
                        key=keys,
                        resources=dict(resources) or None,
                        pure=False,
                    )
            except Exception:
                if not client_closed(client):
                    # One attempt's inputs or code cannot be pickled (a lock, an open
                    # file): the whole run raised Dask's TypeError, the healthy tasks
                    # never ran (a trial). Each attempt alone: that one fails.
                    group, futures, keys = self._submit_each(group, columns, keys, resources)
                else:
                    # (closed since the watcher last looked: an attempt lost meanwhile
                    # is dispatched again here, and must end too)
                    self._mark_gone(client)
                    for command, _ in group:
                        self._fail_gone(command.run.key, command.attempt)
                    continue
            with self._lock:
                for (command, _), future, token in zip(group, futures, keys, strict=True):
                    self._futures[(command.run.key, command.attempt)] = (future, token)
                    self._tokens[token] = (command.run.key, command.attempt)
            for (command, _), future in zip(group, futures, strict=True):
                future.add_done_callback(partial(self._done, command.run.key, command.attempt))

    def _subscribe_again(self) -> None:
        """Subscribe to the run's start reports again once the client reconnected to a
        restarted scheduler (which knows no subscription; looked at by the watcher every
        CLUSTER_CHECK): the attempts sent again after it ran SCHEDULED, and ended with
        no start (0 s each; a trial)."""
        if self._topic is None or self._client is None:
            return
        now = _scheduler_id(self._client)
        if now and now != self._scheduler_id:
            self._scheduler_id = now
            with closed_client_ignored():
                self._client.subscribe_topic(self._topic, self._started)
                # Starts reported before this subscription reached the new scheduler
                # are in its event log (a new worker may take an attempt at once).
                for event in self._client.get_events(self._topic):
                    self._started(event)

    def _submit_each(
        self,
        group: list[tuple[RunTask, Caller]],
        columns: list[list[Any]],
        keys: list[str],
        resources: tuple[tuple[str, float], ...],
    ) -> tuple[list[tuple[RunTask, Caller]], list[Future[Any]], list[str]]:
        """Submit a group's attempts one by one; one that cannot be sent (its inputs or
        its code cannot be pickled) fails, non-retryable, naming why. The attempts
        sent, their futures and tokens (the keys they had in the group)."""
        sent: list[tuple[RunTask, Caller]] = []
        futures: list[Future[Any]] = []
        sent_keys: list[str] = []
        assert self._completions is not None
        for i, item in enumerate(group):
            row = [column[i] for column in columns]
            try:
                # (a key of its own: the failed map left futures under the group's keys,
                # which the scheduler never got, and a submit under one waited for good)
                with _pickling_errors_unlogged():
                    future = self.client.submit(
                        run_attempt,
                        *row,
                        key=f"{keys[i]}-alone",
                        resources=dict(resources) or None,
                        pure=False,
                    )
            except Exception as exc:
                command = item[0]
                # ("cannot pickle '_thread.lock' object", not Dask's "Could not
                # serialize object of type LLGExpr(dsk=...)" around it)
                root = exc.__cause__ or exc
                message = (
                    f"task {command.run.name!r} could not be sent to the Dask cluster: its "
                    f"inputs or its code cannot be pickled ({type(root).__name__}: "
                    f"{str(root)[:300]})"
                )
                failure = FailureInfo("headwater.InputError", message, retryable=False)
                self._completions.put(TaskFailed(command.run.key, command.attempt, failure))
                continue
            sent.append(item)
            futures.append(future)
            sent_keys.append(keys[i])
        return sent, futures, sent_keys

    @property
    def reports_starts(self) -> bool:
        """Attempts may wait in Dask's queue: their start is reported by the worker."""
        return True

    def _started(self, event: tuple[float, str]) -> None:
        """Runs on the client's event loop when a worker reports an attempt started."""
        found = self._tokens.pop(event[1], None)  # (once: see _subscribe_again)
        if found is not None and self._completions is not None:
            self._completions.put(TaskStarted(*found))

    def cancel(self, key: str, attempt: int) -> None:
        """Drop the attempt's future and interrupt it if a worker is running it."""
        with self._lock:
            entry = self._futures.pop((key, attempt), None)
        if entry is None:
            return
        future, token = entry
        self.interrupted += 1
        with closed_client_ignored():
            future.cancel()
            # A running Dask task is not stopped by cancel(): ask every worker to
            # interrupt it (a no-op where it is not running). Not awaited.
            interrupt_everywhere(self.client, [token])

    def shutdown(self) -> None:
        """Forget this run's attempts; close the cluster and client if this executor
        started them (cached results are gathered first, so the cache outlives them)."""
        if self._watching is not None:
            self._watching.set()
            self._watching = None
        with self._lock:
            leftovers = list(self._futures.values())
            self._futures.clear()
        with closed_client_ignored():
            for future, _ in leftovers:
                future.cancel()
        cached, self._cached = self._cached, []
        if self._client is not None and self._topic is not None:
            with closed_client_ignored():
                self._client.unsubscribe_topic(self._topic)
            self._topic = None
        if self._client is None or self._given_client is not None:
            return
        try:
            if self._cluster is not None and self.gone is None:
                self._gather_cached(cached)
        finally:
            client, cluster = self._client, self._cluster
            self._client = self._cluster = self._values = None
            client.close()
            if cluster is not None:
                cluster.close()

    def check_kept(self, results: list[Any]) -> None:
        """ValueError when a retried run's kept results (futures) cannot be read on
        this executor's cluster: its previous executor closed the client or the
        LocalCluster that held them as the run ended. The retry failed as "the worker
        running ... was lost", four times (a trial)."""
        client = self._given_client or self._client  # (None: it would make a new one)
        for value in results:
            where = locate(value)
            if where is None:
                continue
            future = where[0]
            if future.status == "finished" and not client_closed(future.client):
                if future.client is client:
                    continue
                # (it said the run's client had closed: it is open, only not this one)
                raise ValueError(
                    "this run's results are held by another Dask client, still open: pass "
                    "DaskExecutor(client=...) with the client the run used"
                )
            raise ValueError(
                "this run's results stayed in a Dask cluster through a client that closed "
                "when the run ended (DaskExecutor(address) closes its client, and "
                "its own LocalCluster, at the end of a run): keep a "
                "distributed.Client open and pass DaskExecutor(client=...) to the run "
                "and to retry(), or run the flow again"
            )

    def _can_serve(self, needed: dict[str, float]) -> bool:
        return cluster_declares(self.client, needed)

    def _refuse(self, group: list[tuple[RunTask, Caller]], needed: dict[str, float]) -> None:
        """Fail attempts no worker can run: Dask would hold them forever."""
        completions = self._completions
        assert completions is not None
        for command, _ in group:
            failure = FailureInfo(
                type="headwater.ResourcesUnavailable",
                message=f"task {command.run.name!r} needs resources {needed}, and no worker "
                "of the Dask cluster declares them (start workers with --resources)",
                retryable=False,
            )
            completions.put(TaskFailed(command.run.key, command.attempt, failure))

    # ------------------------------------------------------------ values & cache

    def resolve(self, value: Any) -> Any:
        """A value as the user sees it: futures (and parts of them) gathered."""
        if not holds_remote(value):
            return value
        return self.client.gather(self._materialize(value))

    def cache_key(self, spec: TaskSpec, inputs: dict[str, Any]) -> str:
        """The cache key from the inputs' real values (computed in the cluster when
        they live there, so a key function sees the same values as on threads)."""
        assert spec.cache is not None
        prefix = spec.cache_key_prefix
        if not any(holds_remote(v) for v in inputs.values()):
            return make_cache_key(prefix, spec.cache.key_fn, spec.name, inputs)
        plain, selections = self._split(inputs)
        future = self.client.submit(
            compute_cache_key, prefix, spec.cache.key_fn, spec.name, plain, selections, pure=False
        )
        key: str = future.result()
        return key

    def cache_hit(self, entry: CacheEntry) -> CacheEntry | None:
        """The entry (a fresh copy of a value the cache holds here), unless it holds
        futures this executor's cluster cannot serve."""
        where = locate(entry.value)
        if where is None:
            return CacheEntry(thaw(entry.value), entry.expires_at)
        future = where[0]
        if future.client is not self.client or future.status in ("cancelled", "lost"):
            return None
        return entry

    def cache_put(
        self,
        cache: ResultCache,
        key: str,
        value: Any,
        expires_at: float | None,
        task: str,
        fn: Callable[..., Any] | None = None,
    ) -> None:
        """Store the result (a future); gathered into the cache at ``shutdown`` when
        the cluster is this executor's own LocalCluster, which closes then."""
        cache.put(key, value, expires_at)
        if isinstance(value, Future):
            self._cached.append((cache, key, task, fn))

    def _gather_cached(self, cached: list[_Cached]) -> None:
        """The values of the run's cache entries, fetched from the cluster before it
        closes. One that cannot be fetched (a result Dask cannot serialise, such as a
        generator) is not cached, with a warning at its task, as on threads: it made
        ``flow.run()`` raise Dask's TypeError, the run lost (a re-trial)."""
        entries = []
        for cache, key, task, fn in cached:
            entry = cache.get(key)
            if entry is not None and isinstance(entry.value, Future):
                entries.append((cache, key, task, fn, entry))
        if not entries:
            return
        try:
            values = self.client.gather([entry.value for *_, entry in entries])
        except Exception:  # (one of them: fetched one by one, to cache the others)
            values = None
        for i, (cache, key, task, fn, entry) in enumerate(entries):
            if values is not None:
                value = values[i]
            else:
                try:
                    value = self.client.gather(entry.value)
                except Exception as exc:
                    cache.drop(key)
                    warn_at_task(
                        fn, f"task {task!r}: its result was not cached: it cannot be fetched "
                        f"from the Dask cluster ({type(exc).__name__}: {exc})",
                    )  # fmt: skip
                    continue
            cache_snapshot(cache, key, value, entry.expires_at, task, fn)

    # ------------------------------------------------------------------ helpers

    def _token(self, key: str, attempt: int, spec: TaskSpec) -> str:
        # Unique in the cluster; Dask groups tasks by the name before the first dash.
        return f"{spec.name}-{self._run_id}-{key}-{attempt}"

    def _split(self, inputs: dict[str, Any]) -> tuple[dict[str, Any], _Selections]:
        return split_inputs(self.client, inputs)

    def _materialize(self, value: Any) -> Any:
        return materialize(self.client, value)

    def _done(self, key: str, attempt: int, future: Future[Any]) -> None:
        """Runs on Dask's callback thread when an attempt's future is done."""
        with self._lock:
            entry = self._futures.pop((key, attempt), None)
        completions = self._completions
        if entry is None or completions is None:
            return  # cancelled: the engine has moved on from this attempt
        event: Event
        status = future.status
        if status == "finished":
            if future.type is Outcome:
                outcome: Outcome = future.result()
                if outcome.kind == "interrupted":
                    self.interrupted += 1  # by its worker, at its timeout
                event = _outcome_event(key, attempt, outcome)
            else:
                event = TaskSucceeded(key, attempt, future)
        elif status == "error":
            # The wrapper itself failed: arguments that could not be unpickled on the
            # worker, a worker that died running it too often (KilledWorker), ...
            exc = future.exception()
            event = TaskFailed(key, attempt, failure_from_exception(exc))
        else:
            event = TaskLost(key, attempt)  # cancelled by the cluster, not by us
        completions.put(event)


@contextlib.contextmanager
def _pickling_errors_unlogged() -> Iterator[None]:
    """Dask's own log of a value it cannot pickle, off while attempts are sent: the
    executor fails such an attempt itself, naming it (~100 lines of Dask's traceback
    came first, naming another task of the batch; a trial)."""
    quiet = logging.getLogger("distributed.protocol.pickle")
    was = quiet.disabled
    quiet.disabled = True
    try:
        yield
    finally:
        quiet.disabled = was


def _scheduler_id(client: Client) -> str:
    """The id of the scheduler the client is connected to, as it last heard it (no
    call: the client keeps it, and renews it when it reconnects)."""
    identity = getattr(client, "_scheduler_identity", None) or {}
    return str(identity.get("id", "")) if isinstance(identity, Mapping) else ""


def client_closed(client: Client) -> bool:
    """Whether a Dask client has closed (its scheduler went away and did not come back
    within its reconnect time): nothing submitted to it ever ends."""
    return getattr(client, "status", "running") in ("closed", "closing")


def connect_client(address: str, timeout: float) -> Client:
    """A Dask client of the scheduler at ``address``; ConnectionError, in one line,
    when none answers there within ``timeout`` seconds (and a few more). Something
    else listening there (an HTTP server) made Dask read a garbage frame length and
    fail allocating exabytes, with a traceback; one that never answers hung it."""
    made: list[Client] = []
    failed: list[BaseException] = []

    def connect() -> None:
        try:
            made.append(Client(address, set_as_default=False, timeout=timeout))
        except BaseException as exc:  # (reported by the caller's thread)
            failed.append(exc)
            _forget_half_made(exc)

    thread = threading.Thread(target=connect, name="headwater-dask-connect", daemon=True)
    thread.start()
    waited = timeout + min(timeout, 5.0)  # (Dask's own timeout first, when it keeps it)
    thread.join(waited)
    fix = "check the address, or use --dask local / address=None"
    if made:
        return made[0]
    if not failed:
        raise ConnectionError(
            f"cannot reach the Dask scheduler at {address}: nothing answered as a Dask "
            f"scheduler within {waited:g} s; {fix}"
        )
    exc = failed[0]
    if isinstance(exc, OSError | TimeoutError):
        raise ConnectionError(f"cannot reach the Dask scheduler at {address} ({exc}); {fix}")
    if not isinstance(exc, Exception):
        raise exc
    raise ConnectionError(
        f"cannot reach the Dask scheduler at {address}: what answered there is not a Dask "
        f"scheduler (Dask could not read its answer: {type(exc).__name__}); {fix}"
    )


def _forget_half_made(exc: BaseException) -> None:
    """Mark the Client whose construction failed with ``exc`` closed: its ``__del__``
    tried to close a connection that never was, waited 20 s and printed "Exception
    ignored in: Client.__del__" with a traceback after the CLI's one-line error."""
    tb = exc.__traceback__
    while tb is not None:
        half = tb.tb_frame.f_locals.get("self")
        if isinstance(half, Client):
            with contextlib.suppress(Exception):
                half.status = "closed"
                half._loop_runner.stop()
            return
        tb = tb.tb_next


@contextlib.contextmanager
def closed_client_ignored() -> Iterator[None]:
    """Leave out what cannot be done on a closed Dask client (cancelling futures,
    asking workers to interrupt): its scheduler is gone, and so is what it ran. The
    stop of a bridge whose scheduler went away failed there and never ended."""
    try:
        yield
    except Exception as exc:
        if type(exc).__name__ != "ClosedClientError" and "closed" not in str(exc).lower():
            raise
        log.debug("the Dask client is closed: %s", exc)


def interrupt_everywhere(client: Client, tokens: list[str]) -> None:
    """Ask every worker to interrupt these attempts where they run (not awaited). A
    cluster that cannot be asked must not break the run: the attempt is already
    abandoned, and its watchdog still stops it at its timeout."""
    try:
        client.run(interrupt, tokens, wait=False)
    except Exception as exc:
        log.warning("could not ask the Dask workers to interrupt %s: %r", tokens, exc)


def cluster_declares(client: Client, needed: dict[str, float]) -> bool:
    """Whether some worker of the cluster declares these resources (asked each time:
    workers may have joined since)."""
    info: dict[str, Any] = client.scheduler_info()
    for worker in info.get("workers", {}).values():
        declared = worker.get("resources") or {}
        if all(declared.get(name, 0) >= amount for name, amount in needed.items()):
            return True
    return False


def split_inputs(client: Client, inputs: dict[str, Any]) -> tuple[dict[str, Any], _Selections]:
    """Arguments for ``run_attempt``: top-level Parts become selections taken on the
    worker; Parts nested in lists or dicts become small select tasks."""
    plain: dict[str, Any] = {}
    selections: _Selections = {}
    for arg, value in inputs.items():
        if isinstance(value, Part):
            selections[arg] = (value.future, value.path)
        elif isinstance(value, list | tuple | dict) and holds_remote(value):
            plain[arg] = materialize(client, value)
        else:
            plain[arg] = value
    return plain, selections


def materialize(client: Client, value: Any) -> Any:
    """Replace Parts in engine-built containers with futures of select tasks."""
    if isinstance(value, Part):
        return client.submit(select, value.future, value.path, pure=False)
    if isinstance(value, list):
        return [materialize(client, v) for v in value]
    if isinstance(value, tuple):
        return tuple(materialize(client, v) for v in value)
    if isinstance(value, dict):
        return {k: materialize(client, v) for k, v in value.items()}
    return value


def _outcome_event(key: str, attempt: int, outcome: Outcome) -> Event:
    if outcome.kind == "skipped":
        return TaskSkipped(key, attempt, outcome.reason)
    if outcome.failure is not None:
        return TaskFailed(key, attempt, outcome.failure)
    # Interrupted, not at its timeout: only a cancel does that, and a cancelled attempt
    # is never reported; should one be, it is a failure the engine then ignores.
    failure = FailureInfo(
        type="headwater.Interrupted",
        message=f"task attempt {key!r} was interrupted on its Dask worker ({outcome.reason})",
    )
    return TaskFailed(key, attempt, failure)
