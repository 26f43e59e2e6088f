"""Tracing compiler: runs a flow function to build a GraphSpec (docs/flows.md).

Calls to tasks inside the flow function add nodes and return TaskRefs: nothing
executes at compile time. Parameters are first references (``ParamRef``), so that a
flow whose structure does not depend on its parameters has one graph for all values
(the *symbolic* compile). When the body uses a parameter as a value (``range(n)``,
``if n > 8``, an f-string), the compiler runs the body again with the run's actual
values (the *value* compile): the graph is then the one for those values, marked
``value_dependent``, and remembered as such for the flow's code so later compiles run
the body once.

The GraphSpec keeps constants as the live objects the author passed (an embedded run
never copies them); ``graph_to_proto`` encodes them when a FlowGraph message is needed.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import itertools
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import CodeType
from typing import TYPE_CHECKING, Any

from headwater.wire import (
    SUBFLOW_TASK_TYPE,
    TASK_FIELDS,
    Const,
    DictOf,
    FromTask,
    GraphError,
    GraphSpec,
    InputSpec,
    ListOf,
    Param,
    ParameterError,
    ParamSpec,
    StreamStandIn,
    SubflowSpec,
    TaskSpec,
    Trigger,
    exception_text,
    iter_task_refs,
    make_from_task,
    make_task_spec,
)

from ._errors import FlowDefinitionError
from ._identity import IN_TRY, IdentityCheck, identity_checks, resolve, unread_checks
from ._refs import (
    NeedsValues,
    ParamRef,
    Ref,
    RefusedInLogging,
    TaskRef,
    _show,
    contains_ref,
    unmapped,
)

if TYPE_CHECKING:
    from ._flow import Flow
    from ._task import Task

_current: contextvars.ContextVar[_Context | None] = contextvars.ContextVar(
    "headwater_compile_context", default=None
)


def current_context() -> _Context | None:
    """The flow being compiled in this thread, if any."""
    return _current.get()


#: The most tasks a graph compiled in this context may have (0: no bound).
_TASK_BOUND: contextvars.ContextVar[int] = contextvars.ContextVar(
    "headwater_graph_task_bound", default=0
)


class GraphTooLarge(Exception):
    """A flow body made more tasks than the graph it is compiled for may have."""


@contextmanager
def task_bound(most: int) -> Iterator[None]:
    """Flows compiled inside stop with GraphTooLarge at their ``most + 1``-th task
    (0: no bound). A worker builds a value-dependent graph for a server under the
    server's max_graph_tasks: a body making 1,000,000 subflows for one parameter value
    held the worker's CPU for 75 s and 3.3 GB before the graph was refused by size (a
    hostile trial)."""
    token = _TASK_BOUND.set(most)
    try:
        yield
    finally:
        _TASK_BOUND.reset(token)


class _Context:
    def __init__(self, flow_name: str, code: CodeType | None, symbolic: bool) -> None:
        self.flow_name = flow_name
        self.code = code  # the flow body's code, to name its lines in errors
        self.symbolic = symbolic
        #: (parameter, use, file:line) of the first concrete use of a parameter.
        self.value_use: tuple[str, str, str] | None = None
        self.nodes: list[TaskSpec] = []
        self.node_ids: dict[str, TaskSpec] = {}
        self.name_counts: dict[str, int] = {}
        self.task_types_by_name: dict[str, str] = {}
        self.mapped_nodes: set[str] = set()
        self.case_stack: list[str] = []
        #: Each task's TaskSpec fields that are the same for all its calls (TASK_FIELDS).
        self.task_fields: dict[Task[Any, Any], tuple[Any, ...]] = {}
        #: The first misuse of a task result refused in the body: raised after it even
        #: when the body caught it (`try: int(r) except Exception: v = 0` went on).
        #: So is a task past the bound (GraphTooLarge).
        self.misuse: FlowDefinitionError | GraphTooLarge | None = None
        self.most_tasks = _TASK_BOUND.get()

    def _new_id(self, name: str) -> str:
        if self.most_tasks and len(self.node_ids) >= self.most_tasks:
            self.misuse = GraphTooLarge(
                f"flow {self.flow_name!r} makes more than {self.most_tasks:,} tasks for "
                "these values, the most a graph may have on this server (max_graph_tasks)"
            )
            raise self.misuse
        count = self.name_counts.get(name, 0) + 1
        self.name_counts[name] = count
        node_id = name if count == 1 else name + "-" + str(count)
        while node_id in self.node_ids:  # e.g. a task literally named "load-2"
            count += 1
            self.name_counts[name] = count
            node_id = f"{name}-{count}"
        return node_id

    def to_input(self, value: Any, task_name: str, arg: str) -> InputSpec:
        # type() before isinstance(): isinstance() on a ParamRef is a concrete use.
        kind = type(value)
        if kind is TaskRef:
            return FromTask(value._node_id, value._path)
        if kind is ParamRef:
            return Param(value._param)
        if kind is unmapped:
            raise FlowDefinitionError(
                f"{_where(task_name, arg)}: unmapped() only applies to arguments of task.map(...)"
            )
        if isinstance(value, Ref):
            raise FlowDefinitionError(f"{_where(task_name, arg)}: unsupported reference")
        if kind.__module__ in _ITERATOR_MODULES and hasattr(kind, "__next__"):
            # A generator or map(...) (``total(sq(i) for i in range(n))``): consumed now,
            # as the task would consume it, so the calls in it are tasks of the graph.
            # Passed on as it was, it ran them as plain functions inside the task, and no
            # server could send it (a user trial).
            value = list(value)
            kind = list
        if contains_ref(value):
            if kind not in (list, tuple, dict, set, frozenset):
                # A NamedTuple or dict subclass would arrive rebuilt as a plain tuple or
                # dict: refused as for any object (or built with the parameter's value).
                self._check_hidden(value, task_name, arg)
            if isinstance(value, set | frozenset):
                raise FlowDefinitionError(
                    f"{_where(task_name, arg)}: a set cannot hold task results "
                    "(they are not hashable until they run); use a list"
                )
            if isinstance(value, list | tuple):
                return ListOf(
                    tuple(self.to_input(v, task_name, arg) for v in value),
                    isinstance(value, tuple),
                )
            if isinstance(value, dict):
                if not all(isinstance(k, str) for k in value):
                    raise FlowDefinitionError(
                        f"{_where(task_name, arg)}: a dict holding task "
                        "results must have string keys"
                    )
                return DictOf(
                    tuple((k, self.to_input(v, task_name, arg)) for k, v in value.items())
                )
        if kind not in _PLAIN_TYPES or (kind in _CONTAINERS and value):
            self._check_hidden(value, task_name, arg)  # ``[Config(path=r)]`` too
        return Const(value)

    def _check_hidden(self, value: Any, task_name: str, arg: str) -> None:
        """A reference stored inside an object (``Config(path=out_dir)``) would reach
        the task as a reference: a parameter there is a use of its value, and a task
        result there is refused."""
        found = _hidden_ref(value, 0)
        if found is None:
            return
        ref, holder = found
        kind = type(holder if holder is not None else value).__name__
        if type(ref) is ParamRef:
            if self.value_use is None:
                where = f"inside a {kind} given to task {task_name!r}"
                self.value_use = (ref._param, f"stored {where}", "")
            raise NeedsValues(ref._param)
        shape = next((b for b in (tuple, list, dict) if isinstance(holder, b)), None)
        fate = (
            f"which would arrive rebuilt as a plain {shape.__name__}"
            if shape is not None
            else "where it would stay a reference"
        )
        raise FlowDefinitionError(
            f"{_where(task_name, arg)}: {ref._describe()} is inside a {kind} "
            f"object, {fate}; pass it as its own argument (or in a list or dict) and "
            f"build the {kind} inside the task"
        )

    def add_call(
        self, task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], *, mapped: bool
    ) -> TaskRef:
        # The hot path of every compile (once per task call): the common argument kinds
        # (a task result, a plain scalar constant) are turned into inputs here directly,
        # everything else goes through ``to_input``, which gives the same answer.
        wait_for = kwargs.pop("wait_for", None) if kwargs else None
        existing = self.task_types_by_name.setdefault(task.name, task.task_type)
        if existing != task.task_type:
            raise ValueError(
                f"flow {self.flow_name!r}: two different tasks are named {task.name!r} "
                f"({existing} and {task.task_type}); give one of them another name="
            )
        arguments = task.bind_arguments(args, kwargs)
        mapped_args: list[str] = []
        inputs: dict[str, InputSpec] = {}
        node_ids = self.node_ids
        for arg, value in arguments.items():
            kind = type(value)
            if kind is unmapped:
                if not mapped:
                    raise FlowDefinitionError(
                        f"task {task.name!r}, argument {arg!r}: unmapped() only applies "
                        "to arguments of task.map(...)"
                    )
                value = value.value
                kind = type(value)
            elif mapped:
                mapped_args.append(arg)
            spec: InputSpec
            if kind is TaskRef:
                if value._node_id not in node_ids:
                    raise ValueError(
                        f"task {task.name!r} got the result of task {value._node_id!r}, "
                        f"which is not part of flow {self.flow_name!r}"
                    )
                spec = make_from_task(value._node_id, value._path)
            elif kind in _SCALAR_TYPES:
                spec = Const(value)
            else:
                spec = self.to_input(value, task.name, arg)
                if not isinstance(spec, Const | Param | FromTask):
                    for ref in iter_task_refs(spec):
                        if ref.task_id not in node_ids:
                            raise ValueError(
                                f"task {task.name!r} got the result of task {ref.task_id!r}, "
                                f"which is not part of flow {self.flow_name!r}"
                            )
                elif type(spec) is FromTask and spec.task_id not in node_ids:
                    raise ValueError(
                        f"task {task.name!r} got the result of task {spec.task_id!r}, "
                        f"which is not part of flow {self.flow_name!r}"
                    )
            inputs[arg] = spec
            if mapped and type(spec) is Const and arg in mapped_args:
                _check_mappable(spec.value, task.name, arg)
            if task.portable:
                _check_json_constants(spec, task.name, arg, arg in mapped_args)
        if mapped and not mapped_args:
            raise FlowDefinitionError(
                f"task {task.name!r}: .map() needs at least one argument that is not unmapped()"
            )
        if mapped and len(mapped_args) > 1:
            _check_known_lengths(task.name, {arg: inputs[arg] for arg in mapped_args})
        wait = self._wait_for(task.name, wait_for)
        node_id = self._new_id(task.name)
        fields = self.task_fields.get(task)
        if fields is None:
            if task.cache is not None and task.cache.key_fn is not None:
                # A parameter captured by the key function is a use of its value (it
                # was a placeholder there: no key, no caching); a task result, refused.
                self._check_hidden(task.cache.key_fn, task.name, "cache_key_fn")
            fields = self.task_fields[task] = _task_fields(task)
        node = make_task_spec(
            node_id,
            inputs,
            wait,
            tuple(mapped_args) if mapped else None,
            tuple(self.case_stack),
            fields,
        )
        self.nodes.append(node)
        node_ids[node_id] = node
        return TaskRef(node_id, mapped)

    def _wait_for(self, name: str, wait_for: Any) -> tuple[str, ...]:
        """The node's order-only dependencies (enclosing ``case`` blocks, wait_for),
        each checked to belong to this flow."""
        if not self.case_stack and wait_for is None:
            return ()  # the common case, once per task call
        deps: dict[str, None] = dict.fromkeys(self.case_stack)
        for item in _as_list(wait_for, name):
            if type(item) is not TaskRef:
                raise FlowDefinitionError(
                    f"task {name!r}: wait_for takes task results from this flow, "
                    f"got {type(item).__name__}"
                )
            deps[item._node_id] = None
        for dep in deps:
            if dep not in self.node_ids:
                raise ValueError(f"task {name!r} waits for unknown task {dep!r}")
        return tuple(deps)

    def _check_upstream(self, name: str, inputs: dict[str, InputSpec]) -> None:
        """Every task result the inputs refer to belongs to this flow."""
        for spec in inputs.values():
            if isinstance(spec, Const | Param):
                continue
            for ref in (spec,) if isinstance(spec, FromTask) else iter_task_refs(spec):
                if ref.task_id not in self.node_ids:
                    raise ValueError(
                        f"task {name!r} got the result of task {ref.task_id!r}, "
                        f"which is not part of flow {self.flow_name!r}"
                    )

    def add_subflow(
        self, flow: Flow[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> TaskRef:
        """A call of another flow in this flow's body: a subflow node whose inputs are
        the child's parameters (docs/flows.md, "Subflows")."""
        wait_for = kwargs.pop("wait_for", None)
        label = f"flow {flow.name}"
        existing = self.task_types_by_name.setdefault(flow.name, label)
        if existing != label:
            raise ValueError(
                f"flow {self.flow_name!r}: a task and a flow are both named {flow.name!r} "
                f"({existing} and {label}); give one of them another name="
            )
        try:
            arguments = flow.bind(*args, **kwargs)
        except ParameterError as exc:
            raise FlowDefinitionError(f"subflow call: {exc}") from None
        missing = [p.name for p in flow.parameters if p.required and p.name not in arguments]
        if missing:
            raise FlowDefinitionError(
                f"subflow {flow.name!r} is missing required parameter(s) "
                f"{', '.join(map(repr, missing))}"
            )
        inputs = {name: self.to_input(value, flow.name, name) for name, value in arguments.items()}
        mapped = mapped_parameters(flow)
        for p in flow.parameters:
            if p.name in mapped and p.name not in inputs:
                # A default the child maps over goes in the node, element by element: a
                # server cannot map over the default in the child's graph (one value).
                arguments[p.name] = p.default
                inputs[p.name] = Const(p.default)
        constants = {n: arguments[n] for n, spec in inputs.items() if isinstance(spec, Const)}
        if constants:  # checked (and converted) now, before anything runs
            for name, value in flow.types.validate(constants).items():
                inputs[name] = Const(value)
        self._check_upstream(flow.name, inputs)
        wait = self._wait_for(flow.name, wait_for)
        options = flow.call_options
        node_id = self._new_id(flow.name)
        node = TaskSpec(
            id=node_id,
            name=flow.name,
            task_type=SUBFLOW_TASK_TYPE,
            inputs=inputs,
            wait_for=wait,
            retry=options.retry,
            timeout=options.timeout,
            trigger=options.trigger,
            tags=options.tags,
            argument_order=tuple(p.name for p in flow.parameters),
            subflow=SubflowSpec(flow.name, "", flow, mapped),
            gates=tuple(self.case_stack),
        )
        self.nodes.append(node)
        self.node_ids[node_id] = node
        return TaskRef(node_id, False)


def _task_fields(task: Task[Any, Any]) -> tuple[Any, ...]:
    """The values of a task's calls' TaskSpec fields that come from the task, in
    ``TASK_FIELDS`` order (a KeyError here: a TaskSpec field this misses)."""
    values = {
        "name": task.name,
        "task_type": task.task_type,
        "retry": task.retry,
        "timeout": task.timeout,
        "schedule_to_start_timeout": task.schedule_to_start_timeout,
        "trigger": task.trigger,
        "cache": task.cache,
        "tags": task.tags,
        "labels": task.labels,
        "resources": task.resources,
        "version": task.version,
        "portable": task.portable,
        "argument_order": task.argument_order,
        "fn": task.fn if task.has_function else None,
        "no_retry_on": task.no_retry_on,
        "code_digest": task.code_digest,
        "subflow": None,
    }
    return tuple(values[name] for name in TASK_FIELDS)


#: Constants that can hold no reference: an input of one is a Const without a look inside.
_SCALAR_TYPES = frozenset({int, float, str, bool, bytes, complex, type(None)})
_PLAIN_TYPES = frozenset({int, float, str, bool, bytes, complex, type(None), list, tuple, dict})
_CONTAINERS = (list, tuple, dict)


#: Elements of an object array looked at for a hidden reference (a bigger array's
#: further elements are not).
_ARRAY_SCAN = 100_000


def _held(value: Any) -> list[Any]:
    """What an object holds that could be a reference: its attributes and slots; a
    function's captured variables and defaults (``lambda v: v * n``); a partial's
    function and arguments; the elements of a deque, a slice's bounds, and the elements
    of a numpy or pandas object array (``np.array([five(), 1])``), which reached the
    task still a reference."""
    import collections
    import functools
    import types

    if isinstance(value, collections.deque):  # (no __dict__: its elements were missed)
        return list(itertools.islice(value, _ARRAY_SCAN))
    if isinstance(value, slice):
        return [value.start, value.stop, value.step]
    if isinstance(value, functools.partial):
        return [value.func, *value.args, *value.keywords.values()]
    if isinstance(value, types.FunctionType):
        cells = []
        for cell in value.__closure__ or ():
            with contextlib.suppress(ValueError):  # (a cell not filled yet)
                cells.append(cell.cell_contents)
        return [*cells, *(value.__defaults__ or ()), *(value.__kwdefaults__ or {}).values()]
    if isinstance(value, types.MethodType):
        return [value.__self__]
    dtype = getattr(value, "dtype", None)
    if dtype is not None and getattr(dtype, "kind", "") == "O":  # numpy, pandas Series
        flat = getattr(value, "to_numpy", lambda: value)()
        return list(itertools.islice(getattr(flat, "flat", flat), _ARRAY_SCAN))
    if type(value).__module__.startswith("pandas") and hasattr(value, "dtypes"):
        to_numpy = getattr(value, "to_numpy", None)  # a DataFrame with object columns
        if callable(to_numpy) and any(getattr(d, "kind", "") == "O" for d in value.dtypes):
            return list(itertools.islice(to_numpy().flat, _ARRAY_SCAN))
    try:
        attrs = vars(value)
    except TypeError:  # no __dict__
        attrs = None
    items = list(attrs.values()) if isinstance(attrs, dict) else []
    for slot in getattr(type(value), "__slots__", ()):
        if isinstance(slot, str) and hasattr(value, slot):
            items.append(getattr(value, slot))
    return items


def _hidden_ref(value: Any, depth: int, holder: Any = None) -> tuple[Any, Any] | None:
    """A reference inside an object's attributes (a few levels deep, through lists,
    tuples, sets and dicts too: ``[Config(path=r)]``), with the object holding it; or
    None."""
    if depth > 3 or (depth == 0 and type(value) in _SCALAR_TYPES):
        return None
    if isinstance(value, Ref):
        return value, holder
    if isinstance(value, list | tuple | set | frozenset):
        items: Any = value
        if type(value) not in (list, tuple, set, frozenset):
            holder = value  # a NamedTuple: it would arrive as a plain tuple
    elif isinstance(value, dict):
        items = value.values()
        if type(value) is not dict:
            holder = value  # an OrderedDict, a defaultdict: it would arrive as a dict
    else:
        holder = value
        items = _held(value)
    for item in items:
        if type(item) not in _SCALAR_TYPES:
            found = _hidden_ref(item, depth + 1, holder)
            if found is not None:
                return found
    return None


def _check_mappable(value: Any, task_name: str, arg: str) -> None:
    """A constant a task maps over must have elements, by the engine's own rule
    (``PYTHON_VALUES.length``): refused when the flow is built, not at run time."""
    from headwater_runtime.engine import PYTHON_VALUES  # (only for mapped constants)

    if PYTHON_VALUES.length(value) is None:
        raise FlowDefinitionError(
            f"task {task_name!r}, argument {arg!r}: cannot map over a value of type "
            f"{type(value).__name__} (strings, bytes, dicts, sets, generators, DataFrames and "
            "single values have no elements to map over); pass a list"
        )


def _check_known_lengths(task_name: str, mapped: dict[str, InputSpec]) -> None:
    """Arguments mapped together whose lengths are known when the flow is built (lists
    written in it) must be as long as each other: refused then, not at run time."""
    from headwater_runtime.engine import PYTHON_VALUES

    lengths: dict[str, int] = {}
    for arg, spec in mapped.items():
        if isinstance(spec, ListOf):
            lengths[arg] = len(spec.items)
        elif isinstance(spec, Const) and (n := PYTHON_VALUES.length(spec.value)) is not None:
            lengths[arg] = n
    if len(set(lengths.values())) > 1:
        told = ", ".join(f"{arg}={n}" for arg, n in lengths.items())
        raise FlowDefinitionError(
            f"task {task_name!r}: .map() arguments have different lengths ({told}); "
            "map over lists of one length, or pass one whole with unmapped()"
        )


def _check_json_constants(spec: InputSpec, task_name: str, arg: str, mapped: bool) -> None:
    """A portable task reads only json: its constants must be json-encodable."""
    if isinstance(spec, ListOf):
        for item in spec.items:
            _check_json_constants(item, task_name, arg, False)
    elif isinstance(spec, DictOf):
        for _, item in spec.entries:
            _check_json_constants(item, task_name, arg, False)
    elif isinstance(spec, Const):
        value = spec.value
        if mapped and isinstance(value, tuple | range):
            value = list(value)  # mapped over element by element
        from headwater.wire import EncodingError, encode  # the codecs: portable tasks only

        try:
            encode(value, portable=True)  # tagged json, or EncodingError saying why not
        except EncodingError as exc:
            raise FlowDefinitionError(
                f"task {task_name!r}, argument {arg!r}: {exc}; the task reads only json "
                "(it is portable or implemented in another language)"
            ) from None


def _as_list(value: Any, task_name: str) -> list[Any]:
    if value is None:
        return []
    if type(value) is TaskRef:
        return [value]
    if isinstance(value, Ref):
        raise FlowDefinitionError(f"task {task_name!r}: wait_for takes task results")
    if isinstance(value, list | tuple | set):
        return list(value)
    raise FlowDefinitionError(f"task {task_name!r}: wait_for must be a list of task results")


#: Flow bodies (by code object) found to use a parameter as a value, with that use:
#: later compiles of the same code skip the symbolic attempt, so the body runs once.
_VALUE_DEPENDENT: dict[CodeType, tuple[str, str, str]] = {}


def body_code(flow: Flow[..., Any]) -> CodeType | None:
    """The code object of the flow function's body (through functools.wraps)."""
    fn = inspect.unwrap(flow.fn)
    code = getattr(fn, "__code__", None)
    return code if isinstance(code, CodeType) else None


def value_use(flow: Flow[..., Any]) -> tuple[str, str, str] | None:
    """(parameter, use, file:line) when the flow's body is known to use a parameter as
    a value; None while it is not known to (it may still, on a path not yet taken)."""
    code = body_code(flow)
    return flow._value_use or (_VALUE_DEPENDENT.get(code) if code is not None else None)


def build_graph(flow: Flow[..., Any], values: Mapping[str, Any] | None) -> GraphSpec:
    """The validated graph of ``flow`` for a run with these parameter values.

    ``values`` are the run's validated parameters with defaults filled in (see
    ``Flow.prepare``), or None when no values are known (``flow.graph()`` with a
    required parameter missing): then only a symbolic graph can be built, and a
    value-dependent flow raises ParameterError naming the parameter to give.

    The symbolic graph (parameters as ``Param`` inputs, ``value_dependent`` false) is
    returned whenever the body never uses a parameter as a value; it is valid for every
    run. Otherwise the graph is built from ``values`` (parameters given to tasks become
    constants) and marked value-dependent. This is the one entry point every path
    uses (embedded runs, the client, the CLI; a worker building a graph by name later).
    """
    known = value_use(flow)
    if known is None:
        known = _identity_use(flow)  # (a check no placeholder can answer: `n is None`)
        if known is not None:
            _remember(flow, known)
    if known is None:
        # What the body prints in this pass is held: a pass that meets a parameter used
        # as a value is done again with values, which prints it all again (`print("n
        # =", n)` showed "n = n = 3": the first pass's half line, then the second's).
        held = _HeldOutput()
        failure: Exception | None = None
        try:
            graph = _trace(flow, None)
        except NeedsValues:
            held.end(keep=False)
        except (FlowDefinitionError, GraphError, ParameterError):
            held.end(keep=True)
            raise
        except Exception as exc:
            # The body failed on something a placeholder cannot do (json.dumps(n), a C
            # function): try again with values; a real bug fails the same way again.
            if values is None or not flow.parameters:
                held.end(keep=True)
                raise
            held.end(keep=False)
            failure = exc
        else:
            held.end(keep=True)
            return graph
        if failure is not None and values is not None:
            graph = _trace(flow, values)
            use = f"given to code that needs values ({type(failure).__name__}: {failure})"
            _remember(flow, (next(iter(values), "?"), use, ""))
            return graph
        known = flow._value_use
        assert known is not None
    if values is None:
        name, use, where = known
        # Values were not given for every parameter without a default: those are what
        # the user has to add (the parameter used as a value may have a default).
        needed = [p.name for p in flow.parameters if p.required] or [name]
        raise ParameterError(
            f"flow {flow.name!r} builds its graph from its parameters' values (parameter "
            f"{name!r} {use}{' at ' + where if where else ''}): give "
            f"{', '.join(repr(n) for n in needed)}, e.g. "
            f"{flow.name}.graph({', '.join(f'{n}=...' for n in needed)}) or "
            f"`headwater graph FILE:{flow.name} {' '.join(f'-p {n}=...' for n in needed)}`"
        )
    return _trace(flow, values)


class _HeldOutput:
    """While a flow body's symbolic pass runs: what this thread writes to sys.stdout and
    sys.stderr is held (other threads' writes go through), then written out in order
    (``end(keep=True)``) or dropped when the body runs again with values, which prints
    it again (``end(keep=False)``)."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.held: list[tuple[Any, str]] = []
        self.active = True
        self.streams = (_Holding(self, sys.stdout), _Holding(self, sys.stderr))
        sys.stdout, sys.stderr = self.streams

    def end(self, *, keep: bool) -> None:
        self.active = False
        out, err = self.streams
        # (a stream another thread put in place meanwhile keeps ours as its own
        # original: ours passes everything through from now on)
        if sys.stdout is out:
            sys.stdout = out.original
        if sys.stderr is err:
            sys.stderr = err.original
        held, self.held = self.held, []
        if keep:
            for stream, text in held:
                stream.write(text)


class _Holding(StreamStandIn):
    """sys.stdout or sys.stderr during ``_HeldOutput``."""

    def __init__(self, holder: _HeldOutput, original: Any) -> None:
        super().__init__(original)
        self.holder = holder

    def write(self, text: str) -> int:
        holder = self.holder
        if holder.active and threading.get_ident() == holder.thread:
            holder.held.append((self.original, text))
            return len(text)
        return super().write(text)


def mapped_parameters(flow: Flow[..., Any]) -> tuple[str, ...]:
    """The parameters of ``flow`` one of its tasks maps over directly, from its
    symbolic graph (built once per Flow object); () when the graph cannot be built
    without values. A flow calling it as a subflow gives these with their elements."""
    known = flow._mapped_parameters
    if known is None:
        flow._mapped_parameters = ()  # (while it is built: a flow that calls itself)
        try:
            known = tuple(sorted(build_graph(flow, None).mapped_params()))
        except Exception:  # value-dependent, or failing: its own compile says why
            known = ()
        flow._mapped_parameters = known
    return known


#: Each identity or type check of a flow body (``_identity.py``) with the task or flow
#: whose result it checks (None: not one's), worked out once per body.
_CHECKED: dict[CodeType, tuple[tuple[IdentityCheck, Any], ...]] = {}


def _checked(flow: Flow[..., Any]) -> tuple[tuple[IdentityCheck, Any], ...]:
    from ._flow import Flow
    from ._task import Task

    fn = inspect.unwrap(flow.fn)
    code = getattr(fn, "__code__", None)
    known = _CHECKED.get(code) if isinstance(code, CodeType) else None
    if known is None:
        found = []
        for check in identity_checks(fn):
            result_of: Task[..., Any] | Flow[..., Any] | None = None
            for call in check.calls:
                target = resolve(fn, call)
                target = getattr(target, "__self__", target)  # (`fetch.map(...)`: fetch's)
                if isinstance(target, Task | Flow):
                    result_of = target
                    break
            found.append((check, result_of))
        known = tuple(found)
        if isinstance(code, CodeType):
            _CHECKED[code] = known
    return known


def _identity_use(flow: Flow[..., Any]) -> tuple[str, str, str] | None:
    """(parameter, use, file:line) of the first identity or type check in the flow's
    body that may see a parameter (``if limit is None:``, and as well through another
    name, a container or a loop: ``for v in (a, b): if v is None``): the graph must
    then be built from the values, as no placeholder can answer such a check
    (_identity.py). Any check not of a task or flow result counts: which value it
    checks is not followed. A body whose source cannot be read counts when its
    bytecode makes such a check."""
    params = [p.name for p in flow.parameters]
    if not params:
        return None
    loose = [check for check, target in _checked(flow) if target is None]
    direct = [check for check in loose if check.name in params]
    if direct:
        return direct[0].name or "", direct[0].how, _show(_file(flow), direct[0].line)
    if loose:
        seen = f"`{loose[0].name}`" if loose[0].name else "a value"
        use = loose[0].how  # (a `try` catching TypeError says it all)
        if not use.startswith("may be "):
            use = f"may be checked by identity or type ({seen} {use})"
        return params[0], use, _show(_file(flow), loose[0].line)
    if unread_checks(flow.fn):
        use = "may be checked by identity or type in a body whose source cannot be read"
        return params[0], use, ""
    return None


def _where(task_name: str, arg: str) -> str:
    """What an input belongs to, in a message: a task's argument, or the flow's result
    (to_input's ``arg`` "return": its ``task_name`` is only a label)."""
    if arg == RETURN_ARG:
        return f"the result of flow {task_name.removeprefix(RESULT_OF).removesuffix('>')!r}"
    return f"task {task_name!r}, argument {arg!r}"


#: to_input's task name and argument for the flow's returned value.
RESULT_OF = "<result of "
RETURN_ARG = "return"

#: The modules of the iterators a task argument is consumed from (generators, map,
#: filter, zip, enumerate, itertools' own).
_ITERATOR_MODULES = frozenset({"builtins", "itertools"})


def _check_identity_of_results(flow: Flow[..., Any], tries: bool = False) -> None:
    """FlowDefinitionError for a task or flow result checked by identity or type in
    the flow's body (``if fetch() is None``, ``isinstance(rows, list)``): the check
    would see the reference, never the value, and silently take one branch. ``tries``:
    instead, a result used in a ``try`` (or ``with suppress``) catching TypeError,
    checked once the body has run."""
    from ._flow import Flow

    for check, target in _checked(flow):
        if target is None or check.how.startswith(IN_TRY) != tries:
            continue
        kind = "flow" if isinstance(target, Flow) else "task"
        what = f"the result of {kind} {target.name!r}"
        if tries:
            # A task result in a `try` catching TypeError: C code refusing its
            # placeholder by type raised TypeError, and the body silently took its
            # fallback (json.dumps({"v": result}) gave "{}", a user trial).
            caught = check.how.removeprefix(IN_TRY).strip()
            raise FlowDefinitionError(
                f"flow {flow.name!r}, {_show(_file(flow), check.line)}: {what} is used in "
                f"{caught} while the flow is being built, when the {kind} has not run yet: "
                "code that needs its value refuses the placeholder, and the fallback "
                "would be taken in every run (nor is the task's failure caught there when "
                "it runs). Instead, do this inside a task (retries= and trigger= handle "
                "a task's failures)"
            )
        if check.name is not None:
            what += f" (`{check.name}`)"
        raise FlowDefinitionError(
            f"flow {flow.name!r}, {_show(_file(flow), check.line)}: {what} is "
            f"{check.how} while the flow is being built, when it is not known yet: the "
            "check would always see a placeholder. Instead, check it inside a task, or "
            "branch at run time with `with case(ref, value):` blocks and merge()"
        )


def _file(flow: Flow[..., Any]) -> str:
    return str(inspect.unwrap(flow.fn).__code__.co_filename)


def _body_line(flow: Flow[..., Any], exc: BaseException) -> str:
    """``, file:line`` of the flow body's line ``exc`` came through ("" if none)."""
    code = body_code(flow)
    where = ""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is code:
            where = f", {_show(tb.tb_frame.f_code.co_filename, tb.tb_lineno)}"
        tb = tb.tb_next
    return where


def _c_misuse(flow: Flow[..., Any], exc: BaseException) -> str:
    """The message for a task result that reached code needing its value, naming the
    line of the flow body the error came through."""
    where = _body_line(flow, exc)
    return (
        f"flow {flow.name!r}{where}: a task result was given to code that needs its value "
        f"({type(exc).__name__}: {exc}) while the flow is being built: the task has not "
        "run yet. Instead, pass the result to a task and do this inside that task"
    )


#: The attribute naming the flow and line of its body that raised an exception while
#: its graph was built (``flow 'etl', etl.py:12``): the exception itself goes on as
#: raised (a notebook shows the body's own error), and the CLI says it in one line.
BODY_ERROR = "headwater_flow_body"


def _mark_body_error(flow: Flow[..., Any], exc: Exception) -> None:
    with contextlib.suppress(AttributeError, TypeError):  # (an exception without a dict)
        setattr(exc, BODY_ERROR, f"flow {flow.name!r}{_body_line(flow, exc)}")


def body_error(exc: BaseException) -> str:
    """For an exception a flow body raised while its graph was built: the flow and
    line, the exception's type and message, in one line; "" for any other."""
    where = getattr(exc, BODY_ERROR, "")
    if not isinstance(where, str) or not where:
        return ""
    line = " ".join(exception_text(exc).split())
    return f"{where}: its body raised {type(exc).__name__}: {line}".rstrip(": ")


def _located(flow: Flow[..., Any], exc: Exception) -> Exception:
    """``exc`` (a FlowDefinitionError or ParameterError raised in the flow body by a
    task call: a missing argument, a dict with other keys...) with the flow and the
    body's line in front, as the refusals of a result's use have them; one that has
    them already, as it is."""
    text = str(exc)
    if text.startswith(f"flow {flow.name!r}"):
        return exc
    located = type(exc)(f"flow {flow.name!r}{_body_line(flow, exc)}: {text}")
    located.__cause__ = exc.__cause__
    return located


def _remember(flow: Flow[..., Any], use: tuple[str, str, str]) -> None:
    flow._value_use = use
    code = body_code(flow)
    if code is not None:
        _VALUE_DEPENDENT[code] = use


def _trace(flow: Flow[..., Any], values: Mapping[str, Any] | None) -> GraphSpec:
    """Run the flow body once: symbolically (``values`` None) or with values."""
    params = flow.parameters
    symbolic = values is None
    _check_identity_of_results(flow)
    ctx = _Context(flow.name, body_code(flow), symbolic)
    args = {p.name: ParamRef(p.name) for p in params} if symbolic else dict(values or {})
    token = _current.set(ctx)
    try:
        returned = flow.fn(**args)
    except NeedsValues:
        assert ctx.value_use is not None
        _remember(flow, ctx.value_use)
        raise
    except RefusedInLogging:
        assert ctx.misuse is not None
        raise ctx.misuse from None
    except (TypeError, ValueError) as exc:
        if ctx.misuse is not None:
            raise ctx.misuse from None
        if isinstance(exc, FlowDefinitionError | ParameterError):
            raise _located(flow, exc) from None
        if "TaskRef" not in str(exc):
            _mark_body_error(flow, exc)
            raise
        # C code met a task result (",".join([ref]), json.dumps({"a": ref})): it asks
        # nothing of the reference that could say so, only its type.
        raise FlowDefinitionError(_c_misuse(flow, exc)) from exc
    except (FlowDefinitionError, GraphError, ParameterError):
        raise
    except Exception as exc:
        _mark_body_error(flow, exc)
        raise
    finally:
        _current.reset(token)
    if ctx.misuse is not None:  # refused, caught by the body, and the body went on
        raise ctx.misuse
    # After the body, when a use of the result the body caught has not said more (a
    # log call's "cannot be turned into a number"): a result in a `try` or `suppress`
    # that C code may have refused by its type, asking it nothing.
    _check_identity_of_results(flow, tries=True)
    if ctx.value_use is not None:  # the body caught the signal and went on
        _remember(flow, ctx.value_use)
        raise NeedsValues(ctx.value_use[0])
    if inspect.isawaitable(returned):
        raise FlowDefinitionError(f"flow {flow.name!r} must be a plain function (not async)")
    # (A generator returned, ``return (sq(i) for i in ...)``, is consumed by to_input
    # below, as a task argument is.)
    token = _current.set(ctx)  # a ParamRef returned as such is a concrete use too
    try:
        result = (
            None
            if returned is None
            else ctx.to_input(returned, f"{RESULT_OF}{flow.name}>", RETURN_ARG)
        )
    except NeedsValues:  # a parameter inside a returned object (``Config(path=day)``)
        assert ctx.value_use is not None
        _remember(flow, ctx.value_use)
        raise
    finally:
        _current.reset(token)
    if ctx.value_use is not None:
        _remember(flow, ctx.value_use)
        raise NeedsValues(ctx.value_use[0])
    reference_ids: tuple[str, ...] = ()
    if result is not None:
        reference_ids = tuple(dict.fromkeys(r.task_id for r in iter_task_refs(result)))
    graph = GraphSpec(
        name=flow.name,
        version=flow.version,
        tasks=tuple(ctx.nodes),
        params=tuple(params),
        result=result,
        reference_task_ids=reference_ids,
        description=flow.description,
        value_dependent=not symbolic,
        timeout=flow.call_options.timeout,
    )
    graph.validate()
    return graph


def map_eagerly(task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """``task.map(...)`` outside a flow: a plain loop over the zipped arguments."""
    iterables: dict[str, list[Any]] = {}
    fixed: dict[str, Any] = {}
    for arg, value in task.bind_arguments(args, kwargs).items():
        if isinstance(value, unmapped):
            fixed[arg] = value.value
        else:
            iterables[arg] = list(value)
    lengths = {len(v) for v in iterables.values()}
    if len(lengths) > 1:
        raise ValueError(f"task {task.name!r}: mapped arguments have different lengths")
    n = lengths.pop() if lengths else 0
    out = []
    for i in range(n):
        call = dict(fixed)
        call.update({arg: values[i] for arg, values in iterables.items()})
        out.append(task.fn(**call))
    return out


def param_specs(flow_name: str, signature: inspect.Signature) -> list[ParamSpec]:
    """Flow parameters from the flow function's signature."""
    specs = []
    for p in signature.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise FlowDefinitionError(
                f"flow {flow_name!r}: *args and **kwargs parameters are not supported"
            )
        if p.kind is p.POSITIONAL_ONLY:
            raise FlowDefinitionError(
                f"flow {flow_name!r}: positional-only parameters are not supported"
            )
        required = p.default is inspect.Parameter.empty
        specs.append(ParamSpec(p.name, None if required else p.default, required))
    return specs


# ------------------------------------------------------------------ conditionals


@contextmanager
def case(value: Any, expected: Any = True) -> Iterator[None]:
    """Tasks called inside ``with case(ref, v):`` run only when the task result ``ref``
    equals ``v`` at run time, and are SKIPPED otherwise. Use ``merge`` after a pair of
    branches to continue with whichever ran."""
    from ._builtins import case_check

    ctx = current_context()
    if ctx is None:
        raise RuntimeError("headwater.case() is only meaningful inside a @flow function")
    check: Any = case_check(value, expected)
    assert type(check) is TaskRef
    ctx.case_stack.append(check._node_id)
    try:
        yield
    finally:
        ctx.case_stack.pop()


def merge(*branches: Any) -> Any:
    """The first branch result that was not skipped (for use after ``case`` blocks)."""
    from ._builtins import merge_task

    if not branches:
        raise FlowDefinitionError("merge() needs at least one branch")
    ctx = current_context()
    if ctx is None:
        return next((b for b in branches if b is not None), None)
    saved, ctx.case_stack = ctx.case_stack, []
    try:
        return merge_task(list(branches))
    finally:
        ctx.case_stack = saved


__all__ = [
    "Trigger",
    "build_graph",
    "case",
    "current_context",
    "map_eagerly",
    "merge",
    "param_specs",
    "value_use",
]
