"""A histogram and a counter for metrics updated on one event loop: plain lists and
dicts, no locks.

prometheus_client's Histogram keeps a locked value per bucket and re-formats every
`le` label at each scrape; with 20 models that was most of a scrape's time. Every
hook here runs on the supervisor's event loop, so the counts need no locks and the
`le` labels are formatted once.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


class LoopHistogram(Collector):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._bounds = (*sorted(float(b) for b in buckets), math.inf)
        self._les = tuple(_le(b) for b in self._bounds)
        # Per label values: a count per bucket (not cumulative), then the sum.
        self._series: dict[tuple[str, ...], list[float]] = {}
        registry.register(self)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        counts = self._series.get(labels)
        if counts is None:
            counts = self._series[labels] = [0.0] * (len(self._bounds) + 1)
        counts[bisect_left(self._bounds, value)] += 1
        counts[-1] += value

    def describe(self) -> Iterable[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    @property
    def series(self) -> dict[tuple[str, ...], list[float]]:
        """Per label values: the count per bucket (not cumulative), then the sum."""
        return self._series

    def collect(self) -> Iterable[Metric]:
        return [self.family(self._series)]

    def family(self, series: dict[tuple[str, ...], list[float]]) -> Metric:
        """`series` (this histogram's, or its sum with workers') as a metric family."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        bucket, count, total = self.name + "_bucket", self.name + "_count", self.name + "_sum"
        for values, counts in series.items():
            labels = dict(zip(self.labelnames, values, strict=True))
            cumulative = 0.0
            for le, n in zip(self._les, counts, strict=False):
                cumulative += n
                family.samples.append(Sample(bucket, {**labels, "le": le}, cumulative))
            family.samples.append(Sample(count, labels, cumulative))
            family.samples.append(Sample(total, labels, counts[-1]))
        return family


class LoopCounter(Collector):
    """A counter by label values, as a dict: the proxy counts every request, and a
    prometheus_client Counter costs a `labels()` lookup and a lock each time. `preset`:
    series exported (at 0) before anything is counted."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry, preset: Iterable[tuple[str, ...]] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.counts: dict[tuple[str, ...], float] = dict.fromkeys(preset, 0.0)
        registry.register(self)

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        self.counts[labels] = self.counts.get(labels, 0.0) + amount

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in self.counts.items():
            family.add_metric(list(labels), value)
        return [family]
