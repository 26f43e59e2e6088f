"""Imported by the ``headwater`` command before anything loads gRPC: gRPC's core logs
informational lines of its own on stderr (``I1201 ... Handshake failed`` for every
client that fails a TLS handshake), whatever ``--log-level`` says, unless
``GRPC_VERBOSITY`` is set before ``grpc`` is first imported. The command quiets it to
errors; an environment that sets the variable keeps its own value. A library user's
process is left as it is (this module is the command's, not the SDK's)."""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
