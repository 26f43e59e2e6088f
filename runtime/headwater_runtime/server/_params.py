"""Flow run parameters on the server: what it checks without the flow's code, and
the form they are stored in (never decoded, never converted).

The SDK checks and converts parameters against the flow function's annotations before
anything is sent (``Client.run(flow, ...)``, ``headwater run``). A run created by name
(``Client.run("name", ...)``, a schedule of a flow name) reaches the server unchecked,
so the server checks what it can from the stored graph (docs/flows.md):

- a json-encoded value against the parameter's JSON Schema (``jsonschema``); values the
  SDK would have converted (``"3"`` for an ``int``) are refused here, never converted:
  the server does not rewrite payloads. Pickled values, tagged json (dates, bytes:
  no plain-JSON form) and values held by reference are not checked (the server never
  unpickles).
- a value-dependent graph runs only with the values it was built for (the digest in
  the graph); other values need the graph built from the flow's code
  (``GraphBuildNeeded``: a worker that offers the flow builds it, ``_creation``).
- parameters a portable task reads must be json.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from headwater.v1 import payload_pb2
from headwater.wire import (
    ENCODING_KEY,
    JSON,
    STRUCTURAL,
    EncodedValue,
    GraphBuildNeeded,
    GraphError,
    GraphSpec,
    ParameterError,
    parameters_digest,
)
from headwater.wire import json_consumers as _json_consumers
from headwater_runtime.store import NotFound, Store

from ._journal import payload_ids, payload_refs
from ._values import to_result_value


@functools.lru_cache(maxsize=256)
def _validator(schema: str) -> Any:
    import jsonschema

    cls = jsonschema.validators.validator_for(json.loads(schema))
    return cls(json.loads(schema), format_checker=cls.FORMAT_CHECKER)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tagged(tree: Any, depth: int = 0) -> bool:
    """Whether json holds a tag (``{"$date": ...}``, docs/payloads.md): a value with no
    plain-JSON form, which a JSON Schema cannot describe, so it is not checked."""
    if depth > 50:
        return True
    if isinstance(tree, dict):
        if len(tree) == 1 and str(next(iter(tree))).startswith("$"):
            return True
        return any(_tagged(v, depth + 1) for v in tree.values())
    if isinstance(tree, list):
        return any(_tagged(v, depth + 1) for v in tree)
    return False


def check_types(graph: GraphSpec, given: Mapping[str, Any]) -> None:
    """ParameterError (one line: parameter, expected type, value) for a json-encoded
    value that does not match its parameter's JSON Schema."""
    for spec in graph.params:
        value = given.get(spec.name)
        if not spec.json_schema or not isinstance(value, payload_pb2.Value):
            continue
        if value.WhichOneof("kind") != "inline" or value.inline.metadata.get(ENCODING_KEY) != JSON:
            continue  # pickled, tagged or by reference: checked by the SDK that sent it
        try:
            decoded = json.loads(value.inline.data)
        except (ValueError, RecursionError) as exc:  # bad json, bad UTF-8, too deep
            raise ParameterError(
                f"flow {graph.name!r}: parameter {spec.name!r} is not valid json "
                f"({type(exc).__name__}: {str(exc)[:200]})"
            ) from None
        if _tagged(decoded):
            continue
        from jsonschema.exceptions import best_match

        try:
            error = best_match(_validator(spec.json_schema).iter_errors(decoded))
        except Exception as exc:  # a schema stored before registration checked them
            raise ParameterError(
                f"flow {graph.name!r}: parameter {spec.name!r} cannot be checked against "
                f"its JSON Schema ({type(exc).__name__}); register the flow again"
            ) from None
        if error is not None:
            where = "".join(f"[{p!r}]" for p in error.absolute_path)
            raise ParameterError(
                f"flow {graph.name!r}: parameter {spec.name!r} expects "
                f"{spec.type_name or 'a value matching its schema'}, got {_short(decoded)} "
                f"({where + ': ' if where else ''}{error.message})"
            )


def check_schemas(graph: GraphSpec) -> None:
    """GraphError for a parameter whose JSON Schema the server cannot check values
    against (not JSON, not a schema, or one that recurses forever): refused when the
    flow is registered, not at each run."""
    for spec in graph.params:
        problem = _schema_problem(spec.json_schema) if spec.json_schema else None
        if problem is not None:
            raise GraphError(
                f"flow {graph.name!r}: parameter {spec.name!r} has a JSON Schema values "
                f"cannot be checked against ({problem})"
            )


@functools.lru_cache(maxsize=256)
def _schema_problem(schema: str) -> str | None:
    """Why values cannot be checked against this schema, or None (once per schema: a
    client registers its flow's graph with every run)."""
    try:
        import jsonschema

        loaded = json.loads(schema)
        cls = jsonschema.validators.validator_for(loaded)
        cls.check_schema(loaded)
        cls(loaded, format_checker=cls.FORMAT_CHECKER).is_valid(None)  # it terminates
    except Exception as exc:  # SchemaError, JSONDecodeError, RecursionError, re.error
        detail = getattr(exc, "message", None) or str(exc)
        return f"{type(exc).__name__}: {detail[:200]}"
    return None


def check_built_for(
    graph: GraphSpec,
    version: str,
    params: Mapping[str, Any],
    offered: frozenset[str] | None = None,
) -> None:
    """GraphBuildNeeded unless a value-dependent graph was built for these values, from
    the code ``offered`` holds (the flow's code digest the newest connected worker that
    can build the flow offers; empty: none is connected; None: not checked, for a
    version asked for by name, run as it was built). After a change of the flow's
    code a stored build ran the old body (a user trial); with no builder connected, or
    beside the new one during a deploy, it did still (another). A graph that records
    no code digest (stored before it was recorded) is reused as before."""
    if not graph.value_dependent:
        return
    if parameters_digest(params) == graph.parameters_digest:
        if offered is None or not graph.code_digest or graph.code_digest in offered:
            return
        raise GraphBuildNeeded(
            f"flow {graph.name!r} version {version!r} was built from other code than the "
            "newest connected worker offers for the flow"
            if offered
            else f"flow {graph.name!r} version {version!r} needs a worker that offers the "
            "flow to build its graph (none is connected)"
        )
    raise GraphBuildNeeded(
        f"flow {graph.name!r} version {version!r} was built for other parameter values: "
        "its body uses parameters as values, so its graph depends on them (docs/flows.md). "
        "Run the latest version by name with a worker that offers the flow connected (it "
        "builds the graph for these values), or start the run from the flow's code "
        "(Client.run(flow, params), `headwater run FILE --server`)"
    )


def check_mapped_given(graph: GraphSpec, given: Mapping[str, Any]) -> None:
    """ParameterError for a parameter a task maps over that the run leaves out: its
    default is one value in the graph, without elements, and the server maps over a
    value's elements without decoding it, so the run would fail at that task."""
    missing = sorted(graph.mapped_params() - given.keys())
    if missing:
        raise ParameterError(
            f"flow {graph.name!r}: a task maps over parameter {missing[0]!r}, so the run "
            "must give it, with its elements: its default in the graph is one value that "
            "the server cannot map over (the Python client sends it when it runs the flow "
            "object; by flow name, pass it: docs/payloads.md)"
        )


def check_refs(store: Store, flow_name: str, given: Mapping[str, payload_pb2.Value]) -> None:
    """ParameterError for a parameter that refers to a payload this server does not
    have, or whose size it misstates: the run would fail on its worker, far from the
    mistake. One store read per payload referenced (large parameters only)."""
    for name, value in given.items():
        for ref in payload_refs(value):
            try:
                size = store.payload_meta(ref.payload_id).size
            except NotFound:
                raise ParameterError(
                    f"flow {flow_name!r}: parameter {name!r} refers to payload "
                    f"{ref.payload_id!r}, which this server does not have (upload it first)"
                ) from None
            if ref.size_bytes != size:
                raise ParameterError(
                    f"flow {flow_name!r}: parameter {name!r} says payload {ref.payload_id!r} "
                    f"is {ref.size_bytes} bytes; it is {size}"
                )


def param_values(params: Mapping[str, Any]) -> dict[str, payload_pb2.Value]:
    """Bound parameters (payloads or encoded defaults) as Value messages to store."""
    return {name: to_result_value(value) for name, value in params.items()}


def param_payload_ids(values: Mapping[str, payload_pb2.Value]) -> tuple[str, ...]:
    """Stored payloads that parameters reference (kept while their run is)."""
    return tuple(dict.fromkeys(p for v in values.values() for p in payload_ids(v)))


def _encoding(value: Any) -> str:
    """The encoding of a parameter's payload that is not json, or "" when all json."""
    if isinstance(value, EncodedValue):
        return "" if value.encoding == JSON else value.encoding or "(none)"
    if not isinstance(value, payload_pb2.Value):
        return type(value).__name__
    kind = value.WhichOneof("kind")
    meta = value.ref.metadata if kind == "ref" else value.inline.metadata
    encoding = meta.get(ENCODING_KEY, "")
    if encoding in STRUCTURAL:
        return next((e for e in map(_encoding, value.items) if e), "")
    return "" if encoding == JSON else encoding or "(none)"


def check_json_params(graph: GraphSpec, params: Mapping[str, Any]) -> None:
    """Parameters that portable tasks read must be json (ParameterError otherwise)."""
    for name, (task, arg) in _json_consumers(graph).params.items():
        encoding = _encoding(params.get(name))
        if encoding:
            raise ParameterError(
                f"task {task!r}, argument {arg!r}: parameter {name!r} is encoded as "
                f"{encoding}, but the task reads only json (it is portable or implemented "
                "in another language); pass a json value (docs/payloads.md)"
            )
