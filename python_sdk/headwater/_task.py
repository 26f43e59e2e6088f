"""``@task``: a plain function plus the options the runtime honours."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, overload

from headwater_runtime.engine import CacheSpec, RetrySpec, Trigger

from . import _compiler
from ._durations import to_seconds
from ._errors import FlowDefinitionError
from ._refs import contains_ref

P = ParamSpec("P")
R = TypeVar("R")

_TRIGGERS = {t.value: t for t in Trigger}


def module_name(fn: Callable[..., Any]) -> str:
    """The module a function is imported as; a script run directly (``__main__``) is
    named by its file stem, as ``headwater worker --module STEM`` would import it."""
    module = getattr(fn, "__module__", None) or "__main__"
    if module == "__main__":
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if main_file:
            return Path(main_file).stem
    return module


def parse_trigger(value: str | Trigger, task_name: str) -> Trigger:
    if isinstance(value, Trigger):
        return value
    trigger = _TRIGGERS.get(value) if isinstance(value, str) else None
    if trigger is None:
        raise ValueError(
            f"task {task_name!r}: unknown trigger {value!r}; use one of {', '.join(_TRIGGERS)}"
        )
    return trigger


def _str_map(value: Mapping[str, Any] | None, what: str, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise FlowDefinitionError(f"task {name!r}: {what} must be a dict of str to str")
    return {str(k): str(v) for k, v in value.items()}


class Task(Generic[P, R]):
    """A task: call it in a flow to add a node; call it elsewhere to run the function."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        task_type: str | None = None,
        retries: int = 0,
        retry_delay: float | timedelta = 0,
        backoff: float = 1.0,
        max_retry_delay: float | timedelta | None = None,
        retry_jitter: float = 0.0,
        no_retry_on: Iterable[type[BaseException]] = (),
        timeout: float | timedelta | None = None,
        trigger: str | Trigger = "all_successful",
        cache_key_fn: Callable[[dict[str, Any]], str] | None = None,
        cache_for: float | timedelta | None = None,
        cache_version: str = "",
        tags: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        resources: Mapping[str, float] | None = None,
        version: str = "",
        portable: bool = False,
    ) -> None:
        if not callable(fn):
            raise FlowDefinitionError(f"@task needs a function, got {type(fn).__name__}")
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__name__", "task"))
        self.task_type = task_type or f"{module_name(fn)}.{getattr(fn, '__qualname__', self.name)}"
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise ValueError(f"task {self.name!r}: retries must be an int >= 0, got {retries!r}")
        if backoff < 0:
            raise ValueError(f"task {self.name!r}: backoff must be >= 0, got {backoff!r}")
        if not 0 <= retry_jitter <= 1:
            raise ValueError(f"task {self.name!r}: retry_jitter must be in [0, 1]")
        self.no_retry_on = tuple(no_retry_on)
        for exc_type in self.no_retry_on:
            if not (isinstance(exc_type, type) and issubclass(exc_type, BaseException)):
                raise FlowDefinitionError(
                    f"task {self.name!r}: no_retry_on takes exception classes"
                )
        self.retry = RetrySpec(
            max_retries=retries,
            delay=to_seconds(retry_delay, f"task {self.name!r}: retry_delay") or 0.0,
            backoff=float(backoff),
            max_delay=to_seconds(max_retry_delay, f"task {self.name!r}: max_retry_delay"),
            jitter=float(retry_jitter),
            non_retryable=tuple(f"{t.__module__}.{t.__qualname__}" for t in self.no_retry_on),
        )
        self.timeout = to_seconds(timeout, f"task {self.name!r}: timeout", positive=True)
        self.trigger = parse_trigger(trigger, self.name)
        if cache_key_fn is not None and not callable(cache_key_fn):
            raise FlowDefinitionError(f"task {self.name!r}: cache_key_fn must be callable")
        expiry = to_seconds(cache_for, f"task {self.name!r}: cache_for", positive=True)
        self.cache: CacheSpec | None = None
        if cache_key_fn is not None or cache_for is not None:
            self.cache = CacheSpec(
                expiry=expiry,
                version=cache_version,
                key_fn=cache_key_fn,
                by_function=cache_key_fn is not None,
            )
        if isinstance(tags, str):
            tags = (tags,)
        self.tags = tuple(str(t) for t in tags)
        self.labels = _str_map(labels, "labels", self.name)
        self.resources = {str(k): float(v) for k, v in (resources or {}).items()}
        self.version = version
        self.portable = portable
        self.signature = _signature(fn, self.name)
        params = list(self.signature.parameters.values())
        # Fast argument binding for the common case (plain named parameters); anything
        # else, and every error message, goes through inspect.Signature.bind.
        self._plain_names: tuple[str, ...] | None = None
        if all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params):
            self._plain_names = tuple(p.name for p in params)
            self._plain_set = frozenset(self._plain_names)
            self._required = tuple(p.name for p in params if p.default is p.empty)
        self._options = {
            "name": name,
            "task_type": task_type,
            "retries": retries,
            "retry_delay": retry_delay,
            "backoff": backoff,
            "max_retry_delay": max_retry_delay,
            "retry_jitter": retry_jitter,
            "no_retry_on": self.no_retry_on,
            "timeout": timeout,
            "trigger": trigger,
            "cache_key_fn": cache_key_fn,
            "cache_for": cache_for,
            "cache_version": cache_version,
            "tags": self.tags,
            "labels": labels,
            "resources": resources,
            "version": version,
            "portable": portable,
        }
        functools.update_wrapper(self, fn)

    @property
    def argument_order(self) -> tuple[str, ...]:
        """Parameter names in positional order (sent to workers with each assignment)."""
        return tuple(self.signature.parameters)

    @property
    def has_function(self) -> bool:
        """Whether this process can run the task (False for a remote task)."""
        return True

    def bind_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Arguments by parameter name, as given (defaults are left to the function)."""
        names = self._plain_names
        if names is not None and len(args) <= len(names):
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
            raise FlowDefinitionError(f"task {self.name!r}: {exc}") from None

    def with_options(self, **overrides: Any) -> Task[P, R]:
        """A copy of this task with some options changed (same function)."""
        unknown = set(overrides) - set(self._options)
        if unknown:
            raise FlowDefinitionError(f"task {self.name!r}: unknown option(s) {sorted(unknown)}")
        return Task(self.fn, **{**self._options, **overrides})

    def __call__(self, *args: Any, **kwargs: Any) -> R:
        ctx = _compiler.current_context()
        if ctx is not None:
            return ctx.add_call(self, args, kwargs, mapped=False)  # type: ignore[return-value]
        wait_for = kwargs.pop("wait_for", None)
        if wait_for is not None or contains_ref(args) or contains_ref(kwargs):
            raise FlowDefinitionError(
                f"task {self.name!r} was called outside a flow with a task result or "
                "wait_for; call it inside a @flow function, or pass plain values to "
                "run the function directly"
            )
        return self.fn(*args, **kwargs)

    def map(self, *args: Any, **kwargs: Any) -> list[R]:
        """Run once per element of the arguments (zipped); wrap an argument in
        ``unmapped(...)`` to pass it whole to every run. Outside a flow, a plain loop."""
        ctx = _compiler.current_context()
        if ctx is not None:
            return ctx.add_call(self, args, kwargs, mapped=True)  # type: ignore[return-value]
        return _compiler.map_eagerly(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<Task {self.name} ({self.task_type})>"


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def task(
    *,
    name: str | None = ...,
    task_type: str | None = ...,
    retries: int = ...,
    retry_delay: float | timedelta = ...,
    backoff: float = ...,
    max_retry_delay: float | timedelta | None = ...,
    retry_jitter: float = ...,
    no_retry_on: Iterable[type[BaseException]] = ...,
    timeout: float | timedelta | None = ...,
    trigger: str | Trigger = ...,
    cache_key_fn: Callable[[dict[str, Any]], str] | None = ...,
    cache_for: float | timedelta | None = ...,
    cache_version: str = ...,
    tags: Iterable[str] = ...,
    labels: Mapping[str, str] | None = ...,
    resources: Mapping[str, float] | None = ...,
    version: str = ...,
    portable: bool = ...,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...
def task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Declare a task. Use bare (``@task``) or with options (``@task(retries=3)``).

    Options: name, task_type (the capability a worker needs; default
    ``module.qualname``), retries, retry_delay, backoff, max_retry_delay, retry_jitter,
    no_retry_on (exception classes never retried), timeout, trigger (all_successful,
    all_finished, all_failed, any_successful, any_failed, none_failed), cache_key_fn /
    cache_for / cache_version, tags, labels (worker affinity), resources (Dask worker
    resources), version, portable (inputs and result must be json).
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
