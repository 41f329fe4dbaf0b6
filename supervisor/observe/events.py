"""The last lifecycle events, in memory: a bounded ring that the status page and
`GET /admin/events` read, and that live subscribers (Server-Sent Events) follow."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

SUBSCRIBER_BACKLOG = 256  # a subscriber that falls this far behind is dropped


class EventLog:
    def __init__(self, size: int = 500) -> None:
        self._ring: deque[dict[str, Any]] = deque(maxlen=size)
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._seq = 0

    def record(self, model: str, from_state: str, to_state: str, *, event: str,
               profile: str, error: str | None = None, reason: str | None = None) -> None:
        """A state change; or, `from_state` equal to `to_state`, a decision about the model
        (the idle policy's "prewarm", with its `reason`)."""
        self._seq += 1
        entry = {"seq": self._seq, "time": time.time(), "model": model, "from": from_state,
                 "to": to_state, "event": event, "profile": profile, "error": error,
                 "reason": reason}
        self._ring.append(entry)
        for queue in list(self._subscribers):
            if queue.qsize() < SUBSCRIBER_BACKLOG:
                queue.put_nowait(entry)
            else:  # too slow: end its stream (the last slot is kept for the end mark)
                self._subscribers.discard(queue)
                queue.put_nowait(None)

    def on_state(self, unit: Any, old: Any, new: Any, event: str) -> None:
        """A lifecycle unit's state changed (a listener: lifecycle/listeners.py)."""
        self.record(unit.name, old.value, new.value, event=event, profile=unit.profile.name,
                    error=unit.last_error if new.value == "failed" else None)

    def recent(self, limit: int | None = None) -> list[dict[str, Any]]:
        entries = list(self._ring)
        return entries if limit is None else entries[-limit:]

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        """Every event from now on, until the caller stops or falls too far behind."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(SUBSCRIBER_BACKLOG + 1)
        self._subscribers.add(queue)
        try:
            while (entry := await queue.get()) is not None:
                yield entry
        finally:
            self._subscribers.discard(queue)
