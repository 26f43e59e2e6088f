"""Running one task function and turning its outcome into an engine event.

Shared by every Python executor (embedded threads, Dask, the Python worker), so a
task behaves the same wherever it runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, NamedTuple

from headwater.wire import FailureInfo, StreamStandIn, exception_text
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
    name, message = error_type_name(type(exc)), exception_text(exc)
    own = _from_the_task(exc)
    try:
        text = "".join(traceback.format_exception(type(exc), exc, own))
    except Exception as problem:  # (an exception object odd enough to break traceback)
        text = f"{name}: {message}\n(its traceback could not be formatted: {problem!r})\n"
    if own is not exc.__traceback__:
        # The exception itself too (FlowRunFailed's cause, shown by Python or a
        # notebook: it began with three of Headwater's frames, a trial).
        with contextlib.suppress(Exception):
            exc.__traceback__ = own
    return FailureInfo(
        type=name,
        message=message,
        traceback=text,
        retryable=not isinstance(exc, no_retry_on) and not isinstance(exc, Skip),
        cause=cause,
        exception=exc,
    )


def _from_the_task(exc: BaseException) -> TracebackType | None:
    """An exception's traceback without Headwater's frames that called the task (this
    module's, ``execute`` down to the call of the task function): they came first in
    every task's traceback and pushed its own lines out of the CLI's cut. All of it
    when no frame is another module's (a failure of Headwater's own)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    return tb if tb is not None else exc.__traceback__


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
    ``**kwargs`` are rebuilt from the signature. The caller pickles (a Dask task sends
    it) with the file ``fn`` was defined in, which cloudpickle leaves out of code it
    sends by value (``<dynamic-code>``): the task's traceback names its file and line.
    """
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return ByName(fn)
    if all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params):
        return ByName(fn)
    return BySignature(fn, tuple((p.name, p.kind) for p in params))


class ByName:
    """Calls ``fn`` with the arguments as keywords (``make_caller``)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        """``fn``: the task function."""
        self.fn = fn

    def __call__(self, inputs: dict[str, Any]) -> Any:
        return self.fn(**inputs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuilt, (ByName, self.fn, (), _defined_in(self.fn)))


class BySignature:
    """Calls ``fn`` with positional-only, ``*args`` and ``**kwargs`` parameters
    rebuilt from its signature (``make_caller``)."""

    __slots__ = ("fn", "params")

    def __init__(self, fn: Callable[..., Any], params: tuple[tuple[str, Any], ...]) -> None:
        """``fn``: the task function; ``params``: its parameters' names and kinds."""
        self.fn = fn
        self.params = params

    def __call__(self, inputs: dict[str, Any]) -> Any:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        for name, kind in self.params:
            if name not in inputs:
                continue
            value = inputs[name]
            if kind is inspect.Parameter.POSITIONAL_ONLY:
                args.append(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                args.extend(value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                kwargs.update(value)
            else:
                kwargs[name] = value
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuilt, (BySignature, self.fn, self.params, _defined_in(self.fn)))


#: The file name cloudpickle gives code it sends by value (cloudpickle >= 3.1).
_DYNAMIC_CODE = "<dynamic-code>"


def _defined_in(fn: Callable[..., Any]) -> tuple[str, str] | None:
    """``(module, file)`` of the function's code, to be put back where it unpickles."""
    code = getattr(fn, "__code__", None)
    if code is None or code.co_filename.startswith("<"):
        return None
    return str(getattr(fn, "__module__", "") or ""), code.co_filename


def _rebuilt(
    kind: type[ByName] | type[BySignature],
    fn: Callable[..., Any],
    params: tuple[tuple[str, Any], ...],
    defined_in: tuple[str, str] | None,
) -> ByName | BySignature:
    if defined_in is not None:
        module, path = defined_in
        _name_the_file(fn, path)
        # (the module's other functions the task calls came with it, in its globals)
        for value in list(getattr(fn, "__globals__", {}).values()):
            if getattr(value, "__module__", None) == module and value is not fn:
                _name_the_file(value, path)
    return ByName(fn) if kind is ByName else BySignature(fn, params)


def _name_the_file(fn: Any, path: str) -> None:
    """Give a function sent by value (its code named ``<dynamic-code>``) back the file
    it was defined in, its nested functions' code too."""
    code = getattr(fn, "__code__", None)
    if isinstance(code, types.CodeType) and code.co_filename == _DYNAMIC_CODE:
        fn.__code__ = _renamed(code, path)


def _renamed(code: types.CodeType, path: str) -> types.CodeType:
    consts = tuple(
        _renamed(c, path) if isinstance(c, types.CodeType) else c for c in code.co_consts
    )
    return code.replace(co_filename=path, co_consts=consts)


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
        return TaskSkipped(key, attempt, exception_text(signal))
    except TaskInterrupted:
        raise
    except BaseException as exc:  # a task's SystemExit must not kill the host
        return TaskFailed(key, attempt, failure_from_exception(exc, no_retry_on))
    finally:
        if token is not None:
            _TASK.reset(token)
    if isinstance(value, Skip):
        return TaskSkipped(key, attempt, exception_text(value))
    return TaskSucceeded(key, attempt, value)


# ------------------------------------------------------------- task output capture
#
# print() and logging inside a task belong to its task run: hosts register the thread
# running an attempt with a sink, and its output lines and log records go there (as well
# as where they would have gone: output is teed, not swallowed). Threads are told apart
# by their ident, so concurrent attempts on a thread pool keep their own output.

#: A sink gets (level, logger name, message, time) for each line or record.
LogSink = Callable[[str, str, str, float], None]


class TaskLogLine(NamedTuple):
    """A line a task printed or a record it logged, in an embedded run."""

    key: str
    attempt: int
    at: float
    level: str
    logger: str
    message: str


_sinks: dict[int, LogSink] = {}
#: A thread's line printed without its newline yet, and when it began (its time).
_partial: dict[tuple[int, str], tuple[str, float]] = {}
_install_lock = threading.Lock()


def _captured_already(frame: Any) -> bool:
    """Whether a write was kept before it reached this stand-in: it comes from a
    logging handler (the record went to the sink as a record), or from another
    stand-in that wraps a stream wrapping this one. Jupyter puts a stream of its own
    around sys.stderr from a notebook's second cell on: records and printed lines came
    back through it and were kept twice (a notebook trial)."""
    for _ in range(4):
        if frame is None:
            return False
        if frame.f_code is _TEE_WRITE or frame.f_globals.get("__name__") == "logging":
            return True
        frame = frame.f_back
    return False


class _Tee(StreamStandIn):
    """Stands in for sys.stdout / sys.stderr: lines written by a registered thread go
    to its sink too."""

    def __init__(self, original: Any, name: str, level: str) -> None:
        super().__init__(original)
        self.stream_name = name
        self.level = level

    def write(self, text: str) -> int:
        sink = _sinks.get(threading.get_ident())
        # A logging handler writing a record here already reached the sink as a record.
        if sink is not None and text and not _captured_already(sys._getframe(1)):
            key = (threading.get_ident(), self.stream_name)
            now = time.time()
            held, began = _partial.pop(key, ("", now))
            *lines, rest = (held + text).split("\n")
            if rest:
                _partial[key] = (rest, began if not lines else now)
            for line in lines:  # (a line is stamped when it began)
                sink(self.level, self.stream_name, line, began)
                began = now
        written: int = self.original.write(text)
        return written


_TEE_WRITE = _Tee.write.__code__


# ``logging`` (and the root logger's router) load when a run first captures log
# records, not at import: ``from headwater import flow, task`` stays light (issue 18).
_logging: Any = None  # the logging module, once the router exists
_router: Any = None  # the root logger's handler passing records to sinks


def _make_router() -> Any:
    import logging

    class _RecordRouter(logging.Handler):
        """A root-logger handler passing registered threads' records to their sinks."""

        def handle(self, record: logging.LogRecord) -> bool:
            _last_resort(record)
            sink = _sinks.get(record.thread or 0)
            if sink is None:
                return False
            if _partial:  # what it printed before the record, first
                _send_partial(record.thread or 0, sink)
            try:
                message = record.getMessage()
                if record.exc_info:
                    message += "\n" + logging.Formatter().formatException(record.exc_info)
            except Exception:
                message = str(record.msg)
            sink(record.levelname, record.name, message, record.created)
            return True

        def emit(self, record: logging.LogRecord) -> None:
            self.handle(record)

    return _RecordRouter()


def _last_resort(record: Any) -> None:
    """What logging does when no handler takes a record (print WARNING and up to
    stderr): being a root handler, the router must not silence that."""
    logging = _logging
    resort = logging.lastResort
    if resort is None or record.levelno < resort.level:
        return
    logger = logging.getLogger(record.name)
    while logger is not None:
        if any(h is not _router for h in logger.handlers):
            return  # another handler took it
        logger = logger.parent if logger.propagate else None
    resort.handle(record)


def _install(records: bool) -> None:
    """Put the tees in place (again, if something replaced sys.stdout since) and, with
    ``records``, the root logger's router."""
    global _logging, _router
    if (
        isinstance(sys.stdout, _Tee)
        and isinstance(sys.stderr, _Tee)
        # logging.root is what getLogger() returns, without the call (once per attempt)
        and (not records or (_router is not None and _router in _logging.root.handlers))
    ):
        return  # the common case, without the lock
    with _install_lock:
        if not isinstance(sys.stdout, _Tee):
            sys.stdout = _Tee(sys.stdout, "stdout", "INFO")
        if not isinstance(sys.stderr, _Tee):
            sys.stderr = _Tee(sys.stderr, "stderr", "WARNING")
        if records:
            if _router is None:
                import logging

                _logging = logging  # first: the unlocked test above reads it after _router
                _router = _make_router()
            root = _logging.root
            if _router not in root.handlers:
                root.addHandler(_router)


#: Embedded runs going on in the process: the router stays on the root logger while
#: there are any, and leaves it when the last one ends.
_runs = 0


@contextlib.contextmanager
def routing_records() -> Iterator[None]:
    """While the block (an embedded run) runs, the root logger's router, once a task
    put it there, stays; after the last such block it is taken off again.

    Left on the root logger, it made ``logging.basicConfig()`` after a first run do
    nothing (it configures only a root logger without handlers), so the INFO records
    docs/semantics.md says it keeps were not kept (a notebook trial).
    """
    global _runs
    with _install_lock:
        _runs += 1
    try:
        yield
    finally:
        with _install_lock:
            _runs -= 1
            if _runs == 0 and _router is not None and _router in _logging.root.handlers:
                _logging.root.removeHandler(_router)


@contextlib.contextmanager
def task_output(sink: LogSink, *, records: bool = True) -> Iterator[None]:
    """While the block runs, lines this thread prints (stdout as INFO, stderr as
    WARNING) and, with ``records``, log records it emits go to ``sink`` too."""
    ident = _register(sink, records)
    try:
        yield
    finally:
        _unregister(ident, sink)


def _register(sink: LogSink, records: bool) -> int:
    _install(records)
    ident = threading.get_ident()
    _sinks[ident] = sink
    return ident


def _unregister(ident: int, sink: LogSink) -> None:
    del _sinks[ident]
    if _partial:  # a line without its newline: kept, at the end
        _send_partial(ident, sink)


def _send_partial(ident: int, sink: LogSink) -> None:
    for name, level in (("stdout", "INFO"), ("stderr", "WARNING")):
        rest, began = _partial.pop((ident, name), ("", 0.0))
        if rest:
            sink(level, name, rest, began)


def flush_partial_lines(ident: int) -> None:
    """Send what thread ``ident`` printed without a newline so far to its sink, as a
    line: called before one of its log records goes out, so that the record comes
    after it (``print("a", end="")`` then ``log.info("b")`` showed b, then a)."""
    sink = _sinks.get(ident) if _partial else None
    if sink is not None:
        _send_partial(ident, sink)


def capturing(caller: Caller, sink: LogSink, *, records: bool = True) -> Caller:
    """``caller`` with its output and log records sent to ``sink`` (see task_output).

    Called once per task attempt of an embedded run: written out rather than through
    ``task_output``, whose generator-based context manager costs a few microseconds.
    """

    def call(inputs: dict[str, Any]) -> Any:
        ident = _register(sink, records)
        try:
            return caller(inputs)
        finally:
            _unregister(ident, sink)

    return call
