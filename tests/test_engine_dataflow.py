"""Engine dataflow: when tasks run, what they receive, parameters, the flow result."""

from __future__ import annotations

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
    DictOf,
    FlowRunState,
    GraphError,
    ListOf,
    Param,
    ParameterError,
    ParamSpec,
    Trigger,
)
from headwater_runtime.engine import FlowFinished, FlowRunEngine, RunTask


def test_only_roots_run_first_and_values_flow_downstream() -> None:
    d = Driver(flow(task("a"), task("b", "a"), task("c", "b")))
    assert d.dispatched() == ["a"]
    assert d.run_task("a").inputs == {}
    assert d.state("b") is S.PENDING and d.state("c") is S.PENDING

    d.succeed("a", 1)
    assert d.dispatched() == ["b"]
    assert d.inputs("b") == {"a": 1}

    d.succeed("b", 2)
    assert d.inputs("c") == {"b": 2}
    d.succeed("c", 3)

    assert d.engine.finished and d.engine.state is FlowRunState.SUCCESS
    assert d.finished_state() is FlowRunState.SUCCESS
    for key, value in (("a", 1), ("b", 2), ("c", 3)):
        assert d.runs[key].result == value
        assert d.states(key) == [S.PENDING, S.SCHEDULED, S.RUNNING, S.SUCCESS]


def test_independent_roots_are_dispatched_together() -> None:
    d = Driver(flow(task("a"), task("b"), task("c", "a", "b")))
    assert sorted(d.dispatched()) == ["a", "b"]
    d.succeed("b", 20)
    assert d.dispatched() == []  # c still waits for a
    d.succeed("a", 10)
    assert d.inputs("c") == {"a": 10, "b": 20}


def test_a_task_waits_for_every_upstream_including_wait_for() -> None:
    d = Driver(flow(task("a"), task("b"), task("c", "a", wait_for=["b"])))
    d.succeed("a", 1)
    assert d.state("c") is S.PENDING
    d.succeed("b", "ignored")
    assert d.dispatched() == ["c"]
    assert d.inputs("c") == {"a": 1}, "wait_for orders runs without passing data"


def test_diamond_runs_join_once() -> None:
    d = Driver(flow(task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c")))
    d.succeed("a", 1)
    assert sorted(d.dispatched()) == ["b", "c"]
    d.succeed("c", 3)
    d.succeed("b", 2)
    assert d.dispatched() == ["d"]
    assert d.inputs("d") == {"b": 2, "c": 3}
    d.succeed("d")
    assert sum(isinstance(c, RunTask) and c.run.key == "d" for c in d.log) == 1


def test_paths_select_parts_of_results() -> None:
    g = flow(
        task("a"),
        task("b", inputs={"rows": up("a", "rows"), "second": up("a", "rows", 1)}),
        task("c", inputs={"first": up("a", "pair", 0)}),
    )
    d = Driver(g)
    value = {"rows": ["r0", "r1", "r2"], "pair": ("x", "y")}
    d.succeed("a", value)
    assert d.inputs("b") == {"rows": ["r0", "r1", "r2"], "second": "r1"}
    assert d.inputs("b")["rows"] is value["rows"], "selection must not copy"
    assert d.inputs("c") == {"first": "x"}


def test_list_tuple_and_dict_inputs_are_assembled_at_run_time() -> None:
    g = flow(
        task("a"),
        task("b"),
        task(
            "c",
            inputs={
                "as_list": ListOf((up("a"), Const(0), up("b", "k"))),
                "as_tuple": ListOf((up("b", "k"), up("a")), is_tuple=True),
                "as_dict": DictOf((("x", up("a")), ("nested", ListOf((up("a"), Param("p")))))),
            },
        ),
        params=[ParamSpec("p", default="P", required=False)],
    )
    d = Driver(g)
    d.succeed("a", 1)
    d.succeed("b", {"k": 2})
    assert d.inputs("c") == {
        "as_list": [1, 0, 2],
        "as_tuple": (2, 1),
        "as_dict": {"x": 1, "nested": [1, "P"]},
    }
    assert isinstance(d.inputs("c")["as_tuple"], tuple)
    assert isinstance(d.inputs("c")["as_list"], list)


def test_constants_and_results_pass_by_identity() -> None:
    payload = {"big": list(range(10))}
    d = Driver(flow(task("a", inputs={"x": Const(payload)}), task("b", "a")))
    assert d.inputs("a")["x"] is payload
    produced = object()
    d.succeed("a", produced)
    assert d.inputs("b")["a"] is produced


def test_params_defaults_and_overrides() -> None:
    g = flow(
        task("a", inputs={"n": Param("n"), "factor": Param("factor")}),
        params=[ParamSpec("n"), ParamSpec("factor", default=3, required=False)],
    )
    d = Driver(g, {"n": 5})
    assert d.inputs("a") == {"n": 5, "factor": 3}
    assert d.engine.params == {"n": 5, "factor": 3}

    d2 = Driver(g, {"n": 1, "factor": None})
    assert d2.inputs("a") == {"n": 1, "factor": None}, "an explicit None is not the default"


def test_unknown_parameter_raises_parameter_error_naming_it() -> None:
    g = flow(task("a", inputs={"n": Param("n")}), params=[ParamSpec("n", 1, False)])
    with pytest.raises(ParameterError, match=r"unknown parameter.*'bogus'.*accepts: n"):
        FlowRunEngine(g, {"bogus": 1}, clock=_Clock())


def test_missing_required_parameter_raises_parameter_error_naming_it() -> None:
    g = flow(task("a", inputs={"n": Param("n")}), params=[ParamSpec("n")])
    with pytest.raises(ParameterError, match=r"missing required parameter 'n'"):
        FlowRunEngine(g, {}, clock=_Clock())
    assert issubclass(ParameterError, TypeError)


def test_invalid_graphs_are_refused_when_the_engine_is_built() -> None:
    with pytest.raises(GraphError, match="unknown task 'nope'"):
        FlowRunEngine(flow(task("a", "nope")), clock=_Clock())
    with pytest.raises(GraphError, match="cycle"):
        FlowRunEngine(flow(task("a", "b"), task("b", "a")), clock=_Clock())
    with pytest.raises(GraphError, match="duplicate task id"):
        FlowRunEngine(flow(task("a"), task("a")), clock=_Clock())
    with pytest.raises(ValueError, match="max_concurrency"):
        FlowRunEngine(flow(task("a")), clock=_Clock(), max_concurrency=0)


def test_tasks_declared_out_of_order_still_run_in_dependency_order() -> None:
    d = Driver(flow(task("c", "b"), task("b", "a"), task("a")))
    assert d.dispatched() == ["a"]
    d.succeed("a", 1)
    assert d.dispatched() == ["b"]


def test_bad_path_fails_the_run_with_an_input_error() -> None:
    d = Driver(flow(task("a"), task("b", inputs={"x": up("a", "missing")}), task("c", "b")))
    d.succeed("a", {"present": 1})
    run = d.runs["b"]
    assert run.states == [S.PENDING, S.SCHEDULED, S.FAILED]
    assert run.failure is not None
    assert run.failure.type == "headwater.InputError"
    assert "'b'" in run.failure.message and "missing" in run.failure.message
    assert run.failure.retryable is False
    assert run.attempts == [], "no attempt was made"
    assert d.state("c") is S.TRIGGER_FAILED
    assert d.engine.state is FlowRunState.FAILED


def test_an_empty_flow_succeeds_at_once() -> None:
    d = Driver(flow())
    assert d.engine.state is FlowRunState.SUCCESS
    assert d.last == [FlowFinished(FlowRunState.SUCCESS)]


def test_start_twice_is_refused() -> None:
    d = Driver(flow(task("a")))
    with pytest.raises(RuntimeError):
        d.engine.start()


# ------------------------------------------------------------------ flow result


def test_flow_result_is_assembled_from_task_results_and_params() -> None:
    g = flow(
        task("a"),
        task("b", "a"),
        params=[ParamSpec("p", default=7, required=False)],
        result=DictOf((("a", up("a")), ("b1", up("b", 1)), ("p", Param("p")))),
    )
    d = Driver(g)
    d.succeed("a", "A")
    assert d.engine.result is None, "no result before the run ends"
    d.succeed("b", ["x", "y"])
    assert d.engine.state is FlowRunState.SUCCESS
    assert d.engine.result == {"a": "A", "b1": "y", "p": 7}


def test_flow_result_of_a_single_task_is_that_object() -> None:
    obj = object()
    d = Driver(flow(task("a"), result=up("a"), reference=["a"]))
    d.succeed("a", obj)
    assert d.engine.result is obj


def test_flow_result_that_cannot_be_assembled_fails_the_run() -> None:
    d = Driver(flow(task("a"), result=up("a", "nope"), reference=["a"]))
    d.succeed("a", {"yes": 1})
    assert d.engine.state is FlowRunState.FAILED
    assert "could not assemble the result" in d.engine.flow_history[-1][2]


def test_without_reference_tasks_any_failure_fails_the_flow() -> None:
    d = Driver(flow(task("a"), task("b"), task("c", "b", trigger=Trigger.ALL_FINISHED)))
    d.fail("a")
    d.succeed("b")
    d.succeed("c")
    assert d.engine.state is FlowRunState.FAILED
    assert [f.key for f in d.engine.failed_runs()] == ["a"]


def test_reference_tasks_decide_the_flow_state() -> None:
    g = flow(
        task("a"),
        task("b"),
        task("c", "b", trigger=Trigger.ALL_FINISHED),
        result=up("c"),
        reference=["c"],
    )
    d = Driver(g)
    d.fail("b")
    d.succeed("a")
    d.succeed("c", "cleanup ran")
    assert d.engine.state is FlowRunState.SUCCESS, "only the reference task c counts"
    assert d.engine.result == "cleanup ran"


def test_a_failed_reference_task_fails_the_flow_and_is_reported() -> None:
    g = flow(task("a"), task("b", "a"), task("c"), reference=["b"])
    d = Driver(g)
    d.succeed("c")
    d.fail("a")
    assert d.state("b") is S.TRIGGER_FAILED
    assert d.engine.state is FlowRunState.FAILED
    failed = d.engine.failed_runs()
    # Root causes (raised or timed out) first, then reference runs that did not succeed.
    assert [(f.key, f.state) for f in failed] == [("a", S.FAILED), ("b", S.TRIGGER_FAILED)]
    assert failed[0].failure is not None and failed[0].failure.message == "boom"
    assert d.engine.result is None


def test_a_failed_runs_message_says_why_for_its_first_failures_and_counts_the_rest() -> None:
    """The message (listings, the web UI) named the failed task runs with their state
    only: why they failed took opening each. Now each of the first five says its error's
    first line (cut to 100 characters), and the rest are counted."""
    g = flow(task("m", inputs={"x": Const(list(range(7)))}, mapped=["x"]), reference=["m"])
    d = Driver(g)
    d.fail("m[0]", failure("builtins.KeyError", "'price'\nsecond line"))
    d.fail("m[1]", failure("headwater.TaskTimeout", "x" * 150, timed_out=True))
    for i in range(2, 7):
        d.fail(f"m[{i}]")
    assert d.engine.state is FlowRunState.FAILED
    assert d.engine.flow_history[-1][2] == (
        "m[0]: FAILED (KeyError: 'price'); "
        f"m[1]: TIMED_OUT (headwater.TaskTimeout: {'x' * 74}...); "
        "m[2]: FAILED (ValueError: boom); m[3]: FAILED (ValueError: boom); "
        "m[4]: FAILED (ValueError: boom); and 2 more"
    )


def test_skipped_reference_task_counts_as_success() -> None:
    d = Driver(flow(task("a"), result=up("a"), reference=["a"]))
    d.skip("a")
    assert d.engine.state is FlowRunState.SUCCESS
    assert d.engine.result is None


def test_mapped_reference_task_fails_the_flow_when_a_child_fails() -> None:
    g = flow(task("m", inputs={"x": Const([1, 2])}, mapped=["x"]), reference=["m"])
    d = Driver(g)
    d.succeed("m[0]")
    d.fail("m[1]")
    assert d.state("m") is S.MAPPED
    assert d.engine.state is FlowRunState.FAILED
    assert [f.key for f in d.engine.failed_runs()] == ["m[1]"]


def test_every_task_reaches_a_terminal_state_after_an_early_failure() -> None:
    d = Driver(flow(task("a"), task("b"), task("c", "b")))
    d.fail("a")
    assert not d.engine.finished, "b and c still have to run"
    d.succeed("b")
    d.succeed("c")
    assert d.engine.state is FlowRunState.FAILED
    assert d.state("c") is S.SUCCESS


def test_input_of_an_upstream_that_did_not_succeed_is_none() -> None:
    g = flow(task("a"), task("b"), task("c", "a", "b", trigger=Trigger.ALL_FINISHED))
    d = Driver(g)
    d.fail("a")
    d.skip("b")
    assert d.inputs("c") == {"a": None, "b": None}


def test_history_records_timestamps_attempts_and_messages() -> None:
    d = Driver(flow(task("a")))
    t0 = d.clock.now()
    d.clock.advance(2.5)
    d.succeed("a", 1)
    history = d.runs["a"].history
    assert [e.state for e in history] == [S.PENDING, S.SCHEDULED, S.RUNNING, S.SUCCESS]
    assert [e.timestamp for e in history] == [t0, t0, t0, t0 + 2.5]
    assert [e.attempt for e in history] == [0, 0, 1, 1]
    (attempt,) = d.runs["a"].attempts
    assert (attempt.number, attempt.started_at, attempt.ended_at) == (1, t0, t0 + 2.5)
    assert attempt.outcome is S.SUCCESS and attempt.duration == 2.5
    assert d.engine.flow_history[0][0] is FlowRunState.RUNNING
    assert d.engine.flow_history[-1][:2] == (FlowRunState.SUCCESS, t0 + 2.5)


def test_on_transition_sees_every_state_change() -> None:
    d = Driver(flow(task("a"), task("b", "a")))
    d.succeed("a")
    d.succeed("b")
    assert d.transitions == [
        ("a", S.PENDING, S.SCHEDULED),
        ("a", S.SCHEDULED, S.RUNNING),
        ("a", S.RUNNING, S.SUCCESS),
        ("b", S.PENDING, S.SCHEDULED),
        ("b", S.SCHEDULED, S.RUNNING),
        ("b", S.RUNNING, S.SUCCESS),
    ]


class _Clock:
    def now(self) -> float:
        return 0.0
