"""A flow run as HTML, for notebooks (``FlowRun._repr_html_``, ``RemoteFlowRun``'s too).

Jupyter shows an object's ``_repr_html_`` when a cell ends with it: a run's state, how
long it took, why it failed, and a table of its tasks (their task runs added up per
task, as ``headwater run`` prints them), in place of the one-line repr. Everything
shown is escaped; the table is bounded (``ROWS_SHOWN``).
"""

from __future__ import annotations

import html
from collections.abc import Iterable

from ._cli_render import duration_text, task_summaries

#: Tasks listed (a flow of more says how many more there are).
ROWS_SHOWN = 50

#: Colours of states (the web UI's, readable on a light or a dark notebook theme).
_COLOURS = {
    "SUCCESS": "#1a7f37",
    "CACHED": "#1a7f37",
    "FAILED": "#cf222e",
    "TIMED_OUT": "#cf222e",
    "TRIGGER_FAILED": "#cf222e",
    "CANCELLED": "#9a6700",
    "SKIPPED": "#6e7781",
    "RUNNING": "#0969da",
}


def run_html(
    flow_name: str,
    state: str,
    run_id: str,
    duration: float | None,
    message: str,
    task_runs: Iterable[tuple[str, str, str, int, float | None, str]],
) -> str:
    """The HTML of a run: ``task_runs`` as the CLI's summary takes them (``summary_rows``:
    task id, key, state, attempts, seconds run, worker), added up per task."""
    tasks = task_summaries(task_runs)
    took = f" in {duration_text(duration)}" if duration is not None else ""
    head = (
        f"<b>{_e(flow_name)}</b> {_state(state)}{_e(took)} "
        f"<span style='opacity:.7'>run {_e(run_id)}</span>"
    )
    parts = [f"<div class='headwater-run'><div>{head}</div>"]
    if message and state != "SUCCESS":
        parts.append(f"<pre style='white-space:pre-wrap;margin:4px 0'>{_e(message)}</pre>")
    if tasks:
        rows = [
            "<tr><th style='text-align:left'>task</th><th>runs</th>"
            "<th style='text-align:left'>states</th><th>attempts</th>"
            "<th style='text-align:left'>task time</th></tr>"
        ]
        for task_id, task in list(tasks.items())[:ROWS_SHOWN]:
            states = ", ".join(f"{n} {_state(s)}" for s, n in sorted(task.states.items()))
            spent = duration_text(task.duration) if task.ran else ""
            rows.append(
                f"<tr><td style='text-align:left'>{_e(task_id)}</td>"
                f"<td>{sum(task.states.values())}</td><td style='text-align:left'>{states}</td>"
                f"<td>{task.attempts}</td><td style='text-align:left'>{_e(spent)}</td></tr>"
            )
        parts.append(f"<table>{''.join(rows)}</table>")
        if len(tasks) > ROWS_SHOWN:
            parts.append(f"<div>... and {len(tasks) - ROWS_SHOWN} more tasks</div>")
    parts.append("</div>")
    return "".join(parts)


def _state(state: str) -> str:
    colour = _COLOURS.get(state)
    style = f" style='color:{colour};font-weight:600'" if colour else ""
    return f"<span{style}>{_e(state)}</span>"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
