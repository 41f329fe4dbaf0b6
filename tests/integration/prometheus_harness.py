"""A real Prometheus (Debian's `prometheus` binary) for tests: it scrapes one
127.0.0.1 target every second, keeps its data in a temporary directory, and runs in
its own process group so that stopping it ends it and nothing else.

    async with running_prometheus("127.0.0.1:8080", tmp_path) as prom:
        await prom.wait_for('up{job="target"} == 1')
        result = await prom.query("sum(supervisor_requests_total)")
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp

BINARY = os.environ.get("PROMETHEUS_BINARY", "/usr/bin/prometheus")
JOB = "target"
POLL = 0.2  # seconds between polls


class PrometheusError(RuntimeError):
    pass


def find_binary() -> str | None:
    """The prometheus binary, or None (setup.sh installs Debian's `prometheus`)."""
    if Path(BINARY).is_file() and os.access(BINARY, os.X_OK):
        return BINARY
    return shutil.which("prometheus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def config(target: str | list[str], metrics_path: str = "/metrics") -> str:
    # JSON is YAML: no YAML writer needed.
    targets = [target] if isinstance(target, str) else target
    return json.dumps({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": JOB, "metrics_path": metrics_path,
            "static_configs": [{"targets": targets}],
        }],
    }, indent=2)


class Prometheus:
    """A started Prometheus; `url` is its HTTP API on 127.0.0.1."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log
        self._http: aiohttp.ClientSession | None = None  # made on the loop, at first query

    async def query(self, expr: str) -> dict[str, Any]:
        """Run an instant query; return the `data` object or raise with Prometheus's error."""
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        async with self._http.get(f"{self.url}/api/v1/query", params={"query": expr}) as r:
            body: dict[str, Any] = await r.json(content_type=None)
        if r.status != 200 or body.get("status") != "success":
            raise PrometheusError(
                f"{expr!r}: HTTP {r.status} {body.get('errorType')}: {body.get('error')}")
        data: dict[str, Any] = body["data"]
        return data

    async def wait_for(self, expr: str, within: float = 20.0) -> list[dict[str, Any]]:
        """Poll until `expr` returns a non-empty vector (e.g. the first scrape landed)."""
        for _ in range(max(1, round(within / POLL))):
            rows: list[dict[str, Any]] = (await self.query(expr))["result"]
            if rows:
                return rows
            await asyncio.sleep(POLL)
        raise PrometheusError(f"{expr!r} still empty after {within:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # its own group: only what it started
            try:
                await asyncio.to_thread(self.process.wait, 10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                await asyncio.to_thread(self.process.wait, 10)


def launch(target: str | list[str], workdir: Path, binary: str | None = None) -> Prometheus:
    """Start Prometheus on a free 127.0.0.1 port, scraping `target` (host:port) every second."""
    binary = binary or find_binary()
    if binary is None:
        raise PrometheusError("no prometheus binary: apt-get install prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(config(target))
    log = workdir / "prometheus.log"
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, cwd=workdir,
        )
    return Prometheus(process, f"http://127.0.0.1:{port}", log)


async def start_prometheus(
    target: str | list[str], workdir: Path, binary: str | None = None
) -> Prometheus:
    """`launch` off the event loop, then wait until Prometheus answers /-/ready."""
    prom = await asyncio.to_thread(launch, target, workdir, binary)
    try:
        await _wait_ready(prom)
    except BaseException:
        await prom.stop()
        raise
    return prom


async def _wait_ready(prom: Prometheus, within: float = 30.0) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        for _ in range(round(within / POLL)):
            if prom.process.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with {prom.process.returncode}:\n{prom.log_tail()}")
            try:
                async with http.get(f"{prom.url}/-/ready") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(POLL)
    raise PrometheusError(f"prometheus not ready in {within:.0f}s:\n{prom.log_tail()}")


@asynccontextmanager
async def running_prometheus(target: str | list[str], workdir: Path) -> AsyncIterator[Prometheus]:
    prom = await start_prometheus(target, workdir)
    try:
        yield prom
    finally:
        await prom.stop()


def load_generator() -> ModuleType:
    """dashboards/generate.py, whose dashboard the suites query on a real Prometheus."""
    from dashboards import generate

    return generate
