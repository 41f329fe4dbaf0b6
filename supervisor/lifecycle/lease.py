"""What a request holds while it waits for, or uses, a model: its lease, its place
in the hold queue, and the refusals a handle answers it with."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from supervisor.lifecycle.clock import Timer
from supervisor.refusal import Refusal, StartFailed
from supervisor.rules.profiles import Profile

if TYPE_CHECKING:
    from supervisor.lifecycle.handle import ModelHandle


class HoldRejected(Refusal):
    """A request that cannot be held: too many already wait, or it waited too long."""


class Cancellable(Protocol):
    def cancel(self, msg: Any | None = None) -> bool | None: ...


class Observer(Protocol):
    """Worker processes that forward for a handle too (workers/owner.py)."""

    def changed(self, handle: ModelHandle) -> None:
        """Its state (or profile, or upstream) may have changed: tell the workers."""

    def fence(self, handle: ModelHandle, then: Callable[[], None]) -> None:
        """Close it on every worker, wait until each has said so (every "busy" it sent
        before has then arrived), run `then`, and open it again where it is ready."""


@dataclass(slots=True)
class Flight:
    """A request counted in flight; a force stop or a dead server cancels its task (or the
    fast path's exchange) and says why in `aborted` (the error code its client gets)."""

    task: Cancellable | None
    aborted: str | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """A request's right to use the upstream; `cold_start` when it had to be held."""

    profile: Profile
    cold_start: bool
    hold_seconds: float
    flight: Flight
    replica: ModelHandle  # the handle that granted it (one of a model's replicas, or the model)
    first: bool = False  # the first request the server answers after a start or wake
    evicted: tuple[str, ...] = ()  # models stopped (or put to sleep) to make room for it

    @property
    def aborted(self) -> str | None:
        return self.flight.aborted


@dataclass(slots=True)
class Held:
    waiter: asyncio.Future[None]
    tokens: int | None
    flight: Flight
    expiry: Timer | None = None  # hold_timeout


def stopped_error(name: str) -> StartFailed:
    return StartFailed(f"model {name!r} was stopped by an operator (force); retry later",
                       code="model_stopped", model=name)
