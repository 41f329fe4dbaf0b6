"""Metrics after a scripted workload on the real stack, scraped by a real Prometheus that
then runs every dashboard query: cold start, held requests, a swap, an idle stop and
an error of each kind."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pynvml  # type: ignore[import-untyped]
import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.observe.gpu import GpuSample, GpuSampler
from tests.helpers import Supervisor, metric_value, model_status, scrape
from tests.integration.prometheus_harness import load_generator, running_prometheus

from .conftest import chat, wait_for

# Per-GPU panels have data only where NVML reads a GPU; the per-model VRAM panel only
# where a model's container uses one (the stand-ins never do).
GPU_SERIES = ("supervisor_gpu_memory", "supervisor_gpu_utilization", "supervisor_gpu_power",
              "supervisor_energy_joules")
MODEL_GPU_SERIES = "supervisor_model_gpu_memory_bytes"
# GPU placement's series need a `gpus:` key (or NVML): test_gpu_placement_docker.py runs
# the dashboard's queries of these on Prometheus.
PLACEMENT_SERIES = ("supervisor_gpu_reserved_bytes", "supervisor_evictions_total",
                    "supervisor_gpu_wait_seconds")


def nvml_reading() -> GpuSample:
    """What the supervisor's own sampler reads from NVML on this machine, GPU or not."""
    sampler = GpuSampler(lambda service: None)
    try:
        return sampler.sample_once()
    finally:
        sampler.close()


def names(exposition: str) -> set[str]:
    return {s.name for f in text_string_to_metric_families(exposition) for s in f.samples}


async def workload(http: aiohttp.ClientSession, sup: Supervisor) -> None:
    post = sup.url + "/v1/chat/completions"

    async def call(body: Any, **kw: Any) -> int:
        async with http.post(post, json=body, **kw) as r:
            await r.read()
            return r.status

    # A cold start that holds 10 requests, then two warm ones (one streamed).
    assert await asyncio.gather(*(call(chat("chat-slow")) for _ in range(10))) == [200] * 10
    assert await call(chat("chat-slow")) == 200
    assert await call(chat("chat-slow", stream=True, max_tokens=3)) == 200
    # A profile swap, and a request no profile can hold.
    words = {"model": "ctx", "max_tokens": 16}
    assert await call({**words, "messages": [{"role": "user", "content": "hi"}]}) == 200
    assert await call({**words, "messages": [{"role": "user", "content": "w " * 3000}]}) == 200
    assert await call({**words, "messages": [{"role": "user", "content": "w " * 9000}]}) == 400
    # Every other kind of refusal.
    assert await call(chat("no-such-model")) == 404
    async with http.post(post, data=b"{oops", headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
    assert await call(chat("crashy")) == 503
    held = asyncio.create_task(call(chat("sleepy")))  # max_held 1: this one is held...

    async def one_held() -> bool:
        return (await model_status(http, sup, "sleepy"))["held"] == 1

    await wait_for(one_held, 10, "a held request")
    assert await call(chat("sleepy")) == 503  # ...so this one overflows
    assert await held == 504  # and the held one times out
    # A model of two replicas: the second starts for the load past target_concurrency.
    assert await asyncio.gather(*(call(chat("pair")) for _ in range(4))) == [200] * 4
    # An idle stop.
    assert await call(chat("chat-fast")) == 200

    async def chat_fast_stopped() -> bool:
        return (await model_status(http, sup, "chat-fast"))["state"] == "stopped"

    await wait_for(chat_fast_stopped, 20, "the idle stop")


@pytest.mark.usefixtures("prometheus_binary")
async def test_metrics_after_a_workload_and_every_dashboard_query_on_prometheus(
    supervisor_factory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sup = await supervisor_factory({
        "chat-slow": {},
        "chat-fast": {"idle_timeout": "1s"},
        "crashy": {},
        "sleepy": {"max_held": 1, "hold_timeout": "1s"},
        "ctx": {},
        "pair": {},
    })
    target = sup.url.removeprefix("http://")
    async with running_prometheus(target, tmp_path) as prom:
        await prom.wait_for('up{job="target"} == 1')
        await workload(http, sup)
        text = await scrape(http, sup)

        def value(name: str, **labels: str) -> float:
            return metric_value(text, name, **labels)

        m = "supervisor_"
        assert value(m + "model_cold_start_seconds_count", model="chat-slow",
                     profile="default", outcome="ok") == 1
        assert value(m + "model_cold_start_seconds_count", model="crashy",
                     profile="default", outcome="failed") == 1
        assert value(m + "request_hold_seconds_count", model="chat-slow") == 10
        assert value(m + "requests_total", model="chat-slow", code_class="2xx") == 12
        assert value(m + "request_duration_seconds_count", model="chat-slow",
                     cold_start="true") == 10
        assert value(m + "request_ttfb_seconds_count", model="chat-slow",
                     cold_start="false") == 2
        assert value(m + "model_profile_swaps_total", model="ctx", from_profile="short",
                     to_profile="long") == 1
        for model, reason in [("", "unknown_model"), ("", "bad_request"), ("ctx", "context_length"),
                              ("crashy", "start_failed"), ("sleepy", "overflow"),
                              ("sleepy", "hold_timeout")]:
            assert value(m + "refusals_total", model=model, reason=reason) == 1, reason
        assert value(m + "model_state", model="chat-fast", state="stopped") == 1
        assert value(m + "model_state", model="chat-slow", state="ready") == 1
        assert value(m + "model_active_profile", model="ctx", profile="long") == 1
        assert value(m + "model_transitions_total", model="chat-fast",
                     from_state="ready", to_state="stopping") == 1
        assert value(m + "model_in_flight", model="chat-slow") == 0
        assert value(m + "model_held", model="sleepy") == 0
        # GPU or not, the series say what NVML says on this machine.
        gpu = nvml_reading()
        assert value(m + "gpu_available") == (1 if gpu.available else 0), gpu.reason
        for device in gpu.devices:
            assert value(m + "gpu_memory_total_bytes", gpu=str(device.index),
                         uuid=device.uuid) == device.memory_total_bytes
        if not gpu.available:
            assert not {n for n in names(text) if n.startswith(GPU_SERIES)}

        # Prometheus saw the same: wait for the scrape after the workload.
        await prom.wait_for(f'{m}refusals_total{{reason="hold_timeout"}} == 1')
        await prom.wait_for(f'{m}model_state{{model="chat-fast",state="stopped"}} == 1')
        gen = load_generator()
        empty = []
        for title, expr in gen.queries(gen.dashboard()):
            if MODEL_GPU_SERIES in expr or "vllm:" in expr:
                continue  # no model on a GPU; vLLM's own series are checked by the e2e suite
            if any(s in expr for s in PLACEMENT_SERIES):
                continue  # no placement here (no `gpus:` key)
            if not gpu.available and any(s in expr for s in GPU_SERIES):
                continue
            if not (await prom.query(gen.for_prometheus(expr)))["result"]:
                empty.append(f"{title}: {expr}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


async def test_without_nvml_the_gpu_is_reported_unavailable_with_the_reason(
    supervisor_factory, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """The real NVML path on a machine without a GPU (this project's machines and CI)."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        reason = f"NVML: {exc}"  # e.g. "NVML Shared Library Not Found"
    else:
        gpus = pynvml.nvmlDeviceGetCount()
        pynvml.nvmlShutdown()
        if gpus:
            pytest.skip("NVML reads a GPU here: the workload test and scripts/gpu_check.py "
                        "check that path")
        reason = "NVML sees no GPU"
    caplog.set_level(logging.WARNING, logger="supervisor.observe.gpu")
    sampler = GpuSampler(lambda service: None)
    try:
        readings = [sampler.sample_once(), sampler.sample_once()]
    finally:
        sampler.close()
    assert readings == [GpuSample(False, reason=reason)] * 2
    assert caplog.messages.count(f"GPU metrics unavailable: {reason}") == 1  # once per cause

    caplog.clear()
    sup = await supervisor_factory({"chat-fast": {}})

    async def exported() -> bool:
        return "supervisor_gpu_available" in names(await scrape(http, sup))

    await wait_for(exported, 10, "the first GPU sample on /metrics")
    text = await scrape(http, sup)
    assert metric_value(text, "supervisor_gpu_available") == 0
    assert not {n for n in names(text) if n.startswith((*GPU_SERIES, MODEL_GPU_SERIES))}
    assert f"GPU metrics unavailable: {reason}" in caplog.messages
    assert (await model_status(http, sup, "chat-fast"))["vram_bytes"] is None
