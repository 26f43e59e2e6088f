"""The store interface: everything the control plane keeps durably.

A narrow interface so a networked database can replace SQLite without touching the
engine or the services. Flow runs are stored as an append-only *journal* (what the
engine was told, with timestamps; ``RunEvent``) plus *projections* (current states,
history) for queries: the engine is deterministic, so replaying a run's journal
through a fresh engine rebuilds it exactly after a restart. Result values are stored
once, in a value table keyed by their digest, and referenced by id from the journal,
the projections, the cache and flow results.

Several servers (PostgreSQL): only the leader writes. Its store carries the lease
epoch it holds, and every write transaction checks that epoch first, so a server
that lost the lead cannot write anything (``Fenced``), whatever it still believes.

Threads: a server calls the write methods (``commit``, ``create_flow_run``,
``put_*``, payload uploads, ``prune``) from one writer thread, and the read methods
from any number of reader threads at once; an implementation gives each thread what
it needs (SQLite: a connection per thread). A store whose ``concurrent_writes`` is
True (PostgreSQL) also takes ``create_flow_run`` from reader threads while the writer
commits: a new run is stored by the thread that built it, one hop fewer.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from headwater.wire import CHUNK_SIZE

from ._ops import OpsStore, OpsWrites

if TYPE_CHECKING:
    from ._prune import Pruning


class NotFound(LookupError):
    """The named flow, run, payload or schedule does not exist."""


class Conflict(Exception):
    """A write contradicts what is stored (e.g. an idempotency key reused for other
    parameters, or a flow version re-registered with another graph)."""


def key_reused(key: str, run_id: str, flow_name: str, row: FlowRunRow) -> Conflict:
    """The refusal of ``row``'s idempotency ``key``, which names the stored run
    ``run_id`` of ``flow_name`` for another flow or other parameters."""
    if flow_name != row.flow_name:
        why = f"flow run {run_id} of flow {flow_name!r}, not {row.flow_name!r}; use a new key"
    else:
        why = (
            f"flow run {run_id} of flow {flow_name!r} with other parameters; use a new key, "
            "or the same parameters to get that run"
        )
    return Conflict(f"idempotency key {key!r} was already used for {why}")


def task_runs_query(
    mark: str,
    flow_run_id: str,
    task_id: str = "",
    key: str = "",
    states: Collection[int] = (),
    *,
    columns: str = (
        "key, task_id, map_index, state, attempt, updated_at, worker_id, cache_key, "
        "result_id, delivered, holder"
    ),
) -> tuple[str, tuple[Any, ...]]:
    """``Store.task_runs``'s query (without its order and page) and arguments, ``mark``
    the database's placeholder; ``columns``: what it selects (``COUNT(*)`` to count)."""
    sql = f"SELECT {columns} FROM task_runs WHERE flow_run_id={mark}"
    args: list[Any] = [flow_run_id]
    for column, value in (("task_id", task_id), ("key", key)):
        if value:
            sql += f" AND {column}={mark}"
            args.append(value)
    if states:
        sql += f" AND state IN ({', '.join([mark] * len(states))})"
        args.extend(sorted(states))
    return sql, tuple(args)


def retry_gone(run_id: str) -> NotFound:
    """The refusal of a retry whose run a prune deleted, or that changed, meanwhile."""
    return NotFound(
        f"flow run {run_id!r} is no longer stored as it was read to be retried (a prune "
        "deleted it, or it changed meanwhile): nothing of the retry was stored"
    )


class StoreUnreachable(RuntimeError):
    """The database server could not be reached (nothing listens, no route, a timeout):
    worth trying again later, unlike a refused credential or a missing database. The
    commands beside a server exit 3 for it, as for a server they cannot reach."""


class StoreUnavailable(Exception):
    """The store cannot take writes right now (disk full, I/O error, database locked).

    ``full`` says the cause is lack of space (clients get RESOURCE_EXHAUSTED rather than
    UNAVAILABLE). The message names the underlying error.

    Args:
        message: what went wrong, in the store's words.
        full: the store is out of space.
    """

    def __init__(self, message: str, *, full: bool = False) -> None:
        super().__init__(message)
        self.full = full
        #: What a client that got it should know or do (set by the server, "": the
        #: usual "try again later").
        self.advice = ""


class Fenced(StoreUnavailable):
    """Another server took the lead (a newer lease epoch): this server's writes are
    refused, in the transaction that tried them, and it must stop leading.

    Args:
        message: the epochs and the new leader.
    """


@dataclass(frozen=True, slots=True)
class FlowVersion:
    """One registered version of a flow (the FlowGraph message, serialised)."""

    name: str
    version: str
    digest: str
    graph: bytes
    created_at: float


@dataclass(slots=True)
class FlowRunRow:
    """A flow run's stored summary (the projection clients query).

    ``result`` is the flow's result as a serialized ``StoredValue`` (value ids);
    ``engine_version`` the version of the engine whose journal this run has;
    ``payload_ids`` the stored payloads its parameters reference (kept while the run is).
    A child flow run (a subflow, or a flow a task started) names its parent run, the
    key of the parent's task run that stands for it, and that task run's attempt.
    """

    id: str
    flow_name: str
    flow_version: str
    state: int
    created_at: float
    parameters: bytes = b""
    idempotency_key: str = ""
    started_at: float | None = None
    ended_at: float | None = None
    result: bytes = b""
    message: str = ""
    trace_context: dict[str, str] = field(default_factory=dict)
    schedule_id: str = ""
    engine_version: str = ""
    payload_ids: tuple[str, ...] = ()
    parent_flow_run_id: str = ""
    parent_task_key: str = ""
    parent_attempt: int = 0


# The rows a server builds several times per task on its event loop (RunEvent,
# TaskRunRow, StateRow, ValueRow) are not frozen, only hashable like the others, and
# never changed once built: a frozen dataclass's ``__init__`` sets each field through
# ``object.__setattr__`` (2.4 µs for 11 fields against 0.4 µs).


@dataclass(slots=True, unsafe_hash=True)  # not frozen (above RunEvent)
class RunEvent:
    """One journal entry of a flow run: ``body`` is a serialized ``JournalEntry``;
    ``kind`` names its input (for people reading the database); ``value_id`` is the
    stored value it references, if any (what keeps the value from being collected)."""

    flow_run_id: str
    seq: int
    at: float
    kind: str
    body: bytes
    value_id: str = ""


@dataclass(slots=True, unsafe_hash=True)  # not frozen (above RunEvent)
class TaskRunRow:
    """A task run's current state (projection). ``result_id`` is its stored result's
    value id; ``delivered`` the attempt last delivered to a worker (0: none), which
    tells a restarted server which in-flight attempts a worker may still hold, and
    ``holder`` which worker (its id, bound to its credential: ``WorkerSession.holder``;
    None when the delivery was stored before holders were, schema version 5)."""

    flow_run_id: str
    key: str
    task_id: str
    map_index: int
    state: int
    attempt: int
    updated_at: float
    worker_id: str = ""
    cache_key: str = ""
    result_id: str = ""
    delivered: int = 0
    holder: str | None = ""


@dataclass(frozen=True, slots=True)
class Delivery:
    """An attempt stored as delivered (``Store.delivered``): its number, the worker's
    name as shown (``TaskRunRow.worker_id``) and its holder (``TaskRunRow.holder``)."""

    attempt: int
    worker: str
    holder: str | None


@dataclass(slots=True, unsafe_hash=True)  # not frozen (above RunEvent)
class StateRow:
    """One entry of a task run's state history (projection)."""

    flow_run_id: str
    key: str
    seq: int
    state: int
    at: float
    attempt: int
    message: str = ""
    failure: bytes = b""


@dataclass(frozen=True, slots=True)
class LogRow:
    """A log record written by a task run. ``seq`` is its position among the stored
    records (increasing; 0 for a record not read from a store), for paging."""

    flow_run_id: str
    key: str
    attempt: int
    at: float
    level: str
    logger: str
    message: str
    seq: int = 0


@dataclass(slots=True, unsafe_hash=True)  # not frozen (above RunEvent)
class ValueRow:
    """A stored value: a serialized ``Value`` message, its id (the SHA-256 of ``data``)
    and the stored payloads it references (kept while the value is)."""

    id: str
    data: bytes
    payload_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PayloadMeta:
    """A stored payload's description (its bytes are read in chunks)."""

    id: str
    size: int
    metadata: dict[str, str]
    sha256: str
    #: The credential that uploaded it ("" when the server stored it; None when it was
    #: stored before the uploader was recorded, schema version 4): a worker-only
    #: credential may read and reference its own uploads.
    uploader: str | None = ""


@dataclass(frozen=True, slots=True)
class CacheRow:
    """A cached task result (a stored value's id) with its expiry."""

    key: str
    value_id: str
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A schedule (the Schedule message, serialised) and when it next fires."""

    id: str
    flow_name: str
    body: bytes
    next_run_at: float | None
    enabled: bool
    payload_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What a prune removed (or, with ``dry_run``, would remove)."""

    runs: int = 0
    journal_entries: int = 0
    task_runs: int = 0
    logs: int = 0
    values: int = 0
    payloads: int = 0
    payload_bytes: int = 0
    cache_entries: int = 0
    bytes_reclaimed: int = 0
    dry_run: bool = False
    #: Workers forgotten: recorded by name, last heard from before the runs' cut-off
    #: (``headwater workers list`` no longer shows them; their drains stay).
    workers: int = 0
    #: Value-dependent builds (``VERSION@DIGEST12`` flow versions) deleted: no run or
    #: schedule uses them, and none has since the cut-off (store/_builds.py).
    builds: int = 0
    #: Webhook deliveries given up (after their tries) before the cut-off: no longer
    #: counted as failed in ``headwater webhooks list``.
    deliveries: int = 0
    #: Unreferenced payloads kept because their bytes are in a payload directory this
    #: store was not given (deleting the rows would leave the files for ever).
    payloads_kept: int = 0
    #: Payloads nothing references that are younger than the grace, and their bytes:
    #: kept this time (an upload may be on its way to a result), a later prune's.
    payloads_waiting: int = 0
    payload_bytes_waiting: int = 0
    #: Why the prune stopped giving space back before the end ("" when it did not):
    #: new rows reuse what is left, and the next prune carries on.
    give_back_stopped: str = ""


@dataclass(frozen=True, slots=True)
class CredentialRow:
    """A named credential: a token (stored as ``secret_hash``, the SHA-256 of the
    token; the token itself is never stored) or a client certificate ``subject`` that
    stands in for one. ``revoked_at`` is None while it is valid."""

    name: str
    role: str
    secret_hash: str
    subject: str
    created_at: float
    created_by: str
    revoked_at: float | None = None


@dataclass(frozen=True, slots=True)
class AuditRow:
    """Who (a credential name) did what (``action``) to which object, and when."""

    at: float
    actor: str
    action: str
    object_kind: str
    object_id: str
    detail: str = ""


@dataclass(slots=True)
class WriteBatch:
    """Writes gathered during one event-loop tick and committed in one transaction."""

    events: list[RunEvent] = field(default_factory=list)
    flow_runs: dict[str, FlowRunRow] = field(default_factory=dict)
    task_runs: dict[tuple[str, str], TaskRunRow] = field(default_factory=dict)
    states: list[StateRow] = field(default_factory=list)
    logs: list[LogRow] = field(default_factory=list)
    cache: list[CacheRow] = field(default_factory=list)
    values: dict[str, ValueRow] = field(default_factory=dict)
    #: Operations rows (run attempts, late marks, webhook deliveries): store/_ops.py.
    ops: OpsWrites = field(default_factory=OpsWrites)

    def __bool__(self) -> bool:
        return bool(
            self.ops
            or self.events
            or self.flow_runs
            or self.task_runs
            or self.states
            or self.logs
            or self.cache
            or self.values
        )

    def take_rows(self) -> list[Any]:
        """Empty the batch and return the containers of the rows it held, for the
        caller to let go of where it suits it (a server frees a committed 100,000-row
        batch row by row on a thread of its own)."""
        rows: list[Any] = [self.events, self.states, self.logs, self.cache]
        rows += [self.flow_runs, self.task_runs, self.values]
        self.events, self.states, self.logs, self.cache = [], [], [], []
        self.flow_runs, self.task_runs, self.values = {}, {}, {}
        self.ops = OpsWrites()
        return rows

    def absorb(self, newer: WriteBatch) -> None:
        """Add the writes of a later batch after this one's (a failed commit is retried
        together with what happened since): appended rows keep their order, and a
        projection row the later batch rewrote keeps the later version. The work is
        proportional to the smaller batch: a run's 100,000-row cancel joining the
        server's open batch on the event loop cost it ~20 ms when copied row by row.
        ``newer`` is not to be used afterwards (this batch may take its containers)."""
        self.events = _joined(self.events, newer.events)
        self.flow_runs = _merged(self.flow_runs, newer.flow_runs)
        self.task_runs = _merged(self.task_runs, newer.task_runs)
        self.states = _joined(self.states, newer.states)
        self.logs = _joined(self.logs, newer.logs)
        self.cache = _joined(self.cache, newer.cache)
        self.values = _merged(self.values, newer.values)
        self.ops.absorb(newer.ops)


def _joined(older: list[Any], newer: list[Any]) -> list[Any]:
    """The items of ``older`` then those of ``newer``, in the longer of the two lists
    (inserting at the front of a list is one move of its pointers)."""
    if len(older) >= len(newer):
        older.extend(newer)
        return older
    newer[:0] = older
    return newer


def _merged(older: dict[Any, Any], newer: dict[Any, Any]) -> dict[Any, Any]:
    """Every key of both, with ``newer``'s value where both have one, in the larger of
    the two dicts."""
    if len(older) >= len(newer):
        older.update(newer)
        return older
    for key, value in older.items():
        newer.setdefault(key, value)
    return newer


class PayloadUpload(Protocol):
    """A payload upload in progress: write chunks, then finish (or abort)."""

    id: str

    def write(self, chunk: bytes) -> None:
        """Append bytes; ValueError once they exceed the declared size."""
        ...

    def finish(self) -> PayloadMeta:
        """Check the size (and SHA-256, if declared), then make the payload readable;
        ValueError on a mismatch."""
        ...

    def abort(self) -> None:
        """Forget what was written (the payload never becomes readable)."""
        ...


class Store(OpsStore, Protocol):
    """Durable state of a control plane (see the module docstring for threads). The
    methods of day-two operations (run attempts, limits, workers, webhooks) are
    declared in ``OpsStore`` (store/_ops.py)."""

    #: Whether ``create_flow_run`` may be called from any thread while the writer
    #: thread commits (see the module docstring).
    concurrent_writes: bool

    # flows
    def put_flow(
        self, name: str, digest: str, graph: bytes, version: str, now: float
    ) -> tuple[FlowVersion, bool]:
        """Store a flow version, and whether it is new. A graph with the same digest
        returns the stored version; an empty ``version`` is numbered 1, 2, ... per
        name (value-dependent builds, named ``VERSION@DIGEST12``, use no number); a
        taken version with another graph raises Conflict."""
        ...

    def get_flow(self, name: str, version: str = "") -> FlowVersion:
        """A flow version (the latest when ``version`` is empty); NotFound if none."""
        ...

    def list_flows(self) -> list[tuple[str, list[str]]]:
        """Every flow name with its versions, oldest version first."""
        ...

    # flow runs
    def create_flow_run(
        self,
        row: FlowRunRow,
        schedule: ScheduleRow | None = None,
        start: WriteBatch | None = None,
        audit: AuditRow | None = None,
    ) -> tuple[FlowRunRow, bool]:
        """Insert a run, and whether it is new: a run with the same idempotency key
        and parameters is returned instead (other parameters: Conflict naming it).
        ``schedule`` (advanced past this fire) is updated in the same transaction,
        unless it was deleted or paused meanwhile (it stays so); ``start`` (the run's
        first journal entries and projections) and ``audit`` (who created the run) are
        written in it when the run is new."""
        ...

    def get_flow_run(self, run_id: str) -> FlowRunRow:
        """A flow run by id; NotFound if none."""
        ...

    def claim_for_retry(self, run_id: str, state: int, now: float) -> None:
        """Before an ended run is retried: its ``ended_at`` moves to ``now``, so a
        prune (``headwater prune`` beside the server, which does not know of the retry)
        no longer takes it for old until the retry's first commit stores it running.
        NotFound when the run is gone (a prune deleted it meanwhile) or no longer ended
        in ``state``: nothing of the retry may be stored then. A prune that has picked
        the run waits for it here, or this waits for the prune (one transaction)."""
        ...

    def list_flow_runs(
        self,
        flow_name: str = "",
        states: Sequence[int] = (),
        limit: int = 50,
        before: str = "",
        *,
        schedule_id: str = "",
        created_after: float | None = None,
        created_before: float | None = None,
    ) -> list[FlowRunRow]:
        """Flow runs, newest first: at most ``limit``, only of ``flow_name``, in
        ``states``, created by ``schedule_id`` and created in [``created_after``,
        ``created_before``) when given, and only older than run ``before`` (paging)."""
        ...

    def flow_run_ids(self, prefix: str, limit: int = 2) -> list[str]:
        """Ids of flow runs that start with ``prefix`` (at most ``limit``), so that a
        short id printed by the CLI can name a run."""
        ...

    def unfinished_flow_runs(self) -> list[FlowRunRow]:
        """Every run not in a terminal state, oldest first (recovered at start)."""
        ...

    def run_sizes(self, flow_run_ids: Sequence[str]) -> dict[str, int]:
        """How much of each run is stored, by id: its journal entries plus its task
        runs (roughly what replaying it costs a restarted server; a run with neither
        has 0)."""
        ...

    def child_flow_runs(self, parent_flow_run_id: str) -> list[FlowRunRow]:
        """The child flow runs of a run (``FlowRunRow.parent_flow_run_id``), oldest first."""
        ...

    def events(self, flow_run_id: str) -> list[RunEvent]:
        """A run's journal, in order."""
        ...

    def task_runs(
        self,
        flow_run_id: str,
        *,
        task_id: str = "",
        key: str = "",
        states: Collection[int] = (),
        offset: int = 0,
        limit: int | None = None,
    ) -> list[TaskRunRow]:
        """A run's task runs as they are now, in the order they were first stored; only
        task ``task_id``'s (mapped children included), task run ``key``, those in
        ``states``, when given, and a page of them (``offset``, ``limit``): the web
        UI's look at one task run, or at a page of a mapped task's children, read all of
        a 100,000-task run's (``count_task_runs`` counts them)."""
        ...

    def count_task_runs(
        self, flow_run_id: str, *, task_id: str = "", key: str = "", states: Collection[int] = ()
    ) -> int:
        """How many task runs ``task_runs`` with these filters lists, without a page."""
        ...

    def snapshot(self) -> AbstractContextManager[None]:
        """Within it, this thread's reads see the database as of one moment (a read-only
        transaction): a run's row and its task runs agree although commits land
        meanwhile. A snapshot inside another is the outer one."""
        ...

    def task_ids_in_states(self, flow_run_id: str, states: Collection[int]) -> list[str]:
        """The task ids of a run's task runs in one of ``states`` (each id once, sorted
        by code point whatever the database's collation): a failed run's failed tasks,
        without reading its task runs."""
        ...

    def delivered(self, flow_run_id: str) -> dict[str, Delivery]:
        """The attempt last delivered to a worker of each of a run's task runs that had
        one delivered (``TaskRunRow.delivered``), and to whom, by key: what a restarted
        server needs of a 100,000-task run's projection, read without building its
        rows."""
        ...

    def task_run_history(self, flow_run_id: str, key: str = "") -> list[StateRow]:
        """A run's task run state changes in order (only task run ``key``'s if given)."""
        ...

    def logs(
        self,
        flow_run_id: str,
        key: str = "",
        *,
        after: int = 0,
        limit: int = 0,
        task_id: str = "",
    ) -> list[LogRow]:
        """A run's task run log records in order (only task run ``key``'s, or those of
        task node ``task_id`` and its mapped children, if given): those whose ``seq``
        is above ``after``, at most ``limit`` of them (0: all)."""
        ...

    # values
    def get_values(self, ids: Iterable[str]) -> dict[str, bytes]:
        """Stored values (serialized Value messages) by id; missing ids are left out."""
        ...

    # one transaction per tick
    def commit(self, batch: WriteBatch) -> None:
        """Write a batch in one transaction: all of it or nothing (StoreUnavailable
        when the store cannot take it now; nothing of it is then stored)."""
        ...

    # payloads
    def put_payload(
        self,
        chunks: Iterator[bytes],
        metadata: dict[str, str],
        size: int,
        sha256: str = "",
        uploader: str = "",
    ) -> PayloadMeta:
        """Store a payload arriving in chunks (checked against ``size`` and ``sha256``);
        ``uploader``: the credential that sent it (kept with it)."""
        ...

    def begin_payload(
        self, metadata: dict[str, str], size: int, sha256: str = "", uploader: str = ""
    ) -> PayloadUpload:
        """Start an upload whose chunks arrive over time; ValueError for a negative
        size or metadata without an ``encoding``."""
        ...

    def payload_meta(self, payload_id: str) -> PayloadMeta:
        """A stored payload's size, metadata and SHA-256; NotFound if none."""
        ...

    def read_payload_chunk(self, payload_id: str, index: int) -> bytes:
        """Stored chunk ``index`` of a payload (CHUNK_SIZE bytes, the last may be
        shorter); b"" past the end."""
        ...

    def read_payload(
        self, payload_id: str, offset: int = 0, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[bytes]:
        """A payload's bytes from ``offset``, in chunks of at most ``chunk_size``,
        read one stored chunk at a time."""
        ...

    # cache
    def get_cache(self, key: str) -> CacheRow | None:
        """The cached result under ``key`` (expired or not: the caller checks), or None."""
        ...

    # schedules
    def put_schedule(self, row: ScheduleRow, replaces: str = "") -> None:
        """Insert or replace a schedule; with ``replaces``, the schedule of that id is
        deleted in the same transaction (a schedule replaced by one of the same name;
        nothing when it is gone already)."""
        ...

    def list_schedules(self, flow_name: str = "") -> list[ScheduleRow]:
        """Every schedule (only ``flow_name``'s if given), by id."""
        ...

    def get_schedule(self, schedule_id: str) -> ScheduleRow:
        """A schedule by id; NotFound if none."""
        ...

    def delete_schedule(self, schedule_id: str) -> None:
        """Remove a schedule; NotFound if none."""
        ...

    # credentials (written on the writer thread, or by `headwater tokens --db` from
    # another process: a server notices through credentials_generation)
    def add_credential(self, row: CredentialRow) -> None:
        """Store a new credential; Conflict when a valid (unrevoked) credential already
        has its name, or its subject."""
        ...

    def list_credentials(self, include_revoked: bool = False) -> list[CredentialRow]:
        """Credentials, oldest first (valid ones only unless ``include_revoked``)."""
        ...

    def revoke_credential(self, name: str, now: float) -> CredentialRow:
        """Revoke the valid credential called ``name`` and return it revoked; NotFound
        when there is none."""
        ...

    def credentials_generation(self) -> int:
        """A number that grows with every credential change (a cheap read a server
        polls to see changes made by another process)."""
        ...

    # audit
    def add_audit(self, row: AuditRow) -> None:
        """Record who did what (kept with the object: a flow run's entries go when the
        run is pruned)."""
        ...

    def audit_entries(
        self, object_kind: str = "", object_id: str = "", limit: int = 100
    ) -> list[AuditRow]:
        """Audit entries, newest first: at most ``limit``, only about ``object_kind``
        and ``object_id`` when given."""
        ...

    # retention
    def pruning(
        self,
        ended_before: float | None,
        now: float,
        *,
        grace: float,
        dry_run: bool = False,
        keep: Callable[[str], bool] | None = None,
        workers_before: float | None = None,
    ) -> Pruning:
        """A prune as a series of short transactions (``store/_prune.py``): call its
        ``step()`` until it returns False (a server runs each step as a write of its
        own, so its commits go in between), then ``report()``. It deletes finished runs
        that ended before ``ended_before`` (none when None) with their journal,
        projections, logs and audit entries, expired cache entries, values nothing
        references, and payloads nothing references older than ``grace`` seconds, and
        gives the space back. ``dry_run`` only reads, and counts. ``keep(run_id)``
        True keeps a run whatever its stored state (a server's runs under way). The
        records of workers last heard from before ``ended_before``, or before
        ``workers_before`` when that is later, are forgotten."""
        ...

    def prune(
        self, ended_before: float | None, now: float, *, grace: float, dry_run: bool = False
    ) -> PruneReport:
        """``pruning(...)`` with every step taken: what went (or would go)."""
        ...

    #: Whether opening the store made it (a new SQLite file, or an empty PostgreSQL
    #: schema): a server says so, since a mistyped --db looks like a clean start.
    created: bool

    def claim(self, holder: str) -> None:
        """Claim the storage for this server process (``holder`` describes it): raises
        RuntimeError naming the holder when another server process has claimed a
        storage only one server may use (SQLite)."""
        ...

    def checkpoint(self, beside_writes: bool = False) -> bool:
        """Upkeep a claimed store's writes need, done outside their commits (SQLite:
        copy the write-ahead log back into the database file). ``beside_writes``: on a
        thread of its own while the writer thread goes on writing; otherwise between
        writes. Returns whether the next upkeep should run between writes (SQLite: the
        log has not started over for several upkeeps beside writes). Nothing (False)
        for a store that needs none."""
        ...

    def close(self) -> None:
        """Release the storage (no call may follow)."""
        ...
