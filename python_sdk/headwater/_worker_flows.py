"""What a Python worker does with flows: it offers the flows of its modules, builds
their graphs when the server asks (``BuildGraph``), and runs the flows its tasks call
as child flow runs on the server it serves.

Builds run on a thread of their own and take no slot: the server waits for the answer
to create a run (by name, by a schedule, as a subflow) and the flow body is usually
quick. The graph records this worker's task code, so the run's tasks go to workers
with the same code (docs/flows.md).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from types import ModuleType
from typing import Any

from headwater.v1 import worker_pb2
from headwater.wire import (
    GRAPH_BUILDS,
    GRPC_MESSAGE_LIMIT,
    ConnectionSettings,
    FlowRunState,
    ParameterError,
    PayloadTransfer,
    decode_value,
    encode,
    message_ceiling,
    split_task_run_id,
)

from ._compiler import GraphTooLarge, task_bound
from ._flow import Flow
from ._loader import LoadError
from ._run import FlowRun
from ._worker_codec import failure

log = logging.getLogger("headwater.worker")

#: The failure type of a build refused for its parameter values (the server answers
#: the run's creator INVALID_ARGUMENT with the message).
PARAMETER_ERROR = "headwater.ParameterError"
#: The failure type of a graph too large to send in one message.
GRAPH_TOO_LARGE = "headwater.GraphTooLarge"

Send = Callable[[worker_pb2.ConnectRequest], None]


def collect_flows(modules: Iterable[ModuleType]) -> dict[str, Flow[..., Any]]:
    """Every Flow in the modules' namespaces, by flow name. Two flow functions of one
    name are refused (LoadError): a server knows a flow by its name, and asked to build
    it the worker would build whichever came first, the other module's flow for a run
    of this one (a user trial). The same function twice (imported into another module,
    a ``with_options`` copy) is one flow."""
    flows: dict[str, Flow[..., Any]] = {}
    where: dict[str, str] = {}
    for module in modules:
        for obj in vars(module).values():
            if not isinstance(obj, Flow):
                continue
            other = flows.setdefault(obj.name, obj)
            where.setdefault(obj.name, module.__name__)
            if other.fn is not obj.fn:
                raise LoadError(
                    f"two flows are named {obj.name!r} (in {where[obj.name]} and "
                    f"{module.__name__}): a server knows a flow by its name; give one of "
                    "them another name (@flow(name=...))"
                )
    return flows


def offers(flows: Mapping[str, Flow[..., Any]]) -> list[worker_pb2.FlowOffer]:
    """The Hello's list of flows this worker can build."""
    return [worker_pb2.FlowOffer(name=n, code_digest=f.code_digest) for n, f in flows.items()]


class GraphBuilder:
    """Answers BuildGraph requests, each on a thread of its own.

    Args:
        flows: the flows this worker offers, by name.
        send: queues a message on the worker's stream.
    """

    def __init__(self, flows: Mapping[str, Flow[..., Any]], send: Send) -> None:
        self.flows = flows
        self.send = send
        self.transfer: PayloadTransfer | None = None
        self.inline_limit = 0
        #: The largest message the server accepts (its last Welcome's).
        self.max_message_bytes = GRPC_MESSAGE_LIMIT

    @property
    def feature(self) -> list[str]:
        """The Hello feature that lets the server ask for builds (none without flows)."""
        return [GRAPH_BUILDS] if self.flows else []

    def request(self, request: worker_pb2.BuildGraph) -> None:
        """Build in the background; the answer goes on the stream."""
        thread = threading.Thread(
            target=self._answer, args=(request,), name="headwater-build", daemon=True
        )
        thread.start()

    def _answer(self, request: worker_pb2.BuildGraph) -> None:
        answer = worker_pb2.GraphBuilt(build_id=request.build_id)
        try:
            # (Bounded as the server bounds graphs: a body making millions of tasks stops
            # at the first one past it, not once it has built them all.)
            with task_bound(request.max_tasks):
                graph, params = self.build(request.flow_name, dict(request.parameters))
            answer.graph.CopyFrom(graph)
            for name, value in params.items():
                answer.parameters[name].CopyFrom(value)
        except ParameterError as exc:
            answer.error.CopyFrom(failure(PARAMETER_ERROR, str(exc), retryable=False))
        except GraphTooLarge as exc:
            answer.error.CopyFrom(failure(GRAPH_TOO_LARGE, str(exc), retryable=False))
        except Exception as exc:
            log.warning("could not build the graph of flow %s: %r", request.flow_name, exc)
            kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
            answer.error.CopyFrom(failure(kind, str(exc), retryable=False))
        size, ceiling = answer.ByteSize(), message_ceiling(self.max_message_bytes)
        if size > ceiling:
            # Sent as is, the server cut the stream (RESOURCE_EXHAUSTED), the worker
            # reconnected, and the run's creator read that no worker offers the flow (a
            # user trial): a large parameter is a constant of every task it feeds.
            why = (
                f"the graph of flow {request.flow_name!r} for these values is {size} bytes, "
                f"more than one message to the server may hold ({ceiling}): start the run "
                "from the flow's code (Client.run(flow, params)), which sends large values "
                "as payloads"
            )
            log.warning("%s", why)
            answer = worker_pb2.GraphBuilt(build_id=request.build_id)
            answer.error.CopyFrom(failure(GRAPH_TOO_LARGE, why, retryable=False))
        self.send(worker_pb2.ConnectRequest(graph_built=answer))

    def build(self, flow_name: str, parameters: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        """(FlowGraph, converted parameters encoded) of a flow for encoded values."""
        from ._graphs import compile_graph

        flow = self.flows.get(flow_name)
        if flow is None:
            raise LookupError(f"this worker offers no flow {flow_name!r}")
        transfer = self.transfer
        assert transfer is not None
        values = {name: decode_value(v, transfer.download) for name, v in parameters.items()}
        given = flow.validate(**values)

        def upload(value: Any, portable: bool) -> Any:
            return transfer.value(encode(value, portable=portable), self.inline_limit)

        return compile_graph(flow, given, flow.complete(given), upload, for_run=True)


class FlowLauncher:
    """Starts the flows a task calls while it runs, as child runs of that task run on
    the server the worker serves, with the worker's connection settings.

    Args:
        settings: the worker's server address and token.
    """

    def __init__(
        self,
        settings: ConnectionSettings,
        lending: Callable[[tuple[str, int]], AbstractContextManager[None]] | None = None,
    ) -> None:
        self.settings = settings
        #: Around the child run's creation and wait: the attempt's slot is lent.
        self.lending = lending

    def run_flow(
        self, flow: Flow[..., Any], given: dict[str, Any], task_run_id: str, attempt: int
    ) -> FlowRun:
        """Run ``flow`` on the server as a child of attempt ``attempt`` of the task run
        ``task_run_id``; wait for it (the attempt's slot lent meanwhile). The server
        cancels it if the attempt ends first."""
        from ._client import Client

        lent = self.lending((task_run_id, attempt)) if self.lending else nullcontext()
        with lent, Client(self.settings.server, token=self.settings.token) as client:
            created = client.run(flow, given, parent_task_run=task_run_id, parent_attempt=attempt)
            final = client.wait(created.id)
            return FlowRun(
                id=final.id,
                flow_name=final.flow_name,
                state=final.state,
                result=final.result if final.state is FlowRunState.SUCCESS else None,
                parameters=dict(given),
                task_runs={},  # on the server: Client.get(id, include_task_runs=True)
                message=final.message,
                parent_id=final.parent_id,
                parent_task_run=split_task_run_id(task_run_id)[1],
            )


__all__ = ["PARAMETER_ERROR", "FlowLauncher", "GraphBuilder", "collect_flows", "offers"]
