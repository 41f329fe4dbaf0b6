"""What a replica set shows of itself: the model's state, load and history made of its
replicas' (the admin API, /v1/models, the metrics and the loading progress read these as
they read a single model's handle)."""

from __future__ import annotations

from dataclasses import replace

from supervisor.config import ModelConfig
from supervisor.lifecycle.handle import ModelHandle
from supervisor.observe.metrics import ModelSnapshot
from supervisor.rules.profiles import Profile
from supervisor.rules.table import DOWN, State

KEPT = "min_replicas"  # the pin reason of the replicas min_replicas keeps running
# The set's state is its most available replica's.
_AVAILABILITY = (State.READY, State.WAKING, State.STARTING, State.SLEEPING, State.ASLEEP,
                 State.DRAINING, State.STOPPING, State.FAILED, State.STOPPED)


class ReplicaSetView:
    name: str
    config: ModelConfig
    replicas: list[ModelHandle]
    granted: list[int]  # leases each replica granted

    @property
    def primary(self) -> ModelHandle:
        """The first replica: the one operator starts, pins and keep-warm windows act on."""
        return self.replicas[0]

    @property
    def state(self) -> State:
        states = {r.state for r in self.replicas}
        return next(s for s in _AVAILABILITY if s in states)

    @property
    def profile(self) -> Profile:
        up = [r for r in self.replicas if r.state not in DOWN]
        ready = [r for r in up if r.state is State.READY]
        return (ready or up or self.replicas)[0].profile

    @property
    def profiles(self) -> list[Profile]:
        return self.primary.profiles

    @property
    def served_name(self) -> str:
        return self.config.served_model_name or self.name

    @property
    def in_flight(self) -> int:
        return sum(r.in_flight for r in self.replicas)

    @property
    def held(self) -> int:
        return sum(r.held for r in self.replicas)

    @property
    def pinned(self) -> bool:
        return self.primary.pinned

    @property
    def scheduled(self) -> set[str]:
        return self.primary.scheduled - {KEPT}

    @property
    def is_pinned(self) -> bool:
        return self.pinned or bool(self.scheduled)

    @property
    def idle_timeout(self) -> float:
        return self.primary.idle_timeout

    @property
    def idle_timeout_override(self) -> float | None:
        return self.primary.idle_timeout_override

    @property
    def last_cold_start_seconds(self) -> float | None:
        known = [r.last_cold_start_seconds for r in self.replicas
                 if r.last_cold_start_seconds is not None]
        return max(known) if known else None

    @property
    def last_error(self) -> str | None:
        return next((f"{r.name}: {r.last_error}" for r in self.replicas if r.last_error), None)

    @property
    def start_failures(self) -> int:
        return max(r.start_failures for r in self.replicas)

    @property
    def retry_in(self) -> float:
        """0 while some replica may serve or start; else the soonest backoff's end."""
        return min(r.retry_in for r in self.replicas)

    def larger_profile(self, than: Profile) -> Profile | None:
        return self.primary.larger_profile(than)

    def snapshot(self) -> ModelSnapshot:
        """The model's row: its replicas added up."""
        rows = [r.snapshot() for r in self.replicas]
        ready = [s.idle_seconds for s in rows if s.state == State.READY.value]
        since = [s.seconds_since_last_request for s in rows
                 if s.seconds_since_last_request is not None]
        return ModelSnapshot(
            model=self.name, state=self.state.value,
            profile=self.profile.name if self.state is not State.STOPPED else "",
            in_flight=self.in_flight, held=self.held,
            idle_seconds=0.0 if self.in_flight or self.held or not ready else min(ready),
            seconds_since_last_request=min(since) if since else None,
            start_failures=self.start_failures, retry_in_seconds=self.retry_in)

    def snapshots(self, reserved: dict[str, dict[int, int]]) -> list[ModelSnapshot]:
        """The model's row (GPU reservations summed per GPU), then one per replica."""
        total: dict[int, int] = {}
        replicas = []
        for i, r in enumerate(self.replicas):
            own = reserved.get(r.name, {})
            for gpu, size in own.items():
                total[gpu] = total.get(gpu, 0) + size
            replicas.append(replace(r.snapshot(), gpu_reserved=own, replica_of=self.name,
                                    served=self.granted[i]))
        return [replace(self.snapshot(), gpu_reserved=total), *replicas]
