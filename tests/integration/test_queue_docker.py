"""The hold queue on real Compose with a stand-in that starts in 6 s, through the official
`openai` client where a client would use it: a flood cannot take a quiet client's places,
a high-priority request goes first, and the ETA a held client is told is honest."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import openai
import pytest

from supervisor.rules.table import State
from tests.helpers import Supervisor, start_supervisor

from .conftest import chat, compose_project, wait_for

SIX = {"service": "six", "upstream": "http://127.0.0.1:19115"}
KEYS = {"FLOOD_KEY": "sk-flood", "QUIET_KEY": "sk-quiet", "URGENT_KEY": "sk-urgent"}
CLIENTS = {"flood": {"key_env": "FLOOD_KEY"}, "quiet": {"key_env": "QUIET_KEY"},
           "urgent": {"key_env": "URGENT_KEY", "priority": 5}}


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in KEYS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
async def supervisors(project: str):
    started: list[Supervisor] = []

    async def make(model: dict[str, Any] | None = None, **settings: Any) -> Supervisor:
        sup = await start_supervisor(compose_project(project), {"six": {**SIX, **(model or {})}},
                                     clients=CLIENTS, **settings)
        started.append(sup)
        return sup

    yield make
    for sup in started:
        await sup.stop()


async def say(sup: Supervisor, key: str) -> str:
    client = openai.AsyncOpenAI(base_url=sup.url + "/v1", api_key=key, max_retries=0)
    answer = await client.chat.completions.create(
        model="six", messages=[{"role": "user", "content": "hello"}])
    return str(answer.model)


async def queue(http: aiohttp.ClientSession, sup: Supervisor) -> list[dict[str, Any]]:
    async with http.get(sup.admin + "/admin/queue") as r:
        assert r.status == 200
        return list((await r.json())["models"]["six"]["waiting"])


async def test_a_flood_cannot_take_a_quiet_clients_places(supervisors, http) -> None:
    sup = await supervisors({"max_held": 50})
    flood = [asyncio.create_task(say(sup, "sk-flood")) for _ in range(200)]
    handle = sup.handle("six")
    await wait_for(lambda: handle.held == 50 and sum(t.done() for t in flood) == 150, 10,
                   "50 of the flood held, 150 refused")
    assert handle.state is State.STARTING  # the quiet ones come while it starts
    quiet = await asyncio.gather(*(say(sup, "sk-quiet") for _ in range(10)))
    assert quiet == ["six"] * 10  # all answered
    flooded = await asyncio.gather(*flood, return_exceptions=True)
    refused = [e for e in flooded if isinstance(e, openai.InternalServerError)]
    assert len(refused) == 160 and sum(r == "six" for r in flooded) == 40
    assert {e.status_code for e in refused} == {503}
    assert {e.code for e in refused} == {"model_overloaded"}  # type: ignore[attr-defined]
    assert all(int(e.response.headers["Retry-After"]) >= 1 for e in refused)


async def test_a_high_priority_request_goes_before_100_held(supervisors, http) -> None:
    sup = await supervisors({"max_held": 200})
    handle = sup.handle("six")
    done: list[str] = []

    async def ask(key: str, who: str) -> None:
        await say(sup, key)
        done.append(who)

    batch = [asyncio.create_task(ask("sk-flood", "flood")) for _ in range(100)]
    await wait_for(lambda: handle.held == 100, 10, "100 held")
    urgent = asyncio.create_task(ask("sk-urgent", "urgent"))
    await wait_for(lambda: handle.held == 101, 5, "the urgent one held")
    waiting = await queue(http, sup)
    assert [w["client"] for w in waiting[:2]] == ["urgent", "flood"]
    assert [w["position"] for w in waiting] == list(range(1, 102))
    assert waiting[0]["priority"] == 5 and waiting[0]["phase"] == "starting"
    await asyncio.gather(urgent, *batch)
    # Released first, it reached the server first: each later one found more under way
    # there (STANDIN_TTFB_PER_REQUEST), so it answered among the very first.
    assert done.index("urgent") < 5, done


async def progress_events(http: aiohttp.ClientSession, sup: Supervisor, seen: list[Any],
                          answered: asyncio.Event) -> None:
    """A streamed request that asks for named progress events; each one's JSON in `seen`."""
    headers = {"Authorization": "Bearer sk-quiet", "X-Supervisor-Progress": "events"}
    async with http.post(sup.url + "/v1/chat/completions", headers=headers,
                         json=chat("six", stream=True, max_tokens=3)) as r:
        assert r.status == 200
        event = None
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "progress":
                seen.append({**json.loads(line[6:]), "at": time.monotonic()})
                event = None
            elif line.startswith("data: ") and not answered.is_set():
                seen.append({"answered_at": time.monotonic()})
                answered.set()


async def test_the_eta_is_honest_and_the_position_counts_down(supervisors, http) -> None:
    progress = {"loading_progress": True, "loading_progress_after": "0s",
                "loading_progress_every": "0.25s"}
    sup = await supervisors(progress)
    handle = sup.handle("six")
    await say(sup, "sk-quiet")  # a cold start, measured (the state file's idle section)
    handle.stop()
    await wait_for(lambda: handle.state is State.STOPPED, 20, "stopped")
    measured = handle.effects.durations("six", "default", "start")  # the keeper's
    assert measured is not None and 6 <= measured < 10
    seen: list[list[Any]] = [[], [], []]
    answered = [asyncio.Event() for _ in seen]
    tasks = []
    for i in range(3):
        tasks.append(asyncio.create_task(progress_events(http, sup, seen[i], answered[i])))
        await wait_for(lambda i=i: handle.held == i + 1, 5, f"request {i + 1} held")
    await wait_for(lambda: bool(seen[2]), 5, "the third request's first report")
    told = seen[2][0]
    assert told["position"] == 3 and told["phase"] == "starting", told
    # The two ahead go away: the third one's place counts down.
    tasks[0].cancel()
    await wait_for(lambda: seen[2][-1].get("position") == 2, 5, "position 2")
    tasks[1].cancel()
    await wait_for(lambda: seen[2][-1].get("position") == 1, 5, "position 1")
    await asyncio.wait_for(answered[2].wait(), 20)
    arrived = told["at"] - told["waited_seconds"]
    waited = seen[2][-1]["answered_at"] - arrived  # the real wait, from its arrival
    eta = told["eta_seconds"] + told["waited_seconds"]  # what it was told, from its arrival
    assert abs(eta - waited) <= max(2.0, 0.25 * waited), (eta, waited, seen[2])
    etas = [s["eta_seconds"] for s in seen[2][:-1]]
    assert etas == sorted(etas, reverse=True)  # it counts down too
    await asyncio.gather(*tasks, return_exceptions=True)
