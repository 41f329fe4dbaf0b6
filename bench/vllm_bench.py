"""Real vLLM behind the supervisor: orchestration overhead and warm latency.

- Cold start: the backend alone (`docker compose up`, poll /health every 10 ms, then one
  chat completion) against one chat completion sent to the stopped model through the
  supervisor. The difference is what the supervisor adds to a cold start.
- Warm: sequential one-token chat completions, direct and through the supervisor,
  interleaved, against the same running vLLM.

Needs scripts/prepare-vllm.sh to have run. Prints a table, writes bench/results/vllm.json.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "compose" / "vllm-cpu.yml"
ENV_FILE = REPO / ".cache" / "vllm.env"
SERVICE, PORT = "smol-2k", 9201
BODY = json.dumps({"model": "smollm2", "max_tokens": 1, "temperature": 0,
                   "messages": [{"role": "user", "content": "Hi"}]})


def request(port: int, path: str, body: str | None = None, timeout: float = 600) -> tuple[
        int, float, dict[str, str]]:
    """Status, seconds to the response headers, headers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        began = time.perf_counter()
        conn.request("POST" if body else "GET", path, body=body,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        elapsed = time.perf_counter() - began
        resp.read()
        return resp.status, elapsed, dict(resp.getheaders())
    finally:
        conn.close()


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.project = f"msbench-vllm-{uuid.uuid4().hex[:6]}"
        self.port = 18480
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def compose(self, *args: str) -> None:
        subprocess.run(["docker", "compose", "-f", str(COMPOSE), "--env-file", str(ENV_FILE),
                        "-p", self.project, *args], check=True, capture_output=True, timeout=300)

    def start_supervisor(self) -> None:
        config = {
            "listen": f"127.0.0.1:{self.port}",
            "compose": {"file": str(COMPOSE), "project": self.project, "env_file": str(ENV_FILE)},
            "models": {"smollm2": {"service": SERVICE, "upstream": f"http://127.0.0.1:{PORT}",
                                   "idle_timeout": "1h", "startup_timeout": "10m"}},
        }
        path = self.workdir / "config.yaml"
        path.write_text(json.dumps(config))
        log = (self.workdir / "supervisor.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "serve", "--config", str(path)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if request(self.port, "/v1/models")[0] == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError("the supervisor did not come up")

    def stop_supervisor(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own process group only
            self.proc.wait(timeout=30)

    def backend_alone(self) -> float:
        """Seconds from `up` to the first completion answered by vLLM itself."""
        began = time.perf_counter()
        self.compose("up", "-d", SERVICE)
        while True:
            with contextlib.suppress(OSError, http.client.HTTPException):
                if request(PORT, "/health", timeout=2)[0] == 200:
                    break
            if time.perf_counter() - began > 600:
                raise RuntimeError("vLLM was not healthy within 10 min")
            time.sleep(0.01)
        status, _, _ = request(PORT, "/v1/chat/completions", BODY)
        assert status == 200
        return time.perf_counter() - began

    def through_supervisor(self) -> float:
        status, elapsed, headers = request(self.port, "/v1/chat/completions", BODY)
        assert status == 200 and headers.get("X-Supervisor-Cold-Start") == "true", headers
        return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cold-runs", type=int, default=2)
    parser.add_argument("--warm-requests", type=int, default=40)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "vllm.json")
    args = parser.parse_args()
    if not ENV_FILE.is_file():
        print("run scripts/prepare-vllm.sh first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp))
        try:
            bench.start_supervisor()
            cold = []
            for k in range(args.cold_runs):
                alone = bench.backend_alone()
                bench.compose("stop", SERVICE)
                proxied = bench.through_supervisor()
                cold.append({"backend_s": alone, "supervisor_s": proxied})
                print(f"cold {k + 1}: backend {alone:.2f} s, through supervisor {proxied:.2f} s",
                      flush=True)
                if k + 1 < args.cold_runs:
                    bench.stop_supervisor()  # forget the running container, stop it
                    bench.compose("stop", SERVICE)
                    bench.start_supervisor()
            direct, proxied_warm = [], []
            for i in range(args.warm_requests):
                for side in ((0, 1) if i % 2 else (1, 0)):
                    port = PORT if side == 0 else bench.port
                    elapsed = request(port, "/v1/chat/completions", BODY)[1] * 1e3
                    (direct if side == 0 else proxied_warm).append(elapsed)
        finally:
            bench.stop_supervisor()
            with contextlib.suppress(Exception):
                bench.compose("--profile", "*", "down", "-t", "5")
    overhead = statistics.median(c["supervisor_s"] - c["backend_s"] for c in cold)
    result: dict[str, Any] = {
        "cold": cold,
        "cold_overhead_median_s": overhead,
        "warm_direct_p50_ms": statistics.median(direct),
        "warm_supervisor_p50_ms": statistics.median(proxied_warm),
        "warm_direct_p95_ms": statistics.quantiles(direct, n=20)[-1],
        "warm_supervisor_p95_ms": statistics.quantiles(proxied_warm, n=20)[-1],
    }
    print("\nreal vLLM (CPU, SmolLM2-135M, smol-2k), one-token chat completions")
    print(f"{'':24} {'direct':>10} {'supervisor':>11} {'added':>9}")
    for c in cold:
        print(f"{'cold start (s)':24} {c['backend_s']:10.2f} {c['supervisor_s']:11.2f} "
              f"{c['supervisor_s'] - c['backend_s']:+9.2f}")
    for q in ("p50", "p95"):
        d, s = result[f"warm_direct_{q}_ms"], result[f"warm_supervisor_{q}_ms"]
        print(f"{'warm ' + q + ' (ms)':24} {d:10.1f} {s:11.1f} {s - d:+9.1f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
