"""How long a Prometheus scrape of GET /metrics takes with 20 models configured, each with
two profiles and every series filled in. Target: under 10 ms.

Starts the supervisor in this process on 127.0.0.1 (its own Compose project; nothing is
started), feeds the metric hooks as a busy day would, then times scrapes over HTTP.
Prints a table and writes bench/results/metrics.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from supervisor.app import start_server
from supervisor.config import Config
from supervisor.proxy.appkeys import METRICS

REPO = Path(__file__).resolve().parents[1]
TARGET_MS = 10.0


def config(models: int, compose_file: Path) -> Config:
    return Config(
        listen="127.0.0.1:0",
        admin={"listen": "127.0.0.1:0"},
        compose={"file": compose_file, "project": "msbench-metrics"},
        models={
            f"model-{i:02d}": {
                "upstream": f"http://127.0.0.1:{20000 + i}",
                "default_profile": "64k",
                "profiles": {"64k": {"service": f"m{i}-64k", "max_model_len": 65536},
                             "long": {"service": f"m{i}-long", "max_model_len": 131072}},
            }
            for i in range(models)
        },
    )


async def run(models: int, scrapes: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        compose_file = Path(tmp) / "compose.yml"
        compose_file.write_text("services: {}\n")
        runner = await start_server(config(models, compose_file))
        try:
            metrics = runner.app[METRICS]
            for i in range(models):
                name = f"model-{i:02d}"
                for state in ("stopped", "starting", "ready", "stopping"):
                    metrics.transition(name, "stopped", state)
                metrics.cold_start(name, "64k", 40.0, ok=True)
                metrics.swap(name, "64k", "long")
                for status in (200, 400, 503):
                    for cold in (True, False):
                        metrics.request(name, status, 1.2, 0.3, cold_start=cold)
                metrics.hold(name, 30.0)
            host, port = runner.addresses[0][:2]
            url = f"http://{host}:{port}/metrics"
            times, size = [], 0
            async with aiohttp.ClientSession() as http:
                for _ in range(scrapes):
                    began = time.perf_counter()
                    async with http.get(url) as r:
                        size = len(await r.read())
                    times.append((time.perf_counter() - began) * 1e3)
        finally:
            await runner.cleanup()
    times.sort()
    return {"models": models, "bytes": size, "p50_ms": statistics.median(times),
            "p99_ms": times[int(len(times) * 0.99) - 1], "max_ms": times[-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--scrapes", type=int, default=300)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "metrics.json")
    args = parser.parse_args()
    result = asyncio.run(run(args.models, args.scrapes))
    ok = "ok" if result["p99_ms"] < TARGET_MS else "FAIL"
    print(f"{'models':>6} {'bytes':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(f"{result['models']:6d} {result['bytes']:8d} {result['p50_ms']:8.2f} "
          f"{result['p99_ms']:8.2f} {result['max_ms']:8.2f}  {ok} (target < {TARGET_MS:.0f} ms)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
