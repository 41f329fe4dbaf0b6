"""One model's handle: it owns the lifecycle state, the active profile, the held
requests, the in-flight count and the timers, and turns the pure lifecycle's
effects into runtime calls.

Everything here runs on the event loop and `_dispatch` never awaits, so the
check-then-act sequences (is it ready? count it in flight) need no locks.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from supervisor.config import ModelConfig
from supervisor.estimate import Estimator
from supervisor.lifecycle import Effect, Event, Load, State, next_step
from supervisor.metrics import Metrics, ModelSnapshot
from supervisor.profiles import Decision, Profile, profile_to_start, profiles_of, route_on_running
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

    profile: Profile
    cold_start: bool
    hold_seconds: float


@dataclass(frozen=True, slots=True)
class _Held:
    waiter: asyncio.Future[None]
    tokens: int | None


class ModelHandle:
    def __init__(
        self,
        name: str,
        config: ModelConfig,
        runtime: Runtime,
        http: aiohttp.ClientSession,
        metrics: Metrics,
    ) -> None:
        self.name = name
        self.metrics = metrics
        self.config = config
        self.profiles = profiles_of(config)
        self.profile = next(p for p in self.profiles if p.default)  # the active (or last) one
        self._runtime = runtime
        self._http = http
        self.state = State.STOPPED
        self.in_flight = 0
        self._held: list[_Held] = []
        self._idle_timer: asyncio.TimerHandle | None = None
        self._swap_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._start_began = 0.0
        self._last_swap: float | None = None
        self.idle_since = time.monotonic()
        self.last_error: str | None = None
        self.last_cold_start_seconds: float | None = None
        self.last_request_at: float | None = None
        self.swaps = 0
        self.refusals = 0  # requests no profile can hold
        self.estimator: Estimator | None = None  # set at start-up: loading a tokenizer is slow

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def upstream(self) -> str:
        return self.profile.upstream

    def larger_profile(self, than: Profile) -> Profile | None:
        """The next profile up, for a retry when the upstream says a request is too long."""
        size = than.max_model_len
        if size is None:
            return None
        return next((p for p in self.profiles if p.max_model_len is None
                     or p.max_model_len > size), None)

    # -- requests ---------------------------------------------------------

    @asynccontextmanager
    async def lease(self, tokens: int | None = None) -> AsyncIterator[Lease]:
        """Hold until a profile that fits `tokens` is ready; count the request in flight."""
        lease = await self._acquire(tokens)
        try:
            yield lease
        finally:
            self._release()

    def snapshot(self) -> ModelSnapshot:
        now = time.monotonic()
        running = self.state is not State.STOPPED
        return ModelSnapshot(
            model=self.name,
            state=self.state.value,
            profile=self.profile.name if running else "",
            in_flight=self.in_flight,
            held=len(self._held),
            idle_seconds=now - self.idle_since if self.state is State.READY and not (
                self.in_flight or self._held) else 0.0,
            seconds_since_last_request=(
                None if self.last_request_at is None else now - self.last_request_at),
        )

    async def _acquire(self, tokens: int | None) -> Lease:
        self.last_request_at = time.monotonic()
        if self.state is State.READY and self.profile.fits(tokens):
            self.in_flight += 1
            return Lease(self.profile, cold_start=False, hold_seconds=0.0)
        if len(self._held) >= self.config.max_held:
            raise HoldRejected(
                503,
                "model_overloaded",
                f"model {self.name!r} is {self.state.value} and already holds "
                f"{len(self._held)} requests (max_held); retry later",
                self._retry_after(),
            )
        began = time.monotonic()
        held = _Held(asyncio.get_running_loop().create_future(), tokens)
        self._held.append(held)
        if self.state is State.READY:
            self._consider_swap()  # it does not fit the running profile
        else:
            self._dispatch(Event.DEMAND)
        try:
            async with asyncio.timeout(self.config.hold_timeout):
                await held.waiter
        except TimeoutError:
            self._abandon(held)
            raise HoldRejected(
                504,
                "hold_timeout",
                f"model {self.name!r} was not ready within hold_timeout "
                f"({self.config.hold_timeout:.0f}s); it is {self.state.value}",
                None,
            ) from None
        except asyncio.CancelledError:
            self._abandon(held)  # the client went away while held
            raise
        return Lease(self.profile, cold_start=True, hold_seconds=time.monotonic() - began)

    def _abandon(self, held: _Held) -> None:
        if held in self._held:
            self._held.remove(held)
        elif held.waiter.done() and not held.waiter.cancelled() and not held.waiter.exception():
            self._release()  # it was released, and counted in flight, at the same moment

    def _release(self) -> None:
        self.in_flight -= 1
        if self.in_flight:
            return
        if self.state is State.READY:
            self._arm_idle()
        elif self.state is State.DRAINING:
            self._dispatch(Event.DRAINED)

    def _retry_after(self) -> int:
        return math.ceil(self.last_cold_start_seconds or DEFAULT_RETRY_AFTER)

    def _consider_swap(self) -> None:
        """Held requests that the running profile cannot hold: swap now, or once allowed."""
        if self._swap_timer is not None:
            self._swap_timer.cancel()
            self._swap_timer = None
        needs = [h.tokens for h in self._held if not self.profile.fits(h.tokens)]
        if self.state is not State.READY or not needs:
            return
        since = None if self._last_swap is None else time.monotonic() - self._last_swap
        tokens = max(t or 0 for t in needs)
        route = route_on_running(self.profiles, self.profile, tokens, since,
                                 self.config.min_residency)
        if route is None:  # the router refuses these before they are held
            return
        if route.decision is Decision.WAIT:
            log.info("model=%s swap to profile=%s waits %.0fs (min_residency)",
                     self.name, route.target.name, route.wait_seconds)
            loop = asyncio.get_running_loop()
            self._swap_timer = loop.call_later(route.wait_seconds, self._consider_swap)
            return
        self.swaps += 1
        self._last_swap = time.monotonic()
        self.metrics.swap(self.name, self.profile.name, route.target.name)
        log.info("model=%s swapping profile %s -> %s for a request of %d tokens; "
                 "draining %d in flight", self.name, self.profile.name, route.target.name,
                 tokens, self.in_flight)
        self._dispatch(Event.SWAP)

    async def upstream_failed(self) -> None:
        """The upstream refused a connection: if its container died, forget it was ready."""
        try:
            status = await self._runtime.status(self.profile.service)
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
            self.metrics.transition(self.name, before.value, step.state.value)
            log.info("model=%s profile=%s %s -> %s on %s",
                     self.name, self.profile.name, before, step.state, event)
        for effect in step.effects:
            self._apply(effect, detail)

    def _apply(self, effect: Effect, detail: str | None) -> None:
        if effect in (Effect.START, Effect.AWAIT_READY):
            if effect is Effect.START:
                tokens = max((h.tokens or 0 for h in self._held), default=0)
                self.profile = profile_to_start(self.profiles, tokens) or self.profile
            self._start_began = time.monotonic()
            self._task = asyncio.create_task(self._start(compose_up=effect is Effect.START))
        elif effect is Effect.STOP:
            idle = time.monotonic() - self.idle_since
            reason = "for a profile swap" if self._held else f"idle for {idle:.0f}s"
            self._task = asyncio.create_task(self._stop(reason))
        elif effect is Effect.RELEASE_HELD:
            self._release_fitting()
        elif effect is Effect.FAIL_HELD:
            for held in self._take_held(lambda h: True):
                held.waiter.set_exception(StartFailed(detail or "start failed"))
        elif effect is Effect.ARM_IDLE:
            self._arm_idle()

    def _release_fitting(self) -> None:
        for held in self._take_held(lambda h: self.profile.fits(h.tokens)):
            held.waiter.set_result(None)
            self.in_flight += 1
        if self._held:
            asyncio.get_running_loop().call_soon(self._consider_swap)

    def _take_held(self, which: Callable[[_Held], bool]) -> list[_Held]:
        """Remove and return the pending held requests that `which` selects."""
        self._held = [h for h in self._held if not h.waiter.done()]
        taken = [h for h in self._held if which(h)]
        self._held = [h for h in self._held if h not in taken]
        return taken

    def _arm_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self.idle_since = time.monotonic()
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(self.profile.idle_timeout, self._dispatch, Event.IDLE)

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
        except (StartFailed, RuntimeFailure) as exc:
            self.last_error = str(exc)
            log.error("model=%s start failed after %.2fs: %s", self.name, self._since(), exc)
            if compose_up:
                self.metrics.cold_start(self.name, profile.name, self._since(), ok=False)
            self._dispatch(Event.START_FAILED, f"model {self.name!r} failed to start: {exc}")
            return
        self.last_cold_start_seconds = self._since()
        self.last_error = None
        if compose_up:
            self.metrics.cold_start(self.name, profile.name, self._since(), ok=True)
        log.info("model=%s profile=%s ready in %.2fs", self.name, profile.name,
                 self.last_cold_start_seconds)
        self._dispatch(Event.STARTED)

    async def _stop(self, reason: str) -> None:
        began = time.monotonic()
        service = self.profile.service
        log.info("model=%s stopping profile=%s service=%s %s",
                 self.name, self.profile.name, service, reason)
        try:
            await self._runtime.stop(service, self.config.stop_timeout)
        except RuntimeFailure as exc:
            self.last_error = str(exc)
            log.error("model=%s stop failed: %s", self.name, exc)
        log.info("model=%s stopped in %.2fs", self.name, time.monotonic() - began)
        self._dispatch(Event.STOPPED)

    def _since(self) -> float:
        return time.monotonic() - self._start_began

    # -- supervisor start and shutdown ------------------------------------

    def adopt(self, running: set[str]) -> None:
        """Take over a profile that already runs: it is ready once its health check passes."""
        found = next((p for p in self.profiles if p.service in running), None)
        if found is not None:
            self.profile = found
            log.info("model=%s adopting running profile=%s service=%s",
                     self.name, found.name, found.service)
            self._dispatch(Event.FOUND_RUNNING)

    async def close(self) -> None:
        """Forget timers and tasks; running services stay up to be adopted next time."""
        for timer in (self._idle_timer, self._swap_timer):
            if timer is not None:
                timer.cancel()
        for held in self._take_held(lambda h: True):
            held.waiter.set_exception(StartFailed("the supervisor is shutting down"))
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
