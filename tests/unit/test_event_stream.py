"""The Server-Sent Events stream on a real loopback server (no Docker): a burst larger
than a subscriber's backlog loses nothing, because the stream ends when the event log
stops feeding it and the client catches up from the ring with Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from supervisor.observe.events import SUBSCRIBER_BACKLOG, EventLog
from supervisor.ops import event_stream


@pytest.fixture
async def served(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[EventLog, str]]:
    monkeypatch.setattr(event_stream, "HEARTBEAT", 0.2)
    log = EventLog()
    app = web.Application()
    event_stream.install(app)

    async def handler(request: web.Request) -> web.StreamResponse:
        return await event_stream.stream(request, log)

    app.router.add_get("/stream", handler)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield log, str(server.make_url("/stream"))
    await server.close()


async def read_until_end(response: aiohttp.ClientResponse) -> list[int]:
    seqs = []
    async with asyncio.timeout(10):
        async for line in response.content:
            if line.startswith(b"data: "):
                seqs.append(json.loads(line[6:])["seq"])
    return seqs


async def test_a_burst_past_the_backlog_ends_the_stream_and_the_ring_fills_the_gap(
        served) -> None:
    log, url = served
    burst = SUBSCRIBER_BACKLOG + 44
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as first:
            await first.content.readline()  # "retry: ..." : the stream is subscribed
            for i in range(burst):  # in one go: the stream cannot drain meanwhile
                log.record(f"m{i}", "stopped", "starting", event="demand", profile="default")
            seen = await read_until_end(first)  # ends at the next heartbeat
        assert seen == list(range(1, len(seen) + 1)) and len(seen) < burst
        async with http.get(url, headers={"Last-Event-ID": str(seen[-1])}) as again:
            log.record("last", "starting", "ready", event="started", profile="default")
            async with asyncio.timeout(10):
                while len(seen) < burst + 1:
                    line = await again.content.readline()
                    if line.startswith(b"data: "):
                        seen.append(json.loads(line[6:])["seq"])
    assert seen == list(range(1, burst + 2))  # every event once, in order


async def test_an_id_from_before_a_restart_gets_the_whole_ring(served) -> None:
    log, url = served
    log.record("m", "stopped", "starting", event="demand", profile="default")
    async with aiohttp.ClientSession() as http, http.get(
            url, headers={"Last-Event-ID": "9000"}) as response:
        async with asyncio.timeout(10):
            while not (line := await response.content.readline()).startswith(b"data: "):
                pass
    assert json.loads(line[6:])["seq"] == 1
