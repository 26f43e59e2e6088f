"""A Client reads back what a server answers however large the run: a GetFlowRun
answer over gRPC's default 4 MiB receive limit (a 40,000-task run, thousands of
failures with their tracebacks) once failed with "Received message larger than max",
and `headwater run` exited 1 for a run that succeeded. A real gRPC server in this
process gives the answer."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures

import grpc
import pytest

from headwater import Client
from headwater.v1 import control_plane_pb2 as cp
from headwater.v1 import control_plane_pb2_grpc, run_pb2
from headwater.wire import FlowRunState, TaskRunState

TASKS = 3_000
TRACEBACK = "Traceback (most recent call last):\n" + "  File 'x.py', line 1\n" * 100


class _Control(control_plane_pb2_grpc.ControlPlaneServiceServicer):
    def GetFlowRun(
        self, request: cp.GetFlowRunRequest, context: grpc.ServicerContext
    ) -> cp.GetFlowRunResponse:
        response = cp.GetFlowRunResponse(
            flow_run=run_pb2.FlowRun(
                id=request.id, flow_name="wide", state=FlowRunState.FAILED.value
            )
        )
        for i in range(TASKS):
            task_run = response.task_runs.add(
                id=f"{request.id}/work[{i}]", task_id="work", name=f"work[{i}]", map_index=i
            )
            task_run.state = TaskRunState.FAILED.value
            failure = task_run.history.add(state=TaskRunState.FAILED.value).failure
            failure.type, failure.message = "builtins.ValueError", f"bad row {i}"
            failure.stack_trace = TRACEBACK
        return response


@pytest.fixture
def address() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    control_plane_pb2_grpc.add_ControlPlaneServiceServicer_to_server(_Control(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


def test_a_run_whose_task_runs_are_over_4_mib_is_read_back_whole(address: str) -> None:
    with Client(address, timeout=30) as client:
        run = client.get("r" * 32, include_task_runs=True)
    assert len(run.task_runs) == TASKS
    assert run.task_runs[-1].key == f"work[{TASKS - 1}]"
    assert run.task_runs[-1].failure is not None
    assert run.task_runs[-1].failure.traceback == TRACEBACK
