"""The graph model every layer shares: a compiled flow (GraphSpec) and its parts.

The SDK compiler builds a GraphSpec directly (constants are live Python objects, so an
embedded run never serialises anything); a server builds one from a FlowGraph message
with ``graph_from_proto`` (constants stay encoded: the control plane never decodes
them). The engine runs it. ``validate()`` is the one place graph rules are checked, so
a graph one host refuses is refused by every host, with the same message.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._ids import MAX_NAME, TASK_RUN_ID_SEPARATOR, control_character, split_child_key
from ._limits import MAX_DURATION


class Trigger(enum.Enum):
    """When a task runs given its upstreams' final states (names as in the SDK)."""

    ALL_SUCCESSFUL = "all_successful"
    ALL_FINISHED = "all_finished"
    ALL_FAILED = "all_failed"
    ANY_SUCCESSFUL = "any_successful"
    ANY_FAILED = "any_failed"
    NONE_FAILED = "none_failed"


@dataclass(frozen=True, slots=True)
class FromTask:
    """The result of an upstream task, or a part of it selected by ``path``."""

    task_id: str
    path: tuple[str | int, ...] = ()


@dataclass(frozen=True, slots=True)
class Const:
    """A constant: a live object (embedded) or an encoded payload (from a FlowGraph)."""

    value: Any


@dataclass(frozen=True, slots=True)
class Param:
    """A flow parameter."""

    name: str


@dataclass(frozen=True, slots=True)
class ListOf:
    """A list (or tuple) assembled from inputs."""

    items: tuple[InputSpec, ...]
    is_tuple: bool = False


@dataclass(frozen=True, slots=True)
class DictOf:
    """A string-keyed dict assembled from inputs."""

    entries: tuple[tuple[str, InputSpec], ...]


InputSpec = FromTask | Const | Param | ListOf | DictOf


def iter_task_refs(spec: InputSpec) -> Iterator[FromTask]:
    """Every upstream reference inside an input, depth first."""
    if isinstance(spec, FromTask):
        yield spec
    elif isinstance(spec, ListOf):
        for item in spec.items:
            yield from iter_task_refs(item)
    elif isinstance(spec, DictOf):
        for _, item in spec.entries:
            yield from iter_task_refs(item)


def iter_params(spec: InputSpec) -> Iterator[str]:
    """Every flow parameter named inside an input."""
    if isinstance(spec, Param):
        yield spec.name
    elif isinstance(spec, ListOf):
        for item in spec.items:
            yield from iter_params(item)
    elif isinstance(spec, DictOf):
        for _, item in spec.entries:
            yield from iter_params(item)


@dataclass(frozen=True, slots=True)
class RetrySpec:
    """Retry policy. Delays are seconds; ``non_retryable`` are error type names."""

    max_retries: int = 0
    delay: float = 0.0
    backoff: float = 1.0
    max_delay: float | None = None
    jitter: float = 0.0
    non_retryable: tuple[str, ...] = ()


NO_RETRY = RetrySpec()

#: The task type of a subflow node (a call of another flow inside a flow body).
SUBFLOW_TASK_TYPE = "headwater.subflow"


@dataclass(frozen=True, slots=True)
class SubflowSpec:
    """What a subflow node runs: a child flow run of ``flow_name``.

    ``flow_version`` pins the child's registered version (empty: the latest, or a
    graph built for the node's inputs); ``flow`` is the SDK's Flow object when the
    graph was compiled in this process (an embedded host runs it directly);
    ``mapped_parameters`` are the child's parameters one of its tasks maps over
    directly, whose inputs a server needs with their elements (``split_nodes``).
    """

    flow_name: str
    flow_version: str = ""
    flow: Any = field(default=None, compare=False, repr=False)
    mapped_parameters: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CacheSpec:
    """Result caching. ``key_fn`` is the user's key function (embedded hosts only)."""

    expiry: float | None = None
    version: str = ""
    key_fn: Callable[..., str] | None = field(default=None, compare=False)
    by_function: bool = False


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """One task node. ``fn`` is the Python callable when compiled in-process."""

    id: str
    name: str
    task_type: str
    inputs: Mapping[str, InputSpec] = field(default_factory=dict)
    wait_for: tuple[str, ...] = ()
    retry: RetrySpec = NO_RETRY
    timeout: float | None = None
    trigger: Trigger = Trigger.ALL_SUCCESSFUL
    cache: CacheSpec | None = None
    mapped: tuple[str, ...] | None = None
    tags: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    resources: Mapping[str, float] = field(default_factory=dict)
    version: str = ""
    portable: bool = False
    argument_order: tuple[str, ...] = ()
    fn: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    #: Seconds a ready attempt may wait for a worker before it fails (server only).
    schedule_to_start_timeout: float | None = None
    no_retry_on: tuple[type[BaseException], ...] = field(default=(), compare=False, repr=False)
    #: The digest of the task's code (docs/flows.md, "No stale code"); "" unchecked.
    code_digest: str = ""
    #: Set on a subflow node (``task_type`` SUBFLOW_TASK_TYPE).
    subflow: SubflowSpec | None = None
    #: The ``case`` checks it was called inside (each also in ``wait_for``): one that
    #: ended SKIPPED skips this task whatever its trigger.
    gates: tuple[str, ...] = ()

    @property
    def cache_key_prefix(self) -> str:
        """The part of this task's cache keys that comes from the task, not its inputs:
        results are reused only by the same task type, version, cache version and code
        (its digest: editing the function's body, or its code_version, is a miss; a
        cached result of the old body was served after an edit)."""
        cache_version = self.cache.version if self.cache is not None else ""
        code = f"code={self.code_digest}|" if self.code_digest else ""
        return f"{self.task_type}|v={self.version}|c={cache_version}|{code}"

    def upstream_ids(self) -> list[str]:
        """Ids of every upstream task (data and order-only), deduplicated, in order."""
        seen: dict[str, None] = {}
        for spec in self.inputs.values():
            kind = type(spec)
            if kind is FromTask:  # the common kinds without a generator
                seen[spec.task_id] = None  # type: ignore[union-attr]
            elif kind is not Const and kind is not Param:
                for ref in iter_task_refs(spec):
                    seen[ref.task_id] = None
        for dep in self.wait_for:
            seen[dep] = None
        return list(seen)


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """A flow parameter: a default (live object or payload) unless required.

    ``type_name`` names the annotation for people (``"list[int] | None"``) and
    ``json_schema`` is its JSON Schema (sorted-key JSON text), which a control plane
    checks json-encoded values of runs created by name against; both empty when the
    parameter has no annotation (or the SDK did not fill them in, as in an embedded
    run, which validates with the annotation itself).
    """

    name: str
    default: Any = None
    required: bool = True
    type_name: str = ""
    json_schema: str = ""


class ParameterError(TypeError):
    """Flow parameters given to a run do not match the flow's parameters."""


class GraphBuildNeeded(ParameterError):
    """A value-dependent graph was asked to run with values it was not built for: a
    graph for them must be built from the flow's code (docs/flows.md)."""


class GraphError(ValueError):
    """A flow graph breaks a rule; the message names the task and the problem."""


#: Separates a value-dependent graph's version from its digest: ``VERSION@DIGEST12``.
BUILD_SEPARATOR = "@"


def build_version(version: str, digest: str) -> str:
    """The version a control plane stores a value-dependent graph under: the author's
    version (often empty) and the first 12 hex digits of the graph's digest, so that
    each distinct graph is stored once and none is mistaken for a numbered version."""
    return f"{version}{BUILD_SEPARATOR}{digest[:12]}"


def is_build_version(version: str) -> bool:
    """Whether a stored version names one value-dependent graph (``build_version``)."""
    return BUILD_SEPARATOR in version


@dataclass(frozen=True)
class GraphSpec:
    """A compiled flow. Tasks are in a topological order once validated.

    A ``value_dependent`` graph was built from one run's parameter values (the flow
    body used them as values, docs/flows.md); ``parameters_digest`` identifies those
    values (``parameters_digest()`` in ``headwater.wire``, empty when not known, as in
    an embedded run): a control plane runs such a graph only with parameters of that
    digest, and reuses it for a run by name only while its workers offer the flow's
    code of ``code_digest``.
    """

    name: str
    tasks: tuple[TaskSpec, ...]
    params: tuple[ParamSpec, ...] = ()
    version: str = ""
    result: InputSpec | None = None
    reference_task_ids: tuple[str, ...] = ()
    description: str = ""
    value_dependent: bool = False
    parameters_digest: str = ""
    #: Seconds a top-level run of it may run (each run attempt, from its start): then
    #: its unfinished task runs are cancelled and it FAILS. None: no limit. A child run
    #: is bounded by its node's timeout instead.
    timeout: float | None = None
    #: For a value-dependent graph, the digest of the flow function's code it was built
    #: from (FlowGraph.code_digest; "" when not known).
    code_digest: str = ""

    def validate(self) -> None:
        """Raise GraphError naming the task and problem for any invalid graph.

        The outcome is remembered: a GraphSpec is immutable, so a graph validated by
        the compiler is not checked again by the engine.
        """
        if self.__dict__.get("_valid"):
            return
        self._check()
        object.__setattr__(self, "_valid", True)

    def weight(self) -> int:
        """About what it holds, and what a run of it makes at its start: its tasks plus
        the items of their list and dict inputs (top level; a map over a constant list
        of 100,000 items, in a three-task graph, makes 100,000 task runs). Computed once
        per graph; the server's ``graph_weight`` says the same of a FlowGraph message."""
        weight = self.__dict__.get("_weight")
        if weight is None:
            weight = len(self.tasks)
            for task in self.tasks:
                for spec in task.inputs.values():
                    if isinstance(spec, ListOf):
                        weight += len(spec.items)
                    elif isinstance(spec, DictOf):
                        weight += len(spec.entries)
            object.__setattr__(self, "_weight", weight)
        return weight

    def mapped_params(self) -> frozenset[str]:
        """The parameters a task maps over directly (``task.map(param)``), or that a
        subflow node passes to a parameter its child maps over: a server needs their
        values with their elements (docs/payloads.md). Computed once per graph (a
        server checks every run's parameters against them)."""
        names = self.__dict__.get("_mapped_params")
        if names is None:
            names = frozenset(
                src.name for _, src, _ in _mapped_inputs(self) if isinstance(src, Param)
            )
            object.__setattr__(self, "_mapped_params", names)
        return names

    def split_nodes(self) -> dict[str, tuple[str | int, ...]]:
        """Tasks whose result (or a part of it, ``b.map(a["rows"])``) a mapped task maps
        over, with the path of that part. A server has their workers send each element
        separately, so it can hand element i to child i without decoding anything; one
        part per task (``validate`` refuses two)."""
        nodes = self.__dict__.get("_split_nodes")
        if nodes is None:
            nodes = _split_nodes(self)
            object.__setattr__(self, "_split_nodes", nodes)
        return nodes

    def upstreams(self) -> dict[str, list[str]]:
        """Upstream task ids of every task, computed once per graph."""
        deps = self.__dict__.get("_upstreams")
        if deps is None:
            deps = {t.id: t.upstream_ids() for t in self.tasks}
            object.__setattr__(self, "_upstreams", deps)
        return deps

    def _check(self) -> None:
        if BUILD_SEPARATOR in self.version:
            raise GraphError(
                f"flow {self.name!r}: a version may not contain {BUILD_SEPARATOR!r} "
                f"(got {self.version!r}); it marks the graphs of value-dependent flows"
            )
        timeout = self.timeout
        if timeout is not None and not (math.isfinite(timeout) and 0 < timeout <= MAX_DURATION):
            raise GraphError(
                f"flow {self.name!r}: timeout must be > 0 seconds (and <= {MAX_DURATION:g})"
            )
        ids: dict[str, TaskSpec] = {}
        for t in self.tasks:
            if not t.id:
                raise GraphError(f"flow {self.name!r}: a task has an empty id")
            if TASK_RUN_ID_SEPARATOR in t.id:
                raise GraphError(
                    f"task id {t.id!r} contains {TASK_RUN_ID_SEPARATOR!r}, which separates a "
                    "flow run's id from its task runs' keys: rename the task"
                )
            if t.id in ids:
                raise GraphError(f"flow {self.name!r}: duplicate task id {t.id!r}")
            ids[t.id] = t
        _check_names(self.name, list(ids))
        for t in self.tasks:
            # Only an id ending in "]" can be a child key: most skip the pattern match.
            child = split_child_key(t.id) if t.id[-1] == "]" else None
            parent = ids.get(child[0]) if child else None
            if parent is not None and parent.mapped is not None:
                raise GraphError(
                    f"task id {t.id!r} is the key of an element of mapped task "
                    f"{parent.id!r}: rename the task"
                )
        params = {p.name for p in self.params}
        if len(params) != len(self.params):
            raise GraphError(f"flow {self.name!r}: duplicate parameter names")
        upstreams = self.upstreams()
        # A graph whose every task follows its upstreams (every traced flow) is acyclic
        # and already in topological order: one pass proves it, and neither the cycle
        # search nor a sort is needed.
        earlier: set[str] = set()
        ordered = True
        retries: set[int] = set()  # ids of the retry policies checked (one per task function)
        for t in self.tasks:
            for dep in upstreams[t.id]:
                if dep not in earlier:
                    if dep not in ids:
                        raise GraphError(f"task {t.id!r} depends on unknown task {dep!r}")
                    if dep == t.id:
                        raise GraphError(f"task {t.id!r} depends on itself (a cycle)")
                    ordered = False
            earlier.add(t.id)
            for spec in t.inputs.values():
                kind = type(spec)
                if kind is FromTask or kind is Const:
                    continue
                for name in iter_params(spec):
                    if name not in params:
                        raise GraphError(f"task {t.id!r} uses unknown flow parameter {name!r}")
            if t.mapped is not None:
                for arg in t.mapped:
                    if arg not in t.inputs:
                        raise GraphError(f"task {t.id!r} maps over unknown argument {arg!r}")
            _check_numbers(t, retries)
            for gate in t.gates:
                if gate not in t.wait_for:
                    raise GraphError(
                        f"task {t.id!r}: case gate {gate!r} must also be in its wait_for"
                    )
            if (t.subflow is not None) != (t.task_type == SUBFLOW_TASK_TYPE):
                raise GraphError(
                    f"task {t.id!r}: a subflow node (task type {SUBFLOW_TASK_TYPE!r}) must "
                    "name its flow, and only a subflow node may"
                )
            if t.subflow is not None and (t.mapped is not None or t.cache is not None):
                raise GraphError(f"task {t.id!r}: a subflow call cannot be mapped or cached")
        if self.result is not None:
            for ref in iter_task_refs(self.result):
                if ref.task_id not in ids:
                    raise GraphError(f"flow {self.name!r} returns unknown task {ref.task_id!r}")
        for rid in self.reference_task_ids:
            if rid not in ids:
                raise GraphError(f"flow {self.name!r}: unknown reference task {rid!r}")
        if not ordered:
            cycle = _find_cycle(upstreams)
            if cycle:
                raise GraphError(f"task {cycle[0]!r} is part of a cycle: {' -> '.join(cycle)}")
        object.__setattr__(self, "_ordered", ordered)
        self.split_nodes()

    def topological(self) -> GraphSpec:
        """The same graph with tasks sorted so every task follows its upstreams."""
        self.validate()
        if self.__dict__.get("_ordered"):
            return self
        order = _toposort(self.tasks, self.upstreams())
        if all(a is b for a, b in zip(order, self.tasks, strict=True)):
            return self
        graph = dataclasses.replace(self, tasks=tuple(order))
        graph.validate()
        return graph


#: The TaskSpec fields that differ between the calls of one task in a flow; the others
#: (``TASK_FIELDS``) come from the task and are the same for each of its calls.
CALL_FIELDS = ("id", "inputs", "wait_for", "mapped", "gates")
TASK_FIELDS = tuple(f.name for f in dataclasses.fields(TaskSpec) if f.name not in CALL_FIELDS)


def _from_task_maker() -> Callable[[str, tuple[str | int, ...]], FromTask]:
    """``make_from_task(task_id, path)``: ``FromTask(task_id, path)`` without the
    frozen dataclass's ``__init__`` (once per task result passed in a compiled flow)."""
    slots: dict[str, Any] = dict(vars(FromTask))  # the slots' member descriptors
    set_id, set_path = slots["task_id"].__set__, slots["path"].__set__
    new = object.__new__

    def make_from_task(task_id: str, path: tuple[str | int, ...]) -> FromTask:
        ref = new(FromTask)
        set_id(ref, task_id)
        set_path(ref, path)
        return ref

    return make_from_task


make_from_task = _from_task_maker()


def _task_spec_maker() -> Callable[..., TaskSpec]:
    """``make_task_spec(id, inputs, wait_for, mapped, gates, task_fields)``: the TaskSpec with
    those call fields and the ``TASK_FIELDS`` values in that order; equal to
    ``TaskSpec(...)`` with the same values. The compiler's hot path (once per task call
    in a flow): it sets the slots directly, where the frozen dataclass's ``__init__``
    makes one ``object.__setattr__`` call per keyword (3.1 -> ~1 µs per node)."""
    names = (*CALL_FIELDS, *TASK_FIELDS)
    lines = [
        f"def make_task_spec({', '.join(CALL_FIELDS)}, task_fields):",
        "    node = new(TaskSpec)",
        f"    {', '.join(TASK_FIELDS)}, = task_fields",
        *(f"    set_{name}(node, {name})" for name in names),
        "    return node",
    ]
    scope: dict[str, Any] = {"new": object.__new__, "TaskSpec": TaskSpec}
    scope.update({f"set_{name}": getattr(TaskSpec, name).__set__ for name in names})
    exec("\n".join(lines), scope)  # generated from the dataclass's own fields
    maker: Callable[..., TaskSpec] = scope["make_task_spec"]
    return maker


make_task_spec = _task_spec_maker()


def _check_numbers(t: TaskSpec, retries: set[int]) -> None:
    """Retry, timeout, cache and resource numbers a run can live with: finite, and not
    negative (an infinite backoff would hold a retry forever, a NaN disorder timers).

    A retry policy object is checked once (``retries`` holds the ids of those checked):
    the calls of one task share their task's, and this runs for every node."""
    retry = t.retry
    if id(retry) not in retries:
        if retry.max_retries < 0 or retry.delay < 0:
            raise GraphError(f"task {t.id!r}: retries and retry delay must be >= 0")
        _bad_number(t, "retry delay", retry.delay, high=MAX_DURATION)
        _bad_number(t, "retry backoff", retry.backoff)
        _bad_number(t, "retry max delay", retry.max_delay, high=MAX_DURATION)
        if not (math.isfinite(retry.jitter) and 0 <= retry.jitter <= 1):
            raise GraphError(f"task {t.id!r}: retry jitter must be in [0, 1], got {retry.jitter!r}")
        retries.add(id(retry))
    if t.timeout is not None and not (math.isfinite(t.timeout) and 0 < t.timeout <= MAX_DURATION):
        raise GraphError(f"task {t.id!r}: timeout must be > 0 seconds (and <= {MAX_DURATION:g})")
    if t.cache is not None:
        _bad_number(t, "cache expiry", t.cache.expiry, high=MAX_DURATION)
    if t.resources:
        for name, amount in t.resources.items():
            _bad_number(t, f"resource {name!r}", amount)


def _bad_number(t: TaskSpec, what: str, value: float | None, *, high: float = math.inf) -> None:
    if value is not None and not (math.isfinite(value) and 0 <= value <= high):
        limit = "" if high == math.inf else f" and <= {high:g}"
        raise GraphError(f"task {t.id!r}: {what} must be a finite number >= 0{limit}")


def _toposort(tasks: tuple[TaskSpec, ...], upstreams: dict[str, list[str]]) -> list[TaskSpec]:
    """Kahn's algorithm, taking the earliest-declared ready task first, so a graph that
    is already in topological order (every traced flow) keeps the author's order."""
    position = {t.id: i for i, t in enumerate(tasks)}
    indegree = dict.fromkeys(position, 0)
    dependents: dict[str, list[str]] = {t.id: [] for t in tasks}
    for t in tasks:
        for dep in upstreams[t.id]:
            indegree[t.id] += 1
            dependents[dep].append(t.id)
    ready = [position[tid] for tid, n in indegree.items() if n == 0]
    heapq.heapify(ready)
    out: list[TaskSpec] = []
    while ready:
        task = tasks[heapq.heappop(ready)]
        out.append(task)
        for d in dependents[task.id]:
            indegree[d] -= 1
            if indegree[d] == 0:
                heapq.heappush(ready, position[d])
    return out


def _find_cycle(deps: dict[str, list[str]]) -> list[str]:
    """One cycle as a list of task ids (first repeated last), or [] when acyclic."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(deps, white)
    for root in deps:
        if color[root] != white:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(deps[root]))]
        path = [root]
        color[root] = grey
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                stack.pop()
                path.pop()
                color[node] = black
            elif color.get(nxt) == grey:
                start = path.index(nxt)
                return [*path[start:], nxt]
            elif color.get(nxt) == white:
                color[nxt] = grey
                stack.append((nxt, iter(deps[nxt])))
                path.append(nxt)
    return []


def _mapped_inputs(graph: GraphSpec) -> Iterator[tuple[TaskSpec, InputSpec | None, bool]]:
    """Every input something maps over, as (node, input, by a subflow): the mapped
    arguments of mapped tasks, then what subflow nodes pass to a parameter their child
    maps over (None when the call leaves it out)."""
    for t in graph.tasks:
        for arg in t.mapped or ():
            yield t, t.inputs[arg], False
    for t in graph.tasks:
        if t.subflow is not None and t.mapped is None:
            for arg in t.subflow.mapped_parameters:
                yield t, t.inputs.get(arg), True


#: Ids checked per C call by ``_check_names`` (each call holds the GIL: one over a
#: 100,000-task graph's ids held it ~3 ms, which the server's event loop waited for).
_PRINTABLE_SLICE = 10_000


def _check_names(flow_name: str, task_ids: list[str]) -> None:
    """GraphError naming a flow name or task id longer than MAX_NAME characters, or
    with a control character (a newline split the rows of `runs show`; an escape
    sequence could recolour a terminal). Ids are checked a slice at a time: their
    lengths, then joined (``str.isprintable``; the regex only where that finds
    anything)."""
    for what, names in (("flow name", [flow_name]), ("task id", task_ids)):
        for start in range(0, len(names), _PRINTABLE_SLICE):
            part = names[start : start + _PRINTABLE_SLICE]
            longest = max(part, key=len)
            if len(longest) > MAX_NAME:
                raise GraphError(
                    f"{what} {longest[:40]!r}... is {len(longest):,} characters long (at "
                    f"most {MAX_NAME}): names and ids are shown in listings; shorten it"
                )
            if TASK_RUN_ID_SEPARATOR.join(part).isprintable():
                continue
            for name in part:
                bad = control_character(name)
                if bad is not None:
                    raise GraphError(
                        f"{what} {name!r} contains the control character {bad!r}: names and "
                        "ids are shown in terminals and listings; rename it"
                    )


def _split_nodes(graph: GraphSpec) -> dict[str, tuple[str | int, ...]]:
    nodes: dict[str, tuple[str | int, ...]] = {}
    mapped = {t.id for t in graph.tasks if t.mapped is not None}
    # The tasks' maps claim a part first; a subflow's child whose part clashes with
    # theirs gets it whole, unsplit (a server then cannot map over it).
    for t, src, by_subflow in _mapped_inputs(graph):
        if not isinstance(src, FromTask) or (src.task_id in mapped and not src.path):
            continue
        # A mapped producer's own path selects among its children, not inside one.
        path = () if src.task_id in mapped else src.path
        known = nodes.setdefault(src.task_id, path)
        if known != path and not by_subflow:
            raise GraphError(
                f"task {t.name!r} maps over {_describe(src.task_id, path)} but "
                f"another task maps over {_describe(src.task_id, known)}: only one part "
                "of a result can be mapped over; return the parts from separate tasks"
            )
    return nodes


def result_split(graph: GraphSpec, path: tuple[str | int, ...]) -> dict[str, tuple[str | int, ...]]:
    """``graph.split_nodes()`` plus what splits the flow's result at ``path``: the run
    is a subflow whose parent maps over its result (or that part of it). The task the
    result (part) comes from is split at the matching path, unless the result is a list
    the engine assembles (a mapped task's results) or another part of that task is
    split already (then the parent's map fails as it would have)."""
    nodes = graph.split_nodes()
    spec, rest = graph.result, path
    while rest and isinstance(spec, ListOf | DictOf):
        head, rest = rest[0], rest[1:]
        if isinstance(spec, ListOf) and isinstance(head, int) and -len(spec.items) <= head:
            spec = spec.items[head] if head < len(spec.items) else None
        elif isinstance(spec, DictOf) and isinstance(head, str):
            spec = dict(spec.entries).get(head)
        else:
            return nodes
    if not isinstance(spec, FromTask):
        return nodes
    if any(t.id == spec.task_id and t.mapped is not None for t in graph.tasks):
        return nodes  # the list of its children's results: its elements are known
    want = (*spec.path, *rest)
    known = nodes.get(spec.task_id)
    if known is None:
        return {**nodes, spec.task_id: want}
    return nodes


def _describe(task_id: str, path: tuple[str | int, ...]) -> str:
    return task_id + "".join(f"[{p!r}]" for p in path)


def bind_params(graph: GraphSpec, given: Mapping[str, Any]) -> dict[str, Any]:
    """Parameter values with defaults filled in; ParameterError for unknown or missing
    ones."""
    known = {p.name: p for p in graph.params}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ParameterError(
            f"flow {graph.name!r} got unknown parameter(s) {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(known) or 'none'}"
        )
    bound: dict[str, Any] = {}
    for name, spec in known.items():
        if name in given:
            bound[name] = given[name]
        elif spec.required:
            raise ParameterError(f"flow {graph.name!r} is missing required parameter {name!r}")
        else:
            bound[name] = spec.default
    return bound


@dataclass(frozen=True, slots=True)
class JsonConsumers:
    """Where values must be json because a portable task reads them.

    ``producers`` maps an upstream task id, and ``params`` a flow parameter, to the
    first portable consumer that reads it, as ``(task name, argument)``.
    """

    producers: Mapping[str, tuple[str, str]]
    params: Mapping[str, tuple[str, str]]


def json_consumers(graph: GraphSpec) -> JsonConsumers:
    """The task results and parameters that portable tasks read (so must be json)."""
    producers: dict[str, tuple[str, str]] = {}
    params: dict[str, tuple[str, str]] = {}
    for task in graph.tasks:
        if not task.portable:
            continue
        for arg, spec in task.inputs.items():
            for ref in iter_task_refs(spec):
                producers.setdefault(ref.task_id, (task.name, arg))
            for name in iter_params(spec):
                params.setdefault(name, (task.name, arg))
    return JsonConsumers(producers, params)
