"""A model served by several replicas: one ModelHandle each (its own lifecycle, the same
pure table), and this set in front of them, which the registry returns for the model.

The set decides nothing itself: the rules are replica_policy.py's, applied to a snapshot
of the replicas at each request and each release. What it adds to the handles:
- a request goes where `route` says; its lease names the replica (`lease.replica`);
- `to_start` starts (or wakes) one more replica under the profile the others run;
- a replica `surplus` for `idle_timeout` without a break is drained and stopped;
- the first `min_replicas` (or `replicas.min`) are pinned (reason `min_replicas`) and
  started at start-up;
- profiles belong to the model: a replica that swaps has every other running replica
  restart under the same profile (each drains first, as a swap does);
- operator actions act on the model: start, pin and keep-warm windows on the first
  replica (the others follow the load), stop, sleep, wake and idle timeouts on all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from supervisor.clients.fairness import NOBODY, Asker
from supervisor.config import ModelConfig
from supervisor.lifecycle.clock import Timer
from supervisor.lifecycle.effects import Effects
from supervisor.lifecycle.handle import ModelHandle
from supervisor.lifecycle.lease import Cancellable, Flight, Lease
from supervisor.lifecycle.listeners import Listeners
from supervisor.lifecycle.replica_view import KEPT, ReplicaSetView
from supervisor.lifecycle.units import Unit, kept_replicas, units_of
from supervisor.lifecycle.waiting import Standing
from supervisor.observe.metrics import Metrics
from supervisor.rules.replica_policy import UP, ChoiceKind, Replica, route, surplus, to_start
from supervisor.rules.table import DOWN, State

if TYPE_CHECKING:
    from supervisor.tokens.estimate import Estimator

log = logging.getLogger("supervisor.lifecycle")


class ReplicaSet(ReplicaSetView):
    def __init__(self, name: str, config: ModelConfig, effects: Effects,
                 metrics: Metrics, listeners: Listeners | None = None) -> None:
        self.name = name
        # Its replicas tell it of their swaps and ends of flights, beside everyone else.
        self.listeners = (listeners or Listeners()).derive()
        self.listeners.add(self)
        self.config = config
        self.metrics = metrics
        self._effects = effects
        self.clock = effects.clock
        self.estimator: Estimator | None = None
        self.upstream_headers: dict[str, str] = {}
        self.replicas = [self._replica(u) for u in units_of(name, config)]
        self.granted = [0] * len(self.replicas)  # leases each replica granted
        self._leaving: list[ModelHandle] = []  # dropped by a reload, not yet down
        self._surplus: tuple[int, Timer] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._retiring = False
        self.retired = asyncio.Event()
        self._keep()

    def _replica(self, unit: Unit) -> ModelHandle:
        handle = ModelHandle(unit.name, unit.config, self._effects, self.metrics, self.listeners)
        handle.configure(self.estimator, self.upstream_headers)
        return handle

    def units(self) -> list[ModelHandle]:
        """Every handle with a lifecycle (what the GPU budget and the watcher follow)."""
        return [*self.replicas, *self._leaving]

    # -- requests -----------------------------------------------------------

    def _views(self, tokens: int | None = None) -> list[Replica]:
        return [Replica(r.state, r.in_flight, r.held, tokens is None or r.profile.fits(tokens),
                        r.state is State.FAILED and r.retry_in > 0, r.is_pinned)
                for r in self.replicas]

    @asynccontextmanager
    async def lease(self, tokens: int | None = None,
                    client: Asker = NOBODY) -> AsyncIterator[Lease]:
        """Route to a replica (held there while it starts, wakes or swaps)."""
        ready = self.lease_now(tokens, asyncio.current_task())
        if ready is not None:
            try:
                yield ready
            finally:
                self.release(ready)
            return
        replica = self.replicas[route(self._views(tokens)).index]
        asyncio.get_running_loop().call_soon(self._rebalance)  # counts this one once held
        try:
            async with replica.lease(tokens, client) as lease:
                self._granted(lease)
                yield lease
        finally:
            self._rebalance()

    def lease_now(self, tokens: int | None, task: Cancellable | None) -> Lease | None:
        """A lease at once from a ready replica that fits, else None (see ModelHandle)."""
        choice = route(self._views(tokens))
        if choice.kind is not ChoiceKind.SERVE:
            return None
        lease = self.replicas[choice.index].lease_now(tokens, task)
        if lease is not None:
            self._granted(lease)
            self._rebalance()
        return lease

    def release(self, lease: Lease) -> None:
        lease.replica.release(lease)  # and rebalances (on_flight_end)

    def standing(self, task: object) -> Standing | None:
        return next((s for r in self.replicas if (s := r.standing(task)) is not None), None)

    def queue(self) -> list[Standing]:
        """Each replica's held requests (positions are per replica: each releases its own)."""
        return [s for r in self.replicas for s in r.queue()]

    def on_flight_end(self, replica: ModelHandle, flight: Flight) -> None:
        """A request on a replica ended (its lease released, or a worker's requests)."""
        self._rebalance()

    def _granted(self, lease: Lease) -> None:
        for i, r in enumerate(self.replicas):
            if r is lease.replica:
                self.granted[i] += 1

    def _rebalance(self) -> None:
        """Start a replica the load needs; watch for one it does not need."""
        if self._retiring or not self._may_act():
            return
        views = self._views(None)
        index = to_start(views, self.config.target_concurrency)
        if index is not None:
            replica = self.replicas[index]
            load = sum(v.outstanding for v in views)
            log.info("model=%s %d requests outstanding on %d replica(s) up "
                     "(target_concurrency %d): starting %s", self.name, load,
                     sum(1 for v in views if v.state in (State.READY, State.STARTING,
                                                         State.WAKING)),
                     self.config.target_concurrency, replica.name)
            replica.start(self._running_profile())
            views = self._views(None)
        self._watch_surplus(surplus(views, self.config.target_concurrency))

    def _may_act(self) -> bool:
        """False when neither rule can act now (each lease and release asks: this keeps
        the common case to a count; the rules decide whenever it is True)."""
        target = self.config.target_concurrency
        if target is None:
            return False
        load = up = ready = free = 0
        for r in self.replicas:
            load += r.in_flight + r.held
            if r.state is State.READY:
                ready += 1
                free += not r.is_pinned
            up += r.state in UP
        start = up > 0 and load > target * up
        lean = ready > 1 and free > 0 and load <= target * (ready - 1)
        if not lean and self._surplus is not None:
            self._watch_surplus(None)
        return start or (lean and self._surplus is None)

    def _watch_surplus(self, index: int | None) -> None:
        if self._surplus is not None:
            if self._surplus[0] == index:
                return
            self._surplus[1].cancel()
            self._surplus = None
        if index is not None:
            delay = self.replicas[index].idle_timeout
            self._surplus = (index, self.clock.call_later(delay, self._stop_surplus, index))

    def _stop_surplus(self, index: int) -> None:
        self._surplus = None
        if surplus(self._views(None), self.config.target_concurrency) != index:
            self._rebalance()
            return
        replica = self.replicas[index]
        log.info("model=%s %s not needed by the load for %.0fs: stopping it", self.name,
                 replica.name, replica.idle_timeout)
        replica.stop()

    def _running_profile(self) -> str | None:
        """The profile the running replicas run (None: none runs, the default applies)."""
        up = [r for r in self.replicas if r.state not in DOWN]
        ready = [r for r in up if r.state is State.READY]
        return (ready or up)[0].profile.name if up else None

    def on_swap(self, replica: ModelHandle, profile: str) -> None:
        """A replica swaps to `profile`: the others that run follow, each drained first."""
        for other in self.replicas:
            if other is not replica and other.state not in DOWN and (
                    other.profile.name != profile):
                log.info("model=%s %s follows %s to profile=%s", self.name, other.name,
                         replica.name, profile)
                other.start(profile)

    # -- operator actions -----------------------------------------------------

    def configure(self, estimator: Estimator | None, upstream_headers: dict[str, str]) -> None:
        self.estimator, self.upstream_headers = estimator, upstream_headers
        for r in self.units():
            r.configure(estimator, upstream_headers)

    def restore(self, *, pinned: bool, idle_timeout: float | None) -> None:
        self.primary.restore(pinned=pinned, idle_timeout=idle_timeout)
        for r in self.replicas[1:]:
            r.set_idle_timeout(idle_timeout)

    def start(self, profile: str | None = None) -> None:
        """Run it: the first replica (or, with another profile, every replica that runs)."""
        self.primary.start(profile)
        if profile is not None:
            self.on_swap(self.primary, profile)

    def stop(self, *, force: bool = False) -> None:
        self._watch_surplus(None)
        for r in self.replicas:
            r.stop(force=force)

    def sleep(self) -> None:
        awake = [r for r in self.replicas if r.state in (State.READY, State.SLEEPING)]
        for r in awake or [self.primary]:  # none awake: the first says why not
            r.sleep()

    def wake(self) -> None:
        asleep = [r for r in self.replicas if r.state in (State.ASLEEP, State.SLEEPING)]
        for r in asleep or [self.primary]:
            r.wake()

    def set_pinned(self, pinned: bool, *, schedule: str | None = None) -> None:
        self.primary.set_pinned(pinned, schedule=schedule)

    def set_idle_timeout(self, seconds: float | None) -> None:
        for r in self.replicas:
            r.set_idle_timeout(seconds)

    def reconfigure(self, config: ModelConfig) -> None:
        """A reloaded definition: replicas kept by position (each applies it as a handle
        does), new ones added, dropped ones drained and stopped."""
        self.config = config
        units = units_of(self.name, config)
        for replica, unit in zip(self.replicas, units, strict=False):
            replica.reconfigure(unit.config)
        for gone in self.replicas[len(units):]:
            self._leave(gone)
        self.replicas = [*self.replicas[:len(units)],
                         *(self._replica(u) for u in units[len(self.replicas):])]
        self.granted = (self.granted + [0] * len(units))[:len(units)]
        self._watch_surplus(None)
        self._keep()
        self._start_kept()

    def _leave(self, replica: ModelHandle) -> None:
        self._leaving.append(replica)
        replica.retire()
        self._spawn(self._forget(replica))

    async def _forget(self, replica: ModelHandle) -> None:
        await replica.retired.wait()
        await replica.close()
        self._leaving.remove(replica)

    def _keep(self) -> None:
        for i, r in enumerate(self.replicas):
            r.set_pinned(i < kept_replicas(self.config), schedule=KEPT)

    def _start_kept(self) -> None:
        for r in self.replicas[:kept_replicas(self.config)]:
            if r.state in DOWN:
                r.start()

    def retire(self) -> None:
        self._retiring = True
        self._watch_surplus(None)
        for r in self.replicas:
            r.retire()
        self._spawn(self._retired())

    async def _retired(self) -> None:
        await asyncio.gather(*(r.retired.wait() for r in self.replicas))
        self.retired.set()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- supervisor start and shutdown ------------------------------------------

    def adopt(self, running: set[str]) -> None:
        """Adopt the replicas that run; start those min_replicas keeps."""
        for r in self.replicas:
            r.adopt(running)
        self._start_kept()

    async def close(self) -> None:
        self._watch_surplus(None)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for r in self.units():
            await r.close()
