"""Wiring: one aiohttp application, its upstream HTTP session, the model handles,
and adoption of services that already run when the supervisor starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from supervisor.config import Config
from supervisor.estimate import load_estimator
from supervisor.gpu import GpuSampler
from supervisor.handle import ModelHandle
from supervisor.metrics import Metrics
from supervisor.proxy import METRICS, REGISTRY, UPSTREAM, add_routes
from supervisor.router import Registry
from supervisor.runtime.base import Runtime, RuntimeFailure
from supervisor.runtime.compose import ComposeRuntime

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 512 << 20  # JSON bodies with base64 audio; multipart uploads stream past this


def build_app(config: Config, runtime: Runtime | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    rt: Runtime = runtime if runtime is not None else ComposeRuntime(config.compose)
    profile_of = {
        p.service: (name, pname)
        for name, model in config.models.items()
        for pname, p in model.profiles.items()
    }
    gpu = GpuSampler(profile_of.get, project=config.compose.project)
    metrics = Metrics(
        snapshots=lambda: [h.snapshot() for h in app[REGISTRY].handles.values()],
        gpu=lambda: gpu.sample,
    )
    app[METRICS] = metrics

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        # No total timeout: a generation may stream for many minutes.
        session = aiohttp.ClientSession(
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            connector=aiohttp.TCPConnector(limit=0),
        )
        handles = [ModelHandle(n, m, rt, session, metrics) for n, m in config.models.items()]
        for handle in handles:
            handle.estimator = await asyncio.to_thread(load_estimator, handle.config)
        app[UPSTREAM] = session
        app[REGISTRY] = Registry(handles)
        try:
            running = await rt.running_services()
        except RuntimeFailure as exc:
            log.warning("cannot look for running services to adopt: %s", exc)
            running = set()
        for handle in handles:
            handle.adopt(running)
        await gpu.start()
        log.info("supervising %d models on http://%s", len(handles), config.listen)
        yield
        await gpu.stop()
        for handle in handles:
            await handle.close()
        await session.close()

    app.cleanup_ctx.append(lifespan)
    add_routes(app)
    return app


async def start_server(config: Config, runtime: Runtime | None = None) -> web.AppRunner:
    """Start listening; a client that disconnects cancels its handler (and so leaves the hold)."""
    runner = web.AppRunner(build_app(config, runtime), handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.listen_host, config.listen_port, backlog=1024)
    await site.start()
    return runner
