"""Proxy benchmark: the supervisor against direct and against nginx, in one run.

Paths, all on 127.0.0.1, all in front of backends that are not the bottleneck:
  direct      the backend itself
  nginx       Debian's nginx as a reverse proxy (1 worker, keepalive upstream)
  supervisor  `python -m supervisor serve` (a separate process in its own process group)

Parts:
  load       POST /v1/chat/completions, closed loop (wrk, 1 thread), c = 1, 16, 64, 256, the
             three paths in ABC/CBA order over --rounds; the backend is nginx answering a fixed
             chat completion (`return 200`). p50/p99/req/s, ratios to direct and to nginx.
             Then c = 64 on the stand-in backend (the tests' Python OpenAI server), where a
             backend costs what a model server's HTTP side costs: the ratio to direct there.
  streaming  SSE streams from bench/_stream.py (60 chunks each, each chunk stamped with
             CLOCK_MONOTONIC when written): 1 stream (chunks 1 ms apart), then 500 concurrent
             streams at 6,000 chunks/s in all. Time to first byte, and the delay each chunk
             gains on its way (client arrival - backend stamp); nginx with
             `proxy_buffering off`.
  cold       the backend's own time to healthy vs the first byte through the supervisor
             from a stopped model (the stand-in, 2 s "loading").

Only 2xx answers count as throughput. The run exits 1 when any run had errors or a target
was missed (the table marks each target met/missed), 2 when it could not run at all.

    .venv/bin/python bench/proxy_bench.py [--duration 5] [--stream-duration 10]

Needs Docker + Compose, the image from scripts/setup.sh, nginx and wrk (installed with
apt-get when missing and running as root). Prints tables; writes bench/results/proxy.json.
Only its own processes (by process group) and its own Compose project (msbench-<random>)
are stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from _load import PATH, LoadGen, LoadRun, loadgen_child
from _nginx import ensure_tools
from _profile import print_summary, profile_supervisor
from _report import print_cold, print_load, print_streams, print_targets
from _stack import (
    FAST_MODEL,
    SLOW_MODEL,
    SLOW_PORT,
    STANDIN_MODEL,
    STREAM_MODEL,
    Baseline,
    Stack,
    get,
    post,
)
from _stream import client_command
from _targets import BUSY_PCT, T_THROUGHPUT_C, bottleneck_checks, count_errors, evaluate

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_JSON = HERE / "results" / "proxy.json"
BODY = json.dumps(
    {"model": FAST_MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8},
    separators=(",", ":"),
)
PATHS = ("direct", "nginx", "supervisor")


# ---- load ---------------------------------------------------------------------------------


def _summary(runs: list[LoadRun]) -> dict[str, Any]:
    med = statistics.median
    return {
        "p50_ms": med(r.p50_ms for r in runs),
        "p90_ms": med(r.p90_ms for r in runs),
        "p99_ms": med(r.p99_ms for r in runs),
        "max_ms": max(r.max_ms for r in runs),
        "rps": sum(r.requests for r in runs) / sum(r.duration_s for r in runs),
        "requests": sum(r.requests for r in runs),
        "errors": sum(r.errors for r in runs),
        "listen_overflows": sum(r.listen_overflows or 0 for r in runs),
        "cpu_pct": {k: round(med(r.cpu_pct.get(k, 0.0) for r in runs), 1)
                    for k in runs[0].cpu_pct},
        "rounds": [asdict(r) for r in runs],
    }


def measure_load(stack: Stack, gen: LoadGen, levels: list[int], rounds: int,
                 bases: dict[str, str], backend: str, baseline: Baseline | None = None
                 ) -> list[dict]:
    urls = {name: url + PATH for name, url in bases.items()}
    names = PATHS
    if baseline is not None:
        urls["baseline"], names = baseline.url + PATH, (*PATHS, "baseline")
    rows = []
    for c in levels:
        runs: dict[str, list[LoadRun]] = {name: [] for name in names}
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                groups = stack.cpu_groups(backend)
                if name == "baseline" and baseline is not None and baseline.proc is not None:
                    groups["supervisor"] = [baseline.proc.pid]
                run = gen.run(urls[name], c, groups)
                runs[name].append(run)
                print(
                    f"  c={c:<3} round {r + 1}/{rounds} {name:<10} p50 {run.p50_ms:7.3f} ms  "
                    f"p99 {run.p99_ms:8.3f} ms  {run.rps:7.0f} req/s  errors {run.errors}  "
                    f"overflows {run.listen_overflows}  cpu% {run.cpu_pct}"
                    + (f"  ({run.note})" if run.note else ""),
                    flush=True,
                )
        paths = {name: _summary(runs[name]) for name in names}
        for s in paths.values():
            s["vs_direct"] = s["rps"] / paths["direct"]["rps"] if paths["direct"]["rps"] else 0
            s["vs_nginx"] = s["rps"] / paths["nginx"]["rps"] if paths["nginx"]["rps"] else 0
            s["added_p50_ms"] = s["p50_ms"] - paths["direct"]["p50_ms"]
            s["added_p99_ms"] = s["p99_ms"] - paths["direct"]["p99_ms"]
        rows.append({"concurrency": c, "paths": paths})
    return rows


# ---- streaming ----------------------------------------------------------------------------


def stream_spec(url: str, streams: int, interval_ms: float, duration: float,
                chunks: int) -> dict[str, Any]:
    return {"port": int(url.rsplit(":", 1)[1]), "path": PATH, "model": STREAM_MODEL,
            "concurrency": streams, "chunks": chunks, "interval_ms": interval_ms,
            "duration": duration, "settle": 0.5}


def measure_streams(stack: Stack, cases: list[tuple[int, float]], duration: float,
                    chunks: int) -> list[dict]:
    urls = stack.stream_urls()
    rows = []
    for streams, interval_ms in cases:
        paths = {}
        for name in PATHS:
            spec = stream_spec(urls[name], streams, interval_ms, duration, chunks)
            with stack.cpu_watch("stream-backend") as cpu:
                done = subprocess.run(
                    client_command(spec), capture_output=True, text=True, check=True,
                    timeout=chunks * interval_ms / 1e3 + duration + 60,
                )  # fmt: skip
            res = json.loads(done.stdout.strip().splitlines()[-1])
            res["cpu_pct"] = cpu.pct
            paths[name] = res
            print(
                f"  streams={streams:<3} {name:<10} ttfb p50 {res['ttfb']['p50_ms'] or 0:7.3f} ms"
                f"  delay p50 {res['delay']['p50_ms'] or 0:7.3f} p99 "
                f"{res['delay']['p99_ms'] or 0:7.3f} ms  {res['chunks_per_s']:6.0f} chunks/s  "
                f"errors {res['errors']} {res['error_kinds'] or ''}  cpu% {res['cpu_pct']}",
                flush=True,
            )
        d = paths["direct"]
        for res in paths.values():
            for part in ("ttfb", "delay"):
                for p in ("p50_ms", "p99_ms"):
                    mine, base = res[part][p], d[part][p]
                    res[part][f"added_{p}"] = (
                        mine - base if mine is not None and base is not None else None
                    )
        rows.append({"streams": streams, "interval_ms": interval_ms, "paths": paths})
    return rows


# ---- cold start ---------------------------------------------------------------------------


def _backend_time_to_healthy(stack: Stack) -> float:
    """Seconds from just before `docker compose up` to the first /health 200 (5 ms polls)."""
    began = time.perf_counter()
    stack.compose("up", "-d", SLOW_MODEL)
    deadline = began + 60
    while time.perf_counter() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if get(f"http://127.0.0.1:{SLOW_PORT}/health", timeout=1)[0] == 200:
                return time.perf_counter() - began
        time.sleep(0.005)
    raise RuntimeError(f"{SLOW_MODEL} was not healthy within 60 s")


def measure_cold_start(stack: Stack, runs: int) -> dict[str, Any]:
    stack.wait_state(SLOW_MODEL, "stopped")
    # Unrecorded priming pass: creates the container so every measured start is alike.
    _backend_time_to_healthy(stack)
    stack.compose("stop", "-t", "1", SLOW_MODEL)
    records = []
    for k in range(runs):
        backend = _backend_time_to_healthy(stack)
        stack.compose("stop", "-t", "1", SLOW_MODEL)
        stack.wait_state(SLOW_MODEL, "stopped")
        status, ttfb, headers = post(stack.port, BODY.replace(FAST_MODEL, SLOW_MODEL))
        if status != 200 or headers.get("X-Supervisor-Cold-Start") != "true":
            raise RuntimeError(f"cold request answered {status} with headers {headers}")
        hold = float(headers.get("X-Supervisor-Hold-Seconds", "nan"))
        records.append(
            {"backend_s": backend, "supervisor_ttfb_s": ttfb, "hold_s": hold,
             "overhead_ms": (ttfb - backend) * 1e3}
        )  # fmt: skip
        print(
            f"  cold {k + 1}/{runs}: backend healthy {backend:.3f} s, through supervisor "
            f"{ttfb:.3f} s, overhead {(ttfb - backend) * 1e3:+.0f} ms",
            flush=True,
        )
        stack.wait_state(SLOW_MODEL, "stopped")  # idle_timeout 1 s, then stopped
    return {
        "runs": records,
        "backend_median_s": statistics.median(r["backend_s"] for r in records),
        "supervisor_median_s": statistics.median(r["supervisor_ttfb_s"] for r in records),
        "overhead_median_ms": statistics.median(r["overhead_ms"] for r in records),
    }


# ---- main ---------------------------------------------------------------------------------


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout


def _git_state() -> dict[str, Any]:
    """The commit, and the supervisor's files that differ from it (what was measured)."""
    changed = _git("status", "--porcelain", "--", "supervisor").splitlines()
    return {"commit": _git("rev-parse", "HEAD").strip() or None,
            "supervisor_changes": [line[3:] for line in changed]}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--duration", type=float, default=5.0, help="seconds per measured load run")
    add("--warmup", type=float, default=1.0, help="seconds before each load run")
    add("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    add("--rounds", type=int, default=2, help="runs per path and level (ABC, CBA, ...)")
    add("--standin-concurrency", type=int, nargs="*", default=[T_THROUGHPUT_C],
        help="levels of the load on the stand-in backend (none: skip it)")
    add("--stream-duration", type=float, default=10.0,
        help="measured seconds per streaming run (after a ramp of one stream's length)")
    add("--streams", type=int, default=500, help="concurrent streams in the many-stream case")
    add("--stream-rate", type=float, default=6000.0, help="chunks/s in all, many-stream case")
    add("--stream-chunks", type=int, default=60, help="chunks per stream")
    add("--single-interval-ms", type=float, default=1.0,
        help="chunk spacing of the 1-stream case")
    add("--skip-streams", action="store_true")
    add("--cold-runs", type=int, default=3, help="0 skips the cold-start part")
    add("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    add("--no-install", action="store_true", help="never apt-get install nginx/wrk")
    add("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    add("--profile", type=Path, metavar="DIR",
        help="afterwards, sample the supervisor with py-spy (c=64 load, many streams) into DIR")
    add("--profile-native", action="store_true", help="py-spy --native: C frames too")
    add("--baseline", metavar="REV",
        help="also load the supervisor of git revision REV (fixed-answer backend only), "
             "as the path 'baseline': what a change costs, from one run")
    add("--loadgen-child", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.loadgen_child:
        return loadgen_child(args.loadgen_child)
    problem = ensure_tools(allow_install=not args.no_install)
    if problem:
        print(f"proxy_bench: {problem}", file=sys.stderr)
        return 2
    kind = args.loadgen
    if kind == "auto":
        kind = "wrk" if shutil.which("wrk") else "python"
    elif kind == "wrk" and not shutil.which("wrk"):
        print("proxy_bench: wrk is not installed", file=sys.stderr)
        return 2
    cases = [(1, args.single_interval_ms),
             (args.streams, args.streams / args.stream_rate * 1e3)]

    started = dt.datetime.now(dt.UTC)
    git_state = _git_state()  # the code the supervisor process is about to load
    load_before = os.getloadavg()
    streams: list[dict] = []
    standin: list[dict] = []
    cold = profiles = None
    baseline: Baseline | None = None
    with tempfile.TemporaryDirectory(prefix="msbench-") as tmp:
        workdir = Path(tmp)
        gen = LoadGen(kind, workdir, args.warmup, args.duration, BODY, Path(__file__))
        header = f"load generator: {gen.describe()}"
        stack = Stack(workdir, BODY)
        print(f"compose project {stack.project}; {header}", flush=True)
        try:
            stack.start()
            print(stack.describe(), flush=True)
            if args.baseline:
                baseline = Baseline(stack, args.baseline)
                baseline.start()
            print("load (POST /v1/chat/completions, fixed answer from nginx):", flush=True)
            load = measure_load(stack, gen, args.concurrency, args.rounds, stack.fixed_urls(),
                                "nginx-backend", baseline)
            if args.standin_concurrency:
                print("load on the stand-in backend (a Python OpenAI server):", flush=True)
                gen_standin = LoadGen(kind, workdir, args.warmup, args.duration,
                                      BODY.replace(FAST_MODEL, STANDIN_MODEL), Path(__file__))
                standin = measure_load(stack, gen_standin, args.standin_concurrency,
                                       args.rounds, stack.standin_urls(), "standin")
            if not args.skip_streams:
                print("streaming (SSE):", flush=True)
                streams = measure_streams(stack, cases, args.stream_duration, args.stream_chunks)
            if args.cold_runs > 0:
                print("cold start:", flush=True)
                cold = measure_cold_start(stack, args.cold_runs)
            if args.profile:
                print("profiling the supervisor with py-spy (not part of the figures):")
                spec = stream_spec(stack.url, *cases[-1], args.stream_duration,
                                   args.stream_chunks)
                profiles = profile_supervisor(stack, gen, args.profile, spec, T_THROUGHPUT_C,
                                              native=args.profile_native)
        except BaseException:
            print(f"supervisor log tail:\n{stack.log_tail()}", file=sys.stderr)
            raise
        finally:
            if baseline is not None:
                baseline.stop()
            stack.teardown()

    targets = evaluate(load, streams, cold, standin)
    errors = count_errors(load + standin, streams)
    print()
    print(header)
    print_load(load)
    print_load(standin, "the stand-in backend (compose/standin/standin.py, aiohttp)")
    print_streams(streams)
    print_cold(cold)
    print_targets(targets, errors)
    checks = bottleneck_checks(load, streams)
    print("backends and load generators below {:.0f} % of a core on every proxied run: {}".format(
        BUSY_PCT, "yes" if not checks else "NO: " + "; ".join(checks)))
    for name, summary in (profiles or {}).items():
        print_summary(name, summary)
    ok = errors == 0 and all(t["met"] for t in targets)
    result = {
        "benchmark": "proxy",
        "started_at": started.isoformat(timespec="seconds"),
        "git": git_state,
        "ok": ok,
        "errors": errors,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {
            "argv": sys.argv[1:] if argv is None else argv,
            "load_generator": header,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "order": "ABC in odd rounds, CBA in even rounds (direct, nginx, supervisor"
                     + (", baseline)" if baseline else ")"),
            "baseline": baseline.rev if baseline else None,
            "aggregation": "median of per-round percentiles; req/s pooled over rounds",
            "request": {"method": "POST", "path": PATH, "body": json.loads(BODY)},
            "stack": stack.settings(),
            "stream_cases": [{"streams": n, "interval_ms": i, "chunks": args.stream_chunks,
                              "window_s": args.stream_duration} for n, i in cases],
        },
        "targets": targets,
        "bottleneck_warnings": checks,
        "load": load,
        "load_standin": standin,
        "streaming": streams,
        "cold_start": cold,
        "profile": profiles,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, subprocess.SubprocessError) as exc:
        print(f"proxy_bench: could not run: {exc}", file=sys.stderr)
        sys.exit(2)
