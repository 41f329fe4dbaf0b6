"""The composition root (supervisor/root.py) is complete once built, and shares its one
state file between the admin API's toggles and the GPU wiring's measured sizes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import Config
from supervisor.root import Supervisor, build
from supervisor.state_file import StateFile
from tests.fakes import FakeRuntime


def config(tmp_path: Path) -> Config:
    return Config.model_validate({
        "compose": {"file": str(tmp_path / "compose.yml"), "project": "p"},
        "gpus": {0: "8GiB"}, "state_file": str(tmp_path / "supervisor.state.json"),
        "models": {"chat": {"upstream": "http://127.0.0.1:19301", "service": "chat",
                            "gpus": [0], "vram": "2GiB"}}})


@pytest.fixture
async def root(tmp_path: Path) -> AsyncIterator[Supervisor]:
    built = await build(config(tmp_path), FakeRuntime())
    yield built
    await built.close()


def reachable(start: object, depth: int = 4) -> list[object]:
    """The supervisor's own objects reachable from `start` through their attributes."""
    seen: dict[int, object] = {}
    frontier = [start]
    for _ in range(depth):
        following: list[object] = []
        for obj in frontier:
            if id(obj) in seen or not type(obj).__module__.startswith("supervisor."):
                continue
            seen[id(obj)] = obj
            values: list[Any] = list(getattr(obj, "__dict__", {}).values())
            values += [getattr(obj, s, None) for s in getattr(type(obj), "__slots__", ())]
            for value in values:
                following += list(value.values()) if isinstance(value, dict) else [value]
        frontier = following
    return list(seen.values())


async def test_one_state_file_shared_by_control_and_the_gpu_wiring(root: Supervisor) -> None:
    assert root.control.state is root.state
    assert root.feed.state is root.state
    files = {id(o) for o in reachable(root) if isinstance(o, StateFile)}
    assert files == {id(root.state)}, "a second StateFile would lock and merge on its own"


async def test_built_completely_before_anything_runs(root: Supervisor) -> None:
    assert root.effects.gpus is root.budget  # given to the effects, not assigned later
    assert root.control.gpus is root.budget and root.control.fleet is root.fleet is None
    assert root.registry.handles["chat"].listeners is root.listeners
    hooks = root.listeners.on_state
    assert {h.__self__ for h in hooks} >= {root.metrics, root.budget, root.anatomy,
                                           root.prefetch}
    assert root.budget.enabled and root.gpu._task is None  # nothing runs yet


async def test_usage_per_client_is_in_the_metrics_from_the_start(root: Supervisor) -> None:
    root.gate.clients.anonymous.record("chat", 1.5, 0.5, (7, 3))
    labels = {"client": "anonymous", "model": "chat"}  # the gate's usage collector, registered
    sample = root.metrics.registry.get_sample_value
    assert sample("supervisor_client_requests_total", labels) == 1
    assert sample("supervisor_client_prompt_tokens_total", labels) == 7
