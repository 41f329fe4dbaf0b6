"""Prometheus text format (0.0.4), written directly from the collected families.

prometheus_client's own writers validate every label name and build each line
through several layers: with 20 models and their histograms that is ~25 ms a
scrape. Our label names are fixed identifiers, so only the values need escaping,
and the `_created` series (a counter's creation time) carry nothing a dashboard
uses. Prometheus accepts this format whatever it prefers in its Accept header.
"""

from __future__ import annotations

import math

from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TYPES = {"unknown": "untyped", "info": "gauge", "stateset": "gauge",
          "gaugehistogram": "histogram"}


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return "NaN" if math.isnan(value) else repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def render(registry: Collector) -> bytes:
    out: list[str] = []
    for family in registry.collect():
        name = family.name + "_total" if family.type == "counter" else family.name
        doc = family.documentation.replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {name} {doc}\n# TYPE {name} {_TYPES.get(family.type, family.type)}\n")
        created = family.name + "_created"
        for s in family.samples:
            if s.name == created:
                continue
            value = _number(s.value)
            if s.labels:
                labels = ",".join(f'{k}="{_escape(v)}"' for k, v in s.labels.items())
                out.append(f"{s.name}{{{labels}}} {value}\n")
            else:
                out.append(f"{s.name} {value}\n")
    return "".join(out).encode()
