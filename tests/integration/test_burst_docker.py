"""Never wedge: the supervisor as a service with LimitNOFILE=1024 (soft and hard 1,024
open files) takes a burst of 2,000 concurrent requests to a stopped model. Every request
is answered (200 after the cold start, or a 503 that says why, with Retry-After), none
hangs, the model starts once, and the admin API answers during the burst. Real
`python -m supervisor serve` (uvloop), real Docker and Compose, the stand-in model."""

from __future__ import annotations

import asyncio
import collections
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import unavailable

from .conftest import COMPOSE_FILE, chat, compose_project, starts
from .supervisor_process import SupervisorProcess, http_get

BURST = 2000
NOFILE = 1024
MODEL = "chat-slow"  # the stand-in listens 3 s after its container starts
CLEAR_503 = {"too_many_connections", "model_overloaded"}


@pytest.fixture
def client_descriptors() -> None:
    """The test itself opens BURST sockets at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = BURST + 512
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            unavailable(f"{want} open files", f"the test needs {want} open files; its hard "
                        f"limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


@pytest.fixture
def supervisor(project: str, tmp_path: Path, client_descriptors: None
               ) -> Iterator[SupervisorProcess]:
    config = {
        "compose": {"file": str(COMPOSE_FILE), "project": compose_project(project).name},
        "models": {MODEL: {
            "service": MODEL, "upstream": "http://127.0.0.1:19102",
            # Hold every request that gets in: what refuses here is the connection limit.
            "max_held": 4096, "hold_timeout": "90s", "startup_timeout": "60s",
            "idle_timeout": "10m", "stop_timeout": "1s"}},
    }
    sup = SupervisorProcess(tmp_path, config, nofile=NOFILE)
    try:
        sup.start()
        yield sup
    finally:
        sup.stop()
        print(f"supervisor log (tail):\n{sup.log_tail(15)}")


async def post(session: aiohttp.ClientSession, url: str) -> tuple[str, str | None, bool]:
    """(status or error name, Retry-After, cold start)."""
    try:
        async with session.post(url + "/v1/chat/completions", json=chat(MODEL)) as r:
            body: dict[str, Any] = await r.json(content_type=None)
            if r.status == 503:
                code = body["error"]["code"]
                return f"503 {code}", r.headers.get("Retry-After"), False
            return str(r.status), None, r.headers.get("X-Supervisor-Cold-Start") == "true"
    except (aiohttp.ClientError, TimeoutError) as exc:
        return type(exc).__name__, None, False


async def watch_admin(sup: SupervisorProcess, done: asyncio.Event,
                      seen: list[tuple[int, float, dict[str, Any]]],
                      peak: dict[str, float]) -> None:
    """GET /admin/models every 50 ms while the burst runs; sample the supervisor's fds."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as admin:
        while not done.is_set():
            peak["fds"] = max(peak["fds"], sup.open_files())
            began = time.monotonic()
            async with admin.get(sup.admin + "/admin/models") as r:
                model = {m["name"]: m for m in (await r.json())["models"]}.get(MODEL, {})
                seen.append((r.status, time.monotonic() - began, model))
            await asyncio.sleep(0.05)


async def test_burst_of_2000_to_a_stopped_model_under_1024_open_files(
    supervisor: SupervisorProcess, project: str
) -> None:
    sup = supervisor
    status, models = http_get(sup.admin + "/admin/models")
    assert status == 200 and models["models"][0]["state"] == "stopped"
    assert f"open files limit: soft {NOFILE} (was {NOFILE}), hard {NOFILE}" in sup.log_text()

    done = asyncio.Event()
    seen: list[tuple[int, float, dict[str, Any]]] = []
    peak = {"fds": 0.0}
    admin = asyncio.create_task(watch_admin(sup, done, seen, peak))
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=90)  # a request still open then: it hung
    began = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        results = await asyncio.gather(*[post(session, sup.url) for _ in range(BURST)])
        burst_seconds = time.monotonic() - began
        done.set()
        await admin

        counts = collections.Counter(status for status, _, _ in results)
        cold = sum(1 for status, _, c in results if status == "200" and c)
        rss = sup.rss_mib()
        print(f"\nburst of {BURST} under {NOFILE} open files: {dict(counts)} "
              f"({cold} of the 200s held through the cold start) in {burst_seconds:.2f}s; "
              f"supervisor peak open files {peak['fds']:.0f}, RSS after {rss:.0f} MiB; "
              f"admin: {len(seen)} answers during the burst, slowest "
              f"{max(s for _, s, _ in seen):.3f}s")
        assert set(counts) <= {"200"} | {f"503 {code}" for code in CLEAR_503}, counts
        assert counts["200"] > 0
        assert all(retry is not None and int(retry) >= 1
                   for status, retry, _ in results if status.startswith("503"))
        assert starts(project, MODEL) == 1
        assert seen and all(status == 200 for status, _, _ in seen)
        assert any(m.get("state") == "starting" and m.get("held", 0) > 0 for _, _, m in seen), (
            "no admin answer came while requests were held")
        log = sup.log_text()
        assert "Too many open files" not in log, "the supervisor ran out of descriptors"

        # Second wave: each refused client retries after its Retry-After, as clients do.
        async def until_served(retry_after: str | None) -> int:
            tries = 0
            while True:
                await asyncio.sleep(int(retry_after or 1))
                tries += 1
                status, retry_after, _ = await post(session, sup.url)
                if status == "200":
                    return tries
                assert status.startswith("503"), status

        retried = [retry for status, retry, _ in results if status != "200"]
        began = time.monotonic()
        async with asyncio.timeout(90):
            tries = await asyncio.gather(*[until_served(r) for r in retried])
        print(f"second wave: {len(retried)} retried, all answered 200 in "
              f"{time.monotonic() - began:.2f}s; tries each: "
              f"{dict(sorted(collections.Counter(tries).items()))}; supervisor RSS "
              f"{sup.rss_mib():.0f} MiB, open files {sup.open_files()}")
    assert starts(project, MODEL) == 1
    assert sup.alive()
    assert "Too many open files" not in sup.log_text()
