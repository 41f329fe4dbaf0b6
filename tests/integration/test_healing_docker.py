"""Faults a shared GPU box has: a container that dies, bodies that cannot be parsed.
Real Engine, real Compose, stand-in servers."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from pathlib import Path

import aiohttp
import pytest

from supervisor.rules.table import State
from tests.helpers import PATIENCE, metric_value, scrape, wait_for_event

from .conftest import chat, compose_project, starts, wait_for


async def test_container_killed_while_idle_the_next_request_is_held_through_a_restart(
    supervisor_factory, project, http
) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    async with http.post(sup.url + "/v1/chat/completions", json=chat("chat-fast")) as r:
        assert r.status == 200
    compose_project(project).run("kill", "chat-fast")  # SIGKILL: no goodbye
    async with http.post(sup.url + "/v1/chat/completions", json=chat("chat-fast")) as r:
        body = await r.json()
        assert r.status == 200, body
        assert body["choices"][0]["message"]["content"] == "stand-in reply"
        assert r.headers["X-Supervisor-Cold-Start"] == "true"
    assert starts(project, "chat-fast") == 2
    assert sup.handle("chat-fast").state is State.READY


async def test_container_killed_mid_stream_cuts_the_stream_and_the_next_request_is_served(
    supervisor_factory, project, http
) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    # A stream that would take 100 s: ending within PATIENCE, without its [DONE], is the cut.
    stream = chat("chat-fast", stream=True, max_tokens=2000, stream_delay=0.05)
    async with http.post(sup.url + "/v1/chat/completions", json=stream) as r:
        assert r.status == 200
        await r.content.readline()  # the stream is under way
        compose_project(project).run("kill", "chat-fast")
        received = b""
        async with asyncio.timeout(PATIENCE):  # ended, not left hanging
            try:
                async for line in r.content:
                    received += line
            except aiohttp.ClientError:  # a cut stream: the connection closes mid-body
                pass
        assert b"[DONE]" not in received
    await wait_for(lambda: sup.handle("chat-fast").in_flight == 0, PATIENCE,
                   "the cut stream to end")
    async with http.post(sup.url + "/v1/chat/completions", json=chat("chat-fast")) as r:
        assert r.status == 200, await r.text()


async def test_deeply_nested_json_gets_400_in_the_openai_shape(supervisor_factory, http) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    body = b'{"model": "chat-fast", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    async with http.post(sup.url + "/v1/chat/completions", data=body,
                         headers={"Content-Type": "application/json"}) as r:
        assert r.status == 400
        assert (await r.json())["error"]["code"] == "invalid_json"
    assert sup.handle("chat-fast").state is State.STOPPED  # nothing started for it


async def test_container_killed_while_idle_is_seen_by_docker_events_without_a_request(
    supervisor_factory, project, http
) -> None:
    sup = await supervisor_factory({"chat-fast": {"liveness": {"interval": 0}}})
    async with http.post(sup.url + "/v1/chat/completions", json=chat("chat-fast")) as r:
        assert r.status == 200
    compose_project(project).run("kill", "chat-fast")
    exited = await wait_for_event(http, sup, "the exit to be seen", model="chat-fast",
                                  from_="ready", to="failed")
    assert exited["event"] == "exited" and "exited" in (exited["error"] or ""), exited


async def test_hung_server_is_detected_restarted_and_held_requests_are_answered(
    supervisor_factory, project, http, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="supervisor.lifecycle")
    interval, timeout, failures = 0.5, 0.4, 3
    sup = await supervisor_factory(
        {"hangs": {"liveness": {"interval": interval, "timeout": timeout,
                                "failures": failures}}})
    for _ in range(3):  # the stand-in answers three, then hangs
        async with http.post(sup.url + "/v1/chat/completions", json=chat("hangs")) as r:
            assert r.status == 200
    hung_at = time.time()
    stuck = asyncio.create_task(http.post(sup.url + "/v1/chat/completions", json=chat("hangs")))
    # Found by its liveness probes (not by the request stuck on it): three missed in a row,
    # so not before the third could time out (probes are spaced from the start of the last).
    dead = await wait_for_event(http, sup, "the hang to be detected", model="hangs",
                                from_="ready", event="unhealthy")
    assert dead["time"] - hung_at >= (failures - 1) * interval + timeout - 0.2, dead
    missed = [r.getMessage() for r in caplog.records if "missed liveness probe" in r.getMessage()]
    assert [m.split(" on ")[0] for m in missed[:failures]] == [
        f"model=hangs missed liveness probe {n} of {failures}" for n in (1, 2, 3)], missed
    response = await stuck  # in flight on the hung server: a clean error, not a hang
    assert response.status == 502
    assert (await response.json())["error"]["code"] == "upstream_died"
    async with http.post(sup.url + "/v1/chat/completions", json=chat("hangs")) as r:
        assert r.status == 200  # held through the restart (a fresh stand-in answers again)
    assert starts(project, "hangs") == 2


@pytest.fixture
def fresh_flaky() -> None:
    """The stand-in `flaky` counts its failed starts in a host folder (see compose.yml)."""
    state = Path("/tmp/model-supervisor-standin")
    state.mkdir(exist_ok=True)
    (state / "flaky.failed-starts").unlink(missing_ok=True)


async def test_crash_loop_backs_off_with_503_and_retry_after_then_serves(
    supervisor_factory, project, http, fresh_flaky
) -> None:
    sup = await supervisor_factory({"flaky": {}})
    handle = sup.handle("flaky")
    failed_at: list[float] = []
    while True:
        async with http.post(sup.url + "/v1/chat/completions", json=chat("flaky")) as r:
            body = await r.json()
        if r.status == 200:
            break
        assert r.status == 503, body
        if "times in a row" in body["error"]["message"]:
            retry_after = int(r.headers["Retry-After"])  # backing off: no start was tried
            assert retry_after >= 1
            await wait_for(lambda: handle.retry_in == 0, retry_after + 1, "the backoff")
            continue
        failed_at.append(time.monotonic())  # a start that failed
        assert len(failed_at) <= 3, body
    gaps = [b - a for a, b in itertools.pairwise(failed_at)]
    print(f"failed starts: {len(failed_at)}, gaps between them: {[round(g, 2) for g in gaps]}")
    assert len(failed_at) == 3
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0  # 1 s, then 2 s of backoff
    assert handle.start_failures == 0 and starts(project, "flaky") == 4


async def _order(http, port: int) -> list[str]:
    async with http.get(f"http://127.0.0.1:{port}/standin/stats") as r:
        return list((await r.json())["order"])


WARMUP = {"path": "/v1/chat/completions",
          "body": {"messages": [{"role": "user", "content": "warm up"}], "max_tokens": 1}}


async def test_warmup_reaches_the_server_before_any_held_request(
    supervisor_factory, http
) -> None:
    sup = await supervisor_factory({"chat-slow": {"warmup": WARMUP}})
    held = [asyncio.create_task(http.post(sup.url + "/v1/chat/completions",
                                          json=chat("chat-slow"))) for _ in range(5)]
    for response in await asyncio.gather(*held):
        assert response.status == 200
        response.release()
    order = await _order(http, 19102)
    assert order[0] == "warmup POST /v1/chat/completions", order
    assert order[1:] == ["request POST /v1/chat/completions"] * 5
    upstream = "supervisor_request_upstream_seconds_count"
    text = ""

    async def all_five_counted() -> bool:  # counted after the last byte reached the client
        nonlocal text
        text = await scrape(http, sup)
        return text.count(upstream + '{model="chat-slow"') == 2 and sum(
            metric_value(text, upstream, model="chat-slow", phase=phase)
            for phase in ("first", "warm")) >= 5

    await wait_for(all_five_counted, PATIENCE, "the five requests in the metrics")
    assert metric_value(text, "supervisor_model_warmup_seconds_count", model="chat-slow",
                        profile="default", outcome="ok") == 1
    assert metric_value(text, upstream, model="chat-slow", phase="first") == 1
    assert metric_value(text, upstream, model="chat-slow", phase="warm") == 4


async def test_warmup_beside_the_held_requests_and_a_failed_one_does_not_fail_the_start(
    supervisor_factory, http
) -> None:
    warmup = {**WARMUP, "path": "/v1/no-such-endpoint", "before_release": False}
    sup = await supervisor_factory({"chat-fast": {"warmup": warmup}})
    async with http.post(sup.url + "/v1/chat/completions", json=chat("chat-fast")) as r:
        assert r.status == 200
    handle = sup.handle("chat-fast")
    await wait_for(lambda: "warm-up failed" in (handle.last_error or ""), PATIENCE,
                   "the warm-up")
    assert handle.state is State.READY
    async with http.get(sup.url + "/metrics") as r:
        assert 'outcome="failed"} 1' in await r.text()
