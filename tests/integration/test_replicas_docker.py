"""Replicas of one model on the real Engine and Compose (issue 14's proof): two replica
services (compose-replicas.yml), 64 concurrent clients through the supervisor. The second
replica starts under the load, both serve a real share, none of the requests is lost, and
once the load is gone the extra replica stops after idle_timeout while the first, kept by
min_replicas, stays."""

from __future__ import annotations

import asyncio
import json
import logging
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
    PATIENCE,
    ComposeProject,
    Supervisor,
    metric_value,
    model_status,
    scrape,
    start_supervisor,
    wait_for,
    wait_for_event,
)

from .conftest import chat

COMPOSE = Path(__file__).parent / "compose-replicas.yml"
PORTS = {"vox#1": 19161, "vox#2": 19162}
IDLE = 3.0
CLIENTS, AFTER = 64, 20  # clients; requests each once both replicas are ready
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
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="supervisor.lifecycle")
    vox = sup.handle("vox")
    assert isinstance(vox, ReplicaSet)
    first, second = vox.replicas
    await wait_for(lambda: first.state is State.READY, PATIENCE, "vox#1 up (min_replicas: 1)")
    assert second.state is State.STOPPED

    statuses: list[int] = []
    url = sup.url + "/v1/chat/completions"
    both_ready = asyncio.Event()
    finished: list[float] = []  # when each client sent its last

    async def client() -> None:
        # Until vox#2 is ready (however long its start takes here), then AFTER more each.
        while not both_ready.is_set():
            await one()
        for _ in range(AFTER):
            await one()
        finished.append(time.time())

    async def one() -> None:
        async with http.post(url, json=chat("vox")) as r:
            await r.read()
            statuses.append(r.status)

    began = time.monotonic()
    load = asyncio.gather(*(client() for _ in range(CLIENTS)))
    try:
        await wait_for(lambda: second.state is not State.STOPPED, PATIENCE,
                       "vox#2 started by the load")
        started_after = time.monotonic() - began
        await wait_for(lambda: second.state is State.READY, PATIENCE, "vox#2 ready")
        at_ready = {name: await served_by_server(http, port) for name, port in PORTS.items()}
        both_ready.set()
        await load
    finally:
        load.cancel()
        await asyncio.gather(load, return_exceptions=True)
    took = time.monotonic() - began

    split = {name: await served_by_server(http, port) for name, port in PORTS.items()}
    shared = {name: split[name] - at_ready[name] for name in PORTS}  # with both ready
    total = len(statuses)
    print(f"\n{total} requests from {CLIENTS} clients in {took:.1f} s; vox#2 started "
          f"{started_after:.2f} s in; once both were ready: " + ", ".join(
              f"{n} {c} ({100 * c / sum(shared.values()):.0f} %)" for n, c in shared.items()))
    assert statuses == [200] * total  # none lost
    assert sum(split.values()) == total
    assert dict(zip(PORTS, vox.granted, strict=True)) == split
    assert min(shared.values()) >= 0.15 * sum(shared.values()), shared  # both a real share
    assert "requests outstanding on 1 replica(s) up (target_concurrency 16): starting vox#2" \
        in caplog.text  # started for the load

    status = await model_status(http, sup, "vox")
    assert [(r["name"], r["state"], r["served"]) for r in status["replicas"]] == [
        ("vox#1", "ready", split["vox#1"]), ("vox#2", "ready", split["vox#2"])]
    metrics = await scrape(http, sup)
    assert metric_value(metrics, "supervisor_replica_requests_total", model="vox",
                        replica="vox#2") == split["vox#2"]
    assert metric_value(metrics, "supervisor_replica_state", model="vox", replica="vox#2",
                        state="ready") == 1

    # The load is gone: vox#2 goes once not needed for idle_timeout, vox#1 (min_replicas)
    # stays. One replica suffices once no more than target_concurrency (16) clients are
    # left, so that is when vox#2's timer may start: not before IDLE after it.
    one_suffices = sorted(finished)[CLIENTS - VOX["target_concurrency"] - 1]
    stop = await wait_for_event(http, sup, "vox#2 to stop", model="vox#2", from_="ready",
                                event="stop")
    await wait_for(lambda: second.state is State.STOPPED, PATIENCE, "vox#2 stopped")
    decided = stop["time"] - one_suffices
    print(f"vox#2 stopping {decided:.2f} s after one replica sufficed "
          f"(idle_timeout {IDLE:g} s)")
    assert decided >= IDLE - 0.5, stop
    assert f"vox#2 not needed by the load for {IDLE:.0f}s: stopping it" in caplog.text
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
