"""The listener's timeouts, at no cost per request.

Every read of a body or an answer pushes a timeout further away, and a busy proxy reads
tens of thousands of times a second: an event-loop timer moved each time would cost more
than the forwarding itself (as would a clock read each time). So, as nginx reads its clock
once per loop turn, one `Sweeper` keeps a coarse `now` and, every `resolution` seconds,
looks over what it watches: each item says how long it may stay quiet (`limit`, 0: no
timeout now) and since when it is (`since`, set from the sweeper's `now`: an attribute
store on the hot path). A timeout fires within `resolution` of its due time, either side.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

log = logging.getLogger(__name__)

RESOLUTION_SECONDS = 0.25


class Timed(Protocol):
    limit: float  # seconds it may stay as it is; 0: no timeout now
    since: float  # the sweeper's `now` when it began to

    def expired(self) -> None: ...


class Sweeper:
    def __init__(self, resolution: float = RESOLUTION_SECONDS) -> None:
        self.resolution = resolution
        self.now = 0.0
        self._watched: set[Timed] = set()
        self._handle: asyncio.TimerHandle | None = None

    def watch(self, item: Timed) -> None:
        self._watched.add(item)
        if self._handle is None:  # idle until now: nothing swept, so `now` is old
            loop = asyncio.get_running_loop()
            self.now = loop.time()
            self._handle = loop.call_later(self.resolution, self._sweep)

    def forget(self, item: Timed) -> None:
        self._watched.discard(item)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self.now = now = loop.time()
        due = [item for item in self._watched if item.limit and now - item.since >= item.limit]
        for item in due:
            item.limit = 0.0
            try:
                item.expired()
            except Exception:  # one connection's failure must not stop every timeout
                log.exception("a timeout's handler failed")
        self._handle = loop.call_later(self.resolution, self._sweep) if self._watched else None
