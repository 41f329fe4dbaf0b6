"""What a handle's parts (its effect runner, its idle and swap timers) use of the handle
they drive. `ModelHandle` is the one class that has it; the parts name this shape
instead, so they do not import the handle that imports them."""

from __future__ import annotations

from typing import Protocol

from supervisor.config import ModelConfig
from supervisor.lifecycle.clock import Clock
from supervisor.lifecycle.effects import Effects
from supervisor.lifecycle.hold import HoldQueue
from supervisor.lifecycle.listeners import Listeners
from supervisor.observe.metrics import Metrics
from supervisor.refusal import Refusal
from supervisor.rules.profiles import Profile
from supervisor.rules.table import Event, State


class Driven(Protocol):
    name: str
    config: ModelConfig
    profiles: list[Profile]
    profile: Profile
    clock: Clock
    state: State
    in_flight: int
    effects: Effects
    metrics: Metrics
    listeners: Listeners
    hold: HoldQueue
    last_error: str | None
    last_cold_start_seconds: float | None
    began_at: float | None  # clock time its current (or last) start or wake began
    start_failures: int
    sleep_level: int
    upstream_headers: dict[str, str]

    @property
    def held(self) -> int: ...

    @property
    def is_pinned(self) -> bool: ...

    @property
    def idle_timeout(self) -> float: ...

    def _dispatch(self, event: Event, error: Refusal | None = None,
                  reason: str = "") -> None: ...
