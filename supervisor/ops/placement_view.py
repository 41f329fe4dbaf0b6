"""A model's GPU placement as the admin API shows it (`GET /admin/models`, field `gpu`):
the GPUs of its active (or last) profile, what it needs on each and where that figure
comes from (declared / vLLM utilization / measured / unknown: whole GPUs), and what the
budget counts as its own now. None while placement is off (no `gpus:` key, no NVML)."""

from __future__ import annotations

from typing import Any

from supervisor.gpus.budget import GpuBudget
from supervisor.lifecycle.servable import Model


def placement_view(budget: GpuBudget, handle: Model) -> dict[str, Any] | None:
    needs = budget.needs
    if needs is None or not budget.enabled:
        return None
    model = needs.models.get(handle.name)
    profile = handle.profile.name
    if model is None or profile not in model.profiles:
        return None  # added or changed by a reload the budget has not loaded yet
    need = needs.need(handle.name, profile)
    asleep = needs.asleep(handle.name, profile) if need.placed else None
    reserved = budget.reservations().get(handle.name, {})
    return {
        "profile": profile,
        "gpus": None if need.gpus is None else list(need.gpus),
        "gpus_origin": need.gpus_origin,
        "need_bytes": {str(g): b for g, b in need.per_gpu.items()},
        "source": need.source.value,
        "detail": need.detail if need.placed else need.describe(),
        "asleep_bytes": None if asleep is None else {str(g): b for g, b in asleep.items()},
        "reserved_bytes": {str(g): b for g, b in sorted(reserved.items())},
    }
