"""One model's handle (or one replica's): it owns the lifecycle state, the active
profile, the in-flight count and the timers, feeds events to the pure lifecycle table and
runs the effects that come back as tasks (runner.py). Requests it cannot serve at once
wait in its hold queue (hold.py); whoever follows it (the GPU budget, the worker fleet,
a replica set, the metrics, the event log) is told through its listeners (listeners.py).

Everything here runs on the event loop and `_dispatch` never awaits, so the
check-then-act sequences (is it ready? count it in flight) need no locks. The
effects (effects.py) do the I/O and return the event that ended them; only the
handle dispatches.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from supervisor.clients.fairness import NOBODY, Asker
from supervisor.config import ModelConfig
from supervisor.journal import StartKind
from supervisor.lifecycle.commands import Commands
from supervisor.lifecycle.effects import Effects
from supervisor.lifecycle.hold import Held, HoldQueue
from supervisor.lifecycle.idle import IdleTimers, Swaps
from supervisor.lifecycle.lease import Cancellable, Flight, Lease, stopped_error
from supervisor.lifecycle.listeners import Listeners
from supervisor.lifecycle.liveness import Liveness
from supervisor.lifecycle.runner import Runner
from supervisor.lifecycle.waiting import Standing, overloaded, standing, standings, timed_out
from supervisor.observe.metrics import Metrics, ModelSnapshot
from supervisor.refusal import Conflict, Refusal, ShuttingDown, StartFailed
from supervisor.rules.profiles import (
    Profile,
    profiles_of,
    smallest_fitting,
)
from supervisor.rules.table import DOWN, Effect, Event, Load, State, next_step

if TYPE_CHECKING:
    from supervisor.tokens.estimate import Estimator

log = logging.getLogger("supervisor.lifecycle")

WAKES = (State.ASLEEP, State.SLEEPING, State.WAKING)  # a request held now waits on a wake


class ModelHandle(Commands):
    def __init__(self, name: str, config: ModelConfig, effects: Effects,
                 metrics: Metrics, listeners: Listeners | None = None) -> None:
        self.name = name
        self.metrics = metrics
        self.config = config
        self.profiles = profiles_of(config)
        self.profile = next(p for p in self.profiles if p.default)  # the active (or last) one
        self.effects = effects
        self.clock = effects.clock
        self.listeners = listeners if listeners is not None else Listeners()
        self.state = State.STOPPED
        self.in_flight = 0
        self.hold = HoldQueue(self.clock)
        self.idle = IdleTimers(self)
        self._swaps = Swaps(self)
        self.last_error: str | None = None
        self.last_cold_start_seconds: float | None = None
        self.began_at: float | None = None  # its current (or last) start or wake
        self.last_request_at: float | None = None
        self.start_failures = 0  # consecutive; a successful start resets it
        self.sleep_level = 0  # while asleep: 1 (weights in host RAM) or 2 (dropped)
        self._runner = Runner(self)
        self._liveness = Liveness(name, effects, self.clock, self._watching, self._unresponsive)
        self._first_pending = False  # the next lease is the first after a start or wake
        self._ready_since = 0.0  # when its last start became ready (min_residency)
        self.estimator: Estimator | None = None  # loading a tokenizer is slow: see configure
        self.upstream_headers: dict[str, str] = {}  # the backend's key, when it wants one
        # Operator toggles (admin API, schedules).
        self.pinned = False
        self.scheduled: set[str] = set()  # keep-warm windows open now: pinned while any is
        self.idle_timeout_override: float | None = None
        self._wanted = False  # an operator asked it to run: start again after a stop
        self._next_profile: str | None = None  # the profile an operator asked for
        self._pending: ModelConfig | None = None  # a reloaded definition, for the next start
        self._flights: dict[Flight, None] = {}
        self._retiring = False
        self.retired = asyncio.Event()  # set once a retiring model is down and unused

    replicas: tuple[ModelHandle, ...] = ()  # a model served by one server has none

    def units(self) -> list[ModelHandle]:
        """What has a lifecycle of its own: this handle."""
        return [self]

    @property
    def held(self) -> int:
        return len(self.hold)
    @property
    def served_name(self) -> str:
        return self.config.served_model_name or self.name

    @property
    def upstream(self) -> str:
        return self.profile.upstream

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

    # -- requests ---------------------------------------------------------

    @asynccontextmanager
    async def lease(self, tokens: int | None = None,
                    client: Asker = NOBODY) -> AsyncIterator[Lease]:
        """Hold until a profile that fits `tokens` is ready; count the request in flight.
        `client`: who asks (its place in the hold queue: clients/fairness.py)."""
        lease = await self._acquire(tokens, client)
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
            held=len(self.hold),
            idle_seconds=now - self.idle.since if self.state is State.READY and not (
                self.in_flight or self.hold) else 0.0,
            seconds_since_last_request=(
                None if self.last_request_at is None else now - self.last_request_at),
            start_failures=self.start_failures,
            retry_in_seconds=self.retry_in,
        )

    def snapshots(self, reserved: dict[str, dict[int, int]]) -> list[ModelSnapshot]:
        """Its metrics row, with the GPU memory it holds."""
        return [replace(self.snapshot(), gpu_reserved=reserved.get(self.name, {}))]

    @property
    def retry_in(self) -> float:
        """Seconds until a failed model may be started again (0 when it may now)."""
        retry_at = self._runner.retry_at
        if retry_at is None or self.state is not State.FAILED:
            return 0.0
        return max(0.0, retry_at - self.clock.now())

    def lease_now(self, tokens: int | None, task: Cancellable | None) -> Lease | None:
        """A lease at once when the running profile is ready and fits, else None (the fast
        path's test: it hands everything else to the path that can hold). `task` is what a
        force stop or a dead server cancels; give the lease back with `release`."""
        if self.state is not State.READY or not self.profile.fits(tokens):
            return None
        self.last_request_at = self.clock.now()  # add_flight inlined: the hot path
        flight = Flight(task)
        self.in_flight += 1
        self._flights[flight] = None
        if hooks := self.listeners.on_flight_start:
            for hook in hooks:
                hook(self, flight)
        return Lease(self.profile, cold_start=False, hold_seconds=0.0, flight=flight,
                     replica=self, first=self._take_first())

    def release(self, lease: Lease) -> None:
        self._release(lease.flight)

    def add_flight(self, task: Cancellable | None) -> Flight:
        """Count a request in flight (one that a worker process forwards: the idle timers,
        DRAINED and the GPU budget see it); `end_flight` ends it."""
        self.last_request_at = self.clock.now()
        flight = Flight(task)
        self._count(flight)
        return flight

    def end_flight(self, flight: Flight) -> None:
        self._release(flight)

    def _count(self, flight: Flight) -> None:
        self.in_flight += 1
        self._flights[flight] = None
        if hooks := self.listeners.on_flight_start:
            for hook in hooks:
                hook(self, flight)

    def standing(self, task: object) -> Standing | None:
        """Where the request that `task` holds stands: place, ETA, phase."""
        return standing(self, task)

    def queue(self) -> list[Standing]:
        return standings(self)

    async def _acquire(self, tokens: int | None, client: Asker = NOBODY) -> Lease:
        began = self.clock.now()
        ready = self.lease_now(tokens, asyncio.current_task())
        if ready is not None:
            return ready
        self.last_request_at = began
        flight = Flight(asyncio.current_task(), held_since=began)
        down = self.effects.runtime_down
        if down is not None and self.state in DOWN:
            self.effects.runtime_back.set()  # maybe it is back: have the watcher look now
            raise Refusal(f"model {self.name!r} is {self.state.value} and cannot be started: "
                          f"the container runtime is unreachable ({down}); retry later",
                          status=503, code="runtime_unavailable", retry_after=5,
                          model=self.name)
        if self.retry_in > 0:
            raise StartFailed(
                f"model {self.name!r} failed to start {self.start_failures} times in a row; "
                f"the next try is in {self.retry_in:.0f}s. Last error: {self.last_error}",
                retry_after=math.ceil(self.retry_in), model=self.name)
        if len(self.hold) >= self.config.max_held:
            self._make_room(client)
        held = self.hold.join(tokens, flight, self.config.hold_timeout, self._expire, client)
        start: StartKind = "wake" if self.state in WAKES else "cold"
        if self.state is State.READY:
            self._swaps.consider()  # it does not fit the running profile
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
            if held.expiry is not None:
                held.expiry.cancel()
        return Lease(self.profile, cold_start=True, hold_seconds=self.clock.now() - began,
                     flight=flight, replica=self, first=self._take_first(),
                     evicted=self._runner.evicted, start=start)

    def _take_first(self) -> bool:
        """True for the first request forwarded after a start or a wake (its latency is the
        server's cold one, kept apart from the warm ones in the metrics)."""
        first, self._first_pending = self._first_pending, False
        return first

    def _make_room(self, client: Asker) -> None:
        """The hold is full: refuse the newcomer, or (under its client's fair share) the
        newest held request of the client that holds the most."""
        displaced = self.hold.displace(client, self.config.max_held)
        if displaced is None:
            raise overloaded(self, f"; client {client.client!r} holds its share")
        self.hold.expire(displaced, overloaded(self, (
            f": this request gave its place to client {client.client!r}, which held fewer "
            "than its share")))

    def _expire(self, held: Held) -> None:
        """hold_timeout passed while the request was still held."""
        if self.hold.expire(held, timed_out(self)):
            self._left_hold()

    def _abandon(self, held: Held) -> None:
        left = self.hold.abandon(held)
        if left:
            self._left_hold()
        elif left is False:
            self._release(held.flight)  # it was released, and counted in flight, meanwhile

    def _left_hold(self) -> None:
        """A held request gave up: a ready model it kept busy (waiting for a swap) is idle
        again; a start still waiting for GPU memory is wanted by nobody now."""
        if self.state is State.READY and not (self.in_flight or self.hold):
            self.idle.arm()
        if (self.state is State.STARTING and not self.hold and not self._wanted
                and not self.is_pinned and self.effects.gpus.waiting(self.name)):
            log.info("model=%s no request waits for it any more: not starting", self.name)
            self._dispatch(Event.STOP)
        self.listeners.load(self)
        self._check_retired()

    def _release(self, flight: Flight) -> None:
        if flight in self._flights:
            del self._flights[flight]
        self.in_flight -= 1
        if not self.in_flight:
            if self.state is State.READY:
                self.idle.arm()
                self.listeners.load(self)  # idle now: evictable for a model that waits
            elif self.state in (State.DRAINING, State.SLEEPING):
                self._dispatch(Event.DRAINED)
            self._check_retired()
        if hooks := self.listeners.on_flight_end:
            for hook in hooks:
                hook(self, flight)

    # -- lifecycle driver -------------------------------------------------

    def _dispatch(self, event: Event, error: Refusal | None = None,
                  reason: str = "") -> None:
        before = self.state
        load = Load(self.in_flight, len(self.hold), self.is_pinned, self._wanted,
                    self.sleep_level)
        step = next_step(before, event, load)
        if Effect.REFUSE in step.effects:
            raise Conflict(f"model {self.name!r} is {before.value}: cannot {event.value} now")
        if Effect.START in step.effects:
            self._choose_profile()  # before the transition is told: it names what starts
        self.state = step.state
        if step.state in (State.STARTING, State.WAKING) and before is not step.state:
            self.began_at = self.clock.now()
        if step.state is State.READY:
            self._wanted = False
            if before in (State.STARTING, State.WAKING):
                self._first_pending = True
        if before is not step.state:
            log.info("model=%s profile=%s %s -> %s on %s",
                     self.name, self.profile.name, before, step.state, event)
            self.listeners.state(self, before, step.state, event.value)
        for effect in step.effects:
            self._apply(effect, error, reason or event.value)
        if before is not step.state:
            if step.state is State.ASLEEP:
                self.idle.asleep()  # sleep.deepen_after counts from now
            if step.state is State.READY and before is State.STARTING:
                self._ready_since = self.clock.now()
            if step.state in (State.READY, State.ASLEEP) and before not in (
                    State.READY, State.ASLEEP, State.SLEEPING):
                self._liveness.watch(self.profile, self.config.liveness)
            self._check_retired()

    def _apply(self, effect: Effect, error: Refusal | None, reason: str) -> None:
        if effect in (Effect.START, Effect.AWAIT_READY):
            self._wanted = False
            self._runner.start(compose_up=effect is Effect.START)
        elif effect is Effect.STOP:
            idle = self.clock.now() - self.idle.since
            why = {"idle": f"idle for {idle:.0f}s", "swap": "for a profile swap"}.get(
                reason, f"on {reason}")
            self._runner.stop(why, 0.0 if reason == Event.FORCE_STOP else self.config.stop_timeout)
        elif effect is Effect.RELEASE_HELD:
            self._release_fitting()
        elif effect is Effect.FAIL_HELD:
            self.hold.fail(error or StartFailed("start failed", model=self.name))
        elif effect is Effect.ARM_IDLE:
            self.idle.arm(fresh=reason != Event.SLEEP_FAILED)  # idle counts from a request
        elif effect is Effect.ABORT:
            self._runner.abort()
        elif effect is Effect.FAIL_IN_FLIGHT:
            code = "upstream_died" if reason == Event.UNHEALTHY else "model_stopped"
            for flight in list(self._flights):
                flight.aborted = code
                if flight.task is not None:
                    flight.task.cancel()
        elif effect is Effect.SLEEP:
            self._runner.sleep()
        elif effect is Effect.DEEPEN:
            self._runner.deepen(reason)
        elif effect is Effect.WAKE:
            self._wanted = False
            self._runner.wake()

    def _release_fitting(self) -> None:
        for flight in self.hold.release(self.profile.fits):
            self._count(flight)
        if self.hold:
            asyncio.get_running_loop().call_soon(self._swaps.consider)

    # -- supervisor start and shutdown ------------------------------------

    def adopt(self, running: set[str]) -> None:
        """Take over a profile that already runs: it is ready once its health check passes."""
        found = next((p for p in self.profiles if p.service in running), None)
        if found is not None:
            self.profile = found
            log.info("model=%s adopting running profile=%s service=%s",
                     self.name, found.name, found.service)
            self._dispatch(Event.FOUND_RUNNING)

    def refuse_held(self) -> None:
        """The process is stopping: its held requests are answered now (503, retry soon),
        not when their hold_timeout ends (the server waits for every handler first)."""
        self.hold.fail(ShuttingDown(f"the supervisor is shutting down; {self.name!r} was "
                                    "not ready yet, retry", model=self.name))

    async def close(self) -> None:
        """Forget timers and tasks; running services stay up to be adopted next time."""
        self.idle.cancel()
        self._swaps.cancel()
        self._runner.cancel_retry()
        self.refuse_held()
        await self._liveness.close()
        await self._runner.close()
