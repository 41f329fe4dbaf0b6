"""What others ask of a handle, as events for its table: the operator (admin API,
schedules, reload), the GPU budget (an eviction), the runtime and the probes (a container
that died, a server that hangs). `ModelHandle` is the one class that has these; they live
here to keep the request path and the driver apart from them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from supervisor.config import ModelConfig
from supervisor.lifecycle.clock import Clock
from supervisor.lifecycle.effects import Effects
from supervisor.lifecycle.hold import HoldQueue
from supervisor.lifecycle.idle import IdleTimers
from supervisor.lifecycle.lease import stopped_error
from supervisor.lifecycle.listeners import Listeners
from supervisor.observe.metrics import Metrics
from supervisor.refusal import Conflict, Refusal
from supervisor.rules.profiles import Profile, idle_timeout, profile_to_start, profiles_of
from supervisor.rules.table import DOWN, Event, State

log = logging.getLogger("supervisor.lifecycle")


class Commands:
    name: str
    config: ModelConfig
    profiles: list[Profile]
    profile: Profile
    clock: Clock
    state: State
    in_flight: int
    effects: Effects
    metrics: Metrics
    listeners: Listeners
    hold: HoldQueue
    idle: IdleTimers
    last_error: str | None
    pinned: bool
    scheduled: set[str]
    idle_timeout_override: float | None
    retired: asyncio.Event
    _wanted: bool
    _next_profile: str | None
    _pending: ModelConfig | None
    _retiring: bool
    _ready_since: float

    def _dispatch(self, event: Event, error: Refusal | None = None,
                  reason: str = "") -> None:
        raise NotImplementedError

    @property
    def is_pinned(self) -> bool:
        return self.pinned or bool(self.scheduled)

    @property
    def idle_timeout(self) -> float:
        """The operator's override, else the (reloaded) config's for the running profile."""
        if self.idle_timeout_override is not None:
            return self.idle_timeout_override
        return idle_timeout(self.config, self.profile)

    def restore(self, *, pinned: bool, idle_timeout: float | None) -> None:
        """Toggles saved by an earlier run of the supervisor."""
        self.pinned, self.idle_timeout_override = pinned, idle_timeout
        self.idle.rearm()

    async def upstream_failed(self) -> str | None:
        """The upstream refused a connection: if its container died, forget it was ready.
        Returns how it is gone ('exited', 'absent'), None when it still runs."""
        gone = await self.effects.container_state(self.profile)
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
        if not self.listeners.fences:
            self._evict(sleep, why)
            return

        def then() -> None:
            with contextlib.suppress(Conflict):  # its state moved on during the fence
                self._evict(sleep, why)
        self.listeners.fence(self, then)

    def _evict(self, sleep: bool, why: str) -> None:
        log.info("model=%s evicted %s", self.name, why)
        self.metrics.eviction(self.name, "sleep" if sleep else "stop")
        if sleep and self.state is State.READY:
            self._dispatch(Event.SLEEP)
        else:
            self._dispatch(Event.STOP)

    def deepen(self, why: str) -> None:
        """Asleep at level 1: to level 2 (host RAM is short, says the GPU budget)."""
        self._dispatch(Event.DEEPEN, reason=why)

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
        self.idle.rearm()
        self.listeners.load(self)  # unpinned: evictable for a start that waits

    def set_idle_timeout(self, seconds: float | None) -> None:
        self.idle_timeout_override = seconds
        self.idle.rearm()

    def reconfigure(self, config: ModelConfig) -> None:
        """A reloaded definition: at once when stopped, else at the next start; timeouts
        and limits apply at once either way."""
        if self.state in DOWN:
            self._apply_config(config)
        else:
            self.config = self._pending = config  # self.profiles: the running ones, until then
        self.idle.rearm()

    def retire(self) -> None:
        """Removed from the config: stop once nothing is in flight (held requests are
        served first); `retired` is set when it is down and unused."""
        self._retiring, self._wanted, self._next_profile = True, False, None
        self._check_retired()

    def _check_retired(self) -> None:
        if not self._retiring or self.in_flight or self.hold:
            return
        if self.state in DOWN:
            self.retired.set()
        elif self.state in (State.READY, State.ASLEEP):
            asyncio.get_running_loop().call_soon(self.stop)  # it served what was held

    def _choose_profile(self) -> None:
        """For a start: a reloaded definition applies now; an operator's profile choice,
        else the default profile when the held requests fit it."""
        if self._pending is not None:
            self._apply_config(self._pending)
        wanted = next((p for p in self.profiles if p.name == self._next_profile), None)
        self._next_profile = None
        tokens = self.hold.largest()
        self.profile = wanted or profile_to_start(self.profiles, tokens) or self.profile

    def _apply_config(self, config: ModelConfig) -> None:
        self.config, self._pending = config, None
        self.profiles = profiles_of(config)
        same = next((p for p in self.profiles if p.name == self.profile.name), None)
        self.profile = same or next(p for p in self.profiles if p.default)
