"""How many bytes of request bodies the proxy may hold in memory at once (`max_body_memory`).

Without a bound, a burst of large JSON bodies (chat requests with base64 audio, 100 MB
each) grows the process until the kernel kills it, and with it every stream it serves.
So every body reserves what it will hold before a byte of it is read: a small body its
length (twice while it is parsed), a large one (written to disk as it arrives) a fixed
allowance for its buffers. When a reservation does not fit, the request waits, in order of
arrival, without reading its body (TCP holds the client back), for at most `wait` seconds;
then it gets `503 body_memory_exhausted` with `Retry-After`. Waiting first, rather than
refusing at once, rides out short bursts; the bound keeps a flood from queueing forever.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math

from aiohttp import web

from supervisor.refusal import Refusal

__all__ = ["BODY_BUDGET", "DEFAULT_WAIT_SECONDS", "BodyBudget", "Reservation"]

DEFAULT_WAIT_SECONDS = 10.0
RETRY_AFTER_SECONDS = 2


class BodyBudget:
    """Bytes reserved by request bodies, against a limit; FIFO waits when full."""

    def __init__(self, limit: int, *, wait: float = DEFAULT_WAIT_SECONDS) -> None:
        if limit <= 0:
            raise ValueError("the body memory budget must be positive")
        self.limit = limit
        self.wait = wait
        self.in_use = 0
        self.peak = 0
        self.refused = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_reserve(self, nbytes: int) -> Reservation | None:
        """Reserve `nbytes` now if they fit and nobody waits (the common case, without the
        cost of a coroutine); None otherwise."""
        if self._waiters or self.in_use + nbytes > self.limit:
            return None
        self._take(nbytes)
        return Reservation(self, nbytes)

    async def reserve(self, nbytes: int) -> Reservation:
        """Reserve `nbytes`, waiting up to `wait` seconds; a Refusal (503) when it cannot."""
        if nbytes > self.limit:
            raise self._refusal(f"a body needs {nbytes} bytes of memory, more than the whole "
                                f"budget of {self.limit} (max_body_memory)")
        now = self.try_reserve(nbytes)
        if now is not None:
            return now
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(self.wait):
                await future
        except TimeoutError:
            if self._forget(entry):
                raise self._refusal(f"request bodies already hold {self.in_use} of "
                                    f"{self.limit} bytes (max_body_memory) and this one "
                                    f"waited {self.wait:g} s") from None
            # granted just as the wait ran out: keep it
        except BaseException:  # cancelled (the client left): give back what was granted
            if not self._forget(entry):
                self._give(nbytes)
            raise
        return Reservation(self, nbytes)

    def _refusal(self, why: str) -> Refusal:
        self.refused += 1
        return Refusal(f"The supervisor holds as many request bodies in memory as it may "
                       f"({why}); retry shortly", status=503, code="body_memory_exhausted",
                       retry_after=max(RETRY_AFTER_SECONDS, math.ceil(self.wait / 5)))

    def _forget(self, entry: tuple[int, asyncio.Future[None]]) -> bool:
        """Drop a waiter that gave up; False when it had already been granted its bytes.
        (Cancelling the task that awaits a future cancels the future too.)"""
        future = entry[1]
        if future.done() and not future.cancelled():
            return False
        with contextlib.suppress(ValueError):  # _grant may have dropped it already
            self._waiters.remove(entry)
        self._grant()  # the head may have changed: those behind it may now fit
        return True

    def _take(self, nbytes: int) -> None:
        self.in_use += nbytes
        self.peak = max(self.peak, self.in_use)

    def _give(self, nbytes: int) -> None:
        self.in_use -= nbytes
        self._grant()

    def _grant(self) -> None:
        """Wake waiters in order while the first one fits (no overtaking: a large body
        behind small ones is not starved)."""
        while self._waiters:
            nbytes, future = self._waiters[0]
            if future.done():  # cancelled: its task has yet to forget it
                self._waiters.popleft()
                continue
            if self.in_use + nbytes > self.limit:
                return
            self._waiters.popleft()
            self._take(nbytes)
            future.set_result(None)


class Reservation:
    """Bytes held by one body; `release()` (idempotent) gives them back."""

    __slots__ = ("_budget", "size")

    def __init__(self, budget: BodyBudget, size: int) -> None:
        self._budget = budget
        self.size = size

    def shrink(self, size: int) -> None:
        """Keep only `size` bytes (e.g. once a parsed copy is dropped)."""
        if size < self.size:
            freed, self.size = self.size - size, size
            self._budget._give(freed)

    def release(self) -> None:
        self.shrink(0)


BODY_BUDGET: web.AppKey[BodyBudget] = web.AppKey("body_budget", BodyBudget)
