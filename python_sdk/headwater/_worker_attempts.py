"""The attempts a worker holds: running ones and finished ones not yet acknowledged.

Every attempt runs on its own daemon thread (slots bound how many), and a timer per
attempt enforces its timeout. Python cannot kill a thread, so a cancelled, timed-out
or abandoned attempt is interrupted the way the embedded host does it (TaskInterrupted
raised in its thread, which stops Python code at its next bytecode) and its slot is
freed at once. Only the first of "finished", "cancelled", "timed out" or "abandoned"
counts: whoever removes the attempt from ``running`` (under the lock) reports it.

Outcomes (result, failure, skip) are kept until the server acknowledges them, so that
they survive a reconnect.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from queue import SimpleQueue
from typing import Any

from headwater.v1 import graph_pb2, state_pb2, worker_pb2
from headwater.wire import (
    GRPC_MESSAGE_LIMIT,
    TEXT_LIMIT,
    EncodingError,
    PayloadTransfer,
    PayloadTransferError,
    cut_text,
    failure_to_proto,
    path_from_proto,
    seconds,
    timestamp,
)
from headwater_runtime.engine import TaskSkipped, TaskSucceeded
from headwater_runtime.execution import (
    Caller,
    LogSink,
    TaskInterrupted,
    execute,
    failure_from_exception,
    flush_partial_lines,
    make_caller,
    task_output,
)
from headwater_runtime.tracing import active_tracer

from ._task import Task
from ._worker_codec import decode_inputs, encode_result, failure

log = logging.getLogger("headwater.worker")

Token = tuple[str, int]

#: How long an attempt waits for the server's answer to its cache key before running
#: anyway (a missed answer costs a recomputation, never a wrong result).
DECISION_WAIT = 30.0
#: TaskStarted is sent only for attempts still running this long after they started.
#: A result that comes first implies the start (the server accepts an outcome without
#: it), which spares a short task a message and a journal entry on the server.
STARTED_DELAY = 0.05
Send = Callable[[worker_pb2.ConnectRequest], None]


def key_of(token: worker_pb2.FencingToken) -> Token:
    """A FencingToken as a hashable ``(task run id, attempt)`` key."""
    return (token.task_run_id, token.attempt)


def fencing(token: Token) -> worker_pb2.FencingToken:
    """The FencingToken message for a ``(task run id, attempt)`` key."""
    return worker_pb2.FencingToken(task_run_id=token[0], attempt=token[1])


def failure_report(
    token: Token, message: state_pb2.Failure, *, timed_out: bool = False
) -> worker_pb2.ConnectRequest:
    """The message reporting that an attempt failed (``timed_out``: by its timeout)."""
    report = worker_pb2.TaskFailure(token=fencing(token), failure=message, timed_out=timed_out)
    return worker_pb2.ConnectRequest(failure=report)


def _interrupt_thread(ident: int, exc: type[BaseException] | None) -> None:
    # None clears a pending interruption (PyThreadState_SetAsyncExc with NULL).
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), None if exc is None else ctypes.py_object(exc)
    )


@dataclass(eq=False)
class _Attempt:
    token: Token
    assignment: worker_pb2.Assignment
    task: Task[..., Any]
    ident: int | None = None  # the thread running it, once started
    interruptible: bool = True
    timer: threading.Timer | None = None
    started_ns: int = 0  # when its thread began it (time.time_ns), once it has


class TaskLogHandler(logging.Handler):
    """Sends records logged on an attempt's thread to the server as TaskLog.

    Args:
        send: queues a message on the worker's stream.
    """

    def __init__(self, send: Send) -> None:
        super().__init__()
        self.send = send
        self.threads: dict[int, worker_pb2.FencingToken] = {}

    def handle(self, record: logging.LogRecord) -> bool:
        """Emit records from attempts' threads only (other threads' records are not
        the task's)."""
        # No handler lock: emit is thread-safe, and taking it could deadlock against a
        # thread that logs while holding the worker's lock.
        if record.thread in self.threads:
            self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        """Send the record (with its traceback, cut to TEXT_LIMIT) as its attempt's TaskLog."""
        token = self.threads.get(record.thread or 0)
        if token is None:
            return
        flush_partial_lines(record.thread or 0)  # what it printed before, first
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
        except Exception:
            message = str(record.msg)
        entry = worker_pb2.TaskLog(
            token=token,
            level=record.levelname,
            logger=record.name,
            message=cut_text(message, TEXT_LIMIT),
        )
        entry.timestamp.CopyFrom(timestamp(record.created))
        self.send(worker_pb2.ConnectRequest(log=entry))


class StartedReports:
    """Sends the TaskStarted of attempts still running after ``delay``, from one thread.

    The check and the send happen under the attempts' lock, and an outcome is reported
    under that lock after the attempt leaves ``running``: a TaskStarted never follows
    its attempt's outcome.

    Args:
        attempts: the attempts whose lock and ``send`` are used.
        delay: seconds an attempt must have run before its TaskStarted is sent.
    """

    def __init__(self, attempts: Attempts, delay: float = STARTED_DELAY) -> None:
        self.attempts = attempts
        self.delay = delay
        self._pending: deque[tuple[float, _Attempt, worker_pb2.TaskStarted]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, attempt: _Attempt) -> None:
        """Note that an attempt started now (its TaskStarted goes out after ``delay``)."""
        started = worker_pb2.TaskStarted(token=attempt.assignment.token)
        now = attempt.started_ns = time.time_ns()  # (GetCurrentTime: ~10x the cost)
        started.started_at.seconds, started.started_at.nanos = divmod(now, 1_000_000_000)
        with self._cond:
            self._pending.append((time.monotonic() + self.delay, attempt, started))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="headwater-started", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                due, attempt, started = self._pending[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                self._pending.popleft()
            attempts = self.attempts
            with attempts.lock:
                if attempts.running.get(attempt.token) is attempt:
                    attempts.send(worker_pb2.ConnectRequest(started=started))


class Attempts:
    """Runs assignments and reports what happens to them through ``send``.

    ``lock`` guards everything here; the worker holds it too when it must see the
    attempts and its session in one consistent state (Hello, Welcome).

    Args:
        tasks: the tasks this worker runs, by task type.
        slots: most attempts running at once; another assignment is refused.
        worker_name: the worker's display name (in error messages).
        send: queues a message on the worker's stream.
    """

    def __init__(
        self, tasks: Mapping[str, Task[..., Any]], slots: int, worker_name: str, send: Send
    ) -> None:
        self.tasks = tasks
        self.slots = slots
        self.worker_name = worker_name
        self.send = send
        self.lock = threading.RLock()
        self.running: dict[Token, _Attempt] = {}
        self.unacked: dict[Token, worker_pb2.ConnectRequest] = {}
        #: Outcomes sent again to a new session (the previous one ended unanswered).
        self.resent: set[Token] = set()
        self.log_handler = TaskLogHandler(send)
        self.transfer: PayloadTransfer | None = None
        self.inline_limit = 0  # the last Welcome's, so results encode as asked offline too
        self.max_message_bytes = GRPC_MESSAGE_LIMIT  # the last Welcome's, likewise
        self._decisions: dict[Token, tuple[threading.Event, list[bool]]] = {}
        self.started = StartedReports(self)
        self._jobs: SimpleQueue[_Attempt | None] = SimpleQueue()
        self._idle = 0  # pooled threads waiting on _jobs
        self._closed = False
        self.tracer = active_tracer()  # None: tracing off, no per-attempt cost
        #: Starts the flows a task calls as child runs (``execution.current_task``).
        self.launcher: Any = None
        self._callers: dict[Any, Caller] = {}
        #: Attempts waiting for flow runs they started, with how many (``lending``).
        self._lent: dict[Token, int] = {}

    def caller(self, task: Task[..., Any]) -> Caller:
        """How to call ``task``'s function with its inputs by name, made once per
        function: ``make_caller`` reads its signature (~10 µs, once per attempt before)."""
        fn = task.fn
        try:
            caller = self._callers.get(fn)
        except TypeError:  # an unhashable callable object
            return make_caller(fn)
        if caller is None:
            caller = self._callers[fn] = make_caller(fn)
        return caller

    def _busy(self) -> int:  # with the lock held
        """Slots in use: attempts running, less those waiting for a flow they started."""
        return len(self.running) - sum(1 for t in self._lent if t in self.running)

    @contextlib.contextmanager
    def lending(self, token: Token) -> Iterator[None]:
        """Around an attempt starting a flow run and waiting for it: its slot is lent,
        so that another attempt (the child's tasks among them) may take it meanwhile.
        The server lends it from the child's creation to its end, within this span,
        so it never sends an attempt this worker would refuse as full."""
        with self.lock:
            self._lent[token] = self._lent.get(token, 0) + 1
        try:
            yield
        finally:
            with self.lock:
                left = self._lent.pop(token, 1) - 1
                if left:
                    self._lent[token] = left

    def held(self) -> list[Token]:
        """Attempts the server should know about: running or not acknowledged."""
        with self.lock:
            return sorted(set(self.running) | set(self.unacked))

    def heartbeat(self) -> worker_pb2.Heartbeat:
        """A Heartbeat with the slots in use and the attempts running now."""
        with self.lock:
            running = [fencing(t) for t in self.running]
            used = self._busy()
        return worker_pb2.Heartbeat(
            used_slots=used, free_slots=max(0, self.slots - used), running=running
        )

    def keep(self, held: set[Token], keep: set[Token]) -> list[worker_pb2.ConnectRequest]:
        """After a Welcome: abandon what was held but not kept; the outcomes to resend."""
        with self.lock:
            for token in held - keep:
                attempt = self.running.get(token)
                if attempt is not None:
                    self._drop(attempt)
                self.unacked.pop(token, None)
            self.resent = set(self.unacked)
            return list(self.unacked.values())

    def acked(self, token: Token) -> bool:
        """The server answered this attempt's outcome (accepted or not): stop keeping it.
        True when the outcome was one sent again after a reconnect."""
        with self.lock:
            self.unacked.pop(token, None)
            if token in self.resent:
                self.resent.discard(token)
                return True
            return False

    def give_back_all(self) -> list[worker_pb2.ConnectRequest]:
        """Interrupt every running attempt; the TaskCancelled reports that give them
        back to the server (the worker is stopping: no loss to count)."""
        with self.lock:
            given: list[worker_pb2.ConnectRequest] = []
            for attempt in list(self.running.values()):
                self._drop(attempt)
                back = worker_pb2.TaskCancelled(token=attempt.assignment.token)
                given.append(worker_pb2.ConnectRequest(cancelled=back))
            return given

    def abandon_all(self) -> None:
        """Interrupt every running attempt and forget every unacknowledged outcome (the
        worker is stopping)."""
        with self.lock:
            for attempt in list(self.running.values()):
                self._drop(attempt)
            self.unacked.clear()

    def assign(self, assignment: worker_pb2.Assignment) -> None:
        """Start an assigned attempt on a thread, with its timeout; an unknown task type
        or a full worker is reported as a failure instead (a duplicate is ignored)."""
        token = key_of(assignment.token)
        with self.lock:
            if token in self.running or token in self.unacked:
                log.warning("ignoring a second assignment of %s attempt %d", *token)
                return
            task = self.tasks.get(assignment.task_type)
            if task is None:
                why = f"this worker cannot run task type {assignment.task_type!r}"
                unknown = failure("headwater.UnknownTaskType", why, retryable=False)
                self.send(failure_report(token, unknown))
                return
            if self._busy() >= self.slots:
                why = f"all {self.slots} slots of worker {self.worker_name!r} are busy"
                full = failure("headwater.WorkerFull", why, retryable=True)
                self.send(failure_report(token, full))
                return
            attempt = _Attempt(token, assignment, task)
            self.running[token] = attempt
            limit: float | None = None
            if assignment.HasField("timeout") and seconds(assignment.timeout) > 0:
                limit = seconds(assignment.timeout)
            elif assignment.HasField("deadline"):
                limit = max(0.0, seconds(assignment.deadline) - time.time())
            if self._idle:  # a pooled thread is waiting for work: hand it this attempt
                self._idle -= 1
                self._jobs.put(attempt)
            else:
                threading.Thread(target=self._pooled, args=(attempt,), daemon=True).start()
            if limit is not None:
                attempt.timer = threading.Timer(limit, self._expire, args=(attempt, limit))
                attempt.timer.daemon = True
                attempt.timer.start()

    def cancel(self, token: Token) -> None:
        """Interrupt a running attempt and report it TaskCancelled (no-op if it ended)."""
        with self.lock:
            attempt = self.running.get(token)
            if attempt is None:
                return
            self._drop(attempt)
            cancelled = worker_pb2.TaskCancelled(token=fencing(token))
            self.send(worker_pb2.ConnectRequest(cancelled=cancelled))

    def _expire(self, attempt: _Attempt, limit: float) -> None:
        with self.lock:
            if self.running.get(attempt.token) is not attempt:
                return
            self._drop(attempt)
            name = attempt.assignment.task_name or attempt.assignment.task_type
            why = f"task {name!r} exceeded its timeout of {limit:g}s"
            timeout = failure("headwater.TaskTimeout", why, retryable=True)
            self._report(attempt.token, failure_report(attempt.token, timeout, timed_out=True))

    def _drop(self, attempt: _Attempt) -> None:
        """Forget an attempt and stop its thread; it will report nothing more."""
        self.running.pop(attempt.token, None)
        if attempt.timer is not None:
            attempt.timer.cancel()
        if attempt.interruptible and attempt.ident is not None:
            _interrupt_thread(attempt.ident, TaskInterrupted)
        attempt.interruptible = False

    def _report(self, token: Token, message: worker_pb2.ConnectRequest) -> None:
        """Send an outcome and keep it until acknowledged."""
        self.unacked[token] = message
        self.send(message)

    # An attempt's thread -----------------------------------------------------------

    def _pooled(self, attempt: _Attempt) -> None:
        """Run attempts one after another, waiting for the next while idle.

        Threads are reused (creating one per attempt cost more than a no-op task), but
        never waited for: an attempt that was cancelled while stuck in C code keeps its
        thread busy, and the next attempt gets a new thread. At most ``slots`` threads
        wait idle.
        """
        while True:
            threading.current_thread().name = "headwater-task-{}#{}".format(*attempt.token)
            self._thread(attempt)
            with self.lock:
                if self._idle >= self.slots or self._closed:
                    return
                self._idle += 1
            job = self._jobs.get()
            if job is None:  # close()
                return
            attempt = job

    def close(self) -> None:
        """Let the idle pooled threads end (the worker stops)."""
        with self.lock:
            self._closed = True
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._jobs.put(None)

    def _thread(self, attempt: _Attempt) -> None:
        try:
            with self.lock:
                if self.running.get(attempt.token) is not attempt:
                    return
                attempt.ident = threading.get_ident()
                self.log_handler.threads[attempt.ident] = attempt.assignment.token
            self.started.add(attempt)
            # print() in the task goes to the server as its log lines (logging records
            # go there through log_handler).
            with task_output(self._printed(attempt.assignment.token), records=False):
                try:
                    if self.tracer is None:
                        outcome = self._execute(attempt)
                    else:
                        from ._worker_tracing import execute_traced  # OpenTelemetry: if on

                        run = functools.partial(self._execute, attempt)
                        outcome = execute_traced(
                            self.tracer, attempt.assignment, self.worker_name, run
                        )
                except TaskInterrupted:
                    raise
                except Exception as exc:
                    # The worker's own failure around the task (describing or encoding
                    # its outcome): the attempt fails; a thread dying here kept the
                    # attempt held, its run RUNNING and the slot taken for good.
                    log.exception("running %s failed", attempt.assignment.task_type)
                    failed = failure_to_proto(failure_from_exception(exc))
                    outcome = failure_report(attempt.token, failed)
            self._seal(attempt)
            with self.lock:
                if self.running.get(attempt.token) is attempt:
                    self._drop(attempt)
                    if outcome is not None:  # None: a cache hit the server recorded
                        _say_times(outcome, attempt.started_ns)
                        self._report(attempt.token, outcome)
        except TaskInterrupted:
            pass  # cancelled, timed out or abandoned: whoever did it reported it
        while True:  # one interruption may still be pending: absorb it, then clear it
            try:
                self._seal(attempt)
                self.log_handler.threads.pop(threading.get_ident(), None)
                return
            except TaskInterrupted:
                continue

    def _printed(self, token: worker_pb2.FencingToken) -> LogSink:
        """Sends the lines an attempt prints as its TaskLog records."""

        def sink(level: str, logger: str, message: str, at: float) -> None:
            entry = worker_pb2.TaskLog(
                token=token, level=level, logger=logger, message=cut_text(message, TEXT_LIMIT)
            )
            entry.timestamp.CopyFrom(timestamp(at))
            self.send(worker_pb2.ConnectRequest(log=entry))

        return sink

    def _seal(self, attempt: _Attempt) -> None:
        """From here on the attempt's thread is not interrupted."""
        with self.lock:
            attempt.interruptible = False
            _interrupt_thread(threading.get_ident(), None)

    def decided(self, token: Token, hit: bool) -> None:
        """The server's answer to a CacheKeyReport. A hit frees the slot at once (here,
        before the next message is read): the server may already have sent the next
        assignment for it."""
        with self.lock:
            waiting = self._decisions.get(token)
            attempt = self.running.get(token) if hit and waiting is not None else None
            if attempt is not None:
                # Not interrupted: its thread returns from the wait and reports nothing.
                del self.running[token]
                if attempt.timer is not None:
                    attempt.timer.cancel()
        if waiting is not None:
            waiting[1].append(hit)
            waiting[0].set()

    def _function_cache_key(
        self,
        attempt: _Attempt,
        inputs: dict[str, Any],
        compute: Callable[[Callable[[dict[str, Any]], Any]], Any] | None = None,
    ) -> str:
        """The key from the task's cache_key_fn when the server asks for one; "" when
        there is none (the task then runs uncached, as embedded). ``compute`` calls the
        key function where the inputs are (a Dask bridge: in the cluster)."""
        policy = attempt.assignment.cache
        if policy.key_source != graph_pb2.CACHE_KEY_SOURCE_FUNCTION:
            return ""
        cache = attempt.task.cache
        if cache is None or cache.key_fn is None:
            log.warning(
                "task %s has no cache_key_fn here; running it uncached",
                attempt.assignment.task_type,
            )
            return ""
        try:
            key = cache.key_fn(inputs) if compute is None else compute(cache.key_fn)
            if not isinstance(key, str):
                raise TypeError(f"cache_key_fn must return a str, not {type(key).__name__}")
        except TaskInterrupted:
            raise
        except Exception as exc:
            log.warning(
                "task run %s attempt %d: could not compute a cache key (%r); running it "
                "without the cache",
                *attempt.token,
                exc,
            )
            return ""
        return key

    def _cache_hit(self, attempt: _Attempt, key: str) -> bool:
        """Report a function-derived cache key and wait for the server's decision; on
        a hit the server has recorded the cached result and the task must not run."""
        waiting: tuple[threading.Event, list[bool]] = (threading.Event(), [])
        with self.lock:
            self._decisions[attempt.token] = waiting
        try:
            report = worker_pb2.CacheKeyReport(token=attempt.assignment.token, cache_key=key)
            self.send(worker_pb2.ConnectRequest(cache_key=report))
            deadline = time.monotonic() + DECISION_WAIT
            # Short waits: a cancel interrupts this thread only between bytecodes.
            while not waiting[0].wait(0.05):
                if time.monotonic() > deadline:
                    log.warning("no cache decision from the server; running the task")
                    return False
            return waiting[1][0]
        finally:
            with self.lock:
                self._decisions.pop(attempt.token, None)

    def _execute(self, attempt: _Attempt) -> worker_pb2.ConnectRequest | None:
        assignment, token = attempt.assignment, attempt.token
        transfer = self.transfer
        assert transfer is not None
        try:
            inputs = decode_inputs(assignment, transfer)
        except Exception as exc:
            cause = failure_from_exception(exc)
            why = f"cannot decode the inputs of {assignment.task_type}: {cause}"
            bad = failure("headwater.InputError", why, retryable=True, cause=cause)
            return failure_report(token, bad)
        task = attempt.task
        cache_key = self._function_cache_key(attempt, inputs)
        if cache_key and self._cache_hit(attempt, cache_key):
            return None
        event = execute(
            self.caller(task), inputs, token[0], token[1], task.no_retry_on, self.launcher
        )
        self._seal(attempt)  # encoding and uploading the result are not interrupted
        if isinstance(event, TaskSkipped):
            skipped = worker_pb2.TaskSkipped(token=assignment.token, reason=event.reason)
            return worker_pb2.ConnectRequest(skipped=skipped)
        if not isinstance(event, TaskSucceeded):
            return failure_report(token, failure_to_proto(event.failure))
        try:
            value = encode_result(
                event.value,
                result_encoding=assignment.result_encoding,
                split=assignment.split_result,
                split_path=path_from_proto(assignment.split_path),
                inline_limit=self.inline_limit,
                transfer=transfer,
                max_message_bytes=self.max_message_bytes,
            )
        except EncodingError as exc:
            bad = failure(
                "headwater.EncodingError", _encoding_message(assignment, exc), retryable=False
            )
            return failure_report(token, bad)
        except PayloadTransferError as exc:
            lost = failure("headwater.PayloadTransferError", str(exc), retryable=True)
            return failure_report(token, lost)
        except Exception as exc:  # any other encoding trouble must still be reported
            message = f"{type(exc).__name__}: {exc}"
            bad = failure("headwater.EncodingError", message, retryable=False)
            return failure_report(token, bad)
        result = worker_pb2.TaskResult(token=assignment.token, result=value, cache_key=cache_key)
        return worker_pb2.ConnectRequest(result=result)


def _encoding_message(assignment: worker_pb2.Assignment, exc: EncodingError) -> str:
    """One line naming the producer and, when known, who needed json."""
    if assignment.result_encoding != "json":
        return str(exc)
    if assignment.result_consumer:
        return (
            f"the result of task {assignment.task_name!r} must be json because "
            f"{assignment.result_consumer} reads it (a portable task or one implemented in "
            f"another language), but {exc}"
        )
    return f"the result of portable task {assignment.task_name!r} must be json, but {exc}"


def _say_times(outcome: worker_pb2.ConnectRequest, started_ns: int) -> None:
    """Put the attempt's start and end (now) on its outcome: the start is the server's
    RUNNING time for an attempt that ended before its TaskStarted went out
    (StartedReports' delay; it showed a duration of about 0); the end is its end time
    when the outcome arrives late (held while the server was away, it took in the
    outage)."""
    kind = outcome.WhichOneof("message")
    if kind in ("result", "failure", "skipped"):
        report = getattr(outcome, kind)
        if started_ns:
            report.started_at.seconds, report.started_at.nanos = divmod(started_ns, 1_000_000_000)
        report.ended_at.seconds, report.ended_at.nanos = divmod(time.time_ns(), 1_000_000_000)
