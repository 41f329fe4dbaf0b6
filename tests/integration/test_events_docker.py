"""The lifecycle events over HTTP, behind the admin token: the ring at /admin/events,
live Server-Sent Events at /admin/events/stream (with Last-Event-ID to catch up), the
GPU view the status page draws, and a shutdown that does not wait for open streams."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from .conftest import chat

TOKEN = "events-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPERVISOR_ADMIN_TOKEN", TOKEN)


async def next_event(stream: aiohttp.ClientResponse, within: float = 15) -> dict[str, Any]:
    """The next `id:`/`data:` block of an SSE stream (comments and `retry:` skipped)."""
    async with asyncio.timeout(within):
        fields: dict[str, str] = {}
        while True:
            line = (await stream.content.readline()).decode()
            assert line, "the stream ended"
            line = line.rstrip("\n")
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif "data" in fields:
                event: dict[str, Any] = json.loads(fields["data"])
                assert int(fields["id"]) == event["seq"]
                return event
            else:
                fields = {}


async def test_events_are_listed_and_streamed_live_behind_the_token(supervisor_factory,
                                                                    http) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    for path in ("/admin/events", "/admin/events/stream", "/admin/gpus"):
        async with http.get(sup.admin + path) as r:
            assert r.status == 401, path
    async with http.get(sup.admin + "/admin/events/stream", headers=AUTH) as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"] == "text/event-stream"
        async with http.post(sup.url + "/v1/chat/completions", json=chat("chat-fast")) as r:
            assert r.status == 200
        starting = await next_event(stream)
        ready = await next_event(stream)
    assert (starting["model"], starting["from"], starting["to"]) == (
        "chat-fast", "stopped", "starting")
    assert (ready["from"], ready["to"], ready["profile"]) == ("starting", "ready", "default")
    assert ready["seq"] == starting["seq"] + 1 and ready["time"] >= starting["time"]

    async with http.get(sup.admin + "/admin/events", headers=AUTH) as r:
        assert r.status == 200
        assert (await r.json())["events"][-2:] == [starting, ready]
    async with http.get(sup.admin + "/admin/events?limit=1", headers=AUTH) as r:
        assert (await r.json())["events"] == [ready]
    for bad in ("0", "1001", "-1", "%C2%B2", "x"):  # %C2%B2: a digit to str.isdigit
        async with http.get(sup.admin + f"/admin/events?limit={bad}", headers=AUTH) as r:
            assert r.status == 400, bad

    # A client that reconnects says what it saw last and gets what it missed first.
    resume = {**AUTH, "Last-Event-ID": str(starting["seq"])}
    async with http.get(sup.admin + "/admin/events/stream", headers=resume) as stream:
        assert await next_event(stream) == ready
    async with http.get(sup.admin + "/admin/events/stream",
                        headers={**AUTH, "Last-Event-ID": "x"}) as r:
        assert r.status == 400

    async with http.get(sup.admin + "/admin/gpus", headers=AUTH) as r:
        assert r.status == 200
        assert (await r.json()) == {"available": False, "gpus": []}  # no GPU on this machine


async def test_shutdown_ends_open_streams_at_once(supervisor_factory) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    async with aiohttp.ClientSession() as http:
        stream = await http.get(sup.admin + "/admin/events/stream", headers=AUTH)
        assert stream.status == 200
        began = time.monotonic()
        await sup.stop()
        assert time.monotonic() - began < 30  # not aiohttp's 60 s wait for handlers
        async with asyncio.timeout(5):
            while await stream.content.readline():
                pass  # the server ended the stream
        stream.close()
