"""A worker's way to the owner for what it does not forward itself.

In the owner, the fast path gives such a request to the aiohttp application over an
in-memory connection (proxy/inner.py). A worker has no application: its `Inner`
connections speak, through a `Relay`, to the owner's own fast path over a private Unix
socket instead. So a relayed request gets exactly what it would get at the owner (held
through a cold start, refused, a large body spooled, loading progress). `Inner` still
parses the response on its way to the client to see where it ends, and the client's
next request is the worker's again; the Unix connection then waits in the pool for the
next one, like a kept-alive connection to an upstream.

Bytes go both ways with backpressure: a client that reads slowly pauses reading from
the owner, an owner that reads slowly pauses reading from the client.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import httptools

from supervisor.proxy.inner import Inner

log = logging.getLogger(__name__)


class Relay(asyncio.Protocol):
    """What `Inner` feeds (in place of aiohttp's protocol): the request side."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.inner: Inner | None = None
        self.owner: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.eof = False
        self.closed = False
        self.reading_paused = False
        self._connecting: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner = cast(Inner, transport)
        self._connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_unix_connection(lambda: _OwnerSide(self),
                                                             self.path)
        except OSError as exc:
            log.warning("cannot reach the owner at %s: %s", self.path, exc)
            if self.inner is not None:
                self.inner.close()
            return
        if self.closed:
            transport.close()
            return
        self.owner = transport
        if self.reading_paused:
            self.owner.pause_reading()
        for data in self.pending:
            self.owner.write(data)
        self.pending.clear()
        if self.eof and self.owner.can_write_eof():
            self.owner.write_eof()

    def data_received(self, data: bytes) -> None:
        if self.owner is not None:
            self.owner.write(data)
        else:
            self.pending.append(data)

    def eof_received(self) -> bool:
        """The client half-closed: pass it on, and let the owner decide."""
        self.eof = True
        if self.owner is not None and self.owner.can_write_eof():
            self.owner.write_eof()
        return True

    def pause_writing(self) -> None:  # the client reads slowly
        self.reading_paused = True
        if self.owner is not None:
            self.owner.pause_reading()

    def resume_writing(self) -> None:
        self.reading_paused = False
        if self.owner is not None:
            self.owner.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        """The client went, or the owner's side closed: the other side goes too."""
        self.closed = True
        if self.owner is not None:
            self.owner.close()


class _OwnerSide(asyncio.Protocol):
    """The Unix connection's protocol: the response side."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def data_received(self, data: bytes) -> None:
        inner = self.relay.inner
        if inner is None:
            return
        try:
            inner.write(data)
        except httptools.HttpParserError as exc:  # cannot see where it ends: end it
            log.warning("relay: a response from the owner does not parse (%s): %r", exc,
                        data[:400])
            inner.close()

    def pause_writing(self) -> None:  # the owner reads slowly: so do we, from the client
        if self.relay.inner is not None:
            self.relay.inner.pause_reading()

    def resume_writing(self) -> None:
        if self.relay.inner is not None:
            self.relay.inner.resume_reading()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.owner = None
        inner = self.relay.inner
        if inner is not None and not inner.closed:
            inner.close()
