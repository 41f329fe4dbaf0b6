"""Fixtures for tests on the real Docker Engine and the real `docker compose`.

Each test gets its own Compose project (so its containers are found, and
removed, by that project's label only) and an in-process supervisor that
listens on a real loopback socket.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from supervisor.app import start_server
from supervisor.config import Config
from supervisor.handle import ModelHandle
from supervisor.proxy import REGISTRY

COMPOSE_FILE = Path(__file__).parent / "compose.yml"
EMPTY_IMAGE = "model-supervisor/empty:latest"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.docker)


def _docker_ok() -> str | None:
    try:
        done = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if done.returncode == 0 else done.stderr.strip()


@pytest.fixture(scope="session")
def docker_engine() -> None:
    problem = _docker_ok()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI needs a Docker Engine: {problem}")
        pytest.skip(f"no Docker Engine: {problem}")
    images = subprocess.run(
        ["docker", "image", "inspect", EMPTY_IMAGE], capture_output=True, check=False
    )
    if images.returncode != 0:
        pytest.fail(f"image {EMPTY_IMAGE} is missing: run scripts/setup.sh first")


def compose(project: str, *args: str) -> str:
    cmd = ["docker", "compose", "-f", str(COMPOSE_FILE), "-p", project, *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout


@pytest.fixture
def project(docker_engine: None) -> Iterator[str]:
    """A Compose project of this test alone, removed with its containers afterwards."""
    name = f"mstest-{uuid.uuid4().hex[:8]}"
    yield name
    compose(name, "--profile", "*", "down", "--timeout", "1")


def starts(project: str, service: str) -> int:
    """How many times the stand-in of `service` started (it logs one line per start)."""
    logs = compose(project, "logs", "--no-log-prefix", service)
    return sum(1 for line in logs.splitlines() if line.startswith("standin: starting"))


def container_running(project: str, service: str) -> bool:
    return bool(compose(project, "ps", "--status", "running", "-q", service).strip())


MODELS: dict[str, dict[str, Any]] = {
    "chat-fast": {"service": "chat-fast", "upstream": "http://127.0.0.1:19101"},
    "chat-slow": {"service": "chat-slow", "upstream": "http://127.0.0.1:19102"},
    "crashy": {"service": "crashy", "upstream": "http://127.0.0.1:19103"},
    "sleepy": {"service": "sleepy", "upstream": "http://127.0.0.1:19104"},
    "slow-stop": {"service": "slow-stop", "upstream": "http://127.0.0.1:19106"},
    # Two profiles of one model; the stand-ins enforce 2048 and 8192 like vLLM does.
    "ctx": {
        "upstream": "http://127.0.0.1:19105",
        "default_profile": "short",
        "profiles": {
            "short": {"service": "short-ctx", "max_model_len": 2048},
            "long": {"service": "long-ctx", "max_model_len": 8192},
        },
        "min_residency": "0s",
        "default_output_tokens": 16,
    },
}


@dataclass
class Supervisor:
    runner: web.AppRunner
    url: str
    project: str

    def handle(self, name: str) -> ModelHandle:
        return self.runner.app[REGISTRY].handles[name]

    async def stop(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def supervisor_factory(project: str) -> AsyncIterator[Callable[..., Any]]:
    """Start supervisors on 127.0.0.1:<free port> for this test's project.

    `models` maps a model name to overrides of its entry in MODELS.
    """
    running: list[Supervisor] = []

    async def make(models: dict[str, dict[str, Any]]) -> Supervisor:
        config = Config(
            listen="127.0.0.1:0",
            compose={"file": COMPOSE_FILE, "project": project},
            models={name: {**MODELS[name], **extra} for name, extra in models.items()},
        )
        runner = await start_server(config)
        host, port = runner.addresses[0][:2]
        sup = Supervisor(runner, f"http://{host}:{port}", project)
        running.append(sup)
        return sup

    yield make
    for sup in running:
        await sup.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


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


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}
