"""The tables proxy_bench.py prints."""

from __future__ import annotations

from typing import Any


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _cpu(cpu: dict[str, float]) -> str:
    short = {"supervisor": "sup", "nginx-proxy": "ngx", "nginx-backend": "be",
             "stream-backend": "be", "standin": "be", "loadgen": "wrk"}
    return " ".join(f"{short.get(k, k)} {v:.0f}" for k, v in cpu.items()
                    if v >= 0.5 or k not in ("steal", "other"))


def print_load(rows: list[dict[str, Any]], backend: str = "nginx, a fixed answer") -> None:
    if not rows:
        return
    print(f"\nload: POST /v1/chat/completions to {backend} (latencies in ms)")
    print("CPU in % of one core: sup = supervisor, ngx = nginx proxy, be = backend, wrk = load "
          "generator, irq = interrupts\n  (loopback TCP softirqs), steal = hypervisor, other = "
          "every other process (a disturbed run shows here)")
    cols = (f"{'c':>4} | {'path':<10} | {'p50':>7} | {'p99':>7} | {'req/s':>7} | "
            f"{'vs direct':>9} | {'vs nginx':>8} | {'added p50':>9} | {'errors':>6} | CPU %")
    print(cols)
    print("-" * (len(cols) + 30))
    for row in rows:
        for name, p in row["paths"].items():
            print(
                f"{row['concurrency']:>4} | {name:<10} | {p['p50_ms']:>7.3f} | "
                f"{p['p99_ms']:>7.2f} | {p['rps']:>7.0f} | {p['vs_direct']:>8.2f}x | "
                f"{p['vs_nginx']:>7.2f}x | {p['added_p50_ms']:>+9.3f} | {p['errors']:>6} | "
                f"{_cpu(p['cpu_pct'])}"
            )


def print_streams(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    print("\nstreaming: SSE, 'delay' = chunk arrival at the client - backend's write stamp (ms)")
    cols = (f"{'streams':>7} | {'path':<10} | {'TTFB p50':>8} | {'p99':>7} | {'added':>7} | "
            f"{'delay p50':>9} | {'p99':>7} | {'added p50':>9} | {'chunks/s':>8} | "
            f"{'errors':>6} | CPU %")
    print(cols)
    print("-" * (len(cols) + 40))
    for row in rows:
        for name, p in row["paths"].items():
            t, d = p["ttfb"], p["delay"]
            cpu = {**p["cpu_pct"], "client": p["client_cpu_window_pct"]}
            cpu.pop("loadgen", None)
            print(
                f"{row['streams']:>7} | {name:<10} | {_f(t['p50_ms'], '8.3f')} | "
                f"{_f(t['p99_ms'], '7.3f')} | {_f(t['added_p50_ms'], '+7.3f')} | "
                f"{_f(d['p50_ms'], '9.3f')} | {_f(d['p99_ms'], '7.3f')} | "
                f"{_f(d['added_p50_ms'], '+9.3f')} | {p['chunks_per_s']:>8.0f} | "
                f"{p['errors']:>6} | {_cpu(cpu)}"
            )
        first = next(iter(row["paths"].values()))
        print(f"        ({row['streams']} stream(s), {first['chunks_per_stream']} chunks each, "
              f"{row['interval_ms']:.3g} ms apart: nominal "
              f"{_f(first['nominal_chunks_per_s'], '.0f')} chunks/s; window "
              f"{first['window_s']:g} s after {first['ramp_s']:g} s ramp)")


def print_cold(cold: dict[str, Any] | None) -> None:
    if cold is None:
        return
    print(
        f"\ncold start: backend healthy {cold['backend_median_s']:.3f} s, first byte through "
        f"supervisor {cold['supervisor_median_s']:.3f} s, overhead "
        f"{cold['overhead_median_ms']:+.0f} ms (median of {len(cold['runs'])})"
    )


def print_targets(targets: list[dict[str, Any]], errors: int) -> None:
    print("\ntargets:")
    for t in targets:
        mark = {True: "met   ", False: "MISSED", None: "n/a   "}[t["met"]]
        value = _f(t["value"], ".3f")
        note = f"  ({t['note']})" if t["note"] else ""
        print(f"  [{mark}] {t['target']:<44} {value:>8} {t['op']} {t['limit']:g}{note}")
    print(f"  [{'met   ' if errors == 0 else 'MISSED'}] {'no errors (non-2xx, socket, stream)':<44}"
          f" {errors:>8}")
    missed = [t["target"] for t in targets if not t["met"]]
    verdict = "all targets met" if not missed and errors == 0 else (
        f"{len(missed)} target(s) missed" + (f", {errors} error(s)" if errors else ""))
    print(f"=> {verdict}")
