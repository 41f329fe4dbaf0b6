"""`SwarmRuntime.exits`, apart from the runtime's reads and writes (see swarm.py's docstring:
Engine 20.10 emits no task events, so node, service and container events only nudge a
listing of the stack's tasks, which also runs every `poll_interval`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from supervisor.runtime import swarm_tasks as st
from supervisor.runtime.base import RuntimeFailure

log = logging.getLogger(__name__)

EVENTS = {"type": ["node", "service", "container"], "event": ["update", "remove", "die"]}

RunningMap = dict[str, frozenset[str]]


async def exits(open_stream: Callable[[], Awaitable[Any]],
                running_map: Callable[[], Awaitable[RunningMap]],
                poll_interval: float) -> AsyncIterator[str]:
    """Services (and slot names) of which a running task stopped running; RuntimeFailure
    when the event stream or the manager fails. `open_stream`: the manager's decoded event
    stream (EVENTS); `running_map`: st.running_by_service over the stack, now."""
    stream = await open_stream()
    loop = asyncio.get_running_loop()
    nudge = asyncio.Event()
    broken: list[BaseException | None] = []

    def wake(error: BaseException | None = None, end: bool = False) -> None:
        if end:
            broken.append(error)
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens
            loop.call_soon_threadsafe(nudge.set)

    def pump() -> None:  # the SDK's event stream blocks: its own thread, not the pool
        try:
            for _ in stream:
                wake()
            wake(end=True)
        except Exception as exc:
            wake(exc, end=True)

    threading.Thread(target=pump, name="swarm-events", daemon=True).start()
    try:
        before = await running_map()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(nudge.wait(), poll_interval)
            nudge.clear()
            if broken:
                raise RuntimeFailure(f"the Swarm event stream ended: {broken[0] or 'closed'}")
            after = await running_map()
            for service in st.lost(before, after):
                log.info("service %s: a task stopped running", service)
                yield service
            before = after
    finally:
        await asyncio.to_thread(stream.close)
