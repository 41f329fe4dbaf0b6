"""A tiny aiohttp app behind `LimitedSite`, run as its own process by test_limits.py so
that its open-files limit can be lowered without touching the test's:

    python tests/unit/limits_server.py LOOP NOFILE LIMIT

LOOP is asyncio or uvloop, NOFILE the soft and hard open-files limit, LIMIT the connection
limit (or "none"). It prints the port it listens on. GET /hold?s=SECONDS answers after that
long; GET /stats tells the server's counts.
"""

from __future__ import annotations

import asyncio
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aiohttp import web

from supervisor.proxy.limits import LimitedSite


async def main(nofile: int, limit: int | None) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    app = web.Application()
    site: LimitedSite | None = None

    async def hold(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "0")))
        return web.json_response({"ok": True})

    async def stats(request: web.Request) -> web.Response:
        assert site is not None and site.server is not None
        server = site.server
        return web.json_response({"open": server.open, "refused": server.refused,
                                  "serving": server.is_serving()})

    app.router.add_get("/hold", hold)
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = LimitedSite(runner, "127.0.0.1", 0, limit=limit, label="test")
    await site.start()
    print(runner.addresses[0][1], flush=True)
    await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    loop_name, nofile, limit = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    coro = main(nofile, None if limit == "none" else int(limit))
    if loop_name == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)
