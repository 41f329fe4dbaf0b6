"""One client connection of the proxy listener: the single owner of its framing.

Every byte a client sends is parsed here, by one llhttp parser, whatever path answers
it; nothing else ever parses a client's bytes, so a body can never be read as a request.
Each parsed request is checked once (request.py) and answered in order by one of:
- the fast path (fastpath.py `forward`, an `Exchange`): small JSON POSTs for ready models;
- the aiohttp application, over an in-memory connection (inner.py), fed the request as
  parsed, re-framed: holds, errors, large bodies, every other route;
- a tunnel (tunnel.py): a WebSocket upgrade on /v1, passed through to the model.

The next request is taken only once the answer before it has ended. A request answered
before its body was read has the rest read and dropped (at most `max_discard` bytes), or
the connection is closed, lingering so the answer is not lost to a reset. Limits and
timeouts are nginx's (HttpConfig); a refused request is answered by the listener itself
with the OpenAI error shape and `Connection: close` (refusing, timeouts and closing:
closing.py). What it hands requests to, it knows as sides.py's protocols.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import cast

import httptools

from supervisor.proxy.closing import Closing
from supervisor.proxy.request import APP, Rejected, Request, app_head, check, malformed
from supervisor.proxy.sides import ExchangeSide, InnerSide, Plane, TunnelSide

GONE_AFTER_EOF_SECONDS = 1.0
MAX_PIPELINED = 64  # requests parsed ahead of their answers; past it the rest is not read


class _Stop(Exception):
    """Raised inside a parser callback: parse no further (the reason is on the connection)."""


class ClientConnection(Closing, asyncio.Protocol):
    def __init__(self, plane: Plane) -> None:
        self.plane = plane
        http = plane.http
        self.max_line, self.max_header = http.max_request_line, http.max_header_size
        self.max_headers, self.max_head = http.max_headers, http.max_head_size
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.reading: Request | None = None  # whose bytes the parser reads now
        self.queue: deque[Request] = deque()  # parsed, not yet answered; [0] is answered first
        self.answering = False  # queue[0]'s answer is under way
        self.exchange: ExchangeSide | None = None
        self.inner: InnerSide | None = None
        self.tunnel: TunnelSide | None = None
        self.in_head = False
        self.head_bytes = self.head_size = self.fields = self.heads = 0
        self.head_since = 0.0  # when the head being read began (the sweeper's clock)
        self.rejection: Rejected | None = None  # why parsing stopped
        self.stopped = False  # nothing more is parsed; close once the queue is answered
        self.eof = False  # the client half-closed
        self.lingering = False
        self.linger_since = 0.0
        self.linger_left = 0
        self.reading_paused = False
        self.paused = False  # the client reads its answers slower than they are written
        self.closed = False
        self.sweeper = plane.sweeper
        self.limit = 0.0  # timeouts.Timed: how long it may stay as it is now
        self.since = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.sweeper.watch(self)
        self.limit, self.since = self.plane.http.header_timeout, self.sweeper.now

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.from_client(data)
        elif self.lingering:
            self._linger(len(data))
        elif not self.stopped:
            if self.in_head:
                self._feed(data)
            else:  # the usual read: whole requests, or a body's next bytes
                try:
                    self.parser.feed_data(data)
                except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
                    self._parsing_stopped(exc, data)
            if self.exchange is not None and self.reading is None and len(self.queue) == 1:
                self.limit = 0.0  # the usual case, forwarded: the upstream's timeout governs
            elif not self.closed:
                if self.answering and (self.in_head or len(self.queue) > 1):
                    self._pause_reading()  # a pipelined request waits for the answer
                self._watch()

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.tunnel is not None:
            return self.tunnel.client_eof()
        reading = self.reading
        if reading is not None:  # a request that can never be whole now
            if self.answering and self.queue[0] is reading:
                self._abort()  # aiohttp was reading its body: its request is cut
                return False
            if reading in self.queue:
                self.queue.remove(reading)
            self.reading, self.in_head = None, False
        if self.answering and self.inner is not None and not self.inner.wrote:
            # Closed, or only half-closed? A client that gave up on a held request looks
            # the same: one whose answer has not begun within a second is taken as gone.
            self.limit, self.since = GONE_AFTER_EOF_SECONDS, self.sweeper.now
        return bool(self.answering or self.queue)  # answer what came, then close (_next)

    def pause_writing(self) -> None:
        self.paused = True
        if self.exchange is not None:
            self.exchange.pause()
        if self.inner is not None:
            self.inner.protocol.pause_writing()
        if self.tunnel is not None:
            self.tunnel.pause_upstream()

    def resume_writing(self) -> None:
        self.paused = False
        if self.exchange is not None:
            self.exchange.resume()
        if self.inner is not None:
            self.inner.protocol.resume_writing()
        if self.tunnel is not None:
            self.tunnel.resume_upstream()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.sweeper.forget(self)
        if self.exchange is not None:
            self.exchange.client_gone()
            self.exchange = None
        if self.inner is not None:
            self.inner.lost(exc)
            self.inner = None
        if self.tunnel is not None:
            self.tunnel.client_lost()

    # -- parsing -------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Parse `data`, never keeping more than `max_head` bytes of a head that does not end
        (a head that begins in this read is bounded by the read, and by the next one)."""
        while data:
            cut = self.in_head and len(data) > self.max_head - self.head_bytes
            if cut:
                room = max(0, self.max_head - self.head_bytes)
                piece, data = data[:room], data[room:]
            else:
                piece, data = data, b""
            if self.in_head:
                self.head_bytes += len(piece)
            heads = self.heads
            if not self._parse(piece, data):
                return
            if cut and self.in_head and heads == self.heads:
                self._refuse(Rejected(431, "request_header_fields_too_large",
                                      f"The request head is larger than {self.max_head} bytes",
                                      "headers_too_large"))
                return

    def _parse(self, piece: bytes, rest: bytes) -> bool:
        try:
            self.parser.feed_data(piece)
            return True
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parsing_stopped(exc, piece, rest)
        return False

    def _parsing_stopped(self, exc: Exception, piece: bytes,
                         rest: bytes = b"") -> None:
        if isinstance(exc, httptools.HttpParserUpgrade):
            self._upgrade(piece[exc.args[0]:] + rest)
        elif self.rejection is not None or not self.stopped:
            self._refuse(self.rejection or malformed(str(exc) or type(exc).__name__))
        elif not self.answering:
            self._next()  # too many pipelined, or too much to drop: close when answered

    def on_message_begin(self) -> None:
        if self.stopped:
            raise _Stop  # closing: what follows is not read
        if len(self.queue) >= MAX_PIPELINED:
            self.stopped = True  # answered in order, then closed: the client sends the rest again
            raise _Stop
        self.reading = Request()
        self.in_head = True
        self.head_bytes = self.head_size = self.fields = 0
        self.heads += 1
        self.head_since = self.sweeper.now

    def on_url(self, url: bytes) -> None:
        request = self.reading
        assert request is not None
        request.url += url
        self.head_size += len(url)
        if len(request.url) > self.max_line:
            self._stop(Rejected(414, "uri_too_long", f"The request target is longer than "
                                f"{self.max_line} bytes", "line_too_long"))

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.reading
        assert request is not None
        size = len(name) + len(value) + 4
        self.fields += 1
        self.head_size += size
        if size > self.max_header or self.fields > self.max_headers or (
                self.head_size > self.max_head):
            self._stop(Rejected(431, "request_header_fields_too_large",
                                f"A request may have {self.max_headers} header fields of "
                                f"{self.max_header} bytes each, {self.max_head} bytes in all",
                                "headers_too_large"))
        request.headers.append((name, value))

    def on_headers_complete(self) -> None:
        request = self.reading
        assert request is not None
        self.in_head = False
        parser = self.parser
        upgrading = parser.should_upgrade()
        try:
            check(request, parser.get_method(), parser.get_http_version(), upgrading)
        except Rejected as rejected:
            self._stop(rejected)
        request.keep_alive = parser.should_keep_alive()
        if upgrading:
            return  # HttpParserUpgrade follows: _upgrade
        self._classify(request)
        self.queue.append(request)
        if not self.answering and len(self.queue) == 1 and not request.fast:
            self._answer(request)  # aiohttp reads its body as it comes

    def _classify(self, request: Request) -> None:
        """A small, plain HTTP/1.1 POST to a /v1 route that forwards may take the fast path;
        one the gate refuses is aiohttp's at once (it answers without reading the body)."""
        if (self.plane.fast and request.plain and request.method == b"POST"
                and request.version == "1.1" and request.url.startswith(b"/v1/")
                and not request.url.startswith(b"/v1/models") and request.length is not None
                and request.length <= self.plane.fast_body):
            context = self.plane.context
            request.client = context.client_of(request.authorization) if context else None
            request.fast = request.client is not None

    def on_body(self, body: bytes) -> None:
        request = self.reading
        assert request is not None
        if request.sink is not None:
            self._to_inner(request, body)
        elif request.discard:
            request.discard += len(body)
            if request.discard > self.plane.http.max_discard + 1:
                self.stopped = True
                raise _Stop  # too much to drop: the connection closes (lingering)
        else:
            request.body.append(body)

    def on_message_complete(self) -> None:
        request = self.reading
        assert request is not None
        request.complete = True
        if request.upgrade is not None:
            return  # HttpParserUpgrade follows: _upgrade
        self.reading = None
        if request.sink is not None:
            if request.chunked:
                cast(InnerSide, request.sink).feed(b"0\r\n\r\n")
            request.sink = None
        elif request.discard:
            self._next()  # its answer went out before its body ended
        elif not self.answering and self.queue and self.queue[0] is request:
            self.answering = True  # what _answer does, for the usual request
            if not (request.fast and self.plane.forward(self, request)):
                self.to_app(request)

    def _stop(self, rejected: Rejected) -> None:
        self.rejection = rejected
        raise _Stop

    # -- answering -----------------------------------------------------------------------

    def _answer(self, request: Request) -> None:
        self.answering = True
        if request.upgrade is not None:
            self.tunnel = self.plane.tunnel(self, request)
        elif not (request.fast and self.plane.forward(self, request)):
            self.to_app(request)

    def to_app(self, request: Request, tokens: int | None = None) -> None:
        """The aiohttp application answers it: fed the head as parsed, its body re-framed;
        `tokens`: the need it goes again with (the fast path's try was too long)."""
        self.exchange = None
        self.plane.served[APP] += 1
        inner = self.inner = self.plane.inner.take()
        inner.attach(self, head_only=request.method == b"HEAD")
        if self.paused:
            inner.protocol.pause_writing()
        inner.feed(app_head(request, tokens))
        body, request.body = request.body, []
        for data in body:
            self._to_inner(request, data, inner)
        if request.complete:
            if request.chunked:
                inner.feed(b"0\r\n\r\n")
        else:
            request.sink = inner

    def _to_inner(self, request: Request, data: bytes, inner: InnerSide | None = None) -> None:
        sink = inner or cast(InnerSide, request.sink)
        sink.feed(b"%x\r\n%s\r\n" % (len(data), data) if request.chunked else data)

    def inner_done(self, inner: InnerSide, keep_alive: bool) -> None:
        """aiohttp's answer ended."""
        if self.inner is not inner:
            return
        self.inner = None
        request = self.queue[0]
        if not request.complete:  # answered before its body ended: aiohttp still waits
            inner.detach()        # for the rest, so that connection serves nobody else
            request.sink, request.discard = None, 1
        elif keep_alive:
            inner.keep()
        self.answered(close=not keep_alive)

    def inner_closed(self, inner: InnerSide) -> None:
        """aiohttp ended the connection (`Connection: close`, or a failure)."""
        if self.inner is inner:
            self.inner = None
            if self.queue and self.queue[0].sink is inner:
                self.queue[0].sink = None
            self.answered(close=True)

    def answered(self, *, close: bool) -> None:
        """The answer to queue[0] has ended: take the next request, or end the connection."""
        self.exchange = None
        self.answering = False
        queue = self.queue
        if queue:
            queue.popleft()
        if close:
            self.stopped = True
            queue.clear()
        elif not queue and self.reading is None and not (self.stopped or self.eof
                                                          or self.closed):
            # The usual case: nothing more asked yet. Idle until the next request.
            self.limit, self.since = self.plane.http.keepalive_timeout, self.sweeper.now
            if self.reading_paused:
                self._resume_reading()
            return
        self._next()

    def _next(self) -> None:
        if self.closed:
            return
        if self.queue:
            first = self.queue[0]
            if not self.answering and (not first.fast or first.complete):
                self._answer(first)
        elif self.stopped or self.eof:
            if self.rejection is not None and self.transport is not None:
                self._reply(self.rejection)
            self._close()
            return
        if self.reading_paused and len(self.queue) <= 1:
            self._resume_reading()
        if self.in_head:  # a pipelined head waited for this answer: its time starts now
            self.head_since = self.sweeper.now
        self._watch()

    # -- upgrades ------------------------------------------------------------------------

    def _upgrade(self, rest: bytes) -> None:
        """llhttp stopped at an upgrade's head: a WebSocket on /v1 is passed through;
        anything else (h2c) is answered over HTTP/1.1 as if it had not asked."""
        request = self.reading
        assert request is not None
        self.reading = None
        if (request.upgrade == b"websocket" and request.method == b"GET"
                and request.url.startswith(b"/v1/") and self.plane.tunnels):
            request.body = [rest] if rest else []
            self.stopped = True  # no more HTTP on this connection
            self.queue.append(request)
            self._pause_reading()
            if not self.answering and len(self.queue) == 1:
                self._answer(request)
            return
        self.parser = httptools.HttpRequestParser(self)
        self._feed(app_head(request) + rest)
