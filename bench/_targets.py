"""The targets proxy_bench.py checks (ratios within one run), and its sanity checks."""

from __future__ import annotations

from typing import Any

# Targets (ratios within one run).
T_THROUGHPUT_C = 64
T_RPS_VS_NGINX = 0.27
T_RPS_VS_DIRECT = 0.50
T_ADDED_P50_C1_MS = 0.25
T_ADDED_P50_C64_VS_NGINX = 5.0
T_ADDED_TTFB_C1_MS = 1.0
T_STREAM_ADDED_DELAY_P50_MS = 5.0
T_STREAM_P99_VS_DIRECT = 2.0
T_STREAM_MIN_RATE = 0.95  # of the nominal chunk rate, for the case to count as run
T_COLD_OVERHEAD_MS = 250.0
BUSY_PCT = 80.0  # a backend or the stream client above this (% of a core) may be the limit


def evaluate(load: list[dict], streams: list[dict], cold: dict | None,
             standin: list[dict]) -> list[dict]:
    """Each target: name, value, limit, met (None: not measured in this run)."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, limit: float, *, upper: bool, why: str = "") -> None:
        met = None if value is None else (value <= limit if upper else value >= limit)
        out.append({"target": name, "value": value, "limit": limit,
                    "op": "<=" if upper else ">=", "met": met, "note": why})

    by_c = {row["concurrency"]: row["paths"] for row in load}
    if (p := by_c.get(T_THROUGHPUT_C)) is not None:
        s = p["supervisor"]
        add(f"req/s c={T_THROUGHPUT_C} vs nginx", s["vs_nginx"], T_RPS_VS_NGINX, upper=False)
        nginx_added = p["nginx"]["added_p50_ms"]
        ratio = s["added_p50_ms"] / nginx_added if nginx_added > 0 else None
        add(f"added p50 c={T_THROUGHPUT_C} / nginx's added p50", ratio,
            T_ADDED_P50_C64_VS_NGINX, upper=True,
            why=f"supervisor {s['added_p50_ms']:+.3f} ms, nginx {nginx_added:+.3f} ms")
    on_standin = {row["concurrency"]: row["paths"] for row in standin}
    if (p := on_standin.get(T_THROUGHPUT_C)) is not None:
        add(f"req/s c={T_THROUGHPUT_C} vs direct, stand-in backend",
            p["supervisor"]["vs_direct"], T_RPS_VS_DIRECT, upper=False)
    if (p := by_c.get(1)) is not None:
        add("added p50 c=1 (ms)", p["supervisor"]["added_p50_ms"], T_ADDED_P50_C1_MS, upper=True)
    by_n = {row["streams"]: row for row in streams}
    if (row := by_n.get(1)) is not None:
        add("stream added TTFB p50, 1 stream (ms)",
            row["paths"]["supervisor"]["ttfb"]["added_p50_ms"], T_ADDED_TTFB_C1_MS, upper=True)
    many = [row for n, row in by_n.items() if n > 1]
    if many:
        row = many[0]
        s, d = row["paths"]["supervisor"], row["paths"]["direct"]
        nominal = s["nominal_chunks_per_s"] or 0
        slow = s["chunks_per_s"] < T_STREAM_MIN_RATE * nominal
        why = (f"only {s['chunks_per_s']:.0f} of {nominal:.0f} chunks/s arrived: missed"
               if slow else "")
        added = s["delay"]["added_p50_ms"]
        add(f"stream added delay p50, {row['streams']} streams (ms)",
            None if added is None else (float("inf") if slow else added),
            T_STREAM_ADDED_DELAY_P50_MS, upper=True, why=why)
        ratio = (s["delay"]["p99_ms"] / d["delay"]["p99_ms"]
                 if s["delay"]["p99_ms"] and d["delay"]["p99_ms"] else None)
        add(f"stream delay p99 / direct's, {row['streams']} streams",
            None if ratio is None else (float("inf") if slow else ratio),
            T_STREAM_P99_VS_DIRECT, upper=True,
            why=why or f"supervisor {s['delay']['p99_ms']:.3f} ms, direct "
                       f"{d['delay']['p99_ms']:.3f} ms")
    if cold is not None:
        add("cold-start overhead (ms)", cold["overhead_median_ms"], T_COLD_OVERHEAD_MS,
            upper=True)
    return out


def count_errors(load: list[dict], streams: list[dict]) -> int:
    return (sum(p["errors"] for row in load for p in row["paths"].values())
            + sum(p["errors"] for row in streams for p in row["paths"].values()))


def bottleneck_checks(load: list[dict], streams: list[dict]) -> list[str]:
    """The backends and the load generators must not be what limits a proxied path."""
    notes = []
    for row in load:
        for name in ("nginx", "supervisor"):
            cpu = row["paths"][name]["cpu_pct"]
            for role in ("nginx-backend", "loadgen"):
                if cpu.get(role, 0.0) > BUSY_PCT:
                    notes.append(f"load c={row['concurrency']} {name}: {role} at "
                                 f"{cpu[role]:.0f} %")
    for row in streams:
        for name, p in row["paths"].items():
            be, cl = p["cpu_pct"].get("stream-backend", 0.0), p["client_cpu_window_pct"]
            if be > BUSY_PCT or cl > BUSY_PCT:
                notes.append(f"{row['streams']} streams {name}: backend {be:.0f} %, "
                             f"client {cl:.0f} %")
        d = row["paths"]["direct"]
        if row["streams"] > 1 and d["nominal_chunks_per_s"] and (
                d["chunks_per_s"] < T_STREAM_MIN_RATE * d["nominal_chunks_per_s"]):
            notes.append(f"{row['streams']} streams direct: only {d['chunks_per_s']:.0f} of "
                         f"{d['nominal_chunks_per_s']:.0f} chunks/s")
    return notes
