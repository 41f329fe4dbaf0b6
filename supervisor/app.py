"""What listens, around the composition root (root.py): the proxy's aiohttp application,
the admin API on its own listener, the data plane in front of both, and the workers'
private socket.
"""

from __future__ import annotations

import gc
import logging
import resource
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from supervisor.anatomy.service import ANATOMY
from supervisor.config import Config, host_port
from supervisor.ops.admin import build_admin_app, healthz, readyz
from supervisor.ops.control import CONTROL
from supervisor.proxy.appkeys import GATE, JOURNAL, METRICS, REGISTRY, UPSTREAM
from supervisor.proxy.body_budget import BODY_BUDGET
from supervisor.proxy.context import Context
from supervisor.proxy.fastpath import DataPlane
from supervisor.proxy.inner import InnerPool
from supervisor.proxy.limits import LimitedServer, LimitedSite, connection_limit
from supervisor.proxy.routes import add_routes
from supervisor.root import Supervisor, build
from supervisor.runtime.base import Runtime
from supervisor.workers.owner import Fleet

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 512 << 20  # JSON bodies with base64 audio; multipart uploads stream past this
ADMIN: web.AppKey[web.AppRunner] = web.AppKey("admin", web.AppRunner)


def build_app(root: Supervisor) -> web.Application:
    """The proxy's application around a built supervisor; its startup runs the supervisor
    and opens the admin API, its cleanup closes both."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[METRICS], app[GATE], app[REGISTRY] = root.metrics, root.gate, root.registry
    app[UPSTREAM], app[BODY_BUDGET], app[CONTROL] = root.session, root.body_budget, root.control
    app[ANATOMY] = root.anatomy  # names the phase a held client waits for (progress.py)
    if root.journal is not None:
        app[JOURNAL] = root.journal
    config = root.config

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        await root.run()
        admin = web.AppRunner(build_admin_app(root.control), access_log=None)
        await admin.setup()
        # Not limited (the operator's way in), but it accepts like the proxy does: a
        # moment without descriptors does not stop it for good.
        await LimitedSite(admin, *host_port(config.admin.listen), limit=None,
                          label="admin").start()
        app[ADMIN] = admin
        log.info("supervising %d models on http://%s, admin on http://%s",
                 len(root.registry.handles), config.listen, config.admin.listen)
        # What start-up made (modules, config, tokenizers) lives as long as the process:
        # keep it out of the collector's full passes, which otherwise stall the loop ~20 ms.
        gc.collect()
        gc.freeze()
        yield
        gc.unfreeze()
        await admin.cleanup()
        await root.close()

    app.cleanup_ctx.append(lifespan)
    add_routes(app, {"/healthz": healthz, "/readyz": readyz}, root.scrape)
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
    """Build the supervisor, then start listening; a client that disconnects cancels its
    handler (and so leaves the hold). Past the connection limit (proxy/limits.py) new
    clients get 503 before any request handling."""
    root = await build(config, runtime, config_path)
    app = build_app(root)
    plane = DataPlane(config.http)

    async def stop_workers(app: web.Application) -> None:
        if root.fleet is not None:
            await root.fleet.stop()

    async def refuse_held(app: web.Application) -> None:
        root.refuse_held()

    app.on_shutdown.append(refuse_held)  # before aiohttp waits for the handlers
    app.on_shutdown.append(stop_workers)  # before the fast path's shutdown
    app.on_shutdown.append(plane.shutdown)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    try:
        await runner.setup()
    except BaseException:
        await root.session.close()
        raise
    assert runner.server is not None
    plane.start(InnerPool(runner.server), Context(root.registry, root.metrics, root.gate,
                                                        root.journal),
                fast=config.fast_path)
    limit = connection_limit(config.max_connections, config.fd_reserve)
    site = LimitedSite(runner, *host_port(config.listen), limit=limit, label="proxy",
                       backlog=1024, protocol=plane.protocol,
                       reuse_port=reuse_port or root.fleet is not None)
    try:
        await site.start()
        if root.fleet is not None:
            assert site.server is not None and root.private is not None
            start_workers(root.fleet, site.server, root.private / "owner.sock")
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def start_workers(fleet: Fleet, server: LimitedServer, path: Path) -> None:
    """Spawn the fleet's workers on the port, and the private socket they relay to
    (accepted by the proxy's own server, so its connection limit covers relayed
    connections too)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1024)
    server.adopt(listener)
    fleet.start()
    log.info("%d worker processes share the proxy port", len(fleet.links))


def admin_url(runner: web.AppRunner) -> str:
    """Where the admin API of a started server listens (its port may have been 0)."""
    host, port = runner.app[ADMIN].addresses[0][:2]
    return f"http://{host}:{port}"
