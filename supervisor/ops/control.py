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
from typing import Any

import aiohttp

from supervisor.auth import Secrets, admin_secrets, client_keys, upstream_key
from supervisor.config import Config, ConfigError, ModelConfig, ScheduleConfig, load_config
from supervisor.lifecycle.handle import ModelHandle
from supervisor.lifecycle.table import State
from supervisor.observe.metrics import Metrics
from supervisor.ops.schedule import KeepWarm
from supervisor.ops.state_file import StateFile
from supervisor.proxy.estimate import load_estimator
from supervisor.proxy.router import Registry
from supervisor.proxy.routes import Gate
from supervisor.runtime.base import Runtime

log = logging.getLogger(__name__)

VramOf = Callable[[str], int | None]
RETIRE_POLL = 0.2


def configure_handle(handle: ModelHandle) -> None:
    """Secrets a handle sends to its backend (read from env or file, never logged)."""
    key = upstream_key(handle.name, handle.config)
    handle.upstream_headers = {"Authorization": f"Bearer {key}"} if key else {}


class Control:
    def __init__(self, config: Config, config_path: Path | None, runtime: Runtime,
                 http: aiohttp.ClientSession, metrics: Metrics, registry: Registry,
                 gate: Gate, vram: VramOf) -> None:
        self.config = config
        self.config_path = config_path
        self.runtime = runtime
        self.http = http
        self.metrics = metrics
        self.registry = registry
        self.gate = gate
        self.vram = vram
        self.admin_secrets: Secrets = admin_secrets(config)
        self.state = StateFile(config.state_file)
        self.keep_warm = KeepWarm(self.find, config.timezone)
        self._retiring: set[asyncio.Task[None]] = set()

    def find(self, name: str) -> ModelHandle | None:
        return self.registry.handles.get(name)

    # -- start-up and shutdown ------------------------------------------------

    def start(self) -> None:
        """Restore saved toggles, then open the keep-warm windows that are open now."""
        saved = self.state.load()
        for name, toggles in (saved.get("models") or {}).items():
            handle = self.find(name)
            if handle is not None and isinstance(toggles, dict):
                handle.pinned = bool(toggles.get("pinned", False))
                timeout = toggles.get("idle_timeout")
                handle.idle_timeout_override = float(timeout) if isinstance(
                    timeout, int | float) else None
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

    def describe(self, handle: ModelHandle) -> dict[str, Any]:
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
            "vram_bytes": self.vram(handle.name),
            "sleep_supported": handle.config.sleep.enabled,
            "last_error": handle.last_error,
        }

    # -- maintenance mode -----------------------------------------------------

    def drain(self, on: bool) -> dict[str, Any]:
        self.gate.draining = on
        log.warning("maintenance mode %s", "on: new requests get 503" if on else "off")
        in_flight = sum(h.in_flight for h in self.registry.handles.values())
        return {"draining": on, "in_flight": in_flight}

    # -- schedules ------------------------------------------------------------

    def schedule_problem(self, schedule: ScheduleConfig) -> str | None:
        handle = self.find(schedule.model)
        if handle is None:
            return f"model: {schedule.model!r} is not a model"
        if schedule.profile is not None and schedule.profile not in handle.config.profiles:
            return f"profile: {schedule.profile!r} is not a profile of {schedule.model!r}"
        return None

    # -- reload ---------------------------------------------------------------

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file; raise ConfigError (nothing changed) when it is invalid."""
        if self.config_path is None:
            raise ConfigError(["the supervisor was not started from a config file"])
        new = await asyncio.to_thread(load_config, self.config_path)
        secrets = admin_secrets(new)
        keys = client_keys(new.client_auth)
        for name, model in new.models.items():
            upstream_key(name, model)  # an unreadable key file refuses the reload
        old = self.config
        restart = [k for k in ("listen", "compose", "admin") if
                   getattr(old, k) != getattr(new, k)]
        added = [n for n in new.models if n not in old.models]
        removed = [n for n in old.models if n not in new.models]
        changed = [n for n in new.models if n in old.models
                   and new.models[n].model_dump() != old.models[n].model_dump()]
        for name in removed:
            self._retire(name)
        for name in added:
            await self._add(name, new.models[name])
        for name in changed:
            await self._change(name, new.models[name])
        self.config, self.admin_secrets = new, secrets
        self.gate.client_keys, self.gate.retry_after = keys, new.drain_retry_after
        self._reload_schedules(new)
        await self.persist()
        log.info("config reloaded: added=%s removed=%s changed=%s", added, removed, changed)
        return {"added": added, "removed": removed, "changed": changed,
                "restart_required": restart}

    async def _add(self, name: str, model: ModelConfig) -> None:
        handle = ModelHandle(name, model, self.runtime, self.http, self.metrics)
        handle.estimator = await asyncio.to_thread(load_estimator, model)
        configure_handle(handle)
        self.registry.add(handle)

    async def _change(self, name: str, model: ModelConfig) -> None:
        handle = self.registry.handles[name]
        estimator = await asyncio.to_thread(load_estimator, model)
        handle.reconfigure(model)
        handle.estimator = estimator
        configure_handle(handle)
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

    async def _stop_and_close(self, handle: ModelHandle) -> None:
        began = time.monotonic()
        while not (handle.state in (State.STOPPED, State.FAILED) and not handle.in_flight):
            if handle.state in (State.READY, State.ASLEEP):
                handle.stop()  # held requests start it again: they are served, then it stops
            await asyncio.sleep(RETIRE_POLL)
        await handle.close()
        log.info("model=%s removed by reload, stopped after %.1fs", handle.name,
                 time.monotonic() - began)
