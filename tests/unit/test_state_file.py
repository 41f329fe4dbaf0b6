"""The state file keeps every owner's section when they save at the same moment: the
admin API's toggles and the GPU budget's measured peaks are written by different tasks,
and a read-merge-write of one must never write back what the other just replaced."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from supervisor.state_file import StateFile


async def test_concurrent_saves_of_two_sections_lose_neither(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.state.json"
    toggles, measured = StateFile(path), StateFile(path)  # two holders, as once in app.py
    for round_ in range(60):
        await asyncio.gather(
            toggles.save_section("models", {"chat": {"pinned": round_ % 2 == 0, "n": round_}}),
            measured.save_section("measured", {"chat/default": {"0": 1000 + round_}}),
        )
        saved = json.loads(path.read_text())
        assert saved["models"]["chat"]["n"] == round_, f"round {round_}: a toggle was lost"
        assert saved["measured"]["chat/default"]["0"] == 1000 + round_, (
            f"round {round_}: a measurement was lost")
        assert saved["version"] == 1


async def test_without_a_path_nothing_is_kept() -> None:
    state = StateFile(None)
    await state.save_section("models", {"x": 1})
    assert state.load() == {}
