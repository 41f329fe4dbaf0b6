"""Trace lines: the journal's (`time`, `model`, `duration`, `held`), or minimal ones,
`{"t": SECONDS_FROM_START, "model": NAME, "duration": SECONDS}`. A replay serves each
request for its duration less what it was held (the server's own time), and puts the
start of a minimal trace at a Monday 00:00 UTC so that time of day and week mean
something."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MONDAY = 1704067200.0  # 2024-01-01 00:00 UTC


class TraceError(ValueError):
    """A line that is not a request: names its line number."""


@dataclass(frozen=True, slots=True)
class Request:
    t: float  # seconds from the trace's start
    model: str
    duration: float  # seconds in flight (the server's own time)


@dataclass(frozen=True, slots=True)
class Trace:
    requests: list[Request]
    epoch: float  # wall-clock time of t = 0

    @property
    def models(self) -> set[str]:
        return {r.model for r in self.requests}


def parse(lines: Iterable[str], source: str = "trace") -> Trace:
    rows: list[tuple[float, str, float, bool]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            model = str(item["model"])
            duration = float(item.get("duration", 0.0)) - float(item.get("held", 0.0))
            if "t" in item:
                rows.append((float(item["t"]), model, duration, False))
            else:
                rows.append((float(item["time"]), model, duration, True))
        except (ValueError, KeyError, TypeError) as exc:
            raise TraceError(f"{source}:{number}: not a request line ({exc!r}); expected "
                             '{"t": SECONDS, "model": NAME, "duration": SECONDS}') from None
    absolute = [r for r in rows if r[3]]
    epoch = min(r[0] for r in absolute) if absolute else MONDAY
    requests = [Request(t - epoch if wall else t, model, max(0.0, duration))
                for t, model, duration, wall in rows]
    requests.sort(key=lambda r: r.t)
    return Trace(requests, epoch)


def load(path: str | Path) -> Trace:
    with open(path) as f:
        return parse(f, str(path))


def dump(requests: Iterable[Request]) -> str:
    return "".join(json.dumps({"t": round(r.t, 3), "model": r.model,
                               "duration": round(r.duration, 3)}) + "\n" for r in requests)
