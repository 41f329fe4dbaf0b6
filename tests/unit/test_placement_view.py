"""The placement in `GET /admin/models` (field `gpu`): each model's GPUs, its need per GPU
and where that figure comes from (declared, vLLM utilization, measured, unknown), and
what the budget counts as its own; null while placement is off. The OpenAPI MODEL
schema documents exactly the fields `describe()` answers (schemathesis checks answers
against it, so a field it lacks would go unchecked)."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from supervisor.config import Config
from supervisor.gpus.budget import GpuBudget
from supervisor.gpus.inventory import Inventory
from supervisor.gpus.measured import Measured
from supervisor.gpus.resolver import GpuNeeds
from supervisor.lifecycle.effects import Effects
from supervisor.lifecycle.handle import ModelHandle
from supervisor.lifecycle.registry import Registry
from supervisor.observe.metrics import Metrics
from supervisor.ops.control import Control
from supervisor.ops.openapi import MODEL
from supervisor.proxy.gate import Gate
from supervisor.state_file import StateFile
from tests.fakes import Client, FakeClock, FakeRuntime, listening

GIB = 1 << 30
STT = round(3.1 * GIB)
Build = Callable[..., tuple[Control, dict[str, ModelHandle]]]


def config(gpus: dict[int, str], **models: dict[str, Any]) -> Config:
    base = {"health_interval": 0, "min_residency": 0}
    return Config.model_validate({
        "compose": {"file": "compose.yml", "project": "p"}, "gpus": gpus,
        "models": {n: {"upstream": f"http://127.0.0.1:{19250 + i}", **base, **m}
                   for i, (n, m) in enumerate(models.items())}})


@pytest.fixture
async def build() -> AsyncIterator[Build]:
    made: list[dict[str, ModelHandle]] = []

    def make(cfg: Config, services: dict[str, dict[str, Any]] | None = None,
             measured: Measured | None = None) -> tuple[Control, dict[str, ModelHandle]]:
        runtime, clock = FakeRuntime(auto_ready=set(cfg.models)), FakeClock()
        effects = Effects(runtime, cast(aiohttp.ClientSession, None), clock,
                          probe=runtime.probe)
        metrics = Metrics(snapshots=lambda: [], gpu=lambda: None)
        listeners = listening(metrics)
        handles = {n: ModelHandle(n, m, effects, metrics, listeners) for n, m in cfg.models.items()}
        for handle in handles.values():
            runtime.health_urls[handle.profile.service] = handle.profile.health_url
        budget = GpuBudget(None, clock)
        if cfg.gpus:
            inventory = Inventory(totals={g: int(b) for g, b in cfg.gpus.items()})
            needs = GpuNeeds(cfg, inventory, services or {}, measured or Measured())
            effects.gpus = budget = GpuBudget(needs, clock, handles=handles.values)
            listeners.add(budget)
        control = Control(cfg, None, effects, metrics, Registry(handles.values()), Gate(),
                          used_bytes=lambda _: None, state=StateFile(None),
                          listeners=listeners, gpus=budget)
        made.append(handles)
        return control, handles

    yield make
    for handles in made:
        for handle in handles.values():
            await handle.close()


def described(control: Control, handle: ModelHandle) -> dict[str, Any]:
    """describe(), checked against the MODEL schema of the OpenAPI document."""
    out = control.describe(handle)
    assert set(out) == set(MODEL["properties"]), "describe() and the MODEL schema differ"
    jsonschema.Draft202012Validator(MODEL).validate(out)
    return out


async def test_declared_need_and_what_the_running_model_reserves(build: Build) -> None:
    control, handles = build(config(
        {0: "4GiB"},
        stt={"service": "stt", "gpus": [0], "vram": "3.1GiB"},
        tts={"service": "tts", "gpus": [0], "vram": "2GiB"}))
    stt, tts = handles["stt"], handles["tts"]
    assert described(control, stt)["gpu"] == {
        "profile": "default", "gpus": [0], "gpus_origin": "the `gpus:` key",
        "need_bytes": {"0": STT}, "source": "declared", "detail": "the `vram:` key",
        "asleep_bytes": None, "reserved_bytes": {}}
    await Client(stt, keep=False).result()
    assert described(control, stt)["gpu"]["reserved_bytes"] == {"0": STT}
    lease = await Client(tts, keep=False).result()
    assert lease.evicted == ("stt",)
    assert described(control, stt)["gpu"]["reserved_bytes"] == {}
    assert described(control, tts)["gpu"]["reserved_bytes"] == {"0": 2 * GIB}


async def test_vllm_utilization_measured_unknown_and_no_gpu(build: Build) -> None:
    vllm = {"image": "vllm/vllm-openai", "command": ["--gpu-memory-utilization", "0.5"]}
    measured = Measured()
    measured.record("seen", "default", {0: 5 * GIB})
    control, handles = build(config(
        {0: "10GiB", 1: "10GiB"},
        vllm={"service": "vllm", "gpus": [0, 1]},
        seen={"service": "seen", "gpus": [1]},
        sleepy={"service": "sleepy", "gpus": [1],
                "sleep": {"enabled": True, "level": 1, "vram": "1GiB"}},
        cpu={"service": "cpu", "gpus": []},
    ), services={"vllm": vllm}, measured=measured)
    view = {n: described(control, h)["gpu"] for n, h in handles.items()}
    assert (view["vllm"]["need_bytes"], view["vllm"]["source"], view["vllm"]["detail"]) == (
        {"0": 5 * GIB, "1": 5 * GIB}, "vllm_utilization",
        "--gpu-memory-utilization 0.5 x the GPU's total")
    assert (view["seen"]["need_bytes"], view["seen"]["source"]) == ({"1": 5 * GIB},
                                                                    "measured")
    assert (view["sleepy"]["need_bytes"], view["sleepy"]["source"]) == ({"1": None},
                                                                        "unknown")
    assert view["sleepy"]["asleep_bytes"] == {"1": GIB}
    assert view["cpu"] == {
        "profile": "default", "gpus": [], "gpus_origin": "the `gpus:` key",
        "need_bytes": {}, "source": "unknown", "detail": "no GPU (the `gpus:` key)",
        "asleep_bytes": None, "reserved_bytes": {}}
    await Client(handles["sleepy"], keep=False).result()
    assert described(control, handles["sleepy"])["gpu"]["reserved_bytes"] == {"1": 10 * GIB}


async def test_null_while_placement_is_off(build: Build) -> None:
    control, handles = build(config({}, chat={"service": "chat", "vram": "2GiB"}))
    assert described(control, handles["chat"])["gpu"] is None


def test_the_readme_example_is_seed_004_and_describes_as_shown(build: Build) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Several models on a few GPUs", 1)[1]
    config_block = re.search(r"```yaml\n(.*?)```", section, re.S)
    json_block = re.search(r"```json\n(.*?)```", section, re.S)
    assert config_block and json_block, "the section shows a config and the admin field"
    example = yaml.safe_load(config_block.group(1))
    cfg = Config.model_validate({**example, "compose": {"file": "compose.yml",
                                                        "project": "p"}})
    assert cfg.gpus == {0: 4 * GIB}
    assert {n: (m.gpus, m.vram, m.min_residency) for n, m in cfg.models.items()} == {
        "stt": ([0], STT, 0), "tts": ([0], 2 * GIB, 0)}
    control, handles = build(cfg)
    shown = json.loads("{" + json_block.group(1) + "}")
    view = described(control, handles["stt"])["gpu"]
    assert shown["gpu"] == {**view, "reserved_bytes": {"0": STT}}  # shown while it runs
