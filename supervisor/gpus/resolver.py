"""One object the handles ask about GPUs: the inventory, each profile's need, and what a
model holds in each state, built once per configuration (a reload builds a new one).

Loading does the I/O (NVML and `docker compose config`, each in a thread); every answer
afterwards is computed from what was loaded plus the measured peaks at that moment, so a
peak recorded during a run is used by the next start without a reload.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from supervisor.config import Config
from supervisor.gpus.inventory import Inventory, read_inventory
from supervisor.gpus.measured import Measured
from supervisor.gpus.needs import GpuNeed, asleep_need, resolve_need
from supervisor.gpus.placement import PerGpu, never_fits
from supervisor.gpus.services import Services, read_services
from supervisor.lifecycle.units import unit_configs
from supervisor.rules.table import DOWN, State


class GpuNeeds:
    def __init__(self, config: Config, inventory: Inventory, services: Services,
                 measured: Measured) -> None:
        self.config = config
        self.models = unit_configs(config)  # by unit: a model, or one of its replicas
        self.inventory = inventory
        self.services = services
        self.measured = measured

    @classmethod
    async def load(cls, config: Config, measured: Measured, nvml: Any = None
                   ) -> tuple[GpuNeeds, list[str]]:
        """The resolver, and what went wrong on the way (to log: placement then treats the
        affected profiles as unplaced, it never stops the supervisor from starting)."""
        inventory, (services, problem) = await asyncio.gather(
            asyncio.to_thread(read_inventory, config.gpus, nvml),
            asyncio.to_thread(read_services, config.compose),
        )
        problems = [problem] if problem and inventory.enabled else []
        return cls(config, inventory, services, measured), problems

    @property
    def enabled(self) -> bool:
        return self.inventory.enabled

    @property
    def totals(self) -> Mapping[int, int]:
        return self.inventory.totals

    def need(self, model: str, profile: str) -> GpuNeed:
        """What `model`'s `profile` needs now (measured peaks as of this call); `model` is
        a unit's name (a replica has its own GPUs)."""
        cfg = self.models[model]
        service = self.services.get(cfg.profiles[profile].service)
        return resolve_need(model, cfg, profile, service, self.inventory,
                            self.measured.peak(model, profile))

    def asleep(self, model: str, profile: str) -> dict[int, int] | None:
        """What it keeps per GPU once asleep; None: it cannot sleep, or nobody knows."""
        return asleep_need(self.need(model, profile), self.models[model].sleep,
                           self.measured.asleep(model, profile))

    def holds(self, model: str, profile: str, state: State) -> PerGpu:
        """Its reservation in `state`: the asleep size while ASLEEP (the whole need when
        that size is unknown), else the whole need; nothing while STOPPED or FAILED."""
        if state in DOWN:
            return {}
        need = self.need(model, profile)
        if state is State.ASLEEP:
            asleep = self.asleep(model, profile)
            if asleep is not None:
                return asleep
        return need.per_gpu

    def never_fits(self, model: str, profile: str) -> str | None:
        """The 503 `insufficient_gpu_memory` message when the profile can never run here."""
        need = self.need(model, profile)
        if not self.enabled or not need.placed:
            return None
        refused = never_fits(model, need.per_gpu, self.totals)
        return refused.reason if refused else None
