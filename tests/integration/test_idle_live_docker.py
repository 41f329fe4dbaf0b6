"""Issue 21 on real Compose: the simulator agrees with the supervisor it models (a short
trace served live with a journal, then replayed by `model-supervisor simulate` with the
start and stop seconds the supervisor measured), and the adaptive policy gives a model
back between bursts and has it ready again before each."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from supervisor.rules.table import State
from tests.helpers import Supervisor, start_supervisor

from .conftest import MODELS, chat, compose_project, wait_for

pytestmark = pytest.mark.slow
MODEL = "chat-slow"  # the stand-in with a 3 s start
GPU_STATES = {"starting", "ready", "draining", "sleeping", "waking", "stopping"}


async def _post(http: aiohttp.ClientSession, sup: Supervisor) -> aiohttp.ClientResponse:
    async with http.post(sup.url + "/v1/chat/completions", json=chat(MODEL)) as r:
        await r.read()
        assert r.status == 200, await r.text()
        return r


async def _events(http: aiohttp.ClientSession, sup: Supervisor) -> list[dict[str, Any]]:
    async with http.get(sup.admin + "/admin/events") as r:
        assert r.status == 200
        return [e for e in (await r.json())["events"] if e["model"] == MODEL]


def _gpu_seconds(events: list[dict[str, Any]]) -> float:
    """Seconds in the states that hold GPU memory, from the state changes."""
    changes = [e for e in events if e["from"] != e["to"]]
    return sum(b["time"] - a["time"] for a, b in pairwise(changes)
               if a["to"] in GPU_STATES)


async def _simulate(config: Path, trace: Path) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "supervisor", "simulate", "--config", str(config),
        "--trace", str(trace), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return dict(json.loads(out)["models"][MODEL])


async def test_the_simulator_agrees_with_the_supervisor_on_a_live_trace(
    project: str, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Three bursts, each after the model was stopped (idle_timeout 4 s): every burst
    pays a cold start, live and simulated, and the GPU-seconds agree within 10 %."""
    model = {**MODELS[MODEL], "idle_timeout": "4s"}
    settings = {"state_file": tmp_path / "state.json", "journal": tmp_path / "journal.jsonl"}
    sup = await start_supervisor(compose_project(project), {MODEL: model}, **settings)
    try:
        began = time.monotonic()
        for at, count in ((0.0, 3), (12.0, 2), (24.0, 2)):
            await asyncio.sleep(max(0.0, began + at - time.monotonic()))
            for _ in range(count):
                await _post(http, sup)
        handle = sup.handle(MODEL)
        await wait_for(lambda: handle.state is State.STOPPED, 20, "stopped after the trace")
        events = await _events(http, sup)
    finally:
        await sup.stop()  # writes the journal and the measured seconds
    journal = [json.loads(line) for line in settings["journal"].read_text().splitlines()]
    assert [j["start"] for j in journal] == ["cold", "warm", "warm"] + ["cold", "warm"] * 2
    live_colds = sum(1 for e in events if e["to"] == "starting" and e["event"] == "demand")
    live_gpu = _gpu_seconds(events)
    measured = json.loads(settings["state_file"].read_text())["idle"][MODEL]["seconds"]
    assert measured["default"]["start"] >= 3.0  # the stand-in's own start delay

    config = tmp_path / "sim.yaml"
    config.write_text(yaml.safe_dump({
        "compose": {k: str(v) for k, v in compose_project(project).compose_config().items()},
        "state_file": str(settings["state_file"]),
        "models": {MODEL: model}}))
    simulated = await _simulate(config, settings["journal"])
    assert simulated["requests"] == len(journal) == 7
    assert simulated["cold_starts"] == live_colds == 3
    assert simulated["gpu_seconds"] == pytest.approx(live_gpu, rel=0.10), (simulated, live_gpu)


async def test_adaptive_learns_the_bursts_from_nothing_within_a_few_cycles(
    project: str, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Bursts of 3 requests every 30 s on a model with no history: the first bursts pay
    cold starts or keep it warm, and by the fifth the policy has learned them: the model is
    given back after each burst and started again ahead of the next (an event `prewarm`
    with its reason), which finds it ready, so no request of it is held."""
    period, burst, cycles, learned = 30.0, 3, 6, 4
    model = {**MODELS[MODEL], "idle_policy": "adaptive", "idle_timeout": "60s",
             "min_idle": "0.5s"}
    sup = await start_supervisor(compose_project(project), {MODEL: model},
                                 state_file=tmp_path / "state.json")
    held: list[bool] = []  # per burst: was any request of it held
    came: list[float] = []  # per burst: the wall time it began
    try:
        began = time.monotonic()
        for cycle in range(cycles):
            await asyncio.sleep(max(0.0, began + cycle * period - time.monotonic()))
            came.append(time.time())
            answers = []
            for i in range(burst):
                answers.append(await _post(http, sup))
                if i < burst - 1:
                    await asyncio.sleep(1.0)
            held.append(any("X-Supervisor-Hold-Seconds" in r.headers for r in answers))
        events = await _events(http, sup)
        async with http.get(f"{sup.admin}/admin/models") as r:
            idle = next(m for m in (await r.json())["models"] if m["name"] == MODEL)["idle"]
    finally:
        await sup.stop()
    assert held[0] and not any(held[learned:]), held
    for before, burst_at in pairwise(came[learned - 1:]):
        between = [e for e in events if before < e["time"] < burst_at]
        assert any(e["to"] == "stopped" for e in between), between  # given back...
        prewarm = [e for e in between if e["event"] == "prewarm"]
        assert prewarm and "gaps repeat" in (prewarm[0]["reason"] or ""), between  # ...ahead
    assert idle["policy"] == "adaptive" and idle["prewarms"] >= cycles - learned
    assert idle["stop_after"] < 5.0, idle
