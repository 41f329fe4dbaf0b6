"""Liveness: while a model is ready or asleep its health path is probed every
`interval`; `failures` misses in a row make it dead (hung: it still runs but answers
nothing). Probes are spaced from the start of the last one, so a hang is found within
interval x failures plus one timeout."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from supervisor.config import LivenessConfig
from supervisor.lifecycle.clock import Clock, Timer
from supervisor.lifecycle.effects import Effects
from supervisor.rules.profiles import Profile

log = logging.getLogger("supervisor.lifecycle")


class Liveness:
    """One model's probes. `watching(profile)` says whether that profile is still the one
    to watch (ready or asleep on it); `on_dead(reason)` is called once per verdict."""

    def __init__(self, name: str, effects: Effects, clock: Clock,
                 watching: Callable[[Profile], bool], on_dead: Callable[[str], None]) -> None:
        self.name = name
        self._effects = effects
        self._clock = clock
        self._watching = watching
        self._on_dead = on_dead
        self._timer: Timer | None = None
        self._task: asyncio.Task[None] | None = None
        self._misses = 0

    def watch(self, profile: Profile, config: LivenessConfig) -> None:
        """(Re)start the probes of `profile`, with a clean count."""
        self._misses = 0
        self._arm(profile, config)

    def _arm(self, profile: Profile, config: LivenessConfig) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if config.interval > 0:
            self._timer = self._clock.call_later(config.interval, self._probe, profile, config)

    def _probe(self, profile: Profile, config: LivenessConfig) -> None:
        if not self._watching(profile):
            return
        self._arm(profile, config)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._check(profile, config))

    async def _check(self, profile: Profile, config: LivenessConfig) -> None:
        try:
            alive = await self._effects.alive(profile, config.timeout)
        except Exception:
            log.exception("model=%s liveness probe raised", self.name)
            alive = False
        if not self._watching(profile):
            return
        self._misses = 0 if alive else self._misses + 1
        if alive:
            return
        log.warning("model=%s missed liveness probe %d of %d on %s", self.name, self._misses,
                    config.failures, profile.health_url)
        if self._misses >= config.failures:
            self._misses = 0
            self._on_dead(f"no answer on {profile.health_url} for {config.failures} liveness "
                          f"probes in a row (timeout {config.timeout:g}s)")

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
