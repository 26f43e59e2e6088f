"""Errors for mistakes in flow and task definitions."""

from __future__ import annotations


class FlowDefinitionError(TypeError):
    """A flow or task is used wrongly (bad option, bad argument, misused reference).

    A TypeError, like Python's own errors for calling a function wrongly; the message
    names the task or flow and the fix.
    """


class UsageError(Exception):
    """A wrong command-line flag or argument: printed as one line, exit code 2."""


class CommandError(Exception):
    """A command that could not do its work (a database it cannot open): printed as
    one line, exit code 1."""


class Unreachable(CommandError):
    """What a command works on could not be reached (a database server that does not
    answer): printed as one line, exit code 3 (try again)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled by ``headwater run`` as Ctrl-C is (the run is cancelled)."""


__all__ = ["CommandError", "FlowDefinitionError", "Terminated", "Unreachable", "UsageError"]
