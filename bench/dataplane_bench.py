"""Data-plane scaling: requests/s forwarded by K supervisor processes that share one port
(SO_REUSEPORT), beside nginx with K workers on the same cores under the same load, and the
same load sent direct; for docs/multi-worker.md.

Each supervisor process is the real one (build_app, the fast path, a model handle) with a
runtime that runs nothing: the model counts as running and is adopted at start, so no
Docker is needed and what is measured is the forwarding path alone, one event loop a
process. `--mode fleet` (the default) runs ONE supervisor with `workers: K`: the owner and
K - 1 worker processes it spawns, so the coordination is in the figures; `--mode copies`
runs K independent supervisors instead.

Every row is measured the same way: K processes get K x `--connections` client
connections in all, so each process forwards for the same number of connections at every
K. (A fixed total, as this bench had before, gives the one-process row the most
connections per process; since a process's cost per request grew with the requests it
had in flight, that depressed the one-process row and made the curve look superlinear.)

The backend answers a fixed chat completion from B processes (httptools, uvloop); the
load comes from L processes, closed loop, keep-alive, POSTs of a small chat request. With
--pin (the default where there are cores enough) load generators, backends and the
proxies get cores of their own (sched_setaffinity), so the figures say what K processes
can do, not what they leave to the others; the table names the cores each side had.

    python bench/dataplane_bench.py [--workers 1 2 4] [--loadgens 4] [--backends 3]
                                    [--connections 64] [--duration 5] [--mode fleet]

Prints a table; writes bench/results/dataplane.json. Needs no Docker or wrk; nginx
(Debian's nginx-light) only for its column.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httptools

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MODEL = "plane-bench"
BODY = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Say hi"}],
                   "max_tokens": 8}, separators=(",", ":")).encode()
ANSWER = json.dumps({"id": "chatcmpl-bench", "object": "chat.completion", "created": 0,
                     "model": MODEL, "choices": [{"index": 0, "message": {
                         "role": "assistant", "content": "Hi!"}, "finish_reason": "stop"}],
                     "usage": {"prompt_tokens": 9, "completion_tokens": 3,
                               "total_tokens": 12}}).encode()
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(ANSWER)) + ANSWER


def _loop_run(main: Any) -> Any:
    try:
        import uvloop
        return uvloop.run(main)
    except ImportError:
        return asyncio.run(main)


def _reuse_port_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


# ---- backend: a fixed answer ----------------------------------------------------------------


class _Fixed(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.transport.write(RESPONSE)


async def _backend(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Fixed, sock=_reuse_port_socket(port))
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


# ---- supervisor process with a runtime that runs nothing ------------------------------------


class _ReadyRuntime:
    """Every service runs already (adopted); nothing is ever started or stopped."""

    async def start(self, service: str) -> None: ...
    async def stop(self, service: str, grace: float) -> None: ...

    async def status(self, service: str) -> Any:
        from supervisor.runtime.base import ServiceState, ServiceStatus
        return ServiceStatus(ServiceState.RUNNING)

    async def logs_tail(self, service: str, lines: int) -> str:
        return ""

    async def running_services(self) -> set[str]:
        return {MODEL}

    async def endpoints(self, service: str) -> list[str]:
        return []

    async def ping(self) -> None: ...

    async def exits(self) -> Any:
        await asyncio.Event().wait()
        yield ""


async def _supervisor(port: int, backend_port: int, fast_path: bool, workers: int = 1) -> None:
    """One supervisor; with `workers` > 1 it spawns workers - 1 forwarding processes of its
    own (the real coordination: mirrors, relays, fences), which read the config file."""
    import tempfile

    from supervisor.app import start_server
    from supervisor.config import load_config
    from supervisor.ops.control import CONTROL
    from supervisor.proxy.appkeys import REGISTRY
    from supervisor.rules.table import State

    raw = {
        "listen": f"127.0.0.1:{port}", "admin": {"listen": "127.0.0.1:0"},
        "compose": {"file": str(HERE / "compose.yml"), "project": "planebench"},
        "models": {MODEL: {"service": MODEL, "upstream": f"http://127.0.0.1:{backend_port}",
                           "idle_timeout": "1h"}},
        "log_level": "WARNING", "fast_path": fast_path, "workers": workers,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        json.dump(raw, f)  # JSON is YAML
    path = Path(f.name)
    config = load_config(path)
    runner = await start_server(config, _ReadyRuntime(), config_path=path,  # type: ignore[arg-type]
                                reuse_port=True)
    handle = runner.app[REGISTRY].handles[MODEL]
    fleet = runner.app[CONTROL].fleet
    deadline = time.monotonic() + 30
    while handle.state is not State.READY or (
            fleet is not None and not all(link.alive for link in fleet.links)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the model is {handle.state}, or a worker did not start")
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # the workers' first table
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        os.unlink(path)


# ---- load generator -------------------------------------------------------------------------


class _Client(asyncio.Protocol):
    def __init__(self, stats: dict[str, Any], request: bytes) -> None:
        self.stats, self.request = stats, request
        self.parser = httptools.HttpResponseParser(self)
        self.sent = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.send()

    def send(self) -> None:
        self.sent = time.perf_counter()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        now = time.perf_counter()
        st = self.stats
        if self.parser.get_status_code() != 200:
            st["errors"] += 1
        elif st["t0"] <= self.sent and now <= st["t1"]:
            st["count"] += 1
            st["lat"].append(now - self.sent)
        if now < st["t1"]:
            self.send()
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if time.perf_counter() < self.stats["t1"]:
            self.stats["errors"] += 1


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
               % (len(BODY), BODY))
    begin = time.perf_counter() + spec["warmup"]
    stats: dict[str, Any] = {"count": 0, "errors": 0, "lat": [], "t0": begin,
                             "t1": begin + spec["duration"]}
    for _ in range(spec["connections"]):
        await loop.create_connection(lambda: _Client(stats, request), "127.0.0.1",
                                     spec["port"])
    await asyncio.sleep(stats["t1"] - time.perf_counter() + 0.5)
    lat = sorted(stats["lat"])[:: max(1, len(stats["lat"]) // 5000)]
    return {"count": stats["count"], "errors": stats["errors"], "seconds": spec["duration"],
            "latencies": lat}


# ---- orchestration --------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(args: list[str], cores: list[int] | None) -> subprocess.Popen[str]:
    def pin() -> None:
        if cores:
            os.sched_setaffinity(0, cores)
    return subprocess.Popen([sys.executable, str(Path(__file__)), *args], cwd=REPO,
                            stdout=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=pin)


def _wait_ready(proc: subprocess.Popen[str], what: str) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"{what} did not start: {line!r} (exit {proc.poll()})")


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def _running(procs: list[subprocess.Popen[str]], what: str) -> Iterator[None]:
    try:
        for proc in procs:
            _wait_ready(proc, what)
        yield
    finally:
        _stop(procs)


def _pct(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p * len(values)))] * 1e3 if values else float("nan")


def _measure(port: int, args: argparse.Namespace, connections: int,
             cores: list[list[int] | None]) -> dict[str, Any]:
    """`connections` in all, split over the load generators as evenly as they go."""
    spec = {"port": port, "warmup": args.warmup, "duration": args.duration}
    share = [connections // args.loadgens + (i < connections % args.loadgens)
             for i in range(args.loadgens)]
    outs = [args.json.parent / f".load-{i}.json" for i in range(args.loadgens)]
    gens = [_spawn(["load", json.dumps(spec | {"connections": n, "out": str(out)})], cores[i])
            for i, (n, out) in enumerate(zip(share, outs, strict=True)) if n]
    results = []
    for gen, out in zip(gens, outs, strict=False):
        if gen.wait(timeout=args.warmup + args.duration + 60):
            raise RuntimeError(f"a load generator failed (exit {gen.returncode})")
        results.append(json.loads(out.read_text()))
        out.unlink()
    lat = sorted(v for r in results for v in r["latencies"])
    count = sum(r["count"] for r in results)
    return {"rps": count / args.duration, "requests": count,
            "errors": sum(r["errors"] for r in results), "p50_ms": _pct(lat, 0.5),
            "p99_ms": _pct(lat, 0.99)}


def _supervisors(k: int, port: int, backend_port: int, args: argparse.Namespace,
                 own: list[int] | None) -> list[subprocess.Popen[str]]:
    """K processes on the port: one supervisor with `workers: K` (fleet: the owner and
    K - 1 workers, which inherit its cores) or K independent copies, a core each."""
    fast = "0" if args.no_fast_path else "1"
    if args.mode == "fleet":
        return [_spawn(["supervisor", str(port), str(backend_port), fast, str(k)], own)]
    return [_spawn(["supervisor", str(port), str(backend_port), fast, "1"],
                   [own[i]] if own else None) for i in range(k)]


def _nginx_row(k: int, backend_port: int, args: argparse.Namespace, connections: int,
               own: list[int] | None, gen_cores: list[list[int] | None]) -> dict[str, Any]:
    """nginx as the reverse proxy with K workers on the same cores, the same load."""
    import tempfile

    from _nginx import Nginx

    with tempfile.TemporaryDirectory(prefix="dataplane-nginx-") as tmp:
        port = _free_port()
        nginx = Nginx.proxy(Path(tmp), {port: (backend_port, True)}, workers=k, cores=own)
        nginx.start()
        try:
            return _measure(port, args, connections, gen_cores)
        finally:
            nginx.stop()


def _cores_text(cores: list[int] | None, pinned: bool, ncpu: int) -> str:
    return ",".join(map(str, cores)) if pinned and cores else f"any of {ncpu}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--workers", type=int, nargs="+", default=[1, 2, 4])
    add("--loadgens", type=int, default=4)
    add("--backends", type=int, default=3)
    add("--connections", type=int, default=64,
        help="per supervisor process: K processes get K times as many in all")
    add("--duration", type=float, default=5.0)
    add("--warmup", type=float, default=1.0)
    add("--no-fast-path", action="store_true", help="the aiohttp path, for comparison")
    add("--mode", choices=["copies", "fleet"], default="fleet",
        help="fleet: one supervisor with `workers: K` (the real coordination); copies: K "
             "independent supervisors on the port (the forwarding alone)")
    add("--pin", choices=["auto", "yes", "no"], default="auto")
    add("--nginx", choices=["auto", "yes", "no"], default="auto",
        help="nginx with K workers beside each row (auto: where nginx is installed)")
    add("--json", type=Path, default=HERE / "results" / "dataplane.json")
    args = parser.parse_args()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    from _nginx import nginx_binary
    with_nginx = args.nginx == "yes" or (args.nginx == "auto" and nginx_binary() is not None)
    ncpu = len(os.sched_getaffinity(0))
    loadavg = os.getloadavg()[0]  # others' work disturbs a run: say how busy the host was
    need = args.loadgens + args.backends + max(args.workers)
    pin = args.pin == "yes" or (args.pin == "auto" and ncpu >= need)
    cores = sorted(os.sched_getaffinity(0))

    def core(i: int) -> list[int] | None:
        return [cores[i]] if pin else None

    gen_cores = [core(i) for i in range(args.loadgens)]
    first = args.loadgens + args.backends  # the proxies' cores follow the others'
    backend_port = _free_port()
    rows: list[dict[str, Any]] = []
    backends = [_spawn(["backend", str(backend_port)], core(args.loadgens + i))
                for i in range(args.backends)]
    with _running(backends, "backend"):
        most = args.connections * max(args.workers)
        direct = _measure(backend_port, args, most, gen_cores)
        print(f"direct ({most} connections): {direct['rps']:.0f} req/s", flush=True)
        for k in args.workers:
            own = [cores[first + i] for i in range(k)] if pin else None
            connections = args.connections * k
            port = _free_port()
            with _running(_supervisors(k, port, backend_port, args, own), "supervisor"):
                res = _measure(port, args, connections, gen_cores)
            ngx = (_nginx_row(k, backend_port, args, connections, own, gen_cores)
                   if with_nginx else None)
            rows.append({"path": args.mode, "processes": k, "connections": connections,
                         "loadgen_cores": _cores_text(cores[:args.loadgens], pin, ncpu),
                         "supervisor_cores": _cores_text(own, pin, ncpu), **res,
                         "rps_per_process": res["rps"] / k, "nginx": ngx})
            print(f"{k} process(es), {connections} connections: {res['rps']:.0f} req/s"
                  + (f"; nginx {ngx['rps']:.0f}" if ngx else ""), flush=True)
    _table(rows, direct, args, ncpu, pin)
    print(f"load average (1 min) before the run: {loadavg:.2f}")
    result = {"benchmark": "dataplane", "cores": ncpu, "pinned": pin, "loadavg": loadavg,
              "python": platform.python_version(), "settings": vars(args) | {"json": None},
              "direct": direct | {"connections": most}, "rows": rows}
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


def _table(rows: list[dict[str, Any]], direct: dict[str, Any], args: argparse.Namespace,
           ncpu: int, pin: bool) -> None:
    one = rows[0]["rps_per_process"] if rows and rows[0]["processes"] == 1 else None
    placed = ("pinned: each process on cores of its own" if pin
              else "not pinned: every process shares every core")
    print(f"\n{ncpu} cores, {placed}; "
          f"{args.loadgens} load generator(s) and {args.backends} backend process(es) "
          f"(direct to the backend: {direct['rps']:.0f} req/s); {args.connections} "
          f"connections per supervisor process; {args.mode}. A row: K supervisor processes"
          f"{' on K cores' if pin else ''}, and nginx with K workers"
          f"{' on the same cores' if pin else ''} under the same load")
    print(f"{'K':>2} | {'conns':>5} | {'load gen cores':<14} | {'proxy cores':<11} | "
          f"{'req/s':>7} | {'per process':>11} | {'x one':>5} | {'p50 ms':>7} | "
          f"{'p99 ms':>7} | {'errors':>6} | {'nginx req/s':>11} | {'per worker':>10}")
    for r in rows:
        ngx = r["nginx"]
        scale = f"{r['rps_per_process'] * r['processes'] / one:.2f}" if one else "-"
        print(f"{r['processes']:>2} | {r['connections']:>5} | {r['loadgen_cores']:<14} | "
              f"{r['supervisor_cores']:<11} | {r['rps']:>7.0f} | "
              f"{r['rps_per_process']:>11.0f} | {scale:>5} | {r['p50_ms']:>7.3f} | "
              f"{r['p99_ms']:>7.3f} | {r['errors']:>6} | "
              f"{ngx['rps'] if ngx else float('nan'):>11.0f} | "
              f"{ngx['rps'] / r['processes'] if ngx else float('nan'):>10.0f}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "backend":
        _loop_run(_backend(int(sys.argv[2])))
    elif len(sys.argv) > 2 and sys.argv[1] == "supervisor":
        sys.path.insert(0, str(REPO))
        _loop_run(_supervisor(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1",
                              int(sys.argv[5])))
    elif len(sys.argv) > 2 and sys.argv[1] == "load":
        load_spec = json.loads(sys.argv[2])
        Path(load_spec["out"]).write_text(json.dumps(_loop_run(_load(load_spec))))
    else:
        sys.exit(main())
