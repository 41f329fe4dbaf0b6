"""Placement through the handles, without Docker: seed 004's box (a 4 GiB GPU, STT 3.1 GiB
and TTS 2.0 GiB) with a FakeRuntime and a FakeClock shared by both models."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import pytest

from supervisor.config import Config
from supervisor.gpus.budget import GpuBudget
from supervisor.gpus.inventory import Inventory
from supervisor.gpus.measured import Measured
from supervisor.gpus.resolver import GpuNeeds
from supervisor.lifecycle.effects import Effects
from supervisor.lifecycle.handle import ModelHandle
from supervisor.observe.metrics import Metrics
from supervisor.refusal import Refusal
from supervisor.rules.table import State
from tests.fakes import Client, FakeClock, FakeRuntime, listening, settle, until

GIB = 1 << 30


def seed_004(**models: dict[str, Any]) -> Config:
    base = {
        "stt": {"service": "stt", "upstream": "http://127.0.0.1:19201", "gpus": [0],
                "vram": "3.1GiB", "health_interval": 0, "min_residency": 0},
        "tts": {"service": "tts", "upstream": "http://127.0.0.1:19202", "gpus": [0],
                "vram": "2GiB", "health_interval": 0, "min_residency": 0},
    }
    for name, extra in models.items():
        base[name] = {**base.get(name, {}), **extra}
    return Config(compose={"file": "compose.yml", "project": "p"}, gpus={0: "4GiB"},
                  models=base)


@pytest.fixture
async def box() -> AsyncIterator[Any]:
    made: list[Any] = []

    def build(config: Config) -> tuple[dict[str, ModelHandle], FakeRuntime, FakeClock]:
        runtime, clock = FakeRuntime(auto_ready={"stt", "tts"}), FakeClock()
        effects = Effects(runtime, cast(aiohttp.ClientSession, None), clock,
                          probe=runtime.probe)
        metrics = Metrics(snapshots=lambda: [], gpu=lambda: None)
        listeners = listening(metrics)
        handles = {n: ModelHandle(n, m, effects, metrics, listeners)
                   for n, m in config.models.items()}
        for handle in handles.values():
            runtime.health_urls[handle.profile.service] = handle.profile.health_url
        needs = GpuNeeds(config, Inventory(totals={0: 4 * GIB}), {}, Measured())
        effects.gpus = GpuBudget(needs, clock, handles=handles.values)
        listeners.add(effects.gpus)
        made.append(handles)
        return handles, runtime, clock

    yield build
    for handles in made:
        for handle in handles.values():
            await handle.close()


async def test_the_idle_model_is_evicted_and_the_other_starts_after_it_stopped(box) -> None:
    handles, runtime, _ = box(seed_004())
    stt, tts = handles["stt"], handles["tts"]
    assert not (await Client(stt, keep=False).result()).evicted
    lease = await Client(tts, keep=False).result()
    assert lease.evicted == ("stt",)
    assert runtime.calls == [("start", "stt"), ("stop", "stt"), ("start", "tts")]
    assert (stt.state, tts.state) == (State.STOPPED, State.READY)


async def test_a_busy_model_is_not_evicted_the_other_waits_for_its_request_to_end(
    box,
) -> None:
    handles, runtime, _ = box(seed_004())
    stt, tts = handles["stt"], handles["tts"]
    busy = Client(stt)
    await until(lambda: busy.in_flight, "stt busy")
    waiting = Client(tts, keep=False)
    await settle(200)
    assert tts.state is State.STARTING and runtime.starts == ["stt"]  # waits for the GPU
    busy.finish()
    lease = await waiting.result()
    assert lease.evicted == ("stt",)
    assert runtime.calls == [("start", "stt"), ("stop", "stt"), ("start", "tts")]


async def test_a_pinned_model_is_never_evicted_and_the_other_times_out_holding(box) -> None:
    handles, runtime, clock = box(seed_004(tts={"hold_timeout": "30s"}))
    stt, tts = handles["stt"], handles["tts"]
    await Client(stt, keep=False).result()
    stt.set_pinned(True)
    waiting = Client(tts, keep=False)
    await settle(200)
    clock.advance(31)
    with pytest.raises(Refusal) as refused:
        await waiting.result()
    assert (refused.value.status, refused.value.code) == (504, "hold_timeout")
    assert stt.state is State.READY and runtime.stops == []


async def test_a_model_larger_than_its_gpu_is_refused_with_need_and_capacity(box) -> None:
    handles, runtime, _ = box(seed_004(stt={"vram": "5GiB"}))
    with pytest.raises(Refusal) as refused:
        await Client(handles["stt"], keep=False).result()
    assert (refused.value.status, refused.value.code) == (503, "insufficient_gpu_memory")
    assert "5 GiB" in refused.value.message and "4 GiB" in refused.value.message
    assert runtime.starts == []


async def test_both_fit_when_they_are_small_enough(box) -> None:
    handles, runtime, _ = box(seed_004(stt={"vram": "2GiB"}))
    await asyncio.gather(Client(handles["stt"], keep=False).result(),
                         Client(handles["tts"], keep=False).result())
    assert sorted(runtime.starts) == ["stt", "tts"] and runtime.stops == []
