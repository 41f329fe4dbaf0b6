"""WebSocket passthrough: OpenAI Realtime's `GET /v1/realtime?model=...`, vLLM's realtime
endpoints, any WebSocket on /v1.

The model comes from the `model` query parameter (or, without one, from the path's last
part); it is started and held like any request, and the socket counts in flight from the
handshake until it closes, so neither the idle timer nor the GPU budget takes the model
from under it. The upgrade is forwarded to the server with the server's own key, its
answer relayed (a 101 with the supervisor's headers added), and from then on the bytes
pass both ways untouched, with backpressure, until either side closes or nothing passed
for `websocket_idle_timeout`. A worker process passes the whole connection to the owner,
which holds it like any other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, cast
from urllib.parse import parse_qs, urlsplit

import httptools

from supervisor.lifecycle.lease import Lease
from supervisor.proxy import fastwire
from supervisor.proxy.refusals import reason
from supervisor.proxy.request import WEBSOCKET, Request
from supervisor.refusal import BadRequest, Refusal

if TYPE_CHECKING:
    from supervisor.proxy.connection import ClientConnection

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10.0
MAX_RESPONSE_HEAD = 65536
_DROP = frozenset((b"host", b"content-length"))


class Tunnel:
    def __init__(self, conn: ClientConnection, request: Request) -> None:
        self.conn = conn
        self.request = request
        self.pending: list[bytes] = list(request.body)  # client bytes before the server is there
        self.upstream: asyncio.Transport | None = None
        self.open = False  # the 101 went out: bytes flow both ways
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.model = ""  # the model it was routed to, once known
        conn.limit = 0.0  # held: hold_timeout governs
        self.task = conn.plane.spawn(self._run())

    # -- the client's side (called by the connection) ------------------------------------

    def from_client(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.write(data)
            self._active()
        else:
            self.pending.append(data)

    def client_eof(self) -> bool:
        """A WebSocket has no half-close: one side's end ends both (after what was sent)."""
        self._end()
        return False

    def client_lost(self) -> None:
        if not self.task.done() and self.task is not asyncio.current_task():
            self.task.cancel()  # held: it leaves the hold (a start nobody waits for may stop)
        self._end()

    def pause_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.resume_reading()

    def idle(self) -> None:
        log.info("closing a WebSocket idle for %gs: %s",
                 self.conn.plane.http.websocket_idle_timeout, self.request.url[:200].decode(
                     "latin-1"))
        self._end()

    # -- running -------------------------------------------------------------------------

    async def _run(self) -> None:
        plane = self.conn.plane
        try:
            if plane.relay_to is not None:
                await self._connect_unix(plane.relay_to, self._raw_head())
                await self.done
                return
            context = plane.context
            if context is None:
                raise Refusal("The supervisor is shutting down", status=503, code="shutting_down")
            gate = context.gate
            if gate.draining:
                raise Refusal("The supervisor is in maintenance (drain) mode; retry later",
                              status=503, code="maintenance", retry_after=int(gate.retry_after))
            client = context.client_of(self.request.header(b"authorization"))
            if client is None:
                raise Refusal("Incorrect API key provided. Send a valid key as "
                              "'Authorization: Bearer <key>'.", status=401,
                              code="invalid_api_key")
            model = context.registry.get(self._model_name())
            self.model = model.name
            began = time.monotonic()
            if (refusal := client.admit(model.name, began)) is not None:
                raise refusal
            try:
                async with model.lease(None) as lease:
                    if lease.cold_start:
                        context.metrics.hold(model.name, lease.hold_seconds)
                    await self._through(lease)
            finally:
                client.done(began, time.monotonic())
        except Refusal as refusal:
            self._refuse(refusal)
        except (OSError, TimeoutError) as exc:
            self._refuse(Refusal(f"the model server did not take the WebSocket: {exc}",
                                 status=502, code="upstream_unreachable"))
        except asyncio.CancelledError:
            pass  # a force stop, or a dead server: the socket ends
        finally:
            self._end()

    def _model_name(self) -> str:
        url = urlsplit(self.request.url.decode("latin-1"))
        names = parse_qs(url.query).get("model")
        if names:
            return names[0]
        tail = url.path.rstrip("/").rsplit("/", 1)[-1]
        if url.path.count("/") > 3 and tail:  # /v1/realtime/<model>
            return tail
        raise BadRequest("Name the model: GET /v1/realtime?model=<name>", code="missing_model")

    async def _through(self, lease: Lease) -> None:
        plane = self.conn.plane
        server = lease.replica
        target = plane.target(server.upstream)
        if target is None:
            raise Refusal(f"WebSockets to {server.upstream} are not supported (http only)",
                          status=502, code="upstream_unreachable")
        _, extra = plane.upstream_headers(server)
        replaced = plane.replaced(server)
        lines = [b"GET ", target.prefix + self.request.url, b" HTTP/1.1\r\nHost: ",
                 target.host, b"\r\n"]
        for name, value in self.request.headers:
            if name.lower() not in _DROP and name.lower() not in replaced:
                lines += (name, b": ", value, b"\r\n")
        lines += (extra, b"\r\n")
        added = [(b"X-Supervisor-Profile", lease.profile.name.encode())]
        if lease.cold_start:
            added += [(b"X-Supervisor-Cold-Start", b"true"),
                      (b"X-Supervisor-Hold-Seconds", b"%.3f" % lease.hold_seconds)]
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
            transport, _ = await loop.create_connection(
                lambda: _Upstream(self, added), *target.key)
        self._attach(transport, b"".join(lines))
        await self.done

    async def _connect_unix(self, path: str, head: bytes) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_unix_connection(lambda: _Upstream(self, None), path)
        self._attach(transport, head)
        self.open = True  # the owner answers the upgrade; every byte passes as it comes
        self.conn._resume_reading()
        self._active()

    def _attach(self, transport: asyncio.Transport, head: bytes) -> None:
        if self.done.done():
            transport.close()
            return
        self.upstream = transport
        pending, self.pending = self.pending, []
        transport.write(head + b"".join(pending))

    def _raw_head(self) -> bytes:
        """The request as the client sent it (a worker hands the connection to the owner)."""
        request = self.request
        lines = [request.method, b" ", request.url, b" HTTP/1.1\r\n"]
        for name, value in request.headers:
            lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        return b"".join(lines)

    # -- both ways -----------------------------------------------------------------------

    def opened(self) -> None:
        """The server switched protocols: the client's bytes flow from now on."""
        self.open = True
        self.conn.plane.served[WEBSOCKET] += 1
        self.conn._resume_reading()
        self._active()

    def to_client(self, data: bytes) -> None:
        transport = self.conn.transport
        if transport is not None and not self.conn.closed:
            transport.write(data)
        if self.open:
            self._active()

    def _active(self) -> None:
        conn = self.conn
        conn.limit, conn.since = conn.plane.http.websocket_idle_timeout, conn.sweeper.now

    def _refuse(self, refusal: Refusal) -> None:
        """An error answer in place of the 101 (before any byte of the server's answer)."""
        conn = self.conn
        if conn.transport is not None and not conn.closed and not self.open:
            conn.transport.write(fastwire.error_response(refusal, close=True))
            if conn.plane.context is not None:
                conn.plane.context.metrics.refusal(refusal.model or self.model,
                                                   reason(refusal))

    def _end(self) -> None:
        """Either side closed, the socket idled, or the model went: both ends close."""
        if not self.done.done():
            self.done.set_result(None)
        if self.upstream is not None:
            self.upstream.close()
        conn = self.conn
        conn.limit = 0.0
        if conn.transport is not None and not conn.closed:
            conn.transport.close()


class _Upstream(asyncio.Protocol):
    """The server's side: its answer to the upgrade, then the socket's bytes."""

    def __init__(self, tunnel: Tunnel, added: list[tuple[bytes, bytes]] | None) -> None:
        self.tunnel = tunnel
        self.added = added  # None: pass everything as it comes (a worker's relay)
        self.parser: httptools.HttpResponseParser | None = None
        if added is not None:
            self.parser = httptools.HttpResponseParser(self)
        self.head: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.seen = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:
            self.tunnel.to_client(data)
            return
        self.seen += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self.parser = None
            self.tunnel.opened()
            if rest := data[upgrade.args[0]:]:
                self.tunnel.to_client(rest)
            return
        except httptools.HttpParserError as exc:
            self.tunnel._refuse(Refusal(f"the model server's answer to the upgrade does not "
                                        f"parse: {exc}", status=502,
                                        code="upstream_unreachable"))
            self.tunnel._end()
            return
        if self.seen > MAX_RESPONSE_HEAD and not self.head:
            self.tunnel._end()

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.parser is not None and self.added is not None
        status = self.parser.get_status_code()
        if status < 200 and status != 101:
            self.head, self.reason = [], b""
            return  # an interim answer: the real one follows
        lines = [b"HTTP/1.1 %d " % status, self.reason, b"\r\n"]
        for name, value in self.head:
            if status == 101 or name.lower() not in (b"connection", b"keep-alive"):
                lines += (name, b": ", value, b"\r\n")
        for name, value in self.added:
            lines += (name, b": ", value, b"\r\n")
        if status != 101:
            lines.append(b"Connection: close\r\n")  # refused: the socket ends after it
        lines.append(b"\r\n")
        self.tunnel.to_client(b"".join(lines))

    def on_body(self, body: bytes) -> None:
        self.tunnel.to_client(body)

    def on_message_complete(self) -> None:
        if self.parser is not None and self.parser.get_status_code() >= 200:
            self.tunnel._end()  # the server refused the upgrade: its answer went out

    def pause_writing(self) -> None:
        transport = self.tunnel.conn.transport
        if transport is not None:
            transport.pause_reading()

    def resume_writing(self) -> None:
        transport = self.tunnel.conn.transport
        if transport is not None:
            transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # closed, and so is the client's side (connection_lost)

    def connection_lost(self, exc: Exception | None) -> None:
        self.tunnel._end()
