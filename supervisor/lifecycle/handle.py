"""One model's handle: it owns the lifecycle state, the active profile, the held
requests, the in-flight count and the timers, feeds events to the pure lifecycle
table and runs the effects that come back as tasks.

Everything here runs on the event loop and `_dispatch` never awaits, so the
check-then-act sequences (is it ready? count it in flight) need no locks. The
effects (effects.py) do the I/O and return the event that ended them; only the
handle dispatches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from supervisor.config import ModelConfig
from supervisor.lifecycle.admission import InsufficientGpuMemory
from supervisor.lifecycle.clock import Timer
from supervisor.lifecycle.effects import Effects, Outcome
from supervisor.lifecycle.lease import (
    Cancellable,
    Flight,
    Held,
    HoldRejected,
    Lease,
    Observer,
    stopped_error,
)
from supervisor.lifecycle.liveness import Liveness
from supervisor.observe.metrics import Metrics, ModelSnapshot
from supervisor.refusal import Conflict, Refusal, StartFailed
from supervisor.rules.profiles import (
    Profile,
    ProfileDecision,
    idle_timeout,
    profile_to_start,
    profiles_of,
    route_on_running,
    smallest_fitting,
)
from supervisor.rules.table import DOWN, Effect, Event, Load, State, next_step

if TYPE_CHECKING:
    from supervisor.tokens.estimate import Estimator

log = logging.getLogger("supervisor.lifecycle")

DEFAULT_RETRY_AFTER = 10
# What an effect that raised instead of returning is taken for.
_CRASHED = {"start": Event.START_FAILED, "stop": Event.STOPPED, "sleep": Event.SLEEP_FAILED,
            "wake": Event.WAKE_FAILED}


class ModelHandle:
    def __init__(self, name: str, config: ModelConfig, effects: Effects,
                 metrics: Metrics) -> None:
        self.name = name
        self.metrics = metrics
        self.config = config
        self.profiles = profiles_of(config)
        self.profile = next(p for p in self.profiles if p.default)  # the active (or last) one
        self._effects = effects
        self.clock = effects.clock
        self.state = State.STOPPED
        self.in_flight = 0
        self._held: list[Held] = []
        self._idle_timer: Timer | None = None
        self._sleep_timer: Timer | None = None
        self._swap_timer: Timer | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_swap: float | None = None
        self.idle_since = self.clock.now()
        self.last_error: str | None = None
        self.last_cold_start_seconds: float | None = None
        self.last_request_at: float | None = None
        self.start_failures = 0  # consecutive; a successful start resets it
        self._retry_at: float | None = None  # no start before this (crash-loop backoff)
        self._retry_timer: Timer | None = None
        self._liveness = Liveness(name, effects, self.clock, self._watching, self._unresponsive)
        self._warmup_task: asyncio.Task[None] | None = None
        self._first_pending = False  # the next lease is the first after a start or wake
        self._ready_since = 0.0  # when its last start became ready (min_residency)
        self._evicted: tuple[str, ...] = ()  # what its last start evicted (for the header)
        self._up = False  # its service was brought up (or adopted) since the last stop
        self.estimator: Estimator | None = None  # loading a tokenizer is slow: see configure
        self.upstream_headers: dict[str, str] = {}  # the backend's key, when it wants one
        # A replica's set (replicas.py) follows its swaps: (this replica, target profile).
        self.on_swap: Callable[[ModelHandle, str], None] | None = None
        # Operator toggles (admin API, schedules).
        self.pinned = False
        self.scheduled: set[str] = set()  # keep-warm windows open now: pinned while any is
        self.idle_timeout_override: float | None = None
        self._wanted = False  # an operator asked it to run: start again after a stop
        self._next_profile: str | None = None  # the profile an operator asked for
        self._pending: ModelConfig | None = None  # a reloaded definition, for the next start
        self._flights: list[Flight] = []
        # Worker processes forward for it too (workers/owner.py): told of every change, and
        # asked to fence them before a decision that needs "nothing in flight".
        self.observer: Observer | None = None
        self._armed = 0  # bumped at each arming of the idle timers
        self._retiring = False
        self.retired = asyncio.Event()  # set once a retiring model is down and unused

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
        return idle_timeout(self.config, self.profile)

    def larger_profile(self, than: Profile) -> Profile | None:
        """The next profile up, for a retry when the upstream says a request is too long."""
        if than.max_model_len is None:
            return None
        return smallest_fitting(self.profiles, than.max_model_len + 1)

    def configure(self, estimator: Estimator | None, upstream_headers: dict[str, str]) -> None:
        """What the proxy needs beside the config: the token estimator (slow to load, so
        made off the loop) and the headers that carry the backend's own key."""
        self.estimator = estimator
        self.upstream_headers = upstream_headers

    def restore(self, *, pinned: bool, idle_timeout: float | None) -> None:
        """Toggles saved by an earlier run of the supervisor."""
        self.pinned, self.idle_timeout_override = pinned, idle_timeout
        self._rearm_idle()

    # -- requests ---------------------------------------------------------

    @asynccontextmanager
    async def lease(self, tokens: int | None = None) -> AsyncIterator[Lease]:
        """Hold until a profile that fits `tokens` is ready; count the request in flight."""
        lease = await self._acquire(tokens)
        try:
            yield lease
        finally:
            self.release(lease)

    def snapshot(self) -> ModelSnapshot:
        now = self.clock.now()
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
            start_failures=self.start_failures,
            retry_in_seconds=self.retry_in,
        )

    @property
    def retry_in(self) -> float:
        """Seconds until a failed model may be started again (0 when it may now)."""
        if self._retry_at is None or self.state is not State.FAILED:
            return 0.0
        return max(0.0, self._retry_at - self.clock.now())

    def lease_now(self, tokens: int | None, task: Cancellable | None) -> Lease | None:
        """A lease at once when the running profile is ready and fits, else None (the fast
        path's test: it hands everything else to the path that can hold). `task` is what a
        force stop or a dead server cancels; give the lease back with `release`."""
        if self.state is not State.READY or not self.profile.fits(tokens):
            return None
        self.last_request_at = self.clock.now()
        flight = Flight(task)
        self.in_flight += 1
        self._flights.append(flight)
        return Lease(self.profile, cold_start=False, hold_seconds=0.0, flight=flight,
                     replica=self, first=self._take_first())

    def release(self, lease: Lease) -> None:
        self._release(lease.flight)

    def add_flight(self, task: Cancellable) -> Flight:
        """A request that another process forwards counts in flight here (a worker's
        "busy"): the idle timers, DRAINED and the GPU budget see it; `end_flight` ends it."""
        self.last_request_at = self.clock.now()
        flight = Flight(task)
        self.in_flight += 1
        self._flights.append(flight)
        return flight

    def end_flight(self, flight: Flight) -> None:
        self._release(flight)

    async def _acquire(self, tokens: int | None) -> Lease:
        began = self.clock.now()
        ready = self.lease_now(tokens, asyncio.current_task())
        if ready is not None:
            return ready
        self.last_request_at = began
        flight = Flight(asyncio.current_task())
        down = self._effects.runtime_down
        if down is not None and self.state in DOWN:
            self._effects.runtime_back.set()  # maybe it is back: have the watcher look now
            raise Refusal(f"model {self.name!r} is {self.state.value} and cannot be started: "
                          f"the container runtime is unreachable ({down}); retry later",
                          status=503, code="runtime_unavailable", retry_after=5,
                          model=self.name)
        if self.retry_in > 0:
            raise StartFailed(
                f"model {self.name!r} failed to start {self.start_failures} times in a row; "
                f"the next try is in {self.retry_in:.0f}s. Last error: {self.last_error}",
                retry_after=math.ceil(self.retry_in), model=self.name)
        if len(self._held) >= self.config.max_held:
            raise HoldRejected(
                f"model {self.name!r} is {self.state.value} and already holds "
                f"{len(self._held)} requests (max_held); retry later",
                status=503, code="model_overloaded", retry_after=self._retry_after(),
                model=self.name)
        held = Held(asyncio.get_running_loop().create_future(), tokens, flight)
        held.expiry = self.clock.call_later(self.config.hold_timeout, self._expire, held)
        self._held.append(held)
        if self.state is State.READY:
            self._consider_swap()  # it does not fit the running profile
        else:
            self._dispatch(Event.DEMAND)
        try:
            await held.waiter
        except asyncio.CancelledError:
            self._abandon(held)  # the client went away while held (or a force stop)
            if not flight.aborted:
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            raise stopped_error(self.name) from None
        finally:
            held.expiry.cancel()
        return Lease(self.profile, cold_start=True, hold_seconds=self.clock.now() - began,
                     flight=flight, replica=self, first=self._take_first(),
                     evicted=self._evicted)

    def _take_first(self) -> bool:
        """True for the first request forwarded after a start or a wake (its latency is the
        server's cold one, kept apart from the warm ones in the metrics)."""
        first, self._first_pending = self._first_pending, False
        return first

    def _expire(self, held: Held) -> None:
        """hold_timeout passed while the request was still held."""
        if held not in self._held or held.waiter.done():
            return
        self._held.remove(held)
        held.waiter.set_exception(HoldRejected(
            f"model {self.name!r} was not ready within hold_timeout "
            f"({self.config.hold_timeout:.0f}s); it is {self.state.value}",
            status=504, code="hold_timeout", model=self.name))
        self._left_hold()

    def _abandon(self, held: Held) -> None:
        if held in self._held:
            self._held.remove(held)
            self._left_hold()
        elif held.waiter.done() and not held.waiter.cancelled() and not held.waiter.exception():
            self._release(held.flight)  # it was released, and counted in flight, meanwhile

    def _left_hold(self) -> None:
        """A held request gave up: a ready model it kept busy (waiting for a swap) is idle
        again; a start still waiting for GPU memory is wanted by nobody now."""
        if self.state is State.READY and not (self.in_flight or self._held):
            self._arm_idle()
        if (self.state is State.STARTING and not self._held and not self._wanted
                and not self.is_pinned and self._effects.gpus.waiting(self.name)):
            log.info("model=%s no request waits for it any more: not starting", self.name)
            self._dispatch(Event.STOP)
        self._effects.gpus.changed()
        self._check_retired()

    def _release(self, flight: Flight | None = None) -> None:
        if flight is not None and flight in self._flights:
            self._flights.remove(flight)
        self.in_flight -= 1
        if self.in_flight:
            return
        if self.state is State.READY:
            self._arm_idle()
            self._effects.gpus.changed()  # idle now: evictable for a model that waits
        elif self.state in (State.DRAINING, State.SLEEPING):
            self._dispatch(Event.DRAINED)
        self._check_retired()

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
        since = None if self._last_swap is None else self.clock.now() - self._last_swap
        tokens = max(t or 0 for t in needs)
        route = route_on_running(self.profiles, self.profile, tokens, since,
                                 self.config.min_residency)
        if route is None:  # the router refuses these before they are held
            return
        if route.decision is ProfileDecision.WAIT:
            log.info("model=%s swap to profile=%s waits %.0fs (min_residency)",
                     self.name, route.target.name, route.wait_seconds)
            self._swap_timer = self.clock.call_later(route.wait_seconds, self._consider_swap)
            return
        self._last_swap = self.clock.now()
        self.metrics.swap(self.name, self.profile.name, route.target.name)
        log.info("model=%s swapping profile %s -> %s for a request of %d tokens; "
                 "draining %d in flight", self.name, self.profile.name, route.target.name,
                 tokens, self.in_flight)
        self._dispatch(Event.SWAP)
        if self.on_swap is not None:
            self.on_swap(self, route.target.name)

    async def upstream_failed(self) -> str | None:
        """The upstream refused a connection: if its container died, forget it was ready.
        Returns how it is gone ('exited', 'absent'), None when it still runs."""
        gone = await self._effects.container_state(self.profile)
        if gone is not None:
            self.container_died(gone)
        return gone

    def resident_for(self) -> float:
        """Seconds since its running profile became ready (0 while not running)."""
        if self.state in (*DOWN, State.STARTING):
            return 0.0
        return self.clock.now() - self._ready_since

    def evict(self, sleep: bool, why: str) -> None:
        """The GPU budget needs its memory: put it to sleep, or stop it (gracefully: the
        planner picks idle models only, and a request that came meanwhile still ends).
        With workers, only once they have said what they forward for it (the fence)."""
        if self.observer is None:
            self._evict(sleep, why)
            return

        def then() -> None:
            with contextlib.suppress(Conflict):  # its state moved on during the fence
                self._evict(sleep, why)
        self.observer.fence(self, then)

    def _evict(self, sleep: bool, why: str) -> None:
        log.info("model=%s evicted %s", self.name, why)
        self.metrics.eviction(self.name, "sleep" if sleep else "stop")
        if sleep and self.state is State.READY:
            self._dispatch(Event.SLEEP)
        else:
            self._dispatch(Event.STOP)

    def container_died(self, how: str = "exited") -> None:
        """Its container is gone (Docker said so, or a connection found it): requests held
        or pinned bring it back at once, the others at the next request."""
        if self.state in (State.READY, State.ASLEEP):
            self.last_error = f"container {how} while {self.state.value}"
            log.warning("model=%s %s", self.name, self.last_error)
            self._dispatch(Event.EXITED)

    def _unresponsive(self, reason: str) -> None:
        """Liveness gave up on it: cut what waits on it and stop it; it starts again once
        down when requests are held, it is pinned or an operator wants it."""
        self.last_error = reason
        self._wanted = self._wanted or self.is_pinned
        self._dispatch(Event.UNHEALTHY)

    def _watching(self, profile: Profile) -> bool:
        return self.state in (State.READY, State.ASLEEP) and profile is self.profile

    # -- operator toggles (admin API, schedules) ----------------------------

    def start(self, profile: str | None = None) -> None:
        """Run it (under `profile`): a running model on another profile is swapped."""
        swap = profile is not None and profile != self.profile.name and self.state not in DOWN
        self._next_profile, self._wanted = profile, True
        self._dispatch(Event.RESTART if swap else Event.START)

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
        self._effects.gpus.changed()  # unpinned: evictable for a start that waits

    def set_idle_timeout(self, seconds: float | None) -> None:
        self.idle_timeout_override = seconds
        self._rearm_idle()

    def reconfigure(self, config: ModelConfig) -> None:
        """A reloaded definition: at once when stopped, else at the next start; timeouts
        and limits apply at once either way."""
        if self.state in DOWN:
            self._apply_config(config)
        else:
            self.config = self._pending = config  # self.profiles: the running ones, until then
        self._rearm_idle()

    def retire(self) -> None:
        """Removed from the config: stop once nothing is in flight (held requests are
        served first); `retired` is set when it is down and unused."""
        self._retiring, self._wanted, self._next_profile = True, False, None
        self._check_retired()

    def _check_retired(self) -> None:
        if not self._retiring or self.in_flight or self._held:
            return
        if self.state in DOWN:
            self.retired.set()
        elif self.state in (State.READY, State.ASLEEP):
            asyncio.get_running_loop().call_soon(self.stop)  # it served what was held

    def _rearm_idle(self) -> None:
        """Idle rules changed: apply them counting the time already spent idle."""
        if self.state in (State.READY, State.ASLEEP) and not (self.in_flight or self._held):
            self._arm_idle(fresh=False)

    # -- lifecycle driver -------------------------------------------------

    def _dispatch(self, event: Event, error: Refusal | None = None,
                  reason: str = "") -> None:
        before = self.state
        load = Load(self.in_flight, len(self._held), self.is_pinned, self._wanted)
        step = next_step(before, event, load)
        if Effect.REFUSE in step.effects:
            raise Conflict(f"model {self.name!r} is {before.value}: cannot {event.value} now")
        if Effect.START in step.effects:
            self._choose_profile()  # before the transition is told: it names what starts
        self.state = step.state
        if step.state is State.READY:
            self._wanted = False
            if before in (State.STARTING, State.WAKING):
                self._first_pending = True
        if before is not step.state:
            self.metrics.transition(
                self.name, before.value, step.state.value, event=event.value,
                profile=self.profile.name,
                error=self.last_error if step.state is State.FAILED else None)
            log.info("model=%s profile=%s %s -> %s on %s",
                     self.name, self.profile.name, before, step.state, event)
        for effect in step.effects:
            self._apply(effect, error, reason or event.value)
        if before is not step.state:
            if step.state is State.READY and before is State.STARTING:
                self._ready_since = self.clock.now()
            self._effects.gpus.changed()
            if step.state in (State.READY, State.ASLEEP) and before not in (
                    State.READY, State.ASLEEP, State.SLEEPING):
                self._liveness.watch(self.profile, self.config.liveness)
            self._check_retired()
        if self.observer is not None:
            self.observer.changed(self)

    def _apply(self, effect: Effect, error: Refusal | None, reason: str) -> None:
        if effect in (Effect.START, Effect.AWAIT_READY):
            self._wanted = False
            self._spawn("start", self._start(compose_up=effect is Effect.START))
        elif effect is Effect.STOP:
            idle = self.clock.now() - self.idle_since
            why = {"idle": f"idle for {idle:.0f}s", "swap": "for a profile swap"}.get(
                reason, f"on {reason}")
            grace = 0.0 if reason == Event.FORCE_STOP else self.config.stop_timeout
            prev = self._task if self._task is not asyncio.current_task() else None
            self._spawn("stop", self._stop(why, grace, prev))
        elif effect is Effect.RELEASE_HELD:
            self._release_fitting()
        elif effect is Effect.FAIL_HELD:
            for held in self._take_held(lambda h: True):
                held.waiter.set_exception(error or StartFailed("start failed", model=self.name))
        elif effect is Effect.ARM_IDLE:
            self._arm_idle(fresh=reason != Event.SLEEP_FAILED)  # idle counts from a request
        elif effect is Effect.ABORT:
            if self._task is not None:
                self._task.cancel()
        elif effect is Effect.FAIL_IN_FLIGHT:
            code = "upstream_died" if reason == Event.UNHEALTHY else "model_stopped"
            for flight in self._flights:
                flight.aborted = code
                if flight.task is not None:
                    flight.task.cancel()
        elif effect is Effect.SLEEP:
            self._spawn("sleep", self._effects.sleep(
                self.name, self.config, self.profile, self.upstream_headers))
        elif effect is Effect.WAKE:
            self._wanted = False
            self._spawn("wake", self._wake())

    def _spawn(self, kind: str, work: Coroutine[Any, Any, Outcome]) -> None:
        self._task = asyncio.create_task(self._run(kind, work))
        # A task cancelled before it ran (a force stop right after a start) never awaited
        # `work`: close it, or Python warns that it was never awaited.
        self._task.add_done_callback(lambda _: work.close())

    async def _run(self, kind: str, work: Coroutine[Any, Any, Outcome]) -> None:
        """Await an effect and dispatch how it ended; one that raises fails its step like a
        runtime failure would, so no model is left in a state only a restart ends."""
        try:
            outcome = await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("model=%s %s task raised", self.name, kind)
            outcome = Outcome(_CRASHED[kind], f"{kind} raised {exc!r}")
        if outcome.error is not None:
            self.last_error = outcome.error
        error: Refusal | None = outcome.refusal
        if outcome.event is Event.START_FAILED and error is None:
            error = StartFailed(f"model {self.name!r} failed to start: {outcome.error}",
                                model=self.name)
            self._back_off()
        self._dispatch(outcome.event, error)

    async def _admit(self) -> Outcome | None:
        """GPU placement before a start or wake: wait until the profile fits (evicting idle
        models for it); an Outcome when it never can."""
        try:
            self._evicted = await self._effects.gpus.admit(self, self.profile)
        except InsufficientGpuMemory as exc:
            log.error("model=%s cannot start: %s", self.name, exc)
            return Outcome(Event.START_FAILED, str(exc), refusal=exc)
        return None

    async def _start(self, *, compose_up: bool) -> Outcome:
        profile = self.profile
        if compose_up and (refused := await self._admit()) is not None:
            return refused
        self._up = True
        outcome = await self._effects.start(self.name, self.config, profile,
                                            self.upstream_headers, compose_up=compose_up)
        ok = outcome.event is Event.STARTED
        if compose_up:
            self.metrics.cold_start(self.name, profile.name, outcome.seconds, ok=ok)
        if ok:
            self.last_cold_start_seconds, self.last_error = outcome.seconds, None
            self.start_failures, self._retry_at = 0, None
            if outcome.endpoint is not None:  # routed to the node its task runs on (Swarm)
                self.profile = profile.at(outcome.endpoint)
            await self._warm_up_after_ready()
        return outcome

    async def _wake(self) -> Outcome:
        if (refused := await self._admit()) is not None:
            return Outcome(Event.WAKE_FAILED, refused.error)
        outcome = await self._effects.wake(self.name, self.config, self.profile,
                                           self.upstream_headers)
        if outcome.event is Event.WOKE:
            await self._warm_up_after_ready()
        return outcome

    async def _warm_up_after_ready(self) -> None:
        """Before the held requests are released (they wait: the task is still the start's
        or the wake's), or beside them once they are."""
        warmup = self.config.warmup
        if warmup is None:
            return
        if warmup.before_release:
            await self._warm_up(self.profile)
        else:
            asyncio.get_running_loop().call_soon(self._warm_up_beside)

    def _warm_up_beside(self) -> None:
        if self.state is State.READY:
            self._warmup_task = asyncio.create_task(self._warm_up(self.profile))

    async def _warm_up(self, profile: Profile) -> None:
        outcome = await self._effects.warm_up(self.name, self.config, profile,
                                              self.upstream_headers)
        self.metrics.warmup(self.name, profile.name, outcome.seconds, ok=outcome.error is None)
        if outcome.error is not None:
            self.last_error = outcome.error

    def _back_off(self) -> None:
        """After a failed start: no other before 1 s, 2 s, 4 s ... (restart_backoff_max);
        a pinned model is tried again then on its own."""
        self.start_failures += 1
        delay = min(2.0 ** (self.start_failures - 1), self.config.restart_backoff_max)
        self._retry_at = self.clock.now() + delay
        log.warning("model=%s failed to start %d times in a row; next try in %.0fs",
                    self.name, self.start_failures, delay)
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        self._retry_timer = self.clock.call_later(delay, self._retry_if_pinned)

    def _retry_if_pinned(self) -> None:
        if self.state is State.FAILED and self.is_pinned:
            self._dispatch(Event.DEMAND)

    async def _stop(self, why: str, grace: float, aborted: asyncio.Task[None] | None) -> Outcome:
        if aborted is not None:  # a start, sleep or wake that was cancelled: let it unwind
            await asyncio.gather(aborted, return_exceptions=True)
        if not self._up:  # a start cancelled while it waited for GPU memory: nothing runs
            return Outcome(Event.STOPPED)
        outcome = await self._effects.stop(self.name, self.profile, grace, why)
        self._up = False
        return outcome

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
        """Start the idle timers: sleep after `sleep.after` (tier 1, while ready) and stop
        after `idle_timeout` (tier 2, asleep or not); `fresh` False keeps the time already
        spent idle."""
        for timer in (self._idle_timer, self._sleep_timer):
            if timer is not None:
                timer.cancel()
        now = self.clock.now()
        if fresh:
            self.idle_since = now
        idle = now - self.idle_since
        self._armed += 1
        self._idle_timer = self.clock.call_later(max(0.0, self.idle_timeout - idle),
                                                 self._idle_due, Event.IDLE, self._armed)
        after = self.config.sleep.after
        if self.state is State.READY and self.config.sleep.enabled and after is not None:
            self._sleep_timer = self.clock.call_later(max(0.0, after - idle),
                                                      self._idle_due, Event.SLEEP_DUE,
                                                      self._armed)

    def _idle_due(self, event: Event, armed: int) -> None:
        """An idle timer fired. With workers, fence first: a request one of them has just
        leased is counted before the table sees "nothing in flight"; and a timer re-armed
        meanwhile (a request came and went) makes this one void."""
        if self.observer is None:
            self._dispatch(event)
            return

        def then() -> None:
            if armed == self._armed:
                self._dispatch(event)
        self.observer.fence(self, then)

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
        for timer in (self._idle_timer, self._sleep_timer, self._swap_timer, self._retry_timer):
            if timer is not None:
                timer.cancel()
        for held in self._take_held(lambda h: True):
            held.waiter.set_exception(StartFailed("the supervisor is shutting down",
                                                  model=self.name))
        await self._liveness.close()
        for task in (self._task, self._warmup_task):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
