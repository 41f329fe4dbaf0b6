"""`GET /admin/gpus`: each GPU's memory and the models' share of it, for the status
page's strips. Read from the metrics registry (the GPU sampler's last reading, as
/metrics serves it), so the page and the dashboard never disagree; nothing touches
NVML here."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

DEVICE_SERIES = {
    "supervisor_gpu_memory_used_bytes": "memory_used_bytes",
    "supervisor_gpu_memory_total_bytes": "memory_total_bytes",
    "supervisor_gpu_utilization_ratio": "utilization_ratio",
    "supervisor_gpu_power_watts": "power_watts",
}
MODEL_SERIES = "supervisor_model_gpu_memory_bytes"


def gpu_view(registry: CollectorRegistry) -> dict[str, Any]:
    """{"available": bool, "gpus": [{index, uuid, memory_used_bytes, memory_total_bytes,
    utilization_ratio, power_watts, models: [{model, profile, bytes}]}]}; GPUs by index."""
    available = False
    gpus: dict[int, dict[str, Any]] = {}
    models: list[tuple[int, dict[str, Any]]] = []
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "supervisor_gpu_available":
                available = sample.value == 1.0
            elif sample.name in DEVICE_SERIES:
                index = int(sample.labels["gpu"])
                gpu = gpus.setdefault(index, {
                    "index": index, "uuid": sample.labels["uuid"], "memory_used_bytes": 0,
                    "memory_total_bytes": 0, "utilization_ratio": None, "power_watts": None,
                    "models": []})
                value: float | int = sample.value
                if sample.name.endswith("_bytes"):
                    value = int(value)
                gpu[DEVICE_SERIES[sample.name]] = value
            elif sample.name == MODEL_SERIES:
                models.append((int(sample.labels["gpu"]), {
                    "model": sample.labels["model"], "profile": sample.labels["profile"],
                    "bytes": int(sample.value)}))
    for index, share in models:
        if index in gpus:
            gpus[index]["models"].append(share)
    for gpu in gpus.values():
        gpu["models"].sort(key=lambda m: (-m["bytes"], m["model"]))
    return {"available": available and bool(gpus), "gpus": [gpus[i] for i in sorted(gpus)]}
