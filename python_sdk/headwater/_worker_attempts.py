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

import ctypes
import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from headwater.v1 import state_pb2, worker_pb2
from headwater_runtime.engine import TaskSkipped, TaskSucceeded
from headwater_runtime.execution import (
    TaskInterrupted,
    execute,
    failure_from_exception,
    make_caller,
)
from headwater_runtime.tracing import active_tracer

from ._payloads import EncodingError
from ._task import Task
from ._worker_codec import (
    TEXT_LIMIT,
    PayloadTransfer,
    PayloadTransferError,
    decode_inputs,
    encode_result,
    failure,
    failure_message,
)
from ._worker_tracing import execute_traced

log = logging.getLogger("headwater.worker")

Token = tuple[str, int]
Send = Callable[[worker_pb2.ConnectRequest], None]


def key_of(token: worker_pb2.FencingToken) -> Token:
    return (token.task_run_id, token.attempt)


def fencing(token: Token) -> worker_pb2.FencingToken:
    return worker_pb2.FencingToken(task_run_id=token[0], attempt=token[1])


def seconds(duration: Any) -> float:
    """Seconds of a Duration or Timestamp message."""
    return float(duration.seconds) + float(duration.nanos) / 1e9


def failure_report(
    token: Token, message: state_pb2.Failure, *, timed_out: bool = False
) -> worker_pb2.ConnectRequest:
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


class TaskLogHandler(logging.Handler):
    """Sends records logged on an attempt's thread to the server as TaskLog."""

    def __init__(self, send: Send) -> None:
        super().__init__()
        self.send = send
        self.threads: dict[int, worker_pb2.FencingToken] = {}

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: emit is thread-safe, and taking it could deadlock against a
        # thread that logs while holding the worker's lock.
        if record.thread in self.threads:
            self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        token = self.threads.get(record.thread or 0)
        if token is None:
            return
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
        except Exception:
            message = str(record.msg)
        entry = worker_pb2.TaskLog(
            token=token, level=record.levelname, logger=record.name, message=message[:TEXT_LIMIT]
        )
        entry.timestamp.FromNanoseconds(int(record.created * 1e9))
        self.send(worker_pb2.ConnectRequest(log=entry))


class Attempts:
    """Runs assignments and reports what happens to them through ``send``.

    ``lock`` guards everything here; the worker holds it too when it must see the
    attempts and its session in one consistent state (Hello, Welcome).
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
        self.log_handler = TaskLogHandler(send)
        self.transfer: PayloadTransfer | None = None
        self.inline_limit = 0  # the last Welcome's, so results encode as asked offline too
        self.tracer = active_tracer()  # None: tracing off, no per-attempt cost

    def held(self) -> list[Token]:
        """Attempts the server should know about: running or not acknowledged."""
        with self.lock:
            return sorted(set(self.running) | set(self.unacked))

    def heartbeat(self) -> worker_pb2.Heartbeat:
        with self.lock:
            running = [fencing(t) for t in self.running]
        used = len(running)
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
            return list(self.unacked.values())

    def acked(self, token: Token) -> None:
        with self.lock:
            self.unacked.pop(token, None)

    def abandon_all(self) -> None:
        with self.lock:
            for attempt in list(self.running.values()):
                self._drop(attempt)
            self.unacked.clear()

    def assign(self, assignment: worker_pb2.Assignment) -> None:
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
            if len(self.running) >= self.slots:
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
            name = f"headwater-task-{token[0]}#{token[1]}"
            threading.Thread(target=self._thread, args=(attempt,), name=name, daemon=True).start()
            if limit is not None:
                attempt.timer = threading.Timer(limit, self._expire, args=(attempt, limit))
                attempt.timer.daemon = True
                attempt.timer.start()

    def cancel(self, token: Token) -> None:
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
            why = f"task {attempt.assignment.task_type} exceeded its timeout of {limit:g}s"
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

    def _thread(self, attempt: _Attempt) -> None:
        try:
            with self.lock:
                if self.running.get(attempt.token) is not attempt:
                    return
                attempt.ident = threading.get_ident()
                self.log_handler.threads[attempt.ident] = attempt.assignment.token
            started = worker_pb2.TaskStarted(token=attempt.assignment.token)
            started.started_at.GetCurrentTime()
            self.send(worker_pb2.ConnectRequest(started=started))
            if self.tracer is None:
                outcome = self._execute(attempt)
            else:
                run = functools.partial(self._execute, attempt)
                outcome = execute_traced(self.tracer, attempt.assignment, self.worker_name, run)
            self._seal(attempt)
            with self.lock:
                if self.running.get(attempt.token) is attempt:
                    self._drop(attempt)
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

    def _seal(self, attempt: _Attempt) -> None:
        """From here on the attempt's thread is not interrupted."""
        with self.lock:
            attempt.interruptible = False
            _interrupt_thread(threading.get_ident(), None)

    def _execute(self, attempt: _Attempt) -> worker_pb2.ConnectRequest:
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
        event = execute(make_caller(task.fn), inputs, token[0], token[1], task.no_retry_on)
        self._seal(attempt)  # encoding and uploading the result are not interrupted
        if isinstance(event, TaskSkipped):
            skipped = worker_pb2.TaskSkipped(token=assignment.token, reason=event.reason)
            return worker_pb2.ConnectRequest(skipped=skipped)
        if not isinstance(event, TaskSucceeded):
            return failure_report(token, failure_message(event.failure))
        try:
            value = encode_result(
                event.value,
                result_encoding=assignment.result_encoding,
                split=assignment.split_result,
                inline_limit=self.inline_limit,
                transfer=transfer,
            )
        except EncodingError as exc:
            bad = failure("headwater.EncodingError", str(exc), retryable=False)
            return failure_report(token, bad)
        except PayloadTransferError as exc:
            lost = failure("headwater.PayloadTransferError", str(exc), retryable=True)
            return failure_report(token, lost)
        except Exception as exc:  # any other encoding trouble must still be reported
            message = f"{type(exc).__name__}: {exc}"
            bad = failure("headwater.EncodingError", message, retryable=False)
            return failure_report(token, bad)
        result = worker_pb2.TaskResult(token=assignment.token, result=value)
        return worker_pb2.ConnectRequest(result=result)
