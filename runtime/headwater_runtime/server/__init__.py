"""The control plane (issue 4, in progress).

Built so far: the run manager (durable engine host with journal, projections,
commit-before-effects and crash recovery), server-side value handles, the journal
codec, PayloadService and token auth. Not yet: the WorkerGateway and ControlPlane
servicers, the dispatcher, and the ``headwater server`` command.
"""

from ._auth import TokenAuthInterceptor
from ._payloads import MAX_CHUNK, PayloadServicer
from ._runs import Dispatch, PendingAssignment, RunManager
from ._values import SERVER_VALUES, ServerValues

__all__ = [
    "MAX_CHUNK",
    "SERVER_VALUES",
    "Dispatch",
    "PayloadServicer",
    "PendingAssignment",
    "RunManager",
    "ServerValues",
    "TokenAuthInterceptor",
]
