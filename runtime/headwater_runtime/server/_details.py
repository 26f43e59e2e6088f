"""Status details that always reach the peer.

gRPC sends a status's details as HTTP/2 trailer metadata, and a peer refuses metadata
over 16 KiB: a refusal that quoted a 17,000-character id (``GetFlowRun`` of such an
id) reached the client as ``RESOURCE_EXHAUSTED: received metadata size exceeds hard
limit`` instead of ``NOT_FOUND``. ``detail`` shortens every overlong run of
characters other than spaces and quotes in a message (a quoted id, name or key) to
its first and last characters and its length, and the whole message to
``MAX_DETAIL`` characters.
"""

from __future__ import annotations

import re

#: The longest status message the server sends (characters).
MAX_DETAIL = 4000
#: The longest run of characters other than spaces and quotes kept whole (an id).
MAX_WORD = 200

_WORD = re.compile("[^\\s'\"]{" + str(MAX_WORD + 1) + ",}")  # (a quote stays outside)


def _shortened(match: re.Match[str]) -> str:
    word = match.group()
    return f"{word[:60]}...({len(word):,} characters)...{word[-20:]}"


def detail(message: str) -> str:
    """``message`` short enough for a status's details (see the module docstring)."""
    if len(message) <= MAX_WORD:
        return message
    message = _WORD.sub(_shortened, message)
    if len(message) > MAX_DETAIL:
        message = message[: MAX_DETAIL - 30] + f"... ({len(message):,} characters)"
    return message
