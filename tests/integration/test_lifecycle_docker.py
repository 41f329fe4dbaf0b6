"""Start on demand, hold, idle stop and adopt, on the real Engine and Compose."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import openai
import pytest

from supervisor.rules.table import State
from tests.helpers import model_status, start_supervisor

from .conftest import MODELS, chat, compose_project, container_running, starts, wait_for


async def test_first_request_starts_the_model_and_succeeds(supervisor_factory, project) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    client = openai.AsyncOpenAI(base_url=sup.url + "/v1", api_key="unused")
    raw = await client.chat.completions.with_raw_response.create(
        model="chat-fast", messages=[{"role": "user", "content": "hi"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "stand-in reply"
    assert raw.headers["X-Supervisor-Cold-Start"] == "true"
    assert float(raw.headers["X-Supervisor-Hold-Seconds"]) > 0
    # Warm now: no hold, no header, and still a single container start.
    raw = await client.chat.completions.with_raw_response.create(
        model="chat-fast", messages=[{"role": "user", "content": "again"}]
    )
    assert "X-Supervisor-Cold-Start" not in raw.headers
    assert starts(project, "chat-fast") == 1
    await client.close()


async def test_hundred_requests_during_warmup_share_one_start(
    supervisor_factory, project, http
) -> None:
    sup = await supervisor_factory({"chat-slow": {}})

    async def one(i: int) -> tuple[int, dict]:
        async with http.post(sup.url + "/v1/chat/completions", json=chat("chat-slow")) as r:
            return r.status, dict(r.headers)

    results = await asyncio.gather(*(one(i) for i in range(100)))
    assert [status for status, _ in results] == [200] * 100
    assert all(h.get("X-Supervisor-Cold-Start") == "true" for _, h in results)
    assert starts(project, "chat-slow") == 1


async def test_container_that_exits_while_starting_fails_held_requests_with_its_log(
    supervisor_factory, http
) -> None:
    sup = await supervisor_factory({"crashy": {"startup_timeout": "5m"}})
    # It crashes 0.3 s after `docker compose up`: the exit is seen, not the 5 min timeout.
    # Docker gets a minute for its part (a busy machine can take seconds to create a container).
    async with asyncio.timeout(60), http.post(sup.url + "/v1/chat/completions",
                                              json=chat("crashy")) as r:
        body = await r.json()
        assert r.status == 503
    assert body["error"]["code"] == "model_start_failed"
    assert "exited with code 3 while starting" in body["error"]["message"]
    assert "RuntimeError: stand-in failed to load weights" in body["error"]["message"]
    assert (await model_status(http, sup, "crashy"))["state"] == "failed"


async def test_hold_timeout_answers_504(supervisor_factory, http) -> None:
    sup = await supervisor_factory({"sleepy": {"hold_timeout": "1s"}})
    async with http.post(sup.url + "/v1/chat/completions", json=chat("sleepy")) as r:
        assert r.status == 504
        assert (await r.json())["error"]["code"] == "hold_timeout"
    assert sup.handle("sleepy").held == 0


async def test_overflow_beyond_max_held_gets_503_with_retry_after(supervisor_factory, http) -> None:
    sup = await supervisor_factory({"sleepy": {"max_held": 2, "hold_timeout": "20s"}})
    url = sup.url + "/v1/chat/completions"
    held = [asyncio.create_task(http.post(url, json=chat("sleepy"))) for _ in range(2)]
    await wait_for(lambda: sup.handle("sleepy").held == 2, 10, "two held requests")
    async with http.post(url, json=chat("sleepy")) as r:
        assert r.status == 503
        assert int(r.headers["Retry-After"]) >= 1
        assert (await r.json())["error"]["code"] == "model_overloaded"
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)


async def test_a_supervisor_that_stops_answers_its_held_requests_at_once(
    project: str, http: aiohttp.ClientSession
) -> None:
    """SIGTERM's path (the server's graceful shutdown) while a request is held through a
    60 s start: the client gets 503 `shutting_down` with Retry-After at once, not when its
    hold_timeout ends, and the supervisor is gone within seconds."""
    sup = await start_supervisor(compose_project(project), {"sleepy": MODELS["sleepy"]})
    held = asyncio.create_task(http.post(sup.url + "/v1/chat/completions",
                                         json=chat("sleepy")))
    await wait_for(lambda: sup.handle("sleepy").held == 1, 10, "a held request")
    began = time.monotonic()
    await sup.stop()
    async with await held as r:
        body = await r.json()
    assert r.status == 503, body
    assert body["error"]["code"] == "shutting_down" and r.headers["Retry-After"] == "5"
    assert time.monotonic() - began < 5


async def test_client_that_disconnects_while_held_never_reaches_the_upstream(
    supervisor_factory, http
) -> None:
    sup = await supervisor_factory({"chat-slow": {}})
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(
            sup.url + "/v1/echo",
            json=chat("chat-slow"),
            timeout=aiohttp.ClientTimeout(total=0.5),
        ):
            pass
    handle = sup.handle("chat-slow")
    await wait_for(lambda: handle.held == 0, 5, "the disconnected client to leave the hold")
    await wait_for(lambda: handle.state is State.READY, 30, "chat-slow to become ready")
    async with http.get("http://127.0.0.1:19102/standin/stats") as r:
        assert (await r.json())["requests"] == {}
    assert handle.in_flight == 0


async def test_idle_model_is_stopped_and_the_next_request_starts_it_again(
    supervisor_factory, project, http
) -> None:
    sup = await supervisor_factory({"chat-fast": {"idle_timeout": "1s"}})
    url = sup.url + "/v1/chat/completions"
    async with http.post(url, json=chat("chat-fast")) as r:
        assert r.status == 200
    assert container_running(project, "chat-fast")
    await wait_for(
        lambda: not container_running(project, "chat-fast"), 15, "the idle container to stop"
    )
    await wait_for(lambda: sup.handle("chat-fast").state is State.STOPPED, 5, "state stopped")
    async with http.post(url, json=chat("chat-fast")) as r:
        assert r.status == 200
        assert r.headers["X-Supervisor-Cold-Start"] == "true"
    assert starts(project, "chat-fast") == 2


async def test_stream_longer_than_idle_timeout_is_not_cut(supervisor_factory, project) -> None:
    sup = await supervisor_factory({"chat-fast": {"idle_timeout": "1s"}})
    client = openai.AsyncOpenAI(base_url=sup.url + "/v1", api_key="unused")
    stream = await client.chat.completions.create(
        model="chat-fast",
        messages=[{"role": "user", "content": "long answer"}],
        stream=True,
        max_tokens=8,
        extra_body={"stream_delay": 0.4},  # 3.2 s of streaming, idle_timeout is 1 s
    )
    pieces = [c.choices[0].delta.content async for c in stream if c.choices]
    assert pieces == [f"tok{i} " for i in range(8)]
    assert starts(project, "chat-fast") == 1
    # Once the stream is over, the idle rules apply again.
    await wait_for(lambda: not container_running(project, "chat-fast"), 15, "the idle stop")
    await client.close()


async def test_request_during_stop_waits_and_is_answered_after_a_restart(
    supervisor_factory, project, http
) -> None:
    # slow-stop keeps running 2 s after SIGTERM, so the stop is long enough to arrive during.
    sup = await supervisor_factory({"slow-stop": {"idle_timeout": "0.5s", "stop_timeout": "10s"}})
    url = sup.url + "/v1/chat/completions"
    async with http.post(url, json=chat("slow-stop")) as r:
        assert r.status == 200
    handle = sup.handle("slow-stop")
    await wait_for(lambda: handle.state is State.STOPPING, 10, "the idle stop to begin")
    async with http.post(url, json=chat("slow-stop")) as r:
        assert r.status == 200
        assert r.headers["X-Supervisor-Cold-Start"] == "true"
        assert float(r.headers["X-Supervisor-Hold-Seconds"]) >= 1.0
    assert starts(project, "slow-stop") == 2


async def test_second_supervisor_adopts_a_running_service(
    supervisor_factory, project, http
) -> None:
    first = await supervisor_factory({"chat-fast": {}})
    async with http.post(first.url + "/v1/chat/completions", json=chat("chat-fast")) as r:
        assert r.status == 200
    await first.stop()
    assert container_running(project, "chat-fast")  # a supervisor restart leaves it up

    second = await supervisor_factory({"chat-fast": {"idle_timeout": "1s"}})
    await wait_for(
        lambda: second.handle("chat-fast").state is State.READY, 10, "adoption as ready"
    )
    async with http.post(second.url + "/v1/chat/completions", json=chat("chat-fast")) as r:
        assert r.status == 200
        assert "X-Supervisor-Cold-Start" not in r.headers
    assert starts(project, "chat-fast") == 1
    # Adopted with a fresh idle timer: it is stopped like any other idle model.
    await wait_for(lambda: not container_running(project, "chat-fast"), 15, "the idle stop")
