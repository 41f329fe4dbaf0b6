"""The exposition of `Metrics` as GET /metrics serves it (`exposition.render`), parsed
back with prometheus_client's own text parser."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from supervisor.observe.exposition import CONTENT_TYPE, render
from supervisor.observe.gpu import Device, GpuSample, ModelMemory
from supervisor.observe.metrics import STATES, Metrics, ModelSnapshot
from tests.helpers import metric_value

GIB = 1 << 30


def exposition(registry: CollectorRegistry) -> str:
    return render(registry).decode()


def samples(metrics: Metrics) -> list[Sample]:
    text = exposition(metrics.registry)
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
    text = exposition(m.registry)
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
        assert response.headers["Content-Type"] == CONTENT_TYPE
        text = await response.text()
        assert text == exposition(m.registry)
        assert 'supervisor_model_state{model="chat",state="ready"} 1.0' in text
        # Prometheus prefers OpenMetrics but takes the text format, which is all we write.
        openmetrics = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert openmetrics.content_type == "text/plain"
        assert await openmetrics.text() == text


# -- the writer itself: escaping, special values, round trips ---------------------------

AWKWARD = [
    'say "hi"',
    "C:\\models\\new",  # backslashes, one before an "n"
    "two\nlines",
    '\\"',  # a backslash, then a quote
    "trailing\\",
    "ünïcødé ✓",
    "",
    "{braces}, commas=and equals",
]
SPECIAL = [math.nan, math.inf, -math.inf, 0.0, -1.5, 1e-9, 1e21, 2.0**53 + 2, 0.1]


def as_key(sample: Sample) -> tuple[str, tuple[tuple[str, str], ...]]:
    return sample.name, tuple(sorted(sample.labels.items()))


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def round_trip(registry: CollectorRegistry) -> None:
    """Every sample the registry holds (less `_created`) comes back from the parser."""
    expected = {as_key(s): s.value for f in registry.collect() for s in f.samples
                if not s.name.endswith("_created")}
    parsed = {as_key(s): s.value for f in text_string_to_metric_families(exposition(registry))
              for s in f.samples}
    assert parsed.keys() == expected.keys()
    for k, v in expected.items():
        assert same(parsed[k], v), (k, parsed[k], v)


def test_label_values_with_quotes_backslashes_and_newlines_round_trip() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("t_gauge", "g", ["model", "profile"], registry=registry)
    counter = Counter("t_events", "c", ["model"], registry=registry)
    for i, value in enumerate(AWKWARD):
        gauge.labels(value, AWKWARD[-1 - i]).set(i)
        counter.labels(value).inc(i + 1)
    round_trip(registry)
    text = exposition(registry)
    assert 't_gauge{model="say \\"hi\\"",' in text
    assert 'model="two\\nlines"' in text and "two\nlines" not in text  # one line a sample
    assert 't_events_total{model="\\\\\\""} 4.0' in text  # \\ then \"


@pytest.mark.parametrize("value", SPECIAL, ids=repr)
def test_special_values_round_trip(value: float) -> None:
    registry = CollectorRegistry()
    Gauge("t_value", "v", registry=registry).set(value)
    Gauge("t_labelled", "v", ["model"], registry=registry).labels('a"b').set(value)
    round_trip(registry)
    text = exposition(registry)
    if math.isnan(value):
        assert "t_value NaN\n" in text
    elif math.isinf(value):
        assert f"t_value {'+' if value > 0 else '-'}Inf\n" in text


def test_histograms_round_trip_with_their_inf_bucket_and_no_created_series() -> None:
    registry = CollectorRegistry()
    hist = Histogram("t_seconds", "h", ["model"], buckets=(0.5, 1.0), registry=registry)
    hist.labels('q"uote').observe(0.2)
    hist.labels('q"uote').observe(7.0)
    round_trip(registry)
    families = list(text_string_to_metric_families(exposition(registry)))
    assert [(f.name, f.type) for f in families] == [("t_seconds", "histogram")]
    buckets = {s.labels["le"]: s.value for s in families[0].samples
               if s.name == "t_seconds_bucket"}
    assert buckets == {"0.5": 1.0, "1.0": 1.0, "+Inf": 2.0}
    assert "_created" not in exposition(registry)


def test_help_text_is_escaped_and_types_are_declared() -> None:
    registry = CollectorRegistry()
    doc = 'Seconds in C:\\temp\nsecond line, with "quotes"'
    Gauge("t_doc", doc, registry=registry).set(1)
    Counter("t_count", "counted", registry=registry).inc()

    class Untyped(Collector):
        def collect(self) -> Iterable[Metric]:
            metric = Metric("t_other", "an untyped family", "unknown")
            metric.add_sample("t_other", {}, 3.0)
            yield metric

    registry.register(Untyped())
    text = exposition(registry)
    assert "# TYPE t_count_total counter\n" in text
    assert "# TYPE t_other untyped\n" in text
    assert text.count("\n") == len(text.splitlines())  # the newline in the help is escaped
    parsed = {f.name: f for f in text_string_to_metric_families(text)}
    assert parsed["t_doc"].documentation == doc
    assert (parsed["t_doc"].type, parsed["t_count"].type, parsed["t_other"].type) == (
        "gauge", "counter", "unknown")
    round_trip(registry)


def test_every_series_of_a_busy_registry_round_trips() -> None:
    m = Metrics(lambda: [*SNAPSHOTS, ModelSnapshot('we"ird\\name', "ready", "p\n1")],
                lambda: SAMPLE)
    m.cold_start("chat", "32k", math.inf, ok=True)
    m.request("chat", 200, 1.0, 0.5, cold_start=False)
    m.hold("chat", 1.0)
    m.swap("a", "b", "c")
    m.refusal("", "unknown_model")
    round_trip(m.registry)


def test_metric_value_fails_on_a_series_that_is_not_exported() -> None:
    m = Metrics()
    m.refusal("chat", "overflow")
    text = exposition(m.registry)
    assert metric_value(text, "supervisor_refusals_total", model="chat", reason="overflow") == 1
    with pytest.raises(pytest.fail.Exception, match="not exported"):
        metric_value(text, "supervisor_refusals_total", model="chat", reason="hold_timeout")
    with pytest.raises(pytest.fail.Exception, match="not exported"):
        metric_value(text, "supervisor_refusals_total", model="chat")  # a label short
