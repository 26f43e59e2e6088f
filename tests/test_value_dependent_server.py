"""The control plane and value-dependent graphs (docs/flows.md): stored once per digest
under VERSION@DIGEST12, run only with the values they were built for, and parameters of
runs created by name checked against the JSON Schema in the graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from headwater import flow, task, unmapped
from headwater._graphs import compile_graph
from headwater.v1 import graph_pb2, payload_pb2, run_pb2
from headwater.wire import GraphBuildNeeded, GraphError, ParameterError, encode, is_build_version
from headwater_runtime.server._runs import PendingAssignment, RunManager
from headwater_runtime.server._schedules import Scheduler
from headwater_runtime.store import SQLiteStore


@task
def scale(x: int, factor: int) -> int:
    return x * factor


@task
def total(values: list[int]) -> int:
    return sum(values)


@flow
def sized(n: int = 3, factor: int = 2) -> int:
    return total(scale.map(list(range(n)), unmapped(factor)))


@flow(name="sized")
def sized_symbolic(n: int = 3, factor: int = 2) -> int:
    return total([scale(n, factor)])


class Clock:
    t = 1_000.0

    def now(self) -> float:
        return self.t


class Dispatch:
    def submit(self, pending: PendingAssignment) -> None:
        pass

    def submit_many(self, *args: Any) -> None:
        pass

    def submit_queued(self, queued: Any) -> None:
        pass

    def cancel(self, *args: Any) -> None:
        pass

    def cancel_many(self, *args: Any, **options: Any) -> None:
        pass


@pytest.fixture
def manager(tmp_path: Path) -> RunManager:
    return RunManager(SQLiteStore(tmp_path / "hw.db"), Dispatch(), Clock())


def built(f: Any, **params: Any) -> tuple[graph_pb2.FlowGraph, dict[str, payload_pb2.Value]]:
    given = f.validate(**params)
    return compile_graph(f, given, f.complete(given))


def value(obj: Any) -> payload_pb2.Value:
    encoded = encode(obj)
    return payload_pb2.Value(
        inline=payload_pb2.Payload(data=encoded.data, metadata=encoded.metadata)
    )


def test_each_distinct_value_dependent_graph_is_stored_once(manager: RunManager) -> None:
    versions = []
    for n in (3, 5, 3, 5, 3):
        msg, params = built(sized, n=n)
        version, _ = manager.register_flow(msg)
        versions.append(version)
        row, created = manager.create_run("sized", version, params)
        assert created and row.flow_version == version
    three, five = versions[0], versions[1]
    assert versions == [three, five, three, five, three]
    assert three != five and all(v.startswith("@") and len(v) == 13 for v in versions)
    flows = dict(manager.store.list_flows())
    assert sorted(flows["sized"]) == sorted([three, five])
    # A numbered version is not pushed to 3 by the two builds before it.
    version, _ = manager.register_flow(sized_symbolic.compile())
    assert version == "1"


def test_the_author_version_prefixes_the_build_version(manager: RunManager) -> None:
    versioned = flow(name="sized", version="2024.1")(sized.fn)
    msg, _ = built(versioned, n=4)
    version, _ = manager.register_flow(msg)
    assert version.startswith("2024.1@") and is_build_version(version)


def test_a_value_dependent_graph_runs_only_with_its_values(manager: RunManager) -> None:
    msg, params = built(sized, n=4)
    version, _ = manager.register_flow(msg)
    manager.create_run("sized", version, params)
    manager.create_run("sized", "", {"n": value(4)})  # by name, the same values: fine
    with pytest.raises(GraphBuildNeeded, match=r"built for other parameter values.*code"):
        manager.create_run("sized", version, {"n": value(5)})
    with pytest.raises(GraphBuildNeeded):
        manager.create_run("sized", "", {"n": value(4), "factor": value(3)})


def test_a_schedule_of_a_value_dependent_graph_is_checked_when_created(
    manager: RunManager,
) -> None:
    msg, params = built(sized, n=4)
    version, _ = manager.register_flow(msg)
    scheduler = Scheduler(manager.store, manager, manager.clock)
    schedule = run_pb2.Schedule(flow_name="sized", flow_version=version, enabled=True)
    schedule.interval.FromSeconds(60)
    for name, v in params.items():
        schedule.parameters[name].CopyFrom(v)
    assert scheduler.create(schedule).id
    schedule.parameters["n"].CopyFrom(value(9))
    with pytest.raises(GraphBuildNeeded):
        scheduler.create(schedule)


@flow(name="typed")
def typed(n: int, ids: list[int] | None = None, when: Any = None) -> int:
    return total([scale(n, 1)])


@pytest.mark.parametrize(
    "data",
    [b"{not json", b'"\xff\xfe"', b"[" * 3000 + b"]" * 3000, b"1" * 5000],
    ids=["malformed", "bad-utf8", "too-deep", "huge-int"],
)
def test_a_json_parameter_that_is_not_json_is_refused_naming_it(
    manager: RunManager, data: bytes
) -> None:
    """Answered UNKNOWN (JSONDecodeError, UnicodeDecodeError, RecursionError,
    ValueError) by a run by name; now a ParameterError (INVALID_ARGUMENT) in one line."""
    version, _ = manager.register_flow(typed.compile())
    bad = payload_pb2.Value(inline=payload_pb2.Payload(data=data, metadata={"encoding": "json"}))
    with pytest.raises(ParameterError, match=r"^flow 'typed': parameter 'n' is not valid json \("):
        manager.create_run("typed", version, {"n": bad})


def test_a_parameter_referring_to_a_payload_the_server_lacks_is_refused(
    manager: RunManager,
) -> None:
    """A reference to no stored payload, or with a wrong size, was accepted and the run
    failed on its worker (PayloadTransferError); now the run is refused naming it."""
    version, _ = manager.register_flow(typed.compile())
    data = b"[1, 2]"
    stored = manager.store.put_payload(iter([data]), {"encoding": "json"}, len(data)).id

    def ref(payload_id: str, size: int) -> payload_pb2.Value:
        return payload_pb2.Value(
            ref=payload_pb2.PayloadRef(
                payload_id=payload_id, size_bytes=size, metadata={"encoding": "json"}
            )
        )

    with pytest.raises(ParameterError, match=r"parameter 'ids' refers to payload 'nope', which"):
        manager.create_run("typed", version, {"n": value(1), "ids": ref("nope", 6)})
    with pytest.raises(ParameterError, match=r"says payload '\w+' is 99 bytes; it is 6"):
        manager.create_run("typed", version, {"n": value(1), "ids": ref(stored, 99)})
    manager.create_run("typed", version, {"n": value(1), "ids": ref(stored, len(data))})


@pytest.mark.parametrize(
    "schema",
    [
        "{not json",
        '{"type": "nosuchtype"}',
        '{"$ref": "#"}',
        '{"type": "string", "pattern": "("}',
        "5",
    ],
)
def test_a_parameter_schema_values_cannot_be_checked_against_is_refused_at_registration(
    manager: RunManager, schema: str
) -> None:
    """Stored as given, it made every later run by name of that flow version answer
    UNKNOWN; now RegisterFlow refuses it (GraphError: INVALID_ARGUMENT)."""
    msg = typed.compile()
    msg.parameters[0].json_schema = schema
    with pytest.raises(
        GraphError, match=r"parameter 'n' has a JSON Schema values cannot be checked"
    ):
        manager.register_flow(msg)


def test_runs_by_name_are_checked_against_the_json_schema(manager: RunManager) -> None:
    version, _ = manager.register_flow(typed.compile())
    manager.create_run("typed", version, {"n": value(3), "ids": value([1, 2])})
    with pytest.raises(ParameterError, match=r"parameter 'n' expects int, got \"abc\""):
        manager.create_run("typed", version, {"n": value("abc")})
    with pytest.raises(
        ParameterError,
        match=r"'ids' expects list\[int\] \| None, got \[1, \"x\"\] \(\[1\]: 'x' is not",
    ):
        manager.create_run("typed", version, {"n": value(1), "ids": value([1, "x"])})
    # The server converts nothing: "3" for an int is refused, not turned into 3.
    with pytest.raises(ParameterError, match=r"'n' expects int"):
        manager.create_run("typed", version, {"n": value("3")})
    # A pickled value is not decoded by the server: left to the SDK that sent it.
    pickled = value((1, 2))
    assert pickled.inline.metadata["encoding"] == "pickle"
    manager.create_run("typed", version, {"n": pickled})
