"""Where the run manager's writes and effects wait for their commit.

A ``Sink`` holds what the engines' decisions produced since the last commit: the
rows to write (a ``WriteBatch`` and the values it references) and the effects to
carry out once they are stored (assignments to hand to the dispatcher, attempts to
cancel). The run manager has one shared sink, committed by the commit pipeline; a new
run is started into a sink of its own on a reader thread, stored with the run's row
in one transaction, and its effects are carried out when it joins the others
(``RunManager.adopt``): starting a 100,000-task run then costs the event loop almost
nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from headwater.wire import TaskRunState
from headwater_runtime.store import WriteBatch

from ._journal import Values

Effect = Callable[[], None]


@dataclass
class Sink:
    """Rows to write and effects to carry out once they are written."""

    batch: WriteBatch = field(default_factory=WriteBatch)
    values: Values = field(default_factory=Values)
    effects: list[Effect] = field(default_factory=list)
    #: Task runs that ended, by state, where no per-task listener was told (a run
    #: started or cancelled off the loop, RunManager.ended_listeners).
    ended: dict[TaskRunState, int] = field(default_factory=dict)
    #: What ``RunManager.snapshot_aside`` kept of each task run changed here (by key:
    #: the latest), handed to ``notes_rejoined`` when a run set aside rejoins.
    notes: dict[str, object] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.batch) or bool(self.values.rows) or bool(self.effects)

    def take(self) -> tuple[WriteBatch, list[Effect]]:
        """The batch to commit (with the values its rows reference) and the effects
        it covers; the sink is empty afterwards."""
        batch, self.batch = self.batch, WriteBatch()
        # update, not assign: a batch put back after a failed commit already holds
        # values of its own, which its journal entries reference.
        batch.values.update(self.values.take())
        effects, self.effects = self.effects, []
        return batch, effects

    def put_back(self, batch: WriteBatch, effects: list[Effect]) -> None:
        """Put back a batch whose commit failed, in front of what was gathered since,
        so the next commit writes both in order and carries out both effects after."""
        batch.absorb(self.batch)
        batch.values.update(self.values.take())
        self.batch = batch
        self.effects = effects + self.effects
