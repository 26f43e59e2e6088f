"""The SDK's public surface: exactly these names, none of them generated protobuf code."""

from __future__ import annotations

import inspect
import subprocess
import sys

from google.protobuf.message import Message

import headwater

EXPECTED_ALL = [
    "AttemptRecord",
    "AuditEntry",
    "Client",
    "CredentialInfo",
    "DaskExecutor",
    "EncodingError",
    "FailureInfo",
    "Flow",
    "FlowDefinitionError",
    "FlowRun",
    "FlowRunCancelled",
    "FlowRunFailed",
    "FlowRunInterrupted",
    "FlowRunState",
    "GraphError",
    "LimitInfo",
    "LogEntry",
    "ParameterError",
    "RemoteFlowRun",
    "RemoteTask",
    "ResultCache",
    "ScheduleInfo",
    "ServerError",
    "Skip",
    "StateEntry",
    "Task",
    "TaskInterrupted",
    "TaskRef",
    "TaskRunInfo",
    "TaskRunRecord",
    "TaskRunState",
    "ThreadExecutor",
    "Trigger",
    "ValueInfo",
    "WaitingInfo",
    "WebhookInfo",
    "WorkerInfo",
    "__version__",
    "case",
    "flow",
    "merge",
    "remote_task",
    "task",
    "unmapped",
]


def test_all_is_pinned() -> None:
    assert sorted(headwater.__all__) == EXPECTED_ALL
    assert len(set(headwater.__all__)) == len(headwater.__all__)


def test_every_public_name_exists() -> None:
    for name in headwater.__all__:
        assert hasattr(headwater, name), name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from headwater import *", namespace)
    namespace.pop("__builtins__")
    assert sorted(namespace) == EXPECTED_ALL


def test_no_public_name_is_generated_protobuf_code() -> None:
    for name in headwater.__all__:
        obj = getattr(headwater, name)
        if inspect.ismodule(obj):
            raise AssertionError(f"headwater.{name} is a module ({obj.__name__})")
        if inspect.isclass(obj):
            assert not issubclass(obj, Message), f"headwater.{name} is a protobuf message"
        module = getattr(obj, "__module__", None) or ""
        assert not module.startswith("headwater.v1"), f"headwater.{name} comes from {module}"
        assert not module.endswith("_pb2"), f"headwater.{name} comes from {module}"


def test_state_enums_are_plain_python_enums() -> None:
    """Users compare states with the enum members, e.g. ``run.state is FlowRunState.SUCCESS``."""
    assert headwater.FlowRunState.SUCCESS.name == "SUCCESS"
    assert headwater.TaskRunState.TRIGGER_FAILED.name == "TRIGGER_FAILED"
    assert headwater.Trigger("all_finished") is headwater.Trigger.ALL_FINISHED


def test_error_hierarchy() -> None:
    assert issubclass(headwater.FlowDefinitionError, TypeError)
    assert issubclass(headwater.GraphError, ValueError)
    assert issubclass(headwater.ParameterError, TypeError)
    assert issubclass(headwater.EncodingError, TypeError)
    assert issubclass(headwater.FlowRunFailed, Exception)
    # Ctrl-C stops the caller: not an Exception (`except Exception` lets it through).
    assert issubclass(headwater.FlowRunInterrupted, KeyboardInterrupt)
    assert not issubclass(headwater.FlowRunInterrupted, Exception)


def test_version_matches_the_distribution() -> None:
    from importlib.metadata import version

    assert headwater.__version__ == version("headwater")


def test_importing_the_contract_imports_no_sdk_module_nor_opentelemetry() -> None:
    """A worker in a thin container imports the contract without the SDK's flows,
    client or OpenTelemetry (the layering of docs/architecture.md)."""
    code = (
        "import sys, headwater.v1.worker_pb2, headwater.v1.worker_pb2_grpc, headwater.wire; "
        "headwater.wire.graph_to_proto, headwater.wire.PayloadTransfer; "
        "loaded = sorted(m for m in sys.modules if m.startswith(('headwater', 'opentelemetry'))); "
        "bad = [m for m in loaded if not m.startswith(('headwater.v1', 'headwater.wire')) "
        "and m != 'headwater']; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_an_embedded_run_imports_neither_grpc_nor_protobuf() -> None:
    """``from headwater import flow, task`` and an embedded run stay light."""
    code = (
        "import sys\n"
        "from headwater import flow, task\n"
        "@task\ndef one() -> int:\n    return 1\n"
        "@flow\ndef f() -> int:\n    return one()\n"
        "assert f() == 1\n"
        "heavy = [m for m in ('grpc', 'google.protobuf', 'opentelemetry', 'distributed') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_importing_headwater_does_not_import_dask() -> None:
    """DaskExecutor is imported on first use: the CLI and workers start without Dask."""
    code = (
        "import sys, headwater; assert 'distributed' not in sys.modules; "
        "headwater.DaskExecutor; assert 'distributed' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_no_public_method_takes_or_returns_generated_protobuf_types() -> None:
    """Users pass and get Python values and the SDK's dataclasses: no public method or
    property of a public class names a ``_pb2`` type in its signature, except
    ``Flow.compile``, whose point is the wire form (the FlowGraph, to inspect or send;
    ``Flow.graph`` is the same graph as a dataclass)."""
    wire_on_purpose = {"Flow.compile"}
    offenders = []
    for name in headwater.__all__:
        obj = getattr(headwater, name)
        if not inspect.isclass(obj):
            continue
        for attr, member in vars(obj).items():
            if attr.startswith("_"):
                continue
            function = member.fget if isinstance(member, property) else member
            annotations = getattr(function, "__annotations__", None)
            if not isinstance(annotations, dict):
                continue
            if any("_pb2" in str(hint) for hint in annotations.values()):
                offenders.append(f"{name}.{attr}")
    assert wire_on_purpose <= set(offenders), "the test no longer sees annotations"
    offenders = [o for o in offenders if o not in wire_on_purpose]
    assert offenders == []
