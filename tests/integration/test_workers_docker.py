"""`workers: 3` (docs/multi-worker.md): the owner and two worker processes share the proxy
port. Real `python -m supervisor serve`, real Docker and Compose, the stand-ins. Many
connections spread over the three processes (the kernel's SO_REUSEPORT), so each check
below meets the workers with near certainty (a third of the connections each)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import PATIENCE, ComposeProject, poll, poll_event, wait_for

from .conftest import COMPOSE_FILE, MODELS, chat, compose_project
from .supervisor_process import SupervisorProcess, http_get

CONNECTIONS = 24
MODEL = "chat-fast"


@contextlib.contextmanager
def running(tmp_path: Path, config: dict[str, Any]) -> Iterator[SupervisorProcess]:
    """A supervisor with `workers: N`, once the owner and its N - 1 workers are alive."""
    process = SupervisorProcess(tmp_path, config)
    try:
        process.start()
        poll("the owner and its workers alive", PATIENCE,
             lambda: sum(w["alive"] for w in workers(process)) == config["workers"])
        yield process
    finally:
        process.stop()
        print(f"supervisor log (tail):\n{process.log_tail(200)}")


@pytest.fixture
def sup(project: str, tmp_path: Path) -> Iterator[SupervisorProcess]:
    with running(tmp_path, {
        "compose": {"file": str(COMPOSE_FILE), "project": compose_project(project).name},
        "workers": 3, "journal": str(tmp_path / "journal.jsonl"),
        "models": {MODEL: {**MODELS[MODEL], "idle_timeout": "2s", "stop_timeout": "1s",
                           "startup_timeout": "30s"}},
    }) as process:
        yield process


def workers(sup: SupervisorProcess) -> list[dict[str, Any]]:
    return http_get(sup.admin + "/admin/workers")[1]["workers"]


def journal(sup: SupervisorProcess) -> list[dict[str, Any]]:
    """Its complete lines (the owner's thread may be writing the last one)."""
    path = sup.config_path.parent / "journal.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.split("\n")[:-1]]


def state(sup: SupervisorProcess) -> str:
    return http_get(sup.admin + f"/admin/models/{MODEL}")[1]["state"]


def requests_total(sup: SupervisorProcess) -> int:
    import urllib.request
    with urllib.request.urlopen(sup.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return int(sum(float(v) for v in re.findall(
        r'^supervisor_requests_total\{[^}]*model="chat-fast"[^}]*\} (\S+)$', text, re.M)))


async def each_connection(sup: SupervisorProcess, n: int, body: dict[str, Any],
                          per_connection: int = 1, key: str | None = None
                          ) -> list[tuple[int, Any]]:
    """`per_connection` requests on each of `n` keep-alive connections at once (with a
    client's `key`, where given)."""
    headers = {"Authorization": f"Bearer {key}"} if key else None

    async def one() -> list[tuple[int, Any]]:
        out = []
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=1, force_close=False),
                headers=headers) as http:
            for _ in range(per_connection):
                async with http.post(sup.url + "/v1/chat/completions", json=body) as r:
                    out.append((r.status, await r.read()))
        return out
    results = await asyncio.gather(*(one() for _ in range(n)))
    return [x for rows in results for x in rows]


async def test_requests_spread_counted_and_a_killed_worker_comes_back(sup) -> None:
    # A cold model: every process holds (a worker relays to the owner) and answers.
    cold = await each_connection(sup, CONNECTIONS, chat(MODEL))
    assert [s for s, _ in cold] == [200] * CONNECTIONS
    hot = await each_connection(sup, CONNECTIONS, chat(MODEL), per_connection=20)
    assert all(s == 200 for s, _ in hot)
    sent = len(cold) + len(hot)
    poll("every request counted (workers report once a second)", PATIENCE,
         lambda: requests_total(sup) == sent)
    rows = workers(sup)
    assert sum(1 for w in rows if w["requests_forwarded"] > 0) > 1, rows
    # Every request is in the journal, the workers' too (they send theirs once a second;
    # the owner writes every second).
    poll("a journal line per request", PATIENCE, lambda: len(journal(sup)) >= sent)
    lines = journal(sup)
    assert len(lines) == sent
    assert {(line["model"], line["status"]) for line in lines} == {(MODEL, 200)}
    # Kill a worker: it is restarted, and the port keeps answering meanwhile.
    victim = next(w for w in rows if w["role"] == "worker")
    os.kill(victim["pid"], signal.SIGKILL)
    # Once it is gone (clients queued at its listener when it died are reset, as with a
    # crashed nginx worker), the others answer while its slot restarts.
    poll("the killed worker's slot restarted", PATIENCE,
         lambda: next(w for w in workers(sup) if w["slot"] == victim["slot"])["restarts"] == 1)
    again = await each_connection(sup, CONNECTIONS, chat(MODEL))
    assert [s for s, _ in again] == [200] * CONNECTIONS
    poll("every worker alive again", PATIENCE, lambda: all(w["alive"] for w in workers(sup)))
    assert requests_total(sup) >= sent  # the dead worker's totals are kept


async def test_idle_stop_counts_worker_streams_and_force_stop_aborts_worker_requests(
        sup) -> None:
    await each_connection(sup, 1, chat(MODEL))  # start it
    assert state(sup) == "ready"
    # Streams of ~4.5 s on every process, longer than idle_timeout (2 s).
    stream = chat(MODEL, stream=True, max_tokens=15, stream_delay=0.3)

    async def streams() -> tuple[list[tuple[int, Any]], float]:
        return await each_connection(sup, CONNECTIONS, stream), time.time()

    task = asyncio.ensure_future(streams())
    while not task.done():
        assert await asyncio.to_thread(state, sup) == "ready"  # never stopped under one
        await asyncio.sleep(0.1)
    answers, ended = task.result()
    assert all(s == 200 and b"[DONE]" in body for s, body in answers)
    # It stops because it was idle (the idle timer, not a stop for another reason), and
    # not before idle_timeout (2 s) after the last stream: the owner counted the workers'.
    idle = await asyncio.to_thread(poll_event, sup.admin, "the idle stop", model=MODEL,
                                   from_="ready", event="idle")
    assert idle["time"] - ended > 1.5, idle
    await wait_for(lambda: _is(sup, "stopped"), PATIENCE, "the model to stop")
    # Force stop under slow requests on every process: each is answered 503 model_stopped.
    await each_connection(sup, 1, chat(MODEL))
    slow = asyncio.ensure_future(each_connection(sup, CONNECTIONS, chat(MODEL, delay=5)))
    await wait_for(lambda: _in_flight(sup), PATIENCE, "every request in flight on its process")
    status, _ = await asyncio.to_thread(_force_stop, sup)
    assert status == 202  # accepted: the stop goes on
    answers = await slow
    assert [s for s, _ in answers] == [503] * CONNECTIONS
    assert all(b"model_stopped" in body for _, body in answers)


async def _is(sup: SupervisorProcess, wanted: str) -> bool:
    return await asyncio.to_thread(state, sup) == wanted


async def _in_flight(sup: SupervisorProcess) -> bool:
    rows = await asyncio.to_thread(workers, sup)
    return sum(w["in_flight"] for w in rows) == CONNECTIONS


def _force_stop(sup: SupervisorProcess) -> tuple[int, Any]:
    import urllib.request
    req = urllib.request.Request(sup.admin + f"/admin/models/{MODEL}/stop",
                                 data=json.dumps({"force": True}).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, json.loads(r.read())


@pytest.fixture
def keyed(project: str, tmp_path: Path) -> Iterator[SupervisorProcess]:
    """`workers: 2` and two named clients: `one` with `max_concurrent: 1`, `free` with no
    limit."""
    for name in ("one", "free"):
        (tmp_path / f"{name}.keys").write_text(f"sk-{name}\n")
    with running(tmp_path, {
        "compose": {"file": str(COMPOSE_FILE), "project": compose_project(project).name},
        "workers": 2,
        "clients": {"one": {"key_file": str(tmp_path / "one.keys"), "max_concurrent": 1},
                    "free": {"key_file": str(tmp_path / "free.keys")}},
        "models": {MODEL: {**MODELS[MODEL], "stop_timeout": "1s", "startup_timeout": "30s"}},
    }) as process:
        yield process


def used(sup: SupervisorProcess, client: str) -> int:
    """The requests `GET /admin/usage` counts for a client."""
    return int(http_get(sup.admin + "/admin/usage")[1]["clients"][client]["total"]["requests"])


def client_requests_metric(sup: SupervisorProcess, client: str) -> float:
    import urllib.request
    with urllib.request.urlopen(sup.url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(v) for v in re.findall(
        rf'^supervisor_client_requests_total\{{[^}}]*client="{client}"[^}}]*\}} (\S+)$',
        text, re.M))


async def test_client_limits_hold_across_processes_and_usage_counts_once(keyed) -> None:
    """A client's `max_concurrent` holds for the supervisor, not a process: 8 slow
    requests at once over 8 connections (spread over both processes by the kernel; with a
    slot a process, each process would answer one) get one answer and seven 429s. An
    unlimited client's requests, many forwarded by the worker itself, are each counted
    once in `GET /admin/usage` and the client metrics (the worker sends its share)."""
    assert [s for s, _ in await each_connection(keyed, 1, chat(MODEL), key="sk-free")] == [200]
    limited = await each_connection(keyed, 8, chat(MODEL, delay=2), key="sk-one")
    assert sorted(s for s, _ in limited) == [200] + [429] * 7, limited
    assert all(b"rate_limited" in body for s, body in limited if s == 429)
    sent = 1
    for _ in range(2):  # twice: a worker that sent totals, not what is new, would show
        free = await each_connection(keyed, 8, chat(MODEL), per_connection=3, key="sk-free")
        assert [s for s, _ in free] == [200] * 24
        sent += 24
        poll("every request of `free` in its usage (workers send it once a second)",
             PATIENCE, lambda n=sent: used(keyed, "free") >= n)
        assert used(keyed, "free") == sent
    assert used(keyed, "one") == 1
    assert client_requests_metric(keyed, "free") == sent
    worker = next(w for w in workers(keyed) if w["role"] == "worker")
    assert worker["requests_forwarded"] > 0, worker  # some were the worker's to send


REPLICAS_COMPOSE = Path(__file__).parent / "compose-replicas.yml"
VOX = {
    "replicas": [{"service": "vox-a", "upstream": "http://127.0.0.1:19161"},
                 {"service": "vox-b", "upstream": "http://127.0.0.1:19162"}],
    "min_replicas": 2, "target_concurrency": 16, "stop_timeout": "1s",
    "startup_timeout": "60s",
}


@pytest.fixture
def replicas(docker_engine: None, tmp_path: Path) -> Iterator[SupervisorProcess]:
    compose = ComposeProject(REPLICAS_COMPOSE)
    try:
        with running(tmp_path, {"compose": {"file": str(REPLICAS_COMPOSE),
                                            "project": compose.name},
                                "workers": 2, "journal": str(tmp_path / "journal.jsonl"),
                                "models": {"vox": VOX}}) as process:
            yield process
    finally:
        compose.down()


def served_by_server(port: int) -> int:
    """Completions the stand-in itself answered (its own count, not the supervisor's)."""
    _, body = http_get(f"http://127.0.0.1:{port}/standin/stats")
    return int(body["requests"].get("POST /v1/chat/completions", 0))


async def test_a_worker_forwards_to_the_replicas_of_a_model(replicas) -> None:
    """`workers: 2` and a model with two replicas: the worker process forwards to them
    itself (its own forwarded count), and every request reaches a replica's server and,
    once the supervisor stopped, the journal (what the worker had not sent yet, it sends
    as it exits)."""
    def both_ready() -> bool:
        rows = http_get(replicas.admin + "/admin/models/vox")[1]["replicas"]
        return [r["state"] for r in rows] == ["ready", "ready"]
    poll("both replicas ready (min_replicas: 2, started with the supervisor)", PATIENCE,
         both_ready)
    answers = await each_connection(replicas, CONNECTIONS, chat("vox"), per_connection=10)
    assert [s for s, _ in answers] == [200] * len(answers)
    worker = next(w for w in workers(replicas) if w["role"] == "worker")
    poll("the worker's forwarded count reported (once a second)", PATIENCE,
         lambda: next(w for w in workers(replicas) if w["slot"] == worker["slot"])
         ["requests_forwarded"] > 0)
    assert served_by_server(19161) + served_by_server(19162) == len(answers)
    # More, then a stop at once: the worker has not reported them yet; it does as it exits.
    answers += await each_connection(replicas, CONNECTIONS, chat("vox"))
    replicas.stop()
    assert [(x["model"], x["status"]) for x in journal(replicas)] == [("vox", 200)] * len(
        answers)
