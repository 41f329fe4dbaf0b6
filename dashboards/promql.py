"""Reads the metric names out of the dashboard's PromQL, to check each against what is
really exported: a renamed metric breaks the check instead of silently emptying a panel."""

from __future__ import annotations

import re
from collections.abc import Iterator

from dashboards.panels import Json
from supervisor.anatomy.service import Anatomy
from supervisor.lifecycle.clock import LoopClock
from supervisor.observe.metrics import Metrics
from supervisor.savings.account import SavingsAccount
from supervisor.savings.metrics import SavingsCollector

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
