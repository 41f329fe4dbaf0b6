"""Real vLLM behind the supervisor: orchestration overhead and warm latency.

- Cold start: the backend alone (`docker compose up`, poll /health every 10 ms, then one
  chat completion) against one chat completion sent to the stopped model through a freshly
  started supervisor. The difference is what the supervisor adds to a cold start. The
  container is created before the first run, so that neither side pays for its creation,
  and the two sides alternate in ABBA order (backend first, supervisor first, supervisor
  first, backend first, ...), so that neither always runs on the caches the other warmed.
- Warm: sequential one-token chat completions, direct and through the supervisor,
  interleaved, against the same running vLLM.
- Wake: the idle tier 1 instead of a cold start: the supervisor puts vLLM to sleep (its
  own /sleep), then one chat completion is timed through the supervisor (the wake-up is
  inside it), beside the cold start it replaces.

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
from collections.abc import Callable
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


BACKEND, SUPERVISOR = "backend", "supervisor"


def abba(runs: int) -> list[tuple[str, str]]:
    """The order of the two sides in each cold run: AB, BA, BA, AB, AB, BA, ..."""
    ab = (BACKEND, SUPERVISOR)
    return [ab if k % 4 in (0, 3) else ab[::-1] for k in range(runs)]


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.project = f"msbench-vllm-{uuid.uuid4().hex[:6]}"
        self.port = 18480
        self.admin = 18481
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def compose(self, *args: str) -> None:
        subprocess.run(["docker", "compose", "-f", str(COMPOSE), "--env-file", str(ENV_FILE),
                        "-p", self.project, *args], check=True, capture_output=True, timeout=300)

    def start_supervisor(self) -> None:
        config = {
            "listen": f"127.0.0.1:{self.port}",
            "compose": {"file": str(COMPOSE), "project": self.project, "env_file": str(ENV_FILE)},
            "admin": {"listen": f"127.0.0.1:{self.admin}"},
            "models": {"smollm2": {"service": SERVICE, "upstream": f"http://127.0.0.1:{PORT}",
                                   "idle_timeout": "1h", "startup_timeout": "10m",
                                   "sleep": {"enabled": True}}},
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

    def wake(self) -> float:
        """Seconds of one chat completion sent while vLLM sleeps (through the supervisor)."""
        status, _, _ = request(self.admin, "/admin/models/smollm2/sleep", "{}")
        assert status == 202, status
        deadline = time.monotonic() + 120
        while json.loads(self._admin_get("/admin/models/smollm2"))["state"] != "asleep":
            if time.monotonic() > deadline:
                raise RuntimeError("vLLM did not fall asleep within 2 min")
            time.sleep(0.05)
        status, elapsed, headers = request(self.port, "/v1/chat/completions", BODY)
        assert status == 200 and headers.get("X-Supervisor-Cold-Start") == "true", headers
        return elapsed

    def _admin_get(self, path: str) -> bytes:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=10)
        try:
            conn.request("GET", path)
            return conn.getresponse().read()
        finally:
            conn.close()

    def cold(self, side: str) -> float:
        """One cold start of `side`, from a stopped container; stopped again afterwards."""
        if side == BACKEND:
            seconds = self.backend_alone()
        else:
            self.start_supervisor()  # a fresh one: it knows the model as stopped
            seconds = self.through_supervisor()
            self.stop_supervisor()  # leaves the container running, for adoption
        self.compose("stop", SERVICE)
        return seconds


def quantile_ms(values: list[float], q: str) -> float | None:
    """p50 or p95 of `values`; None when too few answers were measured for it."""
    if q == "p50":
        return statistics.median(values) if values else None
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else None


def at_least(low: int) -> Callable[[str], int]:
    def check(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value

    return check


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cold-runs", type=at_least(1), default=4,
                        help="cold starts of each side, in ABBA order (default 4; a multiple "
                        "of 4 balances the order)")
    parser.add_argument("--warm-requests", type=at_least(2), default=40)
    parser.add_argument("--wake-runs", type=at_least(1), default=3)
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "results" / "vllm.json")
    parser.add_argument("--plan", action="store_true",
                        help="print the order of the cold runs and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    orders = abba(args.cold_runs)
    if args.plan:
        for k, order in enumerate(orders, 1):
            print(f"cold {k}: {order[0]} first, then {order[1]}")
        return 0
    if not ENV_FILE.is_file():
        print("run scripts/prepare-vllm.sh first", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp))
        try:
            bench.compose("create", SERVICE)  # neither side pays for the container's creation
            cold = []
            for k, order in enumerate(orders, 1):
                run: dict[str, Any] = {"order": f"{order[0]} first"}
                for side in order:
                    run[f"{side}_s"] = bench.cold(side)
                cold.append(run)
                print(f"cold {k} ({run['order']}): backend {run['backend_s']:.2f} s, "
                      f"through supervisor {run['supervisor_s']:.2f} s", flush=True)
            bench.start_supervisor()
            assert request(bench.port, "/v1/chat/completions", BODY)[0] == 200  # warm it up
            direct: list[float] = []
            proxied_warm: list[float] = []
            # A non-2xx answer is an error: counted, reported, and kept out of the latencies.
            warm_errors = {"direct": 0, "supervisor": 0}
            for i in range(args.warm_requests):
                for side in ((0, 1) if i % 2 else (1, 0)):
                    port = PORT if side == 0 else bench.port
                    status, elapsed, _ = request(port, "/v1/chat/completions", BODY)
                    if 200 <= status < 300:
                        (direct if side == 0 else proxied_warm).append(elapsed * 1e3)
                    else:
                        warm_errors["direct" if side == 0 else "supervisor"] += 1
                        print(f"warm request {i + 1} ({'direct' if side == 0 else 'supervisor'}"
                              f"): HTTP {status}", file=sys.stderr, flush=True)
            wakes = [bench.wake() for _ in range(args.wake_runs)]
        finally:
            bench.stop_supervisor()
            with contextlib.suppress(Exception):
                bench.compose("--profile", "*", "down", "-t", "5")
    backend = [c["backend_s"] for c in cold]
    supervised = [c["supervisor_s"] for c in cold]
    overhead = statistics.median(s - b for b, s in zip(backend, supervised, strict=True))
    result: dict[str, Any] = {
        "cold": cold,
        "cold_backend_s": backend,
        "cold_supervisor_s": supervised,
        "cold_backend_median_s": statistics.median(backend),
        "cold_supervisor_median_s": statistics.median(supervised),
        "cold_overhead_median_s": overhead,
        "warm_direct_p50_ms": quantile_ms(direct, "p50"),
        "warm_supervisor_p50_ms": quantile_ms(proxied_warm, "p50"),
        "warm_direct_p95_ms": quantile_ms(direct, "p95"),
        "warm_supervisor_p95_ms": quantile_ms(proxied_warm, "p95"),
        "warm_errors": warm_errors,
        "errors": sum(warm_errors.values()),
        "wake_s": wakes,
        "wake_median_s": statistics.median(wakes),
    }
    print("\nreal vLLM (CPU, SmolLM2-135M, smol-2k), one-token chat completions")
    print(f"{'':30} {'direct':>10} {'supervisor':>11} {'added':>9}")
    for k, c in enumerate(cold, 1):
        label = f"cold {k}, {c['order']} (s)"
        print(f"{label:30} {c['backend_s']:10.2f} {c['supervisor_s']:11.2f} "
              f"{c['supervisor_s'] - c['backend_s']:+9.2f}")
    print(f"{'cold median (s)':30} {result['cold_backend_median_s']:10.2f} "
          f"{result['cold_supervisor_median_s']:11.2f} {overhead:+9.2f}")
    for q in ("p50", "p95"):
        d, s = result[f"warm_direct_{q}_ms"], result[f"warm_supervisor_{q}_ms"]
        if d is None or s is None:
            print(f"{'warm ' + q + ' (ms)':30} {'n/a':>10} {'n/a':>11}  (too few 2xx answers)")
        else:
            print(f"{'warm ' + q + ' (ms)':30} {d:10.1f} {s:11.1f} {s - d:+9.1f}")
    print(f"{'warm errors (non-2xx)':30} {warm_errors['direct']:10d} "
          f"{warm_errors['supervisor']:11d}")
    print(f"{'asleep -> answered, median (s)':30} {'':>10} {result['wake_median_s']:11.2f} "
          f"(a cold start through the supervisor: {result['cold_supervisor_median_s']:.2f})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")
    if result["errors"]:
        print(f"FAILED: {result['errors']} warm request(s) answered non-2xx "
              f"(direct {warm_errors['direct']}, supervisor {warm_errors['supervisor']})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
