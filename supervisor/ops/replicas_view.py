"""A model's replicas as the admin API shows them (`GET /admin/models`, field `replicas`):
one row each, with what routing and the load decisions look at, and its own GPUs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from supervisor.gpus.budget import GpuBudget
from supervisor.lifecycle.servable import Model
from supervisor.ops.placement_view import placement_view
from supervisor.rules.table import State


def replicas_view(budget: GpuBudget, used_bytes: Callable[[str], int | None],
                  model: Model) -> list[dict[str, Any]]:
    served = [row.served for row in model.snapshots({})[1:]]  # the replicas' rows
    return [{
        "name": r.name,
        "state": r.state.value,
        "profile": r.profile.name if r.state is not State.STOPPED else None,
        "service": r.profile.service,
        "upstream": r.upstream,
        "in_flight": r.in_flight,
        "held": r.held,
        "served": served[i],
        "pinned": r.is_pinned,
        "last_error": r.last_error,
        "start_failures": r.start_failures,
        "retry_in_seconds": round(r.retry_in, 3),
        "vram_bytes": used_bytes(r.name),
        "gpu": placement_view(budget, r),
    } for i, r in enumerate(model.replicas)]
