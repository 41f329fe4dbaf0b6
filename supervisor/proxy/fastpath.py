"""The fast path: what the listener forwards itself, without the aiohttp application.

Nearly every request a busy box sees is a small JSON POST for a model that is ready. For
those, aiohttp's server and client cost ~130 µs of the ~215 µs of CPU a forwarded request
took (py-spy), so the listener (connection.py, which parses every request) forwards them
itself: router.route_inline finds the model and its need, the handle grants a lease at
once (`lease_now`), and the request goes out on a pooled keep-alive connection
(upstream.py) in one write; the answer comes back with its own framing (a length stays a
length; a chunked stream is re-chunked read by read, so each SSE event goes out as it
comes), the response head and the first bytes in one write.

Everything else goes to the aiohttp application (routes.py) over an in-memory connection
(inner.py): requests that must be held or refused, large or compressed or multipart
bodies, every other route, client keys that do not match, drain mode, bad JSON; in a
worker, also every request of a client with limits (the owner's gate counts them). Both
paths see the same parsed, checked request (request.py), so they can differ only in how
fast they answer, not in what: the fast path answers an error of its own only when the
server fails under a request it forwarded. `fast_path: false` sends every request to the
aiohttp application through the same listener, with the same limits and timeouts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

from supervisor.config import HttpConfig
from supervisor.lifecycle.lease import Upstream
from supervisor.proxy import fastwire
from supervisor.proxy.connection import ClientConnection
from supervisor.proxy.context import Context, Target
from supervisor.proxy.exchange import Exchange
from supervisor.proxy.inner import InnerPool
from supervisor.proxy.request import APP, FAST, WEBSOCKET, Rejected, Request, Warnings
from supervisor.proxy.router import INLINE_ESTIMATE_BYTES, route_inline
from supervisor.proxy.timeouts import Sweeper
from supervisor.proxy.tunnel import Tunnel
from supervisor.proxy.upstream import UpstreamPool
from supervisor.refusal import Refusal

log = logging.getLogger(__name__)

FAST_BODY_BYTES = INLINE_ESTIMATE_BYTES  # larger bodies take the path that spools them


def _unset() -> asyncio.Protocol:
    raise RuntimeError("the data plane was not started")


class DataPlane:
    """What every connection of the listener shares. `fast`: forward small requests here
    (`fast_path`); `tunnels`: pass WebSocket upgrades through (tunnel.py); `relay_to`: a
    worker's way to the owner, where its tunnels go."""

    def __init__(self, http: HttpConfig | None = None, *, relay_to: str | None = None) -> None:
        self.http = http or HttpConfig()
        self.inner = InnerPool(_unset)
        self.context: Context | None = None
        self.sweeper = Sweeper()
        self.pool = UpstreamPool(self.http.upstream_read_timeout, self.sweeper)
        self.fast = True
        self.fast_body = FAST_BODY_BYTES
        self.tunnels = True
        self.relay_to = relay_to
        self.warn = Warnings()
        self._targets: dict[str, Target | None] = {}
        self._extra: dict[str, tuple[dict[str, str], frozenset[bytes], frozenset[bytes],
                                     bytes]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Requests by the path that answered (the metrics' counts once started).
        self.served: dict[tuple[str, ...], float] = dict.fromkeys((FAST, APP, WEBSOCKET), 0)

    def start(self, inner: InnerPool, context: Context, *, fast: bool = True) -> None:
        """`inner`: the in-memory connections to the application (the owner's aiohttp
        server, or a worker's relays to the owner), known once that is set up."""
        self.inner, self.context, self.fast = inner, context, fast
        self.served = context.metrics.paths.counts

    def rejected(self, conn: ClientConnection, rejected: Rejected) -> None:
        """A request the listener refused itself: one rate-limited WARNING line, counted."""
        peer = conn.transport.get_extra_info("peername") if conn.transport else None
        self.warn(peer, rejected)
        if self.context is not None:
            self.context.metrics.rejected(rejected.reason)

    def target(self, upstream: str) -> Target | None:
        """None for what the fast path does not speak (https)."""
        if upstream not in self._targets:
            url = urlsplit(upstream)
            target = None
            if url.scheme == "http" and url.hostname:
                target = Target(url.netloc.encode(), (url.hostname, url.port or 80),
                                url.path.rstrip("/").encode())
            self._targets[upstream] = target
        return self._targets[upstream]

    def upstream_headers(self, handle: Upstream) -> tuple[frozenset[bytes], bytes]:
        """What a request to `handle`'s server loses (fastwire.request_drops: hop-by-hop
        fields and the names the server's own key replaces), and that key's lines."""
        cached = self._extra.get(handle.name)
        if cached is None or cached[0] is not handle.upstream_headers:
            headers = handle.upstream_headers
            replaced = frozenset(k.lower().encode() for k in headers)
            cached = (headers, fastwire.request_drops(replaced), replaced,
                      b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items()))
            self._extra[handle.name] = cached
        return cached[1], cached[3]

    def replaced(self, handle: Upstream) -> frozenset[bytes]:
        """The header names the server's own key replaces (lower case)."""
        self.upstream_headers(handle)
        return self._extra[handle.name][2]

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def protocol(self) -> ClientConnection:
        return ClientConnection(self)

    def tunnel(self, conn: ClientConnection, request: Request) -> Tunnel:
        return Tunnel(conn, request)

    def forward(self, conn: ClientConnection, request: Request) -> bool:
        """Forward a complete small request for a ready model here; False: the aiohttp
        application answers it (it must wait, or be refused)."""
        context = self.context  # the gate admitted it when its head came (_classify)
        if context is None:
            return False
        body = b"".join(request.body)
        try:
            model, data, need, asked = route_inline(body, context.registry)
        except Refusal:
            return False
        client, now = request.client, fastwire.now()
        assert client is not None  # _classify found it
        if client.admit(model.name, now) is not None:
            return False  # the application refuses it (the same check, and its answer)
        tokens = need.tokens if need else None
        exchange = Exchange(conn, context, model, request, tokens, client, now)
        lease = model.lease_now(tokens, exchange)
        target = self.target(lease.replica.upstream) if lease is not None else None
        if lease is None or target is None:
            if lease is not None:
                model.release(lease)
            client.done(now, now, served=False)
            return False
        server = lease.replica
        conn.exchange = exchange
        exchange.asked = asked
        drops, extra = self.upstream_headers(server)
        head = fastwire.request_head(target.prefix + request.url, request.headers,
                                     target.host, len(data), drops, extra, request.connection)
        exchange.send(lease, target, head + data)
        return True

    async def shutdown(self, app: object) -> None:
        """No new exchange takes a pooled connection; those in use end with theirs."""
        self.context = None
        self.pool.close()
        self.inner.close()
        self.sweeper.stop()
