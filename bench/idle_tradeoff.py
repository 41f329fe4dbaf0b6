"""What idling saves and costs: four generated traces replayed by the simulator (the real
handles, idle timers and adaptive policy on a virtual clock), a 60 s cold start and a 3 s
stop, the fixed `idle_timeout` sweep beside `idle_policy: adaptive` (bounded by 60 min).

Prints a table (trace, policy, cold starts, seconds requests waited, GPU-hours held) and
writes bench/results/idle_tradeoff.json. Deterministic: the traces are seeded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor.config import Config
from supervisor.simulate import generate
from supervisor.simulate.engine import Setup, replay
from supervisor.simulate.fake_runtime import Durations
from supervisor.simulate.report import as_json
from supervisor.simulate.trace import MONDAY, Request, Trace

REPO = Path(__file__).resolve().parents[1]
SWEEP = (1, 2, 5, 10, 20, 30, 60)  # minutes
BOUND = 60  # minutes: adaptive's idle_timeout
COLD = {"m": Durations(start=60.0, stop=3.0, wake=2.0)}
TRACES: dict[str, tuple[str, Callable[[], list[Request]]]] = {
    "hourly jobs": ("a job every 60 min (± 2 min), a request every ~10 s for 5 min; a week",
                    lambda: generate.hourly_jobs("m", 7)),
    "rare": ("Poisson, one request every 3 h on average; four weeks",
             lambda: generate.poisson("m", 28, 3 * 3600.0)),
    "office hours": ("weekdays 9:00-18:00, Poisson with a 5 min mean gap; two weeks",
                     lambda: generate.office_hours("m", 2)),
    "pareto": ("heavy-tailed gaps: Pareto, minimum 30 s, shape 1.2",
               lambda: generate.pareto("m", 2000)),
}


def config() -> Config:
    return Config.model_validate({
        "compose": {"file": "compose.yml", "project": "idle-tradeoff"},
        "models": {"m": {"service": "m", "upstream": "http://127.0.0.1:9", "idle_timeout": "10m"}}})


def simulate(requests: list[Request], policy: str, minutes: int) -> dict[str, Any]:
    setup = Setup(config(), COLD, policy, (("idle_timeout", minutes * 60.0),))
    m = as_json(replay(Trace(requests, MONDAY), setup))["models"]["m"]
    return {"policy": policy if policy == "adaptive" else f"fixed {minutes} min",
            "requests": m["requests"], "cold_starts": m["cold_starts"],
            "waited_seconds": m["held_seconds"], "gpu_hours": round(m["gpu_seconds"] / 3600, 2),
            "prewarms": m["prewarms"]}


def dominating(adaptive: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    """The fixed values at least as good as adaptive on both cold starts and GPU-hours."""
    return [r["policy"] for r in runs if r["policy"] != "adaptive"
            and r["cold_starts"] <= adaptive["cold_starts"]
            and r["gpu_hours"] <= adaptive["gpu_hours"]]


def run_trace(requests: list[Request]) -> list[dict[str, Any]]:
    runs = [simulate(requests, "fixed", minutes) for minutes in SWEEP]
    return [*runs, simulate(requests, "adaptive", BOUND)]


def print_table(name: str, about: str, runs: list[dict[str, Any]]) -> None:
    print(f"\n{name}: {about} ({runs[0]['requests']} requests)")
    print(f"{'policy':<14} {'cold starts':>11} {'waited s':>9} {'GPU-hours':>9}")
    for r in runs:
        print(f"{r['policy']:<14} {r['cold_starts']:>11} {r['waited_seconds']:>9.0f} "
              f"{r['gpu_hours']:>9.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path,
                        default=REPO / "bench" / "results" / "idle_tradeoff.json")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    out: dict[str, Any] = {"cold_start_seconds": COLD["m"].start, "sweep_minutes": SWEEP,
                           "adaptive_bound_minutes": BOUND, "traces": {}}
    for name, (about, make) in TRACES.items():
        runs = run_trace(make())
        print_table(name, about, runs)
        beaten_by = dominating(runs[-1], runs)
        print(f"adaptive dominated by: {', '.join(beaten_by) or 'no fixed value'}")
        out["traces"][name] = {"about": about, "runs": runs, "adaptive_dominated_by": beaten_by}
    print(f"\n{time.perf_counter() - began:.0f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
