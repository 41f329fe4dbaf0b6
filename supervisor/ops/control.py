"""What the admin API and the schedules act on: the models, maintenance mode, the
runtime toggles that are saved across restarts, and config reload.

Admin routes (admin.py) only parse and format; every operation is here or on a
model handle.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from supervisor.anatomy.service import Anatomy
from supervisor.auth import Secrets, admin_secrets, upstream_key
from supervisor.clients.table import build_clients
from supervisor.config import (
    Config,
    ConfigError,
    ModelConfig,
    ScheduleConfig,
    load_config,
    schedule_problem,
)
from supervisor.gpus.budget import GpuBudget
from supervisor.idle.keeper import Keeper
from supervisor.lifecycle.effects import Effects
from supervisor.lifecycle.listeners import Listeners
from supervisor.lifecycle.registry import Model, Registry, build_model
from supervisor.observe.metrics import Metrics
from supervisor.ops.placement_view import placement_view
from supervisor.ops.replicas_view import replicas_view
from supervisor.ops.schedule import KeepWarm
from supervisor.proxy.gate import Gate
from supervisor.refusal import BadRequest, Conflict, NotFound
from supervisor.savings.account import SavingsAccount
from supervisor.state_file import StateFile
from supervisor.tokens.estimate import load_estimator

if TYPE_CHECKING:
    from supervisor.workers.owner import Fleet

log = logging.getLogger(__name__)

UsedBytesOf = Callable[[str], int | None]


async def configure(handle: Model) -> None:
    """Give a handle its estimator (a tokenizer loads slowly: off the loop) and the key it
    sends to its backend (read from env or file, never logged)."""
    estimator = await asyncio.to_thread(load_estimator, handle.config)
    key = upstream_key(handle.name, handle.config)
    handle.configure(estimator, {"Authorization": f"Bearer {key}"} if key else {})


class Control:
    """Given everything it acts on by the composition root (root.py): the supervisor's one
    state file (shared with the GPU wiring), the GPU budget, the worker fleet (if any)."""

    def __init__(self, config: Config, config_path: Path | None, effects: Effects,
                 metrics: Metrics, registry: Registry, gate: Gate, *, used_bytes: UsedBytesOf,
                 state: StateFile, listeners: Listeners, gpus: GpuBudget,
                 anatomy: Anatomy | None = None, fleet: Fleet | None = None,
                 keeper: Keeper | None = None, savings: SavingsAccount | None = None,
                 saved: dict[str, Any] | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.effects = effects
        self.gpus = gpus  # the budget the handles ask (effects.gpus): its plan and reload
        self.runtime = effects.runtime
        self.metrics = metrics
        self.registry = registry
        self.gate = gate
        self.used_bytes = used_bytes  # measured (NVML), per unit
        self.listeners = listeners  # what a model added by a reload is heard by
        self.anatomy = anatomy  # the records of the starts (GET /admin/models/{name}/starts)
        self.admin_secrets: Secrets = admin_secrets(config)
        self.state = state
        self.keep_warm = KeepWarm(self.find, config.timezone)
        self._retiring: set[asyncio.Task[None]] = set()
        self.fleet = fleet  # the worker processes (workers: N > 1)
        self.keeper = keeper  # the idle policies' choices and measured seconds
        self.savings = savings  # what idling saved (GET /admin/savings)
        self._saved = saved or {}  # the state file as read at start: what `start` restores

    def find(self, name: str) -> Model | None:
        return self.registry.handles.get(name)

    # -- start-up and shutdown ------------------------------------------------

    def start(self) -> None:
        """Restore saved toggles, then open the keep-warm windows that are open now."""
        saved, self._saved = self._saved, {}
        for name, toggles in (saved.get("models") or {}).items():
            handle = self.find(name)
            if handle is not None and isinstance(toggles, dict):
                timeout = toggles.get("idle_timeout")
                handle.restore(pinned=bool(toggles.get("pinned", False)),
                               idle_timeout=float(timeout) if isinstance(
                                   timeout, int | float) else None)
        self.keep_warm.start()
        for name, schedule in self.config.schedules.items():
            self.keep_warm.set(name, schedule, "config")
        for name, raw in (saved.get("schedules") or {}).items():
            try:
                schedule = ScheduleConfig.model_validate(raw)
            except ValueError as exc:
                log.warning("ignoring saved schedule %s: %s", name, exc)
                continue
            if name not in self.config.schedules and self.find(schedule.model):
                self.keep_warm.set(name, schedule, "api")

    async def close(self) -> None:
        self.keep_warm.shutdown()
        for task in self._retiring:
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)

    async def persist(self) -> None:
        models = {h.name: {"pinned": h.pinned, "idle_timeout": h.idle_timeout_override}
                  for h in self.registry.handles.values()
                  if h.pinned or h.idle_timeout_override is not None}
        schedules = {n: s.model_dump() for n, s in self.keep_warm.schedules.items()
                     if self.keep_warm.origin[n] == "api"}
        await self.state.save({"models": models, "schedules": schedules})

    # -- reads ----------------------------------------------------------------

    def models(self) -> dict[str, Any]:
        """`GET /admin/models`, and the status page's first state."""
        return {"models": [self.describe(h) for h in self.registry.handles.values()],
                "draining": self.gate.draining}

    def describe(self, handle: Model) -> dict[str, Any]:
        snap = handle.snapshot()
        return {
            "name": handle.name,
            "aliases": handle.config.aliases,
            "state": handle.state.value,
            "profile": snap.profile or None,
            "profiles": [p.name for p in handle.profiles],
            "pinned": handle.is_pinned,
            "pinned_by_operator": handle.pinned,
            "pinned_by_schedules": sorted(handle.scheduled),
            "idle_timeout": handle.idle_timeout,
            "idle_timeout_override": handle.idle_timeout_override,
            "idle_seconds": round(snap.idle_seconds, 3),
            "in_flight": handle.in_flight,
            "held": handle.held,
            "last_cold_start_seconds": handle.last_cold_start_seconds,
            "vram_bytes": self._used_bytes(handle),
            "sleep_supported": handle.config.sleep.enabled,
            "last_error": handle.last_error,
            "start_failures": handle.start_failures,
            "retry_in_seconds": round(handle.retry_in, 3),
            "gpu": None if handle.replicas  # a replica set: per replica
            else placement_view(self.gpus, handle),
            "replicas": replicas_view(self.gpus, self.used_bytes, handle)
            if handle.replicas else None,
            "idle": None if self.keeper is None else self.keeper.view(
                handle.name, handle.config, handle.profile.name, handle.idle_timeout),
        }

    def starts(self, name: str) -> list[dict[str, Any]]:
        """Its last starts and wakes, each phase's seconds (anatomy/)."""
        return [] if self.anatomy is None else self.anatomy.starts(name)

    def wake_seconds(self, name: str) -> dict[str, float]:
        return {} if self.anatomy is None else self.anatomy.wake_seconds(name)

    def _used_bytes(self, handle: Model) -> int | None:
        """GPU memory its containers use (a replica set's: its replicas' together)."""
        sizes = [self.used_bytes(name)
                 for name in [r.name for r in handle.replicas] or [handle.name]]
        known = [s for s in sizes if s is not None]
        return sum(known) if known else None

    # -- maintenance mode -----------------------------------------------------

    def drain(self, on: bool) -> dict[str, Any]:
        self.gate.draining = on
        if self.fleet is not None:
            self.fleet.push()
        log.warning("maintenance mode %s", "on: new requests get 503" if on else "off")
        in_flight = sum(h.in_flight for h in self.registry.handles.values())
        return {"draining": on, "in_flight": in_flight}

    # -- schedules ------------------------------------------------------------

    def workers(self) -> dict[str, Any]:
        """The processes on the proxy port: the owner (this one) and its workers."""
        rows = self.fleet.describe() if self.fleet is not None else []
        return {"workers": rows}

    def schedule_problem(self, schedule: ScheduleConfig) -> str | None:
        return schedule_problem(self.config, schedule)

    async def add_schedule(self, name: str, schedule: ScheduleConfig) -> None:
        """Add or replace a schedule of the API's; those from the config file are read-only."""
        problem = self.schedule_problem(schedule)
        if problem:
            raise BadRequest(f"Invalid request: {problem}")
        self._require_api_schedule(name)
        self.keep_warm.set(name, schedule, "api")
        await self.persist()

    async def remove_schedule(self, name: str) -> None:
        if name not in self.keep_warm.origin:
            raise NotFound(f"no schedule named {name!r}")
        self._require_api_schedule(name)
        self.keep_warm.remove(name)
        await self.persist()

    def _require_api_schedule(self, name: str) -> None:
        if self.keep_warm.origin.get(name) == "config":
            raise Conflict(f"schedule {name!r} comes from the config file; edit it there")

    # -- reload ---------------------------------------------------------------

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file; raise ConfigError (nothing changed) when it is invalid."""
        if self.config_path is None:
            raise ConfigError(["the supervisor was not started from a config file"])
        new = await asyncio.to_thread(load_config, self.config_path)
        secrets = admin_secrets(new)
        clients = build_clients(new, self.gate.clients)
        for name, model in new.models.items():
            upstream_key(name, model)  # an unreadable key file refuses the reload
        old = self.config
        restart = [k for k in ("listen", "runtime", "compose", "swarm", "admin", "workers") if
                   getattr(old, k) != getattr(new, k)]
        added = [n for n in new.models if n not in old.models]
        removed = [n for n in old.models if n not in new.models]
        changed = [n for n in new.models if n in old.models
                   and new.models[n].model_dump() != old.models[n].model_dump()]
        await self.gpus.reload(new)  # before any added model can start
        for name in removed:
            self._retire(name)
        for name in added:
            await self._add(name, new.models[name])
        for name in changed:
            await self._change(name, new.models[name])
        self.config, self.admin_secrets = new, secrets
        self.gate.clients, self.gate.retry_after = clients, new.drain_retry_after
        self._reload_schedules(new)
        await self.persist()
        if self.fleet is not None:
            self.fleet.reload()  # a worker reads the config file when it starts
        log.info("config reloaded: added=%s removed=%s changed=%s", added, removed, changed)
        return {"added": added, "removed": removed, "changed": changed,
                "restart_required": restart}

    async def _add(self, name: str, model: ModelConfig) -> None:
        handle = build_model(name, model, self.effects, self.metrics, self.listeners)
        await configure(handle)
        self.registry.add(handle)

    async def _change(self, name: str, model: ModelConfig) -> None:
        handle = self.registry.handles[name]
        if (handle.config.replicas is not None) != isinstance(model.replicas, list):
            self._retire(name)  # gaining or losing a replica list: another kind of model
            await self._add(name, model)
            return
        handle.reconfigure(model)
        await configure(handle)
        self.registry.add(handle)  # its aliases may have changed

    def _reload_schedules(self, new: Config) -> None:
        kw = self.keep_warm
        for name in [n for n, o in kw.origin.items() if o == "config"]:
            if name not in new.schedules:
                kw.remove(name)
        for name in [n for n, o in kw.origin.items() if o == "api"]:
            if name in new.schedules or self.schedule_problem(kw.schedules[name]):
                kw.remove(name)
        for name, schedule in new.schedules.items():
            kw.set(name, schedule, "config")

    def _retire(self, name: str) -> None:
        """A model gone from the config: no new requests; in flight ones finish, then stop."""
        handle = self.registry.remove(name)
        task = asyncio.create_task(self._stop_and_close(handle))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _stop_and_close(self, handle: Model) -> None:
        began = time.monotonic()
        handle.retire()
        await handle.retired.wait()
        await handle.close()
        log.info("model=%s removed by reload, stopped after %.1fs", handle.name,
                 time.monotonic() - began)


CONTROL: web.AppKey[Control] = web.AppKey("control", Control)  # where the admin API keeps it
