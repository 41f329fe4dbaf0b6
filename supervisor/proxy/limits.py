"""Never wedge on file descriptors.

Every client of the proxy holds a socket, and every request it forwards holds one more, to
the model server. When the process has no descriptor left, accept() fails with EMFILE:
asyncio then stops accepting for a second at a time, uvloop (libuv) accepts the waiting
connections and closes them without a word, and meanwhile nothing else in the process can
open anything: not `docker compose`, not the Docker SDK, not an upstream connection, not
the admin API.

So the listeners accept on a loop of their own (`LimitedServer`). The proxy's keeps at
most `limit` client connections open; past that, a new client gets an immediate `503`
`too_many_connections` with `Retry-After: 1` and `Connection: close`, without going
through request handling, and its socket is closed at once. The descriptors that the limit
leaves (the reserve) are for the admin API, health checks, `docker compose`, the Docker SDK
and the connections to model servers. Should accept() still fail for want of descriptors
(something else used the reserve), a spare descriptor kept for that moment answers the
waiting clients with the same 503, one at a time, and accepting goes on by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import resource
import socket
import time
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger(__name__)

DEFAULT_FD_RESERVE = 128
DESCRIPTORS_PER_CONNECTION = 2  # the client's socket and one to the model server
ACCEPT_BATCH = 256  # connections taken per readiness event: others get a turn between
RETRY_ACCEPT_SECONDS = 0.1  # out of descriptors and no spare: look again this soon
LOG_EVERY_SECONDS = 10.0
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_CLIENT_GONE = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})

_BODY = json.dumps({"error": {
    "message": "The supervisor has as many client connections open as it may (its open "
               "files limit keeps a reserve for Docker and the admin API); retry in a second",
    "type": "service_unavailable",
    "param": None,
    "code": "too_many_connections",
}}).encode()
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_BODY)).encode() + b"\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"\r\n" + _BODY
)


def connection_limit(max_connections: int | None, reserve: int = DEFAULT_FD_RESERVE) -> int | None:
    """The most client connections the proxy keeps open: `max_connections` when set, else
    what the soft open-files limit allows after `reserve`, two descriptors per connection
    (None: no limit, the soft limit is infinite)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    budget = None
    if soft != resource.RLIM_INFINITY:
        budget = max(1, (soft - reserve) // DESCRIPTORS_PER_CONNECTION)
    limit = budget if max_connections is None else max_connections
    if max_connections is not None and budget is not None and max_connections > budget:
        log.warning("max_connections %d is more than the open files limit allows (soft %d, "
                    "reserve %d, %d descriptors a proxied request): the supervisor may run "
                    "out of descriptors", max_connections, soft, reserve,
                    DESCRIPTORS_PER_CONNECTION)
    log.info("proxy connection limit: %s (open files soft limit %s, reserve %d); past it "
             "new clients get 503 too_many_connections", limit if limit is not None else "none",
             "unlimited" if soft == resource.RLIM_INFINITY else soft, reserve)
    return limit


class _Counted(asyncio.Protocol):
    """The protocol aiohttp made for a connection, with one addition: the server's count
    goes down when the connection ends."""

    def __init__(self, inner: asyncio.Protocol, server: LimitedServer) -> None:
        self._inner = inner
        self._server: LimitedServer | None = server

    def release(self) -> None:
        if self._server is not None:
            self._server.open -= 1
            self._server = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            self.release()


class LimitedServer(asyncio.AbstractServer):
    """Accepts on listening sockets of its own and hands each connection to the event loop
    (`connect_accepted_socket`, the same under asyncio and uvloop), at most `limit` at once."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], sockets: list[socket.socket],
                 limit: int | None, name: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._factory = factory
        self._sockets = sockets
        self.limit = limit
        self.name = name
        self.open = 0  # client connections handed to the loop and not yet lost
        self.refused = 0  # clients answered 503 too_many_connections, all told
        self._tasks: set[asyncio.Task[None]] = set()
        self._spare: int | None = None
        self._paused: set[int] = set()  # listening sockets not polled for a moment
        self._serving = False
        self._out_since: float | None = None  # monotonic time accept() first lacked a descriptor
        self._full_since: float | None = None  # ... the limit was first reached
        self._out_refused = self._full_refused = 0  # `refused` when those began
        self._logged_at = 0.0

    # ---- asyncio.AbstractServer --------------------------------------------------------

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if self._serving:
            return
        self._spare = _open_spare()
        for sock in self._sockets:
            self._loop.add_reader(sock.fileno(), self._on_readable, sock)
        self._serving = True

    def adopt(self, sock: socket.socket) -> None:
        """Accept on one more listening socket, under the same limit (the owner's private
        socket that workers relay to: each of those connections costs what a client does)."""
        sock.setblocking(False)
        self._sockets.append(sock)
        if self._serving:
            self._loop.add_reader(sock.fileno(), self._on_readable, sock)

    async def serve_forever(self) -> None:
        await self.start_serving()
        await self._loop.create_future()  # until cancelled

    def close(self) -> None:
        """Stop accepting; connections already open stay (aiohttp's shutdown ends them)."""
        for sock in self._sockets:
            if sock.fileno() != -1:
                self._loop.remove_reader(sock.fileno())
                sock.close()
        self._serving = False
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- accepting ---------------------------------------------------------------------

    def _on_readable(self, sock: socket.socket) -> None:
        accepted = False
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in _CLIENT_GONE:
                    continue
                self._out_of_descriptors(sock, exc)
                return
            accepted = True
            if self.limit is not None and self.open >= self.limit:
                self._refuse(conn)
                self._note_full()
            else:
                self._serve(conn)
        if accepted and self._out_since is not None:
            log.warning("%s: accepting again after %.1fs short of file descriptors; %d "
                        "clients were answered 503 meanwhile", self.name,
                        time.monotonic() - self._out_since, self.refused - self._out_refused)
            self._out_since = None
        if self._full_since is not None and (self.limit is None or self.open < self.limit):
            log.info("%s: below its connection limit again after %.1fs; %d clients were "
                     "answered 503 too_many_connections meanwhile", self.name,
                     time.monotonic() - self._full_since, self.refused - self._full_refused)
            self._full_since = None

    def _serve(self, conn: socket.socket) -> None:
        self.open += 1
        try:
            conn.setblocking(False)
            if conn.family in (socket.AF_INET, socket.AF_INET6):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            counted = _Counted(self._factory(), self)
        except Exception:
            self.open -= 1
            conn.close()
            log.exception("%s: cannot take a connection", self.name)
            return
        task = self._loop.create_task(self._connect(conn, counted))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket, counted: _Counted) -> None:
        try:
            await self._loop.connect_accepted_socket(lambda: counted, conn)
        except BaseException as exc:
            conn.close()  # a no-op once a transport owns it (it detaches or closes it)
            counted.release()
            if isinstance(exc, asyncio.CancelledError):
                raise
            log.debug("%s: a connection failed before its first byte: %s", self.name, exc)

    def _refuse(self, conn: socket.socket) -> None:
        """503 at once, then close. What the client already sent is read first: closing a
        socket with unread data sends a reset, which can discard the 503 at the client."""
        self.refused += 1
        try:
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.recv(65536)
            conn.send(REFUSAL)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the client is gone, or its buffer is full: closing is all that is left
        finally:
            conn.close()

    def _out_of_descriptors(self, sock: socket.socket, exc: OSError) -> None:
        """accept() failed for want of a resource: answer the waiting clients 503 with the
        spare descriptor, one at a time; without a spare, look again shortly."""
        if self._out_since is None:
            self._out_since = time.monotonic()
            self._out_refused = self.refused
            log.error("%s: accept() failed (%s) with %d client connections open: new "
                      "clients get 503 until descriptors are free again", self.name,
                      os.strerror(exc.errno or 0), self.open)
        for _ in range(ACCEPT_BATCH):
            if self._spare is None:
                break
            os.close(self._spare)
            self._spare = None
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                self._spare = _open_spare()
                return  # nobody waits; the next readiness event tries again
            except OSError:
                conn = None
            if conn is not None:
                self._refuse(conn)
            self._spare = _open_spare()
        if sock.fileno() not in self._paused:
            # Still out (or no spare): stop polling this socket for a moment, not for good.
            self._paused.add(sock.fileno())
            self._loop.remove_reader(sock.fileno())
            self._loop.call_later(RETRY_ACCEPT_SECONDS, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        self._paused.discard(sock.fileno())
        if not self._serving or sock.fileno() == -1:
            return
        if self._spare is None:
            self._spare = _open_spare()
        self._loop.add_reader(sock.fileno(), self._on_readable, sock)

    def _note_full(self) -> None:
        now = time.monotonic()
        if self._full_since is None:
            self._full_since = now
            self._full_refused = self.refused - 1
        if now - self._logged_at >= LOG_EVERY_SECONDS:
            self._logged_at = now
            log.warning("%s: %d client connections open, its limit: new clients get 503 "
                        "too_many_connections (%d so far)", self.name, self.open, self.refused)


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


def listen(host: str | None, port: int, backlog: int, *,
           reuse_port: bool = False) -> list[socket.socket]:
    """Listening sockets for every address `host` resolves to, as asyncio's create_server
    binds them (SO_REUSEADDR; IPv6 sockets IPv6 only); `reuse_port`: SO_REUSEPORT, where
    the kernel spreads new connections over every process listening on the port."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class LimitedSite(web.BaseSite):
    """aiohttp's TCPSite with `LimitedServer` in place of the loop's own server; `label`
    names the listener in the log ("proxy", "admin")."""

    __slots__ = ("_host", "_label", "_limit", "_port", "_protocol", "_reuse_port")

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int, *,
                 limit: int | None, label: str, backlog: int = 1024,
                 protocol: Callable[[], asyncio.Protocol] | None = None,
                 reuse_port: bool = False) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._limit = limit
        self._label = label
        self._protocol = protocol  # default: the runner's (aiohttp's) own
        self._reuse_port = reuse_port

    @property
    def name(self) -> str:
        server = self.server
        if server is not None and server.sockets:
            host, port = server.sockets[0].getsockname()[:2]
        else:
            host, port = self._host or "0.0.0.0", self._port
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def server(self) -> LimitedServer | None:
        return self._server if isinstance(self._server, LimitedServer) else None

    async def start(self) -> None:
        await super().start()
        factory = self._protocol or self._runner.server
        assert factory is not None
        sockets = listen(self._host, self._port, self._backlog, reuse_port=self._reuse_port)
        server = LimitedServer(factory, sockets, self._limit, f"{self._label} listener")
        await server.start_serving()
        self._server = server
