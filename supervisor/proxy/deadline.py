"""A connection's one timer, moved as often as bytes come and armed rarely.

Every read of a body or an answer pushes a timeout further away; cancelling and arming
an event-loop timer for each would cost more than the forwarding itself. So a `Deadline`
keeps the time it ends at as a plain float, and its single timer, when it fires early,
re-arms itself for the deadline as it is by then (uvicorn's keep-alive timer and nginx's
lazy timers do the same).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Deadline:
    __slots__ = ("_armed", "_fire", "_handle", "_loop", "at")

    def __init__(self, fire: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._fire = fire
        self._handle: asyncio.TimerHandle | None = None
        self._armed = 0.0  # when the timer in `_handle` fires
        self.at: float | None = None  # None: no timeout now

    def after(self, seconds: float) -> None:
        """End `seconds` from now (replacing any earlier end)."""
        self.set(self._loop.time() + seconds)

    def set(self, at: float | None) -> None:
        self.at = at
        if at is not None and (self._handle is None or self._armed > at):
            if self._handle is not None:
                self._handle.cancel()
            self._armed = at
            self._handle = self._loop.call_at(at, self._check)

    def clear(self) -> None:
        self.at = None

    def cancel(self) -> None:
        """For good: the connection is gone."""
        self.at = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = None
        at = self.at
        if at is None:
            return
        if at > self._loop.time():
            self._armed = at
            self._handle = self._loop.call_at(at, self._check)
            return
        self.at = None
        self._fire()
