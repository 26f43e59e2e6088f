"""Signals and errors users raise or catch."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._run import FlowRun


class FlowRunFailed(Exception):
    """A flow run did not succeed. ``flow_run`` holds every task's record.

    Args:
        flow_run: the run; the message names its first failed task runs.
    """

    def __init__(self, flow_run: FlowRun) -> None:
        self.flow_run = flow_run
        failures = flow_run.failures
        details = "; ".join(
            f"{f.key} {f.state.name}" + (f" ({f.failure})" if f.failure else "")
            for f in failures[:5]
        )
        more = f" and {len(failures) - 5} more" if len(failures) > 5 else ""
        engine = flow_run._engine
        if engine is not None and engine.timed_out is not None:  # what it says first
            details = f"{engine.timed_out} ({details}{more})"
            more = ""
        super().__init__(
            f"flow run of {flow_run.flow_name!r} ended {flow_run.state.name}: "
            f"{details or flow_run.message}{more}"
        )


class FlowRunCancelled(FlowRunFailed):
    """A flow run was cancelled (a cancel request, its parent's cancel); Ctrl-C raises
    ``FlowRunInterrupted`` instead."""


class FlowRunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM to ``headwater run``) stopped an embedded run: it was cancelled
    and has ended; ``flow_run`` holds it (CANCELLED, every task's record).

    Raised by ``flow()``, ``flow.run()`` and ``FlowRun.retry()``. It is a
    KeyboardInterrupt, so the interrupt stops the program as it would without
    Headwater: a loop of runs, a notebook cell (it went on with the next run, and
    ``except Exception`` around ``flow()`` swallowed it: a notebook trial).

    Args:
        flow_run: the cancelled run.
    """

    def __init__(self, flow_run: FlowRun) -> None:
        self.flow_run = flow_run
        super().__init__(
            f"flow run of {flow_run.flow_name!r} interrupted: cancelled ({flow_run.message})"
        )
