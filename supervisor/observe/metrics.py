"""Prometheus metrics: hooks for events (counters, histograms) and a collector that
reads the live model state and the last GPU sample at scrape time.

Each `Metrics` owns its registry, so tests (and several apps in one process) do not
share series. Labels are bounded: model and profile names come from the config,
never from requests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from supervisor.observe.events import EventLog
from supervisor.observe.exposition import CONTENT_TYPE, render
from supervisor.observe.gpu import GpuSample
from supervisor.observe.histogram import LoopCounter, LoopHistogram
from supervisor.rules.table import State

STATES = tuple(s.value for s in State)
RefusalReason = Literal[
    "overflow", "hold_timeout", "context_length", "unknown_model", "bad_request", "start_failed",
    "stopped", "upstream_died", "runtime_unavailable", "model_not_allowed", "rate_limited",
]
REFUSAL_REASONS: frozenset[str] = frozenset(get_args(RefusalReason))
# Why the listener refused a request itself (proxy/request.py `Rejected.reason`).
REJECTED_REASONS = ("malformed", "line_too_long", "headers_too_large", "header_timeout",
                    "body_timeout", "unsupported_version")

# From 5 ms (a warm proxy hop) to an hour (a long generation streamed to the end). Few
# enough that a scrape of 20 models stays small: every bucket is a series per label set.
LATENCY_BUCKETS = (
    0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)
# Cold starts: a stand-in is up in a second, a 4-GPU vLLM in many minutes.
COLD_START_BUCKETS = (
    0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0,
)
HOLD_BUCKETS = (0.1, 0.5, *COLD_START_BUCKETS)


@dataclass(frozen=True, slots=True)
class ModelSnapshot:
    """What a model handle looks like right now; built by the caller at scrape time."""

    model: str
    state: str
    profile: str = ""  # the active profile, "" when none
    in_flight: int = 0
    held: int = 0
    idle_seconds: float = 0.0
    seconds_since_last_request: float | None = None  # None: never had one
    start_failures: int = 0  # consecutive failed starts
    retry_in_seconds: float = 0.0  # until the next start may be tried (crash-loop backoff)
    gpu_reserved: Mapping[int, int] = field(default_factory=dict)  # bytes per GPU it holds
    replica_of: str = ""  # a replica's row (supervisor_replica_*): the model it serves
    served: int = 0  # a replica's row: requests it was given (a counter)


Snapshots = Callable[[], Iterable[ModelSnapshot]]
ReplicaFamilies = tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily,
                        CounterMetricFamily]
GpuReading = Callable[[], GpuSample | None]


def code_class(status: int) -> str:
    return f"{status // 100}xx"


class Metrics:
    """The supervisor's metrics. Call the hooks from the handles and the proxy; serve
    `handler()` at GET /metrics.
    """

    def __init__(self, snapshots: Snapshots = tuple, gpu: GpuReading | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.events = EventLog()  # the last lifecycle events, for the status page
        r = self.registry
        self._transitions = Counter(
            "supervisor_model_transitions", "Lifecycle state changes.",
            ["model", "from_state", "to_state"], registry=r)
        self._swaps = Counter(
            "supervisor_model_profile_swaps", "Restarts of a model under another profile.",
            ["model", "from_profile", "to_profile"], registry=r)
        self._cold_starts = LoopHistogram(
            "supervisor_model_cold_start_seconds", "From start to ready (or to failure).",
            ["model", "profile", "outcome"], COLD_START_BUCKETS, r)
        self._requests = LoopCounter(
            "supervisor_requests", "Forwarded requests by status class.",
            ["model", "code_class"], r)
        self._duration = LoopHistogram(
            "supervisor_request_duration_seconds", "Request to end of response, hold included.",
            ["model", "cold_start"], LATENCY_BUCKETS, r)
        self._ttfb = LoopHistogram(
            "supervisor_request_ttfb_seconds", "Request to first response byte, hold included.",
            ["model", "cold_start"], LATENCY_BUCKETS, r)
        self._hold = LoopHistogram(
            "supervisor_request_hold_seconds", "Time a request waited for its model to start.",
            ["model"], HOLD_BUCKETS, r)
        self._upstream = LoopHistogram(
            "supervisor_request_upstream_seconds",
            "Request to end of response, hold excluded: the server's own time. phase=first for "
            "the first request after a start or wake (cold caches), warm for the others.",
            ["model", "phase"], LATENCY_BUCKETS, r)
        self._warmups = LoopHistogram(
            "supervisor_model_warmup_seconds", "The warm-up request after a start or wake.",
            ["model", "profile", "outcome"], LATENCY_BUCKETS, r)
        self._evictions = Counter(
            "supervisor_evictions", "Models stopped or put to sleep to make room on a GPU.",
            ["model", "reason"], registry=r)
        self._gpu_wait = LoopHistogram(
            "supervisor_gpu_wait_seconds", "Time a start or wake waited for GPU memory.",
            ["model"], HOLD_BUCKETS, r)
        self._refusals = Counter(
            "supervisor_refusals", "Requests answered by the supervisor itself with an error.",
            ["model", "reason"], registry=r)
        self.paths = LoopCounter(
            "supervisor_proxy_requests", "Requests by the path that answered them: fast (the "
            "listener forwards it), app (the aiohttp application), websocket (a tunnel).",
            ["path"], r, preset=(("fast",), ("app",), ("websocket",)))
        self._rejected = LoopCounter(
            "supervisor_proxy_rejected", "Requests the listener refused itself (malformed, "
            "past a limit, too slow), by reason.", ["reason"], r,
            preset=[(reason,) for reason in REJECTED_REASONS])
        self._live = LiveCollector(snapshots, gpu)
        r.register(self._live)

    @property
    def forwarding(self) -> tuple[dict[str, Counter | LoopCounter], dict[str, LoopHistogram]]:
        """The series a worker process counts too, by family name."""
        return ({"supervisor_requests": self._requests, "supervisor_refusals": self._refusals,
                 "supervisor_proxy_requests": self.paths,
                 "supervisor_proxy_rejected": self._rejected},
                {h.name: h for h in (self._duration, self._ttfb, self._upstream)})

    # -- hooks --------------------------------------------------------------

    def transition(self, model: str, from_state: str, to_state: str, *, event: str = "",
                   profile: str = "", error: str | None = None) -> None:
        self._transitions.labels(model, from_state, to_state).inc()
        self.events.record(model, from_state, to_state, event=event, profile=profile,
                           error=error)

    def on_state(self, unit: Any, old: Any, new: Any, event: str) -> None:
        """A lifecycle unit's state changed (a listener: lifecycle/listeners.py)."""
        self._transitions.labels(unit.name, old.value, new.value).inc()

    def swap(self, model: str, from_profile: str, to_profile: str) -> None:
        self._swaps.labels(model, from_profile, to_profile).inc()

    def eviction(self, model: str, reason: str) -> None:
        self._evictions.labels(model, reason).inc()

    def gpu_wait(self, model: str, seconds: float) -> None:
        self._gpu_wait.observe((model,), seconds)

    def cold_start(self, model: str, profile: str, seconds: float, *, ok: bool) -> None:
        self._cold_starts.observe((model, profile, "ok" if ok else "failed"), seconds)

    def request(
        self, model: str, status: int, seconds: float, ttfb: float | None, *, cold_start: bool,
        hold: float = 0.0, first: bool = False,
    ) -> None:
        """A forwarded request ended; `ttfb` None when no byte came back."""
        cold = "true" if cold_start else "false"
        self._requests.inc((model, code_class(status)))
        self._duration.observe((model, cold), seconds)
        self._upstream.observe((model, "first" if first else "warm"), max(0.0, seconds - hold))
        if ttfb is not None:
            self._ttfb.observe((model, cold), ttfb)

    def warmup(self, model: str, profile: str, seconds: float, *, ok: bool) -> None:
        self._warmups.observe((model, profile, "ok" if ok else "failed"), seconds)

    def hold(self, model: str, seconds: float) -> None:
        self._hold.observe((model,), seconds)

    def rejected(self, reason: str) -> None:
        self._rejected.inc((reason,))

    def refusal(self, model: str, reason: RefusalReason) -> None:
        """A request refused before reaching the model; `model` "" when unknown."""
        if reason not in REFUSAL_REASONS:  # keep the label set bounded, even if mistyped
            raise ValueError(f"unknown refusal reason {reason!r}")
        self._refusals.labels(model, reason).inc()

    # -- exposition ---------------------------------------------------------

    def handler(self, scrape: Callable[[], Collector] | None = None,
                ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """GET /metrics in the Prometheus text format (see exposition.py for why ours).
        `scrape`: what to render instead of this registry (with workers: this registry
        and what they forwarded, workers/stats.py).

        Collection runs on the event loop, where the handles live, so it needs no locks;
        it never touches NVML or Docker (the GPU sample is read from memory).
        """

        async def metrics(request: web.Request) -> web.Response:
            # Uncompressed: gzip would double the scrape's time on the event loop, and
            # scrapes come over loopback or a LAN.
            merged = scrape() if scrape is not None else self.registry
            return web.Response(body=render(merged),
                                headers={hdrs.CONTENT_TYPE: CONTENT_TYPE})

        return metrics

    def exported_names(self) -> set[str]:
        """Every sample name this registry can expose (for the dashboard check)."""
        names: set[str] = set()
        families = [*self.registry.collect(), *self._live.describe()]
        for family in families:
            if family.type == "counter":
                names.update(family.name + s for s in ("_total", "_created"))
            elif family.type == "histogram":
                names.update(family.name + s for s in ("_bucket", "_sum", "_count", "_created"))
            else:
                names.add(family.name)
        return names


class LiveCollector(Collector):
    """Gauges read at scrape time: model handles' state and the last GPU sample."""

    def __init__(self, snapshots: Snapshots, gpu: GpuReading | None) -> None:
        self._snapshots = snapshots
        self._gpu = gpu

    def describe(self) -> Iterable[Metric]:
        return [*self._model_families(), *self._replica_families(), *self._gpu_families()]

    def collect(self) -> Iterable[Metric]:
        families = self._model_families()
        state, profile, idle, since, in_flight, held, failures, backoff, reserved = families
        replicas = self._replica_families()
        for snap in self._snapshots():
            m = snap.model
            if snap.replica_of:
                self._add_replica(replicas, snap)
                continue
            for s in dict.fromkeys((*STATES, snap.state)):
                state.add_metric([m, s], 1.0 if s == snap.state else 0.0)
            if snap.profile:
                profile.add_metric([m, snap.profile], 1.0)
            idle.add_metric([m], snap.idle_seconds)
            if snap.seconds_since_last_request is not None:
                since.add_metric([m], snap.seconds_since_last_request)
            in_flight.add_metric([m], snap.in_flight)
            held.add_metric([m], snap.held)
            failures.add_metric([m], snap.start_failures)
            backoff.add_metric([m], snap.retry_in_seconds)
            for gpu, size in sorted(snap.gpu_reserved.items()):
                reserved.add_metric([str(gpu), m], size)
        yield from families
        yield from replicas
        sample = self._gpu() if self._gpu is not None else None
        if sample is not None:
            yield from self._gpu_metrics(sample)

    @staticmethod
    def _model_families() -> list[GaugeMetricFamily]:
        def g(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"supervisor_model_{name}", doc, labels=["model", *labels])

        return [
            g("state", "1 for the model's current lifecycle state, 0 for the others.", "state"),
            g("active_profile", "1 for the profile the model runs (or starts) under.", "profile"),
            g("idle_seconds", "Seconds with nothing in flight and nothing held."),
            g("seconds_since_last_request", "Seconds since the last request arrived."),
            g("in_flight", "Requests being forwarded to the model."),
            g("held", "Requests waiting for the model to become ready."),
            g("start_failures", "Consecutive failed starts (0 after a successful one)."),
            g("restart_backoff_seconds", "Seconds until a failed model may be started again."),
            GaugeMetricFamily("supervisor_gpu_reserved_bytes",
                              "GPU memory the placement counts as a model's (its need, or its "
                              "asleep size), per GPU.", labels=["gpu", "model"]),
        ]

    @staticmethod
    def _replica_families() -> ReplicaFamilies:
        def g(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"supervisor_replica_{name}", doc,
                                     labels=["model", "replica", *labels])

        return (
            g("state", "1 for a replica's current lifecycle state, 0 for the others.", "state"),
            g("in_flight", "Requests being forwarded to the replica."),
            g("held", "Requests waiting for the replica to become ready."),
            CounterMetricFamily("supervisor_replica_requests",
                                "Requests a model's replica was given to serve.",
                                labels=["model", "replica"]),
        )

    @staticmethod
    def _add_replica(families: ReplicaFamilies, snap: ModelSnapshot) -> None:
        state, in_flight, held, served = families
        key = [snap.replica_of, snap.model]
        for s in dict.fromkeys((*STATES, snap.state)):
            state.add_metric([*key, s], 1.0 if s == snap.state else 0.0)
        in_flight.add_metric(key, snap.in_flight)
        held.add_metric(key, snap.held)
        served.add_metric(key, snap.served)

    @staticmethod
    def _gpu_families() -> list[GaugeMetricFamily]:
        per_gpu = ["gpu", "uuid"]
        return [
            GaugeMetricFamily("supervisor_gpu_available",
                              "1 when NVML reads at least one GPU; 0 otherwise (see the log)."),
            GaugeMetricFamily("supervisor_gpu_memory_used_bytes", "GPU memory in use.",
                              labels=per_gpu),
            GaugeMetricFamily("supervisor_gpu_memory_total_bytes", "GPU memory in all.",
                              labels=per_gpu),
            GaugeMetricFamily("supervisor_gpu_utilization_ratio",
                              "Fraction of the last sample period a kernel ran.", labels=per_gpu),
            GaugeMetricFamily("supervisor_gpu_power_watts", "GPU power draw.", labels=per_gpu),
            GaugeMetricFamily("supervisor_model_gpu_memory_bytes",
                              "GPU memory of a model's container processes.",
                              labels=["model", "profile", "gpu"]),
        ]

    def _gpu_metrics(self, sample: GpuSample) -> Iterator[GaugeMetricFamily]:
        available, used, total, util, power, model_mem = self._gpu_families()
        available.add_metric([], 1.0 if sample.available else 0.0)
        yield available
        if not sample.available:
            return
        for d in sample.devices:
            key = [str(d.index), d.uuid]
            used.add_metric(key, d.memory_used_bytes)
            total.add_metric(key, d.memory_total_bytes)
            if d.utilization_ratio is not None:
                util.add_metric(key, d.utilization_ratio)
            if d.power_watts is not None:
                power.add_metric(key, d.power_watts)
        for mm in sample.models:
            model_mem.add_metric([mm.model, mm.profile, str(mm.gpu)], mm.bytes)
        yield from (used, total, util, power, model_mem)
