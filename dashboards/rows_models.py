"""The rows about models: their lifecycle, their replicas, and their cold starts."""

from __future__ import annotations

from dashboards.panels import (
    MODEL,
    WIN,
    Json,
    lifecycle_states,
    named_stat,
    quantiles,
    state_timeline,
    target,
    timeseries,
)


def models() -> list[Json]:
    return [
        lifecycle_states("Model state", "supervisor_model_state", "model", "{{model}}",
                         "Lifecycle state of each model over time."),
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
                   f"(increase(supervisor_model_profile_swaps_total{{{MODEL}}}{WIN}))",
                   "swap {{model}} {{from_profile}} -> {{to_profile}}"),
            target(f"sum by (model, reason) (increase(supervisor_refusals_total{{{MODEL}}}{WIN}))",
                   "refused {{model}} {{reason}}"),
        ], bars=True),
        timeseries("State transitions", [target(
            f"sum by (model, from_state, to_state) "
            f"(increase(supervisor_model_transitions_total{{{MODEL}}}{WIN}))",
            "{{model}} {{from_state}} -> {{to_state}}")], bars=True),
    ]


def replicas() -> list[Json]:
    """Models with `replicas:`: each replica's state, its load, and how requests split."""
    return [
        lifecycle_states("Replica state", "supervisor_replica_state", "model, replica",
                         "{{replica}}", "Lifecycle state of each replica: another "
                         "starts past target_concurrency, a surplus one stops after "
                         "idle_timeout."),
        timeseries("Replica in flight and held", [
            target(f"sum by (replica) (supervisor_replica_in_flight{{{MODEL}}})",
                   "{{replica}} in flight"),
            target(f"sum by (replica) (supervisor_replica_held{{{MODEL}}})", "{{replica}} held"),
        ]),
        timeseries("Requests per replica", [target(
            f"sum by (replica) (rate(supervisor_replica_requests_total{{{MODEL}}}{WIN}))",
            "{{replica}}")], unit="reqps", stack=True,
            description="Each request goes to the ready replica with the fewest outstanding."),
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


def cold_starts() -> list[Json]:
    return [
        timeseries("Cold starts", [target(
            f"sum by (model, outcome) "
            f"(increase(supervisor_model_cold_start_seconds_count{{{MODEL}}}{WIN}))",
            "{{model}} {{outcome}}")], bars=True, w=8),
        named_stat("Cold start duration (range)", quantiles(
            "supervisor_model_cold_start_seconds", "le, model", (0.5, 0.95), "$__range",
            f'{MODEL},outcome="ok"', "increase"), unit="s", w=8),
        named_stat("Hold time (range)", quantiles(
            "supervisor_request_hold_seconds", "le, model", (0.5, 0.95), "$__range",
            fn="increase"), unit="s", w=8),
        start_phases(),
    ]
