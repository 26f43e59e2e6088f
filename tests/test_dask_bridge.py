"""The Dask bridge worker's attempts (``DaskAttempts``) on a real Dask cluster, without
a server: what it reports for results (Dask refs it keeps), skips, failures, timeouts
and cancels, how it passes its own values on, and how it exports them."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from _backends import BOUND, Probe, poll

from headwater import Skip, task
from headwater._worker_codec import PayloadTransfer
from headwater._worker_dask import DaskAttempts
from headwater.v1 import payload_pb2, worker_pb2
from headwater.wire import decode_value, encode, seconds


def inline(value: Any) -> worker_pb2.InputValue:
    encoded = encode(value)
    payload = payload_pb2.Payload(data=encoded.data, metadata=encoded.metadata)
    return worker_pb2.InputValue(value=payload_pb2.Value(inline=payload))


def assignment(
    task_type: str, run_id: str, inputs: dict[str, worker_pb2.InputValue], **extra: Any
) -> worker_pb2.Assignment:
    msg = worker_pb2.Assignment(
        token=worker_pb2.FencingToken(task_run_id=run_id, attempt=1),
        task_type=task_type,
        **extra,
    )
    for name, value in inputs.items():
        msg.inputs[name].CopyFrom(value)
    return msg


class Bridge:
    """DaskAttempts on the session cluster, reports collected by token."""

    def __init__(self, client: Any, tasks: list[Any]) -> None:
        self.sent: list[worker_pb2.ConnectRequest] = []
        self.attempts = DaskAttempts(
            {t.task_type: t for t in tasks}, 4, "bridge", self.sent.append, client
        )
        # Never dialled: inline values need no download.
        self.channel = grpc.insecure_channel("127.0.0.1:1")
        self.attempts.transfer = PayloadTransfer(self.channel, ())

    def outcome(self, run_id: str) -> worker_pb2.ConnectRequest:
        def found() -> worker_pb2.ConnectRequest | None:
            for msg in self.sent:
                kind = msg.WhichOneof("message")
                done = kind in ("result", "failure", "skipped", "cancelled")
                if done and getattr(msg, kind).token.task_run_id == run_id:
                    return msg
            return None

        poll(lambda: found() is not None, what=f"the outcome of {run_id}")
        result = found()
        assert result is not None
        return result

    def close(self) -> None:
        self.attempts.abandon_all()
        self.channel.close()


@pytest.fixture
def bridge_for(dask_client: Any) -> Any:
    made: list[Bridge] = []

    def make(*tasks: Any) -> Bridge:
        made.append(Bridge(dask_client, list(tasks)))
        return made[-1]

    yield make
    for bridge in made:
        bridge.close()


def test_results_stay_in_the_cluster_and_feed_the_next_task_as_futures(
    bridge_for: Callable[..., Bridge],
) -> None:
    @task
    def rows(n: int) -> list[int]:
        return list(range(n))

    @task
    def total(xs: list[int], first: int) -> int:
        return sum(xs) * 100 + first

    bridge = bridge_for(rows, total)
    before = time.time()
    bridge.attempts.assign(
        assignment(rows.task_type, "r/rows", {"n": inline(4)}, split_result=True)
    )
    reported = bridge.outcome("r/rows").result
    # Its times, as a plain worker's: the server's duration of it after an outage.
    assert before <= seconds(reported.started_at) <= seconds(reported.ended_at) <= time.time()
    result = reported.result
    assert result.ref.location == "dask" and result.ref.payload_id.startswith("dask-")
    assert result.ref.dask_key.startswith("rows-")
    assert result.ref.metadata["headwater.length"] == "4"
    assert [i.ref.location for i in result.items] == ["dask"] * 4
    assert result.ref.payload_id in bridge.attempts.values, "the bridge keeps the future"
    # The next task gets the whole value and an element of it, both as held refs.
    element = worker_pb2.InputValue(value=result.items[2])
    whole = worker_pb2.InputValue(value=payload_pb2.Value(ref=result.ref))
    bridge.attempts.assign(assignment(total.task_type, "r/total", {"xs": whole, "first": element}))
    summed = bridge.outcome("r/total").result.result
    exported = bridge.attempts.export(summed.ref.payload_id).value_exported
    assert not exported.HasField("error")
    assert decode_value(exported.value) == 6 * 100 + 2
    unknown = bridge.attempts.export("dask-nope").value_exported
    assert "does not hold" in unknown.error.message


def test_a_held_result_is_split_by_position_as_on_threads(
    bridge_for: Callable[..., Bridge],
) -> None:
    """The bridge splits a result it holds as the embedded host maps over it: a pandas
    Series by position, not by its labels (element 0 of a Series indexed 2, 1, 0 was
    its last, a user trial's wrong order)."""

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

    @task
    def labelled() -> Labelled:
        return Labelled([10, 20, 30], [2, 1, 0])

    @task
    def same(x: int) -> int:
        return x

    bridge = bridge_for(labelled, same)
    bridge.attempts.assign(assignment(labelled.task_type, "s/l", {}, split_result=True))
    result = bridge.outcome("s/l").result.result
    assert result.ref.metadata["headwater.length"] == "3"
    first = worker_pb2.InputValue(value=result.items[0])
    bridge.attempts.assign(assignment(same.task_type, "s/same", {"x": first}))
    taken = bridge.outcome("s/same").result.result
    assert decode_value(bridge.attempts.export(taken.ref.payload_id).value_exported.value) == 10


def test_a_part_of_a_held_result_is_split_where_its_consumers_map_over_it(
    bridge_for: Callable[..., Bridge],
) -> None:
    """``task.map(result["col"])``: the bridge splits the part at the assignment's
    split_path, as a Python worker does (it split the whole dict, which has no
    elements: every such map failed, a re-trial); an empty part has length 0."""

    @task
    def columns(n: int) -> dict[str, Any]:
        return {"col": list(range(10, 10 + n)), "other": 1}

    @task
    def same(x: int) -> int:
        return x

    bridge = bridge_for(columns, same)
    at_col = [payload_pb2.PathElement(key="col")]
    for n in (3, 0):
        run = f"p{n}/columns"
        bridge.attempts.assign(
            assignment(
                columns.task_type, run, {"n": inline(n)}, split_result=True, split_path=at_col
            )
        )
        result = bridge.outcome(run).result.result
        assert result.ref.metadata["headwater.length"] == str(n)
        assert result.ref.metadata["headwater.split_path"] == '["col"]'
        assert len(result.items) == n
    last = worker_pb2.InputValue(value=bridge.outcome("p3/columns").result.result.items[2])
    bridge.attempts.assign(assignment(same.task_type, "p3/same", {"x": last}))
    taken = bridge.outcome("p3/same").result.result
    assert decode_value(bridge.attempts.export(taken.ref.payload_id).value_exported.value) == 12


def scheduler_keys(client: Any) -> set[str]:
    """The keys whose values the Dask cluster keeps in memory."""
    keys = client.run_on_scheduler(
        lambda dask_scheduler: [k for k, t in dask_scheduler.tasks.items() if t.state == "memory"]
    )
    return {str(k) for k in keys}


def test_released_values_are_dropped_and_dask_frees_them(
    bridge_for: Callable[..., Bridge], dask_client: Any
) -> None:
    @task
    def rows(n: int) -> list[int]:
        return list(range(n))

    bridge = bridge_for(rows)
    bridge.attempts.assign(assignment(rows.task_type, "rel/a", {"n": inline(3)}, split_result=True))
    first = bridge.outcome("rel/a").result.result
    bridge.attempts.assign(assignment(rows.task_type, "rel/b", {"n": inline(2)}))
    second = bridge.outcome("rel/b").result.result
    assert {first.ref.dask_key, second.ref.dask_key} <= scheduler_keys(dask_client)
    ids = [first.ref.payload_id, *(i.ref.payload_id for i in first.items), "dask-unknown"]
    release = worker_pb2.ReleaseValues(payload_ids=ids)
    assert bridge.attempts.release(release) == 4, "the whole value and its 3 elements"
    assert first.ref.payload_id not in bridge.attempts.values
    poll(
        lambda: first.ref.dask_key not in scheduler_keys(dask_client),
        what="the scheduler forgetting a released value",
    )
    assert second.ref.dask_key in scheduler_keys(dask_client), "not released: still there"
    # "all" (a server that has no record of these values): a result whose outcome the
    # server has not acknowledged yet is kept, since it is resent after the Welcome.
    everything = worker_pb2.ReleaseValues(all=True)
    assert bridge.attempts.release(everything) == 0
    bridge.attempts.acked(("rel/b", 1))
    # A keep list (the values a restarted server's resumed runs still need) is
    # honoured by the next "all", and only by it.
    keep = worker_pb2.ReleaseValues(keep=[second.ref.payload_id])
    assert bridge.attempts.release(keep) == 0
    assert bridge.attempts.release(everything) == 0
    assert bridge.attempts.release(everything) == 1
    assert bridge.attempts.values == {}
    poll(
        lambda: second.ref.dask_key not in scheduler_keys(dask_client),
        what="the scheduler forgetting the last value",
    )


def test_a_split_too_wide_for_one_message_fails_before_a_task_per_element(
    bridge_for: Callable[..., Bridge],
) -> None:
    """Each element of a split result travels as a reference in the one result
    message: a result whose elements cannot fit under the server's limit (from its
    Welcome) fails at once, naming the limit, with no selection task submitted per
    element."""

    @task
    def rows(n: int) -> list[int]:
        return list(range(n))

    bridge = bridge_for(rows)
    bridge.attempts.max_message_bytes = 1 << 20  # from a server's Welcome
    bridge.attempts.assign(
        assignment(rows.task_type, "r/wide", {"n": inline(10_000)}, split_result=True)
    )
    failure = bridge.outcome("r/wide").failure.failure
    assert (failure.type, failure.retryable) == ("headwater.EncodingError", False)
    assert "its 10,000 elements do not fit in one message (960 KiB" in failure.message
    assert len(bridge.attempts.values) == 0, "no element was selected in the cluster"


def test_an_unserialisable_result_fails_the_attempt_rather_than_succeeding(
    bridge_for: Callable[..., Bridge],
) -> None:
    """A generator result stayed in the cluster and the run succeeded with a result no
    one could read; a plain worker fails the attempt when it encodes it."""

    @task
    def lazy(n: int) -> Any:
        return (i for i in range(n))

    bridge = bridge_for(lazy)
    bridge.attempts.assign(assignment(lazy.task_type, "r/lazy", {"n": inline(3)}))
    failure = bridge.outcome("r/lazy").failure.failure
    assert (failure.type, failure.retryable) == ("headwater.EncodingError", False)
    assert "cannot be serialised: a generator" in failure.message
    assert bridge.attempts.values == {}


def test_an_attempt_the_cluster_dropped_is_given_back_not_failed(
    bridge_for: Callable[..., Bridge], dask_client: Any, tmp_path: Path
) -> None:
    """A Dask future the cluster cancelled (its scheduler went away) is no failure of
    the task: the attempt is given back (TaskCancelled unasked), dispatched again
    without using up a retry. It was reported as a retryable failure."""
    probe = Probe(tmp_path)

    @task
    def spin(name: str) -> None:
        probe.set(f"{name}-started")
        while True:
            time.sleep(0.01)

    bridge = bridge_for(spin)
    bridge.attempts.assign(assignment(spin.task_type, "r/dropped", {"name": inline("dropped")}))
    assert probe.wait("dropped-started")
    future, key = bridge.attempts._futures[("r/dropped", 1)]
    dask_client.cancel(future)  # as the client does for every future when it loses the scheduler
    assert bridge.outcome("r/dropped").HasField("cancelled")
    assert ("r/dropped", 1) not in bridge.attempts.unacked, "no answer is owed to a give-back"
    from headwater_runtime.dask import interrupt_everywhere

    interrupt_everywhere(dask_client, [key])  # stop the spinning thread on its Dask worker


def test_skips_and_failures_are_reported_like_a_plain_worker(
    bridge_for: Callable[..., Bridge],
) -> None:
    @task
    def skipper() -> None:
        raise Skip("nothing new")

    @task(retries=2)
    def broken() -> None:
        raise ValueError("bad row 7")

    bridge = bridge_for(skipper, broken)
    bridge.attempts.assign(assignment(skipper.task_type, "r/skip", {}))
    bridge.attempts.assign(assignment(broken.task_type, "r/broken", {}))
    assert bridge.outcome("r/skip").skipped.reason == "nothing new"
    failure = bridge.outcome("r/broken").failure.failure
    assert failure.type == "builtins.ValueError" and failure.message == "bad row 7"
    assert "in broken" in failure.stack_trace and failure.retryable


def test_timeouts_and_cancels_interrupt_the_task_on_its_dask_worker(
    bridge_for: Callable[..., Bridge], tmp_path: Path
) -> None:
    probe = Probe(tmp_path)

    @task
    def spin(name: str) -> None:
        probe.set(f"{name}-started")
        try:
            deadline = time.monotonic() + BOUND
            while time.monotonic() < deadline:  # Python code: interruptible
                pass
        except BaseException as exc:
            probe.set(f"{name}-stopped", type(exc).__name__)
            raise

    bridge = bridge_for(spin)
    timed = assignment(spin.task_type, "r/timed", {"name": inline("timed")})
    timed.timeout.FromMilliseconds(300)
    bridge.attempts.assign(timed)
    report = bridge.outcome("r/timed").failure
    assert report.timed_out and report.failure.type == "headwater.TaskTimeout"
    assert probe.wait("timed-stopped") and probe.read("timed-stopped") == "TaskInterrupted"

    bridge.attempts.assign(assignment(spin.task_type, "r/cancel", {"name": inline("cancel")}))
    assert probe.wait("cancel-started")
    bridge.attempts.cancel(("r/cancel", 1))
    assert bridge.outcome("r/cancel").HasField("cancelled")
    assert probe.wait("cancel-stopped") and probe.read("cancel-stopped") == "TaskInterrupted"


def test_a_bridge_whose_dask_client_closed_stops_saying_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scheduler died and did not come back within the client's reconnect time: the
    bridge stayed connected to the server with every slot taken by attempts that could
    never end, and its runs hung. It now stops (the CLI exits 3 with this line)."""
    import threading
    import types

    from headwater import _worker_dask
    from headwater._worker_dask import DaskAttempts, DaskBridgeWorker

    monkeypatch.setattr(_worker_dask, "CLUSTER_CHECK", 0.01)
    bridge = DaskBridgeWorker.__new__(DaskBridgeWorker)
    client = types.SimpleNamespace(status="running")
    bridge.executor = types.SimpleNamespace(client=client)  # type: ignore[assignment]
    bridge.attempts = DaskAttempts.__new__(DaskAttempts)
    bridge.attempts.cluster_gone = threading.Event()
    bridge.dask_address = "tcp://10.0.0.5:8786"
    bridge._stop = threading.Event()
    stopped: list[bool] = []
    bridge.stop = lambda: stopped.append(True)  # type: ignore[method-assign]
    gone: list[str] = []
    watcher = threading.Thread(target=bridge._watch_cluster, args=(gone,))
    watcher.start()
    client.status = "closed"
    watcher.join(30)
    assert stopped == [True]
    assert gone == [
        "the Dask client closed: the scheduler at tcp://10.0.0.5:8786 went away (restart the "
        "scheduler and its workers, then this worker; its attempts are dispatched again)"
    ]


@pytest.mark.timeout(120)
def test_a_task_whose_resource_workers_left_fails_instead_of_waiting_forever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The only worker declaring GPU=1 leaves while a GPU task runs: Dask puts the
    task back to wait for such a worker, forever, and the attempt stayed RUNNING (a
    user trial). Once no worker has declared the resources for RESOURCE_GRACE, the
    attempt fails with headwater.ResourcesUnavailable, as one submitted then does."""
    from distributed import Client, LocalCluster

    import headwater._worker_dask as bridge_module

    monkeypatch.setattr(bridge_module, "RESOURCE_CHECK", 0.1)
    monkeypatch.setattr(bridge_module, "RESOURCE_GRACE", 0.5)
    probe = Probe(tmp_path)

    @task(resources={"GPU": 1})
    def on_gpu() -> int:
        probe.set("gpu-started")
        time.sleep(1.0)  # (closing the worker waits for its running task)
        return 1

    cluster = LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        resources={"GPU": 1},
        dashboard_address=None,
    )
    client = Client(cluster)
    bridge = Bridge(client, [on_gpu])
    try:
        bridge.attempts.assign(assignment(on_gpu.task_type, "r/gpu", {}))
        assert probe.wait("gpu-started")
        (name,) = list(cluster.workers)
        cluster.sync(cluster.workers[name].close)  # the GPU worker leaves
        outcome = bridge.outcome("r/gpu")
        assert outcome.HasField("failure"), outcome
        failure = outcome.failure.failure
        assert failure.type == "headwater.ResourcesUnavailable" and not failure.retryable
        assert "left the cluster while it waited" in failure.message, failure.message
    finally:
        bridge.close()
        client.close()
        cluster.close()


def test_a_bridge_on_a_cluster_without_workers_waits_for_one_to_size_its_slots(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Slots are said once, in Hello: a bridge started before its cluster's workers
    registered 1 slot and ran one task at a time once a 2-thread worker joined (a
    trial). It waits a while for a worker, saying so; none: 1 slot."""
    import logging
    import threading

    from distributed import LocalCluster

    from headwater import _worker_dask

    monkeypatch.setattr(_worker_dask, "WORKERS_WAIT", BOUND)
    with LocalCluster(
        n_workers=0, threads_per_worker=2, processes=False, dashboard_address=":0"
    ) as cluster:
        joined = threading.Timer(0.5, lambda: cluster.scale(1))
        with caplog.at_level(logging.WARNING, logger="headwater.worker"):
            joined.start()
            bridge = _worker_dask.DaskBridgeWorker("127.0.0.1:1", dask=cluster.scheduler_address)
        try:
            threads = sum(bridge.executor.client.nthreads().values())
            assert threads == 2 and bridge.slots == 2
            assert any("has no workers yet" in r.getMessage() for r in caplog.records)
        finally:
            joined.join()
            bridge.executor.shutdown()
