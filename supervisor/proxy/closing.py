"""How a client connection (connection.py) ends: a request the listener refuses itself
(answered after those before it, then closed), the timeouts the sweeper fires (head, body,
keep-alive, a client gone while its request was held), and nginx's lingering close (read
and drop what the client still sends, in bounded time and bytes, so that the answer is not
lost to a reset). A base of `ClientConnection`, which holds the state named here."""

from __future__ import annotations

import asyncio
from collections import deque

from supervisor.proxy import fastwire
from supervisor.proxy.request import Rejected, Request
from supervisor.proxy.sides import ExchangeSide, InnerSide, Plane, TunnelSide
from supervisor.proxy.timeouts import Sweeper

_REQUEST_TIMEOUT = Rejected(408, "request_timeout", "The request was not sent in time",
                            "header_timeout")


class Closing:
    plane: Plane
    sweeper: Sweeper
    transport: asyncio.Transport | None
    reading: Request | None
    queue: deque[Request]
    answering: bool
    exchange: ExchangeSide | None
    inner: InnerSide | None
    tunnel: TunnelSide | None
    in_head: bool
    head_since: float
    rejection: Rejected | None
    stopped: bool
    eof: bool
    lingering: bool
    linger_since: float
    linger_left: int
    reading_paused: bool
    closed: bool
    limit: float
    since: float

    def _next(self) -> None:
        raise NotImplementedError

    def _refuse(self, rejected: Rejected) -> None:
        """A request the listener refuses itself: answered after those before it, then the
        connection closes."""
        self.plane.rejected(self, rejected)
        reading = self.reading
        if reading is not None and not self._unanswer(reading):
            self._abort()  # its answer began before the rest of it turned out bad
            return
        self.stopped, self.rejection = True, rejected
        if reading is not None and reading in self.queue:
            self.queue.remove(reading)
        if not self.answering:
            self._next()

    def _unanswer(self, request: Request) -> bool:
        """Take back the answer under way to `request` (aiohttp's, while it read the body),
        if none of it went out yet; False: too late, the answer began."""
        inner = self.inner
        if not (self.answering and self.queue and self.queue[0] is request):
            return True
        if inner is None or inner.wrote:
            return False
        self.inner = None
        request.sink = None
        inner.lost(None)  # aiohttp cancels its handler (a held request leaves the hold)
        self.answering = False
        return True

    def _reply(self, rejected: Rejected) -> None:
        assert self.transport is not None
        self.transport.write(fastwire.error_response(rejected, close=True))

    def _watch(self) -> None:
        """Set the timeout that applies now: the head's, a gap in a body, or keep-alive.
        While an answer is under way the upstream's timeout governs instead."""
        if self.closed or self.tunnel is not None or self.lingering:
            return
        http = self.plane.http
        reading = self.reading
        outstanding = self.answering or self.queue
        if reading is not None and not self.in_head and (
                reading.discard or not outstanding or self.queue[0] is reading):
            self.limit, self.since = http.body_timeout, self.sweeper.now  # a body read or dropped
        elif outstanding:
            self.limit = 0.0
        elif self.in_head:
            self.limit, self.since = http.header_timeout, self.head_since
        else:
            self.limit, self.since = http.keepalive_timeout, self.sweeper.now

    def expired(self) -> None:
        """The timeout `_watch` (or eof_received, or a tunnel) set has passed."""
        if self.tunnel is not None:
            self.tunnel.idle()
            return
        if self.lingering or self.transport is None:
            self._abort()
            return
        if self.eof and self.answering:  # set by eof_received: it left while it waited
            if self.inner is not None and not self.inner.wrote:
                self._abort()  # aiohttp cancels the request (a held one leaves the hold)
            return
        reading = self.reading
        if reading is None or reading.discard:
            self._close()  # idle keep-alive, or a dropped body that stalled
            return
        rejected = _REQUEST_TIMEOUT
        if not self.in_head:
            rejected = Rejected(408, "request_timeout", "The request body stalled",
                                "body_timeout")
        self._refuse(rejected)

    def _close(self) -> None:
        """End the connection once what was written is out; while the client may still be
        sending, close lingering (nginx's lingering close)."""
        transport = self.transport
        if transport is None or self.closed:
            return
        self.stopped = True
        reading = self.reading
        if reading is not None and not reading.complete and transport.can_write_eof():
            transport.write_eof()
            http = self.plane.http
            self.lingering = True
            self.linger_since, self.linger_left = self.sweeper.now, http.max_discard
            self.limit, self.since = http.lingering_timeout, self.sweeper.now
            self._resume_reading()
            return
        self.closed = True
        self.limit = 0.0
        transport.close()

    def _linger(self, size: int) -> None:
        """Read and drop what the client still sends, in bounded time and bytes."""
        self.linger_left -= size
        now = self.sweeper.now
        if self.linger_left < 0 or now - self.linger_since > self.plane.http.lingering_time:
            self._abort()
            return
        self.since = now

    def _abort(self) -> None:
        self.stopped = True
        self.limit = 0.0
        if self.transport is not None:
            self.transport.close()

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

