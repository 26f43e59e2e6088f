"""Flow graphs of the run manager (a part of ``RunManager``, kept apart for size):
validated and stored as flow versions, and kept in memory by (name, version) for the
runs that follow; large ones leave the cache when the last large run ends (_gc.py).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from headwater.v1 import graph_pb2
from headwater.wire import GraphSpec, Limits, build_version, graph_from_proto
from headwater_runtime.engine import Clock
from headwater_runtime.store import FlowRunRow, Store

from ._children import child_split_nodes
from ._gc import Collector, release_now
from ._limits import check_graph, graph_weight
from ._params import check_schemas
from ._slices import parse_in_slices, serialize_in_slices

if TYPE_CHECKING:
    from ._runs import ActiveRun


class FlowGraphs:
    """Flow graphs by name and version (a mixin of ``RunManager``)."""

    store: Store
    clock: Clock
    limits: Limits
    collector: Collector
    runs: dict[str, ActiveRun]
    _graphs: dict[tuple[str, str], GraphSpec]

    def check_flow(self, msg: graph_pb2.FlowGraph) -> tuple[GraphSpec, bytes, str, str]:
        """Validate a flow graph (GraphError names what is wrong, LimitExceeded a size
        over the server's limits); the graph, its serialized form, digest and the
        version to store it as. Pure CPU: callable from any thread.

        A symbolic graph is a version of the flow (numbered unless named). A
        value-dependent one is one build: stored once per digest under
        ``VERSION@DIGEST12``, so runs with many parameter values add no numbered
        versions."""
        # Checked and built with full collections held off when heavy: walking the
        # items of a 100,000-item constant list set one off (~50 ms, GIL held).
        with self.collector.building(graph_weight(msg, self.collector.large)):
            check_graph(msg, self.limits)
            graph = graph_from_proto(msg)
        check_schemas(graph)
        if len(msg.tasks) >= self.collector.large:
            # In pieces: one C call over a 100,000-task graph holds the GIL 11-50 ms.
            data = serialize_in_slices(msg, "tasks")
        else:
            data = msg.SerializeToString(deterministic=True)
        digest = hashlib.sha256(data).hexdigest()
        label = build_version(msg.version, digest) if graph.value_dependent else msg.version
        return graph, data, digest, label

    def remember_graph(self, name: str, version: str, graph: GraphSpec) -> None:
        """Keep a graph just validated: the run that usually follows needs it."""
        self._graphs.setdefault((name, version), graph)

    def register_flow(self, msg: graph_pb2.FlowGraph) -> tuple[str, bool]:
        """Validate and store a flow graph in this thread; GraphError names what is
        wrong."""
        graph, data, digest, label = self.check_flow(msg)
        version, created = self.store.put_flow(msg.name, digest, data, label, self.clock.now())
        self.remember_graph(msg.name, version.version, graph)
        return version.version, created

    def _drop_large_graphs(self) -> None:
        """The last large run ended (on the releasing thread): large graphs leave the
        cache, freed a task at a time; the next run of one reads it back from the store
        (``graph``, in slices). Kept, a 100,000-task graph made every full collection
        cost ~100 ms once the collector had it back."""
        for key in list(self._graphs):  # a copy: reader threads may add graphs
            graph = self._graphs.get(key)
            if graph is None or graph.weight() < self.collector.large:
                continue
            if self._graphs.pop(key, None) is graph:
                # Its tasks are let go of one at a time, so that dropping the graph
                # itself frees little at once. Nothing of the graph is changed: a run
                # being built meanwhile may still use it (it then lives on with it).
                tasks: list[Any] = [list(graph.tasks)]
                del graph
                release_now(tasks)

    def forget_graphs(self, keys: list[tuple[str, str]]) -> None:
        """Let go of the graphs of flow versions a prune deleted (value-dependent
        builds no run used for the retention period, store/_builds.py). A run being
        created with one meanwhile is refused by the store (NotFound)."""
        for key in keys:
            self._graphs.pop(key, None)

    def cached_graph(self, name: str, version: str) -> GraphSpec | None:
        """A flow version's graph if this server has it in memory (no store read)."""
        return self._graphs.get((name, version)) if version else None

    def graph(self, name: str, version: str = "") -> tuple[str, GraphSpec]:
        """A registered flow's version and graph (NotFound when not registered)."""
        if version:
            # A flow version never changes once registered: one seen already needs no
            # round trip to the store (a run's creation waited ~0.3 ms for it on
            # PostgreSQL). A build a prune deleted leaves this cache (forget_graphs);
            # a run created with it meanwhile is refused as the store stores it.
            cached = self._graphs.get((name, version))
            if cached is not None:
                return version, cached
        stored = self.store.get_flow(name, version)
        key = (name, stored.version)
        graph = self._graphs.get(key)
        if graph is None:
            # Not cached (after a restart): decoded a slice at a time, and built with
            # full collections held off when large, as when it was registered.
            msg = parse_in_slices(graph_pb2.FlowGraph, stored.graph)
            with self.collector.building(graph_weight(msg, self.collector.large)):
                graph = graph_from_proto(msg)
            self._graphs[key] = graph
        return stored.version, graph

    def split_nodes(self, row: FlowRunRow, graph: GraphSpec) -> dict[str, tuple[str | int, ...]]:
        """The tasks whose results a run's workers split (``child_split_nodes`` for a
        child run, whose parent's graph says whether it maps over the child's result)."""
        if not row.parent_flow_run_id:
            return graph.split_nodes()
        parent = self.runs.get(row.parent_flow_run_id)
        if parent is not None:
            return child_split_nodes(row, graph, parent.graph, parent.split_nodes)
        # A restart replays a child before its parent: the parent's, as it would be.
        stored = self.store.get_flow_run(row.parent_flow_run_id)
        parent_graph = self.graph(stored.flow_name, stored.flow_version)[1]
        parent_split = self.split_nodes(stored, parent_graph)
        return child_split_nodes(row, graph, parent_graph, parent_split)
