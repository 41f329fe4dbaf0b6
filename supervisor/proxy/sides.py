"""What a client connection (connection.py) hands its requests to, as it sees them: the
data plane it belongs to, the in-memory connection to the application, a fast-path
exchange, a tunnel. Protocols, so that the connection names none of the modules that name
it (fastpath, inner, exchange, tunnel): the proxy's modules import one way. A connection
is passed to them as `Any` for the same reason."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Protocol

from supervisor.config import HttpConfig
from supervisor.lifecycle.lease import Upstream
from supervisor.proxy.context import Context, Target
from supervisor.proxy.request import Rejected, Request
from supervisor.proxy.timeouts import Sweeper
from supervisor.proxy.upstream import UpstreamPool


class InnerSide(Protocol):
    """An in-memory connection to the application (inner.Inner)."""

    @property
    def protocol(self) -> asyncio.Protocol: ...

    @property
    def wrote(self) -> bool: ...

    def attach(self, client: Any, *, head_only: bool) -> None: ...

    def detach(self) -> None: ...

    def feed(self, data: bytes) -> None: ...

    def lost(self, exc: Exception | None) -> None: ...

    def keep(self) -> None: ...


class InnerSource(Protocol):
    def take(self) -> InnerSide: ...


class ExchangeSide(Protocol):
    """A request forwarded by the fast path (exchange.Exchange)."""

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def client_gone(self) -> None: ...


class TunnelSide(Protocol):
    """A WebSocket passed through (tunnel.Tunnel)."""

    def from_client(self, data: bytes) -> None: ...

    def client_eof(self) -> bool | None: ...

    def pause_upstream(self) -> None: ...

    def resume_upstream(self) -> None: ...

    def client_lost(self) -> None: ...

    def idle(self) -> None: ...


class Plane(Protocol):
    """What every connection of a listener shares (fastpath.DataPlane)."""

    @property
    def http(self) -> HttpConfig: ...

    @property
    def sweeper(self) -> Sweeper: ...

    @property
    def pool(self) -> UpstreamPool: ...

    @property
    def inner(self) -> InnerSource: ...

    @property
    def context(self) -> Context | None: ...

    @property
    def fast(self) -> bool: ...

    @property
    def fast_body(self) -> int: ...

    @property
    def tunnels(self) -> bool: ...

    @property
    def relay_to(self) -> str | None: ...

    @property
    def served(self) -> dict[tuple[str, ...], float]: ...

    def forward(self, conn: Any, request: Request) -> bool: ...

    def tunnel(self, conn: Any, request: Request) -> TunnelSide: ...

    def rejected(self, conn: Any, rejected: Rejected) -> None: ...

    def spawn(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...

    def target(self, upstream: str) -> Target | None: ...

    def upstream_headers(self, handle: Upstream) -> tuple[frozenset[bytes], bytes]: ...

    def replaced(self, handle: Upstream) -> frozenset[bytes]: ...
