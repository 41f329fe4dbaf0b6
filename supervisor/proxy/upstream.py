"""Keep-alive HTTP/1.1 connections to model servers for the fast path (fastpath.py).

A connection parses responses with httptools (llhttp, the parser of Node.js) and hands
what it parses to the exchange that owns it for the moment (`Sink`); between exchanges it
waits in the pool. Connections are taken last in, first out, so the ones in use stay
warm and the rest age out: one idle longer than `IDLE_SECONDS` is closed rather than
reused, since servers close idle keep-alive connections themselves (uvicorn, vLLM's
server, after 5 s) and a request sent just as the server closes would be lost.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, cast

import httptools

from supervisor.proxy.timeouts import Sweeper

IDLE_SECONDS = 4.0
MAX_IDLE_PER_UPSTREAM = 1024
CONNECT_TIMEOUT_SECONDS = 10.0

Key = tuple[str, int]
_FRAMING = frozenset((b"content-length", b"transfer-encoding"))


class Sink(Protocol):
    """What an exchange is told about its response."""

    def response_head(self, status: int, reason: bytes,
                      headers: list[tuple[bytes, bytes]]) -> None: ...

    def response_interim(self, status: int, reason: bytes,
                         headers: list[tuple[bytes, bytes]]) -> None:
        """A 1xx before the final answer (103 Early Hints, 100 Continue)."""

    def response_body(self, data: bytes) -> None: ...

    def response_flush(self) -> None:
        """The end of one read from the server: write what it brought to the client."""

    def response_done(self) -> None: ...

    def upstream_lost(self, error: str, answered: bool, *, timed_out: bool = False) -> None:
        """The connection failed; `answered` once any byte of the response came;
        `timed_out`: the server sent nothing for `read_timeout`."""


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("_done", "_extra", "_headers", "_interim", "_keep", "_reason", "_until_close",
                 "answered", "closed", "idle_since", "key", "limit", "parser", "pool",
                 "reused", "since", "sink", "sweeper", "transport")

    def __init__(self, pool: UpstreamPool, key: Key) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sink: Sink | None = None
        self.reused = False  # it served an exchange before this one
        self.answered = False  # a byte of the current response came
        self.closed = False
        self.idle_since = 0.0
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._until_close = False  # the response's body ends when the server closes
        self._interim = False  # the message being parsed is a 1xx
        self._done = False  # the final answer ended in the bytes being parsed
        self._extra = False  # ... and more bytes came after it
        self._keep = False  # ... and the server keeps the connection alive
        self.sweeper = pool.sweeper
        self.limit = 0.0  # timeouts.Timed: read_timeout while an answer is awaited
        self.since = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.sweeper.watch(self)

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:  # a server speaking out of turn: not to be trusted with more
            self.close()
            return
        self.answered = True
        self.since = self.sweeper.now
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self._done:
                self.sink = None
                self.close()
                sink.upstream_lost(f"invalid HTTP from the server: {exc}", True)
                return
            self._extra = True  # garbage after the answer: the answer stands, not the socket
        if not self._done:
            sink.response_flush()
            return
        # The answer ended: pool the connection if it is clean, then tell the exchange (its
        # client's next request may come at once and want the connection).
        self.sink = None
        clean = self._keep and not self._extra and not self._until_close
        self._done = self._extra = self._until_close = False
        self.limit = 0.0
        if clean and not self.closed:
            self.pool.put(self)
        else:
            self.close()
        sink.response_done()

    def eof_received(self) -> bool:
        return False  # close: a half-closed keep-alive connection is of no further use

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.sweeper.forget(self)
        sink, self.sink = self.sink, None
        if sink is None:
            return
        if self._until_close:  # a body without a length ends when the server closes
            sink.response_done()
        else:
            sink.upstream_lost(str(exc) if exc else "the server closed the connection",
                               self.answered)

    def expired(self) -> None:
        sink, self.sink = self.sink, None
        self.close()
        if sink is not None:
            sink.upstream_lost(f"the server sent nothing for {self.pool.read_timeout:g}s",
                               self.answered, timed_out=True)

    # -- httptools callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._done:
            self._extra = True  # a second answer to one request: out of step with us

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._done:
            return
        status = self.parser.get_status_code()
        if status == 101:
            raise httptools.HttpParserError("101 Switching Protocols without an Upgrade")
        if status < 200:
            self._interim = True
            if self.sink is not None:
                self.sink.response_interim(status, self._reason, self._headers)
            return
        framed = status in (204, 304)
        for name, _ in self._headers:  # a plain loop: a generator costs more per answer
            if name.lower() in _FRAMING:
                framed = True
                break
        self._until_close = not framed
        if self.sink is not None:
            self.sink.response_head(status, self._reason, self._headers)

    def on_body(self, body: bytes) -> None:
        if self.sink is not None and not self._done:
            self.sink.response_body(body)

    def on_message_complete(self) -> None:
        self._headers, self._reason = [], b""
        if self._interim:
            self._interim = False  # the final answer follows
        elif not self._done:
            self._done = True
            self._keep = self.parser.should_keep_alive()  # gone once the parser moves on

    # -- use -----------------------------------------------------------------------------

    def send(self, sink: Sink, data: bytes) -> None:
        assert self.transport is not None
        self.sink = sink
        self.answered = False
        self.limit, self.since = self.pool.read_timeout, self.sweeper.now
        self.transport.write(data)

    def pause(self) -> None:
        """The client reads slower than the server sends: not the server's silence."""
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()
            self.limit = 0.0

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
            if self.sink is not None:
                self.limit, self.since = self.pool.read_timeout, self.sweeper.now

    def close(self) -> None:
        """End it (an exchange given up, or a response that leaves it unusable)."""
        self.sink = None
        self.closed = True
        self.limit = 0.0
        self.sweeper.forget(self)
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    """Idle connections by (host, port)."""

    def __init__(self, read_timeout: float = 600.0, sweeper: Sweeper | None = None) -> None:
        self._idle: dict[Key, list[UpstreamConnection]] = {}
        self.read_timeout = read_timeout
        self.sweeper = sweeper or Sweeper()

    def take(self, key: Key) -> UpstreamConnection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if (not conn.closed and now - conn.idle_since < IDLE_SECONDS
                    and conn.transport is not None and not conn.transport.is_closing()):
                conn.reused = True
                return conn
            conn.close()
        return None

    def put(self, conn: UpstreamConnection) -> None:
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= MAX_IDLE_PER_UPSTREAM:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def connect(self, key: Key) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
            _, conn = await loop.create_connection(lambda: UpstreamConnection(self, key), *key)
        return conn

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
