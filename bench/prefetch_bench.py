"""Weights read ahead, measured: cold starts of real vLLM (the CPU build) with the page
cache dropped before each, without (A) and with (B) the supervisor's prefetch reading the
weights beside the start, in ABBA order so that neither side always runs second.

Each start: drop the page cache (`sync; echo 3 > /proc/sys/vm/drop_caches`, needs root
and a writable /proc/sys), then `docker compose start` of the stopped container (created
once before the first run, so that no side pays for its creation) and /health polled
every 50 ms until 200; with prefetch, anatomy/prefetch.py's read_ahead runs in a thread
from the same instant, on the host folder of the service's model mount. Where the page
cache cannot be dropped the script says so and measures nothing (warm caches would hide
the effect).

Needs scripts/prepare-vllm.sh to have run. Prints a table, writes bench/results/prefetch.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from supervisor.anatomy.prefetch import Outcome, mem_available, mounted_weights, read_ahead
from supervisor.anatomy.prefetch import weight_files as files_of
from supervisor.config import ComposeConfig
from supervisor.gpus.services import read_services

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "compose" / "vllm-cpu.yml"
WITHOUT, WITH = "without", "with prefetch"
DROP = Path("/proc/sys/vm/drop_caches")


def drop_page_cache() -> str | None:
    """None when dropped; else why it cannot be."""
    subprocess.run(["sync"], check=True)
    try:
        DROP.write_text("3\n")
    except OSError as exc:
        return f"cannot drop the page cache here ({DROP}: {exc})"
    return None


def healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def wait_healthy(port: int, deadline: float) -> float:
    began = time.perf_counter()
    while not healthy(port):
        if time.perf_counter() - began > deadline:
            raise SystemExit(f"vLLM on port {port} not healthy after {deadline:.0f} s")
        time.sleep(0.05)
    return time.perf_counter() - began


def one_start(compose: list[str], service: str, port: int, weights: list[Path] | None,
              ) -> dict[str, Any]:
    problem = drop_page_cache()
    if problem:
        raise SystemExit(problem)
    outcome: list[Outcome] = []
    reader = None
    if weights is not None:
        reader = threading.Thread(
            target=lambda: outcome.append(read_ahead(weights, mem_available())))
    began = time.perf_counter()
    if reader is not None:
        reader.start()
    subprocess.run([*compose, "start", service], check=True, capture_output=True)
    wait_healthy(port, 600)
    seconds = time.perf_counter() - began
    if reader is not None:
        reader.join()
    subprocess.run([*compose, "stop", "--timeout", "20", service], check=True,
                   capture_output=True)
    done = outcome[0] if outcome else None
    return {"side": WITH if weights is not None else WITHOUT, "seconds": round(seconds, 2),
            "prefetch_seconds": round(done.seconds, 2) if done else None,
            "prefetch_bytes": done.read if done else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env-file", type=Path, default=REPO / ".cache" / "vllm.env")
    parser.add_argument("--service", default="smol-2k")
    parser.add_argument("--port", type=int, default=9201)
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds (4 starts each)")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "prefetch.json")
    args = parser.parse_args(argv)
    problem = drop_page_cache()
    if problem:
        print(f"prefetch_bench: {problem}; nothing measured", file=sys.stderr)
        return 2
    config = ComposeConfig(file=COMPOSE, project=f"prefetch-{uuid.uuid4().hex[:6]}",
                           env_file=args.env_file)
    services, problem = read_services(config)
    folder = None if problem else mounted_weights(services.get(args.service, {}))
    if folder is None:
        print(f"prefetch_bench: no model mount for {args.service}: {problem}", file=sys.stderr)
        return 2
    weights = files_of(folder)
    compose = ["docker", "compose", "-f", str(COMPOSE), "--env-file", str(args.env_file),
               "-p", config.project]
    runs: list[dict[str, Any]] = []
    try:
        subprocess.run([*compose, "up", "--detach", args.service], check=True,
                       capture_output=True)
        wait_healthy(args.port, 900)  # created and warmed once: no side pays for that
        subprocess.run([*compose, "stop", "--timeout", "20", args.service], check=True,
                       capture_output=True)
        for _ in range(args.rounds):
            for with_prefetch in (False, True, True, False):
                runs.append(one_start(compose, args.service, args.port,
                                      weights if with_prefetch else None))
                print(json.dumps(runs[-1]), flush=True)
    finally:
        subprocess.run([*compose, "--profile", "*", "down", "--timeout", "5"],
                       capture_output=True, check=False)
    size = sum(p.stat().st_size for p in weights)
    summary = {side: {"median_s": statistics.median(r["seconds"] for r in runs
                                                   if r["side"] == side),
                      "runs": [r["seconds"] for r in runs if r["side"] == side]}
               for side in (WITHOUT, WITH)}
    print(f"{args.service}: {len(weights)} weight files, {size / 2**20:.0f} MiB; cold start "
          f"to /health 200, page cache dropped before each")
    for side, s in summary.items():
        print(f"  {side:14} median {s['median_s']:6.2f} s  runs {s['runs']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"service": args.service, "weights_bytes": size,
                                     "summary": summary, "runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
