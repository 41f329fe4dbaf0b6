"""The keeper's histories in the state file's `idle` section, so that what a model's idle
policy learned and the start, stop and wake seconds measured survive a restart (and the
simulator reads them): read once at start, saved every minute and at close, each write in
a thread as every state-file write is."""

from __future__ import annotations

from typing import Any

from supervisor.idle.history import SECTION, IdleHistory
from supervisor.idle.keeper import Keeper
from supervisor.state_file import SectionSaver, StateFile

SAVE_EVERY = 60.0  # seconds


def saved_histories(state: dict[str, Any], now: float) -> dict[str, IdleHistory]:
    """model -> its history, from a loaded state file (unreadable entries start afresh)."""
    section = state.get(SECTION)
    if not isinstance(section, dict):
        return {}
    return {str(name): IdleHistory.from_json(data, now) for name, data in section.items()}


class HistoryStore(SectionSaver):
    def __init__(self, keeper: Keeper, state: StateFile, every: float = SAVE_EVERY) -> None:
        super().__init__(state, SECTION, keeper.histories, "the idle histories", every)
        self.keeper = keeper
