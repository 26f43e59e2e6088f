"""Per-node bookkeeping and small helpers of the flow run state machine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from headwater.wire import FailureInfo, TaskRunState, TaskSpec

from ._policies import Tally
from ._records import TaskRunRecord


class Clock(Protocol):
    """Source of the current time in seconds (epoch-based)."""

    def now(self) -> float:
        """The current time in seconds since the epoch."""
        ...


@dataclass(frozen=True, slots=True)
class FlowRunFailure:
    """A task whose failure failed the flow run."""

    key: str
    state: TaskRunState
    failure: FailureInfo | None


class Node:
    """Per-task bookkeeping (not per run).

    Args:
        spec: the task node.
        index: its position in the graph's topological order.
    """

    __slots__ = (
        "complete",
        "elem_dependents",
        "elem_remaining",
        "elem_sources",
        "index",
        "run",
        "shared_inputs",
        "spec",
        "unfinished_children",
        "whole_dependents",
        "whole_remaining",
        "whole_sources",
        "whole_tally",
    )

    def __init__(self, spec: TaskSpec, index: int) -> None:
        self.spec = spec
        self.index = index
        self.run: TaskRunRecord
        self.whole_sources: list[Node] = []
        self.elem_sources: list[Node] = []
        self.whole_dependents: list[Node] = []
        self.elem_dependents: list[Node] = []
        self.whole_remaining = 0
        self.elem_remaining = 0
        self.unfinished_children = 0
        self.complete = False
        self.shared_inputs: dict[str, Any] | None = None
        #: Its whole upstreams' final states, counted (``_whole_tally``).
        self.whole_tally: Tally | None = None


def unmappable(arg: str, upstream: TaskRunRecord) -> str:
    """The failure message of a mapped task whose upstream ended without a result."""
    return (
        f"cannot map over argument {arg!r}: task {upstream.key!r} ended "
        f"{upstream.state.name} and has no result"
    )


def final_states(node: Node, out: list[TaskRunState]) -> None:
    """A complete upstream node's final states: its children's when it mapped."""
    run = node.run
    if run.state is TaskRunState.MAPPED:
        out.extend(c.state for c in run.children or ())
    else:
        out.append(run.state)
