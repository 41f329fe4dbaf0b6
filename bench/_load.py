"""Closed-loop HTTP load for proxy_bench.py: wrk (C, one thread) or an aiohttp client, each
in a process of its own, plus the CPU each involved process used during a run.

Only 2xx answers count as throughput. wrk counts answers with a status >= 400 as errors
(`errors.status`, subtracted from its requests here); a probe request before each run must
answer 2xx, so a path that answers 1xx/3xx fails loudly instead of counting as fast.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PATH = "/v1/chat/completions"

WRK_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH {\\"duration_us\\":%%d,\\"responses\\":%%d,\\"status_errors\\":%%d,"
    .. "\\"socket_errors\\":%%d,\\"p50_us\\":%%d,\\"p90_us\\":%%d,\\"p99_us\\":%%d,"
    .. "\\"p999_us\\":%%d,\\"max_us\\":%%d}\\n",
    summary.duration, summary.requests, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
"""

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (gone ones count 0)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / _TICK


class CpuWatch:
    """Per-group CPU use (% of one core) over a span: `with CpuWatch(groups) as w: ...`."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.pct: dict[str, float] = {}

    def __enter__(self) -> CpuWatch:
        self.began = time.monotonic()
        self.before = {k: cpu_seconds(v) for k, v in self.groups.items()}
        self.children = _children_cpu()
        self.machine = _machine()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self.began
        for k, pids in self.groups.items():
            self.pct[k] = round(100 * (cpu_seconds(pids) - self.before[k]) / wall, 1)
        self.pct["loadgen"] = round(100 * (_children_cpu() - self.children) / wall, 1)
        # The machine as a whole (100 = one core): interrupt time (mostly the loopback TCP
        # stack's softirqs, which no process is charged for), time the hypervisor stole, and
        # every other process: a disturbed run shows in `other` or `steal`.
        ours = sum(self.pct.values())
        procs, irq, steal = ((b - a) * 100 / wall for a, b in zip(self.machine, _machine(),
                                                                   strict=True))
        self.pct["irq"] = round(irq, 1)
        self.pct["steal"] = round(steal, 1)
        self.pct["other"] = round(max(0.0, procs - ours), 1)


def _machine() -> tuple[float, float, float]:
    """CPU seconds, all cores, so far: in processes (user, nice, system), in interrupts
    (irq, softirq), stolen by the hypervisor (/proc/stat)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (
            int(x) for x in f.readline().split()[1:9])
    return (user + nice + system) / _TICK, (irq + softirq) / _TICK, steal / _TICK


def _children_cpu() -> float:
    """CPU of this process's waited-for children (the load generator runs)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


@dataclass
class LoadRun:
    """One measured load run; latencies in milliseconds (wrk's are over all answers)."""

    requests: int  # 2xx answers only
    errors: int  # non-2xx answers, socket errors, timeouts
    duration_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    listen_overflows: int | None = None  # system-wide TcpExt counter delta over the run
    cpu_pct: dict[str, float] = field(default_factory=dict)  # % of one core, per process
    note: str | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


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
        requests=raw["responses"] - raw["status_errors"],
        errors=raw["status_errors"] + raw["socket_errors"],
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


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(p / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


async def _aiohttp_load(
    url: str, body: str, concurrency: int, warmup: float, duration: float
) -> LoadRun:
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
                    async with session.post(url, data=body, headers=headers) as resp:
                        await resp.read()
                        ok = 200 <= resp.status < 300
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
        p50_ms=percentile(ms, 50),
        p90_ms=percentile(ms, 90),
        p99_ms=percentile(ms, 99),
        p999_ms=percentile(ms, 99.9),
        max_ms=ms[-1] if ms else float("nan"),
    )


def loadgen_child(spec_json: str) -> int:
    spec = json.loads(spec_json)
    run = asyncio.run(
        _aiohttp_load(spec["url"], spec["body"], spec["c"], spec["warmup"], spec["duration"])
    )
    print(json.dumps(asdict(run)))
    return 0


def probe_status(url: str, body: str) -> int:
    """One POST's status; the run that follows is only trusted after a 2xx."""
    host, _, rest = url.split("://", 1)[1].partition("/")
    conn = http.client.HTTPConnection(*host.rsplit(":", 1), timeout=10)
    try:
        conn.request("POST", "/" + rest, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


class LoadGen:
    """The chosen generator; wrk warms up with a run of its own before each measured run."""

    def __init__(self, kind: str, workdir: Path, warmup: float, duration: float,
                 body: str, script: Path) -> None:
        self.kind = kind
        self.warmup = warmup
        self.duration = duration
        self.body = body
        self.script = script  # the benchmark script: runs the Python generator as a child
        self.lua = workdir / "post.lua"
        self.lua.write_text(WRK_LUA % body)

    def describe(self) -> str:
        if self.kind == "wrk":
            version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
            first = (version.strip().splitlines() or ["wrk"])[0].split(" [")[0]
            return f"{first}, 1 thread, closed loop (separate process)"
        return "aiohttp client, closed loop (separate Python process)"

    def _python_run(self, url: str, concurrency: int) -> LoadRun:
        spec = json.dumps({"url": url, "body": self.body, "c": concurrency,
                           "warmup": self.warmup, "duration": self.duration})
        done = subprocess.run(
            [sys.executable, str(self.script), "--loadgen-child", spec],
            capture_output=True, text=True, timeout=self.warmup + self.duration + 60, check=True,
        )  # fmt: skip
        return LoadRun(**json.loads(done.stdout.strip().splitlines()[-1]))

    def run(self, url: str, concurrency: int, cpu_groups: dict[str, list[int]]) -> LoadRun:
        status = probe_status(url, self.body)
        if not 200 <= status < 300:  # not measured: a run of errors
            nan = float("nan")
            return LoadRun(0, 1, self.duration, nan, nan, nan, nan, nan,
                           note=f"probe POST answered {status}, not 2xx: not measured")
        if self.kind == "wrk" and self.warmup > 0:
            _wrk_run(url, self.lua, concurrency, self.warmup)
        before = listen_overflows()
        with CpuWatch(cpu_groups) as cpu:
            if self.kind == "wrk":
                run = _wrk_run(url, self.lua, concurrency, self.duration)
            else:
                run = self._python_run(url, concurrency)
        run.cpu_pct = cpu.pct
        after = listen_overflows()
        if before is not None and after is not None:
            run.listen_overflows = after - before
        return run
