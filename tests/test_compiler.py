"""The compiler: what ``flow.graph()`` and ``flow.compile()`` produce, field by field,
and the errors users get for flows that cannot be compiled."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from headwater import (
    FlowDefinitionError,
    GraphError,
    ParameterError,
    Trigger,
    case,
    flow,
    merge,
    task,
    unmapped,
)
from headwater.v1 import graph_pb2, payload_pb2
from headwater.wire import (
    Const,
    DictOf,
    FromTask,
    GraphSpec,
    InputSpec,
    ListOf,
    Param,
    RetrySpec,
    graph_from_proto,
    graph_to_proto,
)

MODULE = __name__

# ---------------------------------------------------------------- tasks


@task
def numbers(n: int) -> list[int]:
    return list(range(n))


@task
def double(x: int) -> int:
    return 2 * x


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def scale(x: int, factor: int) -> int:
    return x * factor


@task
def shift(x: int, by: int) -> int:
    return x + by


@task
def total(values: list[int]) -> int:
    return sum(values)


@task
def echo(value: Any) -> Any:
    return value


@task
def is_big(x: int) -> bool:
    return x > 2


@task
def big(x: int) -> str:
    return f"big {x}"


@task
def small(x: int) -> str:
    return f"small {x}"


@task(trigger="all_finished")
def cleanup() -> str:
    return "cleaned"


def entries(m: Any) -> dict[str, Any]:
    """An ordered InputMap / InputValueMap as a dict."""
    return {e.key: e.value for e in m.entries}


def decode(payload: payload_pb2.Payload) -> Any:
    encoding = payload.metadata["encoding"]
    if encoding == "json":
        return json.loads(payload.data)
    assert encoding == "pickle", encoding
    return cloudpickle.loads(payload.data)


def by_id(msg: graph_pb2.FlowGraph) -> dict[str, graph_pb2.TaskNode]:
    return {t.id: t for t in msg.tasks}


def specs_by_id(graph: GraphSpec) -> dict[str, Any]:
    return {t.id: t for t in graph.tasks}


# ---------------------------------------------------------------- linear


@flow(name="linear", version="2")
def linear(n: int = 3) -> int:
    """Numbers, then their total, doubled."""
    return double(total(numbers(n)))


def test_linear_graph() -> None:
    g = linear.graph()
    assert (g.name, g.version, g.description) == (
        "linear",
        "2",
        "Numbers, then their total, doubled.",
    )
    assert [t.id for t in g.tasks] == ["numbers", "total", "double"]
    t = specs_by_id(g)
    assert t["numbers"].inputs == {"n": Param("n")}
    assert t["total"].inputs == {"values": FromTask("numbers")}
    assert t["double"].inputs == {"x": FromTask("total")}
    assert t["numbers"].task_type == f"{MODULE}.numbers"
    assert t["total"].argument_order == ("values",)
    assert all(spec.mapped is None and spec.wait_for == () for spec in g.tasks)
    assert g.result == FromTask("double")
    assert g.reference_task_ids == ("double",)
    assert [(p.name, p.default, p.required) for p in g.params] == [("n", 3, False)]


def test_linear_compile() -> None:
    msg = linear.compile()
    assert isinstance(msg, graph_pb2.FlowGraph)
    assert (msg.name, msg.version) == ("linear", "2")
    assert msg.description == "Numbers, then their total, doubled."
    assert [t.id for t in msg.tasks] == ["numbers", "total", "double"]
    tasks = by_id(msg)
    assert tasks["numbers"].inputs["n"].parameter == "n"
    assert tasks["total"].inputs["values"].task_output.task_id == "numbers"
    assert tasks["double"].inputs["x"].task_output.task_id == "total"
    assert not tasks["double"].inputs["x"].task_output.path
    assert tasks["double"].task_type == f"{MODULE}.double"
    assert tasks["double"].name == "double"
    assert list(tasks["double"].argument_order) == ["x"]
    for node in msg.tasks:
        assert node.trigger == graph_pb2.TRIGGER_ALL_SUCCESSFUL
        assert not node.HasField("retry")
        assert not node.HasField("timeout")
        assert not node.HasField("cache")
        assert not node.HasField("map")
    assert msg.result.task_output.task_id == "double"
    assert list(msg.reference_task_ids) == ["double"]
    assert linear(n=4) == 12


# ---------------------------------------------------------------- fan-out / fan-in


@flow
def diamond(n: int = 2) -> int:
    src = double(n)
    left = double(src)
    right = double(src)
    return add(left, b=right)


def test_fan_out_fan_in_graph_and_proto() -> None:
    g = diamond.graph()
    assert [t.id for t in g.tasks] == ["double", "double-2", "double-3", "add"]
    t = specs_by_id(g)
    assert t["double-2"].inputs == {"x": FromTask("double")}
    assert t["double-3"].inputs == {"x": FromTask("double")}
    assert t["add"].inputs == {"a": FromTask("double-2"), "b": FromTask("double-3")}
    assert {spec.name for spec in g.tasks} == {"double", "add"}
    assert g.reference_task_ids == ("add",)

    msg = diamond.compile()
    tasks = by_id(msg)
    assert [t.name for t in msg.tasks] == ["double", "double", "double", "add"]
    assert tasks["add"].inputs["a"].task_output.task_id == "double-2"
    assert tasks["add"].inputs["b"].task_output.task_id == "double-3"
    assert tasks["double-3"].inputs["x"].task_output.task_id == "double"
    assert tasks["double"].inputs["x"].parameter == "n"
    assert list(msg.reference_task_ids) == ["add"]
    assert diamond(n=2) == 16


def test_repeated_calls_get_numbered_ids() -> None:
    @flow
    def thrice() -> list[int]:
        return [double(1), double(2), double(3)]

    assert [t.id for t in thrice.graph().tasks] == ["double", "double-2", "double-3"]
    assert thrice.graph().reference_task_ids == ("double", "double-2", "double-3")


def test_generated_ids_never_clash_with_a_task_named_like_one() -> None:
    literally = task(name="double-2")(double.fn)

    @flow
    def f() -> list[int]:
        return [double(1), literally(2), double(3)]

    ids = [t.id for t in f.graph().tasks]
    assert ids == ["double", "double-2", "double-3"]
    assert [t.name for t in f.graph().tasks] == ["double", "double-2", "double"]
    assert f() == [2, 4, 6]


# ---------------------------------------------------------------- mapped


@flow
def mapped_flow(n: int = 3, factor: int = 10) -> int:
    xs = numbers(n)
    scaled = scale.map(xs, unmapped(factor))
    shifted = shift.map(scaled, by=unmapped(1))
    return total(shifted)


def test_mapped_graph() -> None:
    t = specs_by_id(mapped_flow.graph())
    assert t["numbers"].mapped is None
    assert t["scale"].mapped == ("x",)
    assert t["scale"].inputs == {"x": FromTask("numbers"), "factor": Param("factor")}
    # mapped over a mapped task: element-wise chain
    assert t["shift"].mapped == ("x",)
    assert t["shift"].inputs == {"x": FromTask("scale"), "by": Const(1)}
    assert t["total"].mapped is None
    assert t["total"].inputs == {"values": FromTask("shift")}


def test_mapped_compile() -> None:
    tasks = by_id(mapped_flow.compile())
    scale_node = tasks["scale"]
    assert scale_node.HasField("map")
    assert list(scale_node.map.mapped_inputs) == ["x"]
    assert scale_node.inputs["x"].task_output.task_id == "numbers"
    assert scale_node.inputs["factor"].parameter == "factor"
    shift_node = tasks["shift"]
    assert list(shift_node.map.mapped_inputs) == ["x"]
    assert shift_node.inputs["x"].task_output.task_id == "scale"
    assert decode(shift_node.inputs["by"].constant) == 1
    assert not tasks["numbers"].HasField("map")
    assert not tasks["total"].HasField("map")
    assert mapped_flow(n=3, factor=10) == (1 + 11 + 21)


def test_map_over_a_constant_and_several_mapped_arguments() -> None:
    @flow
    def zipped() -> list[int]:
        return add.map([1, 2, 3], [10, 20, 30])

    (node,) = zipped.graph().tasks
    assert node.mapped == ("a", "b")
    assert node.inputs == {"a": Const([1, 2, 3]), "b": Const([10, 20, 30])}
    (proto,) = zipped.compile().tasks
    assert list(proto.map.mapped_inputs) == ["a", "b"]
    # On the wire a mapped constant list travels element by element, so a control
    # plane can give element i to child i without decoding the list.
    b = proto.inputs["b"]
    assert b.WhichOneof("source") == "list"
    assert [decode(i.constant) for i in b.list.items] == [10, 20, 30]
    assert zipped() == [11, 22, 33]


def test_mapping_lists_of_different_lengths_together_is_refused_when_the_flow_is_built() -> None:
    """``add.map([1, 2, 3], [10, 20])`` failed only at run time (MapLengthMismatch);
    lengths written in the flow are known when it is built. A task result's length is
    not, and stays a run-time check."""

    @flow
    def uneven() -> list[int]:
        return add.map([1, 2, 3], [10, 20])

    with pytest.raises(
        FlowDefinitionError,
        match=r"^flow 'uneven', .*: task 'add': \.map\(\) arguments have different lengths "
        r"\(a=3, b=2\)",
    ):
        uneven.graph()

    @flow
    def uneven_refs() -> list[int]:
        return add.map([double(1), double(2)], (7,))

    with pytest.raises(FlowDefinitionError, match=r"\(a=2, b=1\)"):
        uneven_refs.graph()

    @flow
    def with_a_result(n: int = 2) -> list[int]:
        return add.map([1, 2], add.map([n, n], [1, 1]))

    assert with_a_result() == [4, 5]


def test_map_needs_a_mapped_argument() -> None:
    @flow
    def all_unmapped() -> list[int]:
        return add.map(unmapped(1), unmapped(2))

    with pytest.raises(FlowDefinitionError, match="'add'"):
        all_unmapped.graph()


def test_unmapped_outside_map_is_rejected() -> None:
    @flow
    def misuse() -> int:
        return add(unmapped(1), 2)

    with pytest.raises(FlowDefinitionError, match=r"'add'.*'a'.*unmapped"):
        misuse.graph()


# ---------------------------------------------------------------- parameters and constants


@flow(name="params", version="1")
def parameterised(
    path: str, limit: int = 10, pair: tuple[int, int] = (1, 2), ids: list[int] | None = None
) -> list[Any]:
    return [echo(path), echo(limit), echo(pair), echo(ids)]


def test_parameters_in_graph_and_proto() -> None:
    g = parameterised.graph()
    assert [(p.name, p.required) for p in g.params] == [
        ("path", True),
        ("limit", False),
        ("pair", False),
        ("ids", False),
    ]
    msg = parameterised.compile()
    params = {p.name: p for p in msg.parameters}
    assert [p.name for p in msg.parameters] == ["path", "limit", "pair", "ids"]
    assert params["path"].required is True
    assert not params["path"].HasField("default_value")
    assert params["limit"].required is False
    assert params["limit"].default_value.metadata["encoding"] == "json"
    assert decode(params["limit"].default_value) == 10
    assert params["pair"].default_value.metadata["encoding"] == "pickle"
    assert decode(params["pair"].default_value) == (1, 2)
    assert params["ids"].default_value.metadata["encoding"] == "json"
    assert decode(params["ids"].default_value) is None
    tasks = by_id(msg)
    assert [tasks[i].inputs["value"].parameter for i in ("echo", "echo-2", "echo-3", "echo-4")] == [
        "path",
        "limit",
        "pair",
        "ids",
    ]


def test_flow_call_binds_parameters() -> None:
    assert parameterised("/data", ids=[1]) == ["/data", 10, (1, 2), [1]]


def test_constants_are_payloads_with_their_encoding() -> None:
    @flow
    def consts() -> list[Any]:
        return [echo([1, 2, 3]), echo((1, 2)), echo({3, 4}), echo({"a": 1.5, "b": None})]

    tasks = by_id(consts.compile())
    ints = tasks["echo"].inputs["value"].constant
    assert ints.metadata["encoding"] == "json"
    assert json.loads(ints.data) == [1, 2, 3]
    tup = tasks["echo-2"].inputs["value"].constant
    assert tup.metadata["encoding"] == "pickle"
    assert cloudpickle.loads(tup.data) == (1, 2)
    assert type(cloudpickle.loads(tup.data)) is tuple
    a_set = tasks["echo-3"].inputs["value"].constant
    assert a_set.metadata["encoding"] == "pickle"
    assert cloudpickle.loads(a_set.data) == {3, 4}
    mapping = tasks["echo-4"].inputs["value"].constant
    assert mapping.metadata["encoding"] == "json"
    assert json.loads(mapping.data) == {"a": 1.5, "b": None}
    # graph() keeps the live objects: an embedded run never copies them.
    live = specs_by_id(consts.graph())
    assert live["echo-2"].inputs["value"] == Const((1, 2))


def test_nested_inputs_mixing_results_and_constants() -> None:
    @flow
    def nested() -> Any:
        xs = numbers(3)
        return echo([xs[0], {"first": xs[1], "k": "v"}, (xs, 4)])

    spec = specs_by_id(nested.graph())["echo"].inputs["value"]
    assert spec == ListOf(
        (
            FromTask("numbers", (0,)),
            DictOf((("first", FromTask("numbers", (1,))), ("k", Const("v")))),
            ListOf((FromTask("numbers"), Const(4)), is_tuple=True),
        ),
        is_tuple=False,
    )
    value = by_id(nested.compile())["echo"].inputs["value"]
    assert value.WhichOneof("source") == "list"
    assert value.list.tuple is False
    first, mapping, tup = value.list.items
    assert first.task_output.task_id == "numbers"
    assert [p.index for p in first.task_output.path] == [0]
    assert first.task_output.path[0].WhichOneof("selector") == "index"
    assert entries(mapping.map)["first"].task_output.path[0].index == 1
    assert decode(entries(mapping.map)["k"].constant) == "v"
    assert tup.list.tuple is True
    assert tup.list.items[0].task_output.task_id == "numbers"
    assert decode(tup.list.items[1].constant) == 4
    assert nested() == [0, {"first": 1, "k": "v"}, ([0, 1, 2], 4)]


def test_indexing_a_result_by_key_gives_a_key_path() -> None:
    @flow
    def keyed() -> Any:
        return echo(echo({"rows": [5]})["rows"][0])

    spec = specs_by_id(keyed.graph())["echo-2"].inputs["value"]
    assert spec == FromTask("echo", ("rows", 0))
    path = by_id(keyed.compile())["echo-2"].inputs["value"].task_output.path
    assert [p.WhichOneof("selector") for p in path] == ["key", "index"]
    assert (path[0].key, path[1].index) == ("rows", 0)
    assert keyed() == 5


# ---------------------------------------------------------------- task options


@task(
    retries=2,
    retry_delay=timedelta(seconds=1, milliseconds=500),
    backoff=2,
    max_retry_delay=timedelta(minutes=2),
    retry_jitter=0.1,
    no_retry_on=[KeyError],
    timeout=timedelta(seconds=30),
    cache_for=timedelta(hours=1),
    cache_version="v3",
    tags=["io", "db"],
    labels={"gpu": "true"},
    resources={"GPU": 1},
    version="1.0",
)
def configured(x: int) -> int:
    return x


@task(cache_key_fn=lambda inputs: str(inputs["x"]), retries=1)
def keyed_cache(x: int) -> int:
    return x


def test_task_options_in_graph() -> None:
    @flow
    def opts() -> int:
        return configured(1)

    (spec,) = opts.graph().tasks
    assert spec.retry == RetrySpec(
        max_retries=2,
        delay=1.5,
        backoff=2.0,
        max_delay=120.0,
        jitter=0.1,
        non_retryable=("builtins.KeyError",),
    )
    assert spec.timeout == 30.0
    assert spec.cache is not None
    assert (spec.cache.expiry, spec.cache.version, spec.cache.by_function) == (3600.0, "v3", False)
    assert spec.tags == ("io", "db")
    assert dict(spec.labels) == {"gpu": "true"}
    assert dict(spec.resources) == {"GPU": 1.0}
    assert spec.version == "1.0"


def test_task_options_in_proto() -> None:
    @flow
    def opts() -> list[int]:
        return [configured(1), keyed_cache(2)]

    tasks = by_id(opts.compile())
    node = tasks["configured"]
    assert node.retry.max_retries == 2
    assert (node.retry.delay.seconds, node.retry.delay.nanos) == (1, 500_000_000)
    assert node.retry.backoff_factor == 2.0
    assert node.retry.max_delay.ToSeconds() == 120
    assert node.retry.jitter == pytest.approx(0.1)
    assert list(node.retry.non_retryable_errors) == ["builtins.KeyError"]
    assert node.timeout.ToSeconds() == 30
    assert node.cache.key_source == graph_pb2.CACHE_KEY_SOURCE_INPUTS
    assert node.cache.expiry.ToSeconds() == 3600
    assert node.cache.version == "v3"
    assert list(node.tags) == ["io", "db"]
    assert dict(node.required_labels) == {"gpu": "true"}
    assert dict(node.resources) == {"GPU": 1.0}
    assert node.version == "1.0"
    assert node.portable is False
    other = tasks["keyed_cache"]
    assert other.cache.key_source == graph_pb2.CACHE_KEY_SOURCE_FUNCTION
    assert not other.cache.HasField("expiry")
    assert other.retry.max_retries == 1
    assert not other.retry.HasField("max_delay")


def test_retry_delay_in_seconds_becomes_a_duration() -> None:
    quick = task(retries=1, retry_delay=0.25, timeout=2)(double.fn)

    @flow
    def f() -> int:
        return quick(1)

    (node,) = f.compile().tasks
    assert node.retry.delay.ToNanoseconds() == 250_000_000
    assert node.timeout.ToSeconds() == 2


@pytest.mark.parametrize(
    "name",
    ["all_successful", "all_finished", "all_failed", "any_successful", "any_failed", "none_failed"],
)
def test_trigger_names_compile_to_the_trigger_enum(name: str) -> None:
    t = task(trigger=name)(double.fn)

    @flow
    def f() -> int:
        return t(1)

    (spec,) = f.graph().tasks
    assert spec.trigger is Trigger(name)
    (node,) = f.compile().tasks
    assert graph_pb2.Trigger.Name(node.trigger) == f"TRIGGER_{name.upper()}"


def test_task_type_defaults_to_module_and_qualname_and_can_be_overridden() -> None:
    class Namespace:
        @task
        @staticmethod
        def inner(x: int) -> int:
            return x

    custom = task(task_type="etl.custom", name="custom")(double.fn)

    @flow
    def f() -> list[int]:
        return [Namespace.inner(1), custom(2)]

    tasks = by_id(f.compile())
    assert tasks["inner"].task_type == f"{MODULE}.{Namespace.inner.fn.__qualname__}"
    assert tasks["inner"].task_type.endswith("Namespace.inner")
    assert tasks["custom"].task_type == "etl.custom"
    assert tasks["custom"].name == "custom"
    assert double.task_type == f"{MODULE}.double"


def test_script_tasks_are_typed_by_the_file_stem(tmp_path: Path) -> None:
    script = tmp_path / "my_pipeline.py"
    script.write_text(
        "from headwater import flow, task\n"
        "@task\n"
        "def step(x):\n"
        "    return x\n"
        "@flow\n"
        "def pipe():\n"
        "    return step(1)\n"
        "if __name__ == '__main__':\n"
        "    print(pipe.compile().tasks[0].task_type)\n"
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "my_pipeline.step"


# ---------------------------------------------------------------- result, wait_for


def test_reference_tasks_are_the_tasks_in_the_returned_value() -> None:
    @flow
    def f() -> dict[str, Any]:
        a = double(1)
        b = double(2)
        double(3)  # not returned: not a reference task
        return {"a": a, "rest": [b, 7, a]}

    g = f.graph()
    assert g.reference_task_ids == ("double", "double-2")
    assert g.result == DictOf(
        (
            ("a", FromTask("double")),
            ("rest", ListOf((FromTask("double-2"), Const(7), FromTask("double")))),
        )
    )
    msg = f.compile()
    assert list(msg.reference_task_ids) == ["double", "double-2"]
    assert entries(msg.result.map)["a"].task_output.task_id == "double"
    rest = entries(msg.result.map)["rest"].list.items
    assert [i.WhichOneof("source") for i in rest] == ["task_output", "constant", "task_output"]
    assert decode(rest[1].constant) == 7
    assert f() == {"a": 2, "rest": [4, 7, 2]}


def test_flow_returning_nothing_has_no_result_and_no_reference_tasks() -> None:
    @flow
    def f() -> None:
        double(1)

    g = f.graph()
    assert g.result is None
    assert g.reference_task_ids == ()
    msg = f.compile()
    assert not msg.HasField("result")
    assert list(msg.reference_task_ids) == []


def test_wait_for_adds_order_only_edges() -> None:
    @flow
    def f() -> int:
        written = total(numbers(3))
        cleanup(wait_for=[written])
        return written

    t = specs_by_id(f.graph())
    assert t["cleanup"].wait_for == ("total",)
    assert t["cleanup"].inputs == {}
    assert t["cleanup"].trigger is Trigger.ALL_FINISHED
    node = by_id(f.compile())["cleanup"]
    assert list(node.wait_for) == ["total"]
    assert len(node.inputs) == 0
    assert node.trigger == graph_pb2.TRIGGER_ALL_FINISHED
    assert f.run().task_run("cleanup").state.name == "SUCCESS"


def test_wait_for_takes_only_task_results() -> None:
    @flow
    def f(n: int = 1) -> None:
        cleanup(wait_for=[n])

    with pytest.raises(FlowDefinitionError, match=r"'cleanup'.*wait_for"):
        f.graph()


# ---------------------------------------------------------------- case / merge


@flow
def branchy(n: int = 3) -> str:
    flag = is_big(n)
    with case(flag, True):
        a = big(n)
    with case(flag, False):
        b = small(n)
    return merge(a, b)


def test_case_and_merge_nodes() -> None:
    g = branchy.graph()
    assert [t.id for t in g.tasks] == ["is_big", "case", "big", "case-2", "small", "merge"]
    t = specs_by_id(g)
    assert t["case"].task_type == "headwater.case"
    assert t["case"].inputs == {"value": FromTask("is_big"), "expected": Const(True)}
    assert t["case-2"].inputs == {"value": FromTask("is_big"), "expected": Const(False)}
    assert t["big"].wait_for == ("case",) and t["big"].gates == ("case",)
    assert t["small"].wait_for == ("case-2",) and t["small"].gates == ("case-2",)
    assert t["is_big"].gates == () and t["merge"].gates == ()
    assert t["merge"].task_type == "headwater.merge"
    assert t["merge"].inputs == {"branches": ListOf((FromTask("big"), FromTask("small")))}
    assert t["merge"].wait_for == ()
    assert t["merge"].trigger is Trigger.ANY_SUCCESSFUL
    assert g.reference_task_ids == ("merge",)

    tasks = by_id(branchy.compile())
    assert tasks["case"].task_type == "headwater.case"
    assert tasks["merge"].task_type == "headwater.merge"
    assert list(tasks["big"].wait_for) == ["case"]
    assert list(tasks["big"].case_gates) == ["case"]
    assert list(tasks["small"].wait_for) == ["case-2"]
    assert tasks["merge"].trigger == graph_pb2.TRIGGER_ANY_SUCCESSFUL
    assert [i.task_output.task_id for i in tasks["merge"].inputs["branches"].list.items] == [
        "big",
        "small",
    ]


def test_case_and_merge_pick_the_branch_at_run_time() -> None:
    assert branchy(n=3) == "big 3"
    assert branchy(n=1) == "small 1"
    run = branchy.run(n=1)
    assert run.task_run("big").state.name == "SKIPPED"


@task
def log_line(text: str) -> str:
    return text


@flow
def sub_echo(text: str) -> str:
    return log_line(text)


@pytest.mark.parametrize("trigger", ["all_successful", "none_failed", "all_finished"])
def test_a_branch_of_a_case_that_did_not_match_never_runs_whatever_its_trigger(
    trigger: str,
) -> None:
    """A task inside ``case`` whose trigger lets skipped upstreams through
    (none_failed, all_finished) ran in the branch that did not match: the case check's
    skip counts as success to them. It is a gate now: SKIPPED whatever the trigger.
    Nested cases gate too, and a subflow inside a case."""
    report = log_line.with_options(trigger=trigger)

    @flow
    def reports(n: int = 1) -> list[Any]:
        flag = is_big(n)
        with case(flag, True):
            big_report = report("big")
            with case(flag, True):
                inner = report("inner")
        with case(flag, False):
            small_report = report("small")
            child = sub_echo("small child")
        return [big_report, inner, small_report, child]

    assert reports(n=1) == [None, None, "small", "small child"]
    assert reports(n=5) == ["big", "inner", None, None]
    run = reports.run(n=1)
    skipped = run.task_run("log_line")
    assert skipped.state.name == "SKIPPED"
    assert skipped.history[-1].message == "its case ('case') did not match"
    assert run.task_run("sub_echo").state.name == "SUCCESS"
    assert reports.run(n=5).task_run("sub_echo").state.name == "SKIPPED"
    graph = reports.graph()
    assert specs_by_id(graph)["log_line-2"].gates == ("case", "case-2")


@pytest.mark.parametrize(
    "constant", ["abc", {"a": 1}, {1, 2}, 5], ids=["str", "dict", "set", "int"]
)
def test_mapping_over_a_constant_without_elements_is_refused_when_the_flow_is_built(
    constant: Any,
) -> None:
    """``double.map("abc")`` was refused only once the run reached the task (an
    InputError at run time); the constant is known when the flow is built."""

    @flow
    def over() -> Any:
        return double.map(constant)

    with pytest.raises(FlowDefinitionError, match=r"task 'double', argument 'x': cannot map over"):
        over.graph()


def test_case_outside_a_flow_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="inside a @flow"), case(True):
        pass


# ---------------------------------------------------------------- proto round trip


def _normal(spec: InputSpec | None) -> Any:
    """An InputSpec with constants decoded and dict entries order-free (proto maps
    have no order)."""
    from headwater.wire import EncodedValue
    from headwater.wire import decode as decode_value

    if isinstance(spec, Const):
        value = spec.value
        if isinstance(value, EncodedValue):
            value = decode_value(value)
        return ("const", type(value).__name__, repr(value))
    if isinstance(spec, ListOf):
        return ("list", spec.is_tuple, tuple(_normal(i) for i in spec.items))
    if isinstance(spec, DictOf):
        return ("dict", tuple(sorted((k, _normal(v)) for k, v in spec.entries)))
    return spec


def _param_default(value: Any) -> Any:
    from headwater.wire import EncodedValue
    from headwater.wire import decode as decode_value

    return decode_value(value) if isinstance(value, EncodedValue) else value


@pytest.mark.parametrize(
    "the_flow", [linear, diamond, mapped_flow, parameterised, branchy], ids=lambda f: f.name
)
def test_graph_from_proto_preserves_structure(the_flow: Any) -> None:
    original = the_flow.graph()
    msg = graph_to_proto(original)
    back = graph_from_proto(msg)
    assert (back.name, back.version, back.description) == (
        original.name,
        original.version,
        original.description,
    )
    assert back.reference_task_ids == original.reference_task_ids
    assert _normal(back.result) == _normal(original.result)
    assert [(p.name, p.required, _param_default(p.default)) for p in back.params] == [
        (p.name, p.required, p.default) for p in original.params
    ]
    assert [t.id for t in back.tasks] == [t.id for t in original.tasks]
    for new, old in zip(back.tasks, original.tasks, strict=True):
        assert {k: _normal(v) for k, v in new.inputs.items()} == {
            k: _normal(v) for k, v in old.inputs.items()
        }, old.id
        for attr in (
            "name",
            "task_type",
            "wait_for",
            "retry",
            "timeout",
            "trigger",
            "cache",
            "mapped",
            "tags",
            "version",
            "portable",
            "argument_order",
        ):
            assert getattr(new, attr) == getattr(old, attr), (old.id, attr)
        assert dict(new.labels) == dict(old.labels)
        assert dict(new.resources) == dict(old.resources)
    # And the message is a fixed point of the codec.
    assert graph_to_proto(back) == msg


def test_task_options_survive_the_proto_round_trip() -> None:
    @flow
    def opts() -> list[int]:
        return [configured(1), keyed_cache(2)]

    original = specs_by_id(opts.graph())
    back = specs_by_id(graph_from_proto(opts.compile()))
    for task_id in ("configured", "keyed_cache"):
        for attr in ("retry", "timeout", "trigger", "cache", "tags", "version"):
            assert getattr(back[task_id], attr) == getattr(original[task_id], attr), attr
        assert dict(back[task_id].labels) == dict(original[task_id].labels)
        assert dict(back[task_id].resources) == dict(original[task_id].resources)


# ---------------------------------------------------------------- invalid graphs (proto)


def _node(task_id: str, **kwargs: Any) -> graph_pb2.TaskNode:
    return graph_pb2.TaskNode(id=task_id, name=task_id, task_type=f"m.{task_id}", **kwargs)


def _from(task_id: str) -> graph_pb2.Input:
    return graph_pb2.Input(task_output=graph_pb2.TaskOutput(task_id=task_id))


def test_cycle_is_rejected() -> None:
    msg = graph_pb2.FlowGraph(
        name="cyclic",
        tasks=[_node("a", inputs={"x": _from("b")}), _node("b", inputs={"x": _from("a")})],
    )
    with pytest.raises(GraphError, match="cycle") as info:
        graph_from_proto(msg)
    assert "'a'" in str(info.value) or "'b'" in str(info.value)
    assert "a -> b" in str(info.value) or "b -> a" in str(info.value)


def test_cycle_through_wait_for_is_rejected() -> None:
    msg = graph_pb2.FlowGraph(
        name="cyclic",
        tasks=[
            _node("a", wait_for=["c"]),
            _node("b", inputs={"x": _from("a")}),
            _node("c", inputs={"x": _from("b")}),
        ],
    )
    with pytest.raises(GraphError, match="cycle"):
        graph_from_proto(msg)


def test_self_dependency_is_rejected() -> None:
    msg = graph_pb2.FlowGraph(name="selfish", tasks=[_node("a", wait_for=["a"])])
    with pytest.raises(GraphError, match=r"'a'.*cycle"):
        graph_from_proto(msg)


def test_unknown_parameter_in_proto_is_rejected() -> None:
    msg = graph_pb2.FlowGraph(
        name="f",
        parameters=[graph_pb2.ParameterSpec(name="n", required=True)],
        tasks=[_node("a", inputs={"x": graph_pb2.Input(parameter="nope")})],
    )
    with pytest.raises(GraphError, match=r"'a'.*parameter 'nope'"):
        graph_from_proto(msg)


@pytest.mark.parametrize(
    ("msg", "pattern"),
    [
        (
            graph_pb2.FlowGraph(name="f", tasks=[_node("a", inputs={"x": _from("ghost")})]),
            r"'a'.*unknown task 'ghost'",
        ),
        (graph_pb2.FlowGraph(name="f", tasks=[_node("a"), _node("a")]), r"duplicate.*'a'"),
        (
            graph_pb2.FlowGraph(name="f", tasks=[_node("a", trigger=99)]),  # type: ignore[arg-type]
            r"'a'.*trigger",
        ),
        (
            graph_pb2.FlowGraph(
                name="f", tasks=[_node("a", map=graph_pb2.MapSpec(mapped_inputs=["zz"]))]
            ),
            r"'a'.*'zz'",
        ),
        (
            graph_pb2.FlowGraph(
                name="f",
                tasks=[
                    _node(
                        "a",
                        inputs={"x": graph_pb2.Input(constant=payload_pb2.Payload(data=b"1"))},
                    )
                ],
            ),
            r"'a'.*'x'.*encoding",
        ),
        (
            graph_pb2.FlowGraph(name="f", tasks=[_node("a", inputs={"x": graph_pb2.Input()})]),
            r"'a'.*'x'.*no source",
        ),
        (
            graph_pb2.FlowGraph(name="f", tasks=[_node("a")], result=_from("ghost")),
            r"'f'.*'ghost'",
        ),
        (
            graph_pb2.FlowGraph(name="f", tasks=[_node("a")], reference_task_ids=["ghost"]),
            r"'f'.*'ghost'",
        ),
        (
            graph_pb2.FlowGraph(name="f", tasks=[graph_pb2.TaskNode(id="a")]),
            r"'a'.*task_type",
        ),
        (graph_pb2.FlowGraph(tasks=[_node("a")]), r"no name"),
    ],
    ids=[
        "unknown-upstream",
        "duplicate-id",
        "unknown-trigger",
        "map-unknown-arg",
        "constant-without-encoding",
        "input-without-source",
        "result-unknown-task",
        "unknown-reference-task",
        "no-task-type",
        "no-flow-name",
    ],
)
def test_invalid_proto_graphs_are_rejected(msg: graph_pb2.FlowGraph, pattern: str) -> None:
    with pytest.raises(GraphError, match=pattern):
        graph_from_proto(msg)


def test_parameter_default_without_encoding_is_rejected() -> None:
    """A default is a payload like a constant: without "encoding" nobody can decode it,
    so the graph must be rejected when it is read, not when a run needs the default."""
    msg = graph_pb2.FlowGraph(
        name="f",
        parameters=[
            graph_pb2.ParameterSpec(
                name="n", required=False, default_value=payload_pb2.Payload(data=b"5")
            )
        ],
        tasks=[_node("a", inputs={"x": graph_pb2.Input(parameter="n")})],
    )
    with pytest.raises(GraphError, match=r"'n'.*encoding"):
        graph_from_proto(msg)


def test_error_types_are_the_documented_builtin_subclasses() -> None:
    assert issubclass(FlowDefinitionError, TypeError)
    assert issubclass(GraphError, ValueError)
    assert issubclass(ParameterError, TypeError)


# ---------------------------------------------------------------- invalid flows (SDK)


def test_unknown_flow_parameter_is_a_parameter_error() -> None:
    with pytest.raises(ParameterError, match=r"'linear'.*'nope'") as error:
        linear(nope=1)  # type: ignore[call-arg]
    # it names what the flow accepts, as the CLI and the server do
    names = ", ".join(sorted(p.name for p in linear.parameters)) or "none"
    assert str(error.value).endswith(f"; it accepts: {names}"), str(error.value)
    with pytest.raises(ParameterError, match="'nope'"):
        linear.run(nope=1)  # type: ignore[call-arg]


@task
def _holds(x: object) -> int:
    return 1


@flow
def _lock_param(lock: object = None) -> int:
    return _holds(lock)


def test_a_parameter_that_cannot_be_sent_is_one_line_naming_it() -> None:
    """A parameter pickle refuses (a lock, a generator), sent to a server, is a
    ParameterError naming it and why (a user trial: a bare AssertionError)."""
    import threading

    with pytest.raises(ParameterError) as error:
        _lock_param.compile(lock=threading.Lock())
    assert str(error.value).startswith(
        "parameter 'lock' cannot be sent to the server: a lock cannot be serialised"
    )
    with pytest.raises(ParameterError, match="parameter 'lock' cannot be sent"):
        _lock_param.compile(lock=(i for i in range(3)))


def test_missing_required_flow_parameter_is_a_parameter_error() -> None:
    with pytest.raises(ParameterError, match="'path'"):
        parameterised()  # type: ignore[call-arg]


def test_missing_task_argument_names_task_and_argument() -> None:
    @flow
    def f() -> int:
        return add(1)  # type: ignore[call-arg]

    with pytest.raises(FlowDefinitionError, match=r"'add'.*'b'"):
        f.graph()


def test_unexpected_task_argument_names_task_and_argument() -> None:
    @flow
    def f() -> int:
        return add(1, 2, c=3)  # type: ignore[call-arg]

    with pytest.raises(FlowDefinitionError, match=r"'add'.*'c'"):
        f.graph()


def test_non_serialisable_constant_fails_compile_naming_task_and_argument() -> None:
    lock = threading.Lock()

    @flow
    def f() -> Any:
        return echo(lock)

    # An embedded run passes live objects, so graph() accepts it ...
    assert specs_by_id(f.graph())["echo"].inputs["value"] == Const(lock)
    # ... but a FlowGraph message cannot carry it.
    with pytest.raises(TypeError, match=r"'echo'.*'value'.*lock"):
        f.compile()


def test_non_serialisable_parameter_default_fails_compile_naming_the_parameter() -> None:
    @flow
    def f(guard: Any = threading.Lock()) -> Any:  # noqa: B008
        return echo(guard)

    with pytest.raises(TypeError, match="'guard'"):
        f.compile()


def test_portable_task_rejects_a_non_json_constant() -> None:
    portable_echo = task(portable=True, name="portable_echo")(echo.fn)

    @flow
    def ok() -> Any:
        return portable_echo([1, {"a": None}])

    (node,) = ok.compile().tasks
    assert node.portable is True
    assert node.inputs["value"].constant.metadata["encoding"] == "json"

    @flow
    def bad() -> Any:
        return portable_echo((1, 2))

    with pytest.raises(TypeError, match=r"'portable_echo'.*'value'.*json"):
        bad.compile()


def test_task_result_passed_to_a_task_outside_a_flow_is_an_error() -> None:
    leaked: list[Any] = []

    @flow
    def f() -> int:
        ref = double(1)
        leaked.append(ref)
        return ref

    f.graph()
    with pytest.raises(FlowDefinitionError, match=r"'double'.*outside a flow"):
        double(leaked[0])
    with pytest.raises(FlowDefinitionError, match="'add'"):
        add(1, b=[leaked[0]])
    with pytest.raises(FlowDefinitionError, match="'cleanup'"):
        cleanup(wait_for=[leaked[0]])


def test_a_result_from_another_flow_is_rejected() -> None:
    leaked: list[Any] = []

    @flow
    def first() -> int:
        ref = double(1)
        leaked.append(ref)
        return ref

    first.graph()

    @flow
    def second() -> int:
        numbers(1)
        return add(1, leaked[0])

    with pytest.raises(ValueError, match="'double'"):
        second.graph()


def test_two_tasks_with_the_same_name_in_one_flow_are_rejected() -> None:
    @task(name="x")
    def first() -> int:
        return 1

    @task(name="x")
    def second() -> int:
        return 2

    @flow
    def f() -> list[int]:
        return [first(), second()]

    with pytest.raises(ValueError, match="'x'"):
        f.graph()


def test_the_same_task_called_twice_is_not_a_name_clash() -> None:
    @flow
    def f() -> list[int]:
        return [double(1), double.with_options(retries=1)(2)]

    assert [t.id for t in f.graph().tasks] == ["double", "double-2"]


@pytest.mark.parametrize(
    ("misuse", "pattern"),
    [
        (lambda ref: bool(ref), "condition"),
        (lambda ref: [x for x in ref], "iterated"),
        (lambda ref: tuple(ref), "iterated"),
        (lambda ref: len(ref), "len"),
    ],
    ids=["bool", "iterate", "unpack", "len"],
)
def test_reference_misused_at_compile_time_is_a_type_error(misuse: Any, pattern: str) -> None:
    @flow
    def f() -> Any:
        ref = numbers(3)
        misuse(ref)
        return ref

    with pytest.raises(TypeError, match=rf"'numbers'.*{pattern}"):
        f.graph()


def test_if_on_a_reference_is_a_type_error() -> None:
    @flow
    def f() -> Any:
        ref = is_big(3)
        if ref:
            return big(3)
        return small(3)

    with pytest.raises(TypeError, match=r"'is_big'.*case"):
        f.graph()


def test_a_result_inside_a_set_is_never_passed_as_a_reference() -> None:
    """A set holding a task result must either be resolved or rejected at compile
    time; the task must never receive the compile-time reference object."""

    @flow
    def f() -> Any:
        return echo({double(1)})

    # Building the set already hashes the reference: refused there, naming the task.
    with pytest.raises(FlowDefinitionError, match=r"'double' cannot be hashed"):
        f.graph()


def test_an_async_task_is_refused_when_it_is_declared() -> None:
    """It ran, returned a coroutine nobody awaited, and "succeeded" with it."""

    async def fetch(x: int) -> int:
        return x

    async def stream(x: int) -> Any:
        yield x

    for fn in (fetch, stream):
        with pytest.raises(FlowDefinitionError, match=rf"task '{fn.__name__}' is an async func"):
            task(fn)


def test_a_misspelt_keyword_is_named_not_the_argument_it_left_out() -> None:
    @flow
    def typo() -> int:
        return add(1, z=2)

    with pytest.raises(
        FlowDefinitionError,
        match=r"^flow 'typo', .*test_compiler.py:\d+: task 'add': got an unexpected keyword "
        r"argument 'z' \(its arguments: a, b\)$",
    ):
        typo.graph()


@task
def plus_one(self: int) -> int:
    return self + 1


@flow
def named_self(self: int = 1) -> int:
    return plus_one(self=self)


def test_a_parameter_named_self_is_a_parameter_like_any_other() -> None:
    """A user trial: a flow or task parameter named ``self`` collided with the
    methods' own (``Flow.validate() got multiple values for argument 'self'``), and
    @flow on a method said only that parameter 'self' was missing."""
    assert named_self(5) == 6
    assert named_self(self=6) == 7
    assert named_self.run(self=2).result == 3
    assert named_self.graph(self=4).tasks[0].name == "plus_one"
    assert plus_one.fn(self=1) == 2
    with pytest.raises(FlowDefinitionError, match=r"^flow 'method': @flow on a method is not"):

        class Pipe:
            @flow
            def method(self) -> int:
                return 1


@task
def squared(x: int) -> int:
    return x * x


@task
def summed(xs: Any) -> int:
    return sum(xs)


@flow
def from_a_generator(n: int = 3) -> int:
    return summed(squared(i) for i in range(n))


@flow
def from_map(n: int = 3) -> int:
    return summed(map(squared, range(n)))


@flow
def mapped_over_a_generator(n: int = 3) -> int:
    return summed(squared.map(i for i in range(n)))


@flow
def returns_a_generator(n: int = 3) -> Any:
    return (squared(i) for i in range(n))


def test_a_generator_or_map_given_to_a_task_is_consumed_into_task_calls() -> None:
    """A user trial: ``summed(squared(i) for i in range(n))`` ran the squares as plain
    functions inside ``summed`` (one task run, no retries or caching for them), and on a
    server failed, a generator being unsendable. The calls in it are tasks now, as in
    a list comprehension; a returned generator too (it was refused as "not a plain
    function")."""
    for made in (from_a_generator, from_map):
        run = made.run(n=3)
        assert run.result == 5
        assert sorted(run.task_runs) == ["squared", "squared-2", "squared-3", "summed"]
        assert all(isinstance(t.inputs.get("xs"), ListOf) for t in made.graph().tasks[3:])
    mapped = mapped_over_a_generator.run(n=3)
    assert mapped.result == 5 and len(mapped.task_runs) == 5
    returned = returns_a_generator.run(n=3)
    assert returned.result == [0, 1, 4] and len(returned.task_runs) == 3
    msg = from_a_generator.compile(n=2)  # (the message a server gets: nothing to pickle)
    assert [t.id for t in msg.tasks] == ["squared", "squared-2", "summed"]


def test_a_task_defined_inside_a_function_runs_embedded_but_is_refused_for_a_server() -> None:
    """A user trial: a task defined in the flow body (or any function) ran embedded,
    but on a server its run waited for good: no worker offers a ``<locals>`` task type.
    The graph a server would get is refused, naming the task."""

    @flow
    def local_task_flow(n: int = 2) -> int:
        @task
        def addk(x: int) -> int:
            return x + 10

        return summed(addk.map(list(range(n))))

    from headwater._graphs import compile_graph  # (what Client.run and deploy send)

    assert local_task_flow(n=2) == 21
    assert len(local_task_flow.compile(n=2).tasks) == 2  # a look at the message is fine
    with pytest.raises(FlowDefinitionError) as info:
        compile_graph(local_task_flow, {"n": 2}, {"n": 2})
    assert str(info.value).startswith(
        "flow 'local_task_flow': task 'addk' is defined inside a function ("
    )
    assert "<locals>.addk), so no worker can offer it: define it at module level" in str(info.value)


def test_tasks_that_cannot_work_are_refused_at_task() -> None:
    """A generator function's result would be a generator object no server can store;
    @task on a method took self as the first argument ("missing a required argument:
    'x'"); an argument named wait_for was taken over by the task call's own."""
    with pytest.raises(FlowDefinitionError, match="'numbers' is a generator function"):

        @task
        def numbers() -> Any:
            yield 1

    with pytest.raises(FlowDefinitionError, match="@task on a method is not supported"):

        class Model:
            @task
            def predict(self, x: int) -> int:
                return x

    with pytest.raises(FlowDefinitionError, match="an argument named 'wait_for' is reserved"):

        @task
        def waits(wait_for: int) -> int:
            return wait_for

    class Scaler:
        def __init__(self, k: int) -> None:
            self.k = k

        def scale(self, x: int) -> int:
            return x * self.k

    scale = task(Scaler(10).scale)  # a bound method is fine

    @flow
    def scaled(n: int = 2) -> int:
        return scale(n)

    assert scaled() == 20


def test_mapping_a_subflow_says_what_to_do_instead() -> None:
    @flow
    def leaf(x: int) -> int:
        return double(x)

    @flow
    def mapped() -> Any:
        return leaf.map([1, 2])

    with pytest.raises(FlowDefinitionError, match=r"'leaf': a subflow cannot be mapped"):
        mapped.graph()  # (it was AttributeError: 'Flow' object has no attribute 'map')


def test_unknown_trigger_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"'double'.*'sometimes'"):
        task(trigger="sometimes")(double.fn)


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"retries": -1}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"retry_delay": -1}, "retry_delay"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": "soon"}, "timeout"),
        ({"retry_jitter": 2}, "retry_jitter"),
        ({"retry_jitter": "0.5"}, "retry_jitter must be a number in"),
        ({"backoff": -1}, "backoff"),
        ({"backoff": 0}, r"backoff must be a number > 0 \(1 keeps the delay constant\), got 0"),
        ({"backoff": "2"}, "backoff must be a number"),
    ],
)
def test_invalid_task_options_are_rejected(options: dict[str, Any], pattern: str) -> None:
    with pytest.raises((ValueError, TypeError), match=rf"'double'.*{pattern}"):
        task(**options)(double.fn)


def test_reserved_flow_parameter_names_are_rejected() -> None:
    with pytest.raises(FlowDefinitionError, match="executor"):

        @flow
        def f(executor: int = 1) -> None:
            pass


# ---------------------------------------------------------------- outside a flow


def test_calling_a_task_outside_a_flow_runs_the_function() -> None:
    assert add(2, 3) == 5
    assert numbers(3) == [0, 1, 2]


def test_task_map_outside_a_flow_is_a_plain_loop() -> None:
    assert scale.map([1, 2, 3], unmapped(10)) == [10, 20, 30]
    assert add.map([1, 2], b=[10, 20]) == [11, 22]
    assert double.map([]) == []
    with pytest.raises(ValueError, match="'add'"):
        add.map([1, 2], [1])


def test_the_fast_node_constructor_makes_the_same_node_as_the_dataclass() -> None:
    """The compiler builds each node with ``make_task_spec`` (the hot path); it must
    set every TaskSpec field, and to the value a plain TaskSpec(...) would have."""
    import dataclasses

    from headwater.wire import (
        TASK_FIELDS,
        FromTask,
        RetrySpec,
        TaskSpec,
        make_from_task,
        make_task_spec,
    )

    names = {f.name for f in dataclasses.fields(TaskSpec)}
    assert names == {"id", "inputs", "wait_for", "mapped", "gates", *TASK_FIELDS}
    values = {
        "id": "b-2",
        "inputs": {"x": FromTask("a", ("rows",))},
        "wait_for": ("c",),
        "mapped": ("x",),
        "gates": ("c",),
        **{name: f"<{name}>" for name in TASK_FIELDS},
        "retry": RetrySpec(max_retries=2, delay=0.5),
    }
    task_fields = tuple(values[name] for name in TASK_FIELDS)
    made = make_task_spec("b-2", values["inputs"], ("c",), ("x",), ("c",), task_fields)
    assert made == TaskSpec(**values)
    assert all(getattr(made, name) == values[name] for name in names)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.id = "other"  # type: ignore[misc]
    ref = make_from_task("a", ("rows", 0))
    assert ref == FromTask("a", ("rows", 0)) and hash(ref) == hash(FromTask("a", ("rows", 0)))

    @flow
    def f() -> int:
        return add(add(1, 2), 3)

    graph = f.graph()
    assert [t.id for t in graph.tasks] == ["add", "add-2"]
    assert graph.tasks[1].inputs["a"] == FromTask("add", ())
    assert graph.tasks[0].fn is add.fn and graph.tasks[0].code_digest == add.code_digest


@task
def _times_two(x: int) -> int:
    return 2 * x


@task
def _count(xs: list[int]) -> int:
    return len(xs)


@flow
def _maps_a_parameter(items: list[int], other: list[int]) -> dict[str, int]:
    return {"mapped": _count(_times_two.map(items)), "whole": _count(other)}


def test_a_list_parameter_a_task_maps_over_is_encoded_with_its_elements() -> None:
    """The server maps over a value's elements (it never decodes values), so a
    parameter some task maps over goes with them, as a worker's split result does;
    a list parameter nothing maps over goes whole."""
    from headwater._graphs import compile_graph
    from headwater.wire import LENGTH_KEY, graph_from_proto

    given = {"items": [1, 2, 3], "other": [4, 5]}
    msg, encoded = compile_graph(_maps_a_parameter, given, given)
    assert graph_from_proto(msg).mapped_params() == {"items"}
    items = encoded["items"]
    assert items.inline.metadata[LENGTH_KEY] == "3"
    assert [json.loads(i.inline.data) for i in items.items] == [1, 2, 3]
    assert not encoded["other"].items and LENGTH_KEY not in encoded["other"].inline.metadata
    # Not given, a mapped parameter's default goes too, with its elements (the graph
    # holds a default as one value); an unmapped one is left to the graph's default.
    _, encoded = compile_graph(_maps_its_items, {}, {"items": [7, 8], "label": ""})
    assert list(encoded) == ["items"] and encoded["items"].inline.metadata[LENGTH_KEY] == "2"


def test_a_list_parameter_of_a_run_by_name_goes_with_its_elements_only_when_small() -> None:
    """A run by name: the client does not know whether a task maps over a list, so
    it adds the elements inline when they and the list are small together (up to 512
    KiB, within the server's default max_parameter_bytes, which counts both)."""
    from headwater._graphs import ELEMENTS_INLINE, inline_value, with_elements_inline

    small = [1, 2]
    split = with_elements_inline(inline_value(small, False), small)
    assert split is not None and len(split.items) == 2
    big = ["x" * 1024] * (ELEMENTS_INLINE // 2048 + 1)  # the list and its elements: over
    assert with_elements_inline(inline_value(big, False), big) is None


@flow
def _maps_its_items(items: list[int], label: str = "") -> int:
    return _count(_times_two.map(items))


@flow
def _grows_with_n(n: int) -> list[int]:
    return [_times_two(i) for i in range(n)]  # value-dependent: no graph without n


@task
def _rows(n: int) -> dict[str, list[int]]:
    return {"rows": list(range(n))}


@flow
def _hands_lists_to_children(n: int, given: list[int]) -> list[int]:
    return [
        _maps_its_items(_rows(n)["rows"]),
        _maps_its_items([1, 2], label="constant"),
        _maps_its_items(given),
        _grows_with_n(n),
    ]


def test_a_subflow_node_names_the_parameters_its_child_maps_over() -> None:
    """A server maps over a value's elements without decoding it: a subflow node says
    which of its child's parameters a task of the child maps over, so the producer of
    such an input is split, a constant list goes element by element and a parameter of
    the parent passed on goes with its elements. A child whose graph needs values
    names none."""
    from headwater._graphs import compile_graph
    from headwater.wire import LENGTH_KEY, graph_from_proto

    given = {"n": 2, "given": [5, 6]}
    msg, encoded = compile_graph(_hands_lists_to_children, given, given)
    nodes = {t.id: t for t in msg.tasks if t.HasField("subflow")}
    assert {i: list(t.subflow.mapped_parameters) for i, t in nodes.items()} == {
        "_maps_its_items": ["items"],
        "_maps_its_items-2": ["items"],
        "_maps_its_items-3": ["items"],
        "_grows_with_n": [],
    }
    constant = nodes["_maps_its_items-2"]
    assert [json.loads(i.constant.data) for i in constant.inputs["items"].list.items] == [1, 2]
    assert constant.inputs["label"].WhichOneof("source") == "constant"  # not mapped over
    graph = graph_from_proto(msg)
    assert graph.split_nodes() == {"_rows": ("rows",)}
    assert graph.mapped_params() == {"given"}
    assert encoded["given"].inline.metadata[LENGTH_KEY] == "2"
    assert graph.tasks[1].subflow is not None
    assert graph.tasks[1].subflow.mapped_parameters == ("items",)  # read back


@flow
def _returns_parts(n: int) -> dict[str, Any]:
    rows = _rows(n)
    return {"table": rows, "pair": [rows, _times_two(n)], "n": n, "mapped": _times_two.map(rows)}


def test_a_flow_whose_parent_maps_over_its_result_splits_where_the_result_comes_from() -> None:
    """result_split: which task a child run has its worker split when the parent maps
    over (a part of) the child's result: the task the part comes from, at the rest of
    the path; nothing for a mapped task's list, a parameter or a path that leads
    nowhere."""
    from headwater.wire import graph_from_proto, result_split

    graph = graph_from_proto(_returns_parts.compile())
    own = graph.split_nodes()
    assert own == {"_rows": ()}  # (_times_two maps over it)
    # Another part of _rows is split already (the whole): one part per task.
    assert result_split(graph, ("table", "rows")) == own
    nested = graph_from_proto(_hands_lists_to_children.compile(n=1, given=[]))
    # A subflow node: its own child then splits its result in turn.
    assert result_split(nested, (0,)) == {**nested.split_nodes(), "_maps_its_items": ()}
    assert result_split(graph, ("pair", 1)) == {**own, "_times_two": ()}
    assert result_split(graph, ("pair", 1, "x")) == {**own, "_times_two": ("x",)}
    assert result_split(graph, ("mapped",)) == own  # a list of its children's results
    assert result_split(graph, ("n",)) == own
    assert result_split(graph, ("missing",)) == own
    assert result_split(graph, ("pair", 5)) == own


@task
def _table(n: int) -> dict[str, list[int]]:
    return {"rows": list(range(n)), "ids": list(range(10, 10 + n))}


@flow
def _two_parts(n: int) -> list[Any]:
    t = _table(n)
    return [_maps_its_items(t["rows"]), _times_two.map(t["ids"])]


def test_a_task_mapping_over_a_part_wins_the_one_split_over_a_subflow() -> None:
    """A result is split at one part only. A task mapping over one part is what its
    worker splits; a subflow whose child maps over another part gets it whole (on a
    server the child's map then fails), and the flow is not refused for it: it runs
    embedded as before."""
    from headwater.wire import graph_from_proto

    assert graph_from_proto(_two_parts.compile()).split_nodes() == {"_table": ("ids",)}
    assert _two_parts(2) == [2, [20, 22]]


@flow
def _maps_its_default(items: tuple[int, ...] = (1, 2)) -> int:
    return _count(_times_two.map(items))


@flow
def _leaves_the_default() -> int:
    return _maps_its_default()


def test_a_subflow_passes_the_default_its_child_maps_over_element_by_element() -> None:
    """A server cannot map over a default held in the child's graph (one value): the
    parent's node passes it, as a constant stored element by element."""
    (node,) = _leaves_the_default.compile().tasks
    items = node.inputs["items"]
    assert [json.loads(i.constant.data) for i in items.list.items] == [1, 2]
    assert items.list.tuple
    assert _leaves_the_default() == 2


@pytest.mark.parametrize(
    ("define", "said"),
    [
        (lambda: task(name="report\u202etxt.exe")(len), "task name 'report\\u202etxt.exe'"),
        (lambda: task(name="two\nlines")(len), "task name 'two\\nlines'"),
        (lambda: task(len).with_options(name="x\u2066"), "task name 'x\\u2066'"),
        (lambda: flow(name="etl\x1b[31m")(lambda: None), "flow name 'etl\\x1b[31m'"),
        (lambda: task(name=7)(len), "task name must be text, got int"),
    ],
)
def test_a_name_with_control_characters_is_refused_where_it_is_defined(
    define: Callable[[], object], said: str
) -> None:
    """A bidirectional control in @task(name=...) was refused only when the flow was
    compiled (its repr showed it raw meanwhile): now where the task is defined, as the
    graph check words it."""
    with pytest.raises(FlowDefinitionError) as info:
        define()
    assert str(info.value).startswith(said), str(info.value)
    assert "contains the control character" in str(info.value) or "text" in str(info.value)
