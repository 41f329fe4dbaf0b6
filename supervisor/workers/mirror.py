"""A worker's view of a model: the few members of a ModelHandle the fast path uses
(`lease_now`, `release`, `upstream`, `profiles`, `estimator`, `served_name`,
`larger_profile`, `upstream_failed`), with readiness, profile and upstream as the owner
last said (messages.Entry), and the rest from the config file, which the worker reads
itself.

It counts its own requests per model and tells the owner only of the edges: "busy" on the
first, "idle" when the last ends. The owner counts a busy worker as one request in flight
on the real handle, so its idle timer, DRAINED and the GPU budget see the worker's
requests. A model with replicas is never ready here: its requests go to the owner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, cast

from supervisor.config import ModelConfig
from supervisor.lifecycle.handle import ModelHandle
from supervisor.lifecycle.lease import Cancellable, Flight, Lease
from supervisor.lifecycle.registry import unknown_model
from supervisor.rules.profiles import Profile, profiles_of, smallest_fitting
from supervisor.tokens.estimate import Estimator
from supervisor.workers.messages import Entry, Message

Send = Callable[[Message], None]


class Mirror:
    def __init__(self, name: str, config: ModelConfig, send: Send) -> None:
        self.name = name
        self.config = config
        self.replicated = config.replicas is not None
        self.profiles = [] if self.replicated else profiles_of(config)
        self.profile: Profile | None = None
        self.ready = False
        self.estimator: Estimator | None = None
        self.upstream_headers: dict[str, str] = {}
        self.last_error: str | None = None  # what refusals.aborted quotes
        self._send = send
        self._flights: list[Flight] = []

    @property
    def served_name(self) -> str:
        return self.config.served_model_name or self.name

    @property
    def upstream(self) -> str:
        assert self.profile is not None
        return self.profile.upstream

    @property
    def in_flight(self) -> int:
        return len(self._flights)

    def configure(self, estimator: Estimator | None, upstream_headers: dict[str, str]) -> None:
        self.estimator, self.upstream_headers = estimator, upstream_headers

    def update(self, entry: Entry) -> None:
        """The owner's word on the model (a table)."""
        profile = next((p for p in self.profiles if p.name == entry.profile), None)
        if profile is not None and profile.upstream != entry.upstream:
            profile = replace(profile, upstream=entry.upstream)  # a Swarm task's node
        self.profile = profile
        self.ready = entry.ready and profile is not None and not self.replicated

    def close(self) -> None:
        """Forward nothing more until the next table says it is ready (the fence)."""
        self.ready = False

    def lease_now(self, tokens: int | None, task: Cancellable | None) -> Lease | None:
        profile = self.profile
        if not self.ready or profile is None or not profile.fits(tokens):
            return None
        flight = Flight(task)
        self._flights.append(flight)
        if len(self._flights) == 1:
            self._send({"t": "busy", "m": self.name})
        return Lease(profile, cold_start=False, hold_seconds=0.0, flight=flight,
                     replica=cast(ModelHandle, self))

    def release(self, lease: Lease) -> None:
        if lease.flight in self._flights:
            self._flights.remove(lease.flight)
            if not self._flights:
                self._send({"t": "idle", "m": self.name})

    def abort(self, code: str) -> None:
        """A force stop or a dead server: cancel this model's exchanges (each answers
        as it would in the owner, and releases its lease soon)."""
        for flight in self._flights:
            flight.aborted = code
            if flight.task is not None:
                flight.task.cancel()

    def larger_profile(self, than: Profile) -> Profile | None:
        if than.max_model_len is None:
            return None
        return smallest_fitting(self.profiles, than.max_model_len + 1)

    async def upstream_failed(self) -> str | None:
        """A connection to its server was refused: the owner looks into it."""
        self._send({"t": "failed", "m": self.name})
        return None


class Mirrors:
    """The worker's registry: models by name and alias (as lifecycle/registry.py)."""

    def __init__(self, mirrors: Iterable[Mirror]) -> None:
        self.handles = {m.name: m for m in mirrors}
        self._by_alias = {alias: m for m in self.handles.values()
                          for alias in [m.name, *m.config.aliases]}
        self.draining = False

    def get(self, name: str) -> Any:
        mirror = self._by_alias.get(name)
        if mirror is None:
            raise unknown_model(name, self.handles)
        return mirror

    def apply(self, message: Message) -> None:
        """A table from the owner: models it does not list are not forwarded."""
        listed = set()
        for entry in [Entry.decode(row) for row in message["models"]]:
            mirror = self.handles.get(entry.name)
            if mirror is not None:
                mirror.update(entry)
                listed.add(entry.name)
        for name, mirror in self.handles.items():
            if name not in listed:
                mirror.ready = False
