"""A handle's timers that end in a decision of its own: the idle tiers (sleep after
`sleep.after`, level 1 to 2 after `sleep.deepen_after` asleep, stop after `idle_timeout`)
and a profile swap that waits for min_residency.
Each fires into the handle's `_dispatch`; with workers, an idle decision is fenced first.
"""

from __future__ import annotations

import logging

from supervisor.lifecycle.clock import Timer
from supervisor.lifecycle.driven import Driven
from supervisor.rules.profiles import ProfileDecision, route_on_running
from supervisor.rules.table import Event, State

log = logging.getLogger("supervisor.lifecycle")


class IdleTimers:
    def __init__(self, handle: Driven) -> None:
        self.h = handle
        self.since = handle.clock.now()  # idle since (while ready or asleep and unused)
        self._idle: Timer | None = None
        self._sleep: Timer | None = None
        self._deepen: Timer | None = None
        self._armed = 0  # bumped at each arming

    def arm(self, *, fresh: bool = True) -> None:
        """Start the idle timers: sleep after `sleep.after` (tier 1, while ready) and stop
        after `idle_timeout` (tier 2, asleep or not); `fresh` False keeps the time already
        spent idle."""
        h = self.h
        self.cancel()
        now = h.clock.now()
        if fresh:
            self.since = now
        idle = now - self.since
        self._armed += 1
        self._idle = h.clock.call_later(max(0.0, h.idle_timeout - idle), self._due,
                                        Event.IDLE, self._armed)
        after = h.config.sleep.after
        if h.state is State.READY and h.config.sleep.enabled and after is not None:
            self._sleep = h.clock.call_later(max(0.0, after - idle), self._due,
                                             Event.SLEEP_DUE, self._armed)

    def asleep(self) -> None:
        """Fallen asleep: at level 1 with `sleep.deepen_after`, deeper after that long (the
        idle timer runs on: asleep or not, `idle_timeout` stops it)."""
        h = self.h
        after = h.config.sleep.deepen_after
        if self._deepen is not None:
            self._deepen.cancel()
        if h.sleep_level == 1 and after is not None:
            self._deepen = h.clock.call_later(after, self._due, Event.DEEPEN, self._armed)

    def rearm(self) -> None:
        """Idle rules changed: apply them counting the time already spent idle."""
        h = self.h
        if h.state in (State.READY, State.ASLEEP) and not (h.in_flight or h.held):
            self.arm(fresh=False)

    def cancel(self) -> None:
        for timer in (self._idle, self._sleep, self._deepen):
            if timer is not None:
                timer.cancel()

    def _due(self, event: Event, armed: int) -> None:
        """An idle timer fired. With workers, fence first: a request one of them has just
        leased is counted before the table sees "nothing in flight"; and a timer re-armed
        meanwhile (a request came and went) makes this one void."""
        h = self.h
        if not h.listeners.fences:
            h._dispatch(event)
            return

        def then() -> None:
            if armed == self._armed:
                h._dispatch(event)
        h.listeners.fence(h, then)


class Swaps:
    """Held requests that the running profile cannot hold: swap now, or once allowed."""

    def __init__(self, handle: Driven) -> None:
        self.h = handle
        self._timer: Timer | None = None
        self._last: float | None = None

    def consider(self) -> None:
        h = self.h
        self.cancel()
        needs = [t for t in h.hold.tokens() if not h.profile.fits(t)]
        if h.state is not State.READY or not needs:
            return
        since = None if self._last is None else h.clock.now() - self._last
        tokens = max(t or 0 for t in needs)
        route = route_on_running(h.profiles, h.profile, tokens, since, h.config.min_residency)
        if route is None:  # the router refuses these before they are held
            return
        if route.decision is ProfileDecision.WAIT:
            log.info("model=%s swap to profile=%s waits %.0fs (min_residency)",
                     h.name, route.target.name, route.wait_seconds)
            self._timer = h.clock.call_later(route.wait_seconds, self.consider)
            return
        self._last = h.clock.now()
        h.metrics.swap(h.name, h.profile.name, route.target.name)
        log.info("model=%s swapping profile %s -> %s for a request of %d tokens; "
                 "draining %d in flight", h.name, h.profile.name, route.target.name,
                 tokens, h.in_flight)
        h._dispatch(Event.SWAP)
        h.listeners.swap(h, route.target.name)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
