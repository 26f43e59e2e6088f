"""The worker protocol's version and optional features: the one list the server
announces (``Welcome.features``, ``GetServerInfoResponse.features``) and workers
negotiate against. docs/worker-protocol.md describes each feature."""

from __future__ import annotations

from dataclasses import dataclass

#: The worker protocol version this code speaks (``Hello``/``Welcome.protocol_version``).
PROTOCOL_VERSION = 1


@dataclass(frozen=True, slots=True)
class Feature:
    """An optional protocol feature: its name on the wire and what it means."""

    name: str
    summary: str
    negotiated: bool = False  # True: changes the stream only when both ends list it


#: Several stream messages in one (``ConnectRequestBatch``/``ConnectResponseBatch``).
BATCH = "batch"
#: The server may ask the worker to build a flow's graph (``BuildGraph``/``GraphBuilt``).
GRAPH_BUILDS = "graph-builds"
#: ``ConnectResponse.drain``: the server assigns no new attempts (DrainWorker).
DRAIN = "drain"
#: ``ConnectResponse.release_values``: values a Dask bridge holds that nothing needs.
RELEASE_VALUES = "release-values"

#: Every feature a Headwater server lists in ``Welcome.features`` and
#: ``GetServerInfoResponse.features``, in that order.
SERVER_FEATURES: tuple[Feature, ...] = (
    Feature("payload-refs", "values above the inline limit travel as PayloadRef (chunked)"),
    Feature("split-results", "Assignment.split_result / split_path: send elements separately"),
    Feature("fencing", "every report carries the FencingToken of the attempt it is about"),
    Feature("heartbeat-cancel", "HeartbeatAck.cancel names attempts the worker must stop"),
    Feature(BATCH, "several stream messages in one batch message", negotiated=True),
    Feature("schedules", "the server creates runs from interval and cron schedules"),
    Feature("code-digests", "tasks go only to workers whose Hello.code_digests match the graph"),
    Feature(GRAPH_BUILDS, "BuildGraph: a worker offering a flow builds its graph", negotiated=True),
    Feature("subflows", "subflow nodes and flows started by tasks run as child flow runs"),
    Feature(DRAIN, "ConnectResponse.drain: no new attempts; exit once idle if asked", True),
    Feature(RELEASE_VALUES, "ReleaseValues: let go of held values nothing needs", True),
    Feature("worker-stop", "ConnectRequest.stopping: no new attempts; give-backs count no loss"),
)


def feature_names(features: tuple[Feature, ...] = SERVER_FEATURES) -> list[str]:
    """The names of ``features``, as sent on the wire."""
    return [f.name for f in features]
