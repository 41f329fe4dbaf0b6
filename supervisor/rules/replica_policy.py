"""Which replica serves a request, when another starts, and which may stop: pure rules
over a snapshot of a model's replicas (no I/O, no clock), so that every case is a row of
a table in tests/unit/test_replica_policy.py.

- Route: the ready replica whose profile holds the request, with the fewest requests
  outstanding (in flight + held; ties to the first). With none, the request is held on
  the replica that will serve soonest: one coming up, then one asleep (a wake), then a
  ready one on too small a profile (it swaps, and the set with it), then a stopped one
  (a start), then one going down (it comes back for what it holds). A stopped replica
  in its crash-loop backoff is skipped while another can take the request.
- Scale up: when the requests outstanding exceed `target_concurrency` per replica that
  is up or coming up, one more starts (an asleep one wakes first).
- Scale down: a ready replica is surplus when the others hold the load within the target:
  the last ready one that is not kept (pinned), and only while no replica after it runs or
  comes up (a scaled service, Swarm's, can only shrink from the top); never the only ready
  one, which follows the model's own idle rules. Always the same one while the load stays
  low, so that its `idle_timeout` runs to the end (routing sends its requests elsewhere
  only on ties).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from supervisor.rules.table import DOWN, State

UP = (State.READY, State.STARTING, State.WAKING)  # serving, or about to
_COMING = (State.STARTING, State.WAKING)


class Replica(NamedTuple):
    """One replica as the rules see it (a tuple: built twice per request)."""

    state: State
    in_flight: int = 0
    held: int = 0
    fits: bool = True  # its running (or starting) profile holds the request
    backoff: bool = False  # failed, and its next start is not due yet
    kept: bool = False  # pinned or within min_replicas: never surplus

    @property
    def outstanding(self) -> int:
        return self.in_flight + self.held


class ChoiceKind(StrEnum):
    SERVE = "serve"  # forward now
    HOLD = "hold"  # hold there until it is ready (starting, waking or swapping it)


@dataclass(frozen=True, slots=True)
class Choice:
    index: int
    kind: ChoiceKind


def _hold_rank(r: Replica) -> int:
    if r.state in _COMING:
        return 0 if r.fits else 2
    if r.state is State.ASLEEP:
        return 1 if r.fits else 2
    if r.state is State.READY:
        return 2  # does not fit: a swap
    if r.state in DOWN:
        return 3
    return 4  # going down: serves again after


def route(replicas: Sequence[Replica]) -> Choice:
    """Where a request goes; `replicas` is never empty."""
    ready = [(r.outstanding, i) for i, r in enumerate(replicas)
             if r.state is State.READY and r.fits]
    if ready:
        return Choice(min(ready)[1], ChoiceKind.SERVE)
    able = [(_hold_rank(r), r.outstanding, i) for i, r in enumerate(replicas)
            if not (r.state in DOWN and r.backoff)]
    if not able:  # every one backs off: the first answers with its Retry-After
        return Choice(0, ChoiceKind.HOLD)
    return Choice(min(able)[2], ChoiceKind.HOLD)


def to_start(replicas: Sequence[Replica], target: int | None) -> int | None:
    """The replica to start (or wake) for the load, None when the load needs none."""
    if target is None:
        return None
    up = sum(1 for r in replicas if r.state in UP)
    if not up:  # the first start is the held request's
        return None
    if sum(r.outstanding for r in replicas) <= target * up:
        return None
    idle = [(0 if r.state is State.ASLEEP else 1, i) for i, r in enumerate(replicas)
            if r.state is State.ASLEEP or (r.state in DOWN and not r.backoff)]
    return min(idle)[1] if idle else None


def surplus(replicas: Sequence[Replica], target: int | None) -> int | None:
    """A ready replica that the load does not need now, None when all are needed."""
    if target is None:
        return None
    ready = [i for i, r in enumerate(replicas) if r.state is State.READY]
    if len(ready) <= 1 or sum(r.outstanding for r in replicas) > target * (len(ready) - 1):
        return None
    last = max(i for i, r in enumerate(replicas) if r.state not in DOWN)
    if last != ready[-1] or replicas[last].kept:
        return None  # one after it is coming up (or going): the top goes first
    return last  # always the same one: its timer is not reset
