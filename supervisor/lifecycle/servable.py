"""The one shape of what serves a model, so that no caller asks what it is:

- `Servable`: what the proxy asks of a model (both paths): a lease at once or held, its
  release, what routing reads. A model's handle, a replica set and a worker's mirror of
  either (workers/mirror.py) have it.
- `Model`: a Servable the lifecycle owner keeps: its state for the admin API and the
  metrics, and the operator's actions. A handle and a replica set have it; the units
  (`units()`) are what has a lifecycle of its own, `replicas` those a model routes to
  (none for a handle: it serves itself).

- `Listener`: every hook a subscriber of a unit may define (listeners.py calls them).

The lease names what granted it (`Lease.replica`, lease.py's `Upstream`): the server a
request goes to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

from supervisor.clients.fairness import NOBODY, Asker
from supervisor.config import ModelConfig
from supervisor.lifecycle.lease import Cancellable, Flight, Lease
from supervisor.lifecycle.listeners import Then
from supervisor.lifecycle.waiting import Standing
from supervisor.observe.metrics import ModelSnapshot
from supervisor.rules.profiles import Profile
from supervisor.rules.table import State

if TYPE_CHECKING:
    from supervisor.lifecycle.handle import ModelHandle
    from supervisor.tokens.estimate import Estimator


class Servable(Protocol):
    name: str
    config: ModelConfig
    estimator: Estimator | None

    @property
    def served_name(self) -> str: ...

    @property
    def profiles(self) -> list[Profile]: ...

    @property
    def state(self) -> State: ...

    def lease(self, tokens: int | None = None,
              client: Asker = NOBODY) -> AbstractAsyncContextManager[Lease]:
        """Held until a profile that fits `tokens` is ready (or refused); `client`: who
        asks, for its place among those held (clients/fairness.py)."""
        ...

    def lease_now(self, tokens: int | None, task: Cancellable | None) -> Lease | None:
        """A lease at once, or None: the fast path hands the request to the one that holds."""
        ...

    def release(self, lease: Lease) -> None: ...


class Model(Servable, Protocol):
    retired: asyncio.Event

    @property
    def profile(self) -> Profile: ...

    @property
    def replicas(self) -> Sequence[ModelHandle]: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def held(self) -> int: ...

    @property
    def pinned(self) -> bool: ...

    @property
    def scheduled(self) -> set[str]: ...

    @property
    def is_pinned(self) -> bool: ...

    @property
    def idle_timeout(self) -> float: ...

    @property
    def idle_timeout_override(self) -> float | None: ...

    @property
    def last_cold_start_seconds(self) -> float | None: ...

    @property
    def last_error(self) -> str | None: ...

    @property
    def start_failures(self) -> int: ...

    @property
    def retry_in(self) -> float: ...

    def units(self) -> list[ModelHandle]: ...

    def standing(self, task: object) -> Standing | None:
        """Where the request that `task` holds stands (lifecycle/waiting.py)."""
        ...

    def queue(self) -> list[Standing]:
        """Its held requests, in the order they are released."""
        ...

    def snapshot(self) -> ModelSnapshot: ...

    def snapshots(self, reserved: dict[str, dict[int, int]]) -> list[ModelSnapshot]:
        """Its metrics rows (a replica set's: the model's, then one per replica)."""
        ...

    def configure(self, estimator: Estimator | None, upstream_headers: dict[str, str]) -> None:
        ...

    def restore(self, *, pinned: bool, idle_timeout: float | None) -> None: ...

    def start(self, profile: str | None = None) -> None: ...

    def stop(self, *, force: bool = False) -> None: ...

    def sleep(self) -> None: ...

    def wake(self) -> None: ...

    def set_pinned(self, pinned: bool, *, schedule: str | None = None) -> None: ...

    def set_idle_timeout(self, seconds: float | None) -> None: ...

    def reconfigure(self, config: ModelConfig) -> None: ...

    def retire(self) -> None: ...

    def adopt(self, running: set[str]) -> None: ...

    async def close(self) -> None: ...


class Catalog(Protocol):
    """Models by name or alias, as the proxy finds them (lifecycle/registry.py, or a
    worker's mirrors)."""

    def get(self, name: str) -> Servable: ...


class Listener(Protocol):
    """Every hook a listener may define (define only those you need)."""

    def on_state(self, unit: ModelHandle, old: State, new: State, event: str) -> None:
        """Its state changed (`event` is what changed it: the table's event name)."""

    def on_load(self, unit: ModelHandle) -> None:
        """What decides whether it may be evicted changed: it went idle, a held request
        left, a pin was lifted."""

    def on_flight_start(self, unit: ModelHandle, flight: Flight) -> None:
        """A request is counted in flight on it (granted at once, released from the hold
        queue, or a worker process's)."""

    def on_flight_end(self, unit: ModelHandle, flight: Flight) -> None:
        """A request in flight on it ended (`unit.in_flight` already counts it out)."""

    def on_swap(self, unit: ModelHandle, profile: str) -> None:
        """It swaps to `profile` (it is draining for the restart now)."""

    def fence(self, unit: ModelHandle, then: Then) -> None:
        """Run `then` (a decision that needs "nothing in flight") once whatever else
        forwards for it has said what it forwards (workers/owner.py)."""
