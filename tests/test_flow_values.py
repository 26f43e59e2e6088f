"""Flow bodies are Python (docs/flows.md): parameters are values, task results used as
values fail at once naming the task, the flow line and the fix, and parameters are
checked against the flow function's annotations."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import enum
import functools
import json
import subprocess
import sys
from typing import Annotated, Any, Literal, NamedTuple

import pydantic
import pytest

from headwater import FlowDefinitionError, ParameterError, case, flow, merge, task, unmapped
from headwater._loader import load_file
from headwater.wire import Const, FromTask, Param, graph_from_proto, parameters_digest

LINE = __file__.rsplit("/", 1)[-1]


@task
def scale(x: int, factor: int) -> int:
    return x * factor


@task
def total(values: list[int]) -> int:
    return sum(values)


@task
def echo(value: Any) -> Any:
    return value


@task
def name() -> str:
    return "db"


@task
def rows() -> dict[str, list[int]]:
    return {"rows": [1, 2, 3]}


# ------------------------------------------------------------- parameters are values


def test_the_readme_example_runs_and_its_graph_is_the_one_for_the_values() -> None:
    @flow
    def pipeline(n: int = 10, factor: int = 3) -> int:
        return total(scale.map(list(range(n)), unmapped(factor)))

    assert pipeline(n=5) == 30
    assert pipeline() == 135
    graph = pipeline.graph(n=4)
    assert graph.value_dependent
    scale_node = next(t for t in graph.tasks if t.name == "scale")
    assert scale_node.inputs["x"] == Const([0, 1, 2, 3])
    assert scale_node.inputs["factor"] == Const(3)  # a parameter given to a task: a constant


def test_a_flow_that_does_not_use_values_keeps_one_symbolic_graph() -> None:
    @flow
    def symbolic(n: list[int], factor: int = 2) -> int:
        return total(scale.map(echo(n), unmapped(factor)))

    graph = symbolic.graph()
    assert not graph.value_dependent and not symbolic.value_dependent
    assert symbolic.graph(n=[1, 2]) == graph
    assert next(t for t in graph.tasks if t.name == "echo").inputs["value"] == Param("n")
    assert symbolic(n=[1, 2]) == 6


def test_if_on_a_parameter_picks_the_branch_for_the_run() -> None:
    @flow
    def branch(n: int) -> str:
        if n > 8:
            return echo(f"big {n}")
        return echo("small")

    assert branch(n=9) == "big 9"
    assert branch(n=1) == "small"
    assert [t.inputs["value"] for t in branch.graph(n=20).tasks] == [Const("big 20")]


def test_f_strings_and_paths_on_parameters_give_the_real_text() -> None:
    @flow
    def write(out_dir: str = "/tmp/out") -> list[str]:
        import pathlib

        return [echo(f"{out_dir}/result.sqlite"), echo(str(pathlib.Path(out_dir) / "x"))]

    assert write(out_dir="/data") == ["/data/result.sqlite", "/data/x"]


def test_the_body_of_a_value_dependent_flow_runs_once_per_compile_after_the_first(
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls: list[object] = []

    @flow
    def counted(n: int = 2) -> list[int]:
        calls.append(n)
        return scale.map(list(range(n)), unmapped(1))

    counted()
    assert len(calls) == 2  # the symbolic attempt stopped at range(n), then the values
    calls.clear()
    counted(n=3)
    counted.graph(n=4)
    assert calls == [3, 4]


def test_a_second_flow_object_over_the_same_code_knows_it_is_value_dependent() -> None:
    def body(n: int = 2) -> int:
        seen.append(n)
        return total(list(range(n)))

    seen: list[object] = []
    flow(body).graph()
    seen.clear()
    again = flow(name="again")(body)
    assert again.value_dependent
    again.graph(n=3)
    assert seen == [3]


@dataclasses.dataclass
class Holder:
    value: Any


class Span(NamedTuple):
    start: int
    end: int


@task
def width(w: Span) -> int:
    return w.end - w.start


@pytest.mark.parametrize(
    "shape",
    ["object", "object in a list", "object in a tuple", "object in a dict", "flow result"],
)
def test_a_task_result_inside_an_object_is_refused_wherever_the_object_is(shape: str) -> None:
    """``Config(path=r)`` would reach the task with the reference still inside (it ran
    with ``<TaskRef ...>`` as its data when the object sat in a list): refused when the
    flow is built, naming the task, the argument and the object."""

    @flow
    def wrapped() -> Any:
        held = Holder(name())
        if shape == "flow result":
            return [held]
        arg = {
            "object": held,
            "object in a list": [held],
            "object in a tuple": (1, held),
            "object in a dict": {"h": held},
        }[shape]
        return echo(arg)

    where = "the result of flow 'wrapped'" if shape == "flow result" else "task 'echo'"
    with pytest.raises(
        FlowDefinitionError,
        match=rf"{where}.*the result of task 'name' is inside a Holder object, where it "
        "would stay a reference; pass it as its own argument",
    ):
        wrapped()


@task
def call_with(fn: Any, x: int) -> Any:
    return fn(x)


def test_a_task_result_in_an_array_a_partial_or_a_lambda_is_refused() -> None:
    """np.array([five(), 1]), partial(max, r) and `lambda v: v * r` reached the task
    with the reference inside (it ran on `<TaskRef ...>`): refused when the flow is
    built, as for any object holding one."""
    import functools

    import numpy as np

    def array_of(r: Any) -> Any:
        held = np.empty(2, dtype=object)  # (np.array([r]) would measure r: refused too)
        held[0], held[1] = r, 1
        return held

    shapes = {
        "ndarray": array_of,
        "partial": lambda r: functools.partial(max, r),
        "function": lambda r: lambda v: v * r,
    }
    for kind, make in shapes.items():

        @flow
        def holds() -> Any:
            return echo(make(name()))  # noqa: B023 (built and checked in this iteration)

        with pytest.raises(FlowDefinitionError, match=rf"is inside a {kind} object"):
            holds.graph()


@flow
def scaled_by(n: int = 3) -> list[int]:
    return [call_with(lambda v: v * n, 2), call_with(functools.partial(max, n), 2)]


def test_a_lambda_or_partial_holding_a_parameter_gets_its_value() -> None:
    """`lambda v: v * n` failed at run time ("flow parameter 'n' was kept from a flow
    body and used in arithmetic later"): a parameter held by a function is a use of its
    value, so the graph is built from the values."""
    assert scaled_by() == [6, 3] and scaled_by(n=5) == [10, 5]
    assert scaled_by.graph(n=5).value_dependent


def test_a_named_tuple_or_dict_subclass_holding_a_task_result_is_refused() -> None:
    """Such a container would be rebuilt as a plain tuple or dict for the task (its
    ``.end`` gone): refused, saying so. With constants, or a parameter's value, the
    object reaches the task as it is."""

    @flow
    def windowed() -> int:
        return width(Span(total([9]), 17))

    @flow
    def ordered() -> Any:
        return echo(collections.OrderedDict(a=name()))

    with pytest.raises(
        FlowDefinitionError,
        match=r"inside a Span object, which would arrive "
        "rebuilt as a plain tuple; .* build the Span inside the task",
    ):
        windowed()
    with pytest.raises(
        FlowDefinitionError,
        match=r"inside a OrderedDict object, which would "
        "arrive rebuilt as a plain dict",
    ):
        ordered()

    @flow
    def from_param(start: int = 9) -> int:
        return width(Span(start, 17))

    assert from_param(start=10) == 7
    assert from_param.value_dependent


def test_a_parameter_inside_an_object_in_a_list_or_returned_is_a_use_of_its_value() -> None:
    """As for an object given to a task directly: the graph is built with the value
    (it failed saying the parameter was used outside the flow body, or with a bare
    AssertionError when the object was the flow's result)."""

    @flow
    def listed(path: str = "/a") -> Any:
        return echo([Holder(path)])

    @flow
    def returned(path: str = "/a") -> Holder:
        return Holder(path)

    assert listed(path="/b") == [Holder("/b")]
    assert returned(path="/c") == Holder("/c")
    assert listed.value_dependent and returned.value_dependent


def test_a_value_dependent_graph_without_values_names_the_parameters_to_give() -> None:
    """The parameter used as a value may have a default: the message names those
    without one, which are what the call is missing."""

    @flow
    def tag(n: int, label: str = "c") -> Any:
        return echo(f"{label}-{n}")

    with pytest.raises(
        ParameterError,
        match=r"parameter 'label' turned into text.*: give 'n', "
        r"e\.g\. tag\.graph\(n=\.\.\.\) or `headwater graph FILE:tag -p n=\.\.\.`",
    ):
        tag.graph()


def test_a_body_that_swallows_the_signal_is_still_compiled_with_values() -> None:
    @flow
    def stubborn(n: int = 3) -> int:
        try:
            count = int(n)
        except BaseException:
            count = 1
        return total(list(range(count)))

    assert stubborn() == 3


def test_a_parameter_hidden_in_an_object_given_to_a_task_is_a_use_of_its_value() -> None:
    @dataclasses.dataclass
    class Settings:
        path: str

    @flow
    def configured(path: str = "/a") -> Any:
        return echo(Settings(path))

    assert configured(path="/b") == Settings("/b")
    assert configured.value_dependent


def test_a_value_dependent_graph_without_values_names_the_parameter_to_give() -> None:
    @flow
    def needs(n: int) -> int:
        return total(list(range(n)))

    with pytest.raises(ParameterError, match=r"'n'.*range|'n'.*number.*needs.graph\(n=\.\.\.\)"):
        needs.graph()


def test_compile_for_values_carries_the_flag_and_the_digest_of_the_values() -> None:
    @flow
    def sized(n: int = 2, label: str = "x") -> int:
        return total(list(range(n)))

    msg = sized.compile(n=3)
    assert msg.value_dependent
    back = graph_from_proto(msg)
    assert back.value_dependent and back.parameters_digest == msg.parameters_digest
    assert sized.compile(n=3).parameters_digest == msg.parameters_digest
    assert sized.compile(n=4).parameters_digest != msg.parameters_digest
    assert [p.type for p in msg.parameters] == ["int", "str"]


def test_parameters_digest_is_the_same_inline_and_by_reference() -> None:
    from headwater.v1 import payload_pb2

    data = b"[1, 2]"
    inline = payload_pb2.Value(inline=payload_pb2.Payload(data=data, metadata={"encoding": "json"}))
    import hashlib

    ref = payload_pb2.Value(
        ref=payload_pb2.PayloadRef(
            payload_id="p1",
            size_bytes=len(data),
            metadata={"encoding": "json"},
            sha256=hashlib.sha256(data).hexdigest(),
        )
    )
    assert parameters_digest({"a": inline}) == parameters_digest({"a": ref})
    assert parameters_digest({"a": inline}) != parameters_digest({"b": inline})


# ------------------------------------------------------------- task results as values


def misuse_cases() -> list[tuple[str, Any, str]]:
    return [
        ("str", lambda r: str(r), "turned into text.*build the text inside that task"),
        ("fstring", lambda r: f"/data/{r}.db", "turned into text"),
        ("repr", lambda r: f"{r!r}", "turned into text"),
        ("format", lambda r: format(r, ">5"), "turned into text"),
        ("bool", lambda r: bool(r), r"condition.*case\(ref, value\)"),
        ("if", lambda r: 1 if r else 0, "condition"),
        ("len", lambda r: len(r), r"len\(\).*task.map"),
        ("iter", lambda r: [x for x in r], r"iterated.*task.map\(ref\)"),
        ("unpack", lambda r: tuple(r), "iterated"),
        ("in", lambda r: 1 in r, "iterated"),
        ("int", lambda r: int(r), "number"),
        ("float", lambda r: float(r), "number"),
        ("index", lambda r: [1, 2][r], "number"),
        ("range", lambda r: range(r), "number"),
        ("lt", lambda r: r < 3, "compared"),
        ("eq", lambda r: r == 3, "compared"),
        ("add", lambda r: r + 1, "arithmetic"),
        ("radd", lambda r: 1 + r, "arithmetic"),
        ("dict key", lambda r: {r: 1}, r"hashed.*dict values"),
        ("attribute", lambda r: r.rows, r"attribute.*ref\['key'\]"),
        ("fspath", lambda r: __import__("os").fspath(r), "text"),
        # (they said "read as an attribute" and "turned into text": a newcomer's trial)
        ("dict unpack", lambda r: {**r}, r"asked for its keys \(`\*\*ref`.*ref\['key'\]"),
        ("bytes", lambda r: bytes(r), r"turned into bytes"),
    ]


@pytest.mark.parametrize(
    ("misuse", "pattern"),
    [(m, p) for _, m, p in misuse_cases()],
    ids=[i for i, _, _ in misuse_cases()],
)
def test_a_task_result_used_as_a_value_names_task_line_and_fix(misuse: Any, pattern: str) -> None:
    @flow
    def f(n: int = 1) -> Any:
        ref = name()
        misuse(ref)  # the line the error names
        return ref

    with pytest.raises(FlowDefinitionError) as info:
        f()
    message = str(info.value)
    assert "flow 'f'" in message and "task 'name'" in message
    line = f.fn.__code__.co_firstlineno + 3
    assert f"{LINE}:{line}" in message, message
    assert __import__("re").search(pattern, message), message


def test_what_a_flow_body_prints_shows_once_when_it_runs_again_with_values(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`print("n =", n)` in a flow body showed "n = n = 3": the first (symbolic) pass
    wrote "n = " before the parameter turned out to be needed as a value, then the
    pass with values printed the whole line (a newcomer's trial)."""

    @flow
    def uses_value(n: int = 3) -> Any:
        print("building for n =", n)
        print("to stderr", file=__import__("sys").stderr)
        return name()

    @flow
    def symbolic_only(n: int = 3) -> Any:
        print("building", end="")
        print(" a graph")
        return scale(n, 2)

    assert uses_value(n=2) == "db"
    captured = capsys.readouterr()
    assert captured.out == "building for n = 2\n" and captured.err == "to stderr\n"
    assert symbolic_only(n=2) == 4
    assert capsys.readouterr().out == "building a graph\n"


def test_output_is_held_only_for_the_thread_building_the_graph() -> None:
    """Other threads' writes go through while a body's pass is held."""
    import io
    import sys
    import threading

    from headwater._compiler import _HeldOutput

    out = io.StringIO()
    real = sys.stdout
    sys.stdout = out
    try:
        held = _HeldOutput()
        print("mine")
        other = threading.Thread(target=print, args=("theirs",))
        other.start()
        other.join(30)
        assert out.getvalue() == "theirs\n"
        held.end(keep=False)
        assert sys.stdout is out
        print("after")
        held = _HeldOutput()
        print("kept")
        held.end(keep=True)
    finally:
        sys.stdout = real
    assert out.getvalue() == "theirs\nafter\nkept\n"


def test_a_task_result_given_to_logging_is_refused_without_a_logging_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """logging's handler caught the refusal and printed "--- Logging error ---" with a
    traceback before the run failed with it (a newcomer's trial): now only the refusal,
    naming the line, even when the body catches what the log call raised."""
    import logging

    logger = logging.getLogger("headwater-test-flow-body")
    logger.addHandler(logging.StreamHandler())  # (handleError prints to sys.stderr)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    @flow
    def as_argument() -> Any:
        ref = name()
        logger.info("got %s", ref)  # the line the error names
        return ref

    @flow
    def as_message() -> Any:
        ref = name()
        logger.info(ref)  # the line the error names
        return ref

    @flow
    def caught() -> Any:
        ref = name()
        try:  # noqa: SIM105 (as the user wrote it)
            logger.warning("got %d", ref)  # the line the error names
        except Exception:
            pass
        return ref

    try:
        for body, offset in ((as_argument, 2), (as_message, 2), (caught, 3)):
            with pytest.raises(FlowDefinitionError, match=r"turned into text|number") as info:
                body()
            line = body.fn.__code__.co_firstlineno + offset + 1
            assert f"{LINE}:{line}" in str(info.value), str(info.value)
            err = capsys.readouterr().err
            assert "Logging error" not in err and "Traceback" not in err, err
    finally:
        logger.handlers.clear()


def test_a_mapped_result_used_as_a_value_says_it_is_a_mapped_task() -> None:
    @flow
    def f() -> Any:
        results = scale.map([1, 2], unmapped(2))
        return len(results)

    with pytest.raises(FlowDefinitionError, match=r"results of mapped task 'scale'.*len"):
        f.graph()


def test_the_error_names_the_helper_and_the_flow_line() -> None:
    def helper(value: Any) -> str:
        return f"{value}"

    @flow
    def f() -> Any:
        return echo(helper(name()))

    with pytest.raises(
        FlowDefinitionError, match=rf"{LINE}:\d+ \(in helper\(\) at \S*{LINE}:\d+\)"
    ):
        f.graph()


def test_indexing_and_passing_results_in_lists_and_dicts_still_work() -> None:
    @flow
    def f() -> Any:
        r = rows()
        return echo({"first": r["rows"][0], "all": [r["rows"], name()]})

    graph = f.graph()
    node = graph.tasks[-1]
    assert FromTask("rows", ("rows", 0)) in [e[1] for e in node.inputs["value"].entries]
    assert f() == {"first": 1, "all": [[1, 2, 3], "db"]}


def test_branching_on_a_result_with_case_and_merge_still_works() -> None:
    @flow
    def f(n: int = 3) -> Any:
        big = echo(n > 2)
        with case(big, True):
            yes = echo("big")
        with case(big, False):
            no = echo("small")
        return merge(yes, no)

    assert f() == "big" and f(n=1) == "small"


# ------------------------------------------------------------- parameter validation


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass
class Window:
    start: int
    end: int


class Options(pydantic.BaseModel):
    depth: int = 1
    tags: list[str] = []


@flow
def typed(
    n: int = 1,
    rate: float = 0.5,
    label: str = "x",
    flag: bool = False,
    ids: list[int] | None = None,
    weights: dict[str, float] | None = None,
    mode: Literal["fast", "slow"] = "fast",
    color: Color = Color.RED,
    day: datetime.date = datetime.date(2026, 1, 1),
    at: datetime.datetime | None = None,
    window: Window | None = None,
    options: Options | None = None,
) -> dict[str, Any]:
    return echo(
        {
            "n": n,
            "rate": rate,
            "label": label,
            "flag": flag,
            "ids": ids,
            "weights": weights,
            "mode": mode,
            "color": color,
            "day": day,
            "at": at,
            "window": window,
            "options": options,
        }
    )


def test_values_are_converted_to_their_annotations() -> None:
    out = typed(
        n="3",
        rate=2,
        flag="true",
        ids=("1", 2),
        weights={"a": "1.5"},
        mode="slow",
        color="blue",
        day="2026-01-02",
        at="2026-01-02T03:04:05Z",
        window={"start": 1, "end": "2"},
        options={"depth": 2},
    )
    assert out["n"] == 3 and out["rate"] == 2.0 and out["flag"] is True
    assert out["ids"] == [1, 2] and out["weights"] == {"a": 1.5}
    assert out["mode"] == "slow" and out["color"] is Color.BLUE
    assert out["day"] == datetime.date(2026, 1, 2)
    assert out["at"] == datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert out["window"] == Window(1, 2) and out["options"] == Options(depth=2)


@pytest.mark.parametrize(
    ("params", "pattern"),
    [
        ({"n": "abc"}, r"parameter 'n' expects int, got 'abc' \(Input should be a valid integer"),
        ({"rate": "fast"}, r"parameter 'rate' expects float, got 'fast'"),
        ({"ids": [1, "x"]}, r"parameter 'ids' expects list\[int\] \| None, got \[1, 'x'\]"),
        ({"mode": "medium"}, r"parameter 'mode' expects Literal\['fast', 'slow'\]"),
        ({"color": "green"}, r"parameter 'color' expects Color, got 'green'"),
        ({"day": "tomorrow"}, r"parameter 'day' expects date, got 'tomorrow'"),
        ({"window": {"start": 1}}, r"parameter 'window' expects Window \| None.*end"),
        ({"options": {"depth": "deep"}}, r"parameter 'options' expects Options \| None.*depth"),
    ],
)
def test_a_bad_value_is_refused_before_the_run_starts(params: dict[str, Any], pattern: str) -> None:
    started: list[str] = []
    with pytest.raises(ParameterError, match=pattern) as info:
        typed.run(on_transition=lambda run, entry: started.append(run.key), **params)
    assert "\n" not in str(info.value)
    assert started == []


def test_text_from_the_command_line_is_converted() -> None:
    parsed = typed.parse_params(
        {
            "n": "3",
            "label": "123",
            "flag": "true",
            "ids": "[1, 2]",
            "weights": '{"a": 1}',
            "color": "blue",
            "day": "2026-01-02",
            "window": '{"start": 1, "end": 2}',
            "at": "null",
        }
    )
    assert parsed == {
        "n": 3,
        "label": "123",
        "flag": True,
        "ids": [1, 2],
        "weights": {"a": 1.0},
        "color": Color.BLUE,
        "day": datetime.date(2026, 1, 2),
        "window": Window(1, 2),
        "at": None,
    }
    # Python's spelling of null, where the annotation takes None (it was refused)
    assert typed.parse_params({"at": "None"}) == {"at": None}
    with pytest.raises(ParameterError, match=r"'n' expects int, got 'None'"):
        typed.parse_params({"n": "None"})
    with pytest.raises(ParameterError, match=r"'n' expects int, got 'abc'"):
        typed.parse_params({"n": "abc"})
    with pytest.raises(ParameterError, match=r"unknown parameter\(s\) 'nope'"):
        typed.parse_params({"nope": "1"})


def test_graph_carries_types_and_json_schemas() -> None:
    msg = typed.compile()
    by_name = {p.name: p for p in msg.parameters}
    assert by_name["ids"].type == "list[int] | None"
    assert '"integer"' in by_name["ids"].json_schema
    assert '"fast"' in by_name["mode"].json_schema
    assert by_name["window"].json_schema  # dataclasses have a JSON form


def test_an_unannotated_or_any_parameter_is_not_checked() -> None:
    @flow
    def loose(a, b: Any = None):  # type: ignore[no-untyped-def]
        return echo([a, b])

    assert loose(a="x", b=object) == ["x", object]


def test_a_plain_embedded_run_does_not_import_pydantic() -> None:
    code = (
        "import sys\n"
        "from headwater import flow, task\n"
        "@task\ndef one(n: int) -> int:\n    return n\n"
        "@flow\ndef f(n: int = 1, name: str = 'x') -> int:\n    return one(n)\n"
        "assert f(n=2) == 2\n"
        "assert 'pydantic' not in sys.modules, 'pydantic imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@task
def kind_of(x: Any) -> str:
    return type(x).__name__


@flow
def written_defaults(
    day: datetime.date = "2026-01-02",  # type: ignore[assignment]
    ids: tuple[int, ...] = [1, 2],  # type: ignore[assignment]
    ratio: float = 1,
    limit: int = None,  # type: ignore[assignment]  # noqa: RUF013 (the shorthand users write)
) -> list[str]:
    return [kind_of(day), kind_of(ids), kind_of(ratio), kind_of(limit)]


def test_defaults_are_converted_as_given_values_are() -> None:
    """`day: date = "2026-01-02"` gave the body and its tasks a str (given, the same
    text became a date). Defaults are converted too, leniently: one that does not fit
    (`limit: int = None`) stays as written."""
    assert written_defaults() == ["date", "tuple", "float", "NoneType"]
    assert written_defaults(day="2026-02-03") == ["date", "tuple", "float", "NoneType"]


# ------------------------------------------------- identity and type checks


@task
def first_rows(rows: list[int], n: int | None) -> list[int]:
    return rows if n is None else rows[:n]


@task
def how_many(rows: list[int]) -> int:
    return len(rows)


@flow
def top_rows(limit: int | None = None) -> int:
    if limit is None:
        limit = 5
    return how_many(first_rows(list(range(10)), limit))


@flow
def switch(flag: bool = True, mode: str = "a") -> list[str]:
    out = [echo("on" if flag is True else "off")]
    out.append(echo("int" if type(mode) is str and isinstance(flag, bool) else "other"))
    match mode:
        case "a":
            out.append(echo("mode a"))
        case _:
            out.append(echo("another mode"))
    return out


def test_a_parameter_checked_with_is_or_isinstance_gets_its_value() -> None:
    """`if limit is None:` on a parameter: the placeholder cannot answer an identity
    check (it was simply not None), so the branch was lost and the run returned 10
    instead of 5, silently. The check is found in the body's source: the flow is built
    from its values."""
    assert top_rows() == 5 and top_rows(limit=3) == 3
    assert top_rows.graph(limit=None).value_dependent
    assert switch() == ["on", "int", "mode a"]
    assert switch(flag=False, mode="b") == ["off", "int", "another mode"]
    assert top_rows.graph().value_dependent  # (its defaults are its values)


@flow
def through_a_dict(limit: int | None = None) -> str:
    opts = {"limit": limit}
    return echo("none" if opts["limit"] is None else "some")


@flow
def through_a_loop(a: int | None = None, b: int | None = None) -> str:
    for v in (a, b):
        if v is None:
            return echo("some none")
    return echo("all set")


@flow
def through_any(a: int | None = None, b: int | None = 1) -> str:
    return echo("some none" if any(v is None for v in [a, b]) else "all set")


def test_a_parameter_checked_through_another_name_gets_its_value() -> None:
    """A parameter checked by identity through a dict, a loop variable or a generator
    expression was as silently wrong as a direct check ("all set" with a None): any
    such check in a body with parameters now builds the graph from the values."""
    assert (through_a_dict(), through_a_dict(limit=3)) == ("none", "some")
    assert (through_a_loop(), through_a_loop(a=1, b=2)) == ("some none", "all set")
    assert (through_any(), through_any(a=1)) == ("some none", "all set")
    assert through_a_loop.graph(a=1, b=2).value_dependent


def test_a_body_without_source_is_built_from_values_when_it_checks_identity() -> None:
    """Typed at a prompt, piped to python or exec'd, a body has no source to read:
    `if limit is None:` returned None there; its bytecode shows the check."""
    code = (
        "from headwater import flow, task\n"
        "@task\ndef ident(x):\n    return x\n"
        "@flow\ndef direct(limit: int | None = None):\n"
        "    if limit is None:\n        limit = 5\n    return ident(limit)\n"
        "@flow\ndef plain(limit: int = 2):\n    return ident(limit)\n"
        "assert direct() == 5 and direct(limit=2) == 2, direct()\n"
        "assert not plain.graph().value_dependent  # (no check: symbolic as before)\n"
    )
    subprocess.run([sys.executable, "-"], input=code, text=True, check=True, timeout=60)


lambda_flow = flow(lambda limit=None: echo("none" if limit is None else limit), name="lam")
two_lambdas = [
    flow(lambda a=None: echo(a is None), name="l1"),
    flow(lambda b=0: echo(b), name="l2"),
]


def test_a_lambda_flow_that_checks_identity_is_built_from_values() -> None:
    """A user trial: a flow made from a lambda had its `is None` check unread (its
    source is not a def), and `lam()` returned None. The only lambda on its lines is
    read; of two, the bytecode shows the check."""
    assert (lambda_flow(), lambda_flow(limit=3)) == ("none", 3)
    assert lambda_flow.graph(limit=3).value_dependent
    assert (two_lambdas[0](), two_lambdas[0](a=1), two_lambdas[1](b=2)) == (True, False, 2)


@task
def maybe_name(given: str = "") -> str | None:
    return given or None


@flow
def checks_a_result() -> str:
    name = maybe_name()
    return echo("none") if name is None else echo("some")


@flow
def checks_a_call() -> str:
    return echo("list") if isinstance(maybe_name("x"), str) else echo("other")


@flow
def checks_a_map() -> str:
    names = maybe_name.map(["a", "b"])
    return echo("none") if names is None else echo("some")


def test_a_task_result_checked_with_is_or_isinstance_is_refused_naming_the_line() -> None:
    """The check would always see the reference (never None, never a str) and take one
    branch silently; it is refused while the flow is built, naming the task and line."""
    with pytest.raises(FlowDefinitionError) as refused:
        checks_a_result()
    message = str(refused.value)
    assert message.startswith("flow 'checks_a_result', ")
    assert "test_flow_values.py:" in message
    assert "the result of task 'maybe_name' (`name`) is compared with `is`" in message
    assert "check it inside a task, or branch at run time with `with case(ref, value):`" in message
    with pytest.raises(FlowDefinitionError, match=r"task 'maybe_name' is given to isinstance\(\)"):
        checks_a_call.run()
    with pytest.raises(FlowDefinitionError, match=r"task 'maybe_name' \(`names`\) is compared"):
        checks_a_map()


@flow
def filters_results() -> list:
    return [x for x in [maybe_name("a"), maybe_name()] if x is not None]


@flow
def loops_over_results(n: int = 2) -> list:
    found = [maybe_name("a"), None]
    kept = []
    for value in found:
        if value is None:
            continue
        kept.append(value)
    return [echo(str(i)) for i in range(n) if i is not None] + kept


def test_a_task_result_checked_through_a_loop_or_a_comprehension_is_refused() -> None:
    """A loop or comprehension variable that takes task results was not followed:
    `[x for x in [a(), b()] if x is not None]` kept both references, so a task that
    returned None passed None on, where plain Python would have dropped it."""
    with pytest.raises(
        FlowDefinitionError, match=r"task 'maybe_name' \(`x`\) is compared with `is not`"
    ):
        filters_results()
    with pytest.raises(FlowDefinitionError, match=r"task 'maybe_name' \(`value`\) is compared"):
        loops_over_results()


def test_a_modules_own_function_named_isinstance_is_not_a_type_check(tmp_path: Any) -> None:
    source = (
        "from headwater import flow, task\n"
        "@task\n"
        "def double(x: int) -> int:\n"
        "    return 2 * x\n"
        "def isinstance(value, kind):\n"
        "    return True\n"
        "@flow\n"
        "def own(x: int = 1) -> int:\n"
        "    return double(x) if isinstance(x, int) else double(0)\n"
    )
    path = tmp_path / "own_isinstance.py"
    path.write_text(source)
    module = load_file(str(path))
    assert not module.own.graph().value_dependent  # its own function: no type check


@flow
def joins_a_result() -> str:
    return echo(",".join([maybe_name("a"), "x"]))  # type: ignore[list-item]


@flow
def dumps_a_result() -> str:
    return echo(json.dumps({"a": maybe_name("a")}))


def test_a_task_result_given_to_c_code_that_needs_its_value_names_the_line() -> None:
    """str.join and json.dumps ask a reference nothing but its type: their raw
    TypeError ("expected str instance, TaskRef found") said neither which flow nor
    what to do."""
    for built, raw in (
        (joins_a_result, "sequence item 0: expected str instance, TaskRef found"),
        (dumps_a_result, "Object of type TaskRef is not JSON serializable"),
    ):
        with pytest.raises(FlowDefinitionError) as refused:
            built()
        message = str(refused.value)
        assert message.startswith(f"flow {built.name!r}, ")
        assert "test_flow_values.py:" in message and raw in message
        assert message.endswith("pass the result to a task and do this inside that task")


@flow
def swallows() -> int:
    r = name()
    try:
        v = int(r)  # type: ignore[call-overload]
    except Exception:
        v = 0
    return echo(v)  # type: ignore[no-any-return]


@flow
def changes_a_result() -> Any:
    r = name()
    r["k"] = 1
    return r


@flow
def misses_an_argument() -> Any:
    return call_with(1)  # type: ignore[call-arg]


def test_a_refusal_the_body_catches_still_stops_the_build_and_errors_name_the_line() -> None:
    """`try: v = int(r) except Exception: v = 0` swallowed the refusal and built a graph
    with the fallback; setting an item was called iterating; a task call's own errors
    (a missing argument) named neither the flow nor the line."""
    with pytest.raises(FlowDefinitionError, match=r"^flow 'swallows', .*: the result of task"):
        swallows.graph()
    with pytest.raises(FlowDefinitionError, match=r"cannot be changed in place \(an item"):
        changes_a_result.graph()
    with pytest.raises(
        FlowDefinitionError,
        match=r"^flow 'misses_an_argument', .*test_flow_values.py:\d+: task 'call_with': "
        "missing a required argument: 'x'",
    ):
        misses_an_argument.graph()


# ------------------------------------------------- found by a newcomer's trial (round 22)


@flow
def in_a_deque(n: int = 3) -> Any:
    return echo(collections.deque([n, 1]))


@flow
def in_a_slice(n: int = 3) -> Any:
    return echo(slice(n, None))


def test_a_parameter_in_a_deque_or_a_slice_is_a_use_of_its_value() -> None:
    """A deque or a slice holding a parameter reached the task with the placeholder
    inside (a deque has no __dict__, a slice no attributes to look at): it is a use of
    the value, as for any object holding one."""
    assert in_a_deque(n=4) == collections.deque([4, 1])
    assert in_a_slice(n=4) == slice(4, None)
    assert in_a_deque.graph(n=4).value_dependent and in_a_slice.graph(n=4).value_dependent


def test_a_task_result_in_a_deque_or_a_slice_is_refused() -> None:
    for kind, make in {"deque": lambda r: collections.deque([r]), "slice": slice}.items():

        @flow
        def holds() -> Any:
            return echo(make(name()))  # noqa: B023 (built and checked in this iteration)

        with pytest.raises(FlowDefinitionError, match=rf"is inside a {kind} object"):
            holds.graph()


LOADS: list[str] = []


@task(cache_for=3600)
def load(day: str) -> str:
    LOADS.append(day)
    return day


@flow
def cached_by_schema(day: str = "d", schema: str = "v1") -> str:
    return load.with_options(cache_version=schema)(day)


@flow
def keyed_by_schema(day: str = "d", schema: str = "v1") -> str:
    return load.with_options(cache_key_fn=lambda inputs: f"{schema}/{inputs['day']}")(day)


@pytest.mark.filterwarnings("error")  # ("could not compute a cache key": caching was off)
def test_a_parameter_in_a_cache_option_is_a_use_of_its_value() -> None:
    """`cache_version=schema` kept the placeholder (caching silently off, and a
    TypeError from deep inside `compile()`); a key function capturing a parameter
    could not compute a key. Both build the graph from the values, and cache."""
    LOADS.clear()
    assert cached_by_schema(day="mon", schema="v2") == cached_by_schema(day="mon", schema="v2")
    assert LOADS == ["mon"]
    (node,) = cached_by_schema.graph(day="mon", schema="v2").tasks
    assert node.cache is not None and node.cache.version == "v2"
    assert cached_by_schema.compile(schema="v2").tasks[0].cache.version == "v2"
    assert keyed_by_schema(day="tue", schema="v3") == keyed_by_schema(day="tue", schema="v3")
    assert LOADS == ["mon", "tue"]
    assert keyed_by_schema.graph(schema="v3").value_dependent


def test_a_version_option_that_is_not_text_is_refused_when_defined() -> None:
    for option in ("cache_version", "version"):
        refused = rf"task 'load': {option} must be a str, got 2"
        with pytest.raises(FlowDefinitionError, match=refused):
            load.with_options(**{option: 2})

    @flow
    def from_a_result() -> str:
        return load.with_options(cache_version=name())("d")

    with pytest.raises(FlowDefinitionError, match=r"the result of task 'name'"):
        from_a_result.graph()


@task
def show(value: Any) -> str:
    return repr(value)


@flow
def parsed_day(day: str) -> str:
    try:
        parsed = datetime.date.fromisoformat(day)
    except (TypeError, ValueError):
        parsed = datetime.date(2000, 1, 1)
    return show(parsed)


@flow
def careful(n: int = 1) -> str:
    try:
        label = "big" if n > 5 else "small"
    except ValueError:  # (catches no TypeError: the placeholder's use stops the build)
        label = "?"
    return show(label)


def test_a_try_that_catches_type_error_builds_the_graph_from_the_values() -> None:
    """C code refuses a placeholder by its type, asking it nothing
    (`date.fromisoformat(day)` raised TypeError): caught by the body, the fallback was
    taken for every value, silently. A `try` catching TypeError makes the flow
    value-dependent, as an identity check does."""
    assert parsed_day(day="2026-05-05") == "datetime.date(2026, 5, 5)"
    assert parsed_day(day="nonsense") == "datetime.date(2000, 1, 1)"
    graph = parsed_day.graph(day="2026-05-05")
    assert graph.value_dependent
    said = r"may be refused by code in a `try` that catches TypeError at "
    with pytest.raises(ParameterError, match=said):
        parsed_day.graph()  # (without values: it names the try's line)
    assert careful(n=9) == "'big'"  # an except that cannot catch a TypeError: as before


@flow
def dumped_in_a_try() -> str:
    try:
        payload = json.dumps({"v": scale(2, 2)})
    except (TypeError, ValueError):
        payload = "{}"
    return show(payload)


@task
def today() -> str:
    return "2026-01-02"


@flow
def suppressed_result() -> str:
    parsed: Any = None
    day = today()
    with contextlib.suppress(TypeError):
        parsed = datetime.date.fromisoformat(day)
    return show(parsed)


@flow
def suppressed_parameter(day: str = "2026-01-02") -> str:
    parsed = None
    with contextlib.suppress(TypeError, ValueError):
        parsed = datetime.date.fromisoformat(day)
    return show(parsed)


def test_a_task_result_in_a_try_or_suppress_catching_type_error_is_refused() -> None:
    """A user trial: json.dumps({"v": result}) in a `try` catching TypeError returned
    "{}" in every run (and `with suppress(TypeError)` around date.fromisoformat(result)
    kept None): C code refuses the placeholder by its type, and the body took its
    fallback, silently. Refused now, naming the task and the line; a parameter there
    builds the graph from the values, as with a `try`."""
    with pytest.raises(FlowDefinitionError) as info:
        dumped_in_a_try()
    text = str(info.value)
    assert text.startswith("flow 'dumped_in_a_try', ") and f"{LINE}:" in text.split(": ")[0]
    assert "the result of task 'scale' is used in a `try` that catches TypeError" in text
    assert "do this inside a task" in text
    with pytest.raises(
        FlowDefinitionError,
        match=r"result of task 'today' is used in a `with suppress\(...\)` that catches TypeError",
    ):
        suppressed_result()
    assert suppressed_parameter() == "datetime.date(2026, 1, 2)"
    assert suppressed_parameter(day="2026-03-04") == "datetime.date(2026, 3, 4)"
    assert suppressed_parameter(day="nonsense") == "None"
    assert suppressed_parameter.graph(day="2026-03-04").value_dependent


@flow
def positive(n: Annotated[int, pydantic.Field(gt=0)] = 1) -> int:
    return scale(n, 2)


def test_annotated_constraints_are_checked() -> None:
    """`Annotated[int, Field(gt=0)]` lost its constraint (annotations were read without
    their extras): -1 ran."""
    assert positive(n="3") == 6
    for bad in (-1, "-5"):
        with pytest.raises(
            ParameterError,
            match=r"parameter 'n' expects int, got .*-.* \(Input should be greater than 0\)",
        ):
            positive(n=bad)


def test_a_notebook_cell_is_named_as_ipython_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flow defined in a notebook cell was placed at its temporary file
    (/tmp/ipykernel_12970/4102297361.py:7: a trial); IPython's name is 'Cell In[7]'."""
    import types

    from headwater import _refs

    cell_file = "/tmp/ipykernel_1/123456.py"
    shell = types.SimpleNamespace(compile=types.SimpleNamespace(_filename_map={cell_file: 7}))
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    assert _refs._show(cell_file, 4) == "Cell In[7], line 4"
    assert _refs._show("/elsewhere/flows.py", 4) == "/elsewhere/flows.py:4"
