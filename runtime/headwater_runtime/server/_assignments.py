"""Attempts ready for a worker: ``PendingAssignment`` and how its message is built.

The run manager hands the dispatcher a PendingAssignment per RunTask; the Assignment
message is built only when the attempt is actually dispatched (a 10,000-task fan-out
makes 10,000 attempts ready at once, and building their messages up front would delay
the run's first dispatch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from headwater.v1 import worker_pb2


class PendingAssignment:
    """An attempt ready for a worker. The Assignment message may be given, or built on
    first use.

    Args:
        flow_run_id: the flow run the attempt belongs to.
        task_type: the capability a worker needs to run it.
        labels: labels the worker must have.
        assignment: the Assignment message, or a function that builds it.
        token: ``(task run id, attempt)``; required when ``assignment`` is a function.
        tags: the task's tags (concurrency limits: _limits.py).
    """

    __slots__ = ("_build", "_message", "flow_run_id", "labels", "tags", "task_type", "token")

    def __init__(
        self,
        flow_run_id: str,
        task_type: str,
        labels: Mapping[str, str],
        assignment: worker_pb2.Assignment | Callable[[], worker_pb2.Assignment],
        token: tuple[str, int] | None = None,
        tags: tuple[str, ...] = (),
    ) -> None:
        self.flow_run_id = flow_run_id
        self.tags = tags
        self.task_type = task_type
        self.labels = labels
        if isinstance(assignment, worker_pb2.Assignment):
            self._message: worker_pb2.Assignment | None = assignment
            self._build: Callable[[], worker_pb2.Assignment] | None = None
            token = (assignment.token.task_run_id, assignment.token.attempt)
        else:
            self._message, self._build = None, assignment
        assert token is not None, "a lazily built assignment needs its token"
        self.token: tuple[str, int] = token

    @property
    def assignment(self) -> worker_pb2.Assignment:
        """The Assignment message (built now if it was not given)."""
        if self._message is None:
            assert self._build is not None
            self._message, self._build = self._build(), None
        return self._message


class Dispatch(Protocol):
    """Where assignments go (the dispatcher); called only after a commit."""

    def submit(self, pending: PendingAssignment) -> None:
        """Queue an attempt for a worker."""
        ...

    def cancel(self, flow_run_id: str, task_run_id: str, attempt: int, reason: str) -> None:
        """Stop an attempt (drop it if still queued, else ask its worker)."""
        ...
