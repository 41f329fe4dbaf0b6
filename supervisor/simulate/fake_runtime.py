"""The simulator's runtime: a start takes the model's start seconds, a stop its stop
seconds, a sleep and a wake theirs, on the virtual clock; nothing else happens. The
effects are the real ones (effects.py) but for sleep and wake, which talk HTTP to vLLM."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast

import aiohttp

from supervisor.config import ModelConfig
from supervisor.lifecycle.admission import GpuAdmission
from supervisor.lifecycle.clock import Clock
from supervisor.lifecycle.effects import Effects, Outcome
from supervisor.rules.profiles import Profile
from supervisor.rules.table import Event
from supervisor.runtime.base import ServiceState, ServiceStatus

DEFAULTS = {"start": 30.0, "stop": 3.0, "wake": 2.0}


@dataclass(frozen=True, slots=True)
class Durations:
    start: float = DEFAULTS["start"]
    stop: float = DEFAULTS["stop"]
    wake: float = DEFAULTS["wake"]


@dataclass
class TimedRuntime:
    """The Runtime Protocol as waits: `durations` by service (a model's profiles share
    its durations)."""

    durations: dict[str, Durations] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)

    def _of(self, service: str) -> Durations:
        return self.durations.get(service, Durations())

    async def start(self, service: str) -> None:
        await asyncio.sleep(self._of(service).start)
        self.running.add(service)

    async def stop(self, service: str, grace: float) -> None:
        await asyncio.sleep(self._of(service).stop)
        self.running.discard(service)

    async def status(self, service: str) -> ServiceStatus:
        state = ServiceState.RUNNING if service in self.running else ServiceState.EXITED
        return ServiceStatus(state, None if service in self.running else 0)

    async def logs_tail(self, service: str, lines: int) -> str:
        return ""

    async def running_services(self) -> set[str]:
        return set(self.running)

    async def endpoints(self, service: str) -> list[str]:
        return []

    async def scale(self, service: str, replicas: int) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def exits(self) -> AsyncIterator[str]:
        await asyncio.Event().wait()
        yield ""

    async def probe(self, url: str, limit: float = 2.0) -> bool:
        return True  # health answers once `start` returned (status says it runs)


class TimedEffects(Effects):
    """The real effects on a TimedRuntime; sleep and wake wait instead of calling vLLM."""

    def __init__(self, runtime: TimedRuntime, clock: Clock,
                 gpus: GpuAdmission | None = None) -> None:
        super().__init__(runtime, cast(aiohttp.ClientSession, None), clock, probe=runtime.probe,
                         gpus=gpus)
        self.timed = runtime

    async def sleep(self, name: str, config: ModelConfig, profile: Profile,
                    headers: dict[str, str], level: int) -> Outcome:
        return Outcome(Event.SLEPT)

    async def deepen(self, name: str, config: ModelConfig, profile: Profile,
                     headers: dict[str, str], why: str) -> Outcome:
        return Outcome(Event.SLEPT)

    async def wake(self, name: str, config: ModelConfig, profile: Profile,
                   headers: dict[str, str], level: int) -> Outcome:
        began = self.clock.now()
        await asyncio.sleep(self.timed._of(profile.service).wake)
        return Outcome(Event.WOKE, None, self.clock.now() - began)

    async def warm_up(self, name: str, config: ModelConfig, profile: Profile,
                      headers: dict[str, str]) -> Outcome:
        return Outcome(Event.STARTED)
