"""The control plane's gRPC services (issue 4 in progress: PayloadService and auth)."""

from ._auth import TokenAuthInterceptor
from ._payloads import MAX_CHUNK, PayloadServicer

__all__ = ["MAX_CHUNK", "PayloadServicer", "TokenAuthInterceptor"]
