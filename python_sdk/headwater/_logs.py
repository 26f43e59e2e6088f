"""``LogEntry``: a line a task printed or a record it logged, embedded or on a server."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from headwater.wire import split_task_run_id


@dataclass(frozen=True)
class LogEntry:
    """A log record a task run wrote (``print`` and ``logging`` inside the task).

    Attributes:
        task_run_id: ``FLOW_RUN_ID/KEY`` of the task run.
        attempt: the attempt that wrote it (1-based).
        at: when it was written (timezone-aware, UTC).
        level: ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR`` or ``CRITICAL`` (printed lines:
            INFO for stdout, WARNING for stderr).
        logger: the logger's name (``stdout`` / ``stderr`` for printed lines).
        message: the text (a logged exception's traceback included).
    """

    task_run_id: str
    attempt: int
    at: datetime
    level: str
    logger: str
    message: str

    @property
    def key(self) -> str:
        """The task run's key within its flow run (``task`` or ``task[i]``)."""
        return split_task_run_id(self.task_run_id)[1]


def from_seconds(at: float) -> datetime:
    """A timezone-aware UTC datetime for seconds since the epoch."""
    return datetime.fromtimestamp(at, tz=UTC)


__all__ = ["LogEntry", "from_seconds"]
