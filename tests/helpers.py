"""Helpers shared by the suites that run on the real Docker Engine."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from supervisor.app import admin_url, start_server
from supervisor.config import Config, load_config
from supervisor.lifecycle.handle import ModelHandle
from supervisor.proxy.appkeys import REGISTRY

EMPTY_IMAGE = "model-supervisor/empty:latest"
# How long to wait for what is bound to happen. A deadline, never the behaviour under test:
# a loaded 2-core CI machine may take many times the usual, and a test that judges by a
# short window fails there without a fault. What a test proves it reads from an event.
PATIENCE = 60.0


def unavailable(what: str, reason: str) -> None:
    """Skip, with the reason printed, where this machine cannot make `what`; fail on CI,
    which can."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI needs {what}: {reason}")
    print(f"skipped: {reason}")
    pytest.skip(reason)


def require_docker() -> None:
    """Skip without a Docker Engine, except in CI, where its absence is a failure."""
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20)
        problem = None if done.returncode == 0 else done.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = str(exc)
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs a Docker Engine: {problem}")
        pytest.skip(f"no Docker Engine: {problem}")
    image = subprocess.run(["docker", "image", "inspect", EMPTY_IMAGE], capture_output=True)
    if image.returncode != 0:
        pytest.fail(f"image {EMPTY_IMAGE} is missing: run scripts/setup.sh first")


@dataclass
class ComposeProject:
    """A Compose project of the tests' own: its containers are found and removed by its name."""

    file: Path
    env_file: Path | None = None
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"mstest-{uuid.uuid4().hex[:8]}"

    def run(self, *args: str) -> str:
        cmd = ["docker", "compose", "-f", str(self.file)]
        if self.env_file is not None:
            cmd += ["--env-file", str(self.env_file)]
        cmd += ["-p", self.name, *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout

    def down(self) -> None:
        self.run("--profile", "*", "down", "--timeout", "1")

    def running(self, service: str) -> bool:
        return bool(self.run("ps", "--status", "running", "-q", service).strip())

    def containers(self, service: str) -> int:
        return len(self.run("ps", "--all", "-q", service).split())

    def log_lines(self, service: str, prefix: str) -> int:
        logs = self.run("logs", "--no-log-prefix", service)
        return sum(1 for line in logs.splitlines() if prefix in line)

    def compose_config(self) -> dict[str, Any]:
        compose: dict[str, Any] = {"file": self.file, "project": self.name}
        if self.env_file is not None:
            compose["env_file"] = self.env_file
        return compose


@dataclass
class Supervisor:
    """An in-process supervisor on a real loopback socket."""

    runner: web.AppRunner
    url: str
    admin: str = ""  # the admin API's base URL

    def handle(self, name: str) -> ModelHandle:
        return self.runner.app[REGISTRY].handles[name]

    async def stop(self) -> None:
        await self.runner.cleanup()


async def start_supervisor(
    project: ComposeProject, models: dict[str, Any], **settings: Any
) -> Supervisor:
    """Proxy and admin API on free loopback ports; `settings` are more top-level config keys."""
    settings.setdefault("admin", {"listen": "127.0.0.1:0"})
    config = Config(listen="127.0.0.1:0", compose=project.compose_config(), models=models,
                    **settings)
    return await _start(config, None)


async def start_supervisor_from_file(path: Path) -> Supervisor:
    """As `model-supervisor serve --config path` does (reload re-reads that file)."""
    return await _start(load_config(path), path)


async def _start(config: Config, path: Path | None) -> Supervisor:
    runner = await start_server(config, config_path=path)
    host, port = runner.addresses[0][:2]
    return Supervisor(runner, f"http://{host}:{port}", admin_url(runner))


async def wait_for(predicate: Callable[[], Any], within: float, what: str) -> None:
    """Poll `predicate` (sync or async) until true; fail naming `what` at the deadline."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.05)


async def scrape(session: aiohttp.ClientSession, sup: Supervisor) -> str:
    """GET /metrics on the supervisor's proxy port, as Prometheus scrapes it."""
    async with session.get(sup.url + "/metrics") as r:
        assert r.status == 200, await r.text()
        return await r.text()


def metric_value(exposition: str, name: str, **labels: str) -> float:
    """The value of the series `name{labels}` (exactly these labels) in a Prometheus text
    exposition. A series that is not exported fails the test: it is not read as 0."""
    others = []
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name != name:
                continue
            if sample.labels == labels:
                return float(sample.value)
            others.append(sample.labels)
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pytest.fail(f"series {name}{{{wanted}}} is not exported; series of that name: "
                f"{others or 'none'}")


# The sample names a family of that name exports (a counter `x` exports `x_total`, ...).
_SAMPLE_SUFFIXES = ("", "_total", "_created", "_count", "_sum", "_bucket", "_gcount", "_gsum",
                    "_info")


def series_sum(exposition: str, name: str, **labels: str) -> float:
    """The sum over the series of `name` that carry (at least) `labels` in a Prometheus text
    exposition. The metric family must be exported: a labelled counter shows its HELP and
    TYPE before its first increment, so 0 here means "none counted", never "not exported";
    a family that is absent fails the test."""
    families = [f for f in text_string_to_metric_families(exposition)
                if name in {f.name + suffix for suffix in _SAMPLE_SUFFIXES}]
    if not families:
        pytest.fail(f"metric family of {name} is not in the exposition")
    return sum(sample.value for family in families for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


def poll(what: str, within: float, check: Callable[[], bool]) -> float:
    """Seconds until `check()` holds (checked every 50 ms, blocking: for synchronous tests;
    `wait_for` is the asynchronous one); fails naming `what` at the deadline."""
    began = time.monotonic()
    while not check():
        if time.monotonic() - began > within:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - began


async def model_status(
    session: aiohttp.ClientSession, sup: Supervisor, name: str, token: str | None = None
) -> dict[str, Any]:
    """GET /admin/models/{name}: state, profile, in-flight, held, ..."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.get(f"{sup.admin}/admin/models/{name}", headers=headers) as r:
        assert r.status == 200, await r.text()
        status: dict[str, Any] = await r.json()
        return status


Event = dict[str, Any]


def event_matching(events: list[Event], **fields: str) -> Event | None:
    """The first lifecycle event (as `GET /admin/events` lists them) whose fields equal
    `fields`; `from_` stands for the field `from`."""
    wanted = {("from" if k == "from_" else k): v for k, v in fields.items()}
    return next((e for e in events if wanted.items() <= e.items()), None)


def poll_event(admin: str, what: str, within: float = PATIENCE, **fields: str) -> Event:
    """Blocking: wait for a lifecycle event of the supervisor whose admin API is `admin`
    (for supervisors in a process of their own); fails naming `what` at the deadline."""
    found: list[Event] = []

    def seen() -> bool:
        with urllib.request.urlopen(admin + "/admin/events", timeout=10) as r:
            event = event_matching(json.loads(r.read())["events"], **fields)
        found[:] = [event] if event is not None else []
        return bool(found)

    poll(what, within, seen)
    return found[0]


async def wait_for_event(session: aiohttp.ClientSession, sup: Supervisor, what: str,
                         within: float = PATIENCE, **fields: str) -> Event:
    """Wait for a lifecycle event (`GET /admin/events`) whose fields equal `fields`."""
    found: list[Event] = []

    async def seen() -> bool:
        async with session.get(f"{sup.admin}/admin/events") as r:
            assert r.status == 200, await r.text()
            event = event_matching((await r.json())["events"], **fields)
        found[:] = [event] if event is not None else []
        return bool(found)

    await wait_for(seen, within, what)
    return found[0]
