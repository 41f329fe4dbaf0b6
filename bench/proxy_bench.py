"""Proxy benchmark: the supervisor's added latency, throughput and cold-start overhead.

For each concurrency level, a closed-loop load generator (N connections, each sending
POST /v1/chat/completions back-to-back) runs against the warm stand-in directly and
through the supervisor, alternately (ABBA order over --rounds), in the same run. Then
cold start: the backend's own time to healthy (`docker compose up` to /health 200) is
compared with the time to first byte of one request through the supervisor from a
stopped model.

The supervisor runs as a separate process (its own process group), so the load
generator never shares its event loop. The load generator is `wrk` (C, one thread)
when installed, otherwise an aiohttp client in a separate Python process.

    python bench/proxy_bench.py [--duration 5] [--concurrency 1 16 64] [--cold-runs 3]

Prints a table and writes bench/results/proxy.json. Only containers of its own Compose
project (msbench-<random>) are started, and they are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
COMPOSE_FILE = HERE / "compose.yml"
DEFAULT_JSON = HERE / "results" / "proxy.json"

FAST_MODEL, FAST_PORT = "bench-fast", 19301
SLOW_MODEL, SLOW_PORT = "bench-slow", 19302
PATH = "/v1/chat/completions"
BODY = json.dumps(
    {"model": FAST_MODEL, "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8},
    separators=(",", ":"),
)

# Targets from the issue: latency targets apply at concurrency 64, throughput at every level.
TARGET_ADDED_P50_MS = 1.0
TARGET_ADDED_P99_MS = 5.0
TARGET_RPS_RATIO = 0.5
TARGET_COLD_OVERHEAD_MS = 250.0
TARGET_CONCURRENCY = 64

WRK_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH {\\"duration_us\\":%%d,\\"requests\\":%%d,\\"errors\\":%%d,\\"p50_us\\":%%d,"
    .. "\\"p90_us\\":%%d,\\"p99_us\\":%%d,\\"p999_us\\":%%d,\\"max_us\\":%%d}\\n",
    summary.duration, summary.requests,
    e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
"""


@dataclass
class LoadRun:
    """One measured load run; latencies in milliseconds."""

    requests: int
    errors: int
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    listen_overflows: int | None = None  # system-wide TcpExt counter delta over the run

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


@dataclass
class Side:
    """Direct or supervisor results at one concurrency, summarised over rounds."""

    rounds: list[LoadRun] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        med = statistics.median
        return {
            "p50_ms": med(r.p50_ms for r in self.rounds),
            "p90_ms": med(r.p90_ms for r in self.rounds),
            "p99_ms": med(r.p99_ms for r in self.rounds),
            "max_ms": max(r.max_ms for r in self.rounds),
            "rps": sum(r.requests for r in self.rounds) / sum(r.duration_s for r in self.rounds),
            "requests": sum(r.requests for r in self.rounds),
            "errors": sum(r.errors for r in self.rounds),
            "listen_overflows": sum(r.listen_overflows or 0 for r in self.rounds),
        }


# ---- load generators ----------------------------------------------------------------------


def _wrk_run(url: str, lua: Path, concurrency: int, seconds: float) -> LoadRun:
    cmd = [
        "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
        "-s", str(lua), url,
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")
    raw = json.loads(line[6:])
    return LoadRun(
        requests=raw["requests"],
        errors=raw["errors"],
        duration_s=raw["duration_us"] / 1e6,
        **{f"{k}_ms": raw[f"{k}_us"] / 1e3 for k in ("p50", "p90", "p99", "p999", "max")},
    )


def listen_overflows() -> int | None:
    """Linux's count of connections dropped because a listen queue was full (all sockets)."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table["ListenOverflows"]) if "ListenOverflows" in table else None
    return None


def _percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(p / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


async def _aiohttp_load(url: str, concurrency: int, warmup: float, duration: float) -> LoadRun:
    """Closed loop on `concurrency` keep-alive connections; counts what completes in the window."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    window = {"start": float("inf"), "end": float("inf")}
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal errors
            while True:
                began = time.perf_counter()
                if began >= window["end"]:
                    return
                try:
                    async with session.post(url, data=BODY, headers=headers) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    ok = False
                ended = time.perf_counter()
                if window["start"] <= ended <= window["end"]:
                    if ok:
                        latencies.append(ended - began)
                    else:
                        errors += 1

        tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
        await asyncio.sleep(warmup)
        window["start"] = time.perf_counter()
        window["end"] = window["start"] + duration
        await asyncio.gather(*tasks)
    latencies.sort()
    ms = [x * 1e3 for x in latencies]
    return LoadRun(
        requests=len(ms),
        errors=errors,
        duration_s=duration,
        p50_ms=_percentile(ms, 50),
        p90_ms=_percentile(ms, 90),
        p99_ms=_percentile(ms, 99),
        p999_ms=_percentile(ms, 99.9),
        max_ms=ms[-1] if ms else float("nan"),
    )


def _python_run(url: str, concurrency: int, warmup: float, duration: float) -> LoadRun:
    """Run the aiohttp generator in a child process, never in this (or the proxy's) loop."""
    spec = json.dumps({"url": url, "c": concurrency, "warmup": warmup, "duration": duration})
    done = subprocess.run(
        [sys.executable, __file__, "--loadgen-child", spec],
        capture_output=True, text=True, timeout=warmup + duration + 60, check=True,
    )  # fmt: skip
    return LoadRun(**json.loads(done.stdout.strip().splitlines()[-1]))


class LoadGen:
    """The chosen generator; wrk warms up with a run of its own before each measured run."""

    def __init__(self, kind: str, workdir: Path, warmup: float, duration: float) -> None:
        self.kind = kind
        self.warmup = warmup
        self.duration = duration
        self.lua = workdir / "post.lua"
        self.lua.write_text(WRK_LUA % BODY)

    def describe(self) -> str:
        if self.kind == "wrk":
            version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
            first = (version.strip().splitlines() or ["wrk"])[0].split(" [")[0]
            return f"{first}, 1 thread, closed loop (separate process)"
        return "aiohttp client, closed loop (separate Python process)"

    def run(self, url: str, concurrency: int) -> LoadRun:
        if self.kind == "wrk" and self.warmup > 0:
            _wrk_run(url, self.lua, concurrency, self.warmup)
        before = listen_overflows()
        if self.kind == "wrk":
            run = _wrk_run(url, self.lua, concurrency, self.duration)
        else:
            run = _python_run(url, concurrency, self.warmup, self.duration)
        after = listen_overflows()
        if before is not None and after is not None:
            run.listen_overflows = after - before
        return run


# ---- Compose and the supervisor process ---------------------------------------------------


class Stack:
    """This benchmark's own Compose project and a supervisor process in its own group."""

    def __init__(self, workdir: Path) -> None:
        self.project = f"msbench-{uuid.uuid4().hex[:8]}"
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "supervisor.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def compose(self, *args: str, timeout: float = 120) -> None:
        cmd = ["docker", "compose", "-f", str(COMPOSE_FILE), "-p", self.project, *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-2000:]}")

    def write_config(self) -> Path:
        models = {
            FAST_MODEL: {
                "service": FAST_MODEL,
                "upstream": f"http://127.0.0.1:{FAST_PORT}",
                "idle_timeout": "1h",
                "startup_timeout": "60s",
            },
            SLOW_MODEL: {
                "service": SLOW_MODEL,
                "upstream": f"http://127.0.0.1:{SLOW_PORT}",
                "idle_timeout": "1s",
                "stop_timeout": "1s",
                "startup_timeout": "60s",
            },
        }
        config = {
            "listen": f"127.0.0.1:{self.port}",
            "compose": {"file": str(COMPOSE_FILE), "project": self.project},
            "models": models,
            "log_level": "INFO",
        }
        path = self.workdir / "supervisor.yaml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        return path

    def start_supervisor(self) -> None:
        config = self.write_config()
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "supervisor", "serve", "--config", str(config)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # own process group: pgid == pid
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"supervisor exited:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if _get(self.url + "/v1/models")[0] == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"supervisor did not listen within 30 s:\n{self.log_tail()}")

    def stop_supervisor(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # the group created by start_new_session
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def model_state(self, model: str) -> str:
        status, body = _get(f"{self.url}/v1/models/{model}")
        if status != 200:
            raise RuntimeError(f"GET /v1/models/{model} answered {status}")
        return str(json.loads(body)["state"])

    def wait_state(self, model: str, state: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while (now := self.model_state(model)) != state:
            if time.monotonic() > deadline:
                raise RuntimeError(f"model {model} is {now!r}, not {state!r}, after {timeout}s")
            time.sleep(0.05)

    def teardown(self) -> None:
        self.stop_supervisor()
        with contextlib.suppress(Exception):
            self.compose("--profile", "*", "down", "-t", "1")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    host_port = url.split("://", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/" + url.split("://", 1)[1].split("/", 1)[1])
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _post(port: int, model: str, timeout: float = 60) -> tuple[int, float, dict[str, str]]:
    """POST one chat completion; return status, seconds to first byte (headers), headers."""
    body = BODY.replace(FAST_MODEL, model)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        began = time.perf_counter()
        conn.request("POST", PATH, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        ttfb = time.perf_counter() - began
        resp.read()
        return resp.status, ttfb, dict(resp.getheaders())
    finally:
        conn.close()


# ---- the two parts ------------------------------------------------------------------------


def measure_load(
    stack: Stack, gen: LoadGen, levels: list[int], rounds: int
) -> list[dict[str, Any]]:
    direct = f"http://127.0.0.1:{FAST_PORT}{PATH}"
    proxied = f"{stack.url}{PATH}"
    rows = []
    for c in levels:
        sides = {"direct": Side(), "supervisor": Side()}
        for r in range(rounds):
            order = ("direct", "supervisor") if r % 2 == 0 else ("supervisor", "direct")
            for name in order:
                run = gen.run(direct if name == "direct" else proxied, c)
                sides[name].rounds.append(run)
                print(
                    f"  c={c:<3} round {r + 1}/{rounds} {name:<10} p50 {run.p50_ms:7.3f} ms  "
                    f"p99 {run.p99_ms:8.3f} ms  {run.rps:7.0f} req/s  errors {run.errors}  "
                    f"listen overflows {run.listen_overflows}",
                    flush=True,
                )
        d, s = sides["direct"].summary(), sides["supervisor"].summary()
        row: dict[str, Any] = {
            "concurrency": c,
            "direct": {**d, "rounds": [asdict(x) for x in sides["direct"].rounds]},
            "supervisor": {**s, "rounds": [asdict(x) for x in sides["supervisor"].rounds]},
            "added_p50_ms": s["p50_ms"] - d["p50_ms"],
            "added_p99_ms": s["p99_ms"] - d["p99_ms"],
            "throughput_ratio": s["rps"] / d["rps"] if d["rps"] else 0.0,
        }
        # When the direct tail is worse than the proxied one, the backend's own tail dominates
        # and the difference says nothing about the proxy: no verdict (None).
        p99_ok = None if d["p99_ms"] > s["p99_ms"] else row["added_p99_ms"] <= TARGET_ADDED_P99_MS
        row["pass"] = {
            "added_p50": row["added_p50_ms"] <= TARGET_ADDED_P50_MS,
            "added_p99": p99_ok,
            "throughput": row["throughput_ratio"] >= TARGET_RPS_RATIO,
        }
        rows.append(row)
    return rows


def _backend_time_to_healthy(stack: Stack) -> float:
    """Seconds from just before `docker compose up` to the first /health 200 (5 ms polls)."""
    began = time.perf_counter()
    stack.compose("up", "-d", SLOW_MODEL)
    deadline = began + 60
    while time.perf_counter() < deadline:
        with contextlib.suppress(OSError, http.client.HTTPException):
            if _get(f"http://127.0.0.1:{SLOW_PORT}/health", timeout=1)[0] == 200:
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
        status, ttfb, headers = _post(stack.port, SLOW_MODEL)
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
    overhead = statistics.median(r["overhead_ms"] for r in records)
    return {
        "runs": records,
        "backend_median_s": statistics.median(r["backend_s"] for r in records),
        "supervisor_median_s": statistics.median(r["supervisor_ttfb_s"] for r in records),
        "overhead_median_ms": overhead,
        "pass": overhead <= TARGET_COLD_OVERHEAD_MS,
    }


# ---- report -------------------------------------------------------------------------------


def _mark(ok: bool | None) -> str:
    return "n/a" if ok is None else "ok" if ok else "FAIL"


def print_table(rows: list[dict[str, Any]], cold: dict[str, Any] | None, header: str) -> None:
    print()
    print(header)
    cols = (
        f"{'conc':>4} | {'direct p50':>10} {'p99':>8} {'req/s':>7} | "
        f"{'superv p50':>10} {'p99':>8} {'req/s':>7} | {'added p50':>9} {'p99':>8} | "
        f"{'ratio':>5} | targets"
    )
    print(cols)
    print("-" * len(cols))
    for row in rows:
        d, s, ok = row["direct"], row["supervisor"], row["pass"]
        marks = [f"thr {_mark(ok['throughput'])}"]
        if row["concurrency"] == TARGET_CONCURRENCY:
            marks = [f"p50 {_mark(ok['added_p50'])}", f"p99 {_mark(ok['added_p99'])}", *marks]
        print(
            f"{row['concurrency']:>4} | "
            f"{d['p50_ms']:>10.3f} {d['p99_ms']:>8.2f} {d['rps']:>7.0f} | "
            f"{s['p50_ms']:>10.3f} {s['p99_ms']:>8.2f} {s['rps']:>7.0f} | "
            f"{row['added_p50_ms']:>+9.3f} {row['added_p99_ms']:>+8.2f} | "
            f"{row['throughput_ratio']:>5.2f} | {', '.join(marks)}"
        )
    print(
        f"(latencies in ms; targets: added p50 <= {TARGET_ADDED_P50_MS:g} ms and p99 <= "
        f"{TARGET_ADDED_P99_MS:g} ms at concurrency {TARGET_CONCURRENCY}, throughput >= "
        f"{TARGET_RPS_RATIO:.0%} of direct; p99 n/a: the direct p99 is worse than the proxied "
        "one, so the backend's own tail hides the proxy's)"
    )
    if cold is not None:
        print(
            f"cold start: backend healthy {cold['backend_median_s']:.3f} s, first byte through "
            f"supervisor {cold['supervisor_median_s']:.3f} s, overhead "
            f"{cold['overhead_median_ms']:+.0f} ms (median of {len(cold['runs'])}; target <= "
            f"{TARGET_COLD_OVERHEAD_MS:g} ms: {_mark(cold['pass'])})"
        )


def _git_commit() -> str | None:
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or None


def _loadgen_child(spec_json: str) -> int:
    spec = json.loads(spec_json)
    run = asyncio.run(_aiohttp_load(spec["url"], spec["c"], spec["warmup"], spec["duration"]))
    print(json.dumps(asdict(run)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=2, help="direct/supervisor pairs per level")
    parser.add_argument("--cold-runs", type=int, default=3, help="0 skips the cold-start part")
    parser.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write results")
    parser.add_argument("--loadgen-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loadgen_child:
        return _loadgen_child(args.loadgen_child)

    kind = args.loadgen
    if kind == "auto":
        kind = "wrk" if shutil.which("wrk") else "python"
        if kind == "python":
            print("wrk not found (apt-get install wrk): using the slower Python load generator")
    elif kind == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed")

    started = dt.datetime.now(dt.UTC)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="msbench-") as tmp:
        workdir = Path(tmp)
        gen = LoadGen(kind, workdir, args.warmup, args.duration)
        header = f"load generator: {gen.describe()}"
        stack = Stack(workdir)
        print(f"compose project {stack.project}; supervisor on {stack.url}; {header}", flush=True)
        try:
            stack.start_supervisor()
            # The first request cold-starts the fast backend through the supervisor; it then
            # stays warm (idle_timeout 1h) for both direct and proxied runs.
            status, ttfb, _ = _post(stack.port, FAST_MODEL)
            if status != 200:
                raise RuntimeError(f"warm-up request answered {status}")
            print(f"backend {FAST_MODEL} up via supervisor in {ttfb:.2f} s", flush=True)
            rows = measure_load(stack, gen, args.concurrency, args.rounds)
            cold = measure_cold_start(stack, args.cold_runs) if args.cold_runs > 0 else None
        except BaseException:
            print(f"supervisor log tail:\n{stack.log_tail()}", file=sys.stderr)
            raise
        finally:
            stack.teardown()

    print_table(rows, cold, header)
    result = {
        "benchmark": "proxy",
        "started_at": started.isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {
            "load_generator": header,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "order": "ABBA: direct first in odd rounds, supervisor first in even rounds",
            "aggregation": "median of per-round percentiles; req/s pooled over rounds",
            "request": {"method": "POST", "path": PATH, "body": json.loads(BODY)},
            "backend": "compose/standin/standin.py (ThreadingHTTPServer), bench/compose.yml",
            "supervisor_health_interval_s": 0.1,  # the config default
        },
        "targets": {
            "added_p50_ms": TARGET_ADDED_P50_MS,
            "added_p99_ms": TARGET_ADDED_P99_MS,
            "at_concurrency": TARGET_CONCURRENCY,
            "throughput_ratio_min": TARGET_RPS_RATIO,
            "cold_start_overhead_ms": TARGET_COLD_OVERHEAD_MS,
        },
        "load": rows,
        "cold_start": cold,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
