"""In-memory connections to the aiohttp application, for the requests the fast path does
not forward itself.

A request that must be held, a large or multipart body, an error, another route: the
client's connection (connection.py) feeds it, as parsed and re-framed, to aiohttp's own
protocol over one of these transports, and what aiohttp writes goes straight to the
client's socket. The response is parsed on the way out (httptools) only to see where it
ends; then the client's connection takes its next request, and this one waits in a pool
for the next request that needs aiohttp, like a keep-alive connection to an internal
server, but with no socket and no file descriptor. It goes back to the pool only when
aiohttp read the whole request: one answered before its body ended is dropped (`detach`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import httptools

if TYPE_CHECKING:
    from supervisor.proxy.connection import ClientConnection

MAX_IDLE = 256


class Inner(asyncio.Transport):
    def __init__(self, pool: InnerPool) -> None:
        super().__init__()
        self.pool = pool
        self.client: ClientConnection | None = None
        self._ended: ClientConnection | None = None  # the client whose response just ended
        self.head_only = False  # the answer to a HEAD: it ends with its head
        self.wrote = False
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._status = 0
        self.protocol = pool.factory()
        self.protocol.connection_made(self)

    def attach(self, client: ClientConnection, *, head_only: bool) -> None:
        self.client, self.head_only = client, head_only
        self.wrote = False  # a byte of this answer went out
        self._parser = httptools.HttpResponseParser(self)  # nothing left of the last answer

    def keep(self) -> None:
        """Its answer ended and the connection stays open: back to the pool."""
        self.pool.put(self)

    def detach(self) -> None:
        """Its request was answered before aiohttp read all of it: aiohttp still waits for
        the rest, so this connection can serve nobody else."""
        self.client = self._ended = None
        self.close()

    def feed(self, data: bytes) -> None:
        self.protocol.data_received(data)

    def lost(self, exc: Exception | None) -> None:
        """The client's connection ended: so does this one (aiohttp cancels its handler,
        and a held request leaves the hold)."""
        self.client = None
        if not self.closed:
            self.closed = True
            self.protocol.connection_lost(exc)

    # -- what aiohttp calls ----------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        client = self.client
        if client is None or client.transport is None:
            return  # its client is gone: nobody to tell
        self.wrote = True
        client.transport.write(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()  # where its answer ends is unknown (never seen): end it

    def writelines(self, lines: Iterable[bytes | bytearray | memoryview]) -> None:
        self.write(b"".join(lines))

    def is_closing(self) -> bool:
        client = self.client
        return self.closed or (client is not None and client.transport is not None
                               and client.transport.is_closing())

    def close(self) -> None:
        """aiohttp ends the connection: a response that leaves it unusable, a keep-alive
        timeout while idle, shutdown."""
        if self.closed:
            return
        self.closed = True
        client = self.client or self._ended  # a response with `Connection: close` ended
        self.client = self._ended = None
        if client is not None:
            client.inner_closed(self)
        else:
            self.pool.forget(self)
        asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        client = self.client
        if client is None or client.transport is None:
            return default
        return client.transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        if self.client is not None and self.client.transport is not None:
            self.client.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.client is not None and self.client.transport is not None:
            self.client.transport.resume_reading()

    # -- httptools callbacks: where aiohttp's response ends --------------------------------

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        if self.head_only and self._status >= 200:
            self.on_message_complete()  # a HEAD's answer has no body, whatever its length

    def on_message_complete(self) -> None:
        if self._status < 200 or self.client is None:
            return  # an interim answer (100 Continue): the response goes on
        self._ended, self.client = self.client, None
        # Not while aiohttp is inside its write: the next request may start at once.
        asyncio.get_running_loop().call_soon(self._hand_back, self._parser.should_keep_alive())

    def _hand_back(self, keep_alive: bool) -> None:
        client, self._ended = self._ended, None
        if client is None:  # aiohttp closed the connection meanwhile
            return
        if not keep_alive:  # `Connection: close`: aiohttp closes this one
            self.pool.forget(self)
            if self.pool.close_after:
                self._ended = None
                self.close()  # a relay (workers/relay.py) does not close by itself
        client.inner_done(self, keep_alive)


class InnerPool:
    """`idle`: how many unused connections it keeps; `close_after`: its protocol does not
    end a connection after a response that does not keep it alive, so the pool does."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], *, idle: int = MAX_IDLE,
                 close_after: bool = False) -> None:
        self.factory = factory
        self.idle, self.close_after = idle, close_after
        self._idle: list[Inner] = []

    def take(self) -> Inner:
        while self._idle:
            inner = self._idle.pop()
            if not inner.closed:
                return inner
        return Inner(self)

    def put(self, inner: Inner) -> None:
        inner.client = None
        if inner.closed:
            return
        if len(self._idle) >= self.idle:
            inner.close()
        else:
            self._idle.append(inner)

    def forget(self, inner: Inner) -> None:
        if inner in self._idle:
            self._idle.remove(inner)

    def close(self) -> None:
        for inner in list(self._idle):
            inner.close()
        self._idle.clear()

