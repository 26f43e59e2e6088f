"""The ``headwater`` command's entry point.

Importing the CLI takes most of a second (gRPC, protobuf, rich). It happens here, where
a Ctrl-C during it ends the command as a Ctrl-C does later (exit 130, one line), not
with a traceback of whatever module was being imported.
"""

from __future__ import annotations

import sys


def main() -> int:
    """Import the CLI and run it (``headwater ...``)."""
    try:
        from headwater._cli import main as cli_main
    except KeyboardInterrupt:
        print("headwater: interrupted", file=sys.stderr)
        return 130
    return cli_main()
