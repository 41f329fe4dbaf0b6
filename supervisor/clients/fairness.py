"""Who goes first where requests wait (a model's hold queue, the GPU budget's queue), and
who may wait at all when the queue is full: pure, no clock (the caller says `now`).

- Higher priority first.
- Within a priority the clients take turns, one request a turn (round robin, the clients
  in the order of their oldest waiting request), each client's own in arrival order: a
  client with 200 waiting cannot keep one with 10 behind all of them.
- The starvation bound: a request that has waited past its client's `max_wait` goes
  before every priority (the starved among themselves: longest waiting first).
- A full queue (`max_held`) shares its places fairly: each client waiting (the
  newcomer's included) may have `max_held // clients`. A newcomer under its share takes
  the place of the newest request of the client that holds the most (as fq_codel, on
  overflow, drops from its fattest flow, not from the flow that arrives); one at or over
  its share is refused. Only waiting requests are ever displaced, never one in flight.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from supervisor.config.clients import ANONYMOUS


@dataclass(frozen=True, slots=True)
class Asker:
    """Who waits: a client's name, its priority and its starvation bound (seconds)."""

    client: str = ANONYMOUS
    priority: int = 0
    max_wait: float | None = None


NOBODY = Asker()  # a request without a named client (or a start nobody asked for)


class Waiting(Protocol):
    @property
    def asker(self) -> Asker: ...

    @property
    def since(self) -> float: ...


W = TypeVar("W", bound=Waiting)


def starved(waiting: Waiting, now: float) -> bool:
    bound = waiting.asker.max_wait
    return bound is not None and now - waiting.since >= bound


def order(waiting: Iterable[W], now: float) -> list[W]:
    """The order in which they are served; `waiting` in arrival order."""
    arrived = sorted(waiting, key=lambda w: w.since)  # stable: ties keep arrival order
    out = [w for w in arrived if starved(w, now)]
    bands: dict[int, list[W]] = {}
    for w in arrived:
        if not starved(w, now):
            bands.setdefault(w.asker.priority, []).append(w)
    for priority in sorted(bands, reverse=True):
        out += _turns(bands[priority])
    return out


def _turns(band: list[W]) -> list[W]:
    """Round robin among the clients of one priority, one request a turn."""
    queues: dict[str, list[W]] = {}
    for w in band:
        queues.setdefault(w.asker.client, []).append(w)
    out: list[W] = []
    for turn in range(max(map(len, queues.values()), default=0)):
        out += [q[turn] for q in queues.values() if turn < len(q)]
    return out


def share(waiting: Sequence[Waiting], newcomer: Asker, limit: int) -> int:
    """The places of a full queue of `limit` each client may have."""
    clients = {w.asker.client for w in waiting} | {newcomer.client}
    return max(1, limit // len(clients))


def make_room(waiting: Sequence[W], newcomer: Asker, limit: int) -> W | None:
    """The queue holds `limit` (it is full): the request the newcomer displaces, or None
    when the newcomer is refused (its client holds its share already)."""
    if limit <= 0:
        return None
    fair = share(waiting, newcomer, limit)
    held = Counter(w.asker.client for w in waiting)
    if held[newcomer.client] >= fair:
        return None
    lowest = {c: min(w.asker.priority for w in waiting if w.asker.client == c) for c in held}
    fattest = max(held, key=lambda c: (held[c], -lowest[c]))
    if held[fattest] <= fair:
        return None
    # The newest; among equal times, the last to arrive (`waiting` is in arrival order).
    return max((w for w in reversed(waiting) if w.asker.client == fattest),
               key=lambda w: w.since)


def eta(expected: float | None, elapsed: float) -> float | None:
    """Seconds until ready: what a start (or wake) of it took before, less what has
    passed; None when nothing is known. Overdue: 0 (it may be ready any moment)."""
    if expected is None:
        return None
    return max(0.0, expected - elapsed)
