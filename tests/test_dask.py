"""What is particular to the DaskExecutor (its behaviour shared with the thread pool is
tested on both in test_embedded.py): resources route tasks to the Dask workers that
declare them, a LocalCluster per run, cached results outliving that cluster, errors."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from distributed import Client, Future, Nanny, Scheduler, SpecCluster, get_worker

from headwater import DaskExecutor, FlowRunState, TaskRunState, flow, task
from headwater_runtime.embedded import PROCESS_CACHE, thaw

S = TaskRunState


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[tuple[Client, str]]:
    """Two worker processes of one thread; only the one named "gpu" declares GPU=1."""
    quiet = {"silence_logs": logging.CRITICAL}
    cluster = SpecCluster(
        scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}},
        workers={
            "cpu": {"cls": Nanny, "options": {"nthreads": 1, **quiet}},
            "gpu": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1}, **quiet}},
        },
        silence_logs=logging.CRITICAL,
    )
    client = Client(cluster, set_as_default=False)
    try:
        client.wait_for_workers(2, timeout=60)
        (gpu,) = [
            address
            for address, info in client.scheduler_info()["workers"].items()
            if info["name"] == "gpu"
        ]
        yield client, gpu
    finally:
        client.close()
        cluster.close()


def test_tasks_with_resources_run_only_on_workers_that_declare_them(
    gpu_cluster: tuple[Client, str],
) -> None:
    client, gpu_worker = gpu_cluster

    @task(resources={"GPU": 1})
    def train(i: int) -> str:
        return str(get_worker().address)

    @task
    def prepare(i: int) -> str:
        return str(get_worker().address)

    @flow
    def f() -> dict[str, list[str]]:
        items = list(range(8))
        return {"train": train.map(items), "prepare": prepare.map(items)}

    run = f.run(executor=DaskExecutor(client=client))
    assert run.state is FlowRunState.SUCCESS, run.message
    assert run.result["train"] == [gpu_worker] * 8
    # Tasks without resources may run anywhere: both workers exist, both are allowed.
    assert set(run.result["prepare"]) <= set(client.scheduler_info()["workers"])


def test_a_task_whose_resources_no_worker_declares_fails_at_once(
    gpu_cluster: tuple[Client, str],
) -> None:
    client, _ = gpu_cluster

    @task(resources={"TPU": 1}, retries=3)
    def impossible() -> int:
        return 1

    @flow
    def f() -> int:
        return impossible()

    run = f.run(executor=DaskExecutor(client=client))
    assert run.state is FlowRunState.FAILED
    record = run.task_run("impossible")
    assert record.failure is not None
    assert record.failure.type == "headwater.ResourcesUnavailable"
    assert "TPU" in record.failure.message
    assert len(record.attempts) == 1, "not retried: retrying cannot help"


def test_a_task_whose_inputs_cannot_be_pickled_fails_alone(
    gpu_cluster: tuple[Client, str], caplog: pytest.LogCaptureFixture
) -> None:
    """One unpicklable argument (or code reading a lock) raised Dask's TypeError out of
    flow.run(): no task ran, no summary (a trial). That attempt fails, the others run."""
    client, _ = gpu_cluster

    @task(retries=2)
    def locked(guard: Any) -> str:
        return "never"

    @task
    def fine(i: int) -> int:
        return i + 1

    @flow
    def mixed(guard: Any) -> dict[str, Any]:
        return {"locked": locked(guard), "fine": [fine(i) for i in range(3)]}

    with caplog.at_level(logging.ERROR):
        run = mixed.run(guard=threading.Lock(), executor=DaskExecutor(client=client))
    # (Dask's own ~100-line log of it, naming another task of the batch, came first)
    assert [r for r in caplog.records if r.name.startswith("distributed")] == []
    assert run.state is FlowRunState.FAILED
    assert [run.task_run(f"fine{s}").state for s in ("", "-2", "-3")] == [S.SUCCESS] * 3
    failure = run.task_run("locked").failure
    assert failure is not None and failure.type == "headwater.InputError"
    assert failure.message == (
        "task 'locked' could not be sent to the Dask cluster: its inputs or its code "
        "cannot be pickled (TypeError: cannot pickle '_thread.lock' object)"
    )
    assert len(run.task_run("locked").attempts) == 1  # (not retried: it cannot help)


def test_a_retry_needs_the_client_that_holds_the_kept_results(
    gpu_cluster: tuple[Client, str], tmp_path: Any
) -> None:
    """Retried on a new DaskExecutor(address), the run's kept result (a future of the
    client its first executor closed) read as lost four times, and the retry failed
    with WorkerLost (a trial): it is refused, saying what works; with the same open
    client, the retry runs from the failure with the kept result."""
    client, _ = gpu_cluster
    flag = tmp_path / "fixed"

    @task
    def produce(n: int) -> int:
        return n

    @task
    def consume(x: int, fixed: str) -> int:
        if not os.path.exists(fixed):
            raise ValueError("not yet")
        return x * 2

    @flow
    def twice(n: int, fixed: str) -> int:
        return consume(produce(n), fixed)

    address = client.scheduler.address
    first = twice.run(n=5, fixed=str(flag), executor=DaskExecutor(address))
    assert first.state is FlowRunState.FAILED
    flag.touch()
    with pytest.raises(ValueError) as refused:
        first.retry(executor=DaskExecutor(address))
    assert str(refused.value).startswith(
        f"cannot retry flow run {first.id[:8]}: this run's results stayed in a Dask cluster "
        "through a client that closed when the run ended"
    )
    assert "DaskExecutor(client=...)" in str(refused.value)
    flag.unlink()
    kept = twice.run(n=5, fixed=str(flag), executor=DaskExecutor(client=client))
    assert kept.state is FlowRunState.FAILED
    flag.touch()
    again = kept.retry(executor=DaskExecutor(client=client))
    assert again.state is FlowRunState.SUCCESS and again.result == 10
    assert len(again.task_run("produce").attempts) == 1  # kept, not run again


def test_a_cluster_without_workers_is_said_and_a_closed_client_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A run on a cluster with no workers waited saying nothing; a closed client
    raised AttributeError from deep in distributed (a trial)."""
    from distributed import LocalCluster

    @task
    def quick() -> int:
        return 1

    @flow(timeout=1)
    def waits() -> int:
        return quick()

    with (
        LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as empty,
        Client(empty, set_as_default=False) as client,
        caplog.at_level(logging.WARNING, logger="headwater.dask"),
    ):
        run = waits.run(executor=DaskExecutor(client=client))
        assert run.state is FlowRunState.FAILED  # (its timeout: bounded)
        said = [r.getMessage() for r in caplog.records if r.name == "headwater.dask"]
        assert said == [
            f"the Dask cluster at {empty.scheduler_address} has no workers: its tasks wait "
            f"until one joins (start `dask worker {empty.scheduler_address}`)"
        ]
    with pytest.raises(ValueError, match=r"that distributed\.Client is closed; give an open one"):
        waits.run(executor=DaskExecutor(client=client))


def test_a_local_cluster_is_started_for_the_run_and_closed_after() -> None:
    @task(cache_for=3600)
    def load(n: int) -> list[int]:
        return list(range(n))

    @task
    def total(xs: list[int]) -> int:
        return sum(xs)

    @flow
    def f(n: int = 10) -> dict[str, Any]:
        xs = load(n)
        return {"total": total(xs), "xs": xs}

    executor = DaskExecutor(n_workers=1, threads_per_worker=2)
    run = f.run(executor=executor)
    assert run.state is FlowRunState.SUCCESS, run.message
    assert run.result == {"total": 45, "xs": list(range(10))}  # gathered, not futures
    assert isinstance(run.task_run("total").result, Future)
    assert executor._cluster is None and executor._client is None, "closed after the run"
    # The cached result was gathered before its cluster closed, so the next run (on a
    # new LocalCluster) uses it.
    (entry,) = [PROCESS_CACHE.get(run.task_run("load").cache_key)]
    assert entry is not None and thaw(entry.value) == list(range(10))  # a pickled copy
    again = f.run(executor=executor)
    assert again.task_run("load").state is S.CACHED
    assert again.result == {"total": 45, "xs": list(range(10))}


def test_an_unreachable_scheduler_is_one_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
        executor = DaskExecutor(address, connect_timeout=0.5)
        with pytest.raises(ConnectionError, match="cannot reach the Dask scheduler at tcp://"):
            executor.slots  # noqa: B018


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        DaskExecutor("tcp://127.0.0.1:1", client=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="LocalCluster"):
        DaskExecutor("tcp://127.0.0.1:1", n_workers=2)
    with pytest.raises(ValueError, match="n_workers must be at least 1"):
        DaskExecutor(n_workers=0)
    with pytest.raises(ValueError, match="slots must be at least 1"):
        DaskExecutor(slots=0)


def test_a_mapped_level_is_submitted_together(gpu_cluster: tuple[Client, str]) -> None:
    client, _ = gpu_cluster
    batches: list[int] = []

    class Recording(DaskExecutor):
        def submit(self, tasks: Any) -> None:
            batches.append(len(tasks))
            super().submit(tasks)

    @task
    def numbers(n: int) -> list[int]:
        return list(range(n))

    @task
    def square(x: int) -> int:
        return x * x

    @flow
    def f(n: int = 12) -> list[int]:
        return square.map(numbers(n))

    run = f.run(executor=Recording(client=client))
    assert run.result == [x * x for x in range(12)]
    assert batches[:2] == [1, 12], "the source, then all 12 children in one client.map"


@task
def _numbers() -> list[int]:
    return [1, 2, 3]


@task
def _total(xs: list[int]) -> int:
    return sum(xs)


@task
def _stuck() -> int:
    import time

    for _ in range(600):  # 30 s at most; interrupted long before (between sleeps)
        time.sleep(0.05)
    return 1


@flow
def _summing_child(items: list[int]) -> int:
    return _total(items)


@flow
def _stuck_child() -> int:
    return _stuck()


@flow
def _parent() -> dict[str, int]:
    return {"sum": _summing_child(_numbers()), "late": _stuck_child.with_options(timeout=0.5)()}


def test_a_result_held_in_the_cluster_is_mapped_over_as_on_threads(
    gpu_cluster: tuple[Client, str],
) -> None:
    """An element of a result the cluster holds is taken by position, as on threads:
    a pandas Series by position, not by its labels (a Series indexed 2, 1, 0 paired
    the children with its elements reversed, a user trial); a DataFrame is refused."""
    client, _ = gpu_cluster

    class Labelled:  # what a pandas Series is told by: [i] a label, .iloc[i] a position
        def __init__(self, values: list[int], labels: list[int]) -> None:
            self.values, self.labels = values, labels

        def __len__(self) -> int:
            return len(self.values)

        def __getitem__(self, label: int) -> int:
            return self.values[self.labels.index(label)]

        @property
        def iloc(self) -> list[int]:
            return self.values

    class Table(Labelled):  # what a pandas DataFrame is told by: columns and iloc
        columns = ("a", "b", "c")

    @task
    def labelled(table: bool) -> Labelled:
        return (Table if table else Labelled)([10, 20, 30], [2, 1, 0])

    @task
    def same(x: int) -> int:
        return x

    @flow
    def by_position(table: bool = False) -> list[int]:
        return same.map(labelled(table))

    threads = by_position.run()
    on_dask = by_position.run(executor=DaskExecutor(client=client))
    assert threads.result == on_dask.result == [10, 20, 30], on_dask.message
    refused = by_position.run(table=True, executor=DaskExecutor(client=client))
    assert refused.state is FlowRunState.FAILED
    (failed,) = refused.failures
    assert failed.failure is not None
    assert "has no elements to map over" in failed.failure.message


def test_a_cached_result_dask_cannot_serialise_is_not_cached_with_a_warning() -> None:
    """A cached task whose result Dask cannot serialise (a generator) is not cached,
    with a warning at its definition, as on threads; the run and the task's other
    cached results stand. ``flow.run()`` raised Dask's TypeError as its LocalCluster
    closed, and the run was lost (a re-trial)."""

    @task(cache_for=60)
    def numbers(n: int) -> Any:
        return (i for i in range(n))

    @task(cache_for=60)
    def kept(n: int) -> int:
        return n * 2

    @task
    def use(values: Any, doubled: int) -> int:
        return doubled

    @flow
    def f(n: int = 3) -> int:
        return use(numbers(n), kept(n))

    executor = DaskExecutor(n_workers=1, threads_per_worker=1)
    with pytest.warns(RuntimeWarning, match="'numbers': its result was not cached") as said:
        run = f.run(executor=executor)
    assert run.state is FlowRunState.SUCCESS and run.result == 6
    assert (said[0].filename, said[0].lineno) == (__file__, numbers.fn.__code__.co_firstlineno)
    with pytest.warns(RuntimeWarning, match="'numbers': its result \\(generator\\) was not"):
        again = f.run()  # on threads: the one entry that could be kept is a hit
    assert again.task_run("kept").state is TaskRunState.CACHED
    assert again.task_run("numbers").state is TaskRunState.SUCCESS


def test_subflows_on_dask_get_values_and_their_timeouts_hold(
    gpu_cluster: tuple[Client, str],
) -> None:
    """A child flow given a task result got the Dask future itself ("expects list[int],
    got <Future ...>"), and a subflow node's timeout never fired on Dask (its clock
    starts when the attempt is reported started, which a subflow never was)."""
    client, _ = gpu_cluster
    run = _parent.run(executor=DaskExecutor(client=client))
    assert run.state is FlowRunState.FAILED
    assert run.task_run("_summing_child").state is S.SUCCESS
    children = {child.flow_name: child for child in run.children}
    assert children["_summing_child"].result == 6
    late = run.task_run("_stuck_child")
    assert late.state is S.TIMED_OUT and late.failure is not None and late.failure.timed_out
    assert run.duration is not None and run.duration < 20, "stopped at the timeout"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("answer", [b"HTTP/1.0 400 Bad Request\r\n\r\n" * 64, None])
def test_an_address_where_no_dask_scheduler_answers_is_one_clear_error(
    answer: bytes | None,
) -> None:
    """`--dask` at an HTTP port made Dask read a garbage frame length and fail
    allocating exabytes (numpy's MemoryError, a traceback, exit 1); at a port that never
    answers it hung. Both are now one ConnectionError (the CLI exits 3)."""
    import threading

    from headwater_runtime.dask import connect_client

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)
            if answer is not None:
                with contextlib.suppress(OSError):
                    conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    address = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    unraisable: list[Any] = []
    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        with pytest.raises(ConnectionError) as info:
            connect_client(address, 1.0)
        if answer is not None:  # (the half-made client's __del__ waited, then printed)
            gc.collect()
            assert unraisable == []
    finally:
        sys.unraisablehook = hook
        server.close()
        for conn in accepted:
            conn.close()
    said = str(info.value)
    assert said.startswith(f"cannot reach the Dask scheduler at {address}"), said
    assert "\n" not in said and said.endswith("or use --dask local / address=None"), said
    if answer is None:
        assert "nothing answered as a Dask scheduler within 2 s" in said or "Timed out" in said


def test_a_value_a_dask_cluster_holds_is_a_cache_miss_for_a_run_on_threads(
    gpu_cluster: tuple[Client, str],
) -> None:
    """The notebook pattern: a run on a client you made caches the result's future;
    the same flow run next on the thread pool got the Future object as the value (a
    task given it failed, "object of type 'Future' has no len()", or a flow returning
    it succeeded with the Future as its result: a user trial). It is a miss there."""
    client, _ = gpu_cluster

    @task(cache_for=3600)
    def expensive(x: int) -> list[int]:
        return [x] * 3

    @task
    def length(values: list[int]) -> int:
        return len(values)

    @flow
    def caching(x: int) -> dict[str, Any]:
        values = expensive(x)
        return {"values": values, "n": length(values)}

    x = 7_123_457  # (not another test's key in the process's cache)
    first = caching.run(x=x, executor=DaskExecutor(client=client))
    assert first.state is FlowRunState.SUCCESS, first.message
    again = caching.run(x=x, executor=DaskExecutor(client=client))
    assert again.task_run("expensive").state is S.CACHED  # (the cluster serves it)
    on_threads = caching.run(x=x)
    assert on_threads.state is FlowRunState.SUCCESS, on_threads.message
    assert on_threads.result == {"values": [x] * 3, "n": 3}
    assert on_threads.task_run("expensive").state is S.SUCCESS  # ran: a miss


def test_a_dask_run_retried_without_its_executor_says_what_to_pass(
    gpu_cluster: tuple[Client, str], tmp_path: Any
) -> None:
    """`run.retry()` of a run made on Dask said "held by another kind of executor
    (DaskValues); retry it with the same kind (PythonValues given)" (a trial)."""
    client, _ = gpu_cluster

    @task
    def kept(x: int) -> int:
        return x

    @task
    def fails(x: int) -> int:
        raise ValueError("no")

    @flow
    def failing(x: int = 1) -> int:
        return fails(kept(x))

    run = failing.run(executor=DaskExecutor(client=client))
    with pytest.raises(ValueError) as refused:
        run.retry()
    assert str(refused.value).startswith(
        f"cannot retry flow run {run.id[:8]}: this run ran on Dask and keeps its results "
        "there; pass executor=DaskExecutor(client=...) with the client the run used"
    )
    # Another client, while the run's is open: said so, not "the client closed".
    with (
        Client(client.scheduler.address, set_as_default=False) as other,
        pytest.raises(ValueError) as refused,
    ):
        run.retry(executor=DaskExecutor(client=other))
    assert str(refused.value) == (
        f"cannot retry flow run {run.id[:8]}: this run's results are held by another Dask "
        "client, still open: pass DaskExecutor(client=...) with the client the run used"
    )
    threads = failing.run()
    with pytest.raises(ValueError, match="this run ran on this process's threads"):
        threads.retry(executor=DaskExecutor(client=client))
