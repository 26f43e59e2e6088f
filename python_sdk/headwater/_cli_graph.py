"""``headwater graph``: a flow's compiled graph as text, Graphviz DOT, Mermaid or JSON."""

from __future__ import annotations

import json
import re

from headwater.v1 import graph_pb2
from headwater.wire import GraphSpec, TaskSpec, graph_from_proto, iter_params, iter_task_refs

FORMATS = ("text", "dot", "mermaid", "json")


def upstream(task: TaskSpec) -> list[str]:
    """The ids of the tasks a task takes results from or waits for, in order."""
    ids: list[str] = []
    for spec in task.inputs.values():
        ids.extend(ref.task_id for ref in iter_task_refs(spec))
    ids.extend(task.wait_for)
    return list(dict.fromkeys(ids))


def _options(task: TaskSpec) -> str:
    parts = []
    if task.mapped is not None:
        parts.append(f"mapped over {', '.join(task.mapped)}")
    if task.retry.max_retries:
        parts.append(f"retries={task.retry.max_retries}")
    if task.timeout is not None:
        parts.append(f"timeout={task.timeout:g}s")
    if task.cache is not None:
        parts.append("cached")
    if task.trigger.value != "all_successful":
        parts.append(f"trigger={task.trigger.value}")
    if task.labels:
        parts.append("labels " + ",".join(f"{k}={v}" for k, v in task.labels.items()))
    if task.resources:
        parts.append("resources " + ",".join(f"{k}={v:g}" for k, v in task.resources.items()))
    if task.tags:
        parts.append("tags " + ",".join(task.tags))
    return f"  [{'; '.join(parts)}]" if parts else ""


def as_text(graph: GraphSpec) -> str:
    """One line per task in dependency order, with what it takes its inputs from: the
    tasks (results, or waited for) and the flow's parameters (constants are not
    shown)."""
    lines = [f"flow {graph.name}" + (f" v{graph.version}" if graph.version else "")]
    if graph.params:
        lines.append("parameters: " + ", ".join(p.name for p in graph.params))
    for task in graph.topological().tasks:
        params = [name for spec in task.inputs.values() for name in iter_params(spec)]
        sources = upstream(task) + [f"parameter {p}" for p in dict.fromkeys(params)]
        source = f"  <- {', '.join(sources)}" if sources else ""
        lines.append(f"  {task.id} ({task.task_type}){_options(task)}{source}")
    if graph.reference_task_ids:
        lines.append("result from: " + ", ".join(graph.reference_task_ids))
    return "\n".join(lines)


def _quote(text: str) -> str:
    # A valid DOT string (double quotes, backslash escapes); other letters as they are:
    # Graphviz does not read \uXXXX escapes, so "café" was drawn as caf\u00e9.
    return json.dumps(text, ensure_ascii=False)


def as_dot(graph: GraphSpec) -> str:
    """Graphviz DOT (``headwater graph f.py --format dot | dot -Tsvg > f.svg``)."""
    lines = [f"digraph {_quote(graph.name)} {{", "  rankdir=LR;", "  node [shape=box];"]
    for task in graph.tasks:
        label = task.name + (" [map]" if task.mapped is not None else "")
        shape = ", style=rounded" if task.mapped is None else ", peripheries=2"
        lines.append(f"  {_quote(task.id)} [label={_quote(label)}{shape}];")
    for task in graph.tasks:
        lines.extend(f"  {_quote(u)} -> {_quote(task.id)};" for u in upstream(task))
    lines.append("}")
    return "\n".join(lines)


def as_mermaid(graph: GraphSpec) -> str:
    """A Mermaid flowchart (renders in GitHub Markdown and many wikis)."""
    ids = {t.id: f"t{i}" for i, t in enumerate(graph.tasks)}
    lines = ["flowchart LR"]
    for task in graph.tasks:
        label = re.sub(r'["\[\]{}<>]', "", task.name) + (
            " (map)" if task.mapped is not None else ""
        )
        opening, closing = ("[[", "]]") if task.mapped is not None else ("[", "]")
        lines.append(f'  {ids[task.id]}{opening}"{label}"{closing}')
    for task in graph.tasks:
        lines.extend(f"  {ids[u]} --> {ids[task.id]}" for u in upstream(task) if u in ids)
    return "\n".join(lines)


def render(msg: graph_pb2.FlowGraph, fmt: str) -> str:
    """The graph in one of FORMATS."""
    if fmt == "json":
        from google.protobuf import json_format

        return json_format.MessageToJson(msg, indent=2)
    graph = graph_from_proto(msg)
    return {"text": as_text, "dot": as_dot, "mermaid": as_mermaid}[fmt](graph)


__all__ = ["FORMATS", "as_dot", "as_mermaid", "as_text", "render", "upstream"]
