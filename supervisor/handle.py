"""One model's handle: it owns the lifecycle state, the held requests, the
in-flight count and the idle timer, and turns the pure lifecycle's effects
into runtime calls.

Everything here runs on the event loop and `_dispatch` never awaits, so the
check-then-act sequences (is it ready? count it in flight) need no locks.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from supervisor.config import ModelConfig
from supervisor.lifecycle import Effect, Event, Load, State, next_step
from supervisor.readiness import StartFailed, await_ready
from supervisor.runtime.base import Runtime, RuntimeFailure

log = logging.getLogger("supervisor.lifecycle")

DEFAULT_RETRY_AFTER = 10


class HoldRejected(Exception):
    """A request that cannot be held: too many already wait, or it waited too long."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Lease:
    """A request's right to use the upstream; `cold_start` when it had to be held."""

    cold_start: bool
    hold_seconds: float


class ModelHandle:
    def __init__(
        self, name: str, config: ModelConfig, runtime: Runtime, http: aiohttp.ClientSession
    ) -> None:
        self.name = name
        self.config = config
        self._runtime = runtime
        self._http = http
        self.state = State.STOPPED
        self.in_flight = 0
        self._held: list[asyncio.Future[None]] = []
        self._idle_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._start_began = 0.0
        self.idle_since = time.monotonic()
        self.last_error: str | None = None
        self.last_cold_start_seconds: float | None = None

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def upstream(self) -> str:
        return self.config.upstream

    # -- requests ---------------------------------------------------------

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[Lease]:
        """Hold until the server is ready, and count the request in flight until it ends."""
        lease = await self._acquire()
        try:
            yield lease
        finally:
            self._release()

    async def _acquire(self) -> Lease:
        if self.state is State.READY:
            self.in_flight += 1
            return Lease(cold_start=False, hold_seconds=0.0)
        if len(self._held) >= self.config.max_held:
            raise HoldRejected(
                503,
                "model_overloaded",
                f"model {self.name!r} is {self.state.value} and already holds "
                f"{len(self._held)} requests (max_held); retry later",
                self._retry_after(),
            )
        began = time.monotonic()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._held.append(waiter)
        self._dispatch(Event.DEMAND)
        try:
            async with asyncio.timeout(self.config.hold_timeout):
                await waiter
        except TimeoutError:
            self._abandon(waiter)
            raise HoldRejected(
                504,
                "hold_timeout",
                f"model {self.name!r} was not ready within hold_timeout "
                f"({self.config.hold_timeout:.0f}s); it is {self.state.value}",
                None,
            ) from None
        except asyncio.CancelledError:
            self._abandon(waiter)  # the client went away while held
            raise
        return Lease(cold_start=True, hold_seconds=time.monotonic() - began)

    def _abandon(self, waiter: asyncio.Future[None]) -> None:
        if waiter in self._held:
            self._held.remove(waiter)
        elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            self._release()  # it was released, and counted in flight, at the same moment

    def _release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0 and self.state is State.READY:
            self._arm_idle()

    def _retry_after(self) -> int:
        return math.ceil(self.last_cold_start_seconds or DEFAULT_RETRY_AFTER)

    async def upstream_failed(self) -> None:
        """The upstream refused a connection: if its container died, forget it was ready."""
        try:
            status = await self._runtime.status(self.config.service)
        except RuntimeFailure:
            return
        if self.state is State.READY and not status.running:
            self.last_error = f"container {status.state.value} while ready"
            self._dispatch(Event.EXITED)

    # -- lifecycle driver -------------------------------------------------

    def _dispatch(self, event: Event, detail: str | None = None) -> None:
        before = self.state
        step = next_step(before, event, Load(self.in_flight, len(self._held)))
        self.state = step.state
        if before is not step.state:
            log.info("model=%s %s -> %s on %s", self.name, before, step.state, event)
        for effect in step.effects:
            self._apply(effect, detail)

    def _apply(self, effect: Effect, detail: str | None) -> None:
        if effect in (Effect.START, Effect.AWAIT_READY):
            self._start_began = time.monotonic()
            self._task = asyncio.create_task(self._start(compose_up=effect is Effect.START))
        elif effect is Effect.STOP:
            self._task = asyncio.create_task(self._stop())
        elif effect is Effect.RELEASE_HELD:
            for waiter in self._take_held():
                waiter.set_result(None)
                self.in_flight += 1
        elif effect is Effect.FAIL_HELD:
            for waiter in self._take_held():
                waiter.set_exception(StartFailed(detail or "start failed"))
        elif effect is Effect.ARM_IDLE:
            self._arm_idle()

    def _take_held(self) -> list[asyncio.Future[None]]:
        waiters = [w for w in self._held if not w.done()]
        self._held.clear()
        return waiters

    def _arm_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self.idle_since = time.monotonic()
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(self.config.idle_timeout, self._dispatch, Event.IDLE)

    async def _start(self, *, compose_up: bool) -> None:
        service = self.config.service
        log.info("model=%s starting service=%s", self.name, service)
        try:
            if compose_up:
                await self._runtime.start(service)
            await await_ready(
                self._runtime,
                service,
                self._http,
                self.upstream + self.config.health,
                startup_timeout=self.config.startup_timeout,
                interval=self.config.health_interval,
            )
        except (StartFailed, RuntimeFailure) as exc:
            self.last_error = str(exc)
            log.error("model=%s start failed after %.2fs: %s", self.name, self._since(), exc)
            self._dispatch(Event.START_FAILED, f"model {self.name!r} failed to start: {exc}")
            return
        self.last_cold_start_seconds = self._since()
        self.last_error = None
        log.info("model=%s ready in %.2fs", self.name, self.last_cold_start_seconds)
        self._dispatch(Event.STARTED)

    async def _stop(self) -> None:
        began = time.monotonic()
        idle = began - self.idle_since
        log.info("model=%s idle for %.0fs, stopping service=%s",
                 self.name, idle, self.config.service)
        try:
            await self._runtime.stop(self.config.service, self.config.stop_timeout)
        except RuntimeFailure as exc:
            self.last_error = str(exc)
            log.error("model=%s stop failed: %s", self.name, exc)
        log.info("model=%s stopped in %.2fs", self.name, time.monotonic() - began)
        self._dispatch(Event.STOPPED)

    def _since(self) -> float:
        return time.monotonic() - self._start_began

    # -- supervisor start and shutdown ------------------------------------

    def adopt(self, running: set[str]) -> None:
        """Take over a service that already runs: it is ready once its health check passes."""
        if self.config.service in running:
            log.info("model=%s adopting running service=%s", self.name, self.config.service)
            self._dispatch(Event.FOUND_RUNNING)

    async def close(self) -> None:
        """Forget timers and tasks; running services stay up to be adopted next time."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        for waiter in self._take_held():
            waiter.set_exception(StartFailed("the supervisor is shutting down"))
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
