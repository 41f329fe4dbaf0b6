"""The typed keys under which the aiohttp applications keep what the proxy's handlers
share, and the handler type; kept apart so that no module imports another's routes for
them. The admin API's key (`CONTROL`) is the ops package's (ops/control.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from supervisor.clients.table import Client
from supervisor.journal import Journal
from supervisor.lifecycle.registry import Registry
from supervisor.observe.metrics import Metrics
from supervisor.proxy.gate import Gate

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REGISTRY: web.AppKey[Registry] = web.AppKey("registry", Registry)
UPSTREAM: web.AppKey[aiohttp.ClientSession] = web.AppKey("upstream", aiohttp.ClientSession)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
GATE: web.AppKey[Gate] = web.AppKey("gate", Gate)
JOURNAL: web.AppKey[Journal] = web.AppKey("journal", Journal)  # set with `journal:` only
CLIENT: web.RequestKey[Client] = web.RequestKey("client", Client)  # who sent a /v1 request
