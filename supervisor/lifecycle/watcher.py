"""Follow the runtime: a container that exits is known at once (Docker events, not
only the next failed request), and after the daemon was away the handles are
re-synced with what runs (adopt what runs, forget what is gone) without a restart of
the supervisor."""

from __future__ import annotations

import logging

from supervisor.lifecycle.clock import sleep
from supervisor.lifecycle.effects import Effects
from supervisor.lifecycle.registry import Registry
from supervisor.lifecycle.table import State
from supervisor.runtime.base import RuntimeFailure

log = logging.getLogger("supervisor.lifecycle")

RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)  # reconnects while the daemon is away


async def watch(effects: Effects, registry: Registry) -> None:
    """Run until cancelled; `effects.runtime_down` says why the runtime is unreachable."""
    failures = 0
    while True:
        try:
            if effects.runtime_down is not None or failures:
                await resync(effects, registry)
            events = effects.runtime.exits()
            effects.runtime_down, failures = None, 0
            async for service in events:
                for handle in list(registry.handles.values()):
                    if handle.profile.service == service:
                        handle.container_died()
        except RuntimeFailure as exc:
            if effects.runtime_down is None:
                log.error("the runtime is unreachable: %s; models that run are still "
                          "served, starts are refused until it is back", exc)
            effects.runtime_down = str(exc)
            await sleep(effects.clock, RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
            failures += 1


async def resync(effects: Effects, registry: Registry) -> None:
    """The daemon is back: what ran may be gone (it restarts without its containers), and
    what did not run may run now. Raises RuntimeFailure while it is still away."""
    running = await effects.runtime.running_services()
    log.info("the runtime is reachable again; re-syncing %d models", len(registry.handles))
    for handle in list(registry.handles.values()):
        if handle.state in (State.READY, State.ASLEEP) and handle.profile.service not in running:
            handle.container_died("absent")
        elif handle.state in (State.STOPPED, State.FAILED):
            handle.adopt(running)
