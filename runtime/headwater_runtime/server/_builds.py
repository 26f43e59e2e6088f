"""Graphs built by workers: runs created without the flow's code.

A flow whose body uses its parameters as values has a graph per set of values
(docs/flows.md). A run created from the code registers the graph for its values; a run
created by name (a client without the code, a schedule, a subflow whose child flow is
value-dependent) needs one built here. The server asks a connected worker that offers
the flow (``Hello.flows``, feature ``graph-builds``) with ``BuildGraph``: the worker
checks and converts the values with the flow function's annotations, runs the body and
answers ``GraphBuilt`` with the graph and the converted values, which the server
registers and runs.

Which worker: the most recently connected one that offers the flow (after a deploy,
the newest worker has the newest code). The graph records that worker's task code
digests, so its tasks go to workers with the same code.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from headwater.v1 import graph_pb2, payload_pb2, worker_pb2
from headwater.wire import GRAPH_BUILDS, GraphBuildNeeded, GraphError, ParameterError

from ._dispatch import WorkerSession, stored_payloads

#: The failure type a worker reports for parameter values the annotations refuse.
PARAMETER_ERROR = "headwater.ParameterError"


class NoBuilder(GraphBuildNeeded):
    """No connected worker offers the flow: its graph for these values cannot be built
    now (FAILED_PRECONDITION for a client; subflows and schedules wait for one).

    Args:
        flow_name: the flow no worker offers.
    """

    def __init__(self, flow_name: str) -> None:
        super().__init__(
            f"flow {flow_name!r} needs its graph built for these parameter values (its body "
            "uses them as values, or it is not registered), and no connected worker offers "
            "it: start a worker with the flow's module (`headwater worker --module "
            "MODULE`), or start the run from the code (Client.run(flow, params))"
        )
        self.flow_name = flow_name


class BuildUnavailable(Exception):
    """The worker asked to build a graph left (or did not answer in time): try again."""


@dataclass(frozen=True)
class Built:
    """A graph a worker built, and the run's parameters as it converted them."""

    graph: graph_pb2.FlowGraph
    parameters: dict[str, payload_pb2.Value]
    worker: str
    #: The builder's credential when it is worker-only (None: a reader or better),
    #: whose converted parameters may reference only payloads it may read.
    restricted_to: str | None = None


class GraphBuilds:
    """Asks workers for graphs and matches their answers.

    Args:
        timeout: seconds a worker has to answer a BuildGraph.
        max_tasks: the most tasks a graph may have (max_graph_tasks; BuildGraph's
            max_tasks: the worker stops building past it).
    """

    def __init__(self, timeout: float = 60.0, max_tasks: int = 0) -> None:
        self.timeout = timeout
        self.max_tasks = max_tasks
        self._ids = itertools.count(1)
        self._waiting: dict[str, tuple[asyncio.Future[Built], str]] = {}  # id -> (, session)

    @staticmethod
    def builders(sessions: Iterable[WorkerSession], flow_name: str) -> list[WorkerSession]:
        """The sessions that can build ``flow_name``, the most recently connected first."""
        found = [s for s in sessions if GRAPH_BUILDS in s.features and flow_name in s.flows]
        return sorted(found, key=lambda s: s.serial, reverse=True)

    async def build(
        self,
        sessions: Iterable[WorkerSession],
        flow_name: str,
        parameters: Mapping[str, payload_pb2.Value],
    ) -> Built:
        """The graph of ``flow_name`` for these values, built by a worker. NoBuilder when
        none offers it, ParameterError for values the flow's annotations refuse,
        GraphError when the body cannot be built, BuildUnavailable when the worker
        left or did not answer in time."""
        builders = self.builders(sessions, flow_name)
        if not builders:
            raise NoBuilder(flow_name)
        session = builders[0]
        build_id = str(next(self._ids))
        future: asyncio.Future[Built] = asyncio.get_running_loop().create_future()
        self._waiting[build_id] = (future, session.session_id)
        request = worker_pb2.BuildGraph(
            build_id=build_id,
            flow_name=flow_name,
            parameters=dict(parameters),
            max_tasks=self.max_tasks,
        )
        if session.restricted:  # a worker-only credential reads the values to build
            session.build_reads[build_id] = stored_payloads(parameters.values())
        session.send(worker_pb2.ConnectResponse(build_graph=request))
        try:
            async with asyncio.timeout(self.timeout):
                built = await future
        except TimeoutError:
            raise BuildUnavailable(
                f"worker {session.name!r} did not build flow {flow_name!r} within {self.timeout:g}s"
            ) from None
        finally:
            self._waiting.pop(build_id, None)
            session.build_reads.pop(build_id, None)
        if built.graph.name != flow_name:
            raise GraphError(
                f"worker {session.name!r} built flow {built.graph.name!r} when asked for "
                f"{flow_name!r}"
            )
        return built

    def on_built(self, session: WorkerSession, answer: worker_pb2.GraphBuilt) -> None:
        """A worker's GraphBuilt: resolve the build that waits for it."""
        waiting = self._waiting.get(answer.build_id)
        if waiting is None or waiting[1] != session.session_id or waiting[0].done():
            return  # late (timed out), or not this session's build: nothing waits
        future = waiting[0]
        if answer.HasField("error"):
            error = answer.error
            if error.type == PARAMETER_ERROR:
                future.set_exception(ParameterError(error.message))
            else:
                future.set_exception(
                    GraphError(
                        f"worker {session.name!r} could not build the graph of the flow: "
                        f"{error.type}: {error.message}"
                    )
                )
            return
        restricted_to = session.credential if session.restricted else None
        future.set_result(Built(answer.graph, dict(answer.parameters), session.name, restricted_to))

    def forget(self, session: WorkerSession) -> None:
        """A worker left: its unanswered builds fail (BuildUnavailable)."""
        for future, owner in list(self._waiting.values()):
            if owner == session.session_id and not future.done():
                future.set_exception(
                    BuildUnavailable(f"worker {session.name!r} left before building the graph")
                )


__all__ = ["PARAMETER_ERROR", "BuildUnavailable", "Built", "GraphBuilds", "NoBuilder"]
