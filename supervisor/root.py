"""The composition root: what one supervisor is made of, built once from the configuration
and wired only through constructors, before anything runs (no task, no listener, no
worker). The aiohttp applications (app.py) and the worker processes wrap it; `run` starts
what works in the background, `close` ends it.

Shared, one of each: the runtime, the HTTP session to the servers, the clock, the state
file (the admin API's toggles and the GPU wiring's measured sizes), the GPU budget, the
listeners every unit tells (metrics, event log, GPU budget, start anatomy, weights read
ahead, the idle keeper; the worker fleet subscribes while it runs), the request journal."""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
import tempfile
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from prometheus_client.registry import Collector

from supervisor.anatomy.prefetch import Prefetch
from supervisor.anatomy.service import Anatomy
from supervisor.auth import admin_secrets
from supervisor.clients.report import UsageCollector
from supervisor.clients.table import build_clients
from supervisor.config import Config, ConfigError
from supervisor.gpus.budget import GpuBudget
from supervisor.gpus.services import read_services
from supervisor.gpus.wiring import MeasuredFeed, load_budget
from supervisor.idle.keeper import Keeper
from supervisor.idle.store import HistoryStore, saved_histories
from supervisor.journal import Journal
from supervisor.lifecycle.clock import LoopClock
from supervisor.lifecycle.effects import Effects
from supervisor.lifecycle.listeners import Listeners
from supervisor.lifecycle.registry import Registry, build_model, snapshot_rows
from supervisor.lifecycle.units import units_of
from supervisor.lifecycle.watcher import watch
from supervisor.observe.gpu import GpuSampler
from supervisor.observe.metrics import Metrics, ModelSnapshot
from supervisor.ops.control import Control, configure
from supervisor.proxy.body_budget import BodyBudget
from supervisor.proxy.gate import Gate
from supervisor.runtime.base import Runtime, RuntimeFailure
from supervisor.runtime.factory import runtime_for
from supervisor.savings.account import SECTION as SAVINGS
from supervisor.savings.account import SavingsAccount
from supervisor.savings.figures import EnergyMeter, gpu_sizer
from supervisor.savings.metrics import SavingsCollector
from supervisor.state_file import SectionSaver, StateFile
from supervisor.workers.owner import Fleet

log = logging.getLogger("supervisor.app")


@dataclass(eq=False, kw_only=True)
class Supervisor:
    config: Config
    runtime: Runtime
    session: aiohttp.ClientSession  # to the servers
    state: StateFile  # the one: control's toggles and the GPU wiring's measured sizes
    gpu: GpuSampler
    metrics: Metrics
    listeners: Listeners
    budget: GpuBudget
    anatomy: Anatomy
    prefetch: Prefetch
    effects: Effects
    registry: Registry
    gate: Gate
    body_budget: BodyBudget
    feed: MeasuredFeed
    keeper: Keeper  # idle_policy: adaptive, and every model's measured start/stop/wake
    histories: HistoryStore  # the keeper's, saved to the state file
    savings: SavingsAccount  # what idling saved and cost (GET /admin/savings)
    savings_store: SectionSaver  # its per-day totals, saved to the state file
    journal: Journal | None  # journal: PATH, a line per request
    fleet: Fleet | None  # with workers: N > 1 (the fast path on)
    control: Control
    private: Path | None  # the fleet's directory: the socket its workers relay to
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def workers(self) -> int:
        return len(self.fleet.links) + 1 if self.fleet is not None else 1

    def scrape(self) -> Collector:
        """What GET /metrics renders: the metrics, and what the workers forwarded."""
        return self.fleet.scrape() if self.fleet is not None else self.metrics.registry

    async def run(self) -> None:
        """Adopt the services that already run, then start the background work."""
        try:
            running = await self.runtime.running_services()
        except RuntimeFailure as exc:
            log.warning("cannot look for running services to adopt: %s", exc)
            running = set()
        for handle in self.registry.handles.values():
            handle.adopt(running)
        self._tasks += [asyncio.create_task(watch(self.effects, self.registry)),
                        asyncio.create_task(self.feed.run()),
                        asyncio.create_task(self.histories.run()),
                        asyncio.create_task(self.savings_store.run())]
        self.control.start()
        if self.journal is not None:
            self.journal.start()
        await self.gpu.start()

    def refuse_held(self) -> None:
        """At shutdown, before the server waits for its handlers: every held request is
        answered 503 `shutting_down` now (in-flight ones finish, within the timeout)."""
        for unit in self.registry.units():
            unit.refuse_held()

    async def close(self) -> None:
        """The background work and the units end first, then what they measured is saved
        (a stop or a start that ends now is in it), each write in a thread while the loop
        still runs. A step that fails is logged and the next ones still run: a failure
        must not cost the measured seconds, nor leave the session open."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await _logged("the GPU sampler", self.gpu.stop())
        self.prefetch.stop()
        await _logged("the admin API's background work", self.control.close())
        self.keeper.close()
        for handle in list(self.registry.handles.values()):
            await _logged(f"model {handle.name}", handle.close())
        await self.histories.save()
        await self.savings_store.save()
        if self.journal is not None:
            await _logged("the journal", asyncio.to_thread(self.journal.close))
        await self.session.close()
        if self.private is not None:
            await asyncio.to_thread(shutil.rmtree, self.private, ignore_errors=True)


async def _logged(what: str, step: Awaitable[object]) -> None:
    """A step of the shutdown; its failure is logged, not raised."""
    try:
        await step
    except Exception:
        log.exception("shutdown: %s failed", what)


async def build(config: Config, runtime: Runtime | None = None,
                config_path: Path | None = None) -> Supervisor:
    """Everything, wired; nothing started. Refuses an open admin API on a network address,
    and workers without a config file (they read it), before anything is made."""
    admin_secrets(config)
    workers = config.workers if config.fast_path else 1
    if workers > 1 and config_path is None:
        raise ConfigError(["workers: a worker reads the config file: start the supervisor "
                           "with one (model-supervisor serve --config)"])
    rt = runtime if runtime is not None else runtime_for(config)
    gpu = GpuSampler(_profile_of(config).get,
                     project=config.compose.project if config.compose else None)
    clock = LoopClock()
    state = StateFile(config.state_file)
    registry = Registry(())
    saved = await asyncio.to_thread(state.load)  # read once: each part takes its section
    budget = await load_budget(config, clock, saved, gpu, registry.units)

    def snapshots() -> list[ModelSnapshot]:
        reserved = budget.reservations()
        return [row for h in registry.handles.values() for row in snapshot_rows(h, reserved)]

    metrics = Metrics(snapshots=snapshots, gpu=lambda: gpu.sample)
    anatomy = Anatomy(rt, metrics.registry)
    compose = config.compose
    prefetch = Prefetch(functools.partial(read_services, compose) if compose else None)
    keeper = Keeper(time.time, saved_histories(saved, time.time()), note=metrics.events.record)
    savings = SavingsAccount(clock, time.time, units=registry.units, sizer=gpu_sizer(budget, gpu),
                             energy=EnergyMeter(gpu), saved=saved.get(SAVINGS))
    metrics.registry.register(SavingsCollector(savings))
    listeners = Listeners()
    for listener in (metrics, metrics.events, budget, anatomy, prefetch, keeper, savings):
        listeners.add(listener)
    # No total timeout: a generation may stream for many minutes. With the fast path
    # (which pools its own) this session keeps no idle connections: two pools of idle
    # sockets would break the two-descriptors-a-client budget of proxy/limits.py.
    session = aiohttp.ClientSession(
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10,
                                      sock_read=config.http.upstream_read_timeout),
        connector=aiohttp.TCPConnector(limit=0, force_close=config.fast_path),
    )
    effects = Effects(rt, session, clock, gpus=budget, phases=anatomy,
                      durations=keeper.measured)
    for name, model in config.models.items():
        handle = build_model(name, model, effects, metrics, listeners)
        await configure(handle)
        registry.add(handle)
    gate = Gate(build_clients(config), retry_after=config.drain_retry_after)
    metrics.registry.register(UsageCollector(lambda: gate.clients))
    journal = None if config.journal is None else Journal(
        config.journal, config.journal_max_bytes, config.journal_keep)
    fleet, private = None, None
    if workers > 1:
        assert config_path is not None
        # mkdtemp makes it 0700: the private socket skips client limits, so nobody else
        # may reach it.
        private = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="model-supervisor-"))
        fleet = Fleet(workers, _absolute(config_path), str(private / "owner.sock"),
                      registry, metrics, gate, listeners, journal)

    def used_bytes(model: str) -> int | None:
        sample = gpu.sample
        if sample is None or not sample.available:
            return None
        return sum(m.bytes for m in sample.models if m.model == model)

    control = Control(config, config_path, effects, metrics, registry, gate,
                      used_bytes=used_bytes, state=state, listeners=listeners, gpus=budget,
                      anatomy=anatomy, fleet=fleet, keeper=keeper, savings=savings,
                      saved=saved)
    return Supervisor(
        config=config, runtime=rt, session=session, state=state, gpu=gpu, metrics=metrics,
        listeners=listeners, budget=budget, anatomy=anatomy, prefetch=prefetch, effects=effects,
        registry=registry, gate=gate, body_budget=BodyBudget(config.max_body_memory),
        feed=MeasuredFeed(budget, gpu, state, registry.units), keeper=keeper,
        histories=HistoryStore(keeper, state), savings=savings,
        savings_store=SectionSaver(state, SAVINGS, savings.to_json, "the savings account"),
        journal=journal, fleet=fleet, control=control, private=private)


def _profile_of(config: Config) -> dict[str, tuple[str, str]]:
    """GPU memory is measured per unit (a model, or one of its replicas): service ->
    (unit, profile)."""
    return {p.service: (unit.name, pname)
            for name, model in config.models.items()
            for unit in units_of(name, model)
            for pname, p in unit.config.profiles.items()}


def _absolute(path: Path) -> str:
    return str(path.absolute())  # the workers' working directory may differ one day
