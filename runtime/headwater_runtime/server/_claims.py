"""Attempts claimed while their run is replayed, checked once the run is live.

After a restart, a worker that reconnects names the attempts it holds
(``Hello.running``). While an attempt's run is still being replayed, the server
cannot tell whether that worker could have been given it (its graph is not live
yet), so it keeps the claim: the run then waits for that worker rather than
sending the attempt again. ``ReplayClaims`` remembers those claims, and when the
run goes live each is checked as any other claim is (the attempt in flight, the
worker's task types, labels and code):

- a claim that does not hold is taken back: the attempt is no longer that
  session's, the worker is told to cancel it, and its reports (kept waiting for the
  replay, like every report on the run) are refused when they come due. The
  attempt is then held for the worker it was delivered to, or sent again;
- a session that went away during the replay loses its claimed attempts only if
  they were its to hold: a worker claiming others' attempts and leaving costs their
  tasks no retry;
- a claim that holds gives a worker-only credential its attempt's inputs to read
  (unknown while the run was replayed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ._assignments import Token
from ._dispatch import WorkerSession


@dataclass
class _Claim:
    session: WorkerSession
    lost: bool = False  # the session went away before the run was live


@dataclass
class Settled:
    """A replayed run's claims, checked."""

    #: Claims that hold (token, session).
    kept: list[tuple[Token, WorkerSession]] = field(default_factory=list)
    #: Attempts to count lost: claimed by sessions that could hold them, then gone.
    lost: list[Token] = field(default_factory=list)
    #: Claims to take back (token, session).
    refused: list[tuple[Token, WorkerSession]] = field(default_factory=list)


class ReplayClaims:
    """Claims of attempts of runs being replayed, by run."""

    def __init__(self) -> None:
        self._runs: dict[str, dict[Token, _Claim]] = {}

    def add(self, flow_run_id: str, token: Token, session: WorkerSession) -> None:
        """``session`` claimed ``token`` while its run is replayed."""
        self._runs.setdefault(flow_run_id, {})[token] = _Claim(session)

    def lose(self, flow_run_id: str, token: Token) -> bool:
        """The claiming session went away: True when ``token`` was claimed (its loss
        is decided by ``settle``), False when it is no claim of a replay."""
        claim = self._runs.get(flow_run_id, {}).get(token)
        if claim is None:
            return False
        claim.lost = True
        return True

    def settle(self, flow_run_id: str, may_keep: Callable[[Token, WorkerSession], bool]) -> Settled:
        """The run is about to go live: its claims, checked with ``may_keep``."""
        settled = Settled()
        for token, claim in self._runs.pop(flow_run_id, {}).items():
            keep = may_keep(token, claim.session)
            if claim.lost:
                if keep:
                    settled.lost.append(token)
            elif keep:
                settled.kept.append((token, claim.session))
            else:
                settled.refused.append((token, claim.session))
        return settled

    def drop(self, flow_run_id: str) -> None:
        """The run will not go live here (its replay failed, the server stops)."""
        self._runs.pop(flow_run_id, None)


__all__ = ["ReplayClaims", "Settled"]
