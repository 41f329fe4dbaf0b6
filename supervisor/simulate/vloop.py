"""An event loop on virtual time: when nothing is ready to run, the clock jumps to the next
scheduled callback instead of sleeping, so a week of traffic replays in seconds. Every
timer of the code it runs (asyncio.sleep, call_later, asyncio.timeout) is on this time.

Only for code that does no real I/O: the selector is never asked about file descriptors,
so a callback from another thread (asyncio.to_thread) would never be noticed.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable
from typing import Any

from supervisor.lifecycle.clock import Timer


class Stalled(RuntimeError):
    """Nothing is ready and nothing is scheduled: what the loop runs waits forever."""


class _Selector(selectors.SelectSelector):
    def __init__(self, loop: VirtualLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise Stalled("the simulation waits for something that never comes")
        if timeout > 0:
            self._loop.jump(timeout)
        return []


class VirtualLoop(asyncio.SelectorEventLoop):
    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        super().__init__(_Selector(self))

    def time(self) -> float:
        return self._now

    def jump(self, seconds: float) -> None:
        self._now += seconds


class VirtualClock:
    """The handles' Clock on the running virtual loop."""

    def __init__(self, loop: VirtualLoop) -> None:
        self.loop = loop

    def now(self) -> float:
        return self.loop.time()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> Timer:
        return self.loop.call_later(delay, callback, *args)
