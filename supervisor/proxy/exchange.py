"""One request on the fast path, from its lease to the last byte of its answer.

It is the upstream connection's `Sink` and what the handle cancels when a force stop or a
dead server ends the requests in flight. It answers with an error of its own only when
the server fails under the request (502, or 504 when it fell silent for the upstream
read timeout). A request is sent again only when it cannot have reached the server: a
refused connect goes to the aiohttp path, which holds it through a restart. Once written,
a request is never sent again (RFC 9110 9.2.2: a POST is not idempotent; the server may
have run it), except where the server answered that it is too long for its profile and a
larger one exists: that answer is the server's, and the retry goes to the larger profile.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from supervisor.clients.table import Client
from supervisor.clients.usage import StreamTap, keep_tail, stream_tap, tail_usage
from supervisor.lifecycle.lease import Lease, Upstream
from supervisor.lifecycle.servable import Servable
from supervisor.proxy import fastwire
from supervisor.proxy.policy import may_be_too_long, retry_need
from supervisor.proxy.refusals import aborted, reason
from supervisor.proxy.request import FAST
from supervisor.proxy.upstream import UpstreamConnection
from supervisor.refusal import Refusal

if TYPE_CHECKING:
    from supervisor.proxy.connection import ClientConnection
    from supervisor.proxy.context import Context, Target
    from supervisor.proxy.request import Request

log = logging.getLogger("supervisor.proxy.routes")



class Exchange:
    __slots__ = ("admitted", "asked", "began", "caller", "chunked", "client", "close", "conn",
                 "context", "first_byte", "head", "held_head", "lease", "model", "out", "over",
                 "peek", "request", "server", "status", "tail", "tap", "target", "tokens")

    def __init__(self, client: ClientConnection, context: Context, model: Servable,
                 request: Request, tokens: int | None, caller: Client, admitted: float) -> None:
        self.client = client
        self.caller, self.admitted = caller, admitted  # whose request, and since when
        self.asked = False  # include_usage was added to it (router.route_inline)
        self.tap: StreamTap | None = None  # an SSE answer's usage
        self.tail = b""  # any other answer's last bytes, for its usage
        self.context = context
        self.model = model  # what the lease came from (a handle, or a replica set)
        self.server: Upstream | None = None  # the replica that granted it
        self.target: Target | None = None
        self.request = request  # what the client sent, for a hand-over
        self.tokens = tokens
        self.close = not request.keep_alive  # the client asked to close after this answer
        self.lease: Lease | None = None
        self.conn: UpstreamConnection | None = None
        self.began = 0.0
        self.first_byte: float | None = None
        self.status = 0
        self.head = False  # the response head went to the client
        self.chunked = False
        self.peek: list[bytes] | None = None  # a 400 read whole: too long for the profile?
        self.held_head: tuple[bytes, list[tuple[bytes, bytes]]] = (b"", [])
        self.out: list[bytes] = []
        self.over = False

    def send(self, lease: Lease, target: Target, request: bytes) -> None:
        self.lease, self.server, self.target = lease, lease.replica, target
        self.began = fastwire.now()
        conn = self.client.plane.pool.take(target.key)
        if conn is not None:
            self._send(conn, request)
        else:
            self.client.plane.spawn(self._connect(request))

    async def _connect(self, request: bytes) -> None:
        try:
            assert self.target is not None
            conn = await self.client.plane.pool.connect(self.target.key)
        except (OSError, TimeoutError):
            if not self.over:  # nothing reached a server: the path that can hold decides
                self._hand_back()
            return
        if self.over:
            self.client.plane.pool.put(conn)
            return
        self._send(conn, request)

    def _send(self, conn: UpstreamConnection, request: bytes) -> None:
        self.conn = conn
        conn.send(self, request)
        if self.client.paused:
            conn.pause()

    # -- the client ----------------------------------------------------------------------

    def pause(self) -> None:
        if self.conn is not None:
            self.conn.pause()

    def resume(self) -> None:
        if self.conn is not None:
            self.conn.resume()

    def client_gone(self) -> None:
        if not self.over:
            self._drop_conn()
            self._finish(self.status or 499, close=True)

    def cancel(self, msg: Any | None = None) -> bool:
        """A force stop or a dead server (the handle set `lease.aborted`); acted on soon,
        not while the handle walks its list of flights."""
        asyncio.get_running_loop().call_soon(self._aborted)
        return True

    def _aborted(self) -> None:
        if self.over or self.lease is None:
            return
        self._drop_conn()
        if self.head:
            self._finish(self.status, close=True)  # an answer under way can only be cut
            return
        self._refuse(aborted(self.lease.replica, self.lease.aborted), counted=False)

    # -- upstream.Sink -------------------------------------------------------------------

    def response_head(self, status: int, reason: bytes,
                      headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        lease = self.lease
        assert lease is not None
        if may_be_too_long(status, self.tokens, lease.profile,
                           lease.replica.larger_profile(lease.profile)):
            self.peek = []  # read it whole: vLLM's "too long", or an answer for the client
            self.held_head = (reason, headers)
            return
        head, chunked, event_stream = fastwire.response_head(status, reason, headers,
                                                             lease.profile, self.close)
        self.chunked = chunked
        if event_stream:
            self.tap = stream_tap(asked=self.asked, chunked=chunked)
        self.out.append(head)
        self.head = True

    def response_interim(self, status: int, reason: bytes,
                         headers: list[tuple[bytes, bytes]]) -> None:
        """103 Early Hints go on to the client; 100 Continue was for a body already sent."""
        if status == 103 and self.peek is None:
            self.out.append(fastwire.interim_head(status, reason, headers))

    def response_body(self, data: bytes) -> None:
        if self.first_byte is None:
            self.first_byte = fastwire.now()
        if self.tap is not None:
            data = self.tap.feed(data)
            if not data:
                return
        else:
            self.tail = keep_tail(self.tail, data)
        if self.peek is not None:
            self.peek.append(data)
        elif self.chunked:
            self.out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self.out.append(data)

    def response_flush(self) -> None:
        if self.out and not self.over and self.client.transport is not None:
            self.client.transport.write(b"".join(self.out))
            self.out.clear()

    def response_done(self) -> None:
        if self.over:
            return
        if self.peek is not None:
            body, profile = b"".join(self.peek), self.lease.profile if self.lease else None
            need = retry_need(body, profile) if profile else None
            if profile and need is not None:
                log.info("model=%s sending a request again: profile %s refused the length; "
                         "retrying on a larger one", self.model.name, profile.name)
                self._hand_back(need)
                return
            reason, headers = self.held_head
            framing = (b"content-length", b"transfer-encoding")
            headers = [(n, v) for n, v in headers if n.lower() not in framing]
            headers.append((b"Content-Length", b"%d" % len(body)))
            assert profile is not None
            head, _, _ = fastwire.response_head(self.status, reason, headers, profile, self.close)
            self.out, self.peek, self.head = [head, body], None, True
        elif self.chunked:
            rest = self.tap.end() if self.tap is not None else b""
            if rest:
                self.out += (b"%x\r\n" % len(rest), rest, b"\r\n")
            self.out.append(b"0\r\n\r\n")
        self.response_flush()
        self._finish(self.status, close=self.close)

    def upstream_lost(self, error: str, answered: bool, *, timed_out: bool = False) -> None:
        if self.over:
            return
        assert self.server is not None
        if self.head:
            self.response_flush()
            self._finish(self.status, close=True)  # cut: the client sees a short answer
        elif timed_out:
            self._refuse(fastwire.timed_out(self.server, error), counted=True)
        else:
            self.client.plane.spawn(self.server.upstream_failed())
            self._refuse(fastwire.unreachable(self.server, error), counted=True)

    # -- ending --------------------------------------------------------------------------

    def _refuse(self, refusal: Refusal, *, counted: bool) -> None:
        """An error answer: counted as the request's status when the server failed under
        it, else as a refusal."""
        transport = self.client.transport
        if transport is not None:
            transport.write(fastwire.error_response(refusal, close=self.close))
        if not counted:
            self.context.metrics.refusal(self.model.name, reason(refusal))
        self._finish(refusal.status, close=self.close, counted=counted)

    def _hand_back(self, tokens: int | None = None) -> None:
        self._drop_conn()
        self._release(fastwire.now(), served=False)
        self.client.to_app(self.request, tokens)

    def _drop_conn(self) -> None:
        if self.conn is not None and self.conn.sink is self:
            self.conn.close()

    def _release(self, now: float, *, served: bool = True) -> None:
        self.over = True
        self.caller.done(self.admitted, now, served=served)
        if self.lease is not None:
            self.model.release(self.lease)

    def _finish(self, status: int, *, close: bool, counted: bool = True) -> None:
        end = fastwire.now()
        self._release(end)
        lease = self.lease
        if counted and lease is not None:
            ttfb = self.first_byte - self.began if self.first_byte else None
            self.context.metrics.request(self.model.name, status, end - self.began, ttfb,
                                         cold_start=False, first=lease.first)
            tokens = (self.tap.usage if self.tap is not None else tail_usage(self.tail)
                      ) if status == 200 else None
            self.caller.used(self.model.name).add(end - self.admitted, 0.0, tokens)
            if (journal := self.context.journal) is not None:
                journal.served(self.model.name, lease.profile.name, self.began, end, 0.0,
                               "warm", status)
        self.client.plane.served[FAST] += 1
        self.client.answered(close=close)
