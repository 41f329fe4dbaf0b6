"""What the adaptive idle policy learns from, per model: idle gaps, the arrivals that found
the model given back, and the measured seconds of its starts, stops and wakes per profile.
Bounded (the newest kept), and JSON for the state file's `idle` section so that it
survives a restart; the simulator reads the measured seconds from the same section.

    {"idle": {"<model>": {"gaps": [s, ...], "downs": [[wall, gap], ...], "since": wall,
                          "seconds": {"<profile>": {"start": s, "stop": s, "wake": s}}}}}
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from supervisor.idle.policy import History

SECTION = "idle"
MAX_GAPS = 512
MAX_DOWNS = 256
KINDS = ("start", "stop", "wake")
_SMOOTHING = 0.5  # each measurement moves the kept value halfway towards it


class IdleHistory:
    def __init__(self, since: float) -> None:
        self.gaps: deque[float] = deque(maxlen=MAX_GAPS)
        self.downs: deque[tuple[float, float]] = deque(maxlen=MAX_DOWNS)  # (wall, gap)
        self.since = since
        self.seconds: dict[str, dict[str, float]] = {}  # profile -> kind -> seconds
        self.version = 0  # bumped at each new gap (what a cached plan was made from)

    def gap(self, seconds: float, at: float, *, down: bool) -> None:
        """The model was idle `seconds` until a request came at wall time `at`; `down`:
        it had been given back by then."""
        self.gaps.append(max(0.0, seconds))
        if down:
            self.downs.append((at, max(0.0, seconds)))
        self.version += 1

    def measured(self, profile: str, kind: str, seconds: float) -> None:
        kept = self.seconds.setdefault(profile, {})
        old = kept.get(kind)
        kept[kind] = seconds if old is None else old + _SMOOTHING * (seconds - old)

    def duration(self, profile: str, kind: str) -> float | None:
        return self.seconds.get(profile, {}).get(kind)

    def view(self) -> History:
        # A bounded list of arrivals covers less time than the history: count periods
        # from the oldest one kept once it has been cut.
        since = self.downs[0][0] if len(self.downs) == MAX_DOWNS else self.since
        return History(tuple(self.gaps), tuple(self.downs), since)

    def to_json(self) -> dict[str, Any]:
        return {"gaps": [round(g, 3) for g in self.gaps],
                "downs": [[t, round(g, 3)] for t, g in self.downs],
                "since": self.since, "seconds": self.seconds}

    @classmethod
    def from_json(cls, data: Any, since: float) -> IdleHistory:
        """A saved history; a fresh one (from `since`) for anything unreadable."""
        history = cls(since)
        if not isinstance(data, dict):
            return history
        try:
            history.gaps.extend(_seconds(g) for g in data.get("gaps") or [])
            history.downs.extend(sorted((_finite(t), _seconds(g))
                                        for t, g in data.get("downs") or []))
            history.since = _finite(data.get("since", since))
            for profile, kinds in dict(data.get("seconds") or {}).items():
                history.seconds[str(profile)] = {
                    k: _seconds(v) for k, v in dict(kinds or {}).items() if k in KINDS}
        except (TypeError, ValueError):
            return cls(since)
        return history


def _finite(value: Any) -> float:
    """A number from the file; JSON as Python reads it also has NaN and Infinity, which
    would make an ETA or a plan meaningless."""
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"not a finite number: {value!r}")
    return number


def _seconds(value: Any) -> float:
    number = _finite(value)
    if number < 0:
        raise ValueError(f"negative seconds: {value!r}")
    return number


def measured_seconds(section: Any) -> dict[str, dict[str, float]]:
    """model -> kind -> seconds (the default profile's, else any), from a state file's
    `idle` section: what the simulator starts and stops models in."""
    out: dict[str, dict[str, float]] = {}
    if not isinstance(section, dict):
        return out
    for model, data in section.items():
        history = IdleHistory.from_json(data, 0.0)
        merged: dict[str, float] = {}
        for kinds in history.seconds.values():
            for kind, seconds in kinds.items():
                merged.setdefault(kind, seconds)
        if merged:
            out[str(model)] = merged
    return out
