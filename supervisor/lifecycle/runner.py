"""The effects of one handle run as tasks: a start (GPU admission first), a wake, a stop,
a sleep (its level: host RAM first), a deeper sleep, the warm-up, and the crash-loop
backoff after a failed start.

Each task awaits an effect (effects.py) and hands how it ended back to the handle, which
alone dispatches it to the table; a task that raises fails its step as a runtime failure
would, so no model is left in a state only a restart ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from supervisor.lifecycle.admission import InsufficientGpuMemory
from supervisor.lifecycle.clock import Timer
from supervisor.lifecycle.driven import Driven
from supervisor.lifecycle.effects import Outcome
from supervisor.refusal import Refusal, StartFailed
from supervisor.rules.profiles import Profile
from supervisor.rules.table import Event, State

log = logging.getLogger("supervisor.lifecycle")

# What an effect that raised instead of returning is taken for.
_CRASHED = {"start": Event.START_FAILED, "stop": Event.STOPPED, "sleep": Event.SLEEP_FAILED,
            "wake": Event.WAKE_FAILED, "deepen": Event.DEEPEN_FAILED}


class Runner:
    def __init__(self, handle: Driven) -> None:
        self.h = handle
        self.effects = handle.effects
        self.task: asyncio.Task[None] | None = None
        self.warmup_task: asyncio.Task[None] | None = None
        self.up = False  # its service was brought up (or adopted) since the last stop
        self.evicted: tuple[str, ...] = ()  # what its last start evicted (for the header)
        self.retry_at: float | None = None  # no start before this (crash-loop backoff)
        self._retry_timer: Timer | None = None

    def spawn(self, kind: str, work: Coroutine[Any, Any, Outcome]) -> None:
        self.task = asyncio.create_task(self._run(kind, work))
        # A task cancelled before it ran (a force stop right after a start) never awaited
        # `work`: close it, or Python warns that it was never awaited.
        self.task.add_done_callback(lambda _: work.close())

    def start(self, *, compose_up: bool) -> None:
        self.spawn("start", self._start(compose_up=compose_up))

    def wake(self) -> None:
        self.spawn("wake", self._wake())

    def sleep(self) -> None:
        self.spawn("sleep", self._sleep())

    def deepen(self, reason: str) -> None:
        h = self.h
        why = (f"after sleep.deepen_after ({h.config.sleep.deepen_after:.0f}s)"
               if reason == Event.DEEPEN else reason)
        self.spawn("deepen", self._deepen(why))

    async def _deepen(self, why: str) -> Outcome:
        """A deepening wakes the model briefly: only where its whole need fits now (no
        eviction for it, no waiter passed); else it is stopped, which frees the host RAM
        too (the next request pays a start instead of a level-2 wake)."""
        h = self.h
        if not self.effects.gpus.fits_in_place(h, h.profile):
            return Outcome(Event.DEEPEN_FAILED, f"not deepened {why}: the GPU memory its "
                           "brief wake needs is taken; stopping instead")
        return await self._asleep_at(2, self.effects.deepen(
            h.name, h.config, h.profile, h.upstream_headers, why))

    def stop(self, why: str, grace: float) -> None:
        prev = self.task if self.task is not asyncio.current_task() else None
        self.spawn("stop", self._stop(why, grace, prev))

    def abort(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def _run(self, kind: str, work: Coroutine[Any, Any, Outcome]) -> None:
        h = self.h
        try:
            outcome = await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("model=%s %s task raised", h.name, kind)
            outcome = Outcome(_CRASHED[kind], f"{kind} raised {exc!r}")
        if outcome.error is not None:
            h.last_error = outcome.error
        error: Refusal | None = outcome.refusal
        if outcome.event is Event.START_FAILED and error is None:
            error = StartFailed(f"model {h.name!r} failed to start: {outcome.error}",
                                model=h.name)
            self._back_off()
        h._dispatch(outcome.event, error)

    async def _admit(self) -> Outcome | None:
        """GPU placement before a start or wake: wait until the profile fits (evicting idle
        models for it); an Outcome when it never can."""
        try:
            self.evicted = await self.effects.gpus.admit(self.h, self.h.profile)
        except InsufficientGpuMemory as exc:
            log.error("model=%s cannot start: %s", self.h.name, exc)
            return Outcome(Event.START_FAILED, str(exc), refusal=exc)
        if self.effects.anatomy is not None:
            self.effects.anatomy.admitted(self.h.name)
        return None

    async def _start(self, *, compose_up: bool) -> Outcome:
        h = self.h
        profile = h.profile
        if compose_up and (refused := await self._admit()) is not None:
            return refused
        self.up = True
        outcome = await self.effects.start(h.name, h.config, profile, h.upstream_headers,
                                           compose_up=compose_up)
        ok = outcome.event is Event.STARTED
        if compose_up:
            h.metrics.cold_start(h.name, profile.name, outcome.seconds, ok=ok)
        if ok:
            h.last_cold_start_seconds, h.last_error = outcome.seconds, None
            h.start_failures, self.retry_at = 0, None
            if outcome.endpoint is not None:  # routed to the node its task runs on (Swarm)
                h.profile = profile.at(outcome.endpoint)
            await self._warm_up_after_ready()
        return outcome

    async def _sleep(self) -> Outcome:
        """At the configured level, or at 2 where the host RAM for 1 cannot be made."""
        h = self.h
        level = await self.effects.gpus.sleep_level(h, h.profile, h.config.sleep.level)
        return await self._asleep_at(level, self.effects.sleep(
            h.name, h.config, h.profile, h.upstream_headers, level))

    async def _asleep_at(self, level: int, work: Coroutine[Any, Any, Outcome]) -> Outcome:
        outcome = await work
        if outcome.event is Event.SLEPT:
            self.h.sleep_level = level
        return outcome

    async def _wake(self) -> Outcome:
        h = self.h
        if (refused := await self._admit()) is not None:
            return Outcome(Event.WAKE_FAILED, refused.error)
        level, h.sleep_level = h.sleep_level, 0
        outcome = await self.effects.wake(h.name, h.config, h.profile, h.upstream_headers,
                                          level or 1)
        if outcome.event is Event.WOKE:
            await self._warm_up_after_ready()
        return outcome

    async def _warm_up_after_ready(self) -> None:
        """Before the held requests are released (they wait: the task is still the start's
        or the wake's), or beside them once they are."""
        warmup = self.h.config.warmup
        if warmup is None:
            return
        if warmup.before_release:
            await self._warm_up(self.h.profile)
        else:
            asyncio.get_running_loop().call_soon(self._warm_up_beside)

    def _warm_up_beside(self) -> None:
        if self.h.state is State.READY:
            self.warmup_task = asyncio.create_task(self._warm_up(self.h.profile))

    async def _warm_up(self, profile: Profile) -> None:
        h = self.h
        outcome = await self.effects.warm_up(h.name, h.config, profile, h.upstream_headers)
        h.metrics.warmup(h.name, profile.name, outcome.seconds, ok=outcome.error is None)
        if outcome.error is not None:
            h.last_error = outcome.error

    def _back_off(self) -> None:
        """After a failed start: no other before 1 s, 2 s, 4 s ... (restart_backoff_max);
        a pinned model is tried again then on its own."""
        h = self.h
        h.start_failures += 1
        delay = min(2.0 ** (h.start_failures - 1), h.config.restart_backoff_max)
        self.retry_at = h.clock.now() + delay
        log.warning("model=%s failed to start %d times in a row; next try in %.0fs",
                    h.name, h.start_failures, delay)
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        self._retry_timer = h.clock.call_later(delay, self._retry_if_pinned)

    def _retry_if_pinned(self) -> None:
        if self.h.state is State.FAILED and self.h.is_pinned:
            self.h._dispatch(Event.DEMAND)

    async def _stop(self, why: str, grace: float, aborted: asyncio.Task[None] | None) -> Outcome:
        if aborted is not None:  # a start, sleep or wake that was cancelled: let it unwind
            await asyncio.gather(aborted, return_exceptions=True)
        if not self.up:  # a start cancelled while it waited for GPU memory: nothing runs
            return Outcome(Event.STOPPED)
        outcome = await self.effects.stop(self.h.name, self.h.profile, grace, why)
        self.up = False
        return outcome

    def cancel_retry(self) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()

    async def close(self) -> None:
        for task in (self.task, self.warmup_task):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
