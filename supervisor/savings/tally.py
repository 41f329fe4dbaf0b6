"""What one unit (a model, or a replica) cost and gave back over some span: the totals the
account adds to on every state change and read (account.py), kept since the start and per
UTC day. Pure: plain numbers in, JSON out.

GPU-seconds are seconds with the unit's memory reserved, times the GPUs it reserves (an
asleep unit counts the share of its memory it keeps, when that is known; else all of it,
as the GPU budget does). The counterfactual is the same unit always on with its full
need: what idling gave back is the difference.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["start", "wake"]  # what a held request waited on
KINDS: tuple[Kind, ...] = ("start", "wake")
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Holding:
    """What a unit holds in one state: GPUs' worth, and bytes (None: unknown)."""

    gpus: float
    bytes: int | None


NOTHING = Holding(0.0, 0)


@dataclass(slots=True)
class Tally:
    seconds: dict[str, dict[str, float]] = field(default_factory=dict)  # profile -> state
    gpu_seconds: float = 0.0
    always_on_gpu_seconds: float = 0.0
    byte_seconds: float = 0.0
    always_on_byte_seconds: float = 0.0
    starts: int = 0
    wakes: int = 0
    waited: dict[str, float] = field(default_factory=lambda: dict.fromkeys(KINDS, 0.0))
    waits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    energy_joules: float | None = None  # None: NVML has no energy figure for it

    def spend(self, profile: str, state: str, seconds: float, held: Holding,
              full: Holding) -> None:
        """`seconds` in `state` holding `held`, against `full` always on."""
        per = self.seconds.setdefault(profile, {})
        per[state] = per.get(state, 0.0) + seconds
        self.gpu_seconds += held.gpus * seconds
        self.always_on_gpu_seconds += full.gpus * seconds
        self.byte_seconds += (held.bytes or 0) * seconds
        self.always_on_byte_seconds += (full.bytes or 0) * seconds

    def waited_on(self, kind: Kind, seconds: float) -> None:
        self.waited[kind] += seconds
        self.waits[kind] += 1

    def add_energy(self, joules: float) -> None:
        self.energy_joules = (self.energy_joules or 0.0) + joules

    def state_seconds(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for per in self.seconds.values():
            for state, s in per.items():
                out[state] = out.get(state, 0.0) + s
        return out

    def view(self) -> dict[str, Any]:
        """What GET /admin/savings shows of it."""
        return {
            "state_seconds": _rounded(self.state_seconds()),
            "profile_state_seconds": {p: _rounded(s) for p, s in self.seconds.items()},
            "cold_starts": self.starts, "wakes": self.wakes,
            "held_requests": dict(self.waits),
            "waited_seconds": round(sum(self.waited.values()), 3),
            "cold_start_wait_seconds": round(self.waited["start"], 3),
            "wake_wait_seconds": round(self.waited["wake"], 3),
            "gpu_hours_held": round(self.gpu_seconds / 3600, 6),
            "gpu_hours_always_on": round(self.always_on_gpu_seconds / 3600, 6),
            "gpu_hours_given_back": round(self.given_back_gpu_seconds / 3600, 6),
            "gpu_memory_byte_seconds": round(self.byte_seconds),
            "gpu_memory_byte_seconds_given_back": round(
                max(0.0, self.always_on_byte_seconds - self.byte_seconds)),
            "energy_joules": None if self.energy_joules is None else round(
                self.energy_joules, 3),
        }

    @property
    def given_back_gpu_seconds(self) -> float:
        return max(0.0, self.always_on_gpu_seconds - self.gpu_seconds)

    def to_json(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "gpu_seconds": self.gpu_seconds,
                "always_on_gpu_seconds": self.always_on_gpu_seconds,
                "byte_seconds": self.byte_seconds,
                "always_on_byte_seconds": self.always_on_byte_seconds,
                "starts": self.starts, "wakes": self.wakes, "waited": self.waited,
                "waits": self.waits, "energy_joules": self.energy_joules}

    @classmethod
    def from_json(cls, raw: Any) -> Tally:
        """A saved tally; whatever does not read as one is left at zero."""
        tally = cls()
        if not isinstance(raw, dict):
            return tally
        seconds = raw.get("seconds")
        if isinstance(seconds, dict):
            tally.seconds = {str(p): {str(s): float(v) for s, v in per.items()
                                      if isinstance(v, int | float)}
                             for p, per in seconds.items() if isinstance(per, dict)}
        for name in ("gpu_seconds", "always_on_gpu_seconds", "byte_seconds",
                     "always_on_byte_seconds"):
            if isinstance(raw.get(name), int | float):
                setattr(tally, name, float(raw[name]))
        for name in ("starts", "wakes"):
            if isinstance(raw.get(name), int):
                setattr(tally, name, raw[name])
        for kind in KINDS:
            waited, waits = raw.get("waited") or {}, raw.get("waits") or {}
            if isinstance(waited, dict) and isinstance(waited.get(kind), int | float):
                tally.waited[kind] = float(waited[kind])
            if isinstance(waits, dict) and isinstance(waits.get(kind), int):
                tally.waits[kind] = waits[kind]
        if isinstance(raw.get("energy_joules"), int | float):
            tally.energy_joules = float(raw["energy_joules"])
        return tally


def day_of(wall: float) -> str:
    return dt.datetime.fromtimestamp(wall, dt.UTC).date().isoformat()


def by_day(start: float, end: float) -> list[tuple[str, float]]:
    """The span [start, end) of wall-clock seconds cut at UTC midnights: (day, seconds)."""
    out: list[tuple[str, float]] = []
    while end > start:
        midnight = (start // DAY + 1) * DAY
        stop = min(end, midnight)
        out.append((day_of(start), stop - start))
        start = stop
    return out


def _rounded(seconds: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in seconds.items()}
