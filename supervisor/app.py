"""Wiring: the proxy application, its upstream HTTP session, the model handles,
adoption of services that already run, and the admin API on its own listener.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import resource
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from supervisor.appkeys import CONTROL, GATE, METRICS, REGISTRY, UPSTREAM
from supervisor.auth import admin_secrets
from supervisor.clients.report import UsageCollector
from supervisor.clients.table import build_clients
from supervisor.config import Config, ConfigError, host_port
from supervisor.gate import Gate
from supervisor.gpus.wiring import feed_measured, load_budget
from supervisor.lifecycle.budget import GpuBudget
from supervisor.lifecycle.clock import LoopClock
from supervisor.lifecycle.effects import Effects
from supervisor.lifecycle.handle import ModelHandle
from supervisor.lifecycle.listeners import Listeners
from supervisor.lifecycle.registry import Registry, build_model, snapshot_rows
from supervisor.lifecycle.units import units_of
from supervisor.lifecycle.watcher import watch
from supervisor.limits import LimitedServer, LimitedSite, connection_limit
from supervisor.observe.gpu import GpuSampler
from supervisor.observe.metrics import Metrics, ModelSnapshot
from supervisor.ops.admin import build_admin_app, healthz, readyz
from supervisor.ops.control import Control, configure
from supervisor.ops.state_file import StateFile
from supervisor.proxy.budget import BODY_BUDGET, BodyBudget
from supervisor.proxy.fastpath import Context, DataPlane
from supervisor.proxy.routes import add_routes
from supervisor.runtime.base import Runtime, RuntimeFailure
from supervisor.runtime.factory import runtime_for
from supervisor.workers.owner import Fleet

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 512 << 20  # JSON bodies with base64 audio; multipart uploads stream past this
ADMIN: web.AppKey[web.AppRunner] = web.AppKey("admin", web.AppRunner)
BUDGET: web.AppKey[GpuBudget] = web.AppKey("budget", GpuBudget)
LISTENERS: web.AppKey[Listeners] = web.AppKey("listeners", Listeners)


def build_app(config: Config, runtime: Runtime | None = None,
              config_path: Path | None = None) -> web.Application:
    admin_secrets(config)  # refuse an open admin API on a network address before anything
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    rt: Runtime = runtime if runtime is not None else runtime_for(config)
    profile_of = {  # GPU memory is measured per unit: a model, or one of its replicas
        p.service: (unit.name, pname)
        for name, model in config.models.items()
        for unit in units_of(name, model)
        for pname, p in unit.config.profiles.items()
    }
    gpu = GpuSampler(profile_of.get,
                     project=config.compose.project if config.compose else None)
    def snapshots() -> list[ModelSnapshot]:
        handles = app[REGISTRY].handles.values()
        reserved = app[BUDGET].reservations() if BUDGET in app else {}
        return [row for h in handles for row in snapshot_rows(h, reserved)]

    metrics = Metrics(snapshots=snapshots, gpu=lambda: gpu.sample)
    app[METRICS] = metrics
    gate = app[GATE] = Gate(build_clients(config), retry_after=config.drain_retry_after)
    metrics.registry.register(UsageCollector(lambda: gate.clients))
    app[BODY_BUDGET] = BodyBudget(config.max_body_memory)

    def vram(model: str) -> int | None:
        sample = gpu.sample
        if sample is None or not sample.available:
            return None
        return sum(m.bytes for m in sample.models if m.model == model)

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        # No total timeout: a generation may stream for many minutes. With the fast path
        # (which pools its own) this session keeps no idle connections: two pools of idle
        # sockets would break the two-descriptors-a-client budget of limits.py.
        session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10,
                                          sock_read=config.http.upstream_read_timeout),
            connector=aiohttp.TCPConnector(limit=0, force_close=config.fast_path),
        )
        effects = Effects(rt, session, LoopClock())
        listeners = app[LISTENERS] = Listeners()
        listeners.add(metrics)
        listeners.add(metrics.events)
        handles = [build_model(n, m, effects, metrics, listeners)
                   for n, m in config.models.items()]

        def all_handles() -> list[ModelHandle]:
            return app[REGISTRY].units()

        state = StateFile(config.state_file)
        effects.gpus = app[BUDGET] = await load_budget(config, effects.clock, state, gpu,
                                                       all_handles)
        listeners.add(effects.gpus)
        for handle in handles:
            await configure(handle)
        app[UPSTREAM] = session
        app[REGISTRY] = Registry(handles)
        control = Control(config, config_path, effects, metrics, app[REGISTRY], app[GATE],
                          vram, state, listeners)
        app[CONTROL] = control
        try:
            running = await rt.running_services()
        except RuntimeFailure as exc:
            log.warning("cannot look for running services to adopt: %s", exc)
            running = set()
        for handle in handles:
            handle.adopt(running)
        watcher = asyncio.create_task(watch(effects, app[REGISTRY]))
        feed = asyncio.create_task(feed_measured(effects.gpus, gpu, state, all_handles))
        control.start()
        admin = web.AppRunner(build_admin_app(control), access_log=None)
        await admin.setup()
        # Not limited (the operator's way in), but it accepts like the proxy does: a
        # moment without descriptors does not stop it for good.
        await LimitedSite(admin, *host_port(config.admin.listen), limit=None,
                          label="admin").start()
        app[ADMIN] = admin
        await gpu.start()
        log.info("supervising %d models on http://%s, admin on http://%s",
                 len(handles), config.listen, config.admin.listen)
        # What start-up made (modules, config, tokenizers) lives as long as the process:
        # keep it out of the collector's full passes, which otherwise stall the loop ~20 ms.
        gc.collect()
        gc.freeze()
        yield
        gc.unfreeze()
        for task in (watcher, feed):
            task.cancel()
        await asyncio.gather(watcher, feed, return_exceptions=True)
        await gpu.stop()
        await admin.cleanup()
        await control.close()
        for handle in list(app[REGISTRY].handles.values()):
            await handle.close()
        await session.close()

    app.cleanup_ctx.append(lifespan)
    add_routes(app, {"/healthz": healthz, "/readyz": readyz})
    return app


def raise_open_files_limit() -> tuple[int, int]:
    """Lift the soft limit on open files to the hard one: a service gets 1,024 by default,
    which a burst of held requests uses up (each is a socket) before `docker compose` can
    even be spawned. Returns (before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, target, exc)
    after = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    log.info("open files limit: soft %d (was %d), hard %d", after, soft, hard)
    return soft, after


async def start_server(config: Config, runtime: Runtime | None = None,
                       config_path: Path | None = None, *,
                       reuse_port: bool = False) -> web.AppRunner:
    """Start listening; a client that disconnects cancels its handler (and so leaves the hold).
    Past the connection limit (limits.py) new clients get 503 before any request handling."""
    app = build_app(config, runtime, config_path)
    plane = DataPlane(config.http)
    workers = config.workers if config.fast_path else 1
    stops: list[Callable[[], Awaitable[None]]] = []  # the workers', once they are started

    async def stop_workers(app: web.Application) -> None:
        for stop in stops:
            await stop()

    app.on_shutdown.append(stop_workers)  # before the fast path's shutdown
    app.on_shutdown.append(plane.shutdown)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    assert runner.server is not None
    plane.start(runner.server, Context(app[REGISTRY], app[METRICS], app[GATE]),
                fast=config.fast_path)
    limit = connection_limit(config.max_connections, config.fd_reserve)
    site = LimitedSite(runner, *host_port(config.listen), limit=limit, label="proxy",
                       backlog=1024, protocol=plane.protocol, reuse_port=reuse_port or workers > 1)
    await site.start()
    if workers > 1:
        assert site.server is not None
        stops.append(await start_workers(app, site.server, workers, config_path))
    return runner


async def start_workers(app: web.Application, server: LimitedServer, count: int,
                        config_path: Path | None) -> Callable[[], Awaitable[None]]:
    """Spawn count - 1 workers on the port, and the private socket they relay to (accepted
    by the proxy's own server, so its connection limit covers relayed connections too);
    returns what stops them."""
    if config_path is None:
        raise ConfigError(["workers: a worker reads the config file: start the supervisor "
                           "with one (model-supervisor serve --config)"])
    # mkdtemp makes it 0700: the private socket skips client limits, so nobody else may
    # reach it.
    private = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="model-supervisor-"))
    path = str(private / "owner.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1024)
    server.adopt(listener)
    fleet = Fleet(count, _absolute(config_path), path, app[REGISTRY], app[METRICS],
                  app[GATE], app[LISTENERS])
    app[CONTROL].fleet = fleet
    fleet.start()

    async def stop() -> None:
        await fleet.stop()
        await asyncio.to_thread(shutil.rmtree, private, ignore_errors=True)

    log.info("%d worker processes share the proxy port", count - 1)
    return stop


def _absolute(path: Path) -> str:
    return str(path.absolute())  # the workers' working directory may differ one day


def admin_url(runner: web.AppRunner) -> str:
    """Where the admin API of a started server listens (its port may have been 0)."""
    host, port = runner.app[ADMIN].addresses[0][:2]
    return f"http://{host}:{port}"
