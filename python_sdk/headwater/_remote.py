"""``remote_task``: a task implemented in another language, used in a Python flow.

It has no Python function: only a task type that some worker (e.g. the Node.js worker
in examples/node_worker) registers as a capability. It is always ``portable``, so its
inputs and its result are json (docs/payloads.md): constants are checked when the flow
is compiled, parameters when a run is created, and upstream results by the workers
that produce them. It runs only on a server.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from typing import Any

from headwater_runtime.engine import CacheSpec, Trigger

from ._durations import to_seconds
from ._errors import FlowDefinitionError
from ._task import Task

_TASK_TYPE = re.compile(r"[^\s]+")


class RemoteTask(Task[..., Any]):
    """A task another language implements; call it (or ``.map``) inside a @flow."""

    def __init__(
        self,
        task_type: str,
        *,
        name: str | None = None,
        parameters: Sequence[str] | None = None,
        retries: int = 0,
        retry_delay: float | timedelta = 0,
        backoff: float = 1.0,
        max_retry_delay: float | timedelta | None = None,
        retry_jitter: float = 0.0,
        no_retry_on: Iterable[str] = (),
        timeout: float | timedelta | None = None,
        trigger: str | Trigger = "all_successful",
        cache: bool = False,
        cache_for: float | timedelta | None = None,
        cache_version: str = "",
        tags: Iterable[str] = (),
        labels: Mapping[str, str] | None = None,
        version: str = "",
    ) -> None:
        if not isinstance(task_type, str) or not _TASK_TYPE.fullmatch(task_type):
            raise FlowDefinitionError(
                f"remote_task needs a task type without spaces, e.g. 'images.resize'; "
                f"got {task_type!r}"
            )
        label = name or task_type
        params = _parameters(parameters, label)
        non_retryable = _error_types(no_retry_on, label)
        super().__init__(
            _placeholder(task_type, label, params),
            name=label,
            task_type=task_type,
            retries=retries,
            retry_delay=retry_delay,
            backoff=backoff,
            max_retry_delay=max_retry_delay,
            retry_jitter=retry_jitter,
            timeout=timeout,
            trigger=trigger,
            cache_for=cache_for,
            cache_version=cache_version,
            tags=tags,
            labels=labels,
            version=version,
            portable=True,
        )
        self.parameters = params
        self.retry = dataclasses.replace(self.retry, non_retryable=non_retryable)
        if not isinstance(cache, bool):
            raise FlowDefinitionError(f"task {label!r}: cache must be True or False")
        if cache and self.cache is None:
            # Keyed by the inputs (the server hashes their payloads), kept until evicted.
            expiry = to_seconds(cache_for, f"task {label!r}: cache_for", positive=True)
            self.cache = CacheSpec(expiry=expiry, version=cache_version)
        self._remote_options: dict[str, Any] = {
            "name": name,
            "parameters": parameters,
            "retries": retries,
            "retry_delay": retry_delay,
            "backoff": backoff,
            "max_retry_delay": max_retry_delay,
            "retry_jitter": retry_jitter,
            "no_retry_on": non_retryable,
            "timeout": timeout,
            "trigger": trigger,
            "cache": cache,
            "cache_for": cache_for,
            "cache_version": cache_version,
            "tags": self.tags,
            "labels": labels,
            "version": version,
        }

    @property
    def argument_order(self) -> tuple[str, ...]:
        return self.parameters

    @property
    def has_function(self) -> bool:
        return False

    def bind_arguments(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Positional arguments by the declared ``parameters``; keywords as given."""
        if len(args) > len(self.parameters):
            declared = f"parameters={list(self.parameters)}" if self.parameters else "none"
            raise FlowDefinitionError(
                f"task {self.name!r} got {len(args)} positional argument(s) but declares "
                f"{declared}; pass keyword arguments or declare remote_task(parameters=[...])"
            )
        bound = dict(zip(self.parameters, args, strict=False))
        for key, value in kwargs.items():
            if key in bound:
                raise FlowDefinitionError(f"task {self.name!r} got argument {key!r} twice")
            bound[key] = value
        return bound

    def with_options(self, **overrides: Any) -> RemoteTask:
        unknown = set(overrides) - set(self._remote_options)
        if unknown:
            raise FlowDefinitionError(f"task {self.name!r}: unknown option(s) {sorted(unknown)}")
        return RemoteTask(self.task_type, **{**self._remote_options, **overrides})

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from . import _compiler

        if _compiler.current_context() is None:
            raise FlowDefinitionError(_outside_flow(self))
        return super().__call__(*args, **kwargs)

    def map(self, *args: Any, **kwargs: Any) -> list[Any]:
        from . import _compiler

        if _compiler.current_context() is None:
            raise FlowDefinitionError(_outside_flow(self))
        return super().map(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<RemoteTask {self.name} ({self.task_type})>"


def remote_task(
    task_type: str,
    *,
    name: str | None = None,
    parameters: Sequence[str] | None = None,
    retries: int = 0,
    retry_delay: float | timedelta = 0,
    backoff: float = 1.0,
    max_retry_delay: float | timedelta | None = None,
    retry_jitter: float = 0.0,
    no_retry_on: Iterable[str] = (),
    timeout: float | timedelta | None = None,
    trigger: str | Trigger = "all_successful",
    cache: bool = False,
    cache_for: float | timedelta | None = None,
    cache_version: str = "",
    tags: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
    version: str = "",
) -> RemoteTask:
    """Declare a task implemented in another language, e.g.
    ``resize = remote_task("images.resize", parameters=["image", "width"], retries=2)``.

    Use it in a @flow like any task (``.map``, ``wait_for``, triggers). Its inputs and
    result are json. Keyword arguments always work; positional ones map onto
    ``parameters``. ``no_retry_on`` takes error type names as the worker reports them
    (e.g. ``"TypeError"``). ``cache=True`` (or ``cache_for``) caches results by inputs.
    Flows that use it run only on a server (``headwater run FILE:FLOW --server ...``).
    """
    return RemoteTask(
        task_type,
        name=name,
        parameters=parameters,
        retries=retries,
        retry_delay=retry_delay,
        backoff=backoff,
        max_retry_delay=max_retry_delay,
        retry_jitter=retry_jitter,
        no_retry_on=no_retry_on,
        timeout=timeout,
        trigger=trigger,
        cache=cache,
        cache_for=cache_for,
        cache_version=cache_version,
        tags=tags,
        labels=labels,
        version=version,
    )


def _outside_flow(task: RemoteTask) -> str:
    return (
        f"task {task.name!r} ({task.task_type}) is implemented in another language and "
        "has no Python function: call it inside a @flow and run the flow on a server"
    )


def _parameters(parameters: Sequence[str] | None, label: str) -> tuple[str, ...]:
    if parameters is None:
        return ()
    if isinstance(parameters, str) or not all(isinstance(p, str) and p for p in parameters):
        raise FlowDefinitionError(
            f"task {label!r}: parameters must be a list of argument names, got {parameters!r}"
        )
    names = tuple(parameters)
    if len(set(names)) != len(names):
        raise FlowDefinitionError(f"task {label!r}: parameters repeats a name")
    return names


def _error_types(no_retry_on: Iterable[str], label: str) -> tuple[str, ...]:
    if isinstance(no_retry_on, str):
        no_retry_on = (no_retry_on,)
    names = tuple(no_retry_on)
    if not all(isinstance(n, str) and n for n in names):
        raise FlowDefinitionError(
            f"task {label!r}: no_retry_on takes error type names (str) for a remote task"
        )
    return names


def _placeholder(task_type: str, label: str, params: tuple[str, ...]) -> Any:
    """A stand-in function carrying the declared signature (never called)."""

    def remote(*args: Any, **kwargs: Any) -> Any:
        raise FlowDefinitionError(f"task {label!r} ({task_type}) has no Python function")

    remote.__name__ = remote.__qualname__ = label
    remote.__doc__ = f"Implemented in another language (task type {task_type!r})."
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    remote.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(p, positional, default=None) for p in params]
        if all(p.isidentifier() for p in params)
        else []
    )
    return remote
