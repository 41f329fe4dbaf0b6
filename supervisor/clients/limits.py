"""A client's limits as arithmetic on a float clock: a token bucket for
`requests_per_minute` and a count of slots for `max_concurrent`. Each `take` answers 0.0
(taken) or the seconds until a retry can succeed, which `Retry-After` carries.
"""

from __future__ import annotations

import math

# A slot's wait before any request of the client has ended: nothing measured yet.
FIRST_SLOT_GUESS = 1.0
SLOT_FLOOR = 0.5  # a running request ends soon, never "now"
SMOOTHING = 0.2  # the weight of the last request in the mean duration


class TokenBucket:
    """`per_minute` requests a minute, refilled continuously, a minute's worth at most
    saved (a burst); the usual meaning of a per-minute limit."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.tokens = self.capacity
        self.stamp = now

    def take(self, now: float) -> float:
        """0.0 when a token was taken, else the seconds until one will be there."""
        tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate

    def resized(self, per_minute: int, now: float) -> TokenBucket:
        """The same client after a reload: what it has used stays used."""
        bucket = TokenBucket(per_minute, now)
        used = self.capacity - min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        bucket.tokens = max(0.0, bucket.capacity - used)
        return bucket


class Slots:
    """At most `limit` requests at once. When all are taken, the wait is an estimate: the
    mean duration of the client's last requests less the age of its oldest running one."""

    __slots__ = ("limit", "mean", "running")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running: list[float] = []  # when each running request began
        self.mean: float | None = None  # the smoothed duration of its requests

    def take(self, now: float) -> float:
        if len(self.running) < self.limit:
            self.running.append(now)
            return 0.0
        if self.mean is None:
            return FIRST_SLOT_GUESS
        return max(SLOT_FLOOR, self.mean - (now - min(self.running)))

    def give(self, began: float, now: float) -> None:
        try:
            self.running.remove(began)
        except ValueError:
            return  # taken before a reload that dropped the limit
        took = now - began
        self.mean = took if self.mean is None else self.mean + SMOOTHING * (took - self.mean)


def retry_after(seconds: float) -> int:
    """Whole seconds (Retry-After's unit), never shorter than the wait: at least 1."""
    return max(1, math.ceil(seconds))
