"""Headwater: write flows as Python functions, run them embedded or on a server.

from headwater import flow, task

@task(retries=2)
def double(x: int) -> int:
    return 2 * x

@flow
def pipeline(n: int = 3) -> list[int]:
    return double.map(range(n))

pipeline()          # runs in-process, returns [0, 2, 4]
pipeline.run()      # returns a FlowRun with per-task states
pipeline.compile(n=3)  # the FlowGraph message sent to a server, for n=3

Public names are listed in ``__init__.pyi`` and load on first use, so importing the
contract (``headwater.v1``, ``headwater.wire``) or running a flow embedded loads
neither gRPC nor the rest of the SDK (docs/architecture.md).
"""

from headwater.wire.lazy import attach_stub

__version__ = "0.1.0"

__getattr__, __dir__, _names = attach_stub(__name__, __file__)
__all__ = sorted([*_names, "__version__"])
