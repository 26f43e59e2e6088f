"""Mapping: expansion, empty maps, element-wise map chains, reduces, zips, failures."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from engine_helpers import (
    Driver,
    S,
    check_engines,  # noqa: F401  (autouse fixture)
    failure,
    flow,
    task,
    up,
)

from headwater.wire import (
    Const,
    FlowRunState,
    ListOf,
    Param,
    ParamSpec,
    RetrySpec,
    TaskSpec,
    Trigger,
)
from headwater_runtime.engine import RunTask, TaskSucceeded


def _map_const(task_id: str, values: Any, **options: Any) -> TaskSpec:
    return task(task_id, inputs={"x": Const(values)}, mapped=["x"], **options)


def test_map_over_a_constant_list_expands_one_child_per_element() -> None:
    shared = {"config": True}
    g = flow(task("m", inputs={"x": Const([10, 20, 30]), "cfg": Const(shared)}, mapped=["x"]))
    d = Driver(g)
    parent = d.runs["m"]
    assert parent.states == [S.PENDING, S.MAPPED]
    assert "3 child runs" in parent.history[-1].message
    assert [c.key for c in parent.children or []] == ["m[0]", "m[1]", "m[2]"]
    assert [c.map_index for c in parent.children or []] == [0, 1, 2]
    assert all(c.parent is parent for c in parent.children or [])
    assert parent.map_index == -1
    assert sorted(d.dispatched()) == ["m[0]", "m[1]", "m[2]"]
    for i, x in enumerate([10, 20, 30]):
        inputs = d.inputs(f"m[{i}]")
        assert inputs["x"] == x
        assert inputs["cfg"] is shared, "unmapped arguments are passed whole, not copied"
    assert not d.engine.finished, "the flow waits for the children"
    for i in range(3):
        d.succeed(f"m[{i}]", i)
    assert d.engine.state is FlowRunState.SUCCESS


@pytest.mark.parametrize("values", [(1, 2), range(2), [[1], [2]]], ids=["tuple", "range", "nested"])
def test_map_over_any_indexable_sequence(values: Any) -> None:
    d = Driver(flow(_map_const("m", values)))
    assert [d.inputs(f"m[{i}]")["x"] for i in range(2)] == [values[0], values[1]]


def test_map_over_an_upstream_result_and_a_param() -> None:
    g = flow(
        task("src"),
        task("m", inputs={"x": up("src", "items"), "k": Param("k")}, mapped=["x"]),
        params=[ParamSpec("k", 2, False)],
    )
    d = Driver(g)
    assert d.state("m") is S.PENDING
    d.succeed("src", {"items": ["a", "b"]})
    assert d.inputs("m[0]") == {"x": "a", "k": 2}
    assert d.inputs("m[1]") == {"x": "b", "k": 2}


def test_map_over_a_parameter() -> None:
    g = flow(
        task("m", inputs={"x": Param("xs")}, mapped=["x"]),
        params=[ParamSpec("xs")],
    )
    d = Driver(g, {"xs": ("p", "q")})
    assert [d.inputs(f"m[{i}]") for i in range(2)] == [{"x": "p"}, {"x": "q"}]


def test_element_wise_and_whole_inputs_from_the_same_mapped_upstream() -> None:
    g = flow(
        _map_const("a", [1, 2]),
        task("b", inputs={"x": up("a"), "all": up("a")}, mapped=["x"]),
    )
    d = Driver(g)
    d.succeed("a[0]", 10)
    assert d.dispatched() == [], "the whole input needs every child of a"
    d.succeed("a[1]", 20)
    assert d.inputs("b[0]") == {"x": 10, "all": [10, 20]}
    assert d.inputs("b[1]") == {"x": 20, "all": [10, 20]}


def test_empty_map_has_no_children_and_the_reduce_gets_an_empty_list() -> None:
    g = flow(
        _map_const("m", []),
        task("em", inputs={"x": up("m")}, mapped=["x"]),  # map over the empty map
        task("r", "m"),
        task("r2", "em"),
    )
    d = Driver(g)
    assert d.runs["m"].states == [S.PENDING, S.MAPPED]
    assert d.runs["m"].children == []
    assert d.runs["em"].children == [] and d.state("em") is S.MAPPED
    assert sorted(d.dispatched()) == ["r", "r2"]
    assert d.inputs("r") == {"m": []}
    assert d.inputs("r2") == {"em": []}
    d.succeed("r", 0)
    d.succeed("r2", 0)
    assert d.engine.state is FlowRunState.SUCCESS


def test_empty_map_from_an_upstream_result() -> None:
    d = Driver(flow(task("src"), task("m", inputs={"x": up("src")}, mapped=["x"]), task("r", "m")))
    d.succeed("src", [])
    assert d.state("m") is S.MAPPED
    assert d.inputs("r") == {"m": []}


def test_reduce_gets_results_in_index_order_whatever_the_completion_order() -> None:
    d = Driver(flow(_map_const("m", list(range(5))), task("r", "m")))
    for i in (3, 0, 4, 2, 1):
        assert d.state("r") is S.PENDING, "the reduce waits for every child"
        d.succeed(f"m[{i}]", f"v{i}")
    assert d.inputs("r") == {"m": ["v0", "v1", "v2", "v3", "v4"]}


def test_map_over_map_is_element_wise() -> None:
    g = flow(
        _map_const("a", [1, 2, 3]),
        task("b", inputs={"x": up("a")}, mapped=["x"]),
        task("c", inputs={"y": up("b")}, mapped=["y"]),
        task("r", "c"),
    )
    d = Driver(g)
    assert d.state("b") is S.MAPPED, "b expands as soon as a has expanded"
    assert [c.key for c in d.runs["b"].children or []] == ["b[0]", "b[1]", "b[2]"]
    assert sorted(d.dispatched()) == ["a[0]", "a[1]", "a[2]"]

    d.succeed("a[0]", 10)
    assert d.dispatched() == ["b[0]"], "b[0] runs while a[1] and a[2] still run"
    assert d.state("a[1]") is S.RUNNING and d.state("a[2]") is S.RUNNING
    assert d.inputs("b[0]") == {"x": 10}
    d.succeed("b[0]", 100)
    assert d.dispatched() == ["c[0]"], "and c[0] too, a whole level ahead"
    assert d.inputs("c[0]") == {"y": 100}

    d.succeed("a[2]", 30)
    assert d.dispatched() == ["b[2]"]
    d.succeed("a[1]", 20)
    d.succeed("b[1]", 200)
    d.succeed("b[2]", 300)
    d.succeed("c[2]", 3000)
    d.succeed("c[0]", 1000)
    assert d.state("r") is S.PENDING
    d.succeed("c[1]", 2000)
    assert d.inputs("r") == {"c": [1000, 2000, 3000]}


def test_element_wise_child_follows_its_own_upstream_child() -> None:
    g = flow(_map_const("a", [1, 2, 3]), task("b", inputs={"x": up("a")}, mapped=["x"]))
    d = Driver(g)
    d.fail("a[0]")
    d.skip("a[1]")
    d.succeed("a[2]", 3)
    assert d.state("b[0]") is S.TRIGGER_FAILED
    assert d.state("b[1]") is S.SKIPPED
    assert d.dispatched() == ["b[2]"]
    d.succeed("b[2]")
    assert d.engine.state is FlowRunState.FAILED
    assert [f.key for f in d.engine.failed_runs()] == ["a[0]", "b[0]"]


def test_element_wise_with_all_finished_gets_none_for_a_failed_upstream_child() -> None:
    g = flow(
        _map_const("a", [1, 2]),
        task("b", inputs={"x": up("a")}, mapped=["x"], trigger=Trigger.ALL_FINISHED),
    )
    d = Driver(g)
    d.fail("a[0]")
    assert d.inputs("b[0]") == {"x": None}


def test_a_path_on_a_mapped_result_indexes_the_list_of_results() -> None:
    """``b.map(a[1])`` with a mapped ``a`` selects from the list of a's results, as any
    other consumer of ``a`` would: it maps over child 1's result, after all of a."""
    g = flow(_map_const("a", [1, 2]), task("b", inputs={"x": up("a", 1)}, mapped=["x"]))
    d = Driver(g)
    d.succeed("a[1]", ["p", "q", "r"])
    assert d.state("b") is S.PENDING  # a whole-list dependency: waits for every child
    d.succeed("a[0]", ["unused"])
    assert [d.inputs(f"b[{i}]") for i in range(3)] == [{"x": "p"}, {"x": "q"}, {"x": "r"}]


def test_map_over_map_also_waits_for_its_whole_upstreams() -> None:
    g = flow(
        _map_const("a", [1, 2]),
        task("w"),
        task("b", inputs={"x": up("a")}, mapped=["x"], wait_for=["w"]),
    )
    d = Driver(g)
    d.succeed("a[0]", 1)
    assert d.state("b") is S.PENDING
    d.succeed("w")
    assert d.dispatched() == ["b[0]"]
    assert d.state("b[1]") is S.PENDING


@pytest.mark.parametrize("elementwise", [False, True], ids=["constant", "element-wise"])
def test_children_of_a_map_count_a_wide_whole_upstream_once(
    monkeypatch: pytest.MonkeyPatch, elementwise: bool
) -> None:
    """A map whose children all take another map's whole list (``unmapped(a.map(...))``)
    counts that upstream's final states once for the expansion, not once per child:
    it was quadratic (4,000 children took 2 s embedded, 100,000 would take ~20 min).
    The triggers still see every state: a failed child of the whole upstream fails
    the default trigger, naming the state."""
    from headwater_runtime.engine import _policies

    counted = 0
    add = _policies.Tally.add

    def counting(self: _policies.Tally, states: Any) -> None:
        nonlocal counted
        states = list(states)
        counted += len(states)
        add(self, states)

    monkeypatch.setattr(_policies.Tally, "add", counting)
    n = 120
    x = up("e") if elementwise else Const(list(range(n)))
    g = flow(
        _map_const("a", list(range(n))),
        _map_const("e", list(range(n))),
        task("b", inputs={"x": x, "all": up("a")}, mapped=["x"], trigger=Trigger.ALL_FINISHED),
        task("c", inputs={"x": x, "all": up("a")}, mapped=["x"]),
    )
    d = Driver(g)
    for i in range(n):
        d.succeed(f"e[{i}]", i)
    d.fail("a[0]", failure(retryable=False))
    counted = 0
    for i in range(1, n):
        d.succeed(f"a[{i}]", i)
    assert len(d.runs["b"].children or []) == n
    assert all(d.state(f"b[{i}]") is S.RUNNING for i in range(n)), "all_finished runs"
    assert d.state("c") is S.TRIGGER_FAILED, "the node's trigger sees the whole upstream"
    assert "(upstream task runs: " in d.runs["c"].history[-1].message
    assert " 1 failed (FAILED))" in d.runs["c"].history[-1].message
    assert counted <= 8 * n, f"{counted} upstream states counted for {n} children"


def test_zip_over_two_mapped_upstreams_waits_for_both_children() -> None:
    """Child i of a map over two mapped upstreams runs only when both upstream children
    i are done, even when the outcomes arrive in one batch."""
    g = flow(
        _map_const("a1", [1]),
        _map_const("a2", [2]),
        task("w"),
        task("b", inputs={"x": up("a1"), "y": up("a2")}, mapped=["x", "y"], wait_for=["w"]),
    )
    d = Driver(g)
    d.send(TaskSucceeded("w", 1, None), TaskSucceeded("a1[0]", 1, 10))
    assert d.state("a2[0]") is S.RUNNING
    assert d.state("b[0]") is S.PENDING, "a2[0] has not finished"
    assert d.dispatched() == []
    d.succeed("a2[0]", 20)
    assert d.inputs("b[0]") == {"x": 10, "y": 20}


def test_zip_over_two_mapped_upstreams_waits_for_both_children_single_event() -> None:
    """Same, when one event settles an upstream child and completes a whole upstream."""
    g = flow(
        _map_const("z", [1]),
        task("a1", inputs={"x": up("z")}, mapped=["x"]),
        _map_const("a2", [2]),
        task(
            "b",
            inputs={"x": up("a1"), "y": up("a2")},
            mapped=["x", "y"],
            wait_for=["z"],
            trigger=Trigger.ALL_FINISHED,
        ),
    )
    d = Driver(g)
    d.fail("z[0]")
    assert d.state("a1[0]") is S.TRIGGER_FAILED
    assert d.state("a2[0]") is S.RUNNING
    assert d.dispatched() == [], "b[0] must wait for a2[0]"
    d.succeed("a2[0]", 20)
    assert d.inputs("b[0]") == {"x": None, "y": 20}


def test_zipped_mapped_arguments() -> None:
    g = flow(task("m", inputs={"x": Const([1, 2]), "y": Const(["a", "b"])}, mapped=["x", "y"]))
    d = Driver(g)
    assert d.inputs("m[0]") == {"x": 1, "y": "a"}
    assert d.inputs("m[1]") == {"x": 2, "y": "b"}


def test_zipped_mapped_arguments_of_different_lengths_fail_clearly() -> None:
    g = flow(
        task("m", inputs={"x": Const([1, 2]), "y": Const([1, 2, 3])}, mapped=["x", "y"]),
        task("r", "m"),
    )
    d = Driver(g)
    run = d.runs["m"]
    assert run.states == [S.PENDING, S.FAILED]
    assert run.children is None
    assert run.failure is not None
    assert run.failure.type == "headwater.MapLengthMismatch"
    assert "'m'" in run.failure.message and "x=2" in run.failure.message
    assert "y=3" in run.failure.message
    assert d.state("r") is S.TRIGGER_FAILED
    assert d.engine.state is FlowRunState.FAILED
    assert d.engine.failed_runs()[0].key == "m"


def test_a_length_mismatch_names_the_arguments_in_the_functions_order() -> None:
    """Inputs read back from a FlowGraph come in the protobuf map's order: the message
    is the same embedded and on a server all the same."""
    spec = task("m", inputs={"y": Const([1, 2, 3]), "x": Const([1, 2])}, mapped=["y", "x"])
    d = Driver(flow(dataclasses.replace(spec, argument_order=("x", "y"))))
    failure = d.runs["m"].failure
    assert failure is not None and failure.message.endswith("different lengths: x=2, y=3")


def test_zip_of_element_wise_and_constant_lengths_must_match() -> None:
    g = flow(
        _map_const("a", [1, 2]),
        task("b", inputs={"x": up("a"), "y": Const([1, 2, 3])}, mapped=["x", "y"]),
    )
    d = Driver(g)
    assert d.state("b") is S.FAILED
    assert "x=2" in d.failure_message("b")


@pytest.mark.parametrize(
    "value",
    [5, None, "abc", b"abc", {"a": 1}, {1, 2}, (i for i in range(2))],
    ids=["int", "none", "str", "bytes", "dict", "set", "generator"],
)
def test_mapping_over_a_non_sequence_fails_clearly(value: object) -> None:
    d = Driver(flow(_map_const("m", value), task("r", "m")))
    run = d.runs["m"]
    assert run.states == [S.PENDING, S.FAILED]
    assert run.failure is not None
    assert "cannot map over argument 'x'" in run.failure.message
    assert type(value).__name__ in run.failure.message
    assert d.state("r") is S.TRIGGER_FAILED


def test_mapping_over_an_upstream_that_returned_a_non_sequence_fails() -> None:
    d = Driver(flow(task("src"), task("m", inputs={"x": up("src")}, mapped=["x"])))
    d.succeed("src", 42)
    assert d.state("m") is S.FAILED
    assert "int has no elements to map over" in d.failure_message("m")


def test_mapping_over_a_failed_upstream_with_a_permissive_trigger_fails() -> None:
    g = flow(
        task("src"),
        task("m", inputs={"x": up("src")}, mapped=["x"], trigger=Trigger.ALL_FINISHED),
        _map_const("e", [1]),
        task("n", inputs={"x": up("m")}, mapped=["x"], trigger=Trigger.ALL_FINISHED),
    )
    d = Driver(g)
    d.fail("src")
    assert d.state("m") is S.FAILED
    assert "'src' ended FAILED" in d.failure_message("m")
    assert d.state("n") is S.FAILED, "element-wise over a map that never expanded"


def test_skipped_map_source_skips_the_mapped_task() -> None:
    d = Driver(flow(task("src"), task("m", inputs={"x": up("src")}, mapped=["x"]), task("r", "m")))
    d.skip("src")
    assert d.states("m") == [S.PENDING, S.SKIPPED]
    assert d.state("r") is S.SKIPPED


def test_failed_child_fails_a_default_reduce_but_all_finished_gets_none() -> None:
    g = flow(
        _map_const("m", [1, 2, 3]),
        task("r", "m"),
        task("r_all", "m", trigger=Trigger.ALL_FINISHED),
    )
    d = Driver(g)
    d.succeed("m[0]", "a")
    d.fail("m[1]")
    d.skip("m[2]")
    assert d.state("m") is S.MAPPED, "the parent stays MAPPED; children carry outcomes"
    assert d.state("r") is S.TRIGGER_FAILED
    assert d.inputs("r_all") == {"m": ["a", None, None]}


def test_skipped_child_skips_a_default_reduce_and_none_failed_runs() -> None:
    g = flow(
        _map_const("m", [1, 2]),
        task("r", "m"),
        task("r_ok", "m", trigger=Trigger.NONE_FAILED),
    )
    d = Driver(g)
    d.succeed("m[0]", 1)
    d.skip("m[1]")
    assert d.state("r") is S.SKIPPED
    assert d.inputs("r_ok") == {"m": [1, None]}
    d.succeed("r_ok")
    assert d.engine.state is FlowRunState.SUCCESS


def test_children_retry_and_time_out_independently() -> None:
    g = flow(_map_const("m", [1, 2], retry=RetrySpec(max_retries=1, delay=1), timeout=10))
    d = Driver(g)
    d.fail("m[0]")
    assert d.state("m[0]") is S.RETRYING and d.state("m[1]") is S.RUNNING
    d.tick(1)
    assert d.dispatched() == ["m[0]"] and d.attempt("m[0]") == 2
    d.succeed("m[0]", "ok")
    d.tick(9)
    assert d.state("m[1]") is S.RETRYING, "m[1] timed out with a retry left"
    d.tick(1)
    d.succeed("m[1]", "ok too")
    assert d.engine.state is FlowRunState.SUCCESS


def test_mapped_task_result_is_the_list_of_child_results() -> None:
    g = flow(_map_const("m", [1, 2]), result=ListOf((up("m"), up("m", 1))), reference=["m"])
    d = Driver(g)
    d.succeed("m[1]", "b")
    d.succeed("m[0]", "a")
    assert d.engine.result == [["a", "b"], "b"]


def test_non_mapped_downstream_sees_the_states_of_all_children() -> None:
    d = Driver(flow(_map_const("m", [1, 2]), task("alert", "m", trigger=Trigger.ANY_FAILED)))
    d.succeed("m[0]")
    d.fail("m[1]")
    assert d.dispatched() == ["alert"]


def test_every_child_is_dispatched_exactly_once() -> None:
    d = Driver(
        flow(_map_const("a", list(range(4))), task("b", inputs={"x": up("a")}, mapped=["x"]))
    )
    d.complete(lambda cmd: cmd.run.key)
    keys = [c.run.key for c in d.log if isinstance(c, RunTask)]
    assert sorted(keys) == sorted([f"a[{i}]" for i in range(4)] + [f"b[{i}]" for i in range(4)])
    assert [d.inputs(f"b[{i}]")["x"] for i in range(4)] == [f"a[{i}]" for i in range(4)]


def test_a_dataframe_is_not_mapped_over_and_a_series_by_position() -> None:
    """Mapping over a DataFrame took its length from the rows and its elements from the
    columns (KeyError per element); a Series with another index failed the same way."""
    from headwater_runtime.engine import PYTHON_VALUES

    class Frame:  # the two attributes a pandas DataFrame is told by
        columns = ("a", "b")
        iloc = ((1, 2), (3, 4))

        def __len__(self) -> int:
            return 2

        def __getitem__(self, key: str) -> Any:
            return {"a": [1, 3], "b": [2, 4]}[key]

    class Series:  # index labels 10, 20; positions 0, 1
        iloc = ("x", "y")

        def __len__(self) -> int:
            return 2

        def __getitem__(self, label: int) -> str:
            return {10: "x", 20: "y"}[label]

    assert PYTHON_VALUES.length(Frame()) is None
    assert PYTHON_VALUES.length(Series()) == 2
    assert [PYTHON_VALUES.item(Series(), i) for i in range(2)] == ["x", "y"]
    assert PYTHON_VALUES.item([5, 6], 1) == 6
