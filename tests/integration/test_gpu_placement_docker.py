"""GPU placement on the real Docker Engine and `docker compose`, without a GPU.

The stand-ins of compose-gpu.yml take their memory from a ledger file that plays the
physical GPUs and exit with vLLM's own "Free memory on device ..." error when too little
is free, as a real vLLM does beside another process. So an ordering mistake of the budget
(starting one model before the other gave its memory back) is an OOM exit in a container
log, not a number in a fake.

- seed 004's box (one 4 GiB GPU, STT 3.1 GiB, TTS 2 GiB): 200 requests alternating
  between the two from 8 clients: all 200, no OOM exit, one eviction per start;
- a pinned model is never evicted: the other's requests time out (504) while it waits;
- a busy model is not evicted mid-stream: the other waits for the stream's end;
- a supervisor restart with both running (8 GiB) adopts both with their reservations;
- the dashboard's placement panels have data on a real Prometheus;
- seed 000: a 4-GPU vLLM (its GPUs and need read from the Compose service) and a 1-GPU
  model that share GPU 3 take turns there.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from supervisor.rules.table import State
from tests.helpers import (
    ComposeProject,
    Supervisor,
    metric_value,
    model_status,
    require_docker,
    scrape,
    series_sum,
    start_supervisor,
    wait_for,
)
from tests.integration.prometheus_harness import load_generator, running_prometheus
from tests.standin import load_ledger

GIB, MIB = 1 << 30, 1 << 20
STT_BYTES, TTS_BYTES = round(3.1 * GIB), 2 * GIB
L40S = 46068 * MIB  # seed 000's GPUs, as nvidia-smi reports them
COMPOSE_FILE = Path(__file__).with_name("compose-gpu.yml")
# What a stand-in prints when the ledger has too little free memory (vLLM's own texts):
# at start, and when a wake-up grows it again.
OOM_MARKERS = ("Free memory on device", "CUDA out of memory")
EVICTED = "X-Supervisor-Evicted"
CLIENTS, REQUESTS = 8, 200
PLACEMENT_SERIES = ("supervisor_gpu_reserved_bytes", "supervisor_evictions_total",
                    "supervisor_gpu_wait_seconds")
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60)



ledger = load_ledger()


@dataclass
class Box:
    """A Compose project on compose-gpu.yml with its own ledger (the "GPUs"), and the
    supervisors started on it."""

    project: ComposeProject
    path: str
    supervisors: list[Supervisor] = field(default_factory=list)

    async def supervisor(self, models: dict[str, Any], gpus: dict[int, str]) -> Supervisor:
        sup = await start_supervisor(self.project, models, gpus=gpus)
        self.supervisors.append(sup)
        return sup

    async def stop(self, sup: Supervisor) -> None:
        self.supervisors.remove(sup)
        await sup.stop()

    def held(self) -> dict[int, int]:
        """Bytes held on each ledger GPU by live stand-ins."""
        held: dict[int, int] = ledger.held(self.path)
        return held

    def oom_exits(self, *services: str) -> int:
        """Lines of vLLM's out-of-memory errors in the services' logs (every run of their
        containers: a stop and an `up` reuse the container, and its log)."""
        total = 0
        for service in services:
            for marker in OOM_MARKERS:
                total += self.project.log_lines(service, marker)
        return total

    def starts(self, service: str) -> int:
        return self.project.log_lines(service, "standin: starting")


@pytest.fixture
async def boxes(tmp_path: Path) -> AsyncIterator[Callable[[dict[int, int]], Box]]:
    """Makes the test's Box with its ledger's GPU totals; stops its supervisors, then
    removes its containers (this project's only)."""
    require_docker()
    made: list[Box] = []

    def make(totals: dict[int, int]) -> Box:
        folder = tmp_path / f"ledger{len(made)}"
        folder.mkdir()
        path = folder / "gpu.json"
        ledger.init(str(path), totals)
        env = tmp_path / f"compose{len(made)}.env"
        env.write_text(f"GPU_LEDGER_DIR={folder}\n")
        made.append(Box(ComposeProject(COMPOSE_FILE, env_file=env), str(path)))
        return made[-1]

    yield make
    for b in made:
        for sup in list(b.supervisors):
            await b.stop(sup)
        b.project.down()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
        yield session


def seed_004(**overrides: dict[str, Any]) -> dict[str, Any]:
    """Seed 004's two models as its README config declares them."""
    common = {"gpus": [0], "min_residency": "0s", "stop_timeout": "5s"}
    models = {
        "stt": {"service": "stt", "upstream": "http://127.0.0.1:19201", "vram": "3.1GiB",
                **common},
        "tts": {"service": "tts", "upstream": "http://127.0.0.1:19202", "vram": "2GiB",
                **common},
    }
    for name, extra in overrides.items():
        models[name] = {**models[name], **extra}
    return models


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}


@dataclass(frozen=True)
class Answer:
    model: str
    status: int
    evicted: str | None
    body: dict[str, Any]
    at: float  # monotonic, when the whole body was read


async def ask(http: aiohttp.ClientSession, sup: Supervisor, model: str,
              **extra: Any) -> Answer:
    async with http.post(sup.url + "/v1/chat/completions", json=chat(model, **extra)) as r:
        body = await r.json()
        return Answer(model, r.status, r.headers.get(EVICTED), body, time.monotonic())


def waits(caplog: pytest.LogCaptureFixture, model: str) -> list[str]:
    """The budget's "waits for GPU memory" lines for `model`."""
    return [r.getMessage() for r in caplog.records
            if r.name == "supervisor.placement" and r.getMessage().startswith(
                f"model={model} waits for GPU memory")]


# -- seed 004: one 4 GiB GPU, STT 3.1 GiB and TTS 2 GiB -------------------------------


async def test_seed_004_alternating_load_takes_turns_without_an_oom_exit(
        boxes: Callable[[dict[int, int]], Box], http: aiohttp.ClientSession) -> None:
    b = boxes({0: 4 * GIB})
    sup = await b.supervisor(seed_004(), gpus={0: "4GiB"})
    answers: list[Answer] = []

    async def client(k: int) -> None:
        for i in range(REQUESTS // CLIENTS):
            answers.append(await ask(http, sup, ("stt", "tts")[(k + i) % 2]))

    began = time.monotonic()
    await asyncio.gather(*(client(k) for k in range(CLIENTS)))
    took = time.monotonic() - began

    assert len(answers) == REQUESTS
    assert [a for a in answers if a.status != 200] == []
    assert b.oom_exits("stt", "tts") == 0
    exposition = await scrape(http, sup)
    evictions = series_sum(exposition, "supervisor_evictions_total")
    assert evictions == series_sum(exposition, "supervisor_evictions_total", reason="stop")
    starts = b.starts("stt") + b.starts("tts")
    # Both never fit at once: every start but the first evicted the other model.
    assert starts == evictions + 1 and evictions >= 2
    evicted = [a for a in answers if a.evicted is not None]
    assert evicted and all(a.evicted == {"stt": "tts", "tts": "stt"}[a.model] for a in evicted)
    print(f"\nseed 004, {REQUESTS} requests alternating stt/tts from {CLIENTS} clients in "
          f"{took:.1f}s: {evictions:.0f} swaps (evictions), {starts} starts, "
          f"{len(evicted)} answers carried {EVICTED}, 0 OOM exits")

    # The survivor holds its need, on the ledger and in the budget; the other nothing.
    ready = [n for n in ("stt", "tts") if sup.handle(n).state is State.READY]
    assert len(ready) == 1
    (alive,) = ready
    need = {"stt": STT_BYTES, "tts": TTS_BYTES}[alive]
    assert b.held() == {0: need}
    assert metric_value(exposition, "supervisor_gpu_reserved_bytes",
                        gpu="0", model=alive) == need
    for name, size in (("stt", STT_BYTES), ("tts", TTS_BYTES)):
        gpu = (await model_status(http, sup, name))["gpu"]
        assert gpu == {
            "profile": "default", "gpus": [0], "gpus_origin": "the `gpus:` key",
            "need_bytes": {"0": size}, "source": "declared", "detail": "the `vram:` key",
            "asleep_bytes": None, "reserved_bytes": {"0": size} if name == alive else {},
        }


async def test_a_pinned_model_is_never_evicted_the_other_times_out_with_504(
        boxes: Callable[[dict[int, int]], Box], http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="supervisor.placement")
    b = boxes({0: 4 * GIB})
    sup = await b.supervisor(seed_004(tts={"hold_timeout": "1s"}), gpus={0: "4GiB"})
    assert (await ask(http, sup, "stt")).status == 200
    async with http.put(f"{sup.admin}/admin/models/stt/pin", json={"pinned": True}) as r:
        assert r.status == 200 and (await r.json())["pinned"] is True

    refused = await ask(http, sup, "tts")

    assert refused.status == 504, refused.body
    error = refused.body["error"]
    assert error["code"] == "hold_timeout"
    assert "'tts' was not ready within hold_timeout (1s)" in error["message"]
    assert any("held by stt (pinned, 3.1 GiB)" in line for line in waits(caplog, "tts"))
    assert sup.handle("stt").state is State.READY and b.project.running("stt")
    assert b.project.containers("tts") == 0  # never tried: it would not have fitted
    assert b.held() == {0: STT_BYTES}
    assert series_sum(await scrape(http, sup), "supervisor_evictions_total") == 0
    assert (await ask(http, sup, "stt")).status == 200  # still serving
    assert b.oom_exits("stt", "tts") == 0

    # What the budget kept from happening: tts started beside stt exits with vLLM's error.
    await b.stop(sup)
    b.project.run("up", "--detach", "tts")
    await wait_for(lambda: not b.project.running("tts"), 15, "tts to exit")
    assert b.oom_exits("tts") == 1 and b.held() == {0: STT_BYTES}


async def test_a_busy_model_is_not_evicted_mid_stream(
        boxes: Callable[[dict[int, int]], Box], http: aiohttp.ClientSession,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="supervisor.placement")
    b = boxes({0: 4 * GIB})
    sup = await b.supervisor(seed_004(), gpus={0: "4GiB"})
    chunks = 10
    body = chat("stt", stream=True, max_tokens=chunks, stream_delay=0.15)
    async with http.post(sup.url + "/v1/chat/completions", json=body) as stream:
        assert stream.status == 200
        lines = [await stream.content.readline()]  # the first chunk: stt is in flight
        other = asyncio.create_task(ask(http, sup, "tts"))
        await wait_for(lambda: waits(caplog, "tts"), 10, "tts to wait for GPU memory")
        assert sup.handle("tts").state is State.STARTING
        async for line in stream.content:
            lines.append(line)
        ended = time.monotonic()
    data = [line for line in lines if line.startswith(b"data: ")]
    assert len(data) == chunks + 1 and data[-1] == b"data: [DONE]\n"  # the whole stream

    answer = await other
    assert answer.status == 200 and answer.evicted == "stt"
    assert answer.at > ended
    assert "stt (busy: 1 in flight, 3.1 GiB)" in waits(caplog, "tts")[0]
    assert b.oom_exits("stt", "tts") == 0


async def test_a_sleeper_whose_memory_was_taken_is_stopped_not_deepened(
        boxes: Callable[[dict[int, int]], Box], http: aiohttp.ClientSession) -> None:
    """stt falls asleep at level 1 (0.5 GiB kept), tts starts beside it (2 GiB); when
    stt's deepen_after comes, the brief wake that deepening takes (vLLM reloads the
    weights, then sleeps at level 2) would need 3.1 GiB again: it is not tried (no OOM),
    stt is stopped instead, and tts serves on."""
    b = boxes({0: 4 * GIB})
    sleep = {"enabled": True, "level": 1, "after": "1s", "deepen_after": "2s",
             "vram": "0.5GiB"}
    sup = await b.supervisor(seed_004(stt={"sleep": sleep}), gpus={0: "4GiB"})
    stt = sup.handle("stt")
    assert (await ask(http, sup, "stt")).status == 200
    await wait_for(lambda: stt.state is State.ASLEEP, 10, "stt asleep")
    answer = await ask(http, sup, "tts")
    assert answer.status == 200 and answer.evicted is None  # fits beside the sleeper
    await wait_for(lambda: stt.state is State.STOPPED, 15, "stt stopped at deepen_after")
    assert stt.sleep_level != 2
    assert b.oom_exits("stt", "tts") == 0  # the brief wake was never tried
    assert "brief wake" in (stt.last_error or ""), stt.last_error
    assert (await ask(http, sup, "tts")).status == 200
    assert b.held() == {0: TTS_BYTES}


async def test_a_restarted_supervisor_adopts_both_and_rebuilds_their_reservations(
        boxes: Callable[[dict[int, int]], Box], http: aiohttp.ClientSession) -> None:
    b = boxes({0: 8 * GIB})
    first = await b.supervisor(seed_004(), gpus={0: "8GiB"})
    for model in ("stt", "tts"):
        answer = await ask(http, first, model)
        assert answer.status == 200 and answer.evicted is None  # both fit in 8 GiB
    await b.stop(first)
    assert b.project.running("stt") and b.project.running("tts")  # left running

    second = await b.supervisor(seed_004(), gpus={0: "8GiB"})
    await wait_for(lambda: all(second.handle(n).state is State.READY for n in ("stt", "tts")),
                   15, "both adopted and ready")

    exposition = await scrape(http, second)
    for name, size in (("stt", STT_BYTES), ("tts", TTS_BYTES)):
        assert metric_value(exposition, "supervisor_gpu_reserved_bytes",
                            gpu="0", model=name) == size
        assert (await model_status(http, second, name))["gpu"]["reserved_bytes"] == {
            "0": size}
        assert b.starts(name) == 1  # adopted, not started again
        answer = await ask(http, second, name)
        assert answer.status == 200 and answer.evicted is None
    assert b.held() == {0: STT_BYTES + TTS_BYTES}
    assert series_sum(exposition, "supervisor_evictions_total") == 0


async def test_the_dashboards_placement_panels_have_data_on_prometheus(
        boxes: Callable[[dict[int, int]], Box], http: aiohttp.ClientSession,
        prometheus_binary: str, tmp_path: Path) -> None:
    b = boxes({0: 4 * GIB})
    sup = await b.supervisor(seed_004(), gpus={0: "4GiB"})
    gen = load_generator()
    queries = [(title, expr) for title, expr in gen.queries(gen.dashboard())
               if any(s in expr for s in PLACEMENT_SERIES)]
    assert {title for title, _ in queries} >= {
        "GPU memory reserved by placement", "Evictions", "Wait for GPU memory"}
    async with running_prometheus(sup.url.removeprefix("http://"),
                                  tmp_path / "prometheus") as prom:
        await prom.wait_for("up == 1")
        for model in ("stt", "tts", "stt"):  # two swaps
            assert (await ask(http, sup, model)).status == 200
        for _, expr in queries:
            await prom.wait_for(gen.for_prometheus(expr), 20)
        evicted = await prom.wait_for("sum(supervisor_evictions_total) == 2", 20)
        assert evicted[0]["value"][1] == "2"


# -- seed 000: four L40S, a 4-GPU vLLM at 92 % and a 6 GiB model on GPU 3 -------------


async def test_seed_000_a_4_gpu_model_and_a_1_gpu_model_take_turns_on_gpu_3(
        boxes: Callable[[dict[int, int]], Box], http: aiohttp.ClientSession) -> None:
    b = boxes(dict.fromkeys(range(4), L40S))
    common = {"min_residency": "0s", "stop_timeout": "5s"}
    models = {
        # GPUs and need from the Compose service: NVIDIA_VISIBLE_DEVICES and the vLLM flag.
        "audio": {"service": "audio", "upstream": "http://127.0.0.1:19203", **common},
        "voice": {"service": "voice", "upstream": "http://127.0.0.1:19204", "gpus": [3],
                  "vram": "6GiB", **common},
    }
    sup = await b.supervisor(models, gpus=dict.fromkeys(range(4), "46068MiB"))
    audio_need = math.ceil(L40S * 0.92)  # 42383 MiB: 3685 MiB left on GPU 3, voice needs 6 GiB

    assert (await ask(http, sup, "voice")).evicted is None
    assert b.held() == {0: 0, 1: 0, 2: 0, 3: 6 * GIB}

    answer = await ask(http, sup, "audio")
    assert answer.status == 200 and answer.evicted == "voice"
    assert b.held() == dict.fromkeys(range(4), audio_need)
    gpu = (await model_status(http, sup, "audio"))["gpu"]
    assert (gpu["gpus"], gpu["gpus_origin"], gpu["source"]) == (
        [0, 1, 2, 3], "NVIDIA_VISIBLE_DEVICES", "vllm_utilization")
    assert gpu["need_bytes"] == gpu["reserved_bytes"] == dict.fromkeys("0123", audio_need)
    assert gpu["detail"] == "--gpu-memory-utilization 0.92 x the GPU's total"

    answer = await ask(http, sup, "voice")
    assert answer.status == 200 and answer.evicted == "audio"
    assert b.held() == {0: 0, 1: 0, 2: 0, 3: 6 * GIB}
    assert (await model_status(http, sup, "voice"))["gpu"]["reserved_bytes"] == {
        "3": 6 * GIB}
    assert b.oom_exits("audio", "voice") == 0
