"""Optional: sample the supervisor with py-spy under load (proxy_bench.py --profile DIR).

Profiled runs come after the measured ones and never count toward the targets: py-spy
stops the process at each sample. Writes py-spy's raw (collapsed) stacks per workload
(speedscope.app and flamegraph.pl read them) and summarises where the supervisor's samples
went: by function (self and inclusive) and by source file (self).
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::(?P<line>\d+))?\)$")
_PREFIXES = ("site-packages/", "lib/python3", f"{Path(__file__).resolve().parent.parent}/")


def py_spy() -> str | None:
    venv_bin = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "py-spy"
    return shutil.which("py-spy") or (str(venv_bin) if venv_bin.exists() else None)


def start(pid: int, seconds: float, out: Path, native: bool = False,
          rate: int = 200) -> subprocess.Popen[bytes]:
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed: pip install py-spy")
    cmd = [binary, "record", "--pid", str(pid), "--rate", str(rate), "--function",
           "--duration", str(max(1, round(seconds))), "--format", "raw", "-o", str(out),
           *(["--native"] if native else [])]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait(proc: subprocess.Popen[bytes]) -> None:
    _, err = proc.communicate(timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")


def _user_sys(pid: int) -> tuple[float, float, float]:
    """CPU seconds in user and kernel mode so far, and the time now."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick, time.monotonic()


def _split(before: tuple[float, float, float], pid: int) -> dict[str, float]:
    after = _user_sys(pid)
    wall = after[2] - before[2]
    return {"user_pct": round(100 * (after[0] - before[0]) / wall, 1),
            "sys_pct": round(100 * (after[1] - before[1]) / wall, 1)}


def profile_supervisor(stack: Any, gen: Any, out: Path, stream_spec: dict[str, Any],
                       load_c: int = 64, native: bool = False) -> dict[str, Any]:
    """py-spy on the supervisor during wrk at `load_c`, then during the many-stream case."""
    from _load import PATH
    from _stream import client_command

    out.mkdir(parents=True, exist_ok=True)
    pid = stack.proc.pid
    results: dict[str, Any] = {}
    raw = out / f"load-c{load_c}.txt"
    spy = start(pid, gen.warmup + gen.duration, raw, native)
    before = _user_sys(pid)
    run = gen.run(stack.url + PATH, load_c, stack.cpu_groups("nginx-backend"))
    split = _split(before, pid)
    wait(spy)
    results[f"load c={load_c}"] = {
        "raw": str(raw), "rps": run.rps, "cpu_pct": run.cpu_pct.get("supervisor"), **split,
        **summarize(raw),
    }
    raw = out / f"streams-{stream_spec['concurrency']}.txt"
    ramp = stream_spec["chunks"] * stream_spec["interval_ms"] / 1e3 + stream_spec["settle"]
    with stack.cpu_watch("stream-backend") as cpu:
        client = subprocess.Popen(client_command(stream_spec), stdout=subprocess.PIPE)
        time.sleep(ramp + 0.3)
        spy = start(pid, stream_spec["duration"] - 1, raw, native)
        before = _user_sys(pid)
        wait(spy)
        split = _split(before, pid)
        client_out, _ = client.communicate(timeout=stream_spec["duration"] + 60)
    res = json.loads(client_out.decode().strip().splitlines()[-1])
    results[f"{stream_spec['concurrency']} streams"] = {
        "raw": str(raw), "chunks_per_s": res["chunks_per_s"], "cpu_pct": cpu.pct["supervisor"],
        **split, **summarize(raw),
    }
    return results


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if m is None:
        return frame
    path = m["file"]
    for prefix in _PREFIXES:
        if prefix in path:
            path = path.split(prefix, 1)[1]
            if prefix == "lib/python3":
                path = "stdlib/" + path.split("/", 1)[-1]
            break
    return f"{m['func']} ({path}:{m['line']})" if m["line"] else f"{m['func']} ({path})"


def _file(frame: str) -> str:
    short = _short(frame)
    return short.rsplit("(", 1)[-1].split(":", 1)[0].rstrip(")")


def _area(frame: str) -> str:
    """A coarse owner for a leaf frame (in --native mode C frames have owners of their own)."""
    file, func = _file(frame), _short(frame).split(" (", 1)[0]
    if file.startswith("libc"):
        if func.startswith(("write", "send")):
            return "syscalls: write/send (kernel TCP path incl.)"
        if func.startswith(("read", "recv")):
            return "syscalls: read/recv"
        if func.startswith("epoll"):
            return "syscalls: epoll wait"
        return "libc: other"
    if func.startswith(("gc_", "collect", "deduce_unreachable", "move_unreachable")):
        return "CPython: garbage collector"
    if file.startswith("supervisor/"):
        return "supervisor code"
    if file.startswith("prometheus_client/"):
        return "prometheus_client"
    if file.startswith("aiohttp/"):
        mod = file.split("/", 1)[1]
        if mod.startswith(("client", "connector", "payload")):
            return "aiohttp client (client*, connector, payload)"
        if mod.startswith("streams"):
            return "aiohttp streams (StreamReader)"
        return "aiohttp server/writer (web_*, http_writer, ...)"
    if file.startswith("_http_parser"):
        return "aiohttp C http parser"
    if file.startswith(("loop.c", "core.c", "uvloop/", "stream.c", "handles/")) or "uv" in file:
        return "uvloop/libuv (C)"
    if file.startswith("asyncio/") or file.startswith("_asyncio"):
        return "asyncio (tasks, runners)"
    if file.startswith("json/"):
        return "json"
    if file.endswith((".h", ".c")) or file.startswith("libpython"):
        return "CPython runtime (C)"
    return f"other: {file}"


def summarize(raw: Path, top: int = 15) -> dict[str, Any]:
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    files: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    total = other = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not any("supervisor/cli.py" in f for f in frames):
            other += n  # not the event loop's thread (idle pool workers, the GPU sampler)
            continue
        total += n
        leaf = _short(frames[-1])
        self_t[leaf] += n
        files[_file(frames[-1])] += n
        areas[_area(frames[-1])] += n
        for name in {_short(f) for f in frames}:
            incl[name] += n

    def pct(counter: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in counter.most_common(top)]

    # Inclusive: Python frames under the common root (the loop's own frames are ~100 %).
    for name in list(incl):
        if incl[name] >= 0.99 * total or ".py:" not in name:
            del incl[name]
    return {"samples": total, "other_thread_samples": other, "self_by_area": pct(areas),
            "self": pct(self_t), "self_by_file": pct(files), "inclusive": pct(incl)}


def print_summary(name: str, summary: dict[str, Any]) -> None:
    cpu = (f", supervisor CPU: user {summary['user_pct']:.0f} % + kernel "
           f"{summary['sys_pct']:.0f} % of a core" if "user_pct" in summary else "")
    print(f"\nprofile: {name} ({summary['samples']} samples of the supervisor's event-loop "
          f"thread while busy{cpu})")
    for part, title in (("self_by_area", "self time by area"),
                        ("self", "self time by function"),
                        ("self_by_file", "self time by file"),
                        ("inclusive", "inclusive time by function")):
        print(f"  {title}:")
        for frame, p in summary[part]:
            print(f"    {p:5.1f} %  {frame}")
