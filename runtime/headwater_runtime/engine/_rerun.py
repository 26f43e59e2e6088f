"""Retrying a flow run from its failure: the same run goes on as its next run attempt.

A FAILED or CANCELLED run is reopened in place (``RunRetried``). What is kept and what
runs again:

* every task run that succeeded (SUCCESS, CACHED, SKIPPED, a MAPPED parent) is kept,
  with its result, unless something upstream of it runs again;
* task runs that FAILED, TIMED_OUT, were CANCELLED or TRIGGER_FAILED go back to
  PENDING, and so does everything downstream of them: a task that ran after a failure
  because its trigger let it (``all_finished``: a cleanup task) runs again, since its
  inputs change;
* a mapped task whose parent expanded keeps its expansion and its successful children:
  only the failed children (and, element-wise, their children downstream) run again.
  A mapped task with an upstream that runs again as a whole is expanded again.

Reopened task runs keep their attempt counter and records (attempt numbers are the
fencing tokens of workers' reports, so they never repeat) and get a fresh retry
budget. The history of each shows the move back to PENDING; nothing is erased.

A pure function of the engine's state, like every other decision, so replaying a
journal that contains a ``RunRetried`` rebuilds the retried run exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from headwater.wire import FlowRunState, TaskRunState

from ._events import EventIgnored, RunRetried
from ._nodes import Node
from ._records import TaskRunRecord
from ._states import REOPENED

if TYPE_CHECKING:
    from ._machine import FlowRunEngine

S = TaskRunState

#: Flow run states a retry starts from.
RETRYABLE = frozenset({FlowRunState.FAILED, FlowRunState.CANCELLED})
#: Task run states that run again (with everything downstream of them).
RERUN = frozenset({S.FAILED, S.TIMED_OUT, S.CANCELLED, S.TRIGGER_FAILED})


def not_retryable(state: FlowRunState, parent_id: str = "", parent_task: str = "") -> str | None:
    """Why a flow run in ``state`` cannot be retried (None: it can). A child run
    (``parent_id``, its parent's task run ``parent_task``) is not retried alone: its
    outcome is that task run's (retried alone, it ended SUCCESS while its parent kept
    the task run FAILED, a hostile trial)."""
    if parent_id:
        return (
            f"it is a child of flow run {parent_id} (its task run {parent_task!r}), which "
            "its outcome belongs to: retry that run, which runs the child again"
        )
    if state in RETRYABLE:
        return None
    return f"the flow run is {state.name}; only a FAILED or CANCELLED run can be retried"


def reopen(engine: FlowRunEngine, event: RunRetried) -> None:
    """Apply ``RunRetried``: reopen what must run again and start it (see the module
    docstring). A run that is not FAILED or CANCELLED ignores it (EventIgnored)."""
    why = not_retryable(engine.state)
    if why is not None:
        engine._out.append(EventIgnored(event, why))
        return
    full, partial = _plan(engine)
    engine.run_attempt += 1
    message = f"flow run retried (run attempt {engine.run_attempt})"
    if event.reason:
        message += f": {event.reason}"
    for node in full:
        _reset_node(engine, node, message)
    for node, indices in partial.items():
        children = node.run.children
        assert children is not None
        for i in sorted(indices):
            _reset_run(engine, children[i], message)
        node.complete = False
        node.shared_inputs = _shared_inputs(engine, node)
        node.whole_tally = None
    _recount(engine)
    engine.cancel_reason = engine.timed_out = None
    engine.interrupted = []
    engine.result = None
    engine.state = FlowRunState.RUNNING
    engine.flow_history.append((FlowRunState.RUNNING, engine.clock.now(), message))
    engine.arm_run_timeout()  # the run attempt gets the whole timeout again
    _start(engine)


def _plan(engine: FlowRunEngine) -> tuple[list[Node], dict[Node, set[int]]]:
    """The nodes whose runs start over (in topological order) and, for mapped nodes
    that keep their expansion, the child indices that run again."""
    full: dict[Node, None] = {}
    partial: dict[Node, set[int]] = {}
    for node in engine._nodes.values():  # topological order
        run = node.run
        whole = any(src in full or src in partial for src in node.whole_sources)
        if whole or any(src in full for src in node.elem_sources) or run.state in RERUN:
            full[node] = None
            continue
        if run.state is not S.MAPPED:
            if any(src in partial for src in node.elem_sources):
                full[node] = None  # never expanded: it starts over once they finish
            continue
        children = run.children or []
        indices = {c.map_index for c in children if c.state in RERUN}
        for src in node.elem_sources:
            indices |= partial.get(src, set())
        if indices:
            partial[node] = indices
    return list(full), partial


def _reset_run(engine: FlowRunEngine, run: TaskRunRecord, message: str) -> None:
    """One task run back to PENDING, its attempt counter and records kept."""
    run.expand()  # a succeeded run's history may be compacted: it changes again now
    if run.state is not S.PENDING:
        engine._transition(run, REOPENED, message, reopen=True)
    run.retries_used = 0
    run.lost_count = 0
    engine._given_back.pop(run.key, None)
    run.result = None
    run.failure = None
    run.cache_key = None
    run.dispatched = False
    run.settled = False
    run.pending = 0


def _reset_node(engine: FlowRunEngine, node: Node, message: str) -> None:
    """A node starts over; a mapped one drops its children to expand again (their
    attempt counters carried to their successors: ``FlowRunEngine._prior``)."""
    run = node.run
    for child in run.children or ():
        engine._prior[child.key] = child
        del engine.runs[child.key]
    run.children = None
    node.unfinished_children = 0
    node.shared_inputs = node.whole_tally = None
    node.complete = False
    _reset_run(engine, run, message)


def carry_over(prior: dict[str, TaskRunRecord], children: list[TaskRunRecord]) -> None:
    """Children of an expansion made again take over the attempt counter, attempt
    records and history of the children of the same key that a retry dropped (so a
    host's history of each key goes on, and attempt numbers never repeat)."""
    for child in children:
        old = prior.pop(child.key, None)
        if old is None:
            continue
        child.attempt = old.attempt
        child.attempts = old.attempts
        child.history = [*old.history, child.history[-1]]


def _shared_inputs(engine: FlowRunEngine, node: Node) -> dict[str, object]:
    """What a kept expansion's children share (freed when the node completed): every
    input that is not element-wise, resolved again from the kept upstream results."""
    mapped = node.spec.mapped or ()
    shared: dict[str, object] = {}
    for arg, src in node.spec.inputs.items():
        if arg in mapped and engine._is_elementwise(node, src):
            continue  # as in FlowRunEngine._expand
        shared[arg] = engine._resolve(src)
    return shared


def _recount(engine: FlowRunEngine) -> None:
    """Rebuild the counters the engine keeps while a run goes on (from states alone)."""
    # Untouched nodes stay complete; _plan's nodes were marked incomplete.
    for node in engine._nodes.values():
        children = node.run.children or []
        node.unfinished_children = sum(not c.state.is_terminal for c in children)
        node.whole_remaining = sum(not src.complete for src in node.whole_sources)
        node.elem_remaining = sum(not src.run.state.is_terminal for src in node.elem_sources)
        for child in node.run.children or ():
            if child.state.is_terminal:
                continue
            child.pending = sum(
                not (src.run.children or [])[child.map_index].settled for src in node.elem_sources
            )
    engine._unfinished = sum(not r.state.is_terminal for r in engine.runs.values())
    engine._ready.clear()
    engine._timers.clear()
    engine._settle.clear()


def _start(engine: FlowRunEngine) -> None:
    """Evaluate every reopened run whose upstreams are all done, as ``start`` does."""
    for node in engine._nodes.values():
        run = node.run
        if run.state is S.PENDING:
            if node.whole_remaining == 0 and node.elem_remaining == 0:
                engine._evaluate_node(node)
        elif run.state is S.MAPPED and node.whole_remaining == 0:
            for child in run.children or ():
                if child.state is S.PENDING and child.pending == 0:
                    engine._evaluate_child(child)
