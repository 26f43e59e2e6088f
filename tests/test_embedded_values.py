"""The embedded host on every executor (a thread pool, a real Dask LocalCluster): the
result cache across runs, and how values pass between tasks (live objects on threads,
futures that stay in the cluster on Dask, parts of results taken where they live).

Each test runs once per executor (the ``backend`` fixture); tasks signal through files
(``Probe``), since they may run in Dask worker processes.
"""

from __future__ import annotations

import contextlib
import gc
import time
import weakref
from pathlib import Path
from typing import Any

import pytest
from _backends import Backend, Probe, poll

from headwater import FlowRunState, TaskRunState, flow, task, unmapped
from headwater._loader import load_file
from headwater_runtime.embedded import PROCESS_CACHE
from headwater_runtime.embedded._cache import stable_hash

S = TaskRunState


@pytest.fixture
def probe(tmp_path: Path) -> Probe:
    return Probe(tmp_path)


# ------------------------------------------------------------------------ caching


def test_results_are_cached_across_runs_in_one_process(backend: Backend, probe: Probe) -> None:
    @task(cache_for=3600)
    def expensive(x: int) -> dict[str, int]:
        probe.add("calls", x)
        return {"x": x}

    @flow
    def f(x: int = 3) -> dict[str, int]:
        return expensive(x)

    executor = backend.executor()
    first = f.run(executor=executor)
    second = f.run(executor=executor)
    assert first.task_run("expensive").state is S.SUCCESS
    assert second.task_run("expensive").state is S.CACHED
    assert probe.items("calls") == ["3"]
    assert second.result == {"x": 3}
    if backend.remote:
        # The cached value is the first run's future: still in the cluster, not copied.
        assert second.task_run("expensive").result is first.task_run("expensive").result
    else:  # a copy of the cached value, equal, not the first run's object
        assert second.result is not first.result
    third = f.run(x=4, executor=executor)
    assert third.task_run("expensive").state is S.SUCCESS
    assert probe.items("calls") == ["3", "4"]
    assert len(PROCESS_CACHE) == 2


def test_editing_a_cached_task_is_a_cache_miss(backend: Backend) -> None:
    """A notebook cell redefining a cached task (same name, new body) got the old
    body's cached result: the code's digest is part of the cache key now."""

    def define(body: int) -> Any:
        if body == 1:

            @task(cache_for=3600, task_type="cells.sq")
            def sq(x: int) -> int:
                return x * x

        else:

            @task(cache_for=3600, task_type="cells.sq")
            def sq(x: int) -> int:
                return x * x * x

        @flow
        def csq(x: int = 3) -> int:
            return sq(x)

        return csq

    executor = backend.executor()
    first = define(1).run(executor=executor)
    again = define(1).run(executor=executor)
    edited = define(2).run(executor=executor)
    assert (first.result, again.result, edited.result) == (9, 9, 27)
    assert again.task_run("sq").state is S.CACHED
    assert edited.task_run("sq").state is S.SUCCESS


def test_a_task_changing_a_cached_value_in_place_changes_no_later_run(backend: Backend) -> None:
    """Threads: the cache keeps a copy taken as the task ends, and each hit gets its
    own, so a downstream task appending to its input changes neither the cache nor the
    next run (it used to: [1, 2, 3], then [1, 2, 3, 6], then [1, 2, 3, 6, 12]). Dask
    hands tasks the object in the cluster: docs/dask.md says not to change inputs."""
    if backend.remote:
        pytest.skip("on Dask a cached value is the object in the cluster (docs/dask.md)")

    @task(cache_for=3600)
    def load_rows() -> list[int]:
        return [1, 2]

    @task
    def add_total(rows: list[int]) -> list[int]:
        rows.append(sum(rows))  # changes its input in place
        return rows

    @flow
    def report() -> list[int]:
        return add_total(load_rows())

    executor = backend.executor()
    results = [report.run(executor=executor) for _ in range(3)]
    assert [r.result for r in results] == [[1, 2, 3]] * 3
    assert [r.task_run("load_rows").state for r in results] == [S.SUCCESS, S.CACHED, S.CACHED]


def test_a_result_that_cannot_be_pickled_is_not_cached_with_a_warning(backend: Backend) -> None:
    if backend.remote:
        pytest.skip("a Dask task's result is pickled by Dask itself")

    @task(cache_for=3600)
    def numbers() -> Any:
        return (i for i in range(3))

    @task
    def total(xs: Any) -> int:
        return sum(xs)

    @flow
    def summed() -> int:
        return total(numbers())

    executor = backend.executor()
    for _ in range(2):  # no entry: the second run calls it again
        with pytest.warns(RuntimeWarning, match=r"'numbers': its result \(generator\) was not"):
            run = summed.run(executor=executor)
        assert run.result == 3 and run.task_run("numbers").state is S.SUCCESS


def test_cache_key_fn_decides_what_counts_as_the_same_call(backend: Backend, probe: Probe) -> None:
    @task(cache_key_fn=lambda inputs: f"parity-{inputs['x'] % 2}")
    def parity(x: int) -> str:
        probe.add("calls", x)
        return "odd" if x % 2 else "even"

    @flow
    def f(x: int) -> str:
        return parity(x)

    executor = backend.executor()
    assert f(x=1, executor=executor) == "odd"  # type: ignore[call-arg]
    assert f(x=3, executor=executor) == "odd"  # type: ignore[call-arg]
    assert f(x=2, executor=executor) == "even"  # type: ignore[call-arg]
    assert probe.items("calls") == ["1", "2"]


def test_cache_key_fn_sees_the_values_of_upstream_results(backend: Backend, probe: Probe) -> None:
    """On Dask the upstream value lives in the cluster: the key is computed there."""

    @task
    def source(x: int) -> dict[str, int]:
        return {"x": x}

    @task(cache_key_fn=lambda inputs: f"x-{inputs['row']['x'] % 2}")
    def keyed(row: dict[str, int]) -> int:
        probe.add("calls", row["x"])
        return row["x"]

    @flow
    def f(x: int) -> int:
        return keyed(source(x))

    executor = backend.executor()
    assert f(x=1, executor=executor) == 1  # type: ignore[call-arg]
    assert f(x=3, executor=executor) == 1  # type: ignore[call-arg]
    assert probe.items("calls") == ["1"]


def test_a_failing_cache_key_fn_runs_the_task_uncached_with_a_warning(
    backend: Backend, probe: Probe
) -> None:
    def bad_key(inputs: dict[str, Any]) -> str:
        raise RuntimeError("no key today")

    @task(cache_key_fn=bad_key)
    def t(x: int) -> int:
        probe.add("calls", x)
        return x

    @flow
    def f() -> int:
        return t(1)

    executor = backend.executor()
    for _ in range(2):
        with pytest.warns(RuntimeWarning, match="could not compute a cache key") as said:
            assert f(executor=executor) == 1  # type: ignore[call-arg]
        # Shown at the task's definition, the user's code (not Headwater's line).
        assert (said[0].filename, said[0].lineno) == (__file__, t.fn.__code__.co_firstlineno)
    assert probe.items("calls") == ["1", "1"]


def test_a_result_that_cannot_be_pickled_is_not_cached_with_a_warning_at_its_task() -> None:
    """The warning points at the task's definition: it named Headwater's own
    runtime/headwater_runtime/embedded/_threads.py (a user trial)."""

    @task(cache_for=60)
    def gen() -> Any:
        return (i for i in range(3))

    @flow
    def f() -> int:
        return gen()

    with pytest.warns(
        RuntimeWarning, match=r"'gen': its result \(generator\) was not cached"
    ) as said:
        run = f.run()
    assert run.state is FlowRunState.SUCCESS
    assert (said[0].filename, said[0].lineno) == (__file__, gen.fn.__code__.co_firstlineno)


def test_cache_entries_expire(backend: Backend, probe: Probe) -> None:
    @task(cache_for=0.2)
    def short_lived() -> int:
        probe.add("calls", 1)
        return probe.count("calls")

    @flow
    def f() -> int:
        return short_lived()

    executor = backend.executor()
    first = f.run(executor=executor)
    assert first.result == 1
    key = first.task_run("short_lived").cache_key
    assert key
    entry = PROCESS_CACHE.get(key)
    assert entry is not None and entry.expires_at is not None
    expires_at = entry.expires_at
    poll(lambda: time.time() > expires_at, what="the cache entry to expire")
    second = f.run(executor=executor)
    assert second.task_run("short_lived").state is S.SUCCESS
    assert second.result == 2
    assert probe.count("calls") == 2


# ------------------------------------------------------------------- identity


def test_values_pass_between_tasks_without_copies(backend: Backend) -> None:
    """Threads: a downstream task gets the very object its upstream returned. Dask:
    the object stays in the cluster (a future here); tasks get equal values there."""
    produced: list[Any] = []
    seen: dict[str, Any] = {}
    each_seen: list[tuple[Any, Any]] = []
    config = {"threshold": 3}

    @task
    def make() -> list[dict[str, int]]:
        value = [{"i": i} for i in range(3)]
        produced.append(value)
        return value

    @task
    def use(rows: list[dict[str, int]], cfg: dict[str, int]) -> tuple[Any, Any]:
        seen["use"] = (rows, cfg)
        return rows, cfg

    @task
    def each(row: dict[str, int], cfg: dict[str, int]) -> dict[str, int]:
        each_seen.append((row, cfg))
        return row

    @task
    def gather(rows: list[dict[str, int]]) -> list[dict[str, int]]:
        seen["gather"] = rows
        return rows

    @flow
    def f() -> list[dict[str, int]]:
        rows = make()
        use(rows, config)
        return gather(each.map(rows, unmapped(config)))

    run = f.run(executor=backend.executor())
    run.raise_for_state()
    result = run.result
    expected = [{"i": i} for i in range(3)]
    assert result == expected
    if backend.remote:
        from distributed import Future

        # The orchestrator holds futures; values were taken from them in the cluster.
        for key in ("make", "use", "each[0]", "gather"):
            assert isinstance(run.task_run(key).result, Future), key
        assert produced == [] and seen == {}, "no task ran in this process"
        return
    (value,) = produced
    rows, cfg = seen["use"]
    assert rows is value, "a downstream task gets the object its upstream returned"
    assert cfg is config, "a constant from the flow body is passed as is"
    assert sorted(id(row) for row, _ in each_seen) == sorted(id(v) for v in value)
    assert all(cfg is config for _, cfg in each_seen)
    assert all(a is b for a, b in zip(seen["gather"], value, strict=True))
    assert result is seen["gather"], "the flow returns the very object"


def test_parts_of_results_are_taken_where_the_value_lives(backend: Backend) -> None:
    """``result["key"]``, mapping over a returned list and over a part of a result."""

    @task
    def load() -> dict[str, Any]:
        return {"rows": [1, 2, 3], "meta": {"name": "t"}}

    @task
    def double(x: int) -> int:
        return 2 * x

    @task
    def name_of(name: str) -> str:
        return name.upper()

    @flow
    def f() -> dict[str, Any]:
        data = load()
        return {
            "doubled": double.map(data["rows"]),
            "name": name_of(data["meta"]["name"]),
            "meta": data["meta"],
            "first": data["rows"][0],
        }

    run = f.run(executor=backend.executor())
    assert run.state is FlowRunState.SUCCESS, run.message
    assert run.result == {
        "doubled": [2, 4, 6],
        "name": "T",
        "meta": {"name": "t"},
        "first": 1,
    }


def test_mapping_over_a_result_that_is_not_a_sequence_fails_the_mapped_task(
    backend: Backend,
) -> None:
    """The mapped task fails with a message naming what it got (on Dask, the value
    stays in the cluster and is described without being fetched)."""

    @task
    def one() -> int:
        return 1

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow
    def f() -> list[int]:
        return double.map(one())

    run = f.run(executor=backend.executor())
    assert run.state is FlowRunState.FAILED
    record = run.task_run("double")
    assert record.state is S.FAILED
    assert record.failure is not None and "has no elements to map over" in record.failure.message


def test_a_missing_part_of_a_result_fails_the_run(backend: Backend) -> None:
    @task
    def load() -> dict[str, int]:
        return {"a": 1}

    @task
    def use(x: int) -> int:
        return x

    @flow
    def f() -> int:
        return use(load()["nope"])

    run = f.run(executor=backend.executor())
    assert run.state is FlowRunState.FAILED
    record = run.task_run("use")
    assert record.state is S.FAILED
    assert record.failure is not None and record.failure.type == "headwater.InputError"
    assert "'nope'" in record.failure.message


def test_a_missing_part_of_the_flow_result_fails_the_run(backend: Backend) -> None:
    @task
    def load() -> dict[str, int]:
        return {"a": 1}

    @flow
    def f() -> int:
        return load()["nope"]  # type: ignore[no-any-return]

    run = f.run(executor=backend.executor())
    assert run.state is FlowRunState.FAILED
    assert run.message.startswith("could not assemble the result"), run.message
    assert "'nope'" in run.message
    assert run.result is None
    assert run.task_run("load").state is S.SUCCESS


def test_a_flow_result_dask_cannot_serialise_fails_the_run_in_one_line(backend: Backend) -> None:
    """On Dask, a flow result the cluster cannot send back (a lock) fails the run with
    one line naming the error: its message carried Dask's whole traceback (~2 KB of
    escaped lines at the end of `headwater run --dask local`, a user trial). On
    threads the object itself is the result."""
    import threading

    @task
    def a_lock() -> Any:
        return threading.Lock()

    @flow
    def f() -> Any:
        return a_lock()

    run = f.run(executor=backend.executor())
    if not backend.remote:
        assert run.state is FlowRunState.SUCCESS
        return
    assert run.state is FlowRunState.FAILED
    assert run.message.startswith("could not assemble the result: "), run.message
    assert "lock" in run.message and "\n" not in run.message, run.message
    assert len(run.message) < 300, run.message


def test_a_constant_or_helper_changed_after_the_first_run_is_a_cache_miss(tmp_path: Path) -> None:
    """A notebook's later cell setting ``FACTOR = 3``, or defining the helper a cached
    task calls again, got the first run's cached result: the task's code digest was
    worked out once for good (a user trial). It is worked out again when a name it read
    names another object."""
    (tmp_path / "cells_under_test.py").write_text(
        "from headwater import flow, task\n"
        "FACTOR = 2\n"
        "def helper(x):\n"
        "    return x + 1\n"
        "@task(cache_for=3600)\n"
        "def mul(x: int) -> int:\n"
        "    return helper(x) * FACTOR\n"
        "@flow\n"
        "def cf(x: int = 5) -> int:\n"
        "    return mul(x)\n"
    )
    cells = load_file(str(tmp_path / "cells_under_test.py"))
    first = cells.cf.run()
    again = cells.cf.run()
    assert (first.result, again.result) == (12, 12)
    assert again.task_run("mul").state is S.CACHED
    cells.FACTOR = 3  # the next cell
    assert cells.cf.run().result == 18
    exec("def helper(x):\n    return x + 1000\n", cells.__dict__)  # and the one after
    edited = cells.cf.run()
    assert edited.result == 3015 and edited.task_run("mul").state is S.SUCCESS
    assert cells.cf.run().task_run("mul").state is S.CACHED  # unchanged since: a hit
    cells.helper.__code__ = (lambda x: x + 7).__code__  # as %autoreload edits code
    assert cells.cf.run().result == 36


def test_arrays_of_objects_are_cached_by_their_elements() -> None:
    """An object array's bytes are its elements' addresses: a new array at a freed
    one's address hit the cache with other values (64 wrong results of 200 in a trial:
    ``df["name"].to_numpy()`` is one), and an element changed in place did not miss."""
    np = pytest.importorskip("numpy")

    @task(cache_for=3600)
    def describe(a: Any) -> list[str]:
        return [str(x) for x in a]

    @flow
    def described(a: Any) -> list[str]:
        return describe(a)

    for k in range(50):
        values = np.empty(2, dtype=object)
        values[0], values[1] = [k], [k * 2]
        assert described(values) == [str([k]), str([k * 2])]
        del values
        gc.collect()
    rows = np.array([[1, 2], [3]], dtype=object)
    assert described(rows) == ["[1, 2]", "[3]"]
    rows[0].append(99)
    assert described(rows) == ["[1, 2, 99]", "[3]"]
    assert stable_hash(np.array(["a", None], dtype=object)) == stable_hash(
        np.array(["a", None], dtype=object)
    )
    assert stable_hash(np.arange(3)) != stable_hash(np.arange(3).astype(object))


def test_a_dropped_runs_values_are_freed_without_the_cycle_collector() -> None:
    """A run's nodes and task runs refer to each other: a dropped run's values waited
    for the cycle collector, and a notebook cell calling a flow that makes a 200 MB
    array 15 times grew to 2.9 GB (a trial). The last FlowRun of a run going releases
    its engine; a retried run's FlowRuns share it (the first may go before the other)."""

    class Big:
        pass

    made: list[weakref.ref[Big]] = []

    @task
    def make(n: int) -> Big:
        big = Big()
        made.append(weakref.ref(big))
        return big

    @task
    def size(big: Big, n: int) -> int:
        return n

    @flow
    def uses_big(n: int = 3) -> list[int]:
        return size.map(make.map(list(range(n))), list(range(n)))

    gc.collect()
    gc.disable()
    try:
        for _ in range(10):
            assert uses_big() == [0, 1, 2]
        alive = sum(ref() is not None for ref in made)
        assert alive <= 3, f"{alive} of {len(made)} values alive"  # (the last run's, at most)
        made.clear()
        for _ in range(10):
            run = uses_big.run()
            assert run.result == [0, 1, 2]
            del run
        assert sum(ref() is not None for ref in made) <= 3
        made.clear()

        @task
        def refuses(big: Big) -> int:
            raise ValueError("no")

        @flow
        def fails_on_big() -> int:
            return refuses(make(1))

        # A failed run too: its failure's traceback leads back through the frames that
        # called the task to the run (15 failed runs of a 200 MB input held 1.4 GB).
        # (each pool thread may still hold its last task's outcome: 2 threads)
        for _ in range(10):
            assert fails_on_big.run(max_workers=2).state is FlowRunState.FAILED
        assert sum(ref() is not None for ref in made) <= 2
        made.clear()
        for _ in range(10):
            with contextlib.suppress(Exception):
                fails_on_big(max_workers=2)
        assert sum(ref() is not None for ref in made) <= 2
    finally:
        gc.enable()
    # What a FlowRun gone already gave is whole: its task runs, a map's children.
    assert uses_big.run().task_runs["size"].state is S.MAPPED
    assert [c.result for c in uses_big.run().task_run("size").children or []] == [0, 1, 2]
    # A retried run's first FlowRun dropped: the retried one still has every task run.
    calls: list[int] = []

    @task
    def flaky(big: Big) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("first time")
        return 7

    @flow
    def once_flaky() -> int:
        return flaky(make(1))

    first = once_flaky.run()
    assert first.state is FlowRunState.FAILED
    again = first.retry()
    del first
    assert again.result == 7 and again.task_run("make").state is S.SUCCESS
    assert again.task_run("make").result is not None

    # A flow a task calls: the task drops its FlowRun; the parent's still has it whole.
    @task
    def calls_a_flow() -> int:
        child = once_flaky.run()
        return child.result

    @flow
    def parent() -> int:
        return calls_a_flow()

    gc.collect()
    outer = parent.run()
    assert outer.result == 7
    (child,) = outer.children
    assert child.result == 7 and sorted(child.task_runs) == ["flaky", "make"]
    assert child.task_run("make").state is S.SUCCESS


def test_inputs_equal_in_value_but_not_in_type_or_order_are_not_one_cache_entry() -> None:
    """The hash followed ==: 1 and an IntEnum member, {1} and frozenset({1}), a dict and
    an OrderedDict, bytes and a bytearray, a dict in another order hit each other's
    entries, and a task's repr (or iteration) of them came from the other (a trial)."""
    import enum
    from collections import OrderedDict

    class Color(enum.IntEnum):
        RED = 1

    @task(cache_for=3600)
    def shown(value: Any) -> str:
        return repr(value) if not isinstance(value, dict) else repr(list(value))

    @flow
    def show(value: Any) -> str:
        return shown(value)

    pairs = [
        (1, Color.RED),
        ({1}, frozenset({1})),
        ({"a": 1}, OrderedDict(a=1)),
        (b"x", bytearray(b"x")),
        ({"b": 2, "a": 1}, {"a": 1, "b": 2}),
        (1, True),
    ]
    for first, second in pairs:
        show(first)
        expected = repr(second) if not isinstance(second, dict) else repr(list(second))
        assert show(second) == expected, (first, second)
    # the same value hits, in a set in any order too
    assert stable_hash({"k": {"x", "y", "z"}}) == stable_hash({"k": {"z", "y", "x"}})
    run = show.run(value=Color.RED)
    assert run.task_run("shown").state is S.CACHED
