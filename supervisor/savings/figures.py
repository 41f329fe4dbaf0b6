"""What a unit holds in a state, and the energy its GPUs used, as the account prices them.

Memory, first that applies:
  1. the GPU budget's figures (its reservation in that state: the asleep size while
     ASLEEP, whole GPUs at their total when the size is unknown), with the bytes NVML
     measured for it (ready or asleep) where the sampler attributes any;
  2. on a host without GPUs (or a profile the budget cannot place): the declared `vram`
     (per GPU of a declared `gpus:`, else one), else the peak measured at an earlier run,
     on one GPU; asleep, `sleep.vram` when declared;
  3. a profile that declares `gpus: []` holds nothing; any other holds one GPU of unknown
     size while it runs (GPU-seconds are then the seconds its memory was reserved).

Energy: NVML's total-energy counter of each GPU (`nvmlDeviceGetTotalEnergyConsumption`),
the rise since the last read shared among the units on that GPU by the bytes they use
there. Without that counter (no GPU here, or an older GPU) energy is unknown (None).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from supervisor.gpus.budget import GpuBudget
from supervisor.gpus.placement import PerGpu
from supervisor.observe.gpu import GpuSampler
from supervisor.rules.table import DOWN, State
from supervisor.savings.account import Sizer
from supervisor.savings.tally import NOTHING, Holding

if TYPE_CHECKING:
    from supervisor.lifecycle.handle import ModelHandle


def gpu_sizer(budget: GpuBudget, sampler: GpuSampler) -> Sizer:
    def size(unit: ModelHandle, profile: str, state: State) -> Holding:
        if state in DOWN or profile not in unit.config.profiles:
            return NOTHING
        measured = _measured(sampler, unit.name, profile) if state in (
            State.READY, State.ASLEEP) else None
        held = _budgeted(budget, unit.name, profile, state) or _declared(
            budget, unit, profile, state)
        return held if measured is None else Holding(held.gpus, measured)

    return size


def _measured(sampler: GpuSampler, unit: str, profile: str) -> int | None:
    sample = sampler.sample
    if sample is None or not sample.available:
        return None
    used = [m.bytes for m in sample.models if m.model == unit and m.profile == profile]
    return sum(used) if used else None


def _budgeted(budget: GpuBudget, unit: str, profile: str, state: State) -> Holding | None:
    needs = budget.needs
    if needs is None or not budget.enabled or unit not in needs.models or (
            profile not in needs.models[unit].profiles):
        return None
    full = needs.holds(unit, profile, State.READY)
    if not full:
        return None
    totals = needs.totals

    def size(per_gpu: PerGpu) -> int:
        return sum(totals.get(g, 0) if b is None else b for g, b in per_gpu.items())

    held, whole = size(needs.holds(unit, profile, state)), size(full)
    share = held / whole if state is State.ASLEEP and whole else 1.0
    return Holding(len(full) * share, held)


def _declared(budget: GpuBudget, unit: ModelHandle, profile: str, state: State) -> Holding:
    cfg = unit.config
    own = cfg.profiles[profile]
    gpus = own.gpus if own.gpus is not None else cfg.gpus
    if gpus is not None and not gpus:
        return NOTHING  # `gpus: []`: it uses no GPU
    count = len(gpus) if gpus else 1
    per_gpu = own.vram or cfg.vram
    peak = budget.needs.measured.peak(unit.name, profile) if budget.needs else None
    full = per_gpu * count if per_gpu is not None else (sum(peak.values()) if peak else None)
    if state is State.ASLEEP and cfg.sleep.enabled and cfg.sleep.vram is not None:
        asleep = cfg.sleep.vram * count
        return Holding(count * (asleep / full if full else 1.0), asleep)
    return Holding(float(count), full)


class EnergyMeter:
    """Joules per unit since the last call; None while no GPU reports its energy."""

    def __init__(self, sampler: GpuSampler) -> None:
        self.sampler = sampler
        self._last: dict[int, float] = {}  # GPU -> its counter at the last call

    def __call__(self) -> dict[str, float] | None:
        sample = self.sampler.sample
        if sample is None or not sample.available:
            return None
        known = [d for d in sample.devices if d.energy_joules is not None]
        if not known:
            return None
        out: dict[str, float] = {}
        for device in known:
            assert device.energy_joules is not None
            last = self._last.get(device.index)
            self._last[device.index] = device.energy_joules
            if last is None or device.energy_joules < last:  # first read, or a reset
                continue
            on = [m for m in sample.models if m.gpu == device.index]
            used = sum(m.bytes for m in on)
            for m in on:
                share = (device.energy_joules - last) * (m.bytes / used if used else 0.0)
                out[m.model] = out.get(m.model, 0.0) + share
        return out
