"""What a handle asks before every start and wake: may this profile have its GPU memory
now? And before a sleep: may its weights go to host RAM? The GPU budget
(`gpus/budget.py`) answers; the lifecycle only knows this Protocol,
so that the budget, which drives handles (it evicts them), sits above them."""

from __future__ import annotations

from typing import Any, Protocol

from supervisor.refusal import Refusal
from supervisor.rules.profiles import Profile


class InsufficientGpuMemory(Refusal):
    status, code, retry_after = 503, "insufficient_gpu_memory", None


class GpuAdmission(Protocol):
    async def admit(self, handle: Any, profile: Profile) -> tuple[str, ...]:
        """Return once `profile` fits (after any evictions: their names); raise
        InsufficientGpuMemory when it never can. `handle` is the `ModelHandle` asking."""

    def waiting(self, model: str) -> bool:
        """Whether `model` waits for memory."""

    def fits_in_place(self, handle: Any, profile: Profile) -> bool:
        """Whether `handle`, asleep, could take its whole need now without evicting
        anyone and ahead of no waiter: what the brief wake of a deepening needs."""

    async def sleep_level(self, handle: Any, profile: Profile, level: int) -> int:
        """The level a sleep at `level` may take: level 1 keeps the weights in host RAM,
        made where short by deepening other level-1 sleepers; 2 when it cannot be."""


class Unplaced:
    """No GPU placement: every start is admitted at once."""

    async def admit(self, handle: Any, profile: Profile) -> tuple[str, ...]:
        return ()

    def waiting(self, model: str) -> bool:
        return False

    def fits_in_place(self, handle: Any, profile: Profile) -> bool:
        return True

    async def sleep_level(self, handle: Any, profile: Profile, level: int) -> int:
        return level
