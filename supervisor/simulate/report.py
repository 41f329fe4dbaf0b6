"""What a replay comes to, per model: requests, the starts and wakes they waited on, the
seconds they were held, and GPU-seconds (memory reserved: starting, ready, draining,
sleeping, waking, stopping; asleep counted apart). As JSON and as a table."""

from __future__ import annotations

from typing import Any

from supervisor.rules.table import State
from supervisor.simulate.engine import ModelRecord

GPU_STATES = (State.STARTING, State.READY, State.DRAINING, State.SLEEPING, State.WAKING,
              State.STOPPING)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(record: ModelRecord) -> dict[str, Any]:
    seconds = record.seconds
    return {
        "requests": record.requests,
        "cold_starts": record.cold_starts,
        "wakes": record.wakes,
        "held_seconds": round(sum(record.held), 3),
        "held_p50": round(percentile(record.held, 0.5), 3),
        "held_p99": round(percentile(record.held, 0.99), 3),
        "held_requests": len(record.held),
        "gpu_seconds": round(sum(seconds.get(s.value, 0.0) for s in GPU_STATES), 3),
        "asleep_seconds": round(seconds.get(State.ASLEEP.value, 0.0), 3),
        "starts": record.starts,
        "prewarms": record.prewarms,
        "failed": record.failed,
    }


def as_json(records: dict[str, ModelRecord]) -> dict[str, Any]:
    return {"models": {name: summary(r) for name, r in sorted(records.items())}}


COLUMNS = (("model", "model"), ("requests", "requests"), ("cold", "cold_starts"),
           ("wakes", "wakes"), ("held s", "held_seconds"), ("p50", "held_p50"),
           ("p99", "held_p99"), ("GPU h", "gpu_hours"), ("asleep h", "asleep_hours"),
           ("pre-warms", "prewarms"))


def table(result: dict[str, Any], title: str = "") -> str:
    rows = []
    for name, m in result["models"].items():
        row = {**m, "model": name, "gpu_hours": m["gpu_seconds"] / 3600,
               "asleep_hours": m["asleep_seconds"] / 3600}
        rows.append([_cell(row[key]) for _, key in COLUMNS])
    head = [label for label, _ in COLUMNS]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=False)]
    lines = [title] if title else []
    for cells in (head, *rows):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(cells, widths, strict=True))))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)
