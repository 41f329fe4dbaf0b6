"""The typed keys under which the two aiohttp applications keep what their handlers
share, and the handler type; kept apart so that no module imports another's routes
for them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from supervisor.clients.table import Client
from supervisor.gate import Gate
from supervisor.lifecycle.registry import Registry
from supervisor.observe.metrics import Metrics

if TYPE_CHECKING:
    from supervisor.ops.control import Control

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REGISTRY: web.AppKey[Registry] = web.AppKey("registry", Registry)
UPSTREAM: web.AppKey[aiohttp.ClientSession] = web.AppKey("upstream", aiohttp.ClientSession)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
GATE: web.AppKey[Gate] = web.AppKey("gate", Gate)
CONTROL: web.AppKey[Control] = web.AppKey("control")
CLIENT: web.RequestKey[Client] = web.RequestKey("client", Client)  # who sent a /v1 request
