"""``remote_task``: a task implemented in another language, used in a Python flow.

It has no Python function: only a task type that some worker (e.g. the Node.js worker
in examples/node_worker) registers as a capability. It is always ``portable``, so its
inputs and its result are json (docs/payloads.md): constants are checked when the flow
is compiled, parameters when a run is created, and upstream results by the workers
that produce them. It runs only on a server.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from typing import Any, Unpack

from ._errors import FlowDefinitionError
from ._options import RemoteTaskOptions, TaskOptions, check_names, parse_options
from ._task import Task

_TASK_TYPE = re.compile(r"[^\s]+")


class RemoteTask(Task[..., Any]):
    """A task another language implements; call it (or ``.map``) inside a @flow.

    Args:
        task_type: the capability a worker of that language registers.
        **options: see ``remote_task``.
    """

    def __init__(self, task_type: str, **options: Unpack[RemoteTaskOptions]) -> None:
        if not isinstance(task_type, str) or not _TASK_TYPE.fullmatch(task_type):
            raise FlowDefinitionError(
                f"remote_task needs a task type without spaces, e.g. 'images.resize'; "
                f"got {task_type!r}"
            )
        label = options.get("name") or task_type
        check_names(options, RemoteTaskOptions, label)
        params = _parameters(options.get("parameters"), label)
        parsed = parse_options(options, label, remote=True)
        shared: TaskOptions = {"name": label, "task_type": task_type}
        super().__init__(_placeholder(task_type, label, params), **shared)
        self.parameters = params
        self._apply(parsed)  # portable, no resources, error types by name
        self._remote_options: RemoteTaskOptions = options
        self._digest = ""  # its code lives with the workers of another language
        self._source = None

    @property
    def argument_order(self) -> tuple[str, ...]:
        """The declared ``parameters`` (how positional arguments are named)."""
        return self.parameters

    @property
    def has_function(self) -> bool:
        """Always False: another language implements the task."""
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

    # A remote task takes other options than a Python task (error types by name, no
    # task_type), so this override narrows the signature on purpose.
    def with_options(self, **overrides: Unpack[RemoteTaskOptions]) -> RemoteTask:  # type: ignore[override]
        """A copy of this task with some options changed."""
        check_names(overrides, RemoteTaskOptions, self.name)
        merged: RemoteTaskOptions = {**self._remote_options, **overrides}
        return RemoteTask(self.task_type, **merged)

    def __call__(self, /, *args: Any, **kwargs: Any) -> Any:
        from . import _compiler

        if _compiler.current_context() is None:
            raise FlowDefinitionError(_outside_flow(self))
        return super().__call__(*args, **kwargs)

    def map(self, /, *args: Any, **kwargs: Any) -> list[Any]:
        """Like ``Task.map``, but only inside a flow (there is no function to loop over)."""
        from . import _compiler

        if _compiler.current_context() is None:
            raise FlowDefinitionError(_outside_flow(self))
        return super().map(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<RemoteTask {self.name} ({self.task_type})>"


def remote_task(task_type: str, **options: Unpack[RemoteTaskOptions]) -> RemoteTask:
    """Declare a task implemented in another language, e.g.
    ``resize = remote_task("images.resize", parameters=["image", "width"], retries=2)``.

    Use it in a @flow like any task (``.map``, ``wait_for``, triggers). Its inputs and
    result are json. Keyword arguments always work; positional ones map onto
    ``parameters``. Options are those of ``task`` except ``task_type``, ``resources``,
    ``portable`` and ``cache_key_fn``, plus:

    Options:
        parameters: the argument names, in positional order.
        no_retry_on: error type names as the worker reports them (e.g. ``"TypeError"``).
        cache: cache results by inputs (also implied by ``cache_for``).

    Flows that use it run only on a server (``headwater run FILE:FLOW --server ...``).
    """
    return RemoteTask(task_type, **options)


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


def _placeholder(task_type: str, label: str, params: tuple[str, ...]) -> Any:
    """A stand-in function carrying the declared signature (never called)."""

    def remote(*args: Any, **kwargs: Any) -> Any:
        raise FlowDefinitionError(f"task {label!r} ({task_type}) has no Python function")

    remote.__name__ = remote.__qualname__ = label
    remote.__doc__ = f"Implemented in another language (task type {task_type!r})."
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    # inspect.signature() honours __signature__, which function types do not declare.
    remote.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(p, positional, default=None) for p in params]
        if all(p.isidentifier() for p in params)
        else []
    )
    return remote
