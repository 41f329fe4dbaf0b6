"""Fixtures for tests on the real Docker Engine and the real `docker compose`.

Each test gets its own Compose project (so its containers are found, and
removed, by that project's label only) and an in-process supervisor that
listens on a real loopback socket.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import ComposeProject, Supervisor, require_docker, start_supervisor, wait_for
from tests.integration.prometheus_harness import find_binary

COMPOSE_FILE = Path(__file__).parent / "compose.yml"
__all__ = ["COMPOSE_FILE", "chat", "compose_project", "container_running", "starts", "wait_for"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def docker_engine() -> None:
    require_docker()


@pytest.fixture
def prometheus_binary() -> str:
    binary = find_binary()
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs prometheus: apt-get install prometheus")
        pytest.skip("no prometheus binary (apt-get install prometheus)")
    return binary


_PROJECTS: dict[str, ComposeProject] = {}


@pytest.fixture
def project(docker_engine: None) -> Iterator[str]:
    """A Compose project of this test alone, removed with its containers afterwards."""
    compose = ComposeProject(COMPOSE_FILE)
    _PROJECTS[compose.name] = compose
    yield compose.name
    compose.down()
    del _PROJECTS[compose.name]


def starts(project: str, service: str) -> int:
    """How many times the stand-in of `service` started (it logs one line per start)."""
    return _PROJECTS[project].log_lines(service, "standin: starting")


def container_running(project: str, service: str) -> bool:
    return _PROJECTS[project].running(service)


MODELS: dict[str, dict[str, Any]] = {
    "chat-fast": {"service": "chat-fast", "upstream": "http://127.0.0.1:19101"},
    "chat-slow": {"service": "chat-slow", "upstream": "http://127.0.0.1:19102"},
    "crashy": {"service": "crashy", "upstream": "http://127.0.0.1:19103"},
    "sleepy": {"service": "sleepy", "upstream": "http://127.0.0.1:19104"},
    "slow-stop": {"service": "slow-stop", "upstream": "http://127.0.0.1:19106"},
    "hangs": {"service": "hangs", "upstream": "http://127.0.0.1:19108"},
    "flaky": {"service": "flaky", "upstream": "http://127.0.0.1:19109"},
    "glacial": {"service": "glacial", "upstream": "http://127.0.0.1:19110"},
    "vllm-like": {"service": "vllm-like", "upstream": "http://127.0.0.1:19113"},
    "pair": {"replicas": [{"service": "pair-a", "upstream": "http://127.0.0.1:19111"},
                          {"service": "pair-b", "upstream": "http://127.0.0.1:19112"}],
             "target_concurrency": 1},
    "sleeper": {"service": "sleeper", "upstream": "http://127.0.0.1:19107",
                "sleep": {"enabled": True, "level": 1}},
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


@pytest.fixture
async def supervisor_factory(project: str) -> AsyncIterator[Callable[..., Any]]:
    """Start supervisors for this test's project; `models` maps a name to overrides."""
    running: list[Supervisor] = []

    async def make(models: dict[str, dict[str, Any]], **settings: Any) -> Supervisor:
        merged = {name: {**MODELS[name], **extra} for name, extra in models.items()}
        sup = await start_supervisor(_PROJECTS[project], merged, **settings)
        running.append(sup)
        return sup

    yield make
    for sup in running:
        await sup.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def compose_project(project: str) -> ComposeProject:
    return _PROJECTS[project]


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}
