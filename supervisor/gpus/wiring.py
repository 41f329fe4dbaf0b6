"""GPU placement put together at start: the needs resolver with the measured sizes saved
by an earlier run, the budget the handles ask before every start or wake, and a feed
that folds each NVML sample into the measured sizes (saved again when they grow)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from supervisor.config import Config
from supervisor.gpus.budget import GpuBudget
from supervisor.gpus.measured import SECTION, Measured, by_profile
from supervisor.gpus.resolver import GpuNeeds
from supervisor.lifecycle.clock import Clock
from supervisor.observe.gpu import GpuSampler
from supervisor.rules.table import State
from supervisor.state_file import StateFile

if TYPE_CHECKING:
    from supervisor.lifecycle.handle import ModelHandle

log = logging.getLogger("supervisor.placement")


async def load_budget(config: Config, clock: Clock, saved: dict[str, Any], sampler: GpuSampler,
                      handles: Callable[[], Iterable[ModelHandle]]) -> GpuBudget:
    """`saved`: the state file as read at start (its measured sizes)."""
    if config.runtime == "swarm":  # Swarm places tasks on its nodes' GPUs (generic resources)
        return GpuBudget(None, clock)
    measured = Measured.from_json(saved.get(SECTION))
    needs, problems = await GpuNeeds.load(config, measured)
    for problem in problems:
        log.warning("GPU placement: %s", problem)
    if needs.enabled:
        log.info("GPU placement on %s", needs.inventory.describe())

    def device_used() -> dict[int, int] | None:
        sample = sampler.sample
        if sample is None or not sample.available:
            return None
        return {d.index: d.memory_used_bytes for d in sample.devices}

    return GpuBudget(needs, clock, handles=handles, device_used=device_used)


class MeasuredFeed:
    """Folds each NVML sample into the measured sizes while it runs: what a ready model
    uses is its measured peak, what an asleep one keeps its asleep size; both feed the next
    placement of that profile, and are saved (to the supervisor's one state file) when
    they grow."""

    def __init__(self, budget: GpuBudget, sampler: GpuSampler, state: StateFile,
                 handles: Callable[[], Iterable[ModelHandle]]) -> None:
        self.budget, self.sampler, self.state, self.handles = budget, sampler, state, handles

    async def run(self) -> None:
        """Until cancelled."""
        if self.budget.needs is None or not self.budget.enabled:
            return
        while True:
            await asyncio.sleep(self.sampler.interval)
            if self.fold():
                await self.save()

    def fold(self) -> bool:
        """The latest sample into the measured sizes; whether any grew."""
        sample = self.sampler.sample
        if self.budget.needs is None or sample is None or not sample.available:
            return False
        measured = self.budget.needs.measured
        states = {(h.name, h.profile.name): h.state for h in self.handles()}
        grew = False
        for (model, profile), per_gpu in by_profile(sample.models).items():
            current = states.get((model, profile))
            if current in (State.READY, State.ASLEEP):
                grew |= measured.record(model, profile, per_gpu,
                                        asleep=current is State.ASLEEP)
        return grew

    async def save(self) -> None:
        if self.budget.needs is not None:
            await self.state.save_section(SECTION, self.budget.needs.measured.to_json())
