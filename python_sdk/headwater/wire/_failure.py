"""Structured failures: the one in-memory form (FailureInfo) and its encodings.

``FailureInfo`` mirrors the contract's ``Failure`` message; ``failure_to_proto`` is
the only way one becomes a message (texts cut to TEXT_LIMIT, causes nested), and
``failure_from_proto`` the only way back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._limits import cut_text

if TYPE_CHECKING:
    from headwater.v1 import state_pb2

#: Deepest chain of causes kept when reading a Failure a peer sent.
MAX_CAUSE_DEPTH = 20


@dataclass(frozen=True, slots=True)
class FailureInfo:
    """A structured error, in any language (mirrors the contract's Failure).

    Attributes:
        type: the error's type, e.g. ``builtins.ValueError`` or ``headwater.TaskTimeout``.
        message: the error's message.
        traceback: the stack trace as text ("" when none).
        retryable: False when retrying cannot help.
        cause: the error this one was raised from, if any.
        language: the language of the code that raised it.
        timed_out: the attempt was stopped for exceeding its timeout.
        exception: the live exception in embedded runs (never serialised).
    """

    type: str
    message: str
    traceback: str = ""
    retryable: bool = True
    cause: FailureInfo | None = None
    language: str = "python"
    timed_out: bool = False
    exception: BaseException | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        return f"{self.type}: {self.message}" if self.message else self.type


def failure_to_proto(info: FailureInfo) -> state_pb2.Failure:
    """The contract's Failure for a FailureInfo (texts cut to TEXT_LIMIT)."""
    from headwater.v1 import state_pb2

    msg = state_pb2.Failure(
        type=info.type,
        message=cut_text(info.message),
        stack_trace=cut_text(info.traceback),
        retryable=info.retryable,
        language=info.language,
        timed_out=info.timed_out,
    )
    if info.cause is not None:
        msg.cause.CopyFrom(failure_to_proto(info.cause))
    return msg


def failure_from_proto(
    msg: state_pb2.Failure, timed_out: bool = False, depth: int = 0
) -> FailureInfo:
    """A FailureInfo for a Failure message (causes beyond MAX_CAUSE_DEPTH dropped);
    ``timed_out`` when the message or the caller says so."""
    cause = None
    if msg.HasField("cause") and depth < MAX_CAUSE_DEPTH:
        cause = failure_from_proto(msg.cause, depth=depth + 1)
    return FailureInfo(
        type=msg.type or "headwater.UnknownError",
        message=msg.message,
        traceback=msg.stack_trace,
        retryable=msg.retryable,
        cause=cause,
        language=msg.language or "unknown",
        timed_out=timed_out or msg.timed_out,
    )


def failure_to_dict(f: FailureInfo) -> dict[str, Any]:
    """A FailureInfo as a JSON-able dict (the live exception is dropped)."""
    return {
        "type": f.type,
        "message": f.message,
        "traceback": f.traceback,
        "retryable": f.retryable,
        "language": f.language,
        "timed_out": f.timed_out,
        "cause": None if f.cause is None else failure_to_dict(f.cause),
    }


def failure_from_dict(d: dict[str, Any]) -> FailureInfo:
    """Inverse of failure_to_dict."""
    return FailureInfo(
        type=d["type"],
        message=d["message"],
        traceback=d["traceback"],
        retryable=d["retryable"],
        language=d["language"],
        timed_out=d["timed_out"],
        cause=None if d["cause"] is None else failure_from_dict(d["cause"]),
    )


def exception_text(exc: BaseException) -> str:
    """``str(exc)``, or what Python's own tracebacks say when that raises (a task's
    exception whose ``__str__`` raised killed the thread describing its failure, and the
    run waited for the attempt forever)."""
    try:
        return str(exc)
    except Exception:
        return "<exception str() failed>"
