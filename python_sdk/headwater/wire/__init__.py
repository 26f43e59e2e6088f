"""The contract layer's hand-written half: what every side of the wire shares.

``headwater.v1`` is the code generated from ``proto/headwater/v1``; this package holds
the helpers around it that the runtime and the SDK both use, defined once: the graph
model and its FlowGraph codec, task and flow run states, structured failures, value
codecs, chunked payload transfer, stream batching, ids, size limits, the protocol
version and features, durations and timestamps, and the environment variables.

It imports nothing from the runtime or the SDK (a layering contract checks it), and
its public names, listed in ``__init__.pyi``, load lazily: ``from headwater.wire
import GraphSpec`` does not import protobuf. See docs/architecture.md.
"""

from .lazy import attach_stub

__getattr__, __dir__, __all__ = attach_stub(__name__, __file__)
