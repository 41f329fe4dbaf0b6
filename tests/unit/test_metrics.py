"""The exposition of `Metrics`, parsed back with prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from supervisor.observe.gpu import Device, GpuSample, ModelMemory
from supervisor.observe.metrics import STATES, Metrics, ModelSnapshot

GIB = 1 << 30


def samples(metrics: Metrics) -> list[Sample]:
    text = generate_latest(metrics.registry).decode()
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


def values(metrics: Metrics, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Samples of one name keyed by their label set."""
    return {frozenset(s.labels.items()): s.value for s in samples(metrics) if s.name == name}


def key(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def names(metrics: Metrics) -> set[str]:
    return {s.name for s in samples(metrics)}


SNAPSHOTS = [
    ModelSnapshot("chat", "ready", "32k", in_flight=3, held=0, idle_seconds=0.0,
                  seconds_since_last_request=0.5),
    ModelSnapshot("step-audio", "starting", "64k", in_flight=0, held=7, idle_seconds=12.0),
    ModelSnapshot("tts", "stopped", "", idle_seconds=900.0, seconds_since_last_request=901.0),
]


def test_snapshot_gauges() -> None:
    m = Metrics(lambda: SNAPSHOTS)
    state = values(m, "supervisor_model_state")
    assert len(state) == len(STATES) * 3
    for snap in SNAPSHOTS:
        for s in STATES:
            assert state[key(model=snap.model, state=s)] == (1.0 if s == snap.state else 0.0)
    assert values(m, "supervisor_model_active_profile") == {
        key(model="chat", profile="32k"): 1.0, key(model="step-audio", profile="64k"): 1.0}
    assert values(m, "supervisor_model_in_flight")[key(model="chat")] == 3
    assert values(m, "supervisor_model_held")[key(model="step-audio")] == 7
    assert values(m, "supervisor_model_idle_seconds")[key(model="tts")] == 900.0
    # never had a request: absent, rather than a misleading 0
    assert values(m, "supervisor_model_seconds_since_last_request") == {
        key(model="chat"): 0.5, key(model="tts"): 901.0}


def test_snapshots_are_read_at_each_scrape() -> None:
    current: list[Iterable[ModelSnapshot]] = [[ModelSnapshot("chat", "starting")]]
    m = Metrics(lambda: current[0])
    assert values(m, "supervisor_model_state")[key(model="chat", state="starting")] == 1.0
    current[0] = [ModelSnapshot("chat", "draining")]
    assert values(m, "supervisor_model_state")[key(model="chat", state="starting")] == 0.0
    assert values(m, "supervisor_model_state")[key(model="chat", state="draining")] == 1.0


def test_hooks() -> None:
    m = Metrics()
    m.transition("chat", "stopped", "starting")
    m.transition("chat", "stopped", "starting")
    m.transition("chat", "starting", "ready")
    m.swap("chat", "32k", "128k")
    m.cold_start("chat", "32k", 41.2, ok=True)
    m.cold_start("chat", "32k", 3.0, ok=False)
    m.request("chat", 200, 2.0, 0.3, cold_start=False)
    m.request("chat", 201, 50.0, 45.0, cold_start=True)
    m.request("chat", 503, 0.01, None, cold_start=False)
    m.request("chat", 404, 0.02, 0.02, cold_start=False)
    m.hold("chat", 44.0)
    m.refusal("", "unknown_model")
    m.refusal("chat", "overflow")
    m.refusal("chat", "overflow")

    assert values(m, "supervisor_model_transitions_total") == {
        key(model="chat", from_state="stopped", to_state="starting"): 2.0,
        key(model="chat", from_state="starting", to_state="ready"): 1.0}
    assert values(m, "supervisor_model_profile_swaps_total") == {
        key(model="chat", from_profile="32k", to_profile="128k"): 1.0}
    cold = values(m, "supervisor_model_cold_start_seconds_count")
    assert cold == {key(model="chat", profile="32k", outcome="ok"): 1.0,
                    key(model="chat", profile="32k", outcome="failed"): 1.0}
    buckets = values(m, "supervisor_model_cold_start_seconds_bucket")
    assert buckets[key(model="chat", profile="32k", outcome="ok", le="30.0")] == 0.0
    assert buckets[key(model="chat", profile="32k", outcome="ok", le="45.0")] == 1.0
    assert buckets[key(model="chat", profile="32k", outcome="ok", le="1800.0")] == 1.0
    assert {dict(k)["le"] for k in buckets}.issuperset({"0.5", "1800.0", "+Inf"})

    assert values(m, "supervisor_requests_total") == {
        key(model="chat", code_class="2xx"): 2.0,
        key(model="chat", code_class="5xx"): 1.0,
        key(model="chat", code_class="4xx"): 1.0}
    assert values(m, "supervisor_request_duration_seconds_count") == {
        key(model="chat", cold_start="false"): 3.0, key(model="chat", cold_start="true"): 1.0}
    assert values(m, "supervisor_request_duration_seconds_sum")[
        key(model="chat", cold_start="true")] == 50.0
    assert values(m, "supervisor_request_ttfb_seconds_count") == {
        key(model="chat", cold_start="false"): 2.0, key(model="chat", cold_start="true"): 1.0}
    latency = values(m, "supervisor_request_duration_seconds_bucket")
    assert latency[key(model="chat", cold_start="false", le="0.005")] == 0.0
    assert latency[key(model="chat", cold_start="false", le="0.025")] == 2.0
    assert values(m, "supervisor_request_hold_seconds_sum") == {key(model="chat"): 44.0}
    assert values(m, "supervisor_refusals_total") == {
        key(model="", reason="unknown_model"): 1.0, key(model="chat", reason="overflow"): 2.0}


def test_unknown_refusal_reason_is_a_bug() -> None:
    with pytest.raises(ValueError, match="refusal reason"):
        Metrics().refusal("chat", "because")  # type: ignore[arg-type]


SAMPLE = GpuSample(
    True,
    devices=(
        Device(0, "GPU-aaa", 62 * GIB, 80 * GIB, 0.87, 412.5),
        Device(1, "GPU-bbb", 1 * GIB, 80 * GIB, None, None),  # no utilization/power support
    ),
    models=(ModelMemory("chat", "32k", 0, 61 * GIB),),
)


def test_gpu_series() -> None:
    m = Metrics(gpu=lambda: SAMPLE)
    assert values(m, "supervisor_gpu_available") == {key(): 1.0}
    assert values(m, "supervisor_gpu_memory_used_bytes") == {
        key(gpu="0", uuid="GPU-aaa"): 62 * GIB, key(gpu="1", uuid="GPU-bbb"): GIB}
    assert values(m, "supervisor_gpu_memory_total_bytes")[key(gpu="1", uuid="GPU-bbb")] == (
        80 * GIB)
    assert values(m, "supervisor_gpu_utilization_ratio") == {key(gpu="0", uuid="GPU-aaa"): 0.87}
    assert values(m, "supervisor_gpu_power_watts") == {key(gpu="0", uuid="GPU-aaa"): 412.5}
    assert values(m, "supervisor_model_gpu_memory_bytes") == {
        key(model="chat", profile="32k", gpu="0"): 61 * GIB}


GPU_SERIES = {
    "supervisor_gpu_memory_used_bytes", "supervisor_gpu_memory_total_bytes",
    "supervisor_gpu_utilization_ratio", "supervisor_gpu_power_watts",
    "supervisor_model_gpu_memory_bytes",
}


def test_gpu_absent() -> None:
    m = Metrics(gpu=lambda: GpuSample(False, reason="NVML: NVML Shared Library Not Found"))
    assert values(m, "supervisor_gpu_available") == {key(): 0.0}
    text = generate_latest(m.registry).decode()
    assert not GPU_SERIES & names(m)
    assert not any(name in text for name in GPU_SERIES)  # not even HELP/TYPE lines


def test_no_sample_yet_and_no_sampler_export_no_gpu_series() -> None:
    for m in (Metrics(gpu=lambda: None), Metrics()):
        assert not {"supervisor_gpu_available", *GPU_SERIES} & names(m)


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.refusal("chat", "overflow")
    assert values(b, "supervisor_refusals_total") == {}


def test_exported_names_cover_every_series() -> None:
    m = Metrics(lambda: SNAPSHOTS, lambda: SAMPLE)
    m.cold_start("chat", "32k", 1.0, ok=True)
    m.request("chat", 200, 1.0, 0.5, cold_start=False)
    m.hold("chat", 1.0)
    m.transition("a", "b", "c")
    m.swap("a", "b", "c")
    m.refusal("a", "overflow")
    exported = m.exported_names()
    assert names(m) <= exported
    assert {"supervisor_requests_total", "supervisor_request_ttfb_seconds_bucket",
            "supervisor_gpu_available", "supervisor_model_gpu_memory_bytes"} <= exported


async def test_handler_serves_exposition() -> None:
    m = Metrics(lambda: SNAPSHOTS)
    app = web.Application()
    app.router.add_get("/metrics", m.handler())
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/metrics")
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
        assert 'supervisor_model_state{model="chat",state="ready"} 1.0' in text
        # Prometheus prefers OpenMetrics but takes the text format, which is all we write.
        openmetrics = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert openmetrics.content_type == "text/plain"
        assert await openmetrics.text() == text
