"""The one shape of what serves a model, so that no caller asks what it is:

- `Servable`: what the proxy asks of a model (both paths): a lease at once or held, its
  release, what routing reads. A model's handle, a replica set and a worker's mirror of
  either (workers/mirror.py) have it.
- `Model`: a Servable the lifecycle owner keeps: its state for the admin API and the
  metrics, and the operator's actions. A handle and a replica set have it; the units
  (`units()`) are what has a lifecycle of its own, `replicas` those a model routes to
  (none for a handle: it serves itself).

The lease names what granted it (`Lease.replica`, lease.py's `Upstream`): the server a
request goes to.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Protocol

from supervisor.config import ModelConfig
from supervisor.lifecycle.lease import Cancellable, Lease
from supervisor.lifecycle.profiles import Profile
from supervisor.lifecycle.table import State
from supervisor.observe.metrics import ModelSnapshot

if TYPE_CHECKING:
    from supervisor.lifecycle.handle import ModelHandle
    from supervisor.proxy.estimate import Estimator


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

    def lease(self, tokens: int | None = None) -> AbstractAsyncContextManager[Lease]:
        """Held until a profile that fits `tokens` is ready (or refused)."""
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
