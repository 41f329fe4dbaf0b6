"""Replicas of one model on the real Engine and Compose (issue 14's proof): two replica
services (compose-replicas.yml), 64 concurrent clients through the supervisor. The second
replica starts under the load, both serve a real share, none of the requests is lost, and
once the load is gone the extra replica stops after idle_timeout while the first, kept by
min_replicas, stays."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from supervisor.lifecycle.replicas import ReplicaSet
from supervisor.rules.table import State
from tests.helpers import (
    ComposeProject,
    Supervisor,
    metric_value,
    model_status,
    scrape,
    start_supervisor,
    wait_for,
)

from .conftest import chat

COMPOSE = Path(__file__).parent / "compose-replicas.yml"
PORTS = {"vox#1": 19161, "vox#2": 19162}
IDLE = 3.0
CLIENTS, LOAD_SECONDS = 64, 8.0
VOX = {
    "replicas": [{"service": "vox-a", "upstream": "http://127.0.0.1:19161"},
                 {"service": "vox-b", "upstream": "http://127.0.0.1:19162"}],
    "target_concurrency": 16, "min_replicas": 1, "idle_timeout": f"{IDLE}s",
    "stop_timeout": "5s", "startup_timeout": "60s",
}


@pytest.fixture
def compose(docker_engine: None) -> Iterator[ComposeProject]:
    project = ComposeProject(COMPOSE)
    yield project
    project.down()


@pytest.fixture
async def sup(compose: ComposeProject) -> AsyncIterator[Supervisor]:
    running = await start_supervisor(compose, {"vox": VOX})
    yield running
    await running.stop()


async def served_by_server(http: aiohttp.ClientSession, port: int) -> int:
    """Completions the stand-in itself answered (its own count, not the supervisor's)."""
    async with http.get(f"http://127.0.0.1:{port}/standin/stats") as r:
        return int((await r.json())["requests"].get("POST /v1/chat/completions", 0))


async def test_two_replicas_share_64_clients_and_the_extra_one_stops_after_the_load(
    sup: Supervisor, compose: ComposeProject, http: aiohttp.ClientSession,
) -> None:
    vox = sup.handle("vox")
    assert isinstance(vox, ReplicaSet)
    first, second = vox.replicas
    await wait_for(lambda: first.state is State.READY, 60, "vox#1 up (min_replicas: 1)")
    assert second.state is State.STOPPED

    statuses: list[int] = []
    url = sup.url + "/v1/chat/completions"
    deadline = time.monotonic() + LOAD_SECONDS

    async def client() -> None:
        while time.monotonic() < deadline:
            async with http.post(url, json=chat("vox")) as r:
                await r.read()
                statuses.append(r.status)

    began = time.monotonic()
    load = asyncio.gather(*(client() for _ in range(CLIENTS)))
    await wait_for(lambda: second.state is not State.STOPPED, 10, "vox#2 started by the load")
    started_after = time.monotonic() - began
    await wait_for(lambda: second.state is State.READY, 60, "vox#2 ready")
    await load
    load_end = time.monotonic()

    split = {name: await served_by_server(http, port) for name, port in PORTS.items()}
    total = len(statuses)
    print(f"\n{total} requests from {CLIENTS} clients in {load_end - began:.1f} s; vox#2 "
          f"started {started_after:.2f} s in; served: " + ", ".join(
              f"{n} {c} ({100 * c / total:.0f} %)" for n, c in split.items()))
    assert statuses == [200] * total  # none lost
    assert sum(split.values()) == total
    assert dict(zip(PORTS, vox.granted, strict=True)) == split
    assert min(split.values()) >= 0.15 * total, split  # both served a real share

    status = await model_status(http, sup, "vox")
    assert [(r["name"], r["state"], r["served"]) for r in status["replicas"]] == [
        ("vox#1", "ready", split["vox#1"]), ("vox#2", "ready", split["vox#2"])]
    metrics = await scrape(http, sup)
    assert metric_value(metrics, "supervisor_replica_requests_total", model="vox",
                        replica="vox#2") == split["vox#2"]
    assert metric_value(metrics, "supervisor_replica_state", model="vox", replica="vox#2",
                        state="ready") == 1

    # The load is gone: vox#2 goes after idle_timeout, vox#1 (min_replicas) stays.
    await wait_for(lambda: second.state is not State.READY, IDLE + 5, "vox#2 to stop")
    decided = time.monotonic() - load_end
    await wait_for(lambda: second.state is State.STOPPED, 30, "vox#2 stopped")
    print(f"vox#2 stopping {decided:.2f} s after the load (idle_timeout {IDLE:g} s)")
    assert IDLE - 0.5 <= decided <= IDLE + 2
    assert not compose.running("vox-b")
    assert first.state is State.READY and compose.running("vox-a")


def test_check_config_names_a_replica_service_the_compose_file_lacks(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    bad = {**VOX, "replicas": [VOX["replicas"][0], {**VOX["replicas"][1], "service": "vox-c"}]}
    config.write_text(json.dumps(
        {"compose": {"file": str(COMPOSE), "project": "checkcfg"}, "models": {"vox": bad}}))
    done = subprocess.run([sys.executable, "-m", "supervisor", "check-config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "models.vox.replicas.1.service: 'vox-c' is not a service of" in done.stderr
