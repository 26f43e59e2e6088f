"""Running one task function and turning its outcome into an engine event.

Shared by every Python executor (embedded threads, Dask, the Python worker), so a
task behaves the same wherever it runs.
"""

from __future__ import annotations

import contextvars
import inspect
import traceback
from collections.abc import Callable
from typing import Any

from headwater.wire import FailureInfo
from headwater_runtime.engine import TaskFailed, TaskSkipped, TaskSucceeded


class Skip(Exception):
    """Raise (or return) from a task to skip it; downstream tasks skip too unless their
    trigger says otherwise."""


class TaskInterrupted(BaseException):
    """Raised inside a task's thread to stop it (timeout or cancellation).

    A BaseException so that a task's own ``except Exception`` does not swallow it.
    """


def error_type_name(exc_type: type[BaseException]) -> str:
    """``module.QualName`` of an exception class, e.g. ``builtins.ValueError``."""
    return f"{exc_type.__module__}.{exc_type.__qualname__}"


def failure_from_exception(
    exc: BaseException,
    no_retry_on: tuple[type[BaseException], ...] = (),
    depth: int = 0,
) -> FailureInfo:
    """A structured failure (type, message, traceback, cause, retryable)."""
    cause_exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    cause = None
    if cause_exc is not None and depth < 5:
        cause = failure_from_exception(cause_exc, no_retry_on, depth + 1)
    return FailureInfo(
        type=error_type_name(type(exc)),
        message=str(exc),
        traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        retryable=not isinstance(exc, no_retry_on) and not isinstance(exc, Skip),
        cause=cause,
        exception=exc,
    )


Caller = Callable[[dict[str, Any]], Any]

#: The attempt this thread is executing: ``(launcher, key, attempt)``, where the
#: launcher is the host's (an EmbeddedRun, the Python worker's) and ``key`` names the
#: task run to that host. A flow called inside a task body reads it to start a child
#: flow run linked to the task run (docs/flows.md, "Flows started by tasks").
_TASK: contextvars.ContextVar[tuple[Any, str, int] | None] = contextvars.ContextVar(
    "headwater_task", default=None
)


def current_task() -> tuple[Any, str, int] | None:
    """``(launcher, key, attempt)`` of the task attempt running in this thread, if any."""
    return _TASK.get()


def make_caller(fn: Callable[..., Any]) -> Caller:
    """A function that calls ``fn`` with arguments given by parameter name.

    Keyword calls cover most functions; positional-only parameters and ``*args`` /
    ``**kwargs`` are rebuilt from the signature.
    """
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return lambda inputs: fn(**inputs)
    simple = all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params)
    if simple:
        return lambda inputs: fn(**inputs)

    def call(inputs: dict[str, Any]) -> Any:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for p in params:
            if p.name not in inputs:
                continue
            value = inputs[p.name]
            if p.kind is p.POSITIONAL_ONLY:
                args.append(value)
            elif p.kind is p.VAR_POSITIONAL:
                args.extend(value)
            elif p.kind is p.VAR_KEYWORD:
                kwargs.update(value)
            else:
                kwargs[p.name] = value
        return fn(*args, **kwargs)

    return call


def execute(
    caller: Caller,
    inputs: dict[str, Any],
    key: str,
    attempt: int,
    no_retry_on: tuple[type[BaseException], ...] = (),
    launcher: Any = None,
) -> TaskSucceeded | TaskFailed | TaskSkipped:
    """Run a task function once and describe the outcome as an engine event.

    ``launcher`` (the host) is what a flow called inside the task starts its child
    flow run with (``current_task``)."""
    token = _TASK.set((launcher, key, attempt)) if launcher is not None else None
    try:
        value = caller(inputs)
    except Skip as signal:
        return TaskSkipped(key, attempt, str(signal))
    except TaskInterrupted:
        raise
    except BaseException as exc:  # a task's SystemExit must not kill the host
        return TaskFailed(key, attempt, failure_from_exception(exc, no_retry_on))
    finally:
        if token is not None:
            _TASK.reset(token)
    if isinstance(value, Skip):
        return TaskSkipped(key, attempt, str(value))
    return TaskSucceeded(key, attempt, value)
