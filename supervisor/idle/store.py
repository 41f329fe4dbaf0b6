"""The keeper's histories in the state file's `idle` section, so that what a model's idle
policy learned and the start, stop and wake seconds measured survive a restart (and the
simulator reads them): read once at start, saved every minute and at close, each write in
a thread as every state-file write is."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from supervisor.idle.history import SECTION, IdleHistory
from supervisor.idle.keeper import Keeper
from supervisor.state_file import StateFile

log = logging.getLogger("supervisor.idle")

SAVE_EVERY = 60.0  # seconds


def saved_histories(state: dict[str, Any], now: float) -> dict[str, IdleHistory]:
    """model -> its history, from a loaded state file (unreadable entries start afresh)."""
    section = state.get(SECTION)
    if not isinstance(section, dict):
        return {}
    return {str(name): IdleHistory.from_json(data, now) for name, data in section.items()}


class HistoryStore:
    def __init__(self, keeper: Keeper, state: StateFile, every: float = SAVE_EVERY) -> None:
        self.keeper, self.state, self.every = keeper, state, every

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            await asyncio.sleep(self.every)
            await self.save()

    async def save(self) -> bool:
        """Whether it was written. A failure is logged, never raised: the next save (or
        the next run's measurements) makes up for it, and a shutdown must go on."""
        try:
            await self.state.save_section(SECTION, self.keeper.histories())
        except (OSError, TypeError, ValueError) as exc:
            log.error("cannot save the idle histories to %s: %s", self.state.path, exc)
            return False
        return True
