"""The rows about GPUs: memory per model and per GPU, placement, and what idling saved."""

from __future__ import annotations

from dashboards.panels import (
    MODEL,
    WIN,
    Json,
    panel,
    quantiles,
    target,
    timeseries,
    unstacked,
)

GPU = 'gpu=~"$gpu"'


def vram_per_gpu() -> Json:
    p = timeseries("VRAM on GPU $gpu", [
        target(f"sum by (model, profile) (supervisor_model_gpu_memory_bytes{{{GPU},{MODEL}}})",
               "{{model}} ({{profile}})"),
        target(f"sum(supervisor_gpu_memory_used_bytes{{{GPU}}})"
               f" - (sum(supervisor_model_gpu_memory_bytes{{{GPU}}}) or vector(0))",
               "not a model"),
        target(f"sum(supervisor_gpu_memory_total_bytes{{{GPU}}})", "total"),
    ], stack=True, unit="bytes", repeat="gpu", repeatDirection="h", maxPerRow=2,
        description="Memory of each model's container processes, stacked; needs pid: host "
                    "when the supervisor runs in a container.")
    p["fieldConfig"]["overrides"] = [{
        "matcher": {"id": "byName", "options": "total"},
        "properties": unstacked({"id": "color", "value": {"mode": "fixed", "fixedColor": "red"}}),
    }]
    return p


def placement() -> list[Json]:
    """GPU placement (a `gpus:` key, or NVML): what each model reserves, its evictions and
    how long starts waited for memory."""
    reserved = timeseries("GPU memory reserved by placement", [
        target(f"sum by (gpu, model) (supervisor_gpu_reserved_bytes{{{GPU},{MODEL}}})",
               "GPU {{gpu}}: {{model}}"),
        target(f"max by (gpu) (supervisor_gpu_memory_total_bytes{{{GPU}}})",
               "GPU {{gpu}} total (NVML)"),
    ], stack=True, unit="bytes",
        description="What the budget counts as each model's (its need, or its asleep size) "
                    "per GPU: a start waits, or evicts idle models, until its need fits "
                    "beside these. The inventory is the config's `gpus:` key, else NVML.")
    reserved["fieldConfig"]["overrides"] = [{
        "matcher": {"id": "byRegexp", "options": ".* total \\(NVML\\)"},
        "properties": unstacked(),
    }]
    return [
        reserved,
        timeseries("Evictions", [target(
            f"sum by (model, reason) (increase(supervisor_evictions_total{{{MODEL}}}{WIN}))",
            "{{model}} ({{reason}})")], bars=True, w=6,
            description="Idle models stopped (or put to sleep) to make room for another "
                        "model's start; the response that waited carries "
                        "X-Supervisor-Evicted."),
        timeseries("Wait for GPU memory", quantiles(
            "supervisor_gpu_wait_seconds", "le, model", (0.5, 0.95)), unit="s", w=6,
            description="Time a start or wake waited for GPU memory (evictions included)."),
    ]


def gpu() -> list[Json]:
    return [
        vram_per_gpu(),
        *placement(),
        timeseries("GPU utilization", [target(
            f"max by (gpu) (supervisor_gpu_utilization_ratio{{{GPU}}})", "GPU {{gpu}}")],
            unit="percentunit"),
        timeseries("GPU power", [target(
            f"max by (gpu) (supervisor_gpu_power_watts{{{GPU}}})", "GPU {{gpu}}")],
            unit="watt"),
        panel("stat", "GPU metrics available", [target("min(supervisor_gpu_available)")],
              w=6, h=4, description="0: no NVML library or no GPU; the supervisor logs why.",
              options={"reduceOptions": {"calcs": ["lastNotNull"]}}),
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
