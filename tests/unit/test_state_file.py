"""The state file keeps every owner's section when they save at the same moment: the
admin API's toggles and the GPU budget's measured peaks are written by different tasks
(through the supervisor's one StateFile), and a read-merge-write of one must never write
back what the other just replaced."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from supervisor.root import build
from supervisor.state_file import StateFile
from tests.fakes import FakeRuntime
from tests.unit.test_root import config


async def test_concurrent_saves_of_toggles_and_measured_sizes_lose_neither(
        tmp_path: Path) -> None:
    """Through the composition root: the admin API's toggles (control) and the GPU wiring's
    measured sizes (feed) saved at the same moment."""
    root = await build(config(tmp_path), FakeRuntime())
    try:
        chat = root.registry.handles["chat"]
        measured = root.budget.needs.measured if root.budget.needs else None
        assert measured is not None
        for round_ in range(40):
            chat.set_idle_timeout(100.0 + round_)
            assert measured.record("chat", "default", {0: 1000 + round_})
            await asyncio.gather(root.control.persist(), root.feed.save())
            saved = json.loads(root.state.path.read_text())  # type: ignore[union-attr]
            assert saved["models"]["chat"]["idle_timeout"] == 100.0 + round_, (
                f"round {round_}: a toggle was lost")
            assert saved["measured"], f"round {round_}: the measurements were lost"
            assert 1000 + round_ in _values(saved["measured"]), (
                f"round {round_}: a measurement was lost")
            assert saved["version"] == 1
    finally:
        await root.close()


def _values(section: object) -> set[object]:
    if isinstance(section, dict):
        return {v for value in section.values() for v in _values(value)}
    if isinstance(section, list):
        return {v for value in section for v in _values(value)}
    return {section}


async def test_without_a_path_nothing_is_kept() -> None:
    state = StateFile(None)
    await state.save_section("models", {"x": 1})
    assert state.load() == {}
