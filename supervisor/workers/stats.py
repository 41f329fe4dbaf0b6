"""Request metrics across processes: a worker's cumulative snapshot, and the owner's
/metrics with every worker's latest snapshot added to its own series (same names and
labels, so dashboards see one supervisor).

A snapshot is plain JSON: `counters` {family: [[labels, total], ...]} for the request and
refusal counters, `histograms` {name: [[label values, bucket counts + sum], ...]} for the
LoopHistograms. Snapshots add up (`add`): the owner keeps a dead worker's last one under
its slot, so the sums stay monotonic across a restart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from supervisor.observe.metrics import Metrics

Snapshot = dict[str, Any]


def snapshot(metrics: Metrics) -> Snapshot:
    counters, histograms = metrics.forwarding
    out: Snapshot = {"counters": {}, "histograms": {}}
    for name, counter in counters.items():
        total = name + "_total"
        out["counters"][name] = [[s.labels, s.value] for family in counter.collect()
                                 for s in family.samples if s.name == total]
    for name, hist in histograms.items():
        out["histograms"][name] = [[list(k), list(v)] for k, v in hist.series.items()]
    return out


def add(a: Snapshot, b: Snapshot) -> Snapshot:
    """The sum of two snapshots (either may be empty)."""
    counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    histograms: dict[str, dict[tuple[str, ...], list[float]]] = {}
    for snap in (a, b):
        for name, rows in snap.get("counters", {}).items():
            into = counters.setdefault(name, {})
            for labels, value in rows:
                key = tuple(sorted(labels.items()))
                into[key] = into.get(key, 0.0) + value
        for name, rows in snap.get("histograms", {}).items():
            series = histograms.setdefault(name, {})
            for labels, counts in rows:
                _add_counts(series, tuple(labels), counts)
    return {
        "counters": {n: [[dict(k), v] for k, v in rows.items()] for n, rows in counters.items()},
        "histograms": {n: [[list(k), v] for k, v in s.items()] for n, s in histograms.items()},
    }


def _add_counts(series: dict[tuple[str, ...], list[float]], key: tuple[str, ...],
                counts: list[float]) -> None:
    have = series.get(key)
    if have is None or len(have) != len(counts):
        series[key] = list(counts)
    else:
        series[key] = [x + y for x, y in zip(have, counts, strict=True)]


def forwarded(snap: Snapshot) -> int:
    """The requests a snapshot counts (every status)."""
    return int(sum(v for _, v in snap.get("counters", {}).get("supervisor_requests", [])))


class Merged(Collector):
    """The owner's registry with `extra` (the workers' snapshots, summed) added in."""

    def __init__(self, metrics: Metrics, extra: Snapshot) -> None:
        self.metrics, self.extra = metrics, extra

    def collect(self) -> Iterable[Metric]:
        counters, histograms = self.metrics.forwarding
        extra_counters = self.extra.get("counters", {})
        extra_hist = self.extra.get("histograms", {})
        for family in self.metrics.registry.collect():
            if family.name in counters and family.name in extra_counters:
                _add_counter(family, extra_counters[family.name])
            elif family.name in histograms and family.name in extra_hist:
                hist = histograms[family.name]
                series = {k: list(v) for k, v in hist.series.items()}
                for labels, counts in extra_hist[family.name]:
                    _add_counts(series, tuple(labels), counts)
                family = hist.family(series)
            yield family


def _add_counter(family: Metric, rows: list[list[Any]]) -> None:
    total = family.name + "_total"
    index = {tuple(sorted(s.labels.items())): i for i, s in enumerate(family.samples)
             if s.name == total}
    for labels, value in rows:
        key = tuple(sorted(labels.items()))
        i = index.get(key)
        if i is None:
            family.samples.append(Sample(total, dict(labels), value))
        else:
            s = family.samples[i]
            family.samples[i] = Sample(s.name, s.labels, s.value + value, s.timestamp,
                                       s.exemplar)
