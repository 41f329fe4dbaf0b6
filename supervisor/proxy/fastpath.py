"""The fast path: the proxy listener's protocol, forwarding what needs no waiting.

Nearly every request a busy box sees is a small JSON POST for a model that is ready. For
those, aiohttp's server and client cost ~130 µs of the ~215 µs of CPU a forwarded request
took (py-spy), so the listener speaks HTTP/1.1 itself here: httptools (llhttp) parses the
request, router.route_inline finds the model and its need, the handle grants a lease at
once (`lease_now`), and the request goes out on a pooled keep-alive connection
(upstream.py) in one write; the answer comes back with its own framing (a length stays a
length; a chunked stream is re-chunked read by read, so each SSE event goes out as it
comes), the response head and the first bytes in one write.

Everything else goes to the aiohttp application (routes.py) over an in-memory connection
(inner.py), with the bytes read so far and the rest of its body as it comes: requests that
must be held or refused, large or compressed or multipart bodies, every other route, client
keys that do not match, drain mode, bad JSON (routes.py answers the errors). Once its
response has ended, the client's next request is the fast path's again, so a connection
that met a cold start is not slower afterwards. A client that pipelines, or sends HEAD,
HTTP/1.0 or what does not parse, is aiohttp's for good. So the two paths cannot disagree
on what a request gets, only on how fast: the fast path answers an error of its own only
when the server fails under a request it forwarded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

from supervisor.errors import Refusal
from supervisor.gate import Gate
from supervisor.lifecycle.handle import ModelHandle
from supervisor.lifecycle.registry import Registry
from supervisor.observe.metrics import Metrics
from supervisor.proxy import fastwire
from supervisor.proxy.exchange import Exchange
from supervisor.proxy.inner import Inner, InnerPool
from supervisor.proxy.router import INLINE_ESTIMATE_BYTES, route_inline
from supervisor.proxy.upstream import UpstreamPool

log = logging.getLogger(__name__)

FAST_BODY_BYTES = INLINE_ESTIMATE_BYTES  # larger bodies take the path that spools them
# A body that is not plain bytes of a known length, or a connection that changes protocol.
_SLOW_FIELDS = frozenset((b"transfer-encoding", b"expect", b"content-encoding", b"upgrade"))


class _Slow(Exception):
    """Stop parsing: this request goes to the aiohttp application."""


class Target:
    """Where a model's upstream URL points, parsed once."""

    __slots__ = ("host", "key", "prefix")

    def __init__(self, host: bytes, key: tuple[str, int], prefix: bytes) -> None:
        self.host, self.key, self.prefix = host, key, prefix


@dataclass(slots=True)
class Context:
    """The application's objects the fast path reads (there once the app has started)."""

    registry: Registry
    metrics: Metrics
    gate: Gate

    def admits(self, authorization: bytes | None) -> bool:
        """Not in drain mode, and the client's key matches where keys are configured."""
        if self.gate.draining:
            return False
        keys = self.gate.client_keys
        return not keys or keys.allows(authorization.decode("latin-1") if authorization
                                       else None)


def _unset() -> asyncio.Protocol:
    raise RuntimeError("the data plane was not started")


class DataPlane:
    """What every connection of the listener shares."""

    def __init__(self) -> None:
        self.inner = InnerPool(_unset)
        self.context: Context | None = None
        self.pool = UpstreamPool()
        self._targets: dict[str, Target | None] = {}
        self._extra: dict[str, tuple[dict[str, str], frozenset[bytes], bytes]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, aiohttp: Callable[[], asyncio.Protocol], context: Context) -> None:
        """`aiohttp` makes the application's protocol for an in-memory connection."""
        self.inner, self.context = InnerPool(aiohttp), context

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

    def upstream_headers(self, handle: ModelHandle) -> tuple[frozenset[bytes], bytes]:
        """The server's own key as header lines, and the names they replace."""
        cached = self._extra.get(handle.name)
        if cached is None or cached[0] is not handle.upstream_headers:
            headers = handle.upstream_headers
            cached = (headers, frozenset(k.lower().encode() for k in headers),
                      b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items()))
            self._extra[handle.name] = cached
        return cached[1], cached[2]

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def protocol(self) -> FastPath:
        return FastPath(self)

    async def shutdown(self, app: object) -> None:
        """No new exchange takes a pooled connection; those in use end with theirs."""
        self.context = None
        self.pool.close()
        self.inner.close()


class FastPath(asyncio.Protocol):
    """One client connection. Each request is forwarded here (an `Exchange`) or given to
    the aiohttp application over an in-memory connection (`Inner`), which hands the
    connection back once its response has ended; a client that pipelines, upgrades or does
    not parse is aiohttp's for good."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.exchange: Exchange | None = None
        self.inner: Inner | None = None  # aiohttp serves the current request (or all)
        self.raw: list[bytes] = []  # what the client sent since its current request began
        self.later: list[bytes] = []  # what it sent while an answer was under way
        self.paused = False  # the client reads its answer slower than it is written
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.head = False  # its head is parsed
        self.fast = False  # the request may take the fast path (so far as its head says)
        self.complete = False
        self.close_after = False
        self.authorization: bytes | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        inner = self.inner
        if inner is not None and inner.for_good:
            inner.feed(data)
        elif self.exchange is not None or (inner is not None and self.complete):
            self.later.append(data)  # the next request before this answer ended
            assert self.transport is not None
            self.transport.pause_reading()
        else:
            self._feed(data)

    def eof_received(self) -> bool | None:
        if self.inner is not None:
            return self.inner.protocol.eof_received()
        return self.exchange is not None  # keep the socket open for the answer under way

    def pause_writing(self) -> None:
        self.paused = True
        if self.exchange is not None:
            self.exchange.pause()
        if self.inner is not None:
            self.inner.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.paused = False
        if self.exchange is not None:
            self.exchange.resume()
        if self.inner is not None:
            self.inner.protocol.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.exchange is not None:
            self.exchange.client_gone()
            self.exchange = None
        if self.inner is not None:
            self.inner.lost(exc)
            self.inner = None

    # -- parsing -------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if self.inner is None:
            self.raw.append(data)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, _Slow):
            self._to_aiohttp([data] if self.inner is not None else self.raw, for_good=True)
            return
        if self.inner is not None:
            self.inner.feed(data)  # the rest of a body aiohttp reads
        elif self.head and not self.fast:  # aiohttp's, from the start: it reads the body
            self._to_aiohttp(self.raw, for_good=False)
        elif self.complete:
            self._forward()

    def on_message_begin(self) -> None:
        if self.complete:  # a second request in the same read: a pipelining client
            raise _Slow

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        """Only a plain HTTP/1.1 POST of a small, uncompressed body to a /v1 route that
        forwards may go the fast way; HEAD and HTTP/1.0 are aiohttp's for good (their
        answers' ends are not where a response parser looks)."""
        self.head = True
        method = self.parser.get_method()
        if method == b"HEAD" or self.parser.get_http_version() != "1.1":
            raise _Slow
        if method != b"POST" or not self.url.startswith(b"/v1/") or self.url.startswith(
                b"/v1/models"):
            return
        length = None
        for name, value in self.headers:
            lower = name.lower()
            if lower == b"content-length":
                length = int(value) if value.isdigit() else None
                if length is None or length > FAST_BODY_BYTES:
                    return
            elif lower in _SLOW_FIELDS or (
                    lower == b"content-type" and value[:10].lower() == b"multipart/"):
                return
            elif lower == b"authorization":
                self.authorization = value
            elif lower == b"connection" and b"close" in value.lower():
                self.close_after = True
        self.fast = length is not None

    def on_body(self, body: bytes) -> None:
        if self.fast:
            self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True

    # -- forwarding ----------------------------------------------------------------------

    def _forward(self) -> None:
        raw, body = b"".join(self.raw), b"".join(self.body)
        context = self.plane.context
        try:
            if context is None or not context.admits(self.authorization):
                raise _Slow
            model, data, need = route_inline(body, context.registry)
            tokens = need.tokens if need else None
            exchange = Exchange(self, context, model, raw, tokens, self.close_after)
            lease = model.lease_now(tokens, exchange)
            if lease is None:
                raise _Slow
        except (Refusal, _Slow):
            self._to_aiohttp([raw], for_good=False)
            return
        server = lease.replica
        target = self.plane.target(server.upstream)
        if target is None:
            model.release(lease)
            self._to_aiohttp([raw], for_good=False)
            return
        self.exchange = exchange
        self.raw = []
        replaced, extra = self.plane.upstream_headers(server)
        head = fastwire.request_head(target.prefix + self.url, self.headers, target.host,
                                     len(data), replaced, extra)
        exchange.send(lease, target, head + data)

    def finished(self, *, close: bool) -> None:
        """The answer is over: take the next request, or end the connection."""
        self.exchange = None
        self._reset()
        if close or self.transport is None:
            if self.transport is not None:
                self.transport.close()
            return
        later, self.later = self.later, []
        if later:
            self.transport.resume_reading()
            for data in later:
                self.data_received(data)

    def hand_back(self, raw: bytes, tokens: int | None = None) -> None:
        """An exchange gives its request, whole, to aiohttp (see exchange.py); `tokens`:
        what it needs at least, when the server said the profile it met is too small."""
        self.exchange = None
        self._to_aiohttp([raw], for_good=False, tokens=tokens)

    def _to_aiohttp(self, raw: list[bytes], *, for_good: bool,
                    tokens: int | None = None) -> None:
        if self.inner is None:
            self.inner = self.plane.inner.take()
        self.inner.attach(self, for_good=for_good, tokens=tokens)
        if self.paused:
            self.inner.protocol.pause_writing()
        self.raw = []
        for data in raw:
            self.inner.feed(data)
        if for_good:
            later, self.later = self.later, []
            if later and self.transport is not None:
                self.transport.resume_reading()
            for data in later:
                self.inner.feed(data)

    def inner_done(self, inner: Inner) -> None:
        """aiohttp's response ended: the next request is the fast path's again."""
        if self.inner is not inner:
            return
        self.inner = None
        self.plane.inner.put(inner)
        self.finished(close=False)

    def inner_closed(self) -> None:
        """aiohttp ended the connection."""
        self.inner = None
        if self.transport is not None:
            self.transport.close()
