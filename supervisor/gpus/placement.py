"""GPU placement: which waiting model may start now, what to evict for it, who waits.

Pure, like `table.py`: no I/O, no clock, no logging. The handles describe the GPUs, the
models that hold memory on them and the models waiting to start or wake; `plan` answers
one `Placement` per waiting model, in first-come-first-served order:

  START   its need fits beside everything on its GPUs now: start (or wake) it.
  EVICT   it fits once `evictions` are carried out (stop, or sleep where sleeping frees
          enough): carry them out, then plan again when they are done; it is then START.
  WAIT    it does not fit and nothing may be evicted for it yet (busy, held, pinned,
          loading, inside min_residency, or an earlier model waits for these GPUs):
          its requests stay held; plan again when an occupant changes.
  REFUSE  its need exceeds what its GPUs hold in all: it can never run.

Accounting per GPU: used = memory of other processes + every occupant's reservation +
what this plan gave earlier waiters. Memory that is being released (an occupant
stopping, draining to stop, or going to sleep, and the evictions this plan orders) still
counts as used, so nothing starts into it before it is free; the earliest waiter claims
it (its WAIT or EVICT reserves its need), so a later waiter never evicts a second time
for the same shortfall, nor takes what an earlier one is waiting for.

FCFS without starvation: once a waiter must wait (or evict) for a GPU, later waiters on
that GPU wait behind it, unless they fit now without evicting anything.

A size of None is a whole GPU (need unknown): it fits only on a GPU with no other model,
and nothing fits beside it. Memory of foreign processes is not taken into account for
REFUSE (it may go away), but it is for the fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from supervisor.gpus.sizes import gib
from supervisor.rules.table import State

PerGpu = Mapping[int, int | None]  # bytes per GPU index; None: the whole GPU


class Verdict(StrEnum):
    START = "start"
    EVICT = "evict"
    WAIT = "wait"
    REFUSE = "refuse"


class Action(StrEnum):
    STOP = "stop"
    SLEEP = "sleep"


_LEAVING = (State.STOPPING, State.DRAINING)  # all of its memory is on its way out
_LOADING = (State.STARTING, State.WAKING)


@dataclass(frozen=True, slots=True)
class Occupant:
    """A model that holds GPU memory: its reservation per GPU for its current state (the
    asleep size while ASLEEP), and what decides whether it may be evicted."""

    model: str
    profile: str
    gpus: PerGpu
    state: State
    in_flight: int = 0
    held: int = 0
    pinned: bool = False  # by the operator or a keep-warm window (handle.is_pinned)
    past_min_residency: bool = True
    last_used: float = 0.0  # any monotonic clock; only the order matters
    # What it keeps on each GPU once asleep; None: it cannot sleep (sleep mode off) or
    # the size is unknown. For a SLEEPING occupant: what it will keep.
    asleep_gpus: Mapping[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Demand:
    """A model waiting to start or wake. Its own occupant, if any, is not in its way: an
    asleep (or waking) one grows in place, so its memory counts as free for it now; any
    other (the old profile of a swap) will have stopped first, so its memory counts as
    free for it soon (WAIT until then, never an eviction of others for it)."""

    model: str
    profile: str
    need: PerGpu
    waiting_since: float
    rank: int = 0  # its place in the queue's order (clients/fairness.py), lower first


@dataclass(frozen=True, slots=True)
class Eviction:
    model: str
    profile: str
    action: Action
    frees: Mapping[int, int]  # bytes per GPU, once done
    reason: str


@dataclass(frozen=True, slots=True)
class Placement:
    model: str
    kind: Verdict
    evictions: tuple[Eviction, ...] = ()
    reason: str = ""  # for people: the GPU, need and free memory, and who holds it
    gpu: int | None = None  # WAIT, REFUSE: the GPU that decided
    need: int | None = None  # ... the need there
    free: int | None = None  # ... WAIT: free there now; REFUSE: the GPU's total


def never_fits(model: str, need: PerGpu, gpus: Mapping[int, int]) -> Placement | None:
    """REFUSE when a need exceeds its GPUs' totals, or names a GPU not in the inventory."""
    for g, size in sorted(need.items()):
        if g not in gpus:
            known = ", ".join(map(str, sorted(gpus))) or "none"
            return Placement(model, Verdict.REFUSE, reason=(
                f"model {model!r} needs GPU {g}, which is not among the GPUs ({known})"), gpu=g)
        if size is not None and size > gpus[g]:
            return Placement(model, Verdict.REFUSE, reason=(
                f"model {model!r} needs {gib(size)} on GPU {g}, which has {gib(gpus[g])} "
                "in all"), gpu=g, need=size, free=gpus[g])
    return None


@dataclass
class _Ledger:
    """Per-GPU accounting for one `plan` call."""

    total: Mapping[int, int]
    foreign: Mapping[int, int]
    used: dict[int, int] = field(default_factory=dict)
    releasing: dict[int, int] = field(default_factory=dict)

    def size(self, g: int, size: int | None) -> int:
        """A whole GPU is what other processes leave of it (at least one byte)."""
        return max(self.total[g] - self.foreign.get(g, 0), 1) if size is None else size

    def add(self, table: dict[int, int], per_gpu: Mapping[int, int]) -> None:
        for g, b in per_gpu.items():
            table[g] = table.get(g, 0) + b

    def free_now(self, g: int, own: _Own) -> int:
        return self.total[g] - self.used.get(g, 0) + own.now.get(g, 0)

    def free_soon(self, g: int, own: _Own) -> int:
        return self.free_now(g, own) + self.releasing.get(g, 0) + own.soon.get(g, 0)


@dataclass(frozen=True, slots=True)
class _Own:
    """What a demand's own occupant gives it: free now (in place), or soon (it stops)."""

    now: Mapping[int, int]
    soon: Mapping[int, int]  # the part not already counted as being released


def _evictable(o: Occupant) -> str | None:
    """Why `o` may not be evicted, or None when it may."""
    if o.state in _LOADING:
        return "loading"
    if o.state not in (State.READY, State.ASLEEP):
        return o.state.value
    if o.in_flight:
        return f"busy: {o.in_flight} in flight"
    if o.held:
        return f"{o.held} request(s) held"
    if o.pinned:
        return "pinned"
    if not o.past_min_residency:
        return "inside min_residency"
    return None


def _releasing(o: Occupant, held: Mapping[int, int]) -> dict[int, int]:
    if o.state in _LEAVING:
        return dict(held)
    if o.state is State.SLEEPING and o.asleep_gpus is not None:
        return {g: max(b - o.asleep_gpus.get(g, 0), 0) for g, b in held.items()}
    return {}


class _Planner:
    def __init__(self, gpus: Mapping[int, int], occupants: Sequence[Occupant],
                 foreign: Mapping[int, int]) -> None:
        self.ledger = _Ledger(gpus, foreign)
        self.occupants = [o for o in occupants if any(g in gpus for g in o.gpus)]
        self.held: dict[str, dict[int, int]] = {}  # occupant model -> bytes per GPU
        self.leaving: dict[str, dict[int, int]] = {}
        self.state = {o.model: o.state for o in self.occupants}
        for o in self.occupants:
            held = {g: self.ledger.size(g, b) for g, b in o.gpus.items() if g in gpus}
            self.held[o.model] = held
            self.leaving[o.model] = _releasing(o, held)
            self.ledger.add(self.ledger.used, held)
            self.ledger.add(self.ledger.releasing, self.leaving[o.model])
        self.ledger.add(self.ledger.used, {g: b for g, b in foreign.items() if g in gpus})
        self.evicted: set[str] = set()
        self.queue: dict[int, str] = {}  # GPU -> the earliest waiter that has to wait there

    def decide(self, d: Demand) -> Placement:
        refused = never_fits(d.model, d.need, self.ledger.total)
        if refused is not None:
            return refused
        need = {g: self.ledger.size(g, b) for g, b in d.need.items()}
        own = self._own(d.model)
        if all(need[g] <= self.ledger.free_now(g, own) for g in need):
            self.ledger.add(self.ledger.used, need)
            return Placement(d.model, Verdict.START, reason="fits now")
        ahead = sorted({self.queue[g] for g in need if g in self.queue})
        for g in need:  # who waits behind this one waits for all of its GPUs
            self.queue.setdefault(g, d.model)
        if ahead:
            return self._wait(d, need, f"behind {', '.join(map(repr, ahead))}, waiting longer")
        deficit = {g: need[g] - self.ledger.free_soon(g, own) for g in need}
        if all(v <= 0 for v in deficit.values()):
            self.ledger.add(self.ledger.used, need)  # claims what is being released
            return self._wait(d, need, "memory is being released", claimed=True)
        evictions = self._choose(d, deficit)
        if evictions is None:
            return self._wait(d, need, "")
        for e in evictions:
            self.evicted.add(e.model)
            self.ledger.add(self.ledger.releasing, e.frees)
        self.ledger.add(self.ledger.used, need)
        return Placement(d.model, Verdict.EVICT, tuple(evictions), reason="fits after evictions")

    def _choose(self, d: Demand, deficit: dict[int, int]) -> list[Eviction] | None:
        """Idle occupants to evict, asleep ones first, then least recently used; None when
        evicting every one that may be evicted would still not be enough."""
        short = dict(deficit)
        candidates = sorted(
            (o for o in self.occupants
             if o.model != d.model and o.model not in self.evicted and _evictable(o) is None
             and any(g in short for g in self.held[o.model])),
            key=lambda o: (o.state is not State.ASLEEP, o.last_used, o.model),
        )
        chosen: list[Eviction] = []
        for o in candidates:
            if all(v <= 0 for v in short.values()):
                break
            held = self.held[o.model]
            if not any(short.get(g, 0) > 0 for g in held):
                continue
            frees, action = dict(held), Action.STOP
            if o.state is State.READY and o.asleep_gpus is not None:
                by_sleep = {g: max(b - o.asleep_gpus.get(g, 0), 0) for g, b in held.items()}
                if all(v - by_sleep.get(g, 0) <= 0 for g, v in short.items()):
                    frees, action = by_sleep, Action.SLEEP
            idle = "asleep" if o.state is State.ASLEEP else "idle, least recently used"
            chosen.append(Eviction(o.model, o.profile, action, frees,
                                   f"{idle}; frees room for {d.model!r}"))
            for g, b in frees.items():
                if g in short:
                    short[g] -= b
        return chosen if all(v <= 0 for v in short.values()) else None

    def _own(self, model: str) -> _Own:
        held = self.held.get(model, {})
        if self.state.get(model) in (State.ASLEEP, State.WAKING):
            return _Own(held, {})
        leaving = self.leaving.get(model, {})
        return _Own({}, {g: b - leaving.get(g, 0) for g, b in held.items()})

    def _status(self, o: Occupant) -> str:
        if o.model in self.evicted:
            return "being evicted"
        return _evictable(o) or "evictable"

    def _wait(self, d: Demand, need: Mapping[int, int], why: str, *,
              claimed: bool = False) -> Placement:
        own = self._own(d.model)
        # The first GPU where it falls short now, to name in the reason.
        short = [g for g in sorted(need) if need[g] > self.ledger.free_now(g, own)]
        g = short[0] if short else min(need)
        free = self.ledger.free_now(g, own) + (need[g] if claimed else 0)
        holders = [
            f"{o.model} ({self._status(o)}, {gib(self.held[o.model][g])})"
            for o in self.occupants if o.model != d.model and g in self.held[o.model]
        ]
        other = self.ledger.foreign.get(g, 0)
        if other:
            holders.append(f"other processes ({gib(other)})")
        text = (f"GPU {g}: {d.model!r} needs {gib(need[g])}, {gib(max(free, 0))} free of "
                f"{gib(self.ledger.total[g])}; held by {', '.join(holders) or 'nobody'}")
        return Placement(d.model, Verdict.WAIT, reason=f"{text}{'; ' + why if why else ''}",
                        gpu=g, need=need[g], free=max(free, 0))


def plan(gpus: Mapping[int, int], occupants: Sequence[Occupant], demands: Sequence[Demand],
         foreign: Mapping[int, int] | None = None) -> list[Placement]:
    """One decision per demand, in the order they are served (by rank, the fair order
    of the budget's queue; then longest waiting first).

    `gpus`: total bytes per GPU index (the inventory). `occupants`: every model that holds
    memory on them, in any state but STOPPED/FAILED. `foreign`: bytes per GPU used by
    processes the supervisor does not own (NVML), if known.
    """
    planner = _Planner(gpus, occupants, foreign or {})
    order = sorted(demands, key=lambda d: (d.rank, d.waiting_since, d.model))
    return [planner.decide(d) for d in order]


def foreign_memory(device_used: Mapping[int, int], reservations: Sequence[PerGpu],
                   gpus: Mapping[int, int]) -> dict[int, int]:
    """Memory used on each GPU beyond what the supervisor's models reserve there.

    `device_used`: NVML's v2 `used` (GpuSampler's memory_used_bytes), which leaves the
    driver's reservation out, as the inventory's totals do; then total - foreign -
    reservations is exactly what cudaMemGetInfo calls free (checked on an H200). Computed
    from totals, not per-process attribution, so it works where NVML's PIDs cannot be
    mapped to containers; a model below its reservation (still loading) hides nothing,
    one above it counts as used.
    """
    reserved: dict[int, int] = {}
    for per_gpu in reservations:
        for g, b in per_gpu.items():
            if g in gpus:
                size = gpus[g] if b is None else b
                reserved[g] = reserved.get(g, 0) + size
    return {g: max(used - reserved.get(g, 0), 0) for g, used in device_used.items() if g in gpus}
