"""`GET /admin/events/stream`: the lifecycle events as Server-Sent Events.

Each event is `id: <seq>` and `data: <json>`. A client that reconnects with
`Last-Event-ID` first gets what it missed from the ring (as far back as it reaches), then
the live events. A comment line every HEARTBEAT seconds keeps idle connections open
and shows a dead client. Streams end when the admin listener shuts down (`close_all`),
so that a shutdown does not wait for open pages, and when the subscriber fell too far
behind to be kept (the client reconnects and catches up from the ring).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncGenerator
from contextlib import suppress
from typing import Any

from aiohttp import web

from supervisor.observe.events import EventLog
from supervisor.refusal import BadRequest

HEARTBEAT = 15.0
RETRY_MS = 2000  # the client's reconnect delay (the SSE `retry` field)
CLOSING: web.AppKey[asyncio.Event] = web.AppKey("event-streams-closing", asyncio.Event)


def last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID", "").strip()
    if not raw:
        return None
    if not re.fullmatch(r"[0-9]{1,18}", raw):
        raise BadRequest("Invalid request: Last-Event-ID: expected the id of an event")
    return int(raw)


def _frame(entry: dict[str, Any]) -> bytes:
    return f"id: {entry['seq']}\ndata: {json.dumps(entry)}\n\n".encode()


async def close_all(app: web.Application) -> None:
    """on_shutdown: end every open stream."""
    app[CLOSING].set()


def install(app: web.Application) -> None:
    app[CLOSING] = asyncio.Event()
    app.on_shutdown.append(close_all)


async def stream(request: web.Request, log: EventLog) -> web.StreamResponse:
    after = last_event_id(request)
    closing = request.app[CLOSING]
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store",
        "X-Accel-Buffering": "no"})
    await response.prepare(request)
    follow = log.follow()
    upcoming = asyncio.ensure_future(anext(follow))
    await asyncio.sleep(0)  # the generator has subscribed: nothing recorded from now is lost
    recent = log.recent()
    if after is not None and recent and after > recent[-1]["seq"]:
        after = 0  # ids from before a restart of the supervisor: everything is new
    sent = recent[-1]["seq"] if after is None and recent else (after or 0)
    shutdown = asyncio.ensure_future(closing.wait())
    try:
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        for entry in recent:
            if entry["seq"] > sent:
                await response.write(_frame(entry))
                sent = entry["seq"]
        while not closing.is_set():
            done, _ = await asyncio.wait({upcoming, shutdown}, timeout=HEARTBEAT,
                                         return_when=asyncio.FIRST_COMPLETED)
            if upcoming in done:
                try:
                    entry = upcoming.result()
                except StopAsyncIteration:
                    break  # dropped by the log as too slow
                upcoming = asyncio.ensure_future(anext(follow))
                if entry["seq"] > sent:
                    await response.write(_frame(entry))
                    sent = entry["seq"]
            elif not done:
                await asyncio.sleep(0)
                newest = log.recent(1)
                if newest and newest[0]["seq"] > sent and not upcoming.done():
                    break  # the log stopped feeding this subscriber: let it reconnect
                await response.write(b": keep-alive\n\n")
    except ConnectionResetError:
        pass  # the client went away
    finally:
        for task in (upcoming, shutdown):
            task.cancel()
        await asyncio.gather(upcoming, shutdown, return_exceptions=True)
        if isinstance(follow, AsyncGenerator):  # unsubscribe now, not when collected
            with suppress(RuntimeError):
                await follow.aclose()
    return response
