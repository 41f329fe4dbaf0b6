"""Grafana panel and query builders shared by every row of the dashboard."""

from __future__ import annotations

from typing import Any

from supervisor.observe.metrics import STATES

Json = dict[str, Any]
DS = {"type": "prometheus", "uid": "${datasource}"}
MODEL = 'model=~"$model"'
WIN = "[$__rate_interval]"

STATE_COLORS = {"stopped": "transparent", "starting": "yellow", "ready": "green",
                "draining": "purple", "stopping": "orange", "failed": "red",
                "sleeping": "light-blue", "asleep": "blue", "waking": "light-yellow"}


def target(expr: str, legend: str = "", *, instant: bool = False) -> Json:
    return {"datasource": DS, "expr": expr, "legendFormat": legend,
            "range": not instant, "instant": instant}


def panel(kind: str, title: str, targets: list[Json], *, unit: str = "short", w: int = 12,
          h: int = 8, description: str = "", **extra: Any) -> Json:
    for i, t in enumerate(targets):
        t["refId"] = chr(ord("A") + i)
    return {
        "type": kind, "title": title, "description": description, "datasource": DS,
        "targets": targets, "gridPos": {"w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []}, **extra,
    }


def timeseries(title: str, targets: list[Json], *, stack: bool = False, bars: bool = False,
               **kw: Any) -> Json:
    p = panel("timeseries", title, targets, **kw)
    p["fieldConfig"]["defaults"]["custom"] = {
        "drawStyle": "bars" if bars else "line", "fillOpacity": 60 if stack or bars else 10,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "showPoints": "never", "lineWidth": 1,
    }
    p["options"] = {"legend": {"displayMode": "table", "placement": "bottom",
                               "calcs": ["lastNotNull", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}}
    return p


def named_stat(title: str, targets: list[Json], **kw: Any) -> Json:
    """A stat panel that shows each series' last value beside its name."""
    return panel("stat", title, targets, options={
        "reduceOptions": {"calcs": ["lastNotNull"]}, "textMode": "value_and_name"}, **kw)


def quantiles(metric: str, by: str, qs: tuple[float, ...], window: str = "$__rate_interval",
              matchers: str = MODEL, fn: str = "rate") -> list[Json]:
    legend = "".join(f" {{{{{label}}}}}" for label in by.split(", ") if label != "le")
    return [target(f"histogram_quantile({q}, sum by ({by}) "
                   f"({fn}({metric}_bucket{{{matchers}}}[{window}])))",
                   f"p{round(q * 100)}{legend}") for q in qs]


def state_timeline(title: str, targets: list[Json], mappings: list[Json], **kw: Any) -> Json:
    p = panel("state-timeline", title, targets, **kw)
    p["fieldConfig"]["defaults"]["mappings"] = mappings
    p["fieldConfig"]["defaults"]["color"] = {"mode": "thresholds"}
    p["options"] = {"mergeValues": True, "showValue": "auto", "rowHeight": 0.9,
                    "legend": {"showLegend": False}}
    return p


def lifecycle_states(title: str, metric: str, by: str, legend: str, description: str) -> Json:
    """One series per `by` whose value is the index of its state in STATES, named and
    coloured by state."""
    terms = [f'{i} * max by ({by}) ({metric}{{{MODEL},state="{s}"}})'
             for i, s in enumerate(STATES)]
    mappings = [{"type": "value", "options": {
        str(i): {"text": s, "color": STATE_COLORS.get(s, "blue"), "index": i}
        for i, s in enumerate(STATES)}}]
    return state_timeline(title, [target("\n+ ".join(terms), legend)], mappings,
                          w=24, h=6, description=description)


def unstacked(*properties: Json) -> list[Json]:
    """Field properties that draw a series as a dashed, unfilled line over a stack."""
    return [
        {"id": "custom.stacking", "value": {"mode": "none", "group": "A"}},
        {"id": "custom.fillOpacity", "value": 0},
        {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
        *properties,
    ]
