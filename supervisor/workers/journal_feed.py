"""A worker's part of the request journal (`journal:`): the fast path records each request
it forwards here (one tuple appended; no JSON on the request path), and about once a
second the rows go to the owner in `journal` messages, which writes them to its Journal,
so that `simulate --trace` replays a worker's traffic too.

Bounded both ways: a message carries at most BATCH rows, and while the owner reads the
channel too slowly (more than BACKLOG bytes wait in the worker's send buffer) rows stay
here, at most BUFFER of them: past that the oldest are dropped, counted and logged, so a
slow owner costs lines, never the worker's memory.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable

from supervisor.journal import StartKind
from supervisor.workers.messages import JournalRow, Message, journal

log = logging.getLogger(__name__)

BATCH = 2000  # rows a message (about 150 KB)
BUFFER = 50_000  # rows a worker keeps while the owner is slow
BACKLOG = 1 << 20  # bytes waiting to go to the owner past which rows wait here


class JournalFeed:
    """The fast path's journal (proxy/context.py `Recorder`) in a worker."""

    __slots__ = ("_rows", "_told", "dropped")

    def __init__(self, buffer: int = BUFFER) -> None:
        self._rows: deque[JournalRow] = deque(maxlen=buffer)
        self.dropped = 0  # rows lost to a full buffer, since the worker started
        self._told = 0  # of those, how many a warning has counted

    def served(self, model: str, profile: str, began: float, ended: float, held: float,
               start: StartKind, status: int) -> None:
        """A request that began and ended at these monotonic times (as Journal.served)."""
        rows, duration = self._rows, ended - began
        if len(rows) == rows.maxlen:
            self.dropped += 1
        rows.append((time.time() - duration, model, profile, duration, held, start, status))

    def ship(self, send: Callable[[Message], None], backlog: Callable[[], int]) -> None:
        """Send what is here, BATCH rows a message, while `backlog()` (the bytes that have
        not reached the owner yet) stays under BACKLOG."""
        rows = self._rows
        while rows and backlog() < BACKLOG:
            send(journal([rows.popleft() for _ in range(min(BATCH, len(rows)))]))
        if self.dropped > self._told:
            log.warning("worker %d: the owner reads too slowly: %d journal lines dropped "
                        "(%d in all)", os.getpid(), self.dropped - self._told, self.dropped)
            self._told = self.dropped

    def __len__(self) -> int:
        return len(self._rows)
