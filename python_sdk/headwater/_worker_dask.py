"""The Dask bridge worker: a worker whose task runs execute on a Dask cluster.

It connects to the control plane like any worker (``_worker.Worker``), but each
attempt is a Dask task (``headwater_runtime.dask._remote.run_attempt``, the same
wrapper the embedded DaskExecutor uses: timeout watchdog, interruption, outcomes).
Results stay in the cluster: the bridge keeps the future and reports
``PayloadRef(location="dask", dask_key=..., payload_id=<bridge-made id>)``. An
assignment to this bridge that carries such a ref gets the future itself (Dask moves
the data between its workers). When another worker needs the value, the control plane
sends ``ExportValue`` and the bridge fetches, encodes and uploads it (``ValueExported``).

It lists the "release-values" feature: the server says which values nothing needs any
more (``ReleaseValues``, a while after their run ended), and the bridge drops its futures,
so that Dask frees them. After its first Welcome from a server process (restarted, or
a new leader), it drops all but those the server's resumed runs still need (``keep``)
and those of attempts it still runs or reports.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from headwater.v1 import payload_pb2, worker_pb2
from headwater.wire import (
    DASK_LOCATION,
    LENGTH_KEY,
    RELEASE_VALUES,
    SPLIT_PATH_KEY,
    EncodingError,
    decode_value,
    failure_to_proto,
    message_ceiling,
    path_from_proto,
    seconds,
)
from headwater_runtime.execution import failure_from_exception

from ._task import Task
from ._worker import Worker
from ._worker_attempts import Attempts, Send, Token, _Attempt, failure_report
from ._worker_codec import REF_ITEM_BYTES, encode_result, failure

log = logging.getLogger("headwater.worker")

# How often a waiting attempt thread wakes up, so an interruption lands promptly.
_POLL = 0.1
#: Seconds an attempt that found the Dask client closed waits for the bridge's stop to
#: give it back before it gives itself back (``DaskAttempts._wait_for_the_stop``).
GIVE_BACK_AFTER = 10.0
#: While a task with ``resources`` waits, how often the bridge asks the scheduler
#: whether a worker still declares them, and how long none may (a worker restarting)
#: before the attempt fails with headwater.ResourcesUnavailable: Dask itself would
#: keep the task waiting for such a worker forever (seconds).
RESOURCE_CHECK = 2.0
RESOURCE_GRACE = 10.0
#: Result types no worker or client could ever read (pickle refuses them): a plain
#: worker fails such an attempt when it encodes the result; the bridge, which keeps
#: results in the cluster, by the type Dask records for it.
_UNSERIALISABLE = (
    types.GeneratorType,
    types.AsyncGeneratorType,
    types.CoroutineType,
)


class DaskAttempts(Attempts):
    """Attempts that run as Dask tasks; results are kept as futures.

    Args:
        tasks, slots, worker_name, send: as for Attempts.
        client: the ``distributed.Client`` of the cluster the tasks run on.
    """

    def __init__(
        self,
        tasks: Mapping[str, Task[..., Any]],
        slots: int,
        worker_name: str,
        send: Send,
        client: Any,
    ) -> None:
        super().__init__(tasks, slots, worker_name, send)
        self.client = client
        self.values: dict[str, Any] = {}  # payload id -> future, kept alive here
        self._made_by: dict[str, Token] = {}  # payload id -> the attempt it is a result of
        self._keep: set[str] = set()  # ReleaseValues.keep until the one with all set
        self._futures: dict[Token, tuple[Any, str]] = {}
        #: Set by an attempt that found the Dask client closed: the bridge's watcher
        #: then stops it at once (``DaskBridgeWorker._watch_cluster``).
        self.cluster_gone = threading.Event()

    # Inputs: refs this bridge holds become futures ------------------------------------

    def _future(self, value: payload_pb2.Value) -> Any | None:
        if value.WhichOneof("kind") == "ref" and value.ref.location == DASK_LOCATION:
            future = self.values.get(value.ref.payload_id)
            if future is None:
                raise LookupError(f"value {value.ref.payload_id!r} is not held by this Dask bridge")
            return future
        return None

    def _input(self, msg: worker_pb2.InputValue) -> Any:
        """An argument: futures for held values (parts of them as Part), else decoded."""
        from headwater_runtime.dask import Part

        kind = msg.WhichOneof("kind")
        value: Any
        if kind == "value":
            future = self._future(msg.value)
            if future is not None:
                path = tuple(
                    e.key if e.WhichOneof("selector") == "key" else e.index for e in msg.path
                )
                return Part(future, path) if path else future
            assert self.transfer is not None
            value = decode_value(msg.value, self.transfer.download)
        elif kind == "list":
            items = [self._input(i) for i in msg.list.items]
            value = tuple(items) if msg.list.tuple else items
        elif kind == "map":
            value = {e.key: self._input(e.value) for e in msg.map.entries}
        else:
            value = None
        for element in msg.path:
            value = value[element.key if element.WhichOneof("selector") == "key" else element.index]
        return value

    # Running ------------------------------------------------------------------------

    def _execute(self, attempt: _Attempt) -> worker_pb2.ConnectRequest | None:
        from headwater_runtime.dask import (
            Outcome,
            client_closed,
            cluster_declares,
            run_attempt,
            split_inputs,
        )

        assignment, token = attempt.assignment, attempt.token
        task = attempt.task
        if client_closed(self.client):  # (its scheduler went away: the bridge is stopping)
            return self._wait_for_the_stop(attempt)
        try:
            names = [n for n in assignment.argument_order if n in assignment.inputs]
            names += sorted(n for n in assignment.inputs if n not in set(names))
            inputs = {name: self._input(assignment.inputs[name]) for name in names}
            plain, selections = split_inputs(self.client, inputs)
        except Exception as exc:
            cause = failure_from_exception(exc)
            why = f"cannot assemble the inputs of {assignment.task_type}: {cause}"
            return failure_report(token, failure("headwater.InputError", why, retryable=True))
        cache_key = self._function_cache_key(
            attempt, inputs, functools.partial(self._key_in_cluster, task.name, plain, selections)
        )
        if cache_key and self._cache_hit(attempt, cache_key):
            return None
        resources = dict(task.resources)
        if resources and not cluster_declares(self.client, resources):
            why = (
                f"task {task.name!r} needs resources {resources}, and no worker of the Dask "
                "cluster declares them (start workers with --resources)"
            )
            return failure_report(
                token, failure("headwater.ResourcesUnavailable", why, retryable=False)
            )
        timeout = None
        if assignment.HasField("timeout") and seconds(assignment.timeout) > 0:
            timeout = seconds(assignment.timeout)
        key = f"{task.name}-{token[0]}-{token[1]}"
        try:
            future = self.client.submit(
                run_attempt,
                self.caller(task),
                plain,
                selections,
                key,
                task.name,
                token[1],
                task.no_retry_on,
                timeout,
                key=key,
                resources=resources or None,
                pure=False,
            )
        except Exception:
            if not client_closed(self.client):
                raise
            # Its scheduler went away (the bridge stops in a moment): the server gave
            # it here meanwhile. Its thread failed with ClosedClientError (a CI run).
            return self._wait_for_the_stop(attempt)
        done = threading.Event()
        future.add_done_callback(lambda _f: done.set())
        with self.lock:
            self._futures[token] = (future, key)
        gone = False
        checked, missing_since = time.monotonic(), None
        while not done.wait(_POLL):  # interruptible between waits (cancel, timeout)
            if not resources or time.monotonic() - checked < RESOURCE_CHECK:
                continue
            checked = time.monotonic()
            if cluster_declares(self.client, resources):
                missing_since = None
            elif missing_since is None:
                missing_since = checked
            elif checked - missing_since >= RESOURCE_GRACE:
                gone = True  # every worker that declared them left the cluster
                self.client.cancel(future)
                break
        self._seal(attempt)
        with self.lock:
            self._futures.pop(token, None)
        if gone:
            why = (
                f"task {task.name!r} needs resources {resources}, and the Dask workers "
                f"that declared them left the cluster while it waited (none for "
                f"{RESOURCE_GRACE:g}s; Dask would wait for one forever)"
            )
            return failure_report(
                token, failure("headwater.ResourcesUnavailable", why, retryable=False)
            )
        if future.status in ("cancelled", "lost"):
            # The cluster dropped it (its scheduler went away, or restarted): no failure
            # of the task, so give the attempt back (dispatched again, no retry used).
            return self._give_back(attempt, f"the Dask cluster dropped it ({future.status})")
        if future.status != "finished":
            why = f"the Dask task ended {future.status}"
            if future.status == "error":
                why = f"{why}: {future.exception()!r}"
            return failure_report(token, failure("headwater.DaskError", why, retryable=True))
        if future.type is Outcome:
            outcome: Outcome = future.result()
            if outcome.kind == "skipped":
                skipped = worker_pb2.TaskSkipped(token=assignment.token, reason=outcome.reason)
                return worker_pb2.ConnectRequest(skipped=skipped)
            if outcome.failure is not None:
                return failure_report(
                    token,
                    failure_to_proto(outcome.failure),
                    timed_out=outcome.failure.timed_out,
                )
            why = f"the attempt was interrupted on its Dask worker ({outcome.reason})"
            return failure_report(token, failure("headwater.Interrupted", why, retryable=True))
        if future.type in _UNSERIALISABLE:  # (known without moving the value)
            why = (
                f"the result of {task.name!r} cannot be serialised: a "
                f"{future.type.__name__} (return a list or another value instead)"
            )
            return failure_report(token, failure("headwater.EncodingError", why, retryable=False))
        try:
            split = path_from_proto(assignment.split_path) if assignment.split_result else None
            value = self._ref(future, token, split)
        except Exception as exc:
            detail = str(exc) if isinstance(exc, EncodingError) else repr(exc)
            why = f"cannot split the result of {task.name!r} into elements: {detail}"
            return failure_report(token, failure("headwater.EncodingError", why, retryable=False))
        with self.lock:
            if self.running.get(token) is not attempt:  # cancelled meanwhile: never reported
                for payload_id in [p for p, t in self._made_by.items() if t == token]:
                    del self.values[payload_id], self._made_by[payload_id]
        result = worker_pb2.TaskResult(token=assignment.token, result=value, cache_key=cache_key)
        return worker_pb2.ConnectRequest(result=result)

    def _wait_for_the_stop(self, attempt: _Attempt) -> worker_pb2.ConnectRequest | None:
        """An attempt that cannot run (the Dask client closed): wake the bridge's
        watcher, which stops the bridge (Stopping first, so the server gives it nothing
        more, then every attempt given back, this one too: this thread is interrupted).
        Given back here one by one, each came straight back to this bridge, a hundred
        times in a second, and the task failed for it (a CI run)."""
        self.cluster_gone.set()
        deadline = time.monotonic() + GIVE_BACK_AFTER
        while time.monotonic() < deadline:  # (interrupted by the stop's give-back)
            time.sleep(_POLL)
        return self._give_back(attempt, "the Dask client is closed")

    def _give_back(self, attempt: _Attempt, why: str) -> worker_pb2.ConnectRequest | None:
        """Give an attempt this bridge cannot run back to the server (a TaskCancelled
        it did not ask for: dispatched again, no retry used); sent here, so there is
        nothing for the caller to report (None)."""
        log.warning("%s attempt %d: %s; giving it back", *attempt.token, why)
        with self.lock:
            if self.running.get(attempt.token) is attempt:
                given_back = worker_pb2.TaskCancelled(token=attempt.assignment.token)
                self.send(worker_pb2.ConnectRequest(cancelled=given_back))
        return None

    def _key_in_cluster(
        self,
        name: str,
        plain: dict[str, Any],
        selections: dict[str, Any],
        key_fn: Callable[[dict[str, Any]], Any],
    ) -> Any:
        """The task's cache_key_fn on its real inputs, called in the cluster when some
        live there (a bridge's task with a cache_key_fn ran again on every run: its key
        was never computed, a user trial)."""
        from headwater_runtime.dask import compute_cache_key, holds_remote

        if not selections and not any(holds_remote(v) for v in plain.values()):
            return key_fn(plain)
        future = self.client.submit(
            compute_cache_key, "", key_fn, name, plain, selections, pure=False
        )
        return future.result()

    def _ref(
        self, future: Any, token: Token, split: tuple[str | int, ...] | None
    ) -> payload_pb2.Value:
        """A Value referring to a future this bridge keeps, and, when ``split`` (the
        path of the part its consumers map over: () for the whole value), the elements
        of that part, as a Python worker splits a result (``encode_result``): a part
        was never split, so mapping over ``result["col"]`` failed (a re-trial)."""
        from headwater_runtime.dask import length_of, select
        from headwater_runtime.engine import At

        metadata: dict[str, str] = {}
        items: list[payload_pb2.Value] = []
        if split is not None:
            try:
                n = self.client.submit(length_of, future, split, pure=False).result()
            except (LookupError, TypeError):  # the path does not fit: not split, as
                n = None  # a Python worker does (its consumer says it is no sequence)
            if n is not None:
                # Each element travels as a reference in the one result message: refuse
                # what cannot fit before submitting a selection task per element.
                ceiling = message_ceiling(self.max_message_bytes)
                if n * REF_ITEM_BYTES > ceiling:
                    raise EncodingError(
                        f"its {n:,} elements do not fit in one message ({ceiling // 1024:,} "
                        "KiB under the server's max_message_bytes) even as references: "
                        "map over fewer, larger elements (chunks of the list)"
                    )
                metadata[LENGTH_KEY] = str(n)
                if split:
                    metadata[SPLIT_PATH_KEY] = json.dumps(list(split))
                for i in range(n):
                    part = self.client.submit(select, future, (*split, At(i)), pure=False)
                    items.append(self._hold(part, token, {}))
        value = self._hold(future, token, metadata)
        value.items.extend(items)
        return value

    def _hold(self, future: Any, token: Token, metadata: dict[str, str]) -> payload_pb2.Value:
        payload_id = f"dask-{uuid.uuid4().hex}"
        with self.lock:
            self.values[payload_id] = future
            self._made_by[payload_id] = token
        ref = payload_pb2.PayloadRef(
            payload_id=payload_id,
            location=DASK_LOCATION,
            dask_key=str(future.key),
            metadata=metadata,
        )
        return payload_pb2.Value(ref=ref)

    def _drop(self, attempt: _Attempt) -> None:
        super()._drop(attempt)
        entry = self._futures.pop(attempt.token, None)
        if entry is not None:  # a running Dask task is not stopped by cancel(): interrupt it
            from headwater_runtime.dask import closed_client_ignored, interrupt_everywhere

            future, key = entry
            with closed_client_ignored():  # (its scheduler went away: the stop goes on)
                future.cancel()
                interrupt_everywhere(self.client, [key])

    # Releasing ----------------------------------------------------------------------

    def release(self, request: worker_pb2.ReleaseValues) -> int:
        """Drop the futures of values the server no longer needs (Dask frees a value
        once no client holds a future of it and no task waits for it); how many."""
        with self.lock:
            if request.keep and not request.all:  # more of a long keep list follows
                self._keep.update(request.keep)
                return 0
            if request.all:
                # Keep what the server names, and what it may still learn of: results
                # of attempts running now or whose outcome it has not acknowledged
                # (resent after a Welcome).
                keep, self._keep = self._keep | set(request.keep), set()
                live = set(self.running) | set(self.unacked)
                gone = [
                    pid
                    for pid, token in self._made_by.items()
                    if pid not in keep and token not in live
                ]
            else:
                gone = [pid for pid in request.payload_ids if pid in self.values]
            for payload_id in gone:
                del self.values[payload_id]
                del self._made_by[payload_id]
        return len(gone)

    # Exports ------------------------------------------------------------------------

    def export(self, payload_id: str) -> worker_pb2.ConnectRequest:
        """Fetch a held value from the cluster and encode it for any worker."""
        answer = worker_pb2.ValueExported(payload_id=payload_id)
        future = self.values.get(payload_id)
        try:
            if future is None:
                raise LookupError(f"this Dask bridge does not hold value {payload_id!r}")
            assert self.transfer is not None
            value = encode_result(
                future.result(),
                result_encoding="",
                split=False,
                inline_limit=self.inline_limit,
                transfer=self.transfer,
            )
            answer.value.CopyFrom(value)
        except Exception as exc:
            answer.error.CopyFrom(failure_to_proto(failure_from_exception(exc)))
        return worker_pb2.ConnectRequest(value_exported=answer)


#: How often the bridge checks that its Dask client still has a scheduler (seconds).
CLUSTER_CHECK = 1.0
#: Seconds a bridge started on a cluster without workers waits for one to join before
#: it says hello with 1 slot (its slots are the cluster's threads, said once).
WORKERS_WAIT = 30.0


class DaskBridgeWorker(Worker):
    """A Worker whose attempts run on a Dask cluster (see the module docstring).

    Args:
        dask: ``"local"`` (start a LocalCluster) or a scheduler address.
        slots: most attempts at once (default: the cluster's total threads).
        n_workers / threads_per_worker: the LocalCluster's size (``dask="local"``).
        Other arguments as for Worker.
    """

    extra_features = (RELEASE_VALUES,)

    def __init__(
        self,
        server: str,
        modules: Iterable[str] = (),
        *,
        dask: str = "local",
        slots: int | None = None,
        n_workers: int | None = None,
        threads_per_worker: int | None = None,
        on_connect: Callable[[Worker], None] | None = None,
        **options: Any,
    ) -> None:
        from headwater_runtime.dask import DaskExecutor

        local = dask == "local"
        self.executor = DaskExecutor(
            None if local else dask,
            n_workers=n_workers if local else None,
            threads_per_worker=threads_per_worker if local else None,
        )
        client = self.executor.client
        try:
            threads: dict[str, int] = client.nthreads()
            if not threads and slots is None:
                # Slots are said once, in Hello: a cluster whose workers join later
                # kept this bridge at 1 slot (a trial). Wait a while for one.
                log.warning(
                    "the Dask cluster at %s has no workers yet: waiting up to %gs for "
                    "one to size this worker's slots (--slots N sets them)",
                    dask,
                    WORKERS_WAIT,
                )
                with contextlib.suppress(Exception):  # (none came: 1 slot, as before)
                    client.wait_for_workers(1, timeout=WORKERS_WAIT)
                threads = client.nthreads()
            default = max(1, sum(threads.values()))
            super().__init__(
                server,
                modules,
                slots=default if slots is None else slots,
                on_connect=on_connect,
                **options,
            )
        except BaseException:
            self.executor.shutdown()
            raise
        self._ship_by_value()
        self.attempts = DaskAttempts(self.tasks, self.slots, self.name, self._send, client)
        self._lock = self.attempts.lock
        self.dask_address = str(getattr(client.scheduler, "address", ""))

    def _ship_by_value(self) -> None:
        """The task modules may not be importable on the cluster's workers: send
        their functions by value rather than by module name (as ``run --dask`` does)."""
        import sys

        import cloudpickle

        for task in self.tasks.values():
            name = getattr(task.fn, "__module__", "")
            module = sys.modules.get(name)
            if module is not None and not name.startswith(("headwater", "builtins")):
                cloudpickle.register_pickle_by_value(module)

    def run(self) -> None:
        """Serve like ``Worker.run``, then shut down the Dask client (and a LocalCluster
        the bridge started). ConnectionError when the Dask client closed on its own (the
        scheduler went away and did not come back within its reconnect time): the
        bridge stopped there, where it stayed connected with every slot taken by
        attempts that could never end, and its runs hung."""
        gone: list[str] = []
        watch = threading.Thread(
            target=self._watch_cluster, args=(gone,), name="headwater-dask-watch", daemon=True
        )
        watch.start()
        try:
            super().run()
        finally:
            self._stop.set()
            self.executor.shutdown()
        if gone:  # (the CLI exits 3: the scheduler is unavailable, try again)
            raise ConnectionError(gone[0])

    def _watch_cluster(self, gone: list[str]) -> None:
        from headwater_runtime.dask import client_closed

        client = self.executor.client
        attempts = self.attempts
        assert isinstance(attempts, DaskAttempts)
        while not self._stop.is_set():
            attempts.cluster_gone.wait(CLUSTER_CHECK)  # (an attempt may wake it)
            if self._stop.is_set():
                return
            if client_closed(client):
                gone.append(
                    f"the Dask client closed: the scheduler at {self.dask_address} went away "
                    "(restart the scheduler and its workers, then this worker; its attempts "
                    "are dispatched again)"
                )
                log.error("%s; stopping", gone[0])
                self.stop()
                return

    def _release(self, request: worker_pb2.ReleaseValues) -> None:
        attempts = self.attempts
        assert isinstance(attempts, DaskAttempts)
        released = attempts.release(request)
        log.debug("released %d values held in the Dask cluster", released)

    def _export(self, request: worker_pb2.ExportValue) -> None:
        attempts = self.attempts
        assert isinstance(attempts, DaskAttempts)

        def work() -> None:
            answer = attempts.export(request.payload_id)
            if answer.value_exported.HasField("error"):
                log.warning(
                    "could not export %s: %s",
                    request.payload_id,
                    answer.value_exported.error.message,
                )
            else:
                value = answer.value_exported.value
                # (an upload's Value is a reference of a hundred bytes: the bytes it
                # names are what was exported; "127 bytes" for 200 MB, a trial)
                size = value.ref.size_bytes if value.HasField("ref") else value.ByteSize()
                log.info(
                    "exported value %s (%d bytes) for another worker or a client",
                    request.payload_id,
                    size,
                )
            self._send(answer)

        threading.Thread(target=work, name="headwater-export", daemon=True).start()
