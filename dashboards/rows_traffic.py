"""The rows about traffic: requests through the proxy, per client, and inside vLLM."""

from __future__ import annotations

from dashboards.panels import MODEL, WIN, Json, quantiles, target, timeseries


def requests() -> list[Json]:
    return [
        timeseries("Requests by code class", [target(
            f"sum by (model, code_class) (rate(supervisor_requests_total{{{MODEL}}}{WIN}))",
            "{{model}} {{code_class}}")], unit="reqps", stack=True, w=24),
        timeseries("Latency, cold vs warm", quantiles(
            "supervisor_request_duration_seconds", "le, cold_start", (0.5, 0.95, 0.99)),
            unit="s", description="Request to end of response; cold includes the hold."),
        timeseries("Time to first byte, cold vs warm", quantiles(
            "supervisor_request_ttfb_seconds", "le, cold_start", (0.5, 0.95, 0.99)), unit="s"),
        timeseries("Requests by the path that answered", [target(
            f"sum by (path) (rate(supervisor_proxy_requests_total{WIN}))", "{{path}}")],
            unit="reqps", stack=True, description="fast: forwarded by the listener itself; "
            "app: the aiohttp application (holds, errors, large bodies, other routes); "
            "websocket: passed through."),
        timeseries("Refused at the edge", [target(
            f"sum by (reason) (increase(supervisor_proxy_rejected_total{WIN}))", "{{reason}}")],
            bars=True, description="Malformed requests, heads past the limits and slow "
            "clients, answered 400/414/431/408/505 by the listener (http: in the config)."),
    ]


def clients() -> list[Json]:
    return [
        timeseries("Requests by client", [target(
            f"sum by (client) (rate(supervisor_client_requests_total{{{MODEL}}}{WIN}))",
            "{{client}}")], unit="reqps", stack=True, w=8),
        timeseries("Tokens by client", [
            target(f"sum by (client) (rate(supervisor_client_prompt_tokens_total{{{MODEL}}}"
                   f"{WIN}))", "{{client}} prompt"),
            target(f"sum by (client) (rate(supervisor_client_completion_tokens_total"
                   f"{{{MODEL}}}{WIN}))", "{{client}} completion"),
        ], stack=True, w=8, description="From the answers' usage (streams ask for it)."),
        timeseries("Seconds held and served by client", [
            target(f"sum by (client) (rate(supervisor_client_held_seconds_total{{{MODEL}}}"
                   f"{WIN}))", "{{client}} held"),
            target(f"sum by (client) (rate(supervisor_client_seconds_total{{{MODEL}}}{WIN}))",
                   "{{client}} served"),
        ], w=8, description="Seconds per second: held waiting for a model, and in all."),
    ]


def vllm() -> list[Json]:
    return [
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
