"""Task options: one definition shared by ``@task``, ``Task``, ``remote_task`` and
``RemoteTask`` (typed keyword arguments for IDEs, one parser for the values).

``TaskOptions`` lists what a Python task takes; ``RemoteTaskOptions`` what a task
implemented in another language takes (error types by name, a cache flag, declared
parameter names). Both share ``CommonOptions``. ``parse_options`` validates them once
and turns them into the graph model's specs, naming the task in every error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypedDict

from headwater.wire import CacheSpec, RetrySpec, Trigger, control_character

from ._durations import to_seconds
from ._errors import FlowDefinitionError

_TRIGGERS = {t.value: t for t in Trigger}


class CommonOptions(TypedDict, total=False):
    """Options every task takes (see ``task`` for what each means)."""

    name: str | None
    retries: int
    retry_delay: float | timedelta
    backoff: float
    max_retry_delay: float | timedelta | None
    retry_jitter: float
    timeout: float | timedelta | None
    schedule_to_start_timeout: float | timedelta | None
    trigger: str | Trigger
    cache_for: float | timedelta | None
    cache_version: str
    tags: Iterable[str]
    labels: Mapping[str, str] | None
    version: str


class TaskOptions(CommonOptions, total=False):
    """Options of a Python task (``@task(...)``)."""

    task_type: str | None
    no_retry_on: Iterable[type[BaseException]]
    cache_key_fn: Callable[[dict[str, Any]], str] | None
    resources: Mapping[str, float] | None
    portable: bool
    code_version: str


class FlowOptions(TypedDict, total=False):
    """Options of a flow's calls inside other flows (subflows): as for a task."""

    retries: int
    retry_delay: float | timedelta
    backoff: float
    max_retry_delay: float | timedelta | None
    retry_jitter: float
    timeout: float | timedelta | None
    trigger: str | Trigger
    tags: Iterable[str]


class RemoteTaskOptions(CommonOptions, total=False):
    """Options of a task implemented in another language (``remote_task(...)``)."""

    parameters: Sequence[str] | None
    no_retry_on: Iterable[str]
    cache: bool


@dataclass(frozen=True)
class ParsedOptions:
    """Validated options, as the graph model wants them."""

    retry: RetrySpec
    timeout: float | None
    trigger: Trigger
    cache: CacheSpec | None
    tags: tuple[str, ...]
    labels: dict[str, str]
    resources: dict[str, float] = field(default_factory=dict)
    version: str = ""
    portable: bool = False
    no_retry_on: tuple[type[BaseException], ...] = ()
    schedule_to_start_timeout: float | None = None


def option_names(typed_dict: Any) -> frozenset[str]:
    """Every option a TypedDict of options lists (its bases' included)."""
    return frozenset(typed_dict.__required_keys__ | typed_dict.__optional_keys__)


def check_names(
    given: Mapping[str, Any],
    allowed: Any,
    label: str,
    *,
    kind: str = "task",
    also: tuple[str, ...] = (),
) -> None:
    """FlowDefinitionError naming any option ``allowed`` (a TypedDict) does not list;
    ``kind``: what ``label`` names ("task", "flow"); ``also``: options taken besides
    the TypedDict's (listed as known)."""
    known = option_names(allowed)
    unknown = sorted(set(given) - known)
    if unknown:
        listed = ", ".join(sorted(known | set(also)))
        raise FlowDefinitionError(f"{kind} {label!r}: unknown option(s) {unknown}; known: {listed}")


def check_label(kind: str, name: object) -> str:
    """A task's or flow's name when it can be one (FlowDefinitionError otherwise, when
    the task or flow is defined rather than when it is first compiled): text without
    control characters or Unicode's bidirectional controls (names are shown in
    terminals and listings, where one could forge what an operator reads)."""
    if not isinstance(name, str):
        raise FlowDefinitionError(f"{kind} name must be text, got {type(name).__name__}")
    bad = control_character(name)
    if bad is not None:
        raise FlowDefinitionError(
            f"{kind} name {name!r} contains the control character {bad!r}: names are "
            "shown in terminals and listings; rename it"
        )
    return name


def parse_trigger(value: str | Trigger, label: str) -> Trigger:
    """A Trigger from its name (ValueError listing the names)."""
    if isinstance(value, Trigger):
        return value
    trigger = _TRIGGERS.get(value) if isinstance(value, str) else None
    if trigger is None:
        raise ValueError(
            f"task {label!r}: unknown trigger {value!r}; use one of {', '.join(_TRIGGERS)}"
        )
    return trigger


def _str_map(value: Mapping[str, Any] | None, what: str, label: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise FlowDefinitionError(f"task {label!r}: {what} must be a dict of str to str")
    return {str(k): str(v) for k, v in value.items()}


def _error_types(values: Iterable[Any], label: str, *, remote: bool) -> tuple[Any, ...]:
    if isinstance(values, str | type):
        values = (values,)
    found = tuple(values)
    for item in found:
        if remote and not (isinstance(item, str) and item):
            raise FlowDefinitionError(
                f"task {label!r}: no_retry_on takes error type names (str) for a remote task"
            )
        if not remote and not (isinstance(item, type) and issubclass(item, BaseException)):
            raise FlowDefinitionError(f"task {label!r}: no_retry_on takes exception classes")
    return found


def _text(options: Mapping[str, Any], name: str, label: str) -> str:
    """Option ``name`` (default ""), which must be a str: a number reached the graph's
    message and failed there (TypeError), and a flow parameter given here was kept as
    a placeholder (the type check is a use of its value: the graph is built from it)."""
    value = options.get(name, "")
    if not isinstance(value, str):
        raise FlowDefinitionError(f"task {label!r}: {name} must be a str, got {value!r}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_options(options: Mapping[str, Any], label: str, *, remote: bool) -> ParsedOptions:
    """Validate task options (already checked by name); errors name the task."""
    retries = options.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"task {label!r}: retries must be an int >= 0, got {retries!r}")
    backoff = options.get("backoff", 1.0)
    if not _is_number(backoff) or not backoff > 0:
        raise ValueError(
            f"task {label!r}: backoff must be a number > 0 (1 keeps the delay constant), "
            f"got {backoff!r}"
        )
    jitter = options.get("retry_jitter", 0.0)
    if not _is_number(jitter) or not 0 <= jitter <= 1:
        raise ValueError(f"task {label!r}: retry_jitter must be a number in [0, 1], got {jitter!r}")
    errors = _error_types(options.get("no_retry_on", ()), label, remote=remote)
    non_retryable = errors if remote else tuple(f"{t.__module__}.{t.__qualname__}" for t in errors)
    retry = RetrySpec(
        max_retries=retries,
        delay=to_seconds(options.get("retry_delay", 0), f"task {label!r}: retry_delay") or 0.0,
        backoff=float(backoff),
        max_delay=to_seconds(options.get("max_retry_delay"), f"task {label!r}: max_retry_delay"),
        jitter=float(jitter),
        non_retryable=non_retryable,
    )
    timeout = to_seconds(options.get("timeout"), f"task {label!r}: timeout", positive=True)
    key_fn = options.get("cache_key_fn")
    if key_fn is not None and not callable(key_fn):
        raise FlowDefinitionError(f"task {label!r}: cache_key_fn must be callable")
    flag = options.get("cache", False)
    if not isinstance(flag, bool):
        raise FlowDefinitionError(f"task {label!r}: cache must be True or False")
    cache_for = options.get("cache_for")
    expiry = to_seconds(cache_for, f"task {label!r}: cache_for", positive=True)
    cache_version = _text(options, "cache_version", label)
    cache = None
    if key_fn is not None or cache_for is not None or flag:
        cache = CacheSpec(
            expiry=expiry,
            version=cache_version,
            key_fn=key_fn,
            by_function=key_fn is not None,
        )
    tags = options.get("tags", ())
    if isinstance(tags, str):
        tags = (tags,)
    return ParsedOptions(
        retry=retry,
        timeout=timeout,
        trigger=parse_trigger(options.get("trigger", "all_successful"), label),
        cache=cache,
        tags=tuple(str(t) for t in tags),
        labels=_str_map(options.get("labels"), "labels", label),
        resources={str(k): float(v) for k, v in (options.get("resources") or {}).items()},
        version=_text(options, "version", label),
        portable=remote or bool(options.get("portable", False)),
        no_retry_on=() if remote else errors,
        schedule_to_start_timeout=to_seconds(
            options.get("schedule_to_start_timeout"),
            f"task {label!r}: schedule_to_start_timeout",
            positive=True,
        ),
    )
