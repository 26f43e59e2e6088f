"""``@task``: a plain function plus the options the runtime honours."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, Unpack, overload

from . import _compiler
from ._code import VERSION_PREFIX, SourceSnapshot, defined_in_a_class
from ._errors import FlowDefinitionError
from ._options import ParsedOptions, TaskOptions, check_label, check_names, parse_options
from ._refs import contains_ref

P = ParamSpec("P")
R = TypeVar("R")


def module_name(fn: Callable[..., Any]) -> str:
    """The module a function is imported as; a script run directly (``__main__``) is
    named by its file stem, as ``headwater worker --module STEM`` would import it."""
    module = getattr(fn, "__module__", None) or "__main__"
    if module == "__main__":
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if main_file:
            return Path(main_file).stem
    return module


class Task(Generic[P, R]):
    """A task: call it in a flow to add a node; call it elsewhere to run the function.

    Args:
        fn: the function.
        **options: see ``task``.
    """

    def __init__(self, fn: Callable[P, R], **options: Unpack[TaskOptions]) -> None:
        if not callable(fn):
            raise FlowDefinitionError(f"@task needs a function, got {type(fn).__name__}")
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            # Called on a worker thread it would return a coroutine, never awaited, and
            # the task would "succeed" with that object as its result.
            raise FlowDefinitionError(
                f"task {getattr(fn, '__name__', 'task')!r} is an async function: tasks "
                "are plain functions (run the coroutine inside one: asyncio.run(...))"
            )
        if inspect.isgeneratorfunction(fn):
            # Its result would be a generator object: no server can store or send it,
            # and a reader would find it exhausted.
            raise FlowDefinitionError(
                f"task {getattr(fn, '__name__', 'task')!r} is a generator function: a task "
                "returns its result (return list(...) of what it yields)"
            )
        self.fn = fn
        self.name: str = check_label(
            "task", options.get("name") or str(getattr(fn, "__name__", "task"))
        )
        check_names(options, TaskOptions, self.name)
        self.task_type = options.get("task_type") or (
            f"{module_name(fn)}.{getattr(fn, '__qualname__', self.name)}"
        )
        self._apply(parse_options(options, self.name, remote=False))
        self.signature = _signature(fn, self.name)
        params = list(self.signature.parameters.values())
        if params and params[0].name == "self" and defined_in_a_class(fn):
            raise FlowDefinitionError(
                f"task {self.name!r}: @task on a method is not supported (self would be one "
                "of its arguments); make the task from the bound method, task(obj.method), "
                "or a plain function"
            )
        if "wait_for" in self.signature.parameters:
            raise FlowDefinitionError(
                f"task {self.name!r}: an argument named 'wait_for' is reserved (it orders "
                "a task call after others: task(..., wait_for=[...])); rename it"
            )
        self._argument_order = tuple(self.signature.parameters)  # read once per task call
        params = list(self.signature.parameters.values())
        # Fast argument binding for the common case (plain named parameters); anything
        # else, and every error message, goes through inspect.Signature.bind.
        self._plain_names: tuple[str, ...] | None = None
        if all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params):
            self._plain_names = tuple(p.name for p in params)
            self._plain_set = frozenset(self._plain_names)
            self._required = tuple(p.name for p in params if p.default is p.empty)
        self._options: TaskOptions = options
        code_version = options.get("code_version", "")
        if not isinstance(code_version, str):
            raise FlowDefinitionError(f"task {self.name!r}: code_version must be a str")
        self._digest: str | None = VERSION_PREFIX + code_version if code_version else None
        # The source as imported, so that a file edited later does not change the
        # digest of the code this process runs (see _code).
        self._source = SourceSnapshot(fn) if self._digest is None else None
        functools.update_wrapper(self, fn)

    def _apply(self, parsed: ParsedOptions) -> None:
        """Take the policies of validated options."""
        self.retry = parsed.retry
        self.no_retry_on = parsed.no_retry_on
        self.timeout = parsed.timeout
        self.schedule_to_start_timeout = parsed.schedule_to_start_timeout
        self.trigger = parsed.trigger
        self.cache = parsed.cache
        self.tags = parsed.tags
        self.labels = parsed.labels
        self.resources = parsed.resources
        self.version = parsed.version
        self.portable = parsed.portable

    @property
    def code_digest(self) -> str:
        """The digest of this task's code (docs/flows.md, "No stale code"): graphs
        carry it, workers report it, and a server gives the task only to workers whose
        digest is the same. ``"v:" + code_version`` when the task names its version."""
        if self._digest is not None:
            return self._digest
        return self._source.digest() if self._source is not None else ""

    @property
    def argument_order(self) -> tuple[str, ...]:
        """Parameter names in positional order (sent to workers with each assignment)."""
        return self._argument_order

    @property
    def has_function(self) -> bool:
        """Whether this process can run the task (False for a remote task)."""
        return True

    def bind_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Arguments by parameter name, as given (defaults are left to the function)."""
        names = self._plain_names
        if names is not None and len(args) <= len(names):
            if not kwargs and len(args) >= len(self._required):
                # Positional only, every required one given (they come first).
                return dict(zip(names, args, strict=False))
            bound = dict(zip(names, args, strict=False))
            ok = True
            for key, value in kwargs.items():
                if key in bound or key not in self._plain_set:
                    ok = False
                    break
                bound[key] = value
            if ok and all(r in bound for r in self._required):
                return bound
        try:
            return dict(self.signature.bind(*args, **kwargs).arguments)
        except TypeError as exc:
            raise FlowDefinitionError(
                f"task {self.name!r}: {self._call_problem(kwargs, exc)}"
            ) from None

    def _call_problem(self, kwargs: dict[str, Any], exc: TypeError) -> str:
        """Why a call does not fit the signature: an unknown keyword first (Python names
        the missing argument the typo left out, not the typo)."""
        params = self.signature.parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            named = {
                n for n, p in params.items() if p.kind is not inspect.Parameter.POSITIONAL_ONLY
            }
            unknown = [k for k in kwargs if k not in named]
            if unknown:
                return (
                    f"got an unexpected keyword argument {unknown[0]!r} "
                    f"(its arguments: {', '.join(params) or 'none'})"
                )
        return str(exc)

    def with_options(self, **overrides: Unpack[TaskOptions]) -> Task[P, R]:
        """A copy of this task with some options changed (same function)."""
        check_names(overrides, TaskOptions, self.name)
        merged: TaskOptions = {**self._options, **overrides}
        return Task(self.fn, **merged)

    def __call__(self, /, *args: Any, **kwargs: Any) -> R:
        ctx = _compiler.current_context()
        if ctx is not None:
            # Inside a flow the call is recorded, and a TaskRef stands in for the R it
            # will be when the flow runs: typed as R so flows type-check like plain code.
            return ctx.add_call(self, args, kwargs, mapped=False)  # type: ignore[return-value]
        wait_for = kwargs.pop("wait_for", None)
        if wait_for is not None or contains_ref(args) or contains_ref(kwargs):
            raise FlowDefinitionError(
                f"task {self.name!r} was called outside a flow with a task result or "
                "wait_for; call it inside a @flow function, or pass plain values to "
                "run the function directly"
            )
        return self.fn(*args, **kwargs)

    def map(self, /, *args: Any, **kwargs: Any) -> list[R]:
        """Run once per element of the arguments (zipped); wrap an argument in
        ``unmapped(...)`` to pass it whole to every run. Outside a flow, a plain loop."""
        ctx = _compiler.current_context()
        if ctx is not None:
            # As in __call__: a TaskRef (to the mapped results) stands in for list[R].
            return ctx.add_call(self, args, kwargs, mapped=True)  # type: ignore[return-value]
        return _compiler.map_eagerly(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name} ({self.task_type})>"


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def task(**options: Unpack[TaskOptions]) -> Callable[[Callable[P, R]], Task[P, R]]: ...
def task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Declare a task. Use bare (``@task``) or with options (``@task(retries=3)``).

    Options:
        name: display name (default: the function's name).
        task_type: the capability a worker needs (default ``module.qualname``).
        retries: how many times a failed attempt is retried (default 0).
        retry_delay: seconds (or a timedelta) before the first retry.
        backoff: factor the delay grows by on each further retry (default 1).
        max_retry_delay: upper bound of the delay.
        retry_jitter: j in [0, 1]: each delay is multiplied by a factor in [1 - j, 1 + j],
            its own for each flow run, task run and retry (a hash: deterministic).
        no_retry_on: exception classes that are never retried.
        timeout: seconds (or a timedelta) an attempt may run.
        schedule_to_start_timeout: seconds (or a timedelta) a ready attempt may wait for
            a worker on a server before it fails (``headwater.ScheduleToStartTimeout``,
            not retried); default: it waits until a worker can take it.
        trigger: when the task runs given its upstreams' final states:
            all_successful (default), all_finished, all_failed, any_successful,
            any_failed, none_failed.
        cache_key_fn: a function of the inputs (by name) returning the cache key.
        cache_for: cache results for this long (keyed by the inputs by default).
        cache_version: change it to invalidate cached results.
        tags: tags (e.g. for concurrency limits).
        labels: worker labels the task needs (affinity), e.g. ``{"gpu": "true"}``.
        resources: Dask worker resources, e.g. ``{"GPU": 1}``.
        version: the task's version (part of cache keys).
        portable: inputs and result must be json (read by any language).
        code_version: the version of the task's code, chosen by you: workers whose code
            for the task has the same code_version run it, whatever its source. Without
            it, the task's source (and what it reads of its module) is compared, and a
            worker with other code is not given the task (docs/flows.md).
    """
    if fn is not None:
        return Task(fn, **options)
    return lambda f: Task(f, **options)


def _signature(fn: Callable[..., Any], name: str) -> inspect.Signature:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise FlowDefinitionError(
            f"task {name!r}: cannot read the function's signature ({exc})"
        ) from exc
