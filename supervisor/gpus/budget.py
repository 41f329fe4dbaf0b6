"""GPU memory as one budget across models: every start and wake is admitted here first.

The decision is the pure planner's (`placement.plan`); this object only gathers its
input from the handles, carries out its evictions through them (a stop, or a sleep),
and keeps the waiting starts waiting until an occupant changes. Handles tell it when
they change (`changed`); it plans again only while some start waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from supervisor.clients.fairness import NOBODY, Asker, order
from supervisor.config import Config
from supervisor.gpus.host_ram import Sleeper, host_free, make_room
from supervisor.gpus.placement import (
    Action,
    Demand,
    Occupant,
    Placement,
    Verdict,
    foreign_memory,
    plan,
)
from supervisor.gpus.resolver import GpuNeeds
from supervisor.gpus.sizes import gib
from supervisor.lifecycle.admission import InsufficientGpuMemory
from supervisor.lifecycle.clock import Clock, Timer
from supervisor.rules.profiles import Profile
from supervisor.rules.table import DOWN, State

if TYPE_CHECKING:
    from supervisor.lifecycle.handle import ModelHandle

log = logging.getLogger("supervisor.placement")

ForeignUse = Callable[[], dict[int, int] | None]  # bytes used per GPU (NVML), if known


@dataclass(slots=True)
class _Waiter:
    handle: ModelHandle
    profile: Profile
    since: float
    done: asyncio.Future[tuple[str, ...]]
    evicted: list[str] = field(default_factory=list)
    said: str = ""  # the last WAIT reason logged

    @property
    def asker(self) -> Asker:
        """Who it is for: the first of its held requests (none: an operator's start)."""
        first = self.handle.hold.ordered()[:1]
        return first[0].asker if first else NOBODY


class GpuBudget:
    def __init__(self, needs: GpuNeeds | None, clock: Clock, *,
                 handles: Callable[[], Iterable[ModelHandle]] = tuple,
                 device_used: ForeignUse = lambda: None) -> None:
        self.needs = needs
        self.clock = clock
        self.handles = handles
        self.device_used = device_used
        self._waiting: dict[str, _Waiter] = {}
        self._evicting: set[str] = set()  # ordered out, not yet down
        self._scheduled = False
        self._residency: Timer | None = None  # plans again when an occupant's ends

    async def reload(self, config: Config) -> None:
        """A reloaded config: needs are resolved again (the measured sizes are kept)."""
        if self.needs is not None:
            self.needs, problems = await GpuNeeds.load(config, self.needs.measured)
            for problem in problems:
                log.warning("GPU placement: %s", problem)
            self.changed()

    @property
    def enabled(self) -> bool:
        return self.needs is not None and self.needs.enabled

    def _knows(self, handle: ModelHandle) -> bool:
        """Its model and profile are in the config the needs were resolved from."""
        models = self.needs.models if self.needs is not None else {}
        return handle.name in models and handle.profile.name in models[handle.name].profiles

    def placed(self, handle: ModelHandle, profile: Profile) -> bool:
        return self.needs is not None and self.enabled and self._knows(handle) and (
            self.needs.need(handle.name, profile.name).placed)

    async def admit(self, handle: ModelHandle, profile: Profile) -> tuple[str, ...]:
        """Return once `profile` fits on its GPUs (after any evictions: their names);
        raise InsufficientGpuMemory when it never can."""
        if self.needs is None or not self.placed(handle, profile):
            return ()
        never = self.needs.never_fits(handle.name, profile.name)
        if never is not None:
            raise InsufficientGpuMemory(never, model=handle.name)
        waiter = _Waiter(handle, profile, self.clock.now(),
                         asyncio.get_running_loop().create_future())
        self._waiting[handle.name] = waiter
        began = self.clock.now()
        try:
            self._replan()
            evicted = await waiter.done
        finally:
            self._waiting.pop(handle.name, None)
            handle.metrics.gpu_wait(handle.name, self.clock.now() - began)
            self.changed()  # what it did not take may serve the next one
        return evicted

    def waiting(self, model: str) -> bool:
        return model in self._waiting

    def fits_in_place(self, handle: ModelHandle, profile: Profile) -> bool:
        """Whether `handle`, asleep, could take its whole need now without evicting anyone
        and ahead of no waiter. A deepening wakes the model briefly (vLLM loads its
        weights back, then sleeps at level 2): into memory another model may have taken
        since it fell asleep, it would fail, or take what a waiter is owed."""
        if self.needs is None or not self.placed(handle, profile):
            return True
        if self._waiting:
            return False
        occupants = [self._occupant(h, State.ASLEEP if h is handle else None)
                     for h in self.handles() if h.state not in DOWN and self._knows(h)]
        used = self.device_used()
        foreign = None if used is None else foreign_memory(
            used, [o.gpus for o in occupants], self.needs.totals)
        demand = Demand(handle.name, profile.name,
                        self.needs.need(handle.name, profile.name).per_gpu, self.clock.now())
        return plan(self.needs.totals, occupants, [demand], foreign)[0].kind is Verdict.START

    async def sleep_level(self, handle: ModelHandle, profile: Profile, level: int) -> int:
        """Host RAM for a level-1 sleep (gpus/host_ram.py): made by deepening the least
        recently used level-1 sleepers, else this one sleeps at level 2."""
        need = self.host_bytes(handle, profile)
        if level != 1 or need is None or self.needs is None:
            return level
        others = [h for h in self.handles() if h is not handle and h.state is State.ASLEEP
                  and h.sleep_level == 1]
        sleepers = [Sleeper(h.name, b, h.last_request_at or 0.0) for h in others
                    if (b := self.host_bytes(h, h.profile)) is not None]
        free = await host_free(self.needs.config.host_memory,
                               sum(s.host_bytes for s in sleepers))
        room = make_room(sleepers, need, need if free is None else free)
        by_name = {h.name: h for h in others}
        for name in room.deepen:
            by_name[name].deepen(f"host RAM is short: {handle.name} sleeps at level 1")
        if room.level != level:
            log.info("model=%s sleeps at level 2: its weights (%s) do not fit in host RAM",
                     handle.name, gib(need))
        return room.level

    def host_bytes(self, handle: ModelHandle, profile: Profile) -> int | None:
        """What a level-1 sleep of it holds in host RAM: sleep.host_bytes, else its need."""
        if handle.config.sleep.host_bytes is not None:
            return handle.config.sleep.host_bytes
        if self.needs is None or not self.placed(handle, profile):
            return None
        sizes = self.needs.need(handle.name, profile.name).per_gpu.values()
        return None if None in sizes else sum(b for b in sizes if b is not None)

    def changed(self) -> None:
        """A handle's state or load changed: plan again soon if anyone waits."""
        if self._waiting and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._replan)

    def on_state(self, unit: ModelHandle, old: State, new: State, event: str) -> None:
        self.changed()  # a listener (listeners.py): any unit's state, load or pins

    def on_load(self, unit: ModelHandle) -> None:
        self.changed()

    def reservations(self) -> dict[str, dict[int, int]]:
        """Bytes per GPU that each model holds now (whole GPUs at their total)."""
        if self.needs is None or not self.enabled:
            return {}
        totals = self.needs.totals
        held: dict[str, dict[int, int]] = {}
        for h in self.handles():
            if h.state in DOWN or h.name in self._waiting or not self._knows(h):
                continue
            per_gpu = self.needs.holds(h.name, h.profile.name, h.state)
            held[h.name] = {g: totals.get(g, 0) if b is None else b for g, b in per_gpu.items()}
        return held

    def _occupant(self, h: ModelHandle, state: State | None = None) -> Occupant:
        assert self.needs is not None
        state = state or h.state
        if h.name in self._waiting:  # waiting to wake: what it holds is its asleep size
            state = State.ASLEEP
        asleep = self.needs.asleep(h.name, h.profile.name) if h.config.sleep.enabled else None
        return Occupant(
            model=h.name, profile=h.profile.name,
            gpus=self.needs.holds(h.name, h.profile.name, state), state=state,
            in_flight=h.in_flight, held=h.held, pinned=h.is_pinned,
            past_min_residency=h.resident_for() >= h.config.min_residency,
            last_used=h.last_request_at or 0.0, asleep_gpus=asleep)

    def _replan(self) -> None:
        self._scheduled = False
        if not self._waiting or self.needs is None:
            return
        occupants = []
        for h in self.handles():
            waking = h.name in self._waiting and h.state is State.WAKING
            if h.state in DOWN or (h.name in self._waiting and not waking) or not (
                    self._knows(h)):
                continue
            occupants.append(self._occupant(h))
        self._evicting &= {o.model for o in occupants}
        # The queue's order: its most urgent held request's priority, fair turns among
        # the clients, and max_wait (clients/fairness.py).
        demands = [Demand(w.handle.name, w.profile.name,
                          self.needs.need(w.handle.name, w.profile.name).per_gpu, w.since,
                          rank)
                   for rank, w in enumerate(order(self._waiting.values(), self.clock.now()))]
        used = self.device_used()
        foreign = None if used is None else foreign_memory(
            used, [o.gpus for o in occupants], self.needs.totals)
        by_name = {h.name: h for h in self.handles()}
        decisions = plan(self.needs.totals, occupants, demands, foreign)
        self._wake_at_residency_end(decisions, [by_name[o.model] for o in occupants
                                                if not o.past_min_residency])
        for decision in decisions:
            waiter = self._waiting[decision.model]
            if decision.kind is Verdict.START:
                if not waiter.done.done():
                    waiter.done.set_result(tuple(waiter.evicted))
            elif decision.kind is Verdict.REFUSE:
                if not waiter.done.done():
                    waiter.done.set_exception(
                        InsufficientGpuMemory(decision.reason, model=decision.model))
            elif decision.kind is Verdict.EVICT:
                for eviction in decision.evictions:
                    if eviction.model in self._evicting:
                        continue
                    self._evicting.add(eviction.model)
                    waiter.evicted.append(eviction.model)
                    frees = ", ".join(f"gpu {g}: {gib(b)}" for g, b in eviction.frees.items())
                    why = (f"to make room for {decision.model} ({frees} freed; "
                           f"{eviction.reason})")
                    by_name[eviction.model].evict(eviction.action is Action.SLEEP, why)
            elif decision.reason != waiter.said:
                waiter.said = decision.reason
                log.info("model=%s waits for GPU memory: %s", decision.model, decision.reason)

    def _wake_at_residency_end(self, decisions: list[Placement],
                               resident: list[ModelHandle]) -> None:
        """A start that waits may be waiting for an occupant's min_residency: plan again
        when the first one ends (nothing else would change then)."""
        if self._residency is not None:
            self._residency.cancel()
            self._residency = None
        if not resident or not any(d.kind is Verdict.WAIT for d in decisions):
            return
        remaining = min(h.config.min_residency - h.resident_for() for h in resident)
        self._residency = self.clock.call_later(max(0.0, remaining), self.changed)
