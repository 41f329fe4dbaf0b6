"""The idle policy in two tiers on a real container: asleep after `sleep.after`, stopped
after `idle_timeout` (counted from the last request, asleep or not)."""

from __future__ import annotations

import asyncio
import time

from supervisor.rules.table import State

from .conftest import chat, container_running, starts, wait_for


async def _stats(http) -> dict[str, int]:
    async with http.get("http://127.0.0.1:19107/standin/stats") as r:
        return dict((await r.json())["requests"])


async def test_idle_model_sleeps_after_m_then_stops_after_n_and_each_tier_serves(
    supervisor_factory, project, http
) -> None:
    sup = await supervisor_factory(
        {"sleeper": {"sleep": {"enabled": True, "after": "2s"}, "idle_timeout": "6s"}})
    handle = sup.handle("sleeper")
    seen: list[State] = []

    async def post() -> int:
        async with http.post(sup.url + "/v1/chat/completions", json=chat("sleeper")) as r:
            await r.read()
            return r.status

    assert await post() == 200
    last_request = time.monotonic()
    await wait_for(lambda: handle.state is State.ASLEEP, 10, "tier 1: asleep")
    seen.append(handle.state)
    assert time.monotonic() - last_request >= 2.0
    assert container_running(project, "sleeper")  # asleep keeps the container
    assert await post() == 200  # held while it wakes, then served
    last_request = time.monotonic()
    assert handle.state is State.READY
    await wait_for(lambda: handle.state is State.ASLEEP, 10, "asleep again")
    seen.append(handle.state)
    await wait_for(lambda: handle.state is State.STOPPED, 15, "tier 2: stopped")
    seen.append(handle.state)
    assert time.monotonic() - last_request >= 6.0  # from the last request, not from the sleep
    assert not container_running(project, "sleeper")
    assert seen == [State.ASLEEP, State.ASLEEP, State.STOPPED]
    assert await post() == 200  # a cold start again
    assert starts(project, "sleeper") == 2


async def test_sleep_and_wake_are_each_called_once_per_tier_1_cycle(
    supervisor_factory, http
) -> None:
    sup = await supervisor_factory(
        {"sleeper": {"sleep": {"enabled": True, "after": "1s"}, "idle_timeout": "60s"}})
    handle = sup.handle("sleeper")
    async with http.post(sup.url + "/v1/chat/completions", json=chat("sleeper")) as r:
        assert r.status == 200
    await wait_for(lambda: handle.state is State.ASLEEP, 10, "asleep")
    async with http.post(sup.url + "/v1/chat/completions", json=chat("sleeper")) as r:
        assert r.status == 200
    stats = await _stats(http)
    assert stats.get("POST /sleep") == 1
    assert stats.get("POST /wake_up") == 1


async def test_pinned_model_does_not_sleep(supervisor_factory, http) -> None:
    sup = await supervisor_factory(
        {"sleeper": {"sleep": {"enabled": True, "after": "0.5s"}, "idle_timeout": "60s"}})
    handle = sup.handle("sleeper")
    handle.set_pinned(True)
    async with http.post(sup.url + "/v1/chat/completions", json=chat("sleeper")) as r:
        assert r.status == 200
    await asyncio.sleep(2.0)  # four sleep periods: the window in which it must not sleep
    assert handle.state is State.READY
    assert "POST /sleep" not in await _stats(http)
