"""The effects of a model's lifecycle that do I/O: start, stop, sleep and wake.

Each runs as a task the handle creates, talks to the runtime or the server, and
ends by feeding one event back to the handle's `_dispatch`: the handle decides,
these only carry out. Kept apart from handle.py so that the decisions read on
their own.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from supervisor.config import ModelConfig
from supervisor.lifecycle import sleep_mode
from supervisor.lifecycle.profiles import Profile
from supervisor.lifecycle.readiness import StartFailed, await_ready
from supervisor.lifecycle.table import Event
from supervisor.observe.metrics import Metrics
from supervisor.runtime.base import Runtime, RuntimeFailure

log = logging.getLogger("supervisor.lifecycle.table")


class RuntimeEffects:
    """Mixed into ModelHandle, which owns these attributes and `_dispatch`."""

    name: str
    config: ModelConfig
    profile: Profile
    metrics: Metrics
    last_error: str | None
    last_cold_start_seconds: float | None
    upstream_headers: dict[str, str]
    _runtime: Runtime
    _http: aiohttp.ClientSession
    _start_began: float

    def _dispatch(
        self, event: Event, error: StartFailed | None = None, reason: str = ""
    ) -> None:
        raise NotImplementedError

    async def _start(self, *, compose_up: bool) -> None:
        profile = self.profile
        log.info("model=%s starting profile=%s service=%s", self.name, profile.name,
                 profile.service)
        try:
            if compose_up:
                await self._runtime.start(profile.service)
            await await_ready(
                self._runtime,
                profile.service,
                self._http,
                profile.health_url,
                startup_timeout=self.config.startup_timeout,
                interval=self.config.health_interval,
            )
            if not compose_up and self.config.sleep.enabled:
                await self._wake_if_asleep(profile)  # adopted asleep: requests would hang
        except (StartFailed, RuntimeFailure, sleep_mode.SleepFailed) as exc:
            self.last_error = str(exc)
            log.error("model=%s start failed after %.2fs: %s", self.name, self._since(), exc)
            if compose_up:
                self.metrics.cold_start(self.name, profile.name, self._since(), ok=False)
            self._dispatch(Event.START_FAILED,
                           StartFailed(f"model {self.name!r} failed to start: {exc}"))
            return
        self.last_cold_start_seconds = self._since()
        self.last_error = None
        if compose_up:
            self.metrics.cold_start(self.name, profile.name, self._since(), ok=True)
        log.info("model=%s profile=%s ready in %.2fs", self.name, profile.name,
                 self.last_cold_start_seconds)
        self._dispatch(Event.STARTED)

    async def _stop(self, reason: str, grace: float, aborted: asyncio.Task[None] | None) -> None:
        if aborted is not None:  # a start, sleep or wake that was cancelled: let it unwind
            await asyncio.gather(aborted, return_exceptions=True)
        began = time.monotonic()
        service = self.profile.service
        log.info("model=%s stopping profile=%s service=%s %s",
                 self.name, self.profile.name, service, reason)
        try:
            await self._runtime.stop(service, grace)
        except RuntimeFailure as exc:
            self.last_error = str(exc)
            log.error("model=%s stop failed: %s", self.name, exc)
        log.info("model=%s stopped in %.2fs", self.name, time.monotonic() - began)
        self._dispatch(Event.STOPPED)

    def _since(self) -> float:
        return time.monotonic() - self._start_began

    async def _sleep(self) -> None:
        level = self.config.sleep.level
        try:
            await sleep_mode.sleep(self._http, self.profile.upstream, level,
                                   self.upstream_headers, self.config.sleep.timeout)
        except sleep_mode.SleepFailed as exc:
            self.last_error = str(exc)
            log.error("model=%s sleep failed: %s", self.name, exc)
            self._dispatch(Event.SLEEP_FAILED)
            return
        log.info("model=%s asleep (level %d)", self.name, level)
        self._dispatch(Event.SLEPT)

    async def _wake(self) -> None:
        began = time.monotonic()
        try:
            await sleep_mode.wake_up(self._http, self.profile.upstream, self.upstream_headers,
                                     self.config.sleep.timeout)
        except sleep_mode.SleepFailed as exc:
            self.last_error = str(exc)
            log.error("model=%s wake-up failed, restarting it: %s", self.name, exc)
            self._dispatch(Event.WAKE_FAILED)
            return
        log.info("model=%s awake in %.2fs", self.name, time.monotonic() - began)
        self._dispatch(Event.WOKE)

    async def _wake_if_asleep(self, profile: Profile) -> None:
        timeout = self.config.sleep.timeout
        if await sleep_mode.is_sleeping(self._http, profile.upstream, self.upstream_headers,
                                        timeout):
            log.info("model=%s adopted asleep; waking it", self.name)
            await sleep_mode.wake_up(self._http, profile.upstream, self.upstream_headers, timeout)
