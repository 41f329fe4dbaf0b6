"""What a held request can be told while it waits: its place in the hold queue, the phase
the unit is in and when it should be ready (the ETA), the same for the loading progress,
`Retry-After` and `GET /admin/queue`.

The ETA is the measured seconds of this profile's last starts (or wakes), kept in the state
file (idle/history.py, through `Effects.durations`), else the last cold start's, else
unknown (None); less the time the start (or wake) has run. A start that still waits for
GPU memory has not begun to load: its ETA is the whole start, a lower bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from supervisor.clients.fairness import eta
from supervisor.lifecycle.driven import Driven
from supervisor.lifecycle.lease import HoldRejected
from supervisor.rules.table import State

DEFAULT_RETRY_AFTER = 10  # seconds, while nothing has been measured

WAITING_FOR_GPUS, STARTING, WARMING_UP, WAKING, SWAPPING, QUEUED = (
    "waiting_for_gpus", "starting", "warming_up", "waking", "swapping", "queued")


@dataclass(frozen=True, slots=True)
class Standing:
    client: str
    priority: int
    position: int  # from 1: the order they are released in
    waited: float  # seconds
    eta: float | None  # seconds until the unit should be ready
    phase: str

    def to_json(self) -> dict[str, Any]:
        return {"client": self.client, "priority": self.priority, "position": self.position,
                "waited_seconds": round(self.waited, 3),
                "eta_seconds": None if self.eta is None else round(self.eta, 1),
                "phase": self.phase}


def phase(unit: Driven) -> str:
    """What a held request waits for now (its server's own phase: anatomy/phases.py)."""
    state = unit.state
    if state is State.STARTING:
        if unit.effects.gpus.waiting(unit.name):
            return WAITING_FOR_GPUS
        anatomy = unit.effects.anatomy
        server = None if anatomy is None else anatomy.phase(unit.name)
        return WARMING_UP if server == "warmup" else STARTING
    if state in (State.WAKING, State.ASLEEP, State.SLEEPING):
        return WAKING
    if state in (State.READY, State.DRAINING, State.STOPPING):
        return SWAPPING  # held for a profile that fits, or until the stop ends
    return QUEUED


def expected(unit: Driven) -> float | None:
    """Seconds a start (or a wake) of its profile takes, as measured."""
    kind = "wake" if phase(unit) == WAKING else "start"
    measured = unit.effects.durations(unit.name, unit.profile.name, kind)
    if measured is not None:
        return measured
    return None if kind == "wake" else unit.last_cold_start_seconds


def eta_of(unit: Driven) -> float | None:
    began = unit.began_at
    running = unit.state in (State.STARTING, State.WAKING) and began is not None
    elapsed = unit.clock.now() - began if running and began is not None else 0.0
    if unit.state is State.STARTING and unit.effects.gpus.waiting(unit.name):
        elapsed = 0.0  # nothing loads yet
    return eta(expected(unit), elapsed)


def retry_after(unit: Driven) -> int:
    """`Retry-After` for a request refused while the unit starts: when it should be ready."""
    seconds = eta_of(unit)
    return max(1, math.ceil(DEFAULT_RETRY_AFTER if seconds is None else seconds))


def overloaded(unit: Driven, why: str) -> HoldRejected:
    """503 for a request the full hold (max_held) refuses or gives up; `why` follows."""
    return HoldRejected(
        f"model {unit.name!r} is {unit.state.value} and already holds {len(unit.hold)} "
        f"requests (max_held){why}; retry later", status=503, code="model_overloaded",
        retry_after=retry_after(unit), model=unit.name)


def timed_out(unit: Driven) -> HoldRejected:
    """504 for a request still held when hold_timeout passes."""
    return HoldRejected(
        f"model {unit.name!r} was not ready within hold_timeout "
        f"({unit.config.hold_timeout:.0f}s); it is {unit.state.value}",
        status=504, code="hold_timeout", retry_after=retry_after(unit), model=unit.name)


def standings(unit: Driven) -> list[Standing]:
    """Every held request, in the order they are released."""
    now, seconds, now_phase = unit.clock.now(), eta_of(unit), phase(unit)
    return [Standing(h.asker.client, h.asker.priority, i, now - h.since, seconds, now_phase)
            for i, h in enumerate(unit.hold.ordered(), 1)]


def standing(unit: Driven, task: object) -> Standing | None:
    """The place of the request that `task` holds (None: not held here)."""
    found = unit.hold.position(task)
    if found is None:
        return None
    position, held = found
    return Standing(held.asker.client, held.asker.priority, position,
                    unit.clock.now() - held.since, eta_of(unit), phase(unit))
