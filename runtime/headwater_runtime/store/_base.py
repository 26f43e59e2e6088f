"""The store interface: everything the control plane keeps durably.

A narrow interface so a networked database can replace SQLite without touching the
engine or the services. Flow runs are stored as an append-only *event log* (what
the engine was told, with timestamps) plus *projections* (current states, history)
for queries: the engine is deterministic, so replaying a run's log through a fresh
engine rebuilds it exactly after a restart.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from headwater.wire import CHUNK_SIZE


class NotFound(LookupError):
    """The named flow, run, payload or schedule does not exist."""


class Conflict(Exception):
    """A write contradicts what is stored (e.g. a payload id reused)."""


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
    """A flow run's stored summary (the projection clients query)."""

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


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One entry of a flow run's event log; ``body`` is the host's encoding."""

    flow_run_id: str
    seq: int
    at: float
    kind: str
    body: bytes


@dataclass(frozen=True, slots=True)
class TaskRunRow:
    """A task run's current state (projection)."""

    flow_run_id: str
    key: str
    task_id: str
    map_index: int
    state: int
    attempt: int
    updated_at: float
    worker_id: str = ""
    cache_key: str = ""
    result: bytes = b""


@dataclass(frozen=True, slots=True)
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
    """A log record written by a task run."""

    flow_run_id: str
    key: str
    attempt: int
    at: float
    level: str
    logger: str
    message: str


@dataclass(frozen=True, slots=True)
class PayloadMeta:
    """A stored payload's description (its bytes are read in chunks)."""

    id: str
    size: int
    metadata: dict[str, str]
    sha256: str


@dataclass(frozen=True, slots=True)
class CacheRow:
    """A cached task result (a serialised Value) with its expiry."""

    key: str
    value: bytes
    expires_at: float | None


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A schedule (the Schedule message, serialised) and when it next fires."""

    id: str
    flow_name: str
    body: bytes
    next_run_at: float | None
    enabled: bool


@dataclass(slots=True)
class WriteBatch:
    """Writes gathered during one event-loop tick and committed in one transaction."""

    events: list[RunEvent] = field(default_factory=list)
    flow_runs: dict[str, FlowRunRow] = field(default_factory=dict)
    task_runs: dict[tuple[str, str], TaskRunRow] = field(default_factory=dict)
    states: list[StateRow] = field(default_factory=list)
    logs: list[LogRow] = field(default_factory=list)
    cache: list[CacheRow] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.events
            or self.flow_runs
            or self.task_runs
            or self.states
            or self.logs
            or self.cache
        )


class PayloadUpload(Protocol):
    """A payload upload in progress: write chunks, then finish (or abort)."""

    id: str

    def write(self, chunk: bytes) -> None: ...
    def finish(self) -> PayloadMeta: ...
    def abort(self) -> None: ...


class Store(Protocol):
    """Durable state of a control plane. Implementations must be safe to call from
    one thread at a time (the server serialises calls on its event loop)."""

    # flows
    def put_flow(
        self, name: str, digest: str, graph: bytes, version: str, now: float
    ) -> tuple[FlowVersion, bool]:
        """Store a graph once per (name, digest): an empty ``version`` is numbered 1,
        2, ... (value-dependent builds, named ``VERSION@DIGEST12``, use no number)."""
        ...

    def get_flow(self, name: str, version: str = "") -> FlowVersion: ...
    def list_flows(self) -> list[tuple[str, list[str]]]: ...

    # flow runs
    def create_flow_run(
        self, row: FlowRunRow, schedule: ScheduleRow | None = None
    ) -> tuple[FlowRunRow, bool]: ...
    def get_flow_run(self, run_id: str) -> FlowRunRow: ...
    def list_flow_runs(
        self, flow_name: str = "", states: Sequence[int] = (), limit: int = 50, before: str = ""
    ) -> list[FlowRunRow]: ...
    def unfinished_flow_runs(self) -> list[FlowRunRow]: ...
    def events(self, flow_run_id: str) -> list[RunEvent]: ...
    def task_runs(self, flow_run_id: str) -> list[TaskRunRow]: ...
    def task_run_history(self, flow_run_id: str, key: str = "") -> list[StateRow]: ...
    def logs(self, flow_run_id: str, key: str = "") -> list[LogRow]: ...

    # one transaction per tick
    def commit(self, batch: WriteBatch) -> None: ...

    # payloads
    def put_payload(
        self, chunks: Iterator[bytes], metadata: dict[str, str], size: int, sha256: str = ""
    ) -> PayloadMeta: ...
    def begin_payload(
        self, metadata: dict[str, str], size: int, sha256: str = ""
    ) -> PayloadUpload: ...
    def payload_meta(self, payload_id: str) -> PayloadMeta: ...
    def read_payload(
        self, payload_id: str, offset: int = 0, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[bytes]: ...

    # cache
    def get_cache(self, key: str) -> CacheRow | None: ...

    # schedules
    def put_schedule(self, row: ScheduleRow) -> None: ...
    def list_schedules(self, flow_name: str = "") -> list[ScheduleRow]: ...
    def get_schedule(self, schedule_id: str) -> ScheduleRow: ...
    def delete_schedule(self, schedule_id: str) -> None: ...

    def close(self) -> None: ...
