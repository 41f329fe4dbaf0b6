"""Replica benchmark: seed 003's shape, one replica against two, through the supervisor.

Parts (all on 127.0.0.1):
  ttfb      stand-ins whose time to first byte grows with their own load like a batching
            server (357 ms alone + 11.6 ms per completion in progress: 1.83 s at 128, as
            seed 003 measured VoxCPM), closed loop at 1, 32 and 128 concurrent clients:
            direct to one server, a model with 1 replica, a model with 2 replicas (both
            kept up by min_replicas). TTFB p50/p99 and how the requests split.
  overhead  stand-ins without any delay, c = 1 and 32: what the supervisor adds with 2
            replicas against 1 (and against a model without replicas, which the proxy's
            fast path may serve), over the server alone.
  in-process  the cost of routing itself: lease + release on a ready model, on a set of 1
            replica and of 2 (fake runtime, no I/O), in microseconds.

    .venv/bin/python bench/replica_bench.py [--duration 6] [--warmup 1]

Needs Docker + Compose and the image from scripts/setup.sh. Prints tables; writes
bench/results/replica.json. Only its own supervisor process (by process group) and its
own Compose project (msbench-replicas-<random>) are stopped and removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from _replica_micro import lease_costs
from _stack import free_port, get, stop_group

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
COMPOSE_FILE = HERE / "compose-replicas.yml"
DEFAULT_JSON = HERE / "results" / "replica.json"
PORTS = {"vox1-a": 19361, "vox2-a": 19362, "vox2-b": 19363, "fast-plain": 19364,
         "fast1-a": 19365, "fast2-a": 19366, "fast2-b": 19367}


def _replicas(*services: str, **extra: Any) -> dict[str, Any]:
    return {"replicas": [{"service": s, "upstream": f"http://127.0.0.1:{PORTS[s]}"}
                         for s in services],
            "min_replicas": len(services), "target_concurrency": 1000, **extra}


MODELS: dict[str, dict[str, Any]] = {
    "vox-1": _replicas("vox1-a"), "vox-2": _replicas("vox2-a", "vox2-b"),
    "fast-plain": {"service": "fast-plain", "upstream": "http://127.0.0.1:19364"},
    "fast-1": _replicas("fast1-a"), "fast-2": _replicas("fast2-a", "fast2-b"),
}
SERVERS = {"vox-1": ["vox1-a"], "vox-2": ["vox2-a", "vox2-b"], "fast-plain": ["fast-plain"],
           "fast-1": ["fast1-a"], "fast-2": ["fast2-a", "fast2-b"]}


class Supervisor:
    def __init__(self, workdir: Path) -> None:
        self.project = f"msbench-replicas-{os.urandom(4).hex()}"
        self.port, self.admin = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "supervisor.log"
        self.config = workdir / "supervisor.yaml"
        self.proc: Any = None

    def start(self) -> None:
        import subprocess

        common = {"idle_timeout": "1h", "startup_timeout": "60s", "stop_timeout": "2s"}
        self.config.write_text(json.dumps({
            "listen": f"127.0.0.1:{self.port}", "admin": {"listen": f"127.0.0.1:{self.admin}"},
            "compose": {"file": str(COMPOSE_FILE), "project": self.project},
            "models": {n: {**common, **m} for n, m in MODELS.items()}, "log_level": "INFO"}))
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor", "serve", "--config", str(self.config)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        replicas = sum(len(m.get("replicas", ())) for m in MODELS.values())
        self.wait(lambda: self._ready_replicas() == replicas, 90, "every replica up")

    def _ready_replicas(self) -> int:
        try:
            status, body = get(f"http://127.0.0.1:{self.admin}/admin/models")
        except OSError:
            return -1
        if status != 200:
            return -1
        return sum(r["state"] == "ready" for m in json.loads(body)["models"]
                   for r in m["replicas"] or [])

    def wait(self, done: Any, within: float, what: str) -> None:
        deadline = time.monotonic() + within
        while not done():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{what}: not within {within} s\n{tail}")
            time.sleep(0.1)

    def stop(self) -> None:
        import subprocess

        stop_group(self.proc)
        subprocess.run(["docker", "compose", "-f", str(COMPOSE_FILE), "-p", self.project,
                        "--profile", "*", "down", "-t", "1"], capture_output=True, timeout=120)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


async def closed_loop(url: str, model: str, clients: int, warmup: float,
                      duration: float) -> dict[str, Any]:
    """`clients` loops of POST /v1/chat/completions; TTFB = until the response head."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    ttfbs: list[float] = []
    errors = 0
    start = time.monotonic()
    measure_from, end = start + warmup, start + warmup + duration

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while (began := time.monotonic()) < end:
            async with session.post(url + "/v1/chat/completions", json=body) as r:
                ttfb = time.monotonic() - began
                await r.read()
            if began >= measure_from:
                if r.status == 200:
                    ttfbs.append(ttfb)
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session) for _ in range(clients)))
    return {"requests": len(ttfbs), "errors": errors, "rps": len(ttfbs) / duration,
            "p50_ms": _pct(ttfbs, 0.5), "p99_ms": _pct(ttfbs, 0.99)}


def _served(server: str) -> int:
    status, body = get(f"http://127.0.0.1:{PORTS[server]}/standin/stats")
    return int(json.loads(body)["requests"].get("POST /v1/chat/completions", 0)) if (
        status == 200) else 0


def run(url: str, model: str, servers: list[str], clients: int, args: argparse.Namespace,
        label: str) -> dict[str, Any]:
    before = {s: _served(s) for s in servers}
    result = asyncio.run(closed_loop(url, model, clients, args.warmup, args.duration))
    split = {s: _served(s) - before[s] for s in servers}
    total = sum(split.values()) or 1
    result.update(path=label, concurrency=clients,
                  split={s: round(n / total, 3) for s, n in split.items()})
    print(f"  c={clients:<3} {label:<22} TTFB p50 {result['p50_ms'] or 0:8.1f} ms  p99 "
          f"{result['p99_ms'] or 0:8.1f} ms  {result['rps']:7.1f} req/s  errors "
          f"{result['errors']}  split {result['split']}", flush=True)
    return result


def measure(sup: Supervisor, args: argparse.Namespace, levels: list[int], direct: str,
            models: list[str]) -> list[dict[str, Any]]:
    rows = []
    for c in levels:
        paths = [run(f"http://127.0.0.1:{PORTS[direct]}", "vox", [direct], c, args,
                     "direct (1 server)")]
        for model in models:
            n = len(SERVERS[model])
            label = "no replicas" if model == "fast-plain" else (
                f"{n} replica{'s' if n > 1 else ''}")
            paths.append(run(sup.url, model, SERVERS[model], c, args, label))
        base = paths[0]["p50_ms"] or 0.0
        for p in paths:
            p["added_p50_ms"] = (p["p50_ms"] or 0.0) - base
        rows.append({"concurrency": c, "paths": paths})
    return rows


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    cols = (f"{'c':>4} | {'path':<18} | {'TTFB p50':>9} | {'p99':>9} | {'vs direct':>9} | "
            f"{'req/s':>7} | {'errors':>6} | split")
    print(cols)
    print("-" * (len(cols) + 16))
    for row in rows:
        for p in row["paths"]:
            split = " / ".join(f"{v:.0%}" for v in p["split"].values())
            print(f"{row['concurrency']:>4} | {p['path']:<18} | {p['p50_ms'] or 0:>9.1f} | "
                  f"{p['p99_ms'] or 0:>9.1f} | {p['added_p50_ms']:>+9.1f} | {p['rps']:>7.1f} | "
                  f"{p['errors']:>6} | {split}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=6.0, help="measured s per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="s before each run")
    parser.add_argument("--ttfb-concurrency", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--overhead-concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = parser.parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    micro = lease_costs()
    with tempfile.TemporaryDirectory(prefix="msbench-replicas-") as tmp:
        sup = Supervisor(Path(tmp))
        print(f"compose project {sup.project}; supervisor {sup.url}", flush=True)
        try:
            sup.start()
            asyncio.run(closed_loop(sup.url, "fast-plain", 1, 0.0, 0.2))  # cold-start it
            print("seed 003 shape (357 ms + 11.6 ms per completion in progress):", flush=True)
            ttfb = measure(sup, args, args.ttfb_concurrency, "vox1-a", ["vox-1", "vox-2"])
            print("stand-ins without delay (the supervisor's own cost):", flush=True)
            overhead = measure(sup, args, args.overhead_concurrency, "fast1-a",
                               ["fast-plain", "fast-1", "fast-2"])
        except BaseException:
            print(sup.log.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise
        finally:
            sup.stop()
    print_table("TTFB, seed 003's shape: one replica against two (ms)", ttfb)
    print_table("the supervisor's own cost: stand-ins without delay (ms)", overhead)
    print("\nrouting in-process (lease + release, fake runtime, no I/O):")
    for name, micros in micro.items():
        print(f"  {name:<34} {micros:6.2f} us")
    errors = sum(p["errors"] for row in ttfb + overhead for p in row["paths"])
    result = {
        "benchmark": "replica", "started_at": started.isoformat(timespec="seconds"),
        "ok": errors == 0, "errors": errors,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "loadavg_after": os.getloadavg()},
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup,
                     "load_generator": "aiohttp closed loop in the benchmark's process",
                     "stand-in": "compose/standin/standin.py, STANDIN_TTFB_BASE 0.357, "
                                 "STANDIN_TTFB_PER_REQUEST 0.0116 (fast: none)",
                     "models": MODELS, "compose_file": str(COMPOSE_FILE.relative_to(REPO))},
        "ttfb": ttfb, "overhead": overhead, "lease_microseconds": micro,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json.relative_to(REPO) if args.json.is_relative_to(REPO) else args.json}")
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
