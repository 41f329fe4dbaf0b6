"""A unit's hold queue: the requests that wait for it to be ready (started, woken, or
swapped to a profile that fits them), each with its hold_timeout.

The queue only keeps them; the handle decides what their coming and going means (a
start nobody wants any more, an idle model again). Who goes first, and who may wait when
it is full, is clients/fairness.py's: each held request carries its client (`Asker`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from supervisor.clients.fairness import NOBODY, Asker, make_room, order
from supervisor.lifecycle.clock import Clock, Timer
from supervisor.lifecycle.lease import Flight
from supervisor.refusal import Refusal


@dataclass(slots=True, eq=False)
class Held:
    waiter: asyncio.Future[None]
    tokens: int | None
    flight: Flight
    asker: Asker = NOBODY
    since: float = 0.0  # clock time it joined
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
             expire: Callable[[Held], None], asker: Asker = NOBODY) -> Held:
        """Queue a request; `expire` is called with it once `timeout` passes."""
        held = Held(asyncio.get_running_loop().create_future(), tokens, flight, asker,
                    self.clock.now())
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

    def ordered(self) -> list[Held]:
        """The pending held requests in the order they are served."""
        return order((h for h in self._held if not h.waiter.done()), self.clock.now())

    def position(self, task: object) -> tuple[int, Held] | None:
        """The place (from 1) of the request that `task` holds, and its entry."""
        for i, held in enumerate(self.ordered(), 1):
            if held.flight.task is task:
                return i, held
        return None

    def displace(self, asker: Asker, limit: int) -> Held | None:
        """Full (`limit`): the held request a newcomer from `asker` takes the place of,
        or None (the newcomer is refused); the caller refuses the one displaced."""
        return make_room([h for h in self._held if not h.waiter.done()], asker, limit)

    def tokens(self) -> list[int | None]:
        return [h.tokens for h in self._held]

    def largest(self) -> int:
        return max((h.tokens or 0 for h in self._held), default=0)

    def take(self, which: Callable[[Held], bool]) -> list[Held]:
        """Remove and return the pending held requests that `which` selects, in the order
        they are served (so released: their tasks resume in that order)."""
        self._held = [h for h in self._held if not h.waiter.done()]
        taken = [h for h in self.ordered() if which(h)]
        gone = {id(h) for h in taken}
        self._held = [h for h in self._held if id(h) not in gone]
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
