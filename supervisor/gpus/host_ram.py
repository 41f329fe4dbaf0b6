"""Host RAM for level-1 sleepers: vLLM's level 1 copies a model's weights into host RAM,
which a box with several sleeping models may not have. Before a sleep at level 1 the
budget asks `make_room`: the least recently used level-1 sleepers go to level 2 (their
weights dropped, process and compiled graphs kept) until the newcomer fits; when even all
of them would not do, the newcomer sleeps at level 2 itself.

A sleeper's size is `sleep.host_bytes`, else its profile's GPU need (declared or
measured: the weights are most of it); a model of unknown size is not counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from supervisor.observe.host import mem_available


@dataclass(frozen=True, slots=True)
class Sleeper:
    name: str
    host_bytes: int
    last_used: float  # its last request (clock time): the least recent goes deeper first


@dataclass(frozen=True, slots=True)
class Room:
    level: int  # what the newcomer may sleep at
    deepen: tuple[str, ...] = ()  # level-1 sleepers to take to level 2 first


def make_room(sleepers: Sequence[Sleeper], need: int, free: int) -> Room:
    """`free`: host RAM left for sleepers now (what they hold already taken out). Pure."""
    if need <= free:
        return Room(1)
    deepen: list[str] = []
    for sleeper in sorted(sleepers, key=lambda s: s.last_used):
        deepen.append(sleeper.name)
        free += sleeper.host_bytes
        if need <= free:
            return Room(1, tuple(deepen))
    return Room(2)  # deepening them all would not make room: no one goes deeper for it


async def host_free(capacity: int | None, held: int) -> int | None:
    """Host RAM left for a new level-1 sleeper: the configured `host_memory` less what
    sleepers hold, else MemAvailable (read in a thread; it already counts them); None:
    cannot tell."""
    if capacity is not None:
        return capacity - held
    return await asyncio.to_thread(mem_available)
