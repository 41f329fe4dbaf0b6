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

import aiohttp

from supervisor.config import ModelConfig
from supervisor.lifecycle.effects import RuntimeEffects
from supervisor.lifecycle.lease import (
    Conflict,
    Flight,
    Held,
    HoldRejected,
    Lease,
    stopped_error,
)
from supervisor.lifecycle.profiles import (
    Decision,
    Profile,
    profile_to_start,
    profiles_of,
    route_on_running,
    smallest_fitting,
)
from supervisor.lifecycle.readiness import StartFailed
from supervisor.lifecycle.table import Effect, Event, Load, State, next_step
from supervisor.observe.metrics import Metrics, ModelSnapshot
from supervisor.proxy.estimate import Estimator
from supervisor.runtime.base import Runtime, RuntimeFailure

log = logging.getLogger("supervisor.lifecycle.table")

DEFAULT_RETRY_AFTER = 10


class ModelHandle(RuntimeEffects):
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
        self._held: list[Held] = []
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
        # Operator toggles (admin API, schedules).
        self.pinned = False
        self.scheduled: set[str] = set()  # keep-warm windows open now: pinned while any is
        self.idle_timeout_override: float | None = None
        self.upstream_headers: dict[str, str] = {}  # the backend's key, when it wants one
        self._wanted = False  # an operator asked it to run: start again after a stop
        self._next_profile: str | None = None  # the profile an operator asked for
        self._pending: ModelConfig | None = None  # a reloaded definition, for the next start
        self._flights: list[Flight] = []

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def served_name(self) -> str:
        return self.config.served_model_name or self.name

    @property
    def upstream(self) -> str:
        return self.profile.upstream

    @property
    def is_pinned(self) -> bool:
        return self.pinned or bool(self.scheduled)

    @property
    def idle_timeout(self) -> float:
        """The operator's override, else the (reloaded) config's for the running profile."""
        if self.idle_timeout_override is not None:
            return self.idle_timeout_override
        config = self.config
        if self.profile.default or config.long_idle_timeout is None:
            return config.idle_timeout
        return config.long_idle_timeout

    def larger_profile(self, than: Profile) -> Profile | None:
        """The next profile up, for a retry when the upstream says a request is too long."""
        if than.max_model_len is None:
            return None
        return smallest_fitting(self.profiles, than.max_model_len + 1)

    # -- requests ---------------------------------------------------------

    @asynccontextmanager
    async def lease(self, tokens: int | None = None) -> AsyncIterator[Lease]:
        """Hold until a profile that fits `tokens` is ready; count the request in flight."""
        lease = await self._acquire(tokens)
        try:
            yield lease
        finally:
            self._release(lease.flight)

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
        flight = Flight(asyncio.current_task())
        if self.state is State.READY and self.profile.fits(tokens):
            self.in_flight += 1
            self._flights.append(flight)
            return Lease(self.profile, cold_start=False, hold_seconds=0.0, flight=flight)
        if len(self._held) >= self.config.max_held:
            raise HoldRejected(
                503,
                "model_overloaded",
                f"model {self.name!r} is {self.state.value} and already holds "
                f"{len(self._held)} requests (max_held); retry later",
                self._retry_after(),
            )
        began = time.monotonic()
        held = Held(asyncio.get_running_loop().create_future(), tokens, flight)
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
            self._abandon(held)  # the client went away while held (or a force stop)
            if not flight.aborted:
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            raise stopped_error(self.name) from None
        return Lease(self.profile, cold_start=True, hold_seconds=time.monotonic() - began,
                     flight=flight)

    def _abandon(self, held: Held) -> None:
        if held in self._held:
            self._held.remove(held)
        elif held.waiter.done() and not held.waiter.cancelled() and not held.waiter.exception():
            self._release(held.flight)  # it was released, and counted in flight, meanwhile

    def _release(self, flight: Flight | None = None) -> None:
        if flight is not None and flight in self._flights:
            self._flights.remove(flight)
        self.in_flight -= 1
        if self.in_flight:
            return
        if self.state is State.READY:
            self._arm_idle()
        elif self.state in (State.DRAINING, State.SLEEPING):
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

    # -- operator toggles (admin API, schedules) ----------------------------

    def start(self, profile: str | None = None) -> None:
        """Run it (under `profile`): a running model on another profile is swapped."""
        if profile is not None and profile != self.profile.name and self.state not in (
                State.STOPPED, State.FAILED):
            self._next_profile, self._wanted = profile, True
            self._dispatch(Event.RESTART)
            return
        self._next_profile, self._wanted = profile, True
        self._dispatch(Event.START)

    def stop(self, *, force: bool = False) -> None:
        self._wanted, self._next_profile = False, None
        self._dispatch(Event.FORCE_STOP if force else Event.STOP, stopped_error(self.name))

    def sleep(self) -> None:
        self._require_sleep_mode()
        self._dispatch(Event.SLEEP)

    def wake(self) -> None:
        self._require_sleep_mode()
        if self.state is State.SLEEPING:
            self._wanted = True  # wakes as soon as it is asleep
        self._dispatch(Event.WAKE)

    def _require_sleep_mode(self) -> None:
        if not self.config.sleep.enabled:
            raise Conflict(f"model {self.name!r} has no sleep mode (models.{self.name}."
                           "sleep.enabled is false; vLLM needs VLLM_SERVER_DEV_MODE=1)")

    def set_pinned(self, pinned: bool, *, schedule: str | None = None) -> None:
        """Pin (never idle-stopped) by the operator, or by an open keep-warm window."""
        if schedule is None:
            self.pinned = pinned
        elif pinned:
            self.scheduled.add(schedule)
        else:
            self.scheduled.discard(schedule)
        self._rearm_idle()

    def set_idle_timeout(self, seconds: float | None) -> None:
        self.idle_timeout_override = seconds
        self._rearm_idle()

    def reconfigure(self, config: ModelConfig) -> None:
        """A reloaded definition: at once when stopped, else at the next start; timeouts
        and limits apply at once either way."""
        if self.state in (State.STOPPED, State.FAILED):
            self._apply_config(config)
        else:
            self.config = self._pending = config  # self.profiles: the running ones, until then
        self._rearm_idle()

    def _rearm_idle(self) -> None:
        """Idle rules changed: apply them counting the time already spent idle."""
        if self.state in (State.READY, State.ASLEEP) and not (self.in_flight or self._held):
            self._arm_idle(fresh=False)

    # -- lifecycle driver -------------------------------------------------

    def _dispatch(self, event: Event, error: StartFailed | None = None,
                  reason: str = "") -> None:
        before = self.state
        load = Load(self.in_flight, len(self._held), self.is_pinned, self._wanted)
        step = next_step(before, event, load)
        if Effect.REFUSE in step.effects:
            raise Conflict(f"model {self.name!r} is {before.value}: cannot {event.value} now")
        self.state = step.state
        if step.state is State.READY:
            self._wanted = False
        if before is not step.state:
            self.metrics.transition(self.name, before.value, step.state.value)
            log.info("model=%s profile=%s %s -> %s on %s",
                     self.name, self.profile.name, before, step.state, event)
        for effect in step.effects:
            self._apply(effect, error, reason or event.value)

    def _apply(self, effect: Effect, error: StartFailed | None, reason: str) -> None:
        if effect in (Effect.START, Effect.AWAIT_READY):
            if effect is Effect.START:
                self._choose_profile()
            self._wanted = False
            self._start_began = time.monotonic()
            self._task = asyncio.create_task(self._start(compose_up=effect is Effect.START))
        elif effect is Effect.STOP:
            idle = time.monotonic() - self.idle_since
            why = {"idle": f"idle for {idle:.0f}s", "swap": "for a profile swap"}.get(
                reason, f"on {reason}")
            grace = 0.0 if reason == Event.FORCE_STOP else self.config.stop_timeout
            prev = self._task if self._task is not asyncio.current_task() else None
            self._task = asyncio.create_task(self._stop(why, grace, prev))
        elif effect is Effect.RELEASE_HELD:
            self._release_fitting()
        elif effect is Effect.FAIL_HELD:
            for held in self._take_held(lambda h: True):
                held.waiter.set_exception(error or StartFailed("start failed"))
        elif effect is Effect.ARM_IDLE:
            self._arm_idle()
        elif effect is Effect.ABORT:
            if self._task is not None:
                self._task.cancel()
        elif effect is Effect.FAIL_IN_FLIGHT:
            for flight in self._flights:
                flight.aborted = True
                if flight.task is not None:
                    flight.task.cancel()
        elif effect is Effect.SLEEP:
            self._task = asyncio.create_task(self._sleep())
        elif effect is Effect.WAKE:
            self._wanted = False
            self._task = asyncio.create_task(self._wake())

    def _choose_profile(self) -> None:
        """For a start: a reloaded definition applies now; an operator's profile choice,
        else the default profile when the held requests fit it."""
        if self._pending is not None:
            self._apply_config(self._pending)
        wanted = next((p for p in self.profiles if p.name == self._next_profile), None)
        self._next_profile = None
        tokens = max((h.tokens or 0 for h in self._held), default=0)
        self.profile = wanted or profile_to_start(self.profiles, tokens) or self.profile

    def _apply_config(self, config: ModelConfig) -> None:
        self.config, self._pending = config, None
        self.profiles = profiles_of(config)
        same = next((p for p in self.profiles if p.name == self.profile.name), None)
        self.profile = same or next(p for p in self.profiles if p.default)

    def _release_fitting(self) -> None:
        for held in self._take_held(lambda h: self.profile.fits(h.tokens)):
            held.waiter.set_result(None)
            self.in_flight += 1
            self._flights.append(held.flight)
        if self._held:
            asyncio.get_running_loop().call_soon(self._consider_swap)

    def _take_held(self, which: Callable[[Held], bool]) -> list[Held]:
        """Remove and return the pending held requests that `which` selects."""
        self._held = [h for h in self._held if not h.waiter.done()]
        taken = [h for h in self._held if which(h)]
        self._held = [h for h in self._held if h not in taken]
        return taken

    def _arm_idle(self, *, fresh: bool = True) -> None:
        """Start the idle timer; `fresh` False keeps the time already spent idle."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if fresh:
            self.idle_since = time.monotonic()
        remaining = max(0.0, self.idle_timeout - (time.monotonic() - self.idle_since))
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(remaining, self._dispatch, Event.IDLE)

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
