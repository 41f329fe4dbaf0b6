"""The I/O a model's lifecycle asks for: start, stop, sleep and wake.

Each effect takes what it needs, talks to the runtime or the server, and
*returns* the event that ended it (with the error text for the operator); it
never touches the handle. The handle runs it as a task, records the outcome
and is the only one that feeds events to the lifecycle table.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from supervisor.config import ModelConfig
from supervisor.lifecycle import sleep_mode, warmup
from supervisor.lifecycle.admission import GpuAdmission, Unplaced
from supervisor.lifecycle.clock import Clock
from supervisor.lifecycle.readiness import Probe, await_ready, http_probe
from supervisor.refusal import Refusal, StartFailed
from supervisor.rules.profiles import Profile
from supervisor.rules.table import Event
from supervisor.runtime.base import Runtime, RuntimeFailure

log = logging.getLogger("supervisor.lifecycle")


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an effect ended: the event for the table, the error for the operator, and
    how long it took."""

    event: Event
    error: str | None = None
    seconds: float = 0.0
    refusal: Refusal | None = None  # what held requests get instead of a start failure
    endpoint: str | None = None  # a start's: the host that serves it (Swarm: the task's node)


class StartPhases(Protocol):
    """Told the phases of a start that only the effects see (anatomy/service.py)."""

    def admitted(self, name: str) -> None: ...

    def up(self, name: str) -> None: ...

    def healthy(self, name: str) -> None: ...

    def warm(self, name: str) -> None: ...

    def phase(self, name: str) -> str | None:
        """The phase a start or wake of `name` is in now (anatomy/phases.py)."""


# The measured seconds of a unit's start, stop or wake on a profile (unit, profile, kind;
# idle/keeper.py's, kept in the state file), None before the first: what an ETA is from.
Durations = Callable[[str, str, str], float | None]


class Effects:
    """The lifecycle's syscall table for one supervisor: a runtime, the HTTP session to the
    servers and a clock, shared by every handle; the GPU admission every start and wake
    asks first (none: every start is admitted); the measured durations, where known."""

    def __init__(self, runtime: Runtime, http: aiohttp.ClientSession, clock: Clock,
                 probe: Probe | None = None, *, gpus: GpuAdmission | None = None,
                 phases: StartPhases | None = None,
                 durations: Durations | None = None) -> None:
        self.runtime = runtime
        self.http = http
        self.clock = clock
        self.probe = probe or http_probe(http)
        self.runtime_down: str | None = None  # why the runtime cannot be reached (watcher.py)
        self.runtime_back = asyncio.Event()  # set: the watcher should look again at once
        self.gpus: GpuAdmission = gpus or Unplaced()
        self.anatomy = phases  # told what a start's phases are, where set
        self.durations: Durations = durations or (lambda unit, profile, kind: None)

    async def start(self, name: str, config: ModelConfig, profile: Profile,
                    headers: dict[str, str], *, compose_up: bool) -> Outcome:
        """Bring the service up (or only await an adopted one) until it is healthy."""
        began = self.clock.now()
        log.info("model=%s starting profile=%s service=%s", name, profile.name, profile.service)
        try:
            if compose_up:  # an image pull or a stuck daemon counts against startup_timeout
                try:
                    async with asyncio.timeout(config.startup_timeout):
                        await self.runtime.start(profile.service)
                    if self.anatomy is not None:
                        self.anatomy.up(name)
                except TimeoutError:
                    raise StartFailed(f"`up` of service {profile.service!r} did not finish "
                                      f"within startup_timeout ({config.startup_timeout:.0f}s)"
                                      ) from None
            endpoint = await self._endpoint(profile.service)
            served = profile if endpoint is None else profile.at(endpoint)
            await await_ready(self.runtime, profile.service, self.probe, served.health_url,
                              startup_timeout=config.startup_timeout,
                              interval=config.health_interval, now=self.clock.now,
                              began=began)
            if not compose_up and config.sleep.enabled:
                await self._wake_if_asleep(name, config, served, headers)
            if self.anatomy is not None:
                self.anatomy.healthy(name)
        except (StartFailed, RuntimeFailure, sleep_mode.SleepFailed) as exc:
            seconds = self.clock.now() - began
            log.error("model=%s start failed after %.2fs: %s", name, seconds, exc)
            await self._leave_nothing_running(name, profile, config.stop_timeout)
            return Outcome(Event.START_FAILED, str(exc), seconds)
        seconds = self.clock.now() - began
        log.info("model=%s profile=%s ready in %.2fs%s", name, profile.name, seconds,
                 "" if endpoint is None else f" on {endpoint}")
        return Outcome(Event.STARTED, None, seconds, endpoint=endpoint)

    async def _endpoint(self, service: str) -> str | None:
        """Where the service runs when the runtime places it (a Swarm task's node): the
        first, as one server serves a model; None: the upstream as configured."""
        found = await self.runtime.endpoints(service)
        return found[0] if found else None

    async def _leave_nothing_running(self, name: str, profile: Profile, grace: float) -> None:
        """A start that failed but left its container up (a server that never turned
        healthy), or its service wanted (Swarm restarts a crashed task), would keep its GPUs
        with nothing to stop it: stop it now."""
        try:
            status = await self.runtime.status(profile.service)
        except RuntimeFailure:
            status = None  # cannot tell: stop it to be sure
        if status is None or status.running or status.wanted:
            log.info("model=%s stopping the container of the failed start", name)
            try:
                await self.runtime.stop(profile.service, grace)
            except RuntimeFailure as exc:
                log.error("model=%s stop after a failed start failed: %s", name, exc)

    async def stop(self, name: str, profile: Profile, grace: float, why: str) -> Outcome:
        began = self.clock.now()
        log.info("model=%s stopping profile=%s service=%s %s",
                 name, profile.name, profile.service, why)
        error = None
        try:
            await self.runtime.stop(profile.service, grace)
        except RuntimeFailure as exc:
            error = str(exc)
            log.error("model=%s stop failed: %s", name, exc)
        seconds = self.clock.now() - began
        log.info("model=%s stopped in %.2fs", name, seconds)
        return Outcome(Event.STOPPED, error, seconds)

    async def sleep(self, name: str, config: ModelConfig, profile: Profile,
                    headers: dict[str, str], level: int) -> Outcome:
        try:
            await sleep_mode.sleep(self.http, profile.upstream, level, headers,
                                   config.sleep.timeout)
        except sleep_mode.SleepFailed as exc:
            log.error("model=%s sleep failed: %s", name, exc)
            return Outcome(Event.SLEEP_FAILED, str(exc))
        log.info("model=%s asleep (level %d)", name, level)
        return Outcome(Event.SLEPT)

    async def deepen(self, name: str, config: ModelConfig, profile: Profile,
                     headers: dict[str, str], why: str) -> Outcome:
        """Level 1 to 2: vLLM ignores a second /sleep, so wake it, then sleep at level 2."""
        began = self.clock.now()
        limit = config.sleep.timeout
        try:
            await sleep_mode.wake_up(self.http, profile.upstream, headers, limit)
            await sleep_mode.sleep(self.http, profile.upstream, 2, headers, limit)
        except sleep_mode.SleepFailed as exc:
            log.error("model=%s deepening failed, stopping it: %s", name, exc)
            return Outcome(Event.DEEPEN_FAILED, str(exc))
        log.info("model=%s asleep (level 2) in %.2fs, %s", name, self.clock.now() - began, why)
        return Outcome(Event.SLEPT)

    async def wake(self, name: str, config: ModelConfig, profile: Profile,
                   headers: dict[str, str], level: int) -> Outcome:
        began = self.clock.now()
        try:
            await sleep_mode.wake_up(self.http, profile.upstream, headers, config.sleep.timeout,
                                     level)
        except sleep_mode.SleepFailed as exc:
            log.error("model=%s wake-up failed, restarting it: %s", name, exc)
            return Outcome(Event.WAKE_FAILED, str(exc))
        seconds = self.clock.now() - began
        log.info("model=%s awake from level %d in %.2fs", name, level, seconds)
        if self.anatomy is not None:
            self.anatomy.healthy(name)
        return Outcome(Event.WOKE, None, seconds)

    async def _wake_if_asleep(self, name: str, config: ModelConfig, profile: Profile,
                              headers: dict[str, str]) -> None:
        timeout = config.sleep.timeout
        if await sleep_mode.is_sleeping(self.http, profile.upstream, headers, timeout):
            log.info("model=%s adopted asleep at an unknown level; waking it as from 2", name)
            await sleep_mode.wake_up(self.http, profile.upstream, headers, timeout, 2)

    async def warm_up(self, name: str, config: ModelConfig, profile: Profile,
                      headers: dict[str, str]) -> Outcome:
        """Send the warm-up request; its failure is for the log and the metrics only."""
        assert config.warmup is not None
        began = self.clock.now()
        try:
            await warmup.send(self.http, profile.upstream, config.warmup,
                              config.served_model_name or name, headers)
        except Exception as exc:  # a warm-up never fails the start
            seconds = self.clock.now() - began
            log.warning("model=%s warm-up failed after %.2fs: %r", name, seconds, exc)
            return Outcome(Event.STARTED, f"warm-up failed: {exc!r}", seconds)
        finally:
            if self.anatomy is not None:
                self.anatomy.warm(name)
        seconds = self.clock.now() - began
        log.info("model=%s warmed up in %.2fs", name, seconds)
        return Outcome(Event.STARTED, None, seconds)

    async def alive(self, profile: Profile, limit: float) -> bool:
        """Liveness: the health path answers 200 within `limit` seconds."""
        return await self.probe(profile.health_url, limit)

    async def container_state(self, profile: Profile) -> str | None:
        """'exited' or 'absent' when the profile's container is gone; None when it runs
        or the runtime cannot tell."""
        try:
            status = await self.runtime.status(profile.service)
        except RuntimeFailure:
            return None
        return None if status.running else status.state.value
