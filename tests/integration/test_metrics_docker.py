"""Metrics after a scripted workload on the real stack, scraped by a real Prometheus that
then runs every dashboard query: cold start, held requests, a swap, an idle stop and
an error of each kind."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.lifecycle.table import State
from tests.integration.prometheus_harness import load_generator, running_prometheus

from .conftest import chat, wait_for

pytestmark = pytest.mark.usefixtures("prometheus_binary")

# Panels that only have data with an NVIDIA GPU, or with a vLLM scraped (the e2e suite).
GPU_SERIES = ("supervisor_gpu_memory", "supervisor_gpu_utilization", "supervisor_gpu_power",
              "supervisor_model_gpu_memory_bytes")


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def workload(http: aiohttp.ClientSession, url: str, handle: Any) -> None:
    post = url + "/v1/chat/completions"

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
    await wait_for(lambda: handle("sleepy").held == 1, 10, "a held request")
    assert await call(chat("sleepy")) == 503  # ...so this one overflows
    assert await held == 504  # and the held one times out
    # An idle stop.
    assert await call(chat("chat-fast")) == 200
    await wait_for(lambda: handle("chat-fast").state is State.STOPPED, 20, "the idle stop")


async def test_metrics_after_a_workload_and_every_dashboard_query_on_prometheus(
    supervisor_factory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    sup = await supervisor_factory({
        "chat-slow": {},
        "chat-fast": {"idle_timeout": "1s"},
        "crashy": {},
        "sleepy": {"max_held": 1, "hold_timeout": "1s"},
        "ctx": {},
    })
    target = sup.url.removeprefix("http://")
    async with running_prometheus(target, tmp_path) as prom:
        await prom.wait_for('up{job="target"} == 1')
        await workload(http, sup.url, sup.handle)
        async with http.get(sup.url + "/metrics") as r:
            found = samples(await r.text())

        m = "supervisor_"
        assert value(found, m + "model_cold_start_seconds_count", model="chat-slow",
                     profile="default", outcome="ok") == 1
        assert value(found, m + "model_cold_start_seconds_count", model="crashy",
                     profile="default", outcome="failed") == 1
        assert value(found, m + "request_hold_seconds_count", model="chat-slow") == 10
        assert value(found, m + "requests_total", model="chat-slow", code_class="2xx") == 12
        assert value(found, m + "request_duration_seconds_count", model="chat-slow",
                     cold_start="true") == 10
        assert value(found, m + "request_ttfb_seconds_count", model="chat-slow",
                     cold_start="false") == 2
        assert value(found, m + "model_profile_swaps_total", model="ctx", from_profile="short",
                     to_profile="long") == 1
        for model, reason in [("", "unknown_model"), ("", "bad_request"), ("ctx", "context_length"),
                              ("crashy", "start_failed"), ("sleepy", "overflow"),
                              ("sleepy", "hold_timeout")]:
            assert value(found, m + "refusals_total", model=model, reason=reason) == 1, reason
        assert value(found, m + "model_state", model="chat-fast", state="stopped") == 1
        assert value(found, m + "model_state", model="chat-slow", state="ready") == 1
        assert value(found, m + "model_active_profile", model="ctx", profile="long") == 1
        assert value(found, m + "model_transitions_total", model="chat-fast",
                     from_state="ready", to_state="stopping") == 1
        assert value(found, m + "model_in_flight", model="chat-slow") == 0
        assert value(found, m + "gpu_available") == 0  # no NVIDIA GPU on this machine

        # Prometheus saw the same: wait for the scrape after the workload.
        await prom.wait_for(f'{m}refusals_total{{reason="hold_timeout"}} == 1')
        await prom.wait_for(f'{m}model_state{{model="chat-fast",state="stopped"}} == 1')
        gen = load_generator()
        empty = []
        for title, expr in gen.queries(gen.dashboard()):
            if any(s in expr for s in GPU_SERIES) or "vllm:" in expr:
                continue  # no GPU here; vLLM's own series are checked by the e2e suite
            if not (await prom.query(gen.for_prometheus(expr)))["result"]:
                empty.append(f"{title}: {expr}")
        assert not empty, "dashboard queries without data:\n" + "\n".join(empty)
