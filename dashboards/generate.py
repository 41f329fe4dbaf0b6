"""Builds the Grafana dashboard for model-supervisor (and vLLM) as plain JSON.

    python dashboards/generate.py           # writes dashboards/model-supervisor.json
    python dashboards/generate.py --check   # exit 1 if that file is stale, or a panel
                                            # queries a metric nobody exports

The dashboard is generated rather than hand-edited so that every PromQL name can be
checked against what `supervisor.metrics.Metrics` really exports: a renamed metric
breaks the check instead of silently emptying a panel.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from supervisor.anatomy.service import Anatomy  # noqa: E402
from supervisor.clients.report import SERIES  # noqa: E402
from supervisor.lifecycle.clock import LoopClock  # noqa: E402
from supervisor.observe.metrics import STATES, Metrics  # noqa: E402
from supervisor.savings.account import SavingsAccount  # noqa: E402
from supervisor.savings.metrics import SavingsCollector  # noqa: E402

OUTPUT = Path(__file__).with_name("model-supervisor.json")
Json = dict[str, Any]
DS = {"type": "prometheus", "uid": "${datasource}"}
MODEL = 'model=~"$model"'

# vLLM's documented Prometheus metrics (docs.vllm.ai, "Production Metrics"; V1 engine).
_VLLM_HISTOGRAMS = (
    "time_to_first_token_seconds", "time_per_output_token_seconds",
    "inter_token_latency_seconds", "request_time_per_output_token_seconds",
    "e2e_request_latency_seconds", "request_queue_time_seconds",
    "request_inference_time_seconds", "request_prefill_time_seconds",
    "request_decode_time_seconds", "request_prompt_tokens", "request_generation_tokens",
    "request_max_num_generation_tokens", "request_params_n", "request_params_max_tokens",
    "iteration_tokens_total",
)
VLLM_METRICS = frozenset({
    "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc", "vllm:engine_sleep_state", "vllm:num_preemptions_total",
    "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
    "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
    "vllm:cache_config_info", "vllm:lora_requests_info",
    *(f"vllm:{h}{s}" for h in _VLLM_HISTOGRAMS for s in ("_bucket", "_sum", "_count")),
})

# Grafana's variables, replaced by plain values where PromQL is run outside Grafana.
GRAFANA_VARS = {
    "$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h",
    "$model": ".*", "$gpu": ".*",
}


# -- panels -------------------------------------------------------------------


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


STATE_COLORS = {"stopped": "transparent", "starting": "yellow", "ready": "green",
                "draining": "purple", "stopping": "orange", "failed": "red",
                "sleeping": "light-blue", "asleep": "blue", "waking": "light-yellow"}


def model_state() -> Json:
    """One series per model whose value is the index of its state in STATES."""
    terms = [f'{i} * max by (model) (supervisor_model_state{{{MODEL},state="{s}"}})'
             for i, s in enumerate(STATES)]
    mappings = [{"type": "value", "options": {
        str(i): {"text": s, "color": STATE_COLORS.get(s, "blue"), "index": i}
        for i, s in enumerate(STATES)}}]
    return state_timeline("Model state", [target("\n+ ".join(terms), "{{model}}")], mappings,
                          w=24, h=6, description="Lifecycle state of each model over time.")


def vram_per_gpu() -> Json:
    gpu = 'gpu=~"$gpu"'
    p = timeseries("VRAM on GPU $gpu", [
        target(f"sum by (model, profile) (supervisor_model_gpu_memory_bytes{{{gpu},{MODEL}}})",
               "{{model}} ({{profile}})"),
        target(f"sum(supervisor_gpu_memory_used_bytes{{{gpu}}})"
               f" - (sum(supervisor_model_gpu_memory_bytes{{{gpu}}}) or vector(0))",
               "not a model"),
        target(f"sum(supervisor_gpu_memory_total_bytes{{{gpu}}})", "total"),
    ], stack=True, unit="bytes", repeat="gpu", repeatDirection="h", maxPerRow=2,
        description="Memory of each model's container processes, stacked; needs pid: host "
                    "when the supervisor runs in a container.")
    p["fieldConfig"]["overrides"] = [{
        "matcher": {"id": "byName", "options": "total"},
        "properties": [
            {"id": "custom.stacking", "value": {"mode": "none", "group": "A"}},
            {"id": "custom.fillOpacity", "value": 0},
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}},
        ],
    }]
    return p


def placement() -> list[Json]:
    """GPU placement (a `gpus:` key, or NVML): what each model reserves, its evictions and
    how long starts waited for memory."""
    gpu, win = 'gpu=~"$gpu"', "[$__rate_interval]"
    reserved = timeseries("GPU memory reserved by placement", [
        target(f"sum by (gpu, model) (supervisor_gpu_reserved_bytes{{{gpu},{MODEL}}})",
               "GPU {{gpu}}: {{model}}"),
        target(f"max by (gpu) (supervisor_gpu_memory_total_bytes{{{gpu}}})",
               "GPU {{gpu}} total (NVML)"),
    ], stack=True, unit="bytes",
        description="What the budget counts as each model's (its need, or its asleep size) "
                    "per GPU: a start waits, or evicts idle models, until its need fits "
                    "beside these. The inventory is the config's `gpus:` key, else NVML.")
    reserved["fieldConfig"]["overrides"] = [{
        "matcher": {"id": "byRegexp", "options": ".* total \\(NVML\\)"},
        "properties": [
            {"id": "custom.stacking", "value": {"mode": "none", "group": "A"}},
            {"id": "custom.fillOpacity", "value": 0},
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
        ],
    }]
    return [
        reserved,
        timeseries("Evictions", [target(
            f"sum by (model, reason) (increase(supervisor_evictions_total{{{MODEL}}}{win}))",
            "{{model}} ({{reason}})")], bars=True, w=6,
            description="Idle models stopped (or put to sleep) to make room for another "
                        "model's start; the response that waited carries "
                        "X-Supervisor-Evicted."),
        timeseries("Wait for GPU memory", quantiles(
            "supervisor_gpu_wait_seconds", "le, model", (0.5, 0.95)), unit="s", w=6,
            description="Time a start or wake waited for GPU memory (evictions included)."),
    ]


def start_phases() -> Json:
    """Each start's phases stacked into one bar per model (the mean where several starts
    end in one interval): where a cold start's seconds go."""
    seconds = "supervisor_start_phase_seconds"
    per = f"{{{MODEL}}}[$__rate_interval]"
    return timeseries("Start phases: $model", [target(
        f"sum by (phase) (increase({seconds}_sum{per})) / "
        f"sum by (phase) (increase({seconds}_count{per}))", "{{phase}}")],
        stack=True, bars=True, unit="s", repeat="model", repeatDirection="h", maxPerRow=2,
        description="Seconds of each phase of a start (container, weights, compile, "
                    "kv_cache, graphs, api, healthy, warmup) or wake (wake, warmup), read "
                    "from the server's log; GET /admin/models/{name}/starts has each start.")


def replicas() -> list[Json]:
    """Models with `replicas:`: each replica's state, its load, and how requests split."""
    win = "[$__rate_interval]"
    terms = [f'{i} * max by (model, replica) (supervisor_replica_state{{{MODEL},state="{s}"}})'
             for i, s in enumerate(STATES)]
    mappings = [{"type": "value", "options": {
        str(i): {"text": s, "color": STATE_COLORS.get(s, "blue"), "index": i}
        for i, s in enumerate(STATES)}}]
    return [
        state_timeline("Replica state", [target("\n+ ".join(terms), "{{replica}}")], mappings,
                       w=24, h=6, description="Lifecycle state of each replica: another "
                       "starts past target_concurrency, a surplus one stops after "
                       "idle_timeout."),
        timeseries("Replica in flight and held", [
            target(f"sum by (replica) (supervisor_replica_in_flight{{{MODEL}}})",
                   "{{replica}} in flight"),
            target(f"sum by (replica) (supervisor_replica_held{{{MODEL}}})", "{{replica}} held"),
        ]),
        timeseries("Requests per replica", [target(
            f"sum by (replica) (rate(supervisor_replica_requests_total{{{MODEL}}}{win}))",
            "{{replica}}")], unit="reqps", stack=True,
            description="Each request goes to the ready replica with the fewest outstanding."),
    ]


def savings() -> list[Json]:
    """What idling gave back and what it cost users (supervisor/savings/, GET /admin/savings)."""
    per = f"{{{MODEL}}}[$__rate_interval]"
    return [
        timeseries("GPUs held and given back", [
            target(f"sum by (model) (rate(supervisor_gpu_seconds_held_total{per}))",
                   "{{model}} held"),
            target(f"3600 * sum by (model) (rate(supervisor_gpu_hours_given_back_total{per}))",
                   "{{model}} given back")], w=8,
            description="GPUs' worth, against the same model always on with its full need."),
        timeseries("Seconds users waited on starts and wakes", [target(
            f"sum by (model, kind) (increase(supervisor_cold_start_wait_seconds_total{per}))",
            "{{model}} {{kind}}")], bars=True, unit="s", w=8),
        timeseries("Time in each state", [target(
            f"sum by (model, state) (rate(supervisor_state_seconds_total{per}))",
            "{{model}} {{state}}")], stack=True, unit="percentunit", w=8),
        timeseries("Energy per model", [target(
            f"sum by (model) (rate(supervisor_energy_joules_total{per}))", "{{model}}")],
            unit="watt", w=24, h=6, description="NVML's energy counter shared as memory is; "
            "empty where the GPUs have none."),
    ]


def rows() -> Iterator[tuple[str, list[Json]]]:
    win = "[$__rate_interval]"
    yield "Models", [
        model_state(),
        state_timeline("Active profile", [target(
            f"max by (model, profile) (supervisor_model_active_profile{{{MODEL}}}) == 1",
            "{{model}}: {{profile}}")],
            [{"type": "value", "options": {"1": {"text": "active", "color": "green"}}}]),
        timeseries("In flight and held", [
            target(f"sum by (model) (supervisor_model_in_flight{{{MODEL}}})",
                   "{{model}} in flight"),
            target(f"sum by (model) (supervisor_model_held{{{MODEL}}})", "{{model}} held"),
        ]),
        timeseries("Idle time", [
            target(f"max by (model) (supervisor_model_idle_seconds{{{MODEL}}})", "{{model}} idle"),
            target(f"max by (model) (supervisor_model_seconds_since_last_request{{{MODEL}}})",
                   "{{model}} since last request"),
        ], unit="s", description="Compare with each model's idle_timeout."),
        timeseries("Profile swaps and refusals", [
            target(f"sum by (model, from_profile, to_profile) "
                   f"(increase(supervisor_model_profile_swaps_total{{{MODEL}}}{win}))",
                   "swap {{model}} {{from_profile}} -> {{to_profile}}"),
            target(f"sum by (model, reason) (increase(supervisor_refusals_total{{{MODEL}}}{win}))",
                   "refused {{model}} {{reason}}"),
        ], bars=True),
        timeseries("State transitions", [target(
            f"sum by (model, from_state, to_state) "
            f"(increase(supervisor_model_transitions_total{{{MODEL}}}{win}))",
            "{{model}} {{from_state}} -> {{to_state}}")], bars=True),
    ]
    yield "Replicas", replicas()
    yield "Cold starts and holds", [
        timeseries("Cold starts", [target(
            f"sum by (model, outcome) "
            f"(increase(supervisor_model_cold_start_seconds_count{{{MODEL}}}{win}))",
            "{{model}} {{outcome}}")], bars=True, w=8),
        panel("stat", "Cold start duration (range)", quantiles(
            "supervisor_model_cold_start_seconds", "le, model", (0.5, 0.95), "$__range",
            f'{MODEL},outcome="ok"', "increase"), unit="s", w=8,
            options={"reduceOptions": {"calcs": ["lastNotNull"]}, "textMode": "value_and_name"}),
        panel("stat", "Hold time (range)", quantiles(
            "supervisor_request_hold_seconds", "le, model", (0.5, 0.95), "$__range",
            fn="increase"), unit="s", w=8,
            options={"reduceOptions": {"calcs": ["lastNotNull"]}, "textMode": "value_and_name"}),
        start_phases(),
    ]
    yield "What idling saved", savings()
    yield "GPU", [
        vram_per_gpu(),
        *placement(),
        timeseries("GPU utilization", [target(
            'max by (gpu) (supervisor_gpu_utilization_ratio{gpu=~"$gpu"})', "GPU {{gpu}}")],
            unit="percentunit"),
        timeseries("GPU power", [target(
            'max by (gpu) (supervisor_gpu_power_watts{gpu=~"$gpu"})', "GPU {{gpu}}")],
            unit="watt"),
        panel("stat", "GPU metrics available", [target("min(supervisor_gpu_available)")],
              w=6, h=4, description="0: no NVML library or no GPU; the supervisor logs why.",
              options={"reduceOptions": {"calcs": ["lastNotNull"]}}),
    ]
    yield "Requests", [
        timeseries("Requests by code class", [target(
            f"sum by (model, code_class) (rate(supervisor_requests_total{{{MODEL}}}{win}))",
            "{{model}} {{code_class}}")], unit="reqps", stack=True, w=24),
        timeseries("Latency, cold vs warm", quantiles(
            "supervisor_request_duration_seconds", "le, cold_start", (0.5, 0.95, 0.99)),
            unit="s", description="Request to end of response; cold includes the hold."),
        timeseries("Time to first byte, cold vs warm", quantiles(
            "supervisor_request_ttfb_seconds", "le, cold_start", (0.5, 0.95, 0.99)), unit="s"),
        timeseries("Requests by the path that answered", [target(
            f"sum by (path) (rate(supervisor_proxy_requests_total{win}))", "{{path}}")],
            unit="reqps", stack=True, description="fast: forwarded by the listener itself; "
            "app: the aiohttp application (holds, errors, large bodies, other routes); "
            "websocket: passed through."),
        timeseries("Refused at the edge", [target(
            f"sum by (reason) (increase(supervisor_proxy_rejected_total{win}))", "{{reason}}")],
            bars=True, description="Malformed requests, heads past the limits and slow "
            "clients, answered 400/414/431/408/505 by the listener (http: in the config)."),
    ]
    yield "Clients", [
        timeseries("Requests by client", [target(
            f"sum by (client) (rate(supervisor_client_requests_total{{{MODEL}}}{win}))",
            "{{client}}")], unit="reqps", stack=True, w=8),
        timeseries("Tokens by client", [
            target(f"sum by (client) (rate(supervisor_client_prompt_tokens_total{{{MODEL}}}"
                   f"{win}))", "{{client}} prompt"),
            target(f"sum by (client) (rate(supervisor_client_completion_tokens_total"
                   f"{{{MODEL}}}{win}))", "{{client}} completion"),
        ], stack=True, w=8, description="From the answers' usage (streams ask for it)."),
        timeseries("Seconds held and served by client", [
            target(f"sum by (client) (rate(supervisor_client_held_seconds_total{{{MODEL}}}"
                   f"{win}))", "{{client}} held"),
            target(f"sum by (client) (rate(supervisor_client_seconds_total{{{MODEL}}}{win}))",
                   "{{client}} served"),
        ], w=8, description="Seconds per second: held waiting for a model, and in all."),
    ]
    yield "vLLM", [
        timeseries("vLLM requests running and waiting", [
            target("sum by (model_name) (vllm:num_requests_running)", "{{model_name}} running"),
            target("sum by (model_name) (vllm:num_requests_waiting)", "{{model_name}} waiting"),
        ]),
        timeseries("vLLM KV cache usage", [target(
            "max by (model_name) (vllm:kv_cache_usage_perc)", "{{model_name}}")],
            unit="percentunit"),
        timeseries("vLLM engine sleep state", [target(
            "max by (model_name, sleep_state) (vllm:engine_sleep_state)",
            "{{model_name}} {{sleep_state}}")],
            description="awake=1 while serving; weights_offloaded / discard_all while asleep."),
    ]


def layout() -> list[Json]:
    """Flow the panels left to right, top to bottom, each row under a row header."""
    out: list[Json] = []
    y = 0
    for title, panels in rows():
        out.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                    "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}})
        y += 1
        x = row_h = 0
        for p in panels:
            w, h = p["gridPos"]["w"], p["gridPos"]["h"]
            if x + w > 24:
                x, y, row_h = 0, y + row_h, 0
            p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
            x, row_h = x + w, max(row_h, h)
            out.append(p)
        y += row_h
    for i, p in enumerate(out, start=1):
        p["id"] = i
    return out


def variable(name: str, label: str, query: str) -> Json:
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "definition": query, "query": {"query": query, "refId": name},
        "refresh": 2, "multi": True, "includeAll": True, "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1, "hide": 0,
    }


def dashboard() -> Json:
    return {
        "uid": "model-supervisor", "title": "model-supervisor",
        "description": "Models started on demand: lifecycle, VRAM, cold starts, requests, vLLM.",
        "tags": ["model-supervisor", "vllm", "gpu"], "timezone": "browser",
        "schemaVersion": 39, "version": 1, "editable": True, "graphTooltip": 1,
        "time": {"from": "now-6h", "to": "now"}, "refresh": "30s",
        "annotations": {"list": []},
        "templating": {"list": [
            # A datasource variable, not ${DS_PROMETHEUS}/__inputs: provisioning does
            # not resolve __inputs, a datasource variable works in both.
            {"name": "datasource", "label": "Data source", "type": "datasource",
             "query": "prometheus", "regex": "", "hide": 0, "refresh": 1,
             "current": {}},
            variable("model", "Model", "label_values(supervisor_model_state, model)"),
            variable("gpu", "GPU", "label_values(supervisor_gpu_memory_total_bytes, gpu)"),
        ]},
        "panels": layout(),
    }


def render(board: Json) -> str:
    return json.dumps(board, indent=2) + "\n"


# -- checks -------------------------------------------------------------------

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"((?:\\.|[^"\\])*)"')
_BRACES = re.compile(r"\{[^{}]*\}")
_BRACKETS = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_OFFSET = re.compile(r"\boffset\s+-?[\w$]+", re.IGNORECASE)
_AT = re.compile(r"@\s*[\w.()]+")
# A name not preceded by a name character (so not the "m" of "5m" or of "$model") and
# not followed by "(" (a function or aggregation).
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset({
    "and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left",
    "group_right", "offset", "inf", "nan", "atan2",
})


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (label names, functions, strings excluded)."""
    names = {m.group(1) for m in _NAME_MATCHER.finditer(expr)}
    text = _BRACES.sub(" ", _STRING.sub('""', expr))
    text = _BRACKETS.sub(" ", text)
    text = _AT.sub(" ", _OFFSET.sub(" ", _GROUPING.sub(" ", text)))
    names |= {m.group(1) for m in _IDENT.finditer(text)
              if m.group(1).lower() not in _KEYWORDS}
    return names


def for_prometheus(expr: str) -> str:
    """The expression with Grafana's variables replaced, as Prometheus itself accepts it."""
    for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    return expr


def queries(board: Json) -> Iterator[tuple[str, str]]:
    """(panel title, PromQL) for every panel target and template variable query."""
    for p in board["panels"]:
        for t in p.get("targets", []):
            yield p["title"], t["expr"]
    for v in board["templating"]["list"]:
        if v["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", v["definition"])
            yield f"variable {v['name']}", inner.group(1) if inner else v["definition"]


def exported_names() -> set[str]:
    """What the supervisor's registry exposes, with the series its parts add to it."""
    metrics = Metrics()
    Anatomy(None, metrics.registry)  # supervisor_start_phase_seconds
    metrics.registry.register(SavingsCollector(SavingsAccount(LoopClock())))
    return metrics.exported_names()


def check(board: Json, committed: str | None) -> list[str]:
    problems: list[str] = []
    known = exported_names() | VLLM_METRICS | {f"{name}_total" for name, _, _ in SERIES}
    for title, expr in queries(board):
        for name in sorted(metric_names(expr) - known):
            problems.append(f"panel {title!r}: metric {name!r} is neither exported by "
                            "supervisor.metrics.Metrics nor a documented vLLM metric")
    if committed is None:
        problems.append(f"{OUTPUT.name} is missing: run python dashboards/generate.py")
    elif committed != render(board):
        old = {p.get("title"): p for p in json.loads(committed).get("panels", [])}
        new = {p["title"]: p for p in board["panels"]}
        differ = sorted(str(t) for t in old.keys() | new.keys() if old.get(t) != new.get(t))
        shown = ", ".join(differ[:5]) + (f" and {len(differ) - 5} more" if differ[5:] else "")
        problems.append(f"{OUTPUT.name} differs from the generated dashboard "
                        f"(panels: {shown or 'none; other fields'}): "
                        "run python dashboards/generate.py")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="verify the committed JSON and the metric names; write nothing")
    args = parser.parse_args(argv)
    board = dashboard()
    if args.check:
        committed = OUTPUT.read_text() if OUTPUT.exists() else None
        problems = check(board, committed)
        for problem in problems:
            print(f"dashboards: {problem}", file=sys.stderr)
        return 1 if problems else 0
    problems = check(board, render(board))
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    OUTPUT.write_text(render(board))
    print(f"wrote {OUTPUT} ({len(board['panels'])} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
