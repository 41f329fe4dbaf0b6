"""What a request holds while it uses a model: its lease and its flight, and the
refusals a handle answers it with (its place in the hold queue: hold.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from supervisor.journal import StartKind
from supervisor.refusal import Refusal, StartFailed
from supervisor.rules.profiles import Profile


class HoldRejected(Refusal):
    """A request that cannot be held: too many already wait, or it waited too long."""


class Cancellable(Protocol):
    def cancel(self, msg: Any | None = None) -> bool | None: ...


class Upstream(Protocol):
    """What granted a lease: the server its request goes to (a model's handle, one of its
    replicas, or a worker's mirror of one)."""

    name: str
    upstream_headers: dict[str, str]  # the backend's own key, when it wants one
    last_error: str | None

    @property
    def upstream(self) -> str: ...

    def larger_profile(self, than: Profile) -> Profile | None: ...

    def release(self, lease: Lease) -> None: ...

    async def upstream_failed(self) -> str | None: ...


@dataclass(slots=True, eq=False)
class Flight:
    """A request counted in flight; a force stop or a dead server cancels its task (or the
    fast path's exchange) and says why in `aborted` (the error code its client gets);
    `held_since`: when it joined a hold queue (None: granted at once), so that whoever
    hears it start knows what it waited (savings/account.py)."""

    task: Cancellable | None
    aborted: str | None = None
    held_since: float | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """A request's right to use the upstream; `cold_start` when it had to be held."""

    profile: Profile
    cold_start: bool
    hold_seconds: float
    flight: Flight
    replica: Upstream  # what granted it (one of a model's replicas, or the model)
    first: bool = False  # the first request the server answers after a start or wake
    evicted: tuple[str, ...] = ()  # models stopped (or put to sleep) to make room for it
    start: StartKind = "warm"  # what it found: a start (cold), a wake, or a ready server

    @property
    def aborted(self) -> str | None:
        return self.flight.aborted


def stopped_error(name: str) -> StartFailed:
    return StartFailed(f"model {name!r} was stopped by an operator (force); retry later",
                       code="model_stopped", model=name)
