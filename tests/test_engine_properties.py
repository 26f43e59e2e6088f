"""Property tests: random graphs driven to the end with outcomes delivered in random
orders and batches, checked against an independent model of the semantics.

A graph is a list of nodes; each takes data from earlier nodes, may wait for one, has
a random trigger and retry count, and is either plain or mapped (over a constant list,
element-wise over one or two earlier mapped nodes, or both zipped). Each run's outcome
(succeed, fail, skip, fail once then succeed, hang until its timeout) is a deterministic
function of its key. A task's value is 1 + the sum of everything it receives, so the
results can be checked against a plain-Python evaluation of the same graph.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from engine_helpers import (
    Driver,
    FakeClock,
    S,
    check_engines,  # noqa: F401  (autouse fixture)
    failure,
    flow,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from headwater.wire import (
    Const,
    FlowRunState,
    FromTask,
    GraphSpec,
    InputSpec,
    RetrySpec,
    TaskSpec,
    Trigger,
)
from headwater_runtime.engine import (
    CancelRequested,
    CancelTask,
    EventIgnored,
    RunTask,
    StateEntry,
    TaskFailed,
    TaskLost,
    TaskRunRecord,
    TaskSkipped,
    TaskSucceeded,
)

# The strategies here never touch the random module, but Hypothesis notices any change
# of its global state while it draws, and a Dask cluster or worker left running by an
# earlier test (in a background thread) uses it: that warning is not about this file.
pytestmark = pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")

# derandomize: the same examples on every run, so a result never depends on luck.
SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TIMEOUT = 5.0
PERMISSIVE = [Trigger.ALL_SUCCESSFUL, Trigger.ALL_FINISHED, Trigger.NONE_FAILED]
RUNS_WHEN_ALL_SUCCEED = [*PERMISSIVE, Trigger.ANY_SUCCESSFUL]


@dataclass
class Node:
    id: str
    ups: list[str]  # data inputs, whole results
    waits: list[str]  # order-only
    trigger: Trigger
    retries: int
    retry_delay: float
    const: list[int] | None = None  # mapped over this constant list (argument "x")
    over: list[str] = field(default_factory=list)  # element-wise over these mapped nodes

    @property
    def mapped(self) -> bool:
        return self.const is not None or bool(self.over)

    @property
    def whole(self) -> list[str]:
        return [*self.ups, *self.waits]


def to_graph(nodes: list[Node]) -> GraphSpec:
    tasks = []
    for n in nodes:
        inputs: dict[str, InputSpec] = {f"u_{u}": FromTask(u) for u in n.ups}
        mapped: list[str] = []
        if n.const is not None:
            inputs["x"] = Const(n.const)
            mapped.append("x")
        for k, src in enumerate(n.over):
            inputs[f"e{k}"] = FromTask(src)
            mapped.append(f"e{k}")
        tasks.append(
            TaskSpec(
                id=n.id,
                name=n.id,
                task_type=f"prop.{n.id}",
                inputs=inputs,
                wait_for=tuple(n.waits),
                retry=RetrySpec(max_retries=n.retries, delay=n.retry_delay),
                timeout=TIMEOUT,
                trigger=n.trigger,
                mapped=tuple(mapped) if n.mapped else None,
            )
        )
    return flow(*tasks)


@st.composite
def dags(
    draw: st.DrawFn,
    triggers: list[Trigger] | None = None,
    same_length: bool = False,
    map_heavy: bool = False,
) -> list[Node]:
    count = draw(st.integers(4, 9) if map_heavy else st.integers(1, 8))
    length = draw(st.integers(1, 2) if map_heavy else st.integers(0, 3))
    nodes: list[Node] = []
    for i in range(count):
        earlier = [n.id for n in nodes]
        mapped_earlier = [n.id for n in nodes if n.mapped]
        kinds = ["plain", "const", "over"]
        kind = draw(st.sampled_from(kinds if map_heavy else [*kinds, "over+const"]))
        if kind.startswith("over") and not mapped_earlier:
            kind = "const"
        over: list[str] = []
        const: list[int] | None = None
        if kind.startswith("over"):
            fewest = min(2, len(mapped_earlier)) if map_heavy else 1
            over = draw(
                st.lists(st.sampled_from(mapped_earlier), min_size=fewest, max_size=2, unique=True)
            )
        if kind in ("const", "over+const"):
            size = length if same_length else draw(st.integers(0, 3))
            const = draw(st.lists(st.integers(0, 9), min_size=size, max_size=size))
        others = [e for e in earlier if e not in over]
        ups = draw(st.lists(st.sampled_from(others), unique=True, max_size=3)) if others else []
        rest = [e for e in others if e not in ups]
        fewest = 1 if map_heavy and kind == "over" else 0
        waits = (
            draw(st.lists(st.sampled_from(rest), unique=True, min_size=fewest, max_size=1))
            if rest
            else []
        )
        nodes.append(
            Node(
                id=f"n{i}",
                ups=ups,
                waits=waits,
                trigger=draw(st.sampled_from(triggers or list(Trigger))),
                retries=draw(st.integers(0, 2)),
                retry_delay=draw(st.sampled_from([0.0, 1.0])),
                const=const,
                over=over,
            )
        )
    return nodes


# ------------------------------------------------------------------------ outcomes

Outcome = str  # "S" succeed, "F" fail every attempt, "K" skip, "R" fail once, "H" hang


def outcomes_from(seed: int, weights: dict[Outcome, int]) -> Callable[[str], Outcome]:
    letters = "".join(letter * w for letter, w in weights.items())

    def outcome(key: str) -> Outcome:
        return letters[zlib.crc32(f"{seed}:{key}".encode()) % len(letters)]

    return outcome


def value_of(x: Any) -> int:
    if x is None:
        return 0
    if isinstance(x, list | tuple):
        return sum(value_of(v) for v in x)
    assert isinstance(x, int), x
    return x


def task_value(inputs: dict[str, Any]) -> int:
    return 1 + sum(value_of(v) for v in inputs.values())


# --------------------------------------------------------------------------- model


def verdict(trigger: Trigger, states: list[S]) -> str:
    """R run, K skip, T trigger failed (docs/semantics.md, written out again)."""
    failed = sum(s.is_failure for s in states)
    skipped = sum(s is S.SKIPPED for s in states)
    succeeded = len(states) - failed - skipped
    if not states or trigger is Trigger.ALL_FINISHED:
        return "R"
    if trigger is Trigger.ALL_SUCCESSFUL:
        return "T" if failed else ("K" if skipped else "R")
    if trigger is Trigger.NONE_FAILED:
        return "T" if failed else "R"
    if trigger is Trigger.ALL_FAILED:
        return "R" if failed == len(states) else "T"
    if trigger is Trigger.ANY_FAILED:
        return "R" if failed else "T"
    assert trigger is Trigger.ANY_SUCCESSFUL
    return "R" if succeeded else ("K" if skipped == len(states) else "T")


@dataclass
class Expected:
    states: dict[str, S]
    values: dict[str, Any]
    flow_state: FlowRunState


def model(nodes: list[Node], outcome: Callable[[str], Outcome]) -> Expected:
    states: dict[str, S] = {}
    values: dict[str, Any] = {}
    children: dict[str, list[str]] = {}

    def final_states(node_id: str) -> list[S]:
        if states[node_id] is S.MAPPED:
            return [states[c] for c in children[node_id]]
        return [states[node_id]]

    def run(key: str, retries: int, inputs: dict[str, Any]) -> None:
        letter = outcome(key)
        if letter == "S" or (letter == "R" and retries >= 1):
            states[key], values[key] = S.SUCCESS, task_value(inputs)
        elif letter == "K":
            states[key], values[key] = S.SKIPPED, None
        elif letter == "H":
            states[key], values[key] = S.TIMED_OUT, None
        else:
            states[key], values[key] = S.FAILED, None

    for n in nodes:
        whole = [s for u in n.whole for s in final_states(u)]
        ups = {f"u_{u}": values[u] for u in n.ups}
        not_expanded = [states[src] for src in n.over if states[src] is not S.MAPPED]
        v = verdict(n.trigger, whole + not_expanded)
        if v != "R":
            states[n.id] = S.SKIPPED if v == "K" else S.TRIGGER_FAILED
            values[n.id] = None
            continue
        if not n.mapped:
            run(n.id, n.retries, ups)
            continue
        if not_expanded:  # element-wise over a task that did not map: nothing to map over
            states[n.id], values[n.id] = S.FAILED, None
            continue
        lengths = {len(children[src]) for src in n.over}
        if n.const is not None:
            lengths.add(len(n.const))
        if len(lengths) > 1:
            states[n.id], values[n.id] = S.FAILED, None
            continue
        size = lengths.pop()
        keys = children[n.id] = [f"{n.id}[{i}]" for i in range(size)]
        states[n.id] = S.MAPPED
        for i, key in enumerate(keys):
            child_states = whole + [states[children[src][i]] for src in n.over]
            v = verdict(n.trigger, child_states)
            if v != "R":
                states[key] = S.SKIPPED if v == "K" else S.TRIGGER_FAILED
                values[key] = None
                continue
            inputs = dict(ups)
            if n.const is not None:
                inputs["x"] = n.const[i]
            for k, src in enumerate(n.over):
                inputs[f"e{k}"] = values[children[src][i]]
            run(key, n.retries, inputs)
        values[n.id] = [values[k] for k in keys]
    failed = any(s.is_failure for s in states.values())
    return Expected(states, values, FlowRunState.FAILED if failed else FlowRunState.SUCCESS)


# ----------------------------------------------------------------------- simulator


class OrderChecker:
    """on_transition observer: a run may leave PENDING (run, skip, fail its trigger,
    expand) only when everything it depends on is finished."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = {n.id: n for n in nodes}
        self.runs: dict[str, TaskRunRecord] = {}
        self.violations: list[str] = []

    def complete(self, node_id: str) -> bool:
        run = self.runs[node_id]
        if not run.state.is_terminal:
            return False
        return run.state is not S.MAPPED or all(c.state.is_terminal for c in run.children or ())

    def __call__(self, run: TaskRunRecord, entry: StateEntry) -> None:
        before = run.history[-2].state
        if before.is_terminal:
            self.violations.append(f"{run.key} left terminal {before.name} for {entry.state.name}")
        if before is not S.PENDING or entry.state is S.CANCELLED:
            return
        node = self.nodes[run.task_id]
        for u in node.whole:
            if not self.complete(u):
                self.violations.append(f"{run.key} -> {entry.state.name} before {u} finished")
        for src in node.over:
            source = self.runs[src]
            if run.map_index < 0:
                if not source.state.is_terminal:
                    self.violations.append(f"{run.key} expanded before {src} did")
            else:
                upstream = (source.children or [])[run.map_index]
                if not upstream.state.is_terminal:
                    self.violations.append(
                        f"{run.key} -> {entry.state.name} before {upstream.key} finished"
                    )


@dataclass
class Simulation:
    driver: Driver
    checker: OrderChecker
    delivered: list[Any]


def simulate(
    nodes: list[Node],
    outcome: Callable[[str], Outcome],
    rng: random.Random,
    *,
    max_concurrency: int | None,
    batch: bool,
    chaos: bool,
    stop_after: int | None = None,
    max_batch: int = 3,
) -> Simulation:
    checker = OrderChecker(nodes)
    driver = Driver(
        to_graph(nodes),
        clock=FakeClock(),
        start=False,
        register=False,
        observer=checker,
        max_concurrency=max_concurrency,
    )
    checker.runs = driver.engine.runs
    driver.start()
    engine = driver.engine
    failures_sent: dict[str, int] = {}
    lost: dict[str, int] = {}
    delivered: list[Any] = []
    steps = 0
    while not engine.finished:
        steps += 1
        assert steps < 2_000, "flow run did not finish"
        if stop_after is not None and steps > stop_after:
            break
        ready = [c for c in driver.in_flight.values() if outcome(c.run.key) != "H"]
        if not ready:
            due = engine.next_timer_at
            assert due is not None, f"stuck: nothing to deliver, no timers: {driver.in_flight}"
            driver.tick(max(0.0, due - driver.clock.now()))
            continue
        picked = rng.sample(ready, rng.randint(1, min(max_batch, len(ready))) if batch else 1)
        events: list[Any] = []
        for cmd in picked:
            key = cmd.run.key
            letter = outcome(key)
            if chaos and lost.get(key, 0) < 2 and rng.random() < 0.1:
                lost[key] = lost.get(key, 0) + 1
                events.append(TaskLost(key, cmd.attempt))
            elif letter == "S" or (letter == "R" and failures_sent.get(key, 0) >= 1):
                events.append(TaskSucceeded(key, cmd.attempt, task_value(cmd.inputs)))
            elif letter == "K":
                events.append(TaskSkipped(key, cmd.attempt, "model says skip"))
            else:
                failures_sent[key] = failures_sent.get(key, 0) + 1
                events.append(TaskFailed(key, cmd.attempt, failure(message=key)))
        driver.send(*events)
        delivered.extend(events)
        if chaos and delivered and rng.random() < 0.15:
            stale = rng.choice(delivered)
            answer = driver.send(stale)
            assert len(answer) == 1 and isinstance(answer[0], EventIgnored), answer
        if rng.random() < 0.1 and engine.next_timer_at is not None:
            # Fire retry timers while work is in flight (never past a live deadline).
            due = engine.next_timer_at
            deadlines = [c.deadline for c in driver.in_flight.values() if c.deadline]
            if not deadlines or due < min(deadlines):
                driver.tick(max(0.0, due - driver.clock.now()))
    return Simulation(driver, checker, delivered)


def assert_well_formed(sim: Simulation) -> None:
    engine = sim.driver.engine
    engine.validate()
    assert engine.finished
    assert not sim.checker.violations, sim.checker.violations
    assert sim.driver.in_flight == {}, "every dispatched attempt was answered or cancelled"
    for run in engine.runs.values():
        terminal = [e for e in run.history if e.state.is_terminal]
        assert len(terminal) == 1 and run.history[-1] is terminal[0], (run.key, run.states)
        if run.state is S.MAPPED:
            assert run.children is not None
    dispatched = [c.run.key for c in sim.driver.log if isinstance(c, RunTask)]
    assert all(engine.runs[k].attempts for k in dispatched)


# --------------------------------------------------------------------------- tests


@SETTINGS
@given(
    nodes=dags(triggers=RUNS_WHEN_ALL_SUCCEED, same_length=True),
    seed=st.integers(0, 2**32 - 1),
    limit=st.sampled_from([None, 1, 2, 3]),
    batch=st.booleans(),
)
def test_all_success_matches_plain_python(
    nodes: list[Node], seed: int, limit: int | None, batch: bool
) -> None:
    sim = simulate(
        nodes, lambda key: "S", random.Random(seed), max_concurrency=limit, batch=batch, chaos=False
    )
    assert_well_formed(sim)
    engine = sim.driver.engine
    assert engine.state is FlowRunState.SUCCESS
    assert sim.driver.max_seen_in_flight <= (limit or 10**9)

    # Plain Python: evaluate the graph in order, each task returning 1 + sum(inputs).
    plain: dict[str, Any] = {}
    for n in nodes:
        ups = sum(value_of(plain[u]) for u in n.ups)
        if not n.mapped:
            plain[n.id] = 1 + ups
            continue
        size = len(n.const) if n.const is not None else len(plain[n.over[0]])
        plain[n.id] = [
            1
            + ups
            + (n.const[i] if n.const is not None else 0)
            + sum(plain[src][i] for src in n.over)
            for i in range(size)
        ]
    for n in nodes:
        run = engine.runs[n.id]
        if n.mapped:
            assert run.state is S.MAPPED
            assert [c.result for c in run.children or []] == plain[n.id], n.id
            assert all(c.state is S.SUCCESS for c in run.children or [])
        else:
            assert run.state is S.SUCCESS
            assert run.result == plain[n.id], n.id


@SETTINGS
@given(
    nodes=dags(),
    seed=st.integers(0, 2**32 - 1),
    limit=st.sampled_from([None, 1, 2, 3]),
    batch=st.booleans(),
    weights=st.sampled_from(
        [
            {"S": 6, "F": 1, "K": 1, "R": 1, "H": 1},
            {"S": 2, "F": 2, "K": 2, "R": 1, "H": 1},
            {"S": 8, "R": 2},
        ]
    ),
)
def test_random_outcomes_match_the_model(
    nodes: list[Node], seed: int, limit: int | None, batch: bool, weights: dict[str, int]
) -> None:
    outcome = outcomes_from(seed, weights)
    sim = simulate(
        nodes, outcome, random.Random(seed), max_concurrency=limit, batch=batch, chaos=True
    )
    assert_well_formed(sim)
    engine = sim.driver.engine
    expected = model(nodes, outcome)
    actual = {key: run.state for key, run in engine.runs.items()}
    assert actual == expected.states
    for key, run in engine.runs.items():
        if run.state is S.SUCCESS:
            assert run.result == expected.values[key], key
        assert run.retries_used <= run.spec.retry.max_retries
        if run.attempts:  # every attempt is recorded: one per failure retried, plus the last
            failed = sum(a.outcome in (S.FAILED, S.TIMED_OUT) for a in run.attempts)
            assert failed == run.retries_used + (run.state in (S.FAILED, S.TIMED_OUT)), key
            assert all(a.ended_at is not None for a in run.attempts), key
    assert engine.state is expected.flow_state


@SETTINGS
@given(
    nodes=dags(),
    seed=st.integers(0, 2**32 - 1),
    limit=st.sampled_from([None, 1, 2]),
    stop_after=st.integers(0, 12),
)
def test_cancel_at_any_point_ends_everything(
    nodes: list[Node], seed: int, limit: int | None, stop_after: int
) -> None:
    outcome = outcomes_from(seed, {"S": 6, "F": 1, "K": 1, "R": 1, "H": 1})
    sim = simulate(
        nodes,
        outcome,
        random.Random(seed),
        max_concurrency=limit,
        batch=True,
        chaos=True,
        stop_after=stop_after,
    )
    driver = sim.driver
    engine = driver.engine
    was_finished = engine.finished
    before = dict(driver.in_flight)
    commands = driver.send(CancelRequested("stop"))
    assert not [c for c in commands if isinstance(c, RunTask)]
    if was_finished:
        assert driver.only_ignored(commands)
        return
    cancelled = {(c.run.key, c.attempt) for c in commands if isinstance(c, CancelTask)}
    assert cancelled == {(key, cmd.attempt) for key, cmd in before.items()}
    assert engine.state is FlowRunState.CANCELLED
    assert_well_formed(sim)
    for key, cmd in before.items():
        late = driver.send(TaskSucceeded(key, cmd.attempt, 0))
        assert len(late) == 1 and isinstance(late[0], EventIgnored)
    assert driver.tick(100) == []


@settings(SETTINGS, max_examples=500)
@given(
    nodes=dags(map_heavy=True),
    seed=st.integers(0, 2**32 - 1),
)
def test_map_chains_match_the_model(nodes: list[Node], seed: int) -> None:
    """Graphs of maps over maps that also wait for other tasks, outcomes in batches."""
    outcome = outcomes_from(seed, {"S": 6, "F": 1, "K": 1})
    rng = random.Random(seed)
    sim = simulate(nodes, outcome, rng, max_concurrency=None, batch=True, chaos=False, max_batch=12)
    assert_well_formed(sim)
    expected = model(nodes, outcome)
    assert {key: run.state for key, run in sim.driver.engine.runs.items()} == expected.states
