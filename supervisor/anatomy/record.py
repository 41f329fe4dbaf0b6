"""One start's record: the phases it went through and their seconds, and the last few
records of each model and profile. Pure: the times come in as arguments (wall-clock
seconds, as Docker stamps log lines), so a start's total and its phases' sum agree.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from supervisor.anatomy.phases import CONTAINER, MISS, Seen

START, WAKE = "start", "wake"
WAKING = "wake"  # a wake's first phase: from /wake_up asked until it answered
# Before the container is asked for (or /wake_up): the GPU budget made it wait for memory.
# A wait shorter than this is no phase (the budget answers at once when nothing waits).
WAITING_FOR_GPUS, GPU_WAIT_MIN = "waiting_for_gpus", 0.05
KEEP = 5  # records kept per model and profile


@dataclass(slots=True)
class StartRecord:
    """Boundaries in order: each phase runs from its boundary to the next one, the last
    to `ended` (or to now, while the start runs)."""

    model: str
    profile: str
    kind: str  # START or WAKE
    began: float
    bounds: list[tuple[str, float]] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)  # the server's own seconds
    cache: str | None = None  # torch.compile's cache: "hit" or "miss"; None: not told
    ended: float | None = None
    ok: bool | None = None
    level: int | None = None  # a wake's: the sleep level it woke from (2: weights reloaded)

    def __post_init__(self) -> None:
        if not self.bounds:
            self.bounds.append((WAKING if self.kind == WAKE else CONTAINER, self.began))

    @property
    def phase(self) -> str:
        return self.bounds[-1][0]

    def admitted(self, at: float) -> None:
        """The GPU budget let it go on at `at`: the time before was a wait for memory, not
        the container's (nor the wake's)."""
        if len(self.bounds) == 1 and at - self.began >= GPU_WAIT_MIN and self.ended is None:
            first = self.bounds[0][0]
            self.bounds[:] = [(WAITING_FOR_GPUS, self.began), (first, at)]

    def enter(self, phase: str, at: float) -> None:
        """`phase` runs from `at` on; a time before the last boundary (lines of several
        processes, a clock's jitter) counts as that boundary."""
        if self.ended is not None or phase == self.phase:
            return
        self.bounds.append((phase, max(at, self.bounds[-1][1])))

    def saw(self, seen: Seen, at: float) -> None:
        """A server log line stamped `at` that the phase table recognised."""
        if self.ended is not None:
            return
        if seen.figure_of is not None and seen.seconds is not None:
            self.figures[seen.figure_of] = seen.seconds
            self._began_by(seen.figure_of, at - seen.seconds)
        if seen.cache is not None and self.cache != MISS:
            self.cache = seen.cache  # one graph compiled afresh makes the start a miss
        self.enter(seen.phase, at)

    def _began_by(self, phase: str, when: float) -> None:
        """The server says `phase` ran since `when`: the running phase's boundary moves
        back to it (never before the boundary ahead); a phase not seen yet begins then."""
        if phase == self.phase and len(self.bounds) > 1:
            floor = self.bounds[-2][1]
            if when <= floor and len(self.bounds) > 2:  # the phase ahead never ran
                del self.bounds[-2]
            self.bounds[-1] = (phase, min(self.bounds[-1][1], max(when, floor)))
        elif phase not in (p for p, _ in self.bounds):
            self.enter(phase, when)

    def end(self, at: float, *, ok: bool) -> None:
        if self.ended is None:
            self.ended, self.ok = max(at, self.bounds[-1][1]), ok

    def seconds(self, now: float | None = None) -> dict[str, float]:
        """Each phase's seconds (a phase entered twice: summed), in order of first entry."""
        end = self.ended if self.ended is not None else now
        spans: dict[str, float] = {}
        for (phase, at), nxt in zip(self.bounds, [*self.bounds[1:], (None, end)], strict=True):
            if nxt[1] is not None:
                spans[phase] = spans.get(phase, 0.0) + max(0.0, nxt[1] - at)
        return spans

    def total(self, now: float) -> float:
        return (self.ended if self.ended is not None else now) - self.began

    def to_json(self, now: float) -> dict[str, Any]:
        spans = self.seconds(now)
        return {
            "kind": self.kind, "profile": self.profile, "began": self.began,
            "seconds": round(self.total(now), 3),
            "ok": self.ok, "phase": None if self.ended is not None else self.phase,
            "phases": [{"phase": p, "seconds": round(s, 3),
                        **({"server_seconds": self.figures[p]} if p in self.figures else {})}
                       for p, s in spans.items()],
            "compile_cache": self.cache,
            **({"level": self.level} if self.kind == WAKE else {}),
        }


class StartRecords:
    """The last KEEP records per model and profile, and the one running per model."""

    def __init__(self, keep: int = KEEP) -> None:
        self._keep = keep
        self._done: dict[tuple[str, str], deque[StartRecord]] = {}
        self.running: dict[str, StartRecord] = {}

    def begin(self, record: StartRecord) -> StartRecord:
        self.running[record.model] = record
        return record

    def finish(self, record: StartRecord) -> None:
        if self.running.get(record.model) is record:
            del self.running[record.model]
        key = (record.model, record.profile)
        self._done.setdefault(key, deque(maxlen=self._keep)).append(record)

    def of(self, model: str) -> list[StartRecord]:
        """The model's records, oldest first, the running one last."""
        done = [r for (m, _), rs in self._done.items() if m == model for r in rs]
        done.sort(key=lambda r: r.began)
        running = self.running.get(model)
        return done if running is None else [*done, running]
