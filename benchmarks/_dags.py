"""The benchmark DAGs, each written four ways over the same task functions.

* ``flow()``: a Headwater ``@flow`` (built by closure, because flow parameters are
  references at compile time and cannot size a Python loop);
* ``plain()``: the functions called in topological order, the floor any runtime pays;
* ``dask_delayed()``: ``dask.delayed`` calls, run by ``dask.compute(scheduler="threads")``;
* ``dask_graph()``: the same graph as a raw dict on ``dask.threaded.get`` (the same
  threaded scheduler without the delayed API, whose graph building is slow for wide
  graphs in current Dask, see README.md); ``dask_graph(get=client.get)`` runs that
  dict on dask.distributed instead (the ``distributed`` system: an in-process
  ``Client(processes=False)``, started before the timed runs).

Every way returns the DAG's result; ``check()`` reduces it to one int so the harness can
confirm all systems computed the same thing. The Dask variants are timed including
graph construction, as the Headwater one includes compilation: both are what a user pays.
"""

from __future__ import annotations

import random
from typing import Any

from headwater import Flow, flow, task

# ---------------------------------------------------------------- task functions
# Module-level so every system calls the very same function objects.


def noop(i: int) -> int:
    return i


def total(values: list[int]) -> int:
    return sum(values)


def combine(a: int, b: int, c: int = 0) -> int:
    return (a + b + c) % 1_000_003


def source(n: int) -> list[int]:
    return list(range(n))


def inc(x: int) -> int:
    return x + 1


noop_task = task(noop)
total_task = task(total)
combine_task = task(combine)
source_task = task(source)
inc_task = task(inc)


class Dag:
    """One benchmark DAG at one size."""

    #: task runs that execute a function (mapped parents are not counted)
    tasks: int
    #: short size label for the table
    label: str

    def flow(self) -> Flow[[], Any]:
        raise NotImplementedError

    def plain(self) -> Any:
        raise NotImplementedError

    def dask_delayed(self) -> Any:
        raise NotImplementedError

    def dask_graph(self, get: Any = None) -> Any:
        raise NotImplementedError

    def check(self, result: Any) -> int:
        return int(result)


class FanOut(Dag):
    """``n`` independent no-op tasks, then one reduce taking the list of all results."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.tasks = n + 1
        self.label = f"{n:,} + 1"

    def flow(self) -> Flow[[], Any]:
        n = self.n

        @flow(name=f"fanout_{n}")
        def fanout() -> int:
            return total_task([noop_task(i) for i in range(n)])

        return fanout

    def plain(self) -> int:
        return total([noop(i) for i in range(self.n)])

    def dask_delayed(self) -> int:
        import dask
        from dask import delayed

        noop_d, total_d = delayed(noop), delayed(total)
        (result,) = dask.compute(total_d([noop_d(i) for i in range(self.n)]), scheduler="threads")
        return int(result)

    def dask_graph(self, get: Any = None) -> int:
        get = get or _threaded_get()
        dsk: dict[Any, Any] = {("noop", i): (noop, i) for i in range(self.n)}
        dsk["total"] = (total, [("noop", i) for i in range(self.n)])
        return int(get(dsk, "total"))


class Layered(Dag):
    """``layers`` x ``width`` tasks; layer 0 are no-ops, every later task combines 2 or 3
    results of the previous layer, chosen by a seeded RNG (the same DAG every run).
    The result is the list of the last layer's values."""

    def __init__(self, layers: int, width: int, seed: int = 0) -> None:
        self.layers = layers
        self.width = width
        self.tasks = layers * width
        self.label = f"{layers}x{width}"
        rng = random.Random(seed)
        # parents[l][j]: indices in layer l of the inputs of task j of layer l + 1
        self.parents: list[list[tuple[int, ...]]] = [
            [tuple(rng.sample(range(width), rng.choice((2, 3)))) for _ in range(width)]
            for _ in range(layers - 1)
        ]

    def flow(self) -> Flow[[], Any]:
        width, parents = self.width, self.parents

        @flow(name=f"layered_{self.label}")
        def layered() -> list[int]:
            prev = [noop_task(j) for j in range(width)]
            for layer in parents:
                prev = [combine_task(*[prev[p] for p in ps]) for ps in layer]
            return prev

        return layered

    def plain(self) -> list[int]:
        prev = [noop(j) for j in range(self.width)]
        for layer in self.parents:
            prev = [combine(*[prev[p] for p in ps]) for ps in layer]
        return prev

    def dask_delayed(self) -> list[int]:
        import dask
        from dask import delayed

        noop_d, combine_d = delayed(noop), delayed(combine)
        prev = [noop_d(j) for j in range(self.width)]
        for layer in self.parents:
            prev = [combine_d(*[prev[p] for p in ps]) for ps in layer]
        (result,) = dask.compute(prev, scheduler="threads")
        return list(result)

    def dask_graph(self, get: Any = None) -> list[int]:
        get = get or _threaded_get()
        dsk: dict[Any, Any] = {(0, j): (noop, j) for j in range(self.width)}
        for level, layer in enumerate(self.parents, start=1):
            for j, ps in enumerate(layer):
                dsk[(level, j)] = (combine, *[(level - 1, p) for p in ps])
        keys = [(self.layers - 1, j) for j in range(self.width)]
        return list(get(dsk, keys))

    def check(self, result: Any) -> int:
        return sum(result)


class Chain(Dag):
    """``n`` tasks in a line, each adding one to the result of the one before: every
    step waits for the previous one, so this measures the cost per dependent step."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.tasks = n
        self.label = f"{n:,} steps"

    def flow(self) -> Flow[[], Any]:
        n = self.n

        @flow(name=f"chain_{n}")
        def chain() -> int:
            value = noop_task(0)
            for _ in range(n - 1):
                value = inc_task(value)
            return value

        return chain

    def plain(self) -> int:
        value = noop(0)
        for _ in range(self.n - 1):
            value = inc(value)
        return value

    def dask_delayed(self) -> int:
        import dask
        from dask import delayed

        inc_d = delayed(inc)
        value = delayed(noop)(0)
        for _ in range(self.n - 1):
            value = inc_d(value)
        (result,) = dask.compute(value, scheduler="threads")
        return int(result)

    def dask_graph(self, get: Any = None) -> int:
        get = get or _threaded_get()
        dsk: dict[Any, Any] = {("step", 0): (noop, 0)}
        for i in range(1, self.n):
            dsk[("step", i)] = (inc, ("step", i - 1))
        return int(get(dsk, ("step", self.n - 1)))


class MapChain(Dag):
    """``source -> inc.map -> inc.map -> total`` over ``n`` elements.

    Dask needs a list's length when the graph is built, so its variants start from the
    ``n`` elements (``source`` is called while building); Headwater's map learns the
    length at run time from the source task's result.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.tasks = 2 * n + 2
        self.label = f"{n:,} elems"

    def flow(self) -> Flow[[], Any]:
        n = self.n

        @flow(name=f"map_chain_{n}")
        def map_chain() -> int:
            return total_task(inc_task.map(inc_task.map(source_task(n))))

        return map_chain

    def plain(self) -> int:
        a = [inc(x) for x in source(self.n)]
        b = [inc(x) for x in a]
        return total(b)

    def dask_delayed(self) -> int:
        import dask
        from dask import delayed

        inc_d, total_d = delayed(inc), delayed(total)
        a = [inc_d(x) for x in source(self.n)]
        b = [inc_d(x) for x in a]
        (result,) = dask.compute(total_d(b), scheduler="threads")
        return int(result)

    def dask_graph(self, get: Any = None) -> int:
        get = get or _threaded_get()
        dsk: dict[Any, Any] = {}
        for i, x in enumerate(source(self.n)):
            dsk[("a", i)] = (inc, x)
            dsk[("b", i)] = (inc, ("a", i))
        dsk["total"] = (total, [("b", i) for i in range(self.n)])
        return int(get(dsk, "total"))


def _threaded_get() -> Any:
    from dask.threaded import get

    return get


def make_dag(kind: str, params: dict[str, int]) -> Dag:
    """The DAG of a kind (``fanout``, ``layered``, ``chain``, ``map``) at the given size."""
    if kind == "chain":
        return Chain(params["n"])
    if kind == "fanout":
        return FanOut(params["n"])
    if kind == "layered":
        return Layered(params["layers"], params["width"])
    if kind == "map":
        return MapChain(params["n"])
    raise ValueError(f"unknown DAG kind {kind!r}")


#: A tiny instance of each kind, run once before measuring to pay one-off costs
#: (lazy imports, first-call caches) outside the timed region.
WARMUP = {
    "chain": {"n": 20},
    "fanout": {"n": 50},
    "layered": {"layers": 3, "width": 20},
    "map": {"n": 50},
}
