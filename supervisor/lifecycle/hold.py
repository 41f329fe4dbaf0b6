"""A unit's hold queue: the requests that wait for it to be ready (started, woken, or
swapped to a profile that fits them), each with its hold_timeout.

The queue only keeps them; the handle decides what their coming and going means (a
start nobody wants any more, an idle model again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from supervisor.lifecycle.clock import Clock, Timer
from supervisor.lifecycle.lease import Flight
from supervisor.refusal import Refusal


@dataclass(slots=True)
class Held:
    waiter: asyncio.Future[None]
    tokens: int | None
    flight: Flight
    expiry: Timer | None = None  # hold_timeout


class HoldQueue:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._held: list[Held] = []

    def __len__(self) -> int:
        return len(self._held)

    def __bool__(self) -> bool:
        return bool(self._held)

    def join(self, tokens: int | None, flight: Flight, timeout: float,
             expire: Callable[[Held], None]) -> Held:
        """Queue a request; `expire` is called with it once `timeout` passes."""
        held = Held(asyncio.get_running_loop().create_future(), tokens, flight)
        held.expiry = self.clock.call_later(timeout, expire, held)
        self._held.append(held)
        return held

    def expire(self, held: Held, refusal: Refusal) -> bool:
        """Refuse a request whose hold_timeout passed; False when it had left already."""
        if held not in self._held or held.waiter.done():
            return False
        self._held.remove(held)
        held.waiter.set_exception(refusal)
        return True

    def abandon(self, held: Held) -> bool | None:
        """Its client went away (or a force stop): True when it left the queue now, False
        when it had been released (and counted in flight) meanwhile, None otherwise."""
        if held in self._held:
            self._held.remove(held)
            return True
        if held.waiter.done() and not held.waiter.cancelled() and not held.waiter.exception():
            return False
        return None

    def tokens(self) -> list[int | None]:
        return [h.tokens for h in self._held]

    def largest(self) -> int:
        return max((h.tokens or 0 for h in self._held), default=0)

    def take(self, which: Callable[[Held], bool]) -> list[Held]:
        """Remove and return the pending held requests that `which` selects."""
        self._held = [h for h in self._held if not h.waiter.done()]
        taken = [h for h in self._held if which(h)]
        self._held = [h for h in self._held if h not in taken]
        return taken

    def release(self, fits: Callable[[int | None], bool]) -> list[Flight]:
        """Let the requests that `fits` go; their flights, to count in flight."""
        released = self.take(lambda h: fits(h.tokens))
        for held in released:
            held.waiter.set_result(None)
        return [h.flight for h in released]

    def fail(self, error: BaseException) -> None:
        for held in self.take(lambda h: True):
            held.waiter.set_exception(error)
