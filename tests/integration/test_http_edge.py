"""The proxy's HTTP edge, probed with raw sockets: what nginx guarantees at its edge, the
supervisor's listener guarantees too, on every path a request can take through it.

A request reaches the listener (supervisor/proxy/fastpath.py) and is forwarded there (the
fast path: a small JSON POST for a ready model), or handed to the aiohttp application over
an in-memory connection (every other route, a model that must be held, a large body), or,
with `fast_path: false`, the application takes it all. A framing bug on any of these paths,
or at the hand-over between two of them on one connection, is a request smuggled past the
proxy: bytes the client sent as a body reaching a model server as a request of their own.
So each probe below runs where it makes sense:

- `fast`: POST /v1/chat/completions with a small JSON body for a ready model;
- `app`: a route the application takes (POST /nope; GET /v1/models where a probe has no
  body; a body over the fast path's 64 KiB for forwarding);
- `handover`: as `fast`, after a fast request and a GET /v1/models on the same connection;
- `nofast`: as `fast`, on a supervisor started with `fast_path: false`.

Every probe opens a NEW connection. After each, a normal request on another new connection
must get its own answer, and the model server (`Backend`, in this process, which records
every request it receives) must have seen no request hidden in a body: each probe's hidden
request carries `X-Smuggled: 1` and the word SMUGGLED, each outer request a marker of its own.

The supervisors are shared by the whole module (one per configuration, started on first
use through tests.helpers.start_supervisor, the function the `supervisor_factory` fixture
calls, each with a Compose project of its own): a supervisor per probe would cost a Compose
project and a cold start each, ~1 s, and the tables below hold ~200 probes. A probe that
leaves a supervisor unusable shows in its own check request first.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httptools
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ComposeProject, Supervisor, start_supervisor

from .conftest import COMPOSE_FILE

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODEL = "edge"
KEY = "sk-edge-probe"
REPLY_WITHIN = 10.0  # seconds for an answer that should come at once (2 loaded cores on CI)
EOF_WITHIN = 5.0  # for a connection the supervisor should close at once
SLACK = 6.0  # past a configured timeout of 1 s
KiB, MiB = 1 << 10, 1 << 20
TIMED = {  # short timeouts, so that probes of them take seconds
    "header_timeout": "1s", "body_timeout": "1s", "keepalive_timeout": "1s",
    "upstream_read_timeout": "1s", "lingering_timeout": "1s", "lingering_time": "3s",
}
# One configuration per shared supervisor, and a Compose service of its own for each (two
# stand-ins on one port would fight; the model's upstream is the Backend anyway).
KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    "fast": ("chat-fast", {}),
    "nofast": ("pair-a", {"fast_path": False}),
    "timed-fast": ("pair-b", {"http": TIMED}),
    "timed-nofast": ("slow-stop", {"http": TIMED, "fast_path": False}),
    "keys-fast": ("hangs", {"client_auth": {"keys": [KEY]}}),
    "keys-nofast": ("chat-slow", {"client_auth": {"keys": [KEY]}, "fast_path": False}),
    "quiet": ("sleeper", {}),  # no malformed input before the log test's own
}


def uid() -> str:
    return uuid.uuid4().hex[:10]


# -- the raw client ----------------------------------------------------------------------


class Stalled(AssertionError):
    """Nothing (more) came within the deadline."""


class NoReply(AssertionError):
    """The connection ended before a whole response: `status` is that of a head that came
    (a cut answer), None when not even a head came; `data` what did."""

    def __init__(self, message: str, status: int | None, data: bytes) -> None:
        super().__init__(message)
        self.status, self.data = status, data


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]  # names in lower case, in order
    body: bytes  # de-framed
    interim: list[int] = field(default_factory=list)  # 1xx answers before it

    def header(self, name: str, default: str = "") -> str:
        values = [v for k, v in self.headers if k == name]
        return values[-1] if values else default

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def echo(self) -> str | None:
        """The marker of the request the Backend answered with this (None: not its)."""
        try:
            payload = self.json()
        except ValueError:
            return None
        return payload.get("echo") if isinstance(payload, dict) else None

    def __str__(self) -> str:
        return f"{self.status} {self.reason} {self.headers} {self.body[:300]!r}"


class Wire:
    """One client connection on a non-blocking socket: what it received is kept here, so a
    reset after an answer does not lose the answer (asyncio streams would)."""

    def __init__(self, sock: socket.socket | None, data: bytes = b"") -> None:
        self.sock = sock
        self.buf = bytearray(data)
        self.eof = sock is None
        self.reset = False
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def open(cls, url: str) -> Wire:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        return cls(sock)

    @classmethod
    def of(cls, data: bytes) -> Wire:
        """Responses already received, to parse one by one."""
        return cls(None, data)

    async def send(self, data: bytes, within: float = REPLY_WITHIN) -> bool:
        """False when the supervisor closed the connection meanwhile."""
        assert self.sock is not None
        try:
            async with asyncio.timeout(within):
                await self.loop.sock_sendall(self.sock, data)
        except TimeoutError:
            raise Stalled(f"the supervisor read none of {len(data)} bytes for {within}s "
                          "and kept the connection open") from None
        except OSError:  # EPIPE, ECONNRESET: it closed
            return False
        return True

    def shut_write(self) -> None:
        assert self.sock is not None
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    async def _fill(self, deadline: float) -> bool:
        if self.eof:
            return False
        assert self.sock is not None
        left = deadline - self.loop.time()
        try:
            if left <= 0:
                raise TimeoutError
            data = await asyncio.wait_for(self.loop.sock_recv(self.sock, 1 << 16), left)
        except TimeoutError:
            raise Stalled(f"nothing more came; received so far {bytes(self.buf[:300])!r}"
                          ) from None
        except OSError:
            self.eof = self.reset = True
            return False
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    async def _until(self, sep: bytes, deadline: float) -> bytes:
        while (at := self.buf.find(sep)) < 0:
            if not await self._fill(deadline):
                raise EOFError
        out = bytes(self.buf[:at + len(sep)])
        del self.buf[:at + len(sep)]
        return out

    async def _exactly(self, size: int, deadline: float) -> bytes:
        while len(self.buf) < size:
            if not await self._fill(deadline):
                raise EOFError
        out = bytes(self.buf[:size])
        del self.buf[:size]
        return out

    async def reply(self, within: float = REPLY_WITHIN, *, head_only: bool = False,
                    method: str = "POST") -> Reply:
        """The next response (1xx before it collected in `interim`), body de-framed;
        `head_only`: return at the first head, a 100 Continue included."""
        deadline = self.loop.time() + within
        interim: list[int] = []
        while True:
            taken = bytes(self.buf)
            try:
                head = await self._until(b"\r\n\r\n", deadline)
            except EOFError:
                raise NoReply(f"the connection ended without a (further) answer; "
                              f"received {taken[:300]!r}", None, taken) from None
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if not parts[0].startswith("HTTP/1.") or len(parts) < 2 or not parts[1].isdigit():
                raise AssertionError(f"not an HTTP/1.x response: {head[:300]!r}")
            status = int(parts[1])
            headers = [(k.strip().lower(), v.strip()) for k, v in
                       (line.split(":", 1) for line in lines[1:] if ":" in line)]
            reply = Reply(status, parts[2] if len(parts) > 2 else "", headers, b"", interim)
            if head_only:
                return reply
            if 100 <= status < 200 and status != 101:
                interim.append(status)
                continue
            try:
                reply.body = await self._body(reply, method, deadline)
            except EOFError:
                raise NoReply(f"the answer was cut: {head[:200]!r} + {bytes(self.buf[:200])!r}",
                              status, head + bytes(self.buf)) from None
            return reply

    async def _body(self, reply: Reply, method: str, deadline: float) -> bytes:
        if method == "HEAD" or reply.status in (101, 204, 304):
            return b""
        if "chunked" in reply.header("transfer-encoding").lower():
            body = bytearray()
            while True:
                size = int((await self._until(b"\r\n", deadline)).split(b";")[0], 16)
                if size == 0:
                    while await self._until(b"\r\n", deadline) != b"\r\n":
                        pass  # trailers
                    return bytes(body)
                body += await self._exactly(size, deadline)
                await self._exactly(2, deadline)
        length = reply.header("content-length")
        if length:
            return await self._exactly(int(length), deadline)
        while await self._fill(deadline):  # until the server closes
            pass
        out = bytes(self.buf)
        self.buf.clear()
        return out

    async def rest(self, within: float = EOF_WITHIN) -> bytes:
        """All that comes until the supervisor closes (Stalled: it kept it open)."""
        deadline = self.loop.time() + within
        try:
            while await self._fill(deadline):
                pass
        except Stalled:
            raise Stalled(f"the connection was still open after {within}s; received "
                          f"{bytes(self.buf[:300])!r}") from None
        out = bytes(self.buf)
        self.buf.clear()
        return out


async def replies_in(data: bytes) -> list[Reply]:
    """Every whole response in `data` (what came until the connection closed)."""
    wire, found = Wire.of(data), []
    while wire.buf:
        try:
            found.append(await wire.reply(0.1))
        except NoReply:
            break
    return found


# -- what the probes send ----------------------------------------------------------------


def chat_body(marker: str, *, model: str = MODEL, pad: int = 0) -> bytes:
    """A chat completion whose user message is `marker` (the Backend echoes it)."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": marker}]}
    if pad:
        body["pad"] = "x" * pad
    return json.dumps(body).encode()


def smuggled(tag: str) -> bytes:
    """The request a probe hides in a body: whoever answers or forwards it is wrong."""
    body = chat_body(f"SMUGGLED {tag}")
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: edge\r\nX-Smuggled: 1\r\n"
            b"Authorization: Bearer " + KEY.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    ok: int  # what a well-formed request there gets


FAST = Route("POST", "/v1/chat/completions", 200)
APP = Route("POST", "/nope", 404)
LIST = Route("GET", "/v1/models", 200)


def raw(route: Route, *fields: bytes, body: bytes = b"", host: bool = True,
        version: bytes = b"HTTP/1.1", target: bytes | None = None) -> bytes:
    """A request exactly as given: `fields` are header lines without their CRLF."""
    line = b"%s %s %s\r\n" % (route.method.encode(), target or route.path.encode(), version)
    head = line + (b"Host: edge\r\n" if host else b"")
    return head + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


@dataclass
class Site:
    """A shared supervisor: where to connect, and what its clients must send."""

    sup: Supervisor
    fast_path: bool
    keys: bool

    @property
    def url(self) -> str:
        return self.sup.url

    def request(self, marker: str, *, route: Route = FAST, model: str = MODEL,
                close: bool = False, pad: int = 0, fields: Sequence[bytes] = ()) -> bytes:
        """A well-formed request (with the key where keys are configured)."""
        extra = list(fields)
        if self.keys:
            extra.append(b"Authorization: Bearer " + KEY.encode())
        if close:
            extra.append(b"Connection: close")
        if route.method == "GET":
            return raw(route, *extra)
        body = chat_body(marker, model=model, pad=pad)
        return raw(route, b"Content-Type: application/json",
                   b"Content-Length: %d" % len(body), *extra, body=body)


# -- the model server --------------------------------------------------------------------


@dataclass
class Seen:
    """One request the Backend received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    garbage: bool = False  # what came did not parse as HTTP
    test: str = ""  # the test running when it came

    @property
    def marker(self) -> str | None:
        try:
            payload = json.loads(self.body)
            return str(payload["messages"][0]["content"])
        except (ValueError, KeyError, IndexError, TypeError):
            return None

    @property
    def smuggled(self) -> bool:
        return "x-smuggled" in self.headers or b"SMUGGLED" in self.body or self.garbage


POISON_BODY = b'{"object":"chat.completion","echo":"POISON"}'
POISON = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
          % len(POISON_BODY)) + POISON_BODY


class BackendConn(asyncio.Protocol):
    """One connection from the supervisor; requests parsed with httptools (llhttp)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url, self.body = b"", bytearray()
        self.headers: dict[str, str] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # the request before it was answered; a tunnel is not this module's
        except httptools.HttpParserError:
            self.backend.seen.append(Seen("?", "?", {}, data, garbage=True,
                                          test=self.backend.test))
            self.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self.close()

    def on_message_begin(self) -> None:
        self.url, self.body, self.headers = b"", bytearray(), {}

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def on_headers_complete(self) -> None:
        if self.headers.get("expect", "").lower() == "100-continue":
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # as uvicorn does

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        seen = Seen(method, self.url.decode("latin-1").split("?")[0], self.headers,
                    bytes(self.body), test=self.backend.test)
        self.backend.answer(self, seen)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


class Backend:
    """A model server that records every request and answers by the request's marker:
    `ok ...` normally (the marker echoed), or misbehaving as the marker's first word says
    (`overlong`, `hints`, `badchunk`, `close`, `stall`, `drip`)."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.tasks: set[asyncio.Task[None]] = set()
        self.test = ""  # the test now running

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: BackendConn(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mark(self) -> int:
        return len(self.seen)

    def since(self, mark: int) -> list[Seen]:
        return self.seen[mark:]

    def count(self, marker: str) -> int:
        return sum(1 for seen in self.seen if seen.marker == marker)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        if self.server is not None:
            self.server.close()

    def answer(self, conn: BackendConn, seen: Seen) -> None:
        if seen.path == "/health":
            conn.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return
        self.seen.append(seen)
        marker = seen.marker or ""
        if seen.method != "POST" or not seen.path.startswith("/v1/"):
            body = b'{"error":{"message":"not here","type":"invalid_request_error"}}'
            conn.write(b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                       b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            return
        body = json.dumps({
            "id": "chatcmpl-edge", "object": "chat.completion", "model": MODEL,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": marker}}],
            "echo": marker, "serial": len(self.seen),
        }).encode()
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body))
        mode = marker.split(" ", 1)[0]
        if mode == "close":  # read the request, then leave without a word
            conn.close()
        elif mode == "overlong":  # more than its Content-Length: a whole second response
            conn.write(head + body + POISON)
        elif mode == "hints":
            conn.write(b"HTTP/1.1 103 Early Hints\r\nLink: </edge.css>; rel=preload\r\n\r\n"
                       + head + body)
        elif mode == "badchunk":
            conn.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n7\r\ndata: x\r\nzz\r\nbroken\r\n")
        elif mode == "stall":  # a head and a start, then silence
            conn.write(head + body[:10])
        elif mode == "drip":
            self._spawn(self._drip(conn))
        else:
            conn.write(head + body)

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _drip(conn: BackendConn) -> None:
        """One byte every 0.5 s for 3 s: slow, but never silent for a second."""
        conn.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n")
        for byte in b"abcdef":
            await asyncio.sleep(0.5)
            conn.write(b"1\r\n%c\r\n" % byte)
        conn.write(b"0\r\n\r\n")


# -- the shared supervisors --------------------------------------------------------------


class Edge:
    """The module's supervisors, started on first use: one per entry of KINDS."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.sites: dict[str, Site] = {}
        self.failed: dict[str, str] = {}
        self.started: list[Supervisor] = []
        self.projects: list[ComposeProject] = []

    async def site(self, kind: str) -> Site:
        if kind not in self.sites and kind not in self.failed:
            try:
                self.sites[kind] = await self._start(kind)
            except Exception as exc:  # a setting today's config refuses, a failed start
                self.failed[kind] = f"{type(exc).__name__}: {str(exc)[:500]}"
        if kind in self.failed:
            pytest.fail(f"the {kind!r} supervisor did not start: {self.failed[kind]}")
        return self.sites[kind]

    async def _start(self, kind: str) -> Site:
        service, settings = KINDS[kind]
        project = ComposeProject(COMPOSE_FILE)
        self.projects.append(project)
        models = {MODEL: {"service": service, "upstream": self.backend.url,
                          "health": "/health"}}
        sup = await start_supervisor(project, models, **settings)
        self.started.append(sup)
        site = Site(sup, settings.get("fast_path", True), "client_auth" in settings)
        wire = await Wire.open(site.url)  # a cold start: Compose starts the service
        try:
            await wire.send(site.request(f"ok warm-{kind}"))
            reply = await wire.reply(90)
        finally:
            wire.close()
        assert reply.status == 200, f"the warm-up request got {reply}"
        return site

    async def close(self) -> None:
        for sup in self.started:
            await sup.stop()
        await asyncio.gather(*(asyncio.to_thread(p.down) for p in self.projects),
                             return_exceptions=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def edge(docker_engine: None) -> AsyncIterator[Edge]:
    backend = Backend()
    await backend.start()
    shared = Edge(backend)
    yield shared
    await shared.close()
    await backend.close()


@pytest.fixture(autouse=True)
def _name_the_test(edge: Edge, request: pytest.FixtureRequest) -> None:
    """What reaches the Backend is tagged with the test that sent it (for the last test)."""
    edge.backend.test = request.node.name


Dial = Callable[[Site], Awaitable[Wire]]


@pytest.fixture
def dial() -> Iterator[Dial]:
    """Open a new connection to a supervisor; all are closed after the test."""
    opened: list[Wire] = []

    async def open_(site: Site) -> Wire:
        wire = await Wire.open(site.url)
        opened.append(wire)
        return wire

    yield open_
    for wire in opened:
        wire.close()


@dataclass(frozen=True)
class Where:
    """Where a probe runs: the supervisor (a KINDS key, less any `timed-`/`keys-`), the
    route it names, and the requests that precede it on its connection ("fast": a chat
    completion the fast path forwards; "app": GET /v1/models, the application's)."""

    kind: str
    route: Route
    prelude: tuple[str, ...] = ()


WHERE = {
    "fast": Where("fast", FAST),
    "app": Where("fast", APP),
    # The connection came back from the application just before the probe ...
    "handover": Where("fast", FAST, prelude=("fast", "app")),
    # ... or goes to it with the probe, straight after a fast request.
    "handover_app": Where("fast", APP, prelude=("app", "fast")),
    "nofast": Where("nofast", FAST),
}


def wheres(*names: str) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("where", [WHERE[n] for n in names], ids=list(names))


ALL = ("fast", "app", "handover", "handover_app", "nofast")


async def opened(site: Site, where: Where, dial: Dial) -> tuple[Wire, list[str]]:
    """A new connection, after the prelude where there is one; returns the markers the
    prelude sent (they may reach the Backend)."""
    wire = await dial(site)
    sent = []
    for step in where.prelude:
        if step == "fast":
            marker = f"ok prelude {uid()}"
            sent.append(marker)
            await wire.send(site.request(marker))
            reply = await wire.reply()
            assert reply.status == 200 and reply.echo == marker, f"prelude (fast): {reply}"
        else:
            await wire.send(site.request("", route=LIST))
            reply = await wire.reply(method="GET")
            assert reply.status == 200, f"prelude (application): {reply}"
    return wire, sent


async def clean(site: Site, backend: Backend, mark: int, allowed: Sequence[str] = ()) -> None:
    """After a probe: a normal request on a new connection gets its own answer, and the
    Backend saw nothing since `mark` but it and the `allowed` markers, nothing smuggled."""
    marker = f"ok check {uid()}"
    wire = await Wire.open(site.url)
    try:
        await wire.send(site.request(marker))
        reply = await wire.reply()
    finally:
        wire.close()
    assert reply.status == 200 and reply.echo == marker, (
        f"the next client did not get its own answer: {reply}")
    seen = backend.since(mark)
    hidden = [s for s in seen if s.smuggled and s.marker not in allowed]
    assert not hidden, f"a request hidden in a body reached the model server: {hidden}"
    others = [s for s in seen if s.marker != marker and s.marker not in allowed]
    assert not others, f"the model server received requests it should not have: {others}"
    assert [s.marker for s in seen].count(marker) == 1


def error_shape(reply: Reply, context: str = "") -> None:
    """The OpenAI error shape, as every answer of the supervisor's own."""
    problem = f"{context}not in the OpenAI error shape: {reply}"
    assert reply.header("content-type").startswith("application/json"), problem
    error = reply.json().get("error")
    assert isinstance(error, dict) and {"message", "type", "param", "code"} <= error.keys(), (
        problem)


async def refused(wire: Wire, statuses: Sequence[int], *, shape: bool,
                  method: str = "POST") -> Reply:
    """The answer is one of `statuses`, then the supervisor closes: nothing else comes."""
    try:
        reply = await wire.reply(method=method)
    except NoReply as exc:
        raise AssertionError(f"closed without the expected {statuses}: {exc}") from None
    assert reply.status in statuses, f"expected {statuses}, got {reply}"
    rest = await wire.rest()
    assert b"HTTP/1." not in rest, f"a further answer after the refusal: {rest[:300]!r}"
    if shape:
        error_shape(reply, f"{reply.status} and close, as expected, but ")
    return reply


# -- probe tables: (bytes for a route and a tag) -----------------------------------------

Build = Callable[[Route, str], bytes]


def _outer(tag: str) -> bytes:
    return chat_body(f"probe {tag}")


def _cl_te(route: Route, tag: str) -> bytes:
    body = b"0\r\n\r\n" + smuggled(tag)
    return raw(route, b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked",
               body=body)


def _te_cl(route: Route, tag: str) -> bytes:
    body = b"0\r\n\r\n" + smuggled(tag)
    return raw(route, b"Transfer-Encoding: chunked", b"Content-Length: %d" % len(body),
               body=body)


def _two_cl(route: Route, tag: str) -> bytes:
    outer = _outer(tag)
    body = outer + smuggled(tag)
    return raw(route, b"Content-Length: %d" % len(outer), b"Content-Length: %d" % len(body),
               body=body)


def _te(value: bytes, framed: Callable[[bytes], bytes] = lambda b: b) -> Build:
    def build(route: Route, tag: str) -> bytes:
        outer = _outer(tag)
        body = framed(outer) + smuggled(tag)
        return raw(route, b"Content-Length: %d" % len(outer), b"Transfer-Encoding: " + value,
                   body=body)
    return build


def _cl(value: Callable[[int, int], bytes]) -> Build:
    def build(route: Route, tag: str) -> bytes:
        outer, inner = _outer(tag), smuggled(tag)
        return raw(route, b"Content-Length: " + value(len(outer), len(inner)),
                   body=outer + inner)
    return build


def _te_folded(route: Route, tag: str) -> bytes:
    body = b"0\r\n\r\n" + smuggled(tag)
    return raw(route, b"Content-Length: %d" % len(body), b"Transfer-Encoding:", b" chunked",
               body=body)


def _te_space_colon(route: Route, tag: str) -> bytes:
    body = b"0\r\n\r\n" + smuggled(tag)
    return raw(route, b"Content-Length: %d" % len(body), b"Transfer-Encoding : chunked",
               body=body)


SMUGGLING: dict[str, Build] = {
    "cl_then_te": _cl_te,
    "te_then_cl": _te_cl,
    "two_cl": _two_cl,
    "te_gzip": _te(b"gzip"),
    "te_identity": _te(b"identity"),
    "te_chunked_gzip": _te(b"chunked, gzip", chunked),
    "cl_plus_sign": _cl(lambda outer, inner: b"+%d" % outer),
    "cl_minus": _cl(lambda outer, inner: b"-%d" % outer),
    "cl_inner_space": _cl(lambda outer, inner: b"%d %d" % (outer, inner)),
    "te_obs_fold": _te_folded,
    "te_space_before_colon": _te_space_colon,
}


def _chunks(framing: Callable[[bytes], bytes]) -> Build:
    def build(route: Route, tag: str) -> bytes:
        return raw(route, b"Transfer-Encoding: chunked",
                   body=framing(_outer(tag)) + smuggled(tag))
    return build


CHUNK_ERRORS: dict[str, Build] = {
    "bad_size": _chunks(lambda b: b"zz\r\n" + b + b"\r\n0\r\n\r\n"),
    "missing_crlf": _chunks(lambda b: b"%x\r\n" % len(b) + b + b"0\r\n\r\n"),
    "bad_extension": _chunks(lambda b: b"%x;\x01\r\n" % len(b) + b + b"\r\n0\r\n\r\n"),
    "size_overflow": _chunks(lambda b: b"1" + b"0" * 24 + b"\r\n" + b + b"\r\n0\r\n\r\n"),
}


def _field(line: bytes) -> Build:
    def build(route: Route, tag: str) -> bytes:
        outer = _outer(tag)
        return raw(route, b"Content-Length: %d" % len(outer), line,
                   body=outer + smuggled(tag))
    return build


HEADER_ERRORS: dict[str, Build] = {
    "bare_lf": _field(b"X-Probe: a\nX-Other: b"),
    "bare_cr": _field(b"X-Probe: a\rb"),
    "nul": _field(b"X-Probe: a\x00b"),
    "obs_fold": _field(b"X-Probe: a\r\n folded"),
    "space_in_name": _field(b"X Probe: a"),
}


def _padded(*fields: bytes, target: bytes | None = None) -> Build:
    def build(route: Route, tag: str) -> bytes:
        outer = _outer(tag)
        return raw(route, b"Content-Length: %d" % len(outer), *fields,
                   body=outer + smuggled(tag),
                   target=route.path.encode() + target if target else None)
    return build


LIMITS: dict[str, tuple[Build, Sequence[int]]] = {
    "line_9k": (_padded(target=b"?pad=" + b"a" * 9000), (414,)),
    "header_9k": (_padded(b"X-Pad: " + b"a" * 9000), (431,)),
    "headers_1000": (_padded(*(b"X-H%d: v" % i for i in range(1000))), (431,)),
    "headers_200": (_padded(*(b"X-H%d: v" % i for i in range(200))), (431,)),
    "head_100k": (_padded(*(b"X-P%d: " % i + b"a" * 1000 for i in range(100))), (431,)),
}

WITHIN_LIMITS: dict[str, Build] = {
    "line_8000": _padded(target=b"?pad=" + b"a" * 7900),
    "header_8000": _padded(b"X-Pad: " + b"a" * 8000),
    "headers_100": _padded(*(b"X-H%d: v" % i for i in range(100))),
    "head_60k": _padded(*(b"X-P%d: " % i + b"a" * 1000 for i in range(60))),
}


def _no_host(route: Route, tag: str) -> bytes:
    outer = _outer(tag)
    return raw(route, b"Content-Length: %d" % len(outer), body=outer + smuggled(tag),
               host=False)


def _versioned(version: bytes, *fields: bytes, framed: bool = False) -> Build:
    def build(route: Route, tag: str) -> bytes:
        outer = _outer(tag)
        body = chunked(outer) if framed else outer
        length = () if framed else (b"Content-Length: %d" % len(outer),)
        return raw(route, *length, *fields, body=body + smuggled(tag), version=version)
    return build


VALIDITY: dict[str, tuple[Build, Sequence[int]]] = {
    "http11_no_host": (_no_host, (400,)),
    "two_hosts": (_field(b"Host: elsewhere"), (400,)),
    "http10_te": (_versioned(b"HTTP/1.0", b"Transfer-Encoding: chunked", framed=True),
                  (400,)),
    "http2_line": (_versioned(b"HTTP/2.0"), (505, 400)),
}

MALFORMED: dict[str, Build] = {**SMUGGLING, **CHUNK_ERRORS, **HEADER_ERRORS}


def _table(table: dict[str, Any]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("probe", list(table.values()), ids=list(table))


# -- what already holds: framing, one request at a time, in order ------------------------


@_table(MALFORMED)
@wheres(*ALL)
async def test_ambiguous_framing_is_refused_and_closed(
        edge: Edge, dial: Dial, where: Where, probe: Build) -> None:
    """Every way two parsers could disagree on where a body ends (Content-Length against
    Transfer-Encoding, broken chunks, bent header lines) is a 400 and the end of the
    connection: a proxy that guesses is a proxy that can be smuggled through."""
    site = await edge.site(where.kind)
    mark = edge.backend.mark()
    wire, allowed = await opened(site, where, dial)
    await wire.send(probe(where.route, uid()))
    await refused(wire, (400,), shape=False)
    await clean(site, edge.backend, mark, allowed)


ORDERS = {
    "fast_list_unknown": ("fast", "list", "unknown"),
    "list_unknown_fast": ("list", "unknown", "fast"),
    "unknown_fast_list": ("unknown", "fast", "list"),
}


@pytest.mark.parametrize("order", list(ORDERS.values()), ids=list(ORDERS))
@wheres("fast", "handover", "nofast")
async def test_pipelined_requests_are_answered_in_order(
        edge: Edge, dial: Dial, where: Where, order: tuple[str, ...]) -> None:
    """Three requests in one write, for both paths (a ready model, /v1/models, an unknown
    model): three answers, each its request's, in order."""
    site = await edge.site(where.kind)
    mark = edge.backend.mark()
    wire, allowed = await opened(site, where, dial)
    markers = {name: f"ok pipelined {uid()}" for name in order}
    requests = {
        "fast": site.request(markers["fast"]),
        "list": site.request("", route=LIST),
        "unknown": site.request(markers["unknown"], model="no-such-model"),
    }
    await wire.send(b"".join(requests[name] for name in order))
    for name in order:
        reply = await wire.reply(method="GET" if name == "list" else "POST")
        if name == "fast":
            assert reply.status == 200 and reply.echo == markers["fast"], str(reply)
        elif name == "list":
            assert reply.status == 200 and reply.json()["object"] == "list", str(reply)
        else:
            assert reply.status == 404, str(reply)
            assert reply.json()["error"]["code"] == "model_not_found", str(reply)
    await clean(site, edge.backend, mark, [*allowed, markers["fast"]])


HEADER_CLAIMS = {
    "x_model": b"X-Model: no-such-model",
    "openai_model": b"OpenAI-Model: no-such-model",
    "model": b"Model: no-such-model",
}


@pytest.mark.parametrize("claim", [*HEADER_CLAIMS.values(), None],
                         ids=[*HEADER_CLAIMS, "query"])
@wheres("fast", "handover", "nofast")
async def test_the_body_names_the_model_whatever_the_headers_say(
        edge: Edge, dial: Dial, where: Where, claim: bytes | None) -> None:
    """Routing reads the body's `model` only: a header or a query naming another model
    changes nothing, on either path (a header cannot steer a request past its checks)."""
    site = await edge.site(where.kind)
    mark = edge.backend.mark()
    wire, allowed = await opened(site, where, dial)
    marker = f"ok claim {uid()}"
    body = chat_body(marker)
    target = None if claim else b"/v1/chat/completions?model=no-such-model"
    fields = [b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
    await wire.send(raw(FAST, *fields, *([claim] if claim else []), body=body, target=target))
    reply = await wire.reply()
    assert reply.status == 200 and reply.echo == marker, str(reply)
    unknown = f"ok unknown {uid()}"
    body = chat_body(unknown, model="no-such-model")
    await wire.send(raw(FAST, b"Content-Type: application/json",
                        b"Content-Length: %d" % len(body), b"X-Model: " + MODEL.encode(),
                        body=body))
    reply = await wire.reply()
    assert reply.status == 404, f"a header named the model the body did not: {reply}"
    await clean(site, edge.backend, mark, [*allowed, marker])


@wheres(*ALL)
async def test_an_absolute_form_target_keeps_the_connection_in_sync(
        edge: Edge, dial: Dial, where: Where) -> None:
    """`POST http://x/v1/chat/completions`: answered (200, or a clean error), and the next
    request on the connection gets its own answer."""
    site = await edge.site(where.kind)
    mark = edge.backend.mark()
    wire, allowed = await opened(site, where, dial)
    marker = f"ok absolute {uid()}"
    body = chat_body(marker)
    await wire.send(raw(where.route, b"Content-Type: application/json",
                        b"Content-Length: %d" % len(body), body=body,
                        target=b"http://edge" + where.route.path.encode()))
    reply = await wire.reply()
    if reply.status == where.route.ok:
        assert where.route is not FAST or reply.echo == marker, str(reply)
    else:
        assert 400 <= reply.status < 500, str(reply)
        error_shape(reply)
    follow = f"ok after-absolute {uid()}"
    await wire.send(site.request(follow))
    after = await wire.reply()
    assert after.status == 200 and after.echo == follow, str(after)
    await clean(site, edge.backend, mark, [*allowed, marker, follow])


@wheres("fast", "handover", "nofast")
async def test_expect_100_continue(edge: Edge, dial: Dial, where: Where) -> None:
    """The head alone gets `100 Continue`; the body then gets the final answer."""
    site = await edge.site(where.kind)
    mark = edge.backend.mark()
    wire, allowed = await opened(site, where, dial)
    marker = f"ok continue {uid()}"
    body = chat_body(marker)
    head = raw(FAST, b"Content-Type: application/json", b"Content-Length: %d" % len(body),
               b"Expect: 100-continue")
    await wire.send(head)
    interim = await wire.reply(head_only=True)
    assert interim.status == 100, f"expected 100 Continue first: {interim}"
    await wire.send(body)
    reply = await wire.reply()
    assert reply.status == 200 and reply.echo == marker, str(reply)
    await clean(site, edge.backend, mark, [*allowed, marker])


# -- limits ------------------------------------------------------------------------------


@pytest.mark.parametrize("probe,statuses", list(LIMITS.values()), ids=list(LIMITS))
@wheres(*ALL)
async def test_past_a_limit_the_answer_is_its_status_and_close(
        edge: Edge, dial: Dial, where: Where, probe: Build, statuses: Sequence[int]) -> None:
    """nginx's limits (8 KiB request line, 8 KiB field line, 64 KiB head, 128 fields):
    414 or 431 in the OpenAI error shape, then the connection ends."""
    site = await edge.site(where.kind)
    mark = edge.backend.mark()
    wire, allowed = await opened(site, where, dial)
    await wire.send(probe(where.route, uid()))
    await refused(wire, statuses, shape=True)
    await clean(site, edge.backend, mark, allowed)


@_table(WITHIN_LIMITS)
@wheres(*ALL)
async def test_within_the_limits_a_request_is_served(
        edge: Edge, dial: Dial, where: Where, probe: Build) -> None:
    """Just under each limit: served as usual, and the connection goes on."""
    site = await edge.site(where.kind)
    mark = edge.backend.mark()
    wire, allowed = await opened(site, where, dial)
    tag = "legit-" + uid()
    # The probe's own body is forwarded, and the smuggled request after it is a second,
    # pipelined request: legitimately answered, once.
    await wire.send(probe(where.route, tag))
    reply = await wire.reply()
    assert reply.status == where.route.ok, str(reply)
    await clean(site, edge.backend, mark, [*allowed, f"probe {tag}", f"SMUGGLED {tag}"])


def rss() -> int:
    """This process's resident memory (the supervisor runs in it), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def stream(wire: Wire, chunk: bytes, total: int, within: float) -> tuple[int, int]:
    """Send `chunk` again and again, up to `total` bytes, until the supervisor closes;
    returns the bytes sent and the peak resident memory meanwhile."""
    sent, peak = 0, rss()
    try:
        async with asyncio.timeout(within):
            while sent < total and await wire.send(chunk, within):
                sent += len(chunk)
                peak = max(peak, rss())
    except TimeoutError:
        raise Stalled(f"after {sent} bytes the supervisor neither read on nor closed "
                      f"within {within}s") from None
    return sent, max(peak, rss())


@wheres("nofast", "fast", "app")
async def test_a_head_without_end_is_refused_in_bounded_memory(
        edge: Edge, dial: Dial, where: Where) -> None:
    """16 MiB of one field line that never ends: 431 (or 400) and close, without the head
    held in memory, and nothing forwarded. (The supervisor runs in this process: a variant
    that fails leaves it reading megabytes into the next test's measure, so the variant
    that holds today runs first.)"""
    site = await edge.site(where.kind)
    mark = edge.backend.mark()
    wire, _ = await opened(site, where, dial)
    before = rss()
    line = b"%s %s HTTP/1.1\r\nHost: edge\r\nX-Endless: " % (
        where.route.method.encode(), where.route.path.encode())
    assert await wire.send(line)
    sent, peak = await stream(wire, b"a" * (64 * KiB), 16 * MiB, 30)
    assert sent < 16 * MiB, "the supervisor read a 16 MiB head to its end"
    assert peak - before < 8 * MiB, f"memory grew by {(peak - before) >> 20} MiB"
    await refused(wire, (431, 400), shape=True)
    await clean(site, edge.backend, mark)


# -- one definition of a valid request ---------------------------------------------------


@pytest.mark.parametrize("probe,statuses", list(VALIDITY.values()), ids=list(VALIDITY))
@wheres(*ALL)
async def test_an_invalid_request_is_refused_and_closed(
        edge: Edge, dial: Dial, where: Where, probe: Build, statuses: Sequence[int]) -> None:
    """HTTP/1.1 without a Host or with two; HTTP/1.0 with Transfer-Encoding (and the
    request pipelined after it is not served); HTTP/2.0 on an HTTP/1 connection."""
    site = await edge.site(where.kind)
    mark = edge.backend.mark()
    wire, allowed = await opened(site, where, dial)
    await wire.send(probe(where.route, uid()))
    await refused(wire, statuses, shape=True)
    await clean(site, edge.backend, mark, allowed)


# -- answers before the body -------------------------------------------------------------


async def early(wire: Wire, site: Site, head: bytes, status: int, inner: bytes,
                follow_status: int = 200) -> str:
    """`head` announces `inner` as its body; the answer `status` comes before it is sent.
    Then the body (a whole request), then a request of its own with `Connection: close`:
    the connection ends without a further answer, or with that request's answer alone.
    Returns the follow-up's marker (it may reach the model server)."""
    await wire.send(head)
    reply = await wire.reply()
    assert reply.status == status, f"expected an early {status}: {reply}"
    error_shape(reply)
    follow = f"ok follow {uid()}"
    if await wire.send(inner):
        await wire.send(site.request(follow, close=True))
    after = await replies_in(await wire.rest())
    assert len(after) <= 1, f"the body was answered as a request: {[str(r) for r in after]}"
    if after:
        assert after[0].status == follow_status, str(after[0])
        if follow_status == 200:
            assert after[0].echo == follow, f"not the follow-up's answer: {after[0]}"
    return follow


def announcing(route: Route, inner: bytes, *fields: bytes) -> bytes:
    return raw(route, b"Content-Type: application/json", b"Content-Length: %d" % len(inner),
               *fields)


@wheres("fast", "handover", "handover_app", "nofast")
async def test_an_early_404_never_answers_the_body(edge: Edge, dial: Dial,
                                                   where: Where) -> None:
    """POST /nope announces a body and sends only its head: 404 at once. The body, when
    it comes, is a whole request: it is dropped, never answered, never forwarded."""
    site = await edge.site(where.kind)
    mark = edge.backend.mark()
    wire, allowed = await opened(site, where, dial)
    inner = smuggled(uid())
    follow = await early(wire, site, announcing(APP, inner), 404, inner)
    await clean(site, edge.backend, mark, [*allowed, follow])


@wheres("fast", "nofast")
async def test_an_early_401_never_answers_the_body(edge: Edge, dial: Dial,
                                                   where: Where) -> None:
    """With client keys, a wrong key gets 401 before its body is read; the body (a whole
    request with the right key) is neither answered nor forwarded."""
    site = await edge.site("keys-" + where.kind)
    mark = edge.backend.mark()
    wire = await dial(site)
    inner = smuggled(uid())
    follow = await early(wire, site, announcing(FAST, inner, b"Authorization: Bearer wrong"),
                         401, inner)
    await clean(site, edge.backend, mark, [follow])


@wheres("fast", "nofast")
async def test_an_early_503_in_drain_mode_never_answers_the_body(
        edge: Edge, dial: Dial, where: Where) -> None:
    """In drain mode every /v1 request gets 503 before its body is read; the body (a whole
    request) is not answered as a second one, nor forwarded."""
    site = await edge.site(where.kind)
    mark = edge.backend.mark()
    async with aiohttp.ClientSession() as admin:
        async with admin.post(site.sup.admin + "/admin/drain") as r:
            assert r.status == 200, await r.text()
        try:
            wire = await dial(site)
            inner = smuggled(uid())
            await early(wire, site, announcing(FAST, inner), 503, inner, follow_status=503)
        finally:
            async with admin.post(site.sup.admin + "/admin/undrain") as r:
                assert r.status == 200, await r.text()
    await clean(site, edge.backend, mark)


@wheres("fast", "nofast")
async def test_an_early_413_closes_without_reading_the_body(
        edge: Edge, dial: Dial, where: Where) -> None:
    """600 MiB announced, over the 512 MiB limit: 413 at once; what follows is dropped and
    the connection closes (lingering 1 s here), never answering the request inside."""
    site = await edge.site("timed-" + where.kind)
    mark = edge.backend.mark()
    wire = await dial(site)
    inner = smuggled(uid())
    head = raw(FAST, b"Content-Type: application/json", b"Content-Length: %d" % (600 * MiB))
    await wire.send(head)
    reply = await wire.reply()
    assert reply.status == 413, str(reply)
    error_shape(reply)
    if await wire.send(inner):
        await wire.send(site.request(f"ok follow {uid()}"))
    rest = await wire.rest(1 + SLACK)
    assert b"HTTP/1." not in rest, f"the body was answered: {rest[:300]!r}"
    await clean(site, edge.backend, mark)


@wheres("fast", "nofast")
async def test_a_huge_body_after_an_early_answer_is_not_read_to_its_end(
        edge: Edge, dial: Dial, where: Where) -> None:
    """64 MiB announced for POST /nope and streamed after the 404, each 64 KiB starting
    with a whole request: the supervisor drops at most max_discard (1 MiB) and lingers
    a bounded time, then closes; its memory does not grow with what was sent."""
    site = await edge.site(where.kind)
    mark = edge.backend.mark()
    wire = await dial(site)
    inner = smuggled(uid())
    await wire.send(raw(APP, b"Content-Type: application/json",
                        b"Content-Length: %d" % (64 * MiB)))
    reply = await wire.reply()
    assert reply.status == 404, str(reply)
    before = rss()
    chunk = inner + b" " * (64 * KiB - len(inner))
    sent, peak = await stream(wire, chunk, 64 * MiB, 40)
    assert sent < 64 * MiB, "the supervisor read all 64 MiB of a body it had answered"
    assert peak - before < 16 * MiB, f"memory grew by {(peak - before) >> 20} MiB"
    rest = await wire.rest()
    assert b"HTTP/1." not in rest, f"the body was answered: {rest[:300]!r}"
    await clean(site, edge.backend, mark)


# -- the model server's side -------------------------------------------------------------


RESPONSE_SIDE = {
    "fast": ("fast", 0),
    "app": ("fast", 70 * KiB),  # past the fast path's 64 KiB: the application forwards it
    "nofast": ("nofast", 0),
}


def response_sides() -> pytest.MarkDecorator:
    return pytest.mark.parametrize("side", list(RESPONSE_SIDE.values()),
                                   ids=list(RESPONSE_SIDE))


@response_sides()
async def test_bytes_past_the_servers_content_length_reach_no_one(
        edge: Edge, dial: Dial, side: tuple[str, int]) -> None:
    """A server that writes a whole second response after the one its Content-Length
    frames: the client gets exactly the framed body; the extra response never reaches
    this client's next request, nor the next client."""
    kind, pad = side
    site = await edge.site(kind)
    mark = edge.backend.mark()
    wire = await dial(site)
    marker = f"overlong {uid()}"
    await wire.send(site.request(marker, pad=pad))
    reply = await wire.reply()
    assert reply.status == 200 and reply.echo == marker, str(reply)
    assert int(reply.header("content-length", str(len(reply.body)))) == len(reply.body)
    follow = f"ok same-connection {uid()}"
    await wire.send(site.request(follow, pad=pad))
    try:
        after = await wire.reply()
    except NoReply:
        after = None  # it closed instead: allowed
    assert after is None or (after.status == 200 and after.echo == follow), str(after)
    await clean(site, edge.backend, mark, [marker, follow])


@response_sides()
async def test_early_hints_then_the_answer_then_the_next_request(
        edge: Edge, dial: Dial, side: tuple[str, int]) -> None:
    """A server that sends `103 Early Hints` before its 200: the client gets the 200 (the
    103 may come before it), and its next request on the connection gets its own."""
    kind, pad = side
    site = await edge.site(kind)
    mark = edge.backend.mark()
    wire = await dial(site)
    marker = f"hints {uid()}"
    await wire.send(site.request(marker, pad=pad))
    reply = await wire.reply()
    assert reply.status == 200 and reply.echo == marker, str(reply)
    assert set(reply.interim) <= {103}, str(reply.interim)
    follow = f"ok after-hints {uid()}"
    await wire.send(site.request(follow, pad=pad))
    after = await wire.reply()
    assert after.status == 200 and after.echo == follow, str(after)
    await clean(site, edge.backend, mark, [marker, follow])


@response_sides()
async def test_a_broken_chunk_from_the_server_is_a_502_or_a_cut(
        edge: Edge, dial: Dial, side: tuple[str, int]) -> None:
    """A server whose chunked framing breaks mid-answer: the client sees a 502 or an answer
    that ends too soon, never a whole-looking one; the connection is not reused."""
    kind, pad = side
    site = await edge.site(kind)
    mark = edge.backend.mark()
    wire = await dial(site)
    marker = f"badchunk {uid()}"
    await wire.send(site.request(marker, pad=pad))
    try:
        reply = await wire.reply()
    except NoReply:
        pass  # cut: the client sees an answer that ends too soon
    else:
        assert reply.status == 502, f"a broken answer passed for whole: {reply}"
        error_shape(reply)
    await clean(site, edge.backend, mark, [marker])


@response_sides()
async def test_a_post_the_server_received_is_never_sent_twice(
        edge: Edge, dial: Dial, side: tuple[str, int]) -> None:
    """The server reads a POST and closes without a byte of answer, on a connection it
    answered a request on just before (so a pooled one, where there is a pool): 502
    upstream_unreachable, and the server saw the request once. Only a refused connect or
    a request never written may go again."""
    kind, pad = side
    site = await edge.site(kind)
    mark = edge.backend.mark()
    wire = await dial(site)
    first = f"ok before-close {uid()}"
    await wire.send(site.request(first, pad=pad))
    assert (await wire.reply()).status == 200
    marker = f"close {uid()}"
    await wire.send(site.request(marker, pad=pad))
    reply = await wire.reply()
    assert reply.status == 502, str(reply)
    error_shape(reply)
    assert reply.json()["error"]["code"] == "upstream_unreachable", str(reply)
    assert edge.backend.count(marker) == 1, (
        f"the server received the POST {edge.backend.count(marker)} times")
    await clean(site, edge.backend, mark, [first, marker])


@response_sides()
async def test_a_server_that_stops_mid_answer_is_cut_after_the_read_timeout(
        edge: Edge, dial: Dial, side: tuple[str, int]) -> None:
    """upstream_read_timeout 1 s, a server silent after 10 bytes of its body: the
    client's answer ends (cut, or 504) within a few seconds, not never."""
    kind, pad = side
    site = await edge.site("timed-" + kind)
    mark = edge.backend.mark()
    wire = await dial(site)
    marker = f"stall {uid()}"
    await wire.send(site.request(marker, pad=pad))
    try:
        reply = await wire.reply(1 + SLACK)
    except NoReply:
        pass
    else:
        assert reply.status == 504, f"a stalled answer passed for whole: {reply}"
    await clean(site, edge.backend, mark, [marker])


@response_sides()
async def test_a_slow_server_that_keeps_sending_is_not_cut(
        edge: Edge, dial: Dial, side: tuple[str, int]) -> None:
    """upstream_read_timeout 1 s is a gap between reads, never a total: a byte every
    0.5 s for 3 s arrives whole."""
    kind, pad = side
    site = await edge.site("timed-" + kind)
    mark = edge.backend.mark()
    wire = await dial(site)
    marker = f"drip {uid()}"
    await wire.send(site.request(marker, pad=pad))
    reply = await wire.reply(3 + SLACK + 4)
    assert reply.status == 200 and reply.body == b"abcdef", str(reply)
    await clean(site, edge.backend, mark, [marker])


# -- timeouts ----------------------------------------------------------------------------


async def closed_after(wire: Wire, configured: float, *,
                       answers: Sequence[int] = (408,)) -> float:
    """Wait for the supervisor to close; returns the seconds it took. What it said before
    closing may only be one of `answers`."""
    began = time.monotonic()
    rest = await wire.rest(configured + SLACK)
    took = time.monotonic() - began
    for reply in await replies_in(rest):
        assert reply.status in answers, f"unexpected answer before the close: {reply}"
    return took


async def rejected(site: Site, *, required: bool = True) -> dict[str, float]:
    return await series(site, "supervisor_proxy_rejected", "reason", required=required)


@wheres("fast", "app", "nofast")
async def test_a_partial_head_is_closed_after_header_timeout(
        edge: Edge, dial: Dial, where: Where) -> None:
    """A head that stops coming holds a connection (and a slot of the limit) only for
    header_timeout; a 408 may precede the close. Counted as header_timeout."""
    site = await edge.site("timed-" + where.kind)
    mark = edge.backend.mark()
    before = await rejected(site, required=False)
    wire = await dial(site)
    await wire.send(b"%s %s HTTP/1.1\r\nHost: edge\r\n" % (where.route.method.encode(),
                                                           where.route.path.encode()))
    took = await closed_after(wire, 1)
    assert took >= 0.9, f"closed after {took:.2f}s: not by the 1 s header timeout"
    after = await rejected(site)
    assert after.get("header_timeout", 0) > before.get("header_timeout", 0), after
    await clean(site, edge.backend, mark)


@wheres("fast", "app", "nofast")
async def test_a_head_that_trickles_is_closed_after_header_timeout(
        edge: Edge, dial: Dial, where: Where) -> None:
    """header_timeout bounds the whole head, not the gap between its bytes: a client
    sending a byte every 0.2 s (slowloris) is closed after 1 s all the same."""
    site = await edge.site("timed-" + where.kind)
    mark = edge.backend.mark()
    wire = await dial(site)
    head = raw(where.route, *(b"X-Slow-%d: %s" % (i, b"z" * 20) for i in range(20)))

    async def trickle() -> None:
        for i in range(len(head)):
            if not await wire.send(head[i:i + 1]):
                return
            await asyncio.sleep(0.2)

    dripping = asyncio.ensure_future(trickle())
    try:
        await closed_after(wire, 1)
    finally:
        dripping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dripping
    await clean(site, edge.backend, mark)


@wheres("fast", "app", "nofast")
async def test_a_partial_body_is_closed_after_body_timeout(
        edge: Edge, dial: Dial, where: Where) -> None:
    """A body that stops coming is given up after body_timeout (a gap, not a total); a 408
    (or the early 404 of /nope) may precede the close. Counted as body_timeout."""
    site = await edge.site("timed-" + where.kind)
    mark = edge.backend.mark()
    before = await rejected(site, required=False)
    wire = await dial(site)
    body = chat_body(f"probe {uid()}")
    await wire.send(raw(where.route, b"Content-Length: %d" % (len(body) + 100),
                        body=body))
    took = await closed_after(wire, 1, answers=(408, 404) if where.route is APP else (408,))
    assert took >= 0.9, f"closed after {took:.2f}s: not by the 1 s body timeout"
    after = await rejected(site)
    if where.route is not APP:  # after an early 404 the rest is dropped, not refused
        assert after.get("body_timeout", 0) > before.get("body_timeout", 0), after
    await clean(site, edge.backend, mark)


@wheres(*ALL)
async def test_an_idle_connection_is_closed_after_keepalive_timeout(
        edge: Edge, dial: Dial, where: Where) -> None:
    """Between requests a connection waits keepalive_timeout, then closes, whichever path
    served its last request."""
    site = await edge.site("timed-" + where.kind)
    mark = edge.backend.mark()
    wire, allowed = await opened(site, where, dial)
    marker = f"ok idle {uid()}"
    await wire.send(site.request(marker, route=where.route))
    reply = await wire.reply()
    assert reply.status == where.route.ok, str(reply)
    began = time.monotonic()
    rest = await wire.rest(1 + SLACK)
    assert rest == b"", f"an idle connection was sent {rest[:300]!r}"
    assert time.monotonic() - began >= 0.9
    await clean(site, edge.backend, mark, [*allowed, marker])


@wheres(*ALL)
async def test_a_half_closed_client_gets_its_answer_then_eof(
        edge: Edge, dial: Dial, where: Where) -> None:
    """A client that shuts its side down after a whole request (as `curl` through some
    tunnels does) gets the answer, then the end of the connection."""
    site = await edge.site(where.kind)
    mark = edge.backend.mark()
    wire, allowed = await opened(site, where, dial)
    marker = f"ok half-closed {uid()}"
    await wire.send(site.request(marker, route=where.route))
    wire.shut_write()
    reply = await wire.reply()
    assert reply.status == where.route.ok, str(reply)
    assert where.route is not FAST or reply.echo == marker, str(reply)
    assert await wire.rest() == b""
    await clean(site, edge.backend, mark, [*allowed, marker])


@wheres("fast", "app", "nofast")
async def test_a_stalled_body_does_not_hold_up_other_clients(
        edge: Edge, dial: Dial, where: Where) -> None:
    """A client that stops mid-body blocks no one: another client is served meanwhile."""
    site = await edge.site(where.kind)
    mark = edge.backend.mark()
    stalled = await dial(site)
    body = chat_body(f"probe {uid()}")
    await stalled.send(raw(where.route, b"Content-Length: %d" % (len(body) * 2),
                           body=body))
    await clean(site, edge.backend, mark)  # within REPLY_WITHIN, meanwhile


# -- upgrades ----------------------------------------------------------------------------

H2C = (b"Upgrade: h2c", b"Connection: Upgrade, HTTP2-Settings",
       b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA")


@wheres(*ALL)
async def test_an_h2c_upgrade_is_ignored(edge: Edge, dial: Dial, where: Where) -> None:
    """HTTP/2 over cleartext is not spoken: the request is answered over HTTP/1.1 (never
    101), and the connection goes on."""
    site = await edge.site(where.kind)
    mark = edge.backend.mark()
    wire, allowed = await opened(site, where, dial)
    route = LIST if where.route is APP else where.route
    marker = f"ok h2c {uid()}"
    await wire.send(site.request(marker, route=route, fields=H2C))
    reply = await wire.reply(method=route.method)
    assert reply.status == 200 and 101 not in reply.interim, str(reply)
    assert route is not FAST or reply.echo == marker, str(reply)
    follow = f"ok after-h2c {uid()}"
    await wire.send(site.request(follow))
    after = await wire.reply()
    assert after.status == 200 and after.echo == follow, str(after)
    await clean(site, edge.backend, mark, [*allowed, marker, follow])


@wheres("fast", "handover", "nofast")
async def test_a_websocket_upgrade_outside_v1_is_a_plain_request(
        edge: Edge, dial: Dial, where: Where) -> None:
    """Only /v1 routes are tunnelled: a WebSocket upgrade of GET /metrics is answered as
    the plain GET (200, never 101), and the connection goes on."""
    site = await edge.site(where.kind)
    mark = edge.backend.mark()
    wire, allowed = await opened(site, where, dial)
    await wire.send(raw(Route("GET", "/metrics", 200), b"Upgrade: websocket",
                        b"Connection: Upgrade", b"Sec-WebSocket-Version: 13",
                        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="))
    reply = await wire.reply(method="GET")
    assert reply.status == 200 and b"supervisor_" in reply.body, str(reply)[:300]
    follow = f"ok after-ws {uid()}"
    await wire.send(site.request(follow))
    after = await wire.reply()
    assert after.status == 200 and after.echo == follow, str(after)
    await clean(site, edge.backend, mark, [*allowed, follow])


# -- what the edge counts and logs -------------------------------------------------------


async def series(site: Site, family: str, label: str, *,
                 required: bool = True) -> dict[str, float]:
    """The values of a counter family on the proxy's /metrics, by one label; the family
    must exist (a missing one is not read as zeros) unless not `required` (a count
    before a probe: the probe's own checks come first, the family's at its end)."""
    wire = await Wire.open(site.url)
    try:
        await wire.send(b"GET /metrics HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")
        reply = await wire.reply(method="GET")
    finally:
        wire.close()
    assert reply.status == 200, str(reply)
    for metric in text_string_to_metric_families(reply.body.decode()):
        if metric.name == family:
            return {s.labels[label]: s.value for s in metric.samples
                    if s.name == family + "_total"}
    if not required:
        return {}
    pytest.fail(f"{site.url}/metrics has no family {family}")


@wheres("fast", "nofast")
async def test_requests_are_counted_by_the_path_that_served_them(
        edge: Edge, dial: Dial, where: Where) -> None:
    """supervisor_proxy_requests_total{path}: with the fast path a chat completion is
    "fast" and GET /v1/models "app"; without it both are "app"."""
    site = await edge.site(where.kind)
    before = await series(site, "supervisor_proxy_requests", "path", required=False)
    wire = await dial(site)
    await wire.send(site.request(f"ok counted {uid()}"))
    assert (await wire.reply()).status == 200
    await wire.send(site.request("", route=LIST))
    assert (await wire.reply(method="GET")).status == 200
    after = await series(site, "supervisor_proxy_requests", "path")
    fast = after.get("fast", 0) - before.get("fast", 0)
    app = after.get("app", 0) - before.get("app", 0)
    if site.fast_path:
        assert fast == 1 and app >= 1, (before, after)
    else:
        assert fast == 0 and app >= 2, (before, after)


REJECTIONS = {
    "malformed": HEADER_ERRORS["nul"],
    "line_too_long": LIMITS["line_9k"][0],
    "headers_too_large": LIMITS["header_9k"][0],
    "unsupported_version": VALIDITY["http2_line"][0],
}


@wheres("fast", "nofast")
async def test_refusals_are_counted_by_reason(edge: Edge, dial: Dial, where: Where) -> None:
    """supervisor_proxy_rejected_total{reason} names why the edge refused a request."""
    site = await edge.site(where.kind)
    before = await rejected(site, required=False)
    for probe in REJECTIONS.values():
        wire = await dial(site)
        await wire.send(probe(FAST, uid()))
        with contextlib.suppress(AssertionError):
            await wire.rest()
    after = await rejected(site)
    short = [r for r in REJECTIONS if after.get(r, 0) <= before.get(r, 0)]
    assert not short, f"not counted: {short} (before {before}, after {after})"


async def test_malformed_input_is_one_warning_line_without_traceback(
        edge: Edge, dial: Dial, caplog: pytest.LogCaptureFixture) -> None:
    """A batch of malformed requests (a scanner, a broken client) fills no log with
    tracebacks: a WARNING line, rate-limited, so fewer lines than requests. (On a
    supervisor of its own: the others' rate limits were spent by earlier probes.)"""
    site = await edge.site("quiet")
    caplog.set_level(logging.WARNING)
    probes = [*MALFORMED.values(), *(b for b, _ in VALIDITY.values())][:20]

    async def one(probe: Build) -> None:
        wire = await dial(site)
        await wire.send(probe(FAST, uid()))
        with contextlib.suppress(AssertionError):
            await wire.rest()

    await asyncio.gather(*(one(p) for p in probes))
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    traced = [r for r in loud if r.exc_info or "Traceback" in r.getMessage()]
    assert not traced, f"tracebacks logged: {[r.getMessage()[:200] for r in traced]}"
    ours = [r for r in loud if r.name.startswith("supervisor")]
    assert 1 <= len(ours) < len(probes), (
        f"{len(ours)} warnings for {len(probes)} malformed requests: "
        f"{[r.getMessage()[:120] for r in ours]}")


# -- beside nginx (informative) ----------------------------------------------------------


@pytest.fixture(scope="module")
def nginx_front(edge: Edge) -> Iterator[str | None]:
    """nginx in front of the same Backend, for the side-by-side table (None: no nginx)."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(binary).exists():
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="ms-edge-nginx-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (folder / "nginx.conf").write_text(f"""
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {folder}/body; proxy_temp_path {folder}/proxy;
  fastcgi_temp_path {folder}/fcgi; uwsgi_temp_path {folder}/uwsgi; scgi_temp_path {folder}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass {edge.backend.url};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
""")
    proc = subprocess.Popen([binary, "-c", str(folder / "nginx.conf"), "-p", str(folder),
                             "-g", "daemon off;"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(folder, ignore_errors=True)


async def _outcome(url: str, data: bytes) -> str:
    """What one probe got: the first status, and whether the connection then closed."""
    wire = await Wire.open(url)
    try:
        await wire.send(data, 3)
        try:
            reply = await wire.reply(3)
            status = str(reply.status)
        except NoReply as exc:
            status = "cut" if exc.status else "none"
        except (Stalled, AssertionError):
            return "silent"
        try:
            await wire.rest(2)
            return f"{status} close"
        except Stalled:
            return f"{status} open"
    finally:
        wire.close()


async def test_beside_nginx(edge: Edge, nginx_front: str | None) -> None:
    """Not a check: prints what the supervisor and nginx answer to the same bytes (run
    with -s to read it), for probes of the tables above on the fast route."""
    if nginx_front is None:
        pytest.skip("no nginx here (scripts/setup.sh installs nginx-light)")
    site = await edge.site("fast")
    probes: dict[str, Build] = {
        **MALFORMED, **{n: b for n, (b, _) in LIMITS.items()},
        **{n: b for n, (b, _) in VALIDITY.items()},
    }
    sup = await asyncio.gather(*(_outcome(site.url, b(FAST, uid())) for b in probes.values()))
    ngx = await asyncio.gather(*(_outcome(nginx_front, b(FAST, "nginx-" + uid()))
                                 for b in probes.values()))
    width = max(map(len, probes))
    print(f"\n{'probe':<{width}}  {'supervisor':<14}  nginx")
    for name, ours, theirs in zip(probes, sup, ngx, strict=True):
        print(f"{name:<{width}}  {ours:<14}  {theirs}")


async def test_nothing_smuggled_reached_the_model_server_at_all(edge: Edge) -> None:
    """Last: a hidden request forwarded late (after its probe's check) shows here."""
    hidden = [f"{s.test}: {s.marker or s.body[:80]!r}" for s in edge.backend.seen
              if s.smuggled and not any(t in (s.marker or "") for t in ("legit-", "nginx-"))]
    assert not hidden, f"requests hidden in bodies reached the model server: {hidden}"
