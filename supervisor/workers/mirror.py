"""A worker's view of a model (lifecycle/servable.py's `Servable`): what the fast path
uses, with readiness, profile and upstream as the owner last said (messages.Entry), and
the rest from the config file, which the worker reads itself.

A `Mirror` stands for one unit: a model, or one replica of a model. It counts its own
requests and tells the owner only of the edges: "busy" on the first, "idle" when the last
ends. The owner counts a busy worker as one request in flight on the unit's handle, so
its idle timer, DRAINED, the GPU budget and the replica set's load rules see the worker's
requests. A `MirrorSet` stands for a model with replicas: a request goes to the ready
replica (that fits) with the fewest of this worker's requests; the owner's set decides
which replicas run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import replace

from supervisor.clients.fairness import NOBODY, Asker
from supervisor.config import ModelConfig
from supervisor.lifecycle.lease import Cancellable, Flight, Lease
from supervisor.lifecycle.registry import unknown_model
from supervisor.lifecycle.units import units_of
from supervisor.rules.profiles import Profile, profiles_of, smallest_fitting
from supervisor.rules.table import State
from supervisor.tokens.estimate import Estimator
from supervisor.workers.messages import Entry, Message

Send = Callable[[Message], None]


class Mirror:
    def __init__(self, name: str, config: ModelConfig, send: Send) -> None:
        self.name = name
        self.config = config
        self.profiles = profiles_of(config)
        self.profile: Profile | None = None
        self.ready = False
        self.estimator: Estimator | None = None
        self.upstream_headers: dict[str, str] = {}
        self.last_error: str | None = None  # what refusals.aborted quotes
        self._send = send
        self._flights: dict[Flight, None] = {}

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

    @property
    def state(self) -> State:
        return State.READY if self.ready else State.STOPPED  # as far as this worker knows

    def lease(self, tokens: int | None = None,
              client: Asker = NOBODY) -> AbstractAsyncContextManager[Lease]:
        raise NotImplementedError("a worker holds nothing: the owner does")

    def configure(self, estimator: Estimator | None, upstream_headers: dict[str, str]) -> None:
        self.estimator, self.upstream_headers = estimator, upstream_headers

    def update(self, entry: Entry) -> None:
        """The owner's word on the model (a table)."""
        profile = next((p for p in self.profiles if p.name == entry.profile), None)
        if profile is not None and profile.upstream != entry.upstream:
            profile = replace(profile, upstream=entry.upstream)  # a Swarm task's node
        self.profile = profile
        self.ready = entry.ready and profile is not None

    def units(self) -> list[Mirror]:
        return [self]

    def close(self) -> None:
        """Forward nothing more until the next table says it is ready (the fence)."""
        self.ready = False

    def lease_now(self, tokens: int | None, task: Cancellable | None) -> Lease | None:
        profile = self.profile
        if not self.ready or profile is None or not profile.fits(tokens):
            return None
        flight = Flight(task)
        self._flights[flight] = None
        if len(self._flights) == 1:
            self._send({"t": "busy", "m": self.name})
        return Lease(profile, cold_start=False, hold_seconds=0.0, flight=flight, replica=self)

    def release(self, lease: Lease) -> None:
        if lease.flight in self._flights:
            del self._flights[lease.flight]
            if not self._flights:
                self._send({"t": "idle", "m": self.name})

    def abort(self, code: str) -> None:
        """A force stop or a dead server: cancel this model's exchanges (each answers
        as it would in the owner, and releases its lease soon)."""
        for flight in list(self._flights):
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


class MirrorSet:
    """A model with replicas, as a worker sees it: one Mirror per replica."""

    def __init__(self, name: str, config: ModelConfig, send: Send) -> None:
        self.name = name
        self.config = config
        self.replicas = [Mirror(u.name, u.config, send) for u in units_of(name, config)]
        self.profiles = profiles_of(config)
        self.estimator: Estimator | None = None

    @property
    def served_name(self) -> str:
        return self.config.served_model_name or self.name

    @property
    def state(self) -> State:
        return State.READY if any(r.ready for r in self.replicas) else State.STOPPED

    def configure(self, estimator: Estimator | None, upstream_headers: dict[str, str]) -> None:
        self.estimator = estimator
        for r in self.replicas:
            r.configure(estimator, upstream_headers)

    def lease(self, tokens: int | None = None,
              client: Asker = NOBODY) -> AbstractAsyncContextManager[Lease]:
        raise NotImplementedError("a worker holds nothing: the owner does")

    def units(self) -> list[Mirror]:
        return self.replicas

    def lease_now(self, tokens: int | None, task: Cancellable | None) -> Lease | None:
        best: Mirror | None = None
        for r in self.replicas:
            if r.ready and r.profile is not None and r.profile.fits(tokens) and (
                    best is None or r.in_flight < best.in_flight):
                best = r
        return None if best is None else best.lease_now(tokens, task)

    def release(self, lease: Lease) -> None:
        lease.replica.release(lease)


class Mirrors:
    """The worker's registry: models by name and alias (as lifecycle/registry.py), and the
    units (models and replicas) by name, as the owner's messages name them."""

    def __init__(self, models: Iterable[Mirror | MirrorSet]) -> None:
        self.handles = {m.name: m for m in models}
        self._by_alias = {alias: m for m in self.handles.values()
                          for alias in [m.name, *m.config.aliases]}
        self.units = {u.name: u for m in self.handles.values()
                      for u in m.units()}
        self.draining = False

    def get(self, name: str) -> Mirror | MirrorSet:
        mirror = self._by_alias.get(name)
        if mirror is None:
            raise unknown_model(name, self.handles)
        return mirror

    def apply(self, message: Message) -> None:
        """A table from the owner: models it does not list are not forwarded."""
        listed = set()
        for entry in [Entry.decode(row) for row in message["models"]]:
            mirror = self.units.get(entry.name)
            if mirror is not None:
                mirror.update(entry)
                listed.add(entry.name)
        for name, mirror in self.units.items():
            if name not in listed:
                mirror.ready = False
