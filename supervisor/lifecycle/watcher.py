"""Follow the runtime: a container that exits is known at once (Docker events, not
only the next failed request), a daemon that stops or freezes is noticed within a
heartbeat, and after it was away the handles are re-synced with what runs (adopt what
runs, forget what is gone) without a restart of the supervisor."""

from __future__ import annotations

import asyncio
import logging

from supervisor.lifecycle.clock import sleep
from supervisor.lifecycle.effects import Effects
from supervisor.lifecycle.registry import Registry
from supervisor.rules.table import DOWN, State
from supervisor.runtime.base import RuntimeFailure

log = logging.getLogger("supervisor.lifecycle")

RETRY_SECONDS = (0.5, 1.0, 2.0)  # reconnects while the daemon is away
HEARTBEAT_SECONDS = 5.0  # a frozen daemon keeps the event stream open: ping it too


async def watch(effects: Effects, registry: Registry) -> None:
    """Run until cancelled; `effects.runtime_down` says why the runtime is unreachable."""
    failures = 0
    while True:
        try:
            if effects.runtime_down is not None or failures:
                await resync(effects, registry)
            effects.runtime_down, failures = None, 0
            await _follow(effects, registry)
        except RuntimeFailure as exc:
            if effects.runtime_down is None:
                log.error("the runtime is unreachable: %s; models that run are still "
                          "served, starts are refused until it is back", exc)
            effects.runtime_down = str(exc)
            effects.runtime_back.clear()
            await _pause(effects, RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
            failures += 1


async def _pause(effects: Effects, seconds: float) -> None:
    """Until the next try, or sooner when a refused start asks for one."""
    timer = effects.clock.call_later(seconds, effects.runtime_back.set)
    try:
        await effects.runtime_back.wait()
    finally:
        timer.cancel()


async def _follow(effects: Effects, registry: Registry) -> None:
    """The event stream and a heartbeat side by side; whichever fails ends both."""
    events = asyncio.create_task(_exits(effects, registry))
    beat = asyncio.create_task(_heartbeat(effects))
    try:
        done, _ = await asyncio.wait({events, beat}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # raises the RuntimeFailure that ended it
        raise RuntimeFailure("the Docker event stream ended")
    finally:
        for task in (events, beat):
            task.cancel()
        await asyncio.gather(events, beat, return_exceptions=True)


async def _exits(effects: Effects, registry: Registry) -> None:
    async for service in effects.runtime.exits():
        for handle in registry.units():
            if handle.profile.service == service:
                handle.container_died()


async def _heartbeat(effects: Effects) -> None:
    while True:
        await sleep(effects.clock, HEARTBEAT_SECONDS)
        try:
            async with asyncio.timeout(HEARTBEAT_SECONDS):
                await effects.runtime.ping()
        except TimeoutError:
            raise RuntimeFailure("the Docker daemon does not answer (frozen?)") from None


async def resync(effects: Effects, registry: Registry) -> None:
    """The daemon is back: what ran may be gone (it restarts without its containers), and
    what did not run may run now. Raises RuntimeFailure while it is still away."""
    running = await effects.runtime.running_services()
    log.info("the runtime is reachable again; re-syncing %d models", len(registry.handles))
    for handle in registry.units():
        if handle.state in (State.READY, State.ASLEEP) and handle.profile.service not in running:
            handle.container_died("absent")
        elif handle.state in DOWN:
            handle.adopt(running)
