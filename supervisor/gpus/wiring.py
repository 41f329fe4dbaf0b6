"""GPU placement put together at start: the needs resolver with the measured sizes saved
by an earlier run, the budget the handles ask before every start or wake, and a feed
that folds each NVML sample into the measured sizes (saved again when they grow)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

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


async def load_budget(config: Config, clock: Clock, state: StateFile, sampler: GpuSampler,
                      handles: Callable[[], Iterable[ModelHandle]]) -> GpuBudget:
    if config.runtime == "swarm":  # Swarm places tasks on its nodes' GPUs (generic resources)
        return GpuBudget(None, clock)
    measured = Measured.from_json(state.load().get(SECTION))
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


async def feed_measured(budget: GpuBudget, sampler: GpuSampler, state: StateFile,
                        handles: Callable[[], Iterable[ModelHandle]]) -> None:
    """Run until cancelled: what a ready model uses is its measured peak, what an asleep
    one keeps its asleep size; both feed the next placement of that profile."""
    if budget.needs is None or not budget.enabled:
        return
    measured = budget.needs.measured
    while True:
        await asyncio.sleep(sampler.interval)
        sample = sampler.sample
        if sample is None or not sample.available:
            continue
        used = by_profile(sample.models)
        states = {(h.name, h.profile.name): h.state for h in handles()}
        grew = False
        for (model, profile), per_gpu in used.items():
            current = states.get((model, profile))
            if current in (State.READY, State.ASLEEP):
                grew |= measured.record(model, profile, per_gpu,
                                        asleep=current is State.ASLEEP)
        if grew:
            await state.save_section(SECTION, measured.to_json())
