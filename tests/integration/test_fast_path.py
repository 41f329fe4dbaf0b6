"""The listener's fast path on the wire (supervisor/proxy/fastpath.py): what a client of a
ready model sees, byte for byte, and how requests it cannot take reach the full path on the
same connection without the client noticing. Each test proves which path answered through
`supervisor_proxy_requests_total{path}`: with the fast path off, these answers would be
the same, only slower."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.helpers import metric_value, scrape, wait_for

from .conftest import chat


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response: status, headers (lower-case names), the body de-framed."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in head[1:] if line)}
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, headers, bytes(body)
        body += chunk[:-2]


def _post(body: dict, *, extra: str = "") -> bytes:
    data = json.dumps(body).encode()
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json"
            f"\r\nContent-Length: {len(data)}\r\n{extra}\r\n").encode() + data


@pytest.fixture
async def connect() -> AsyncIterator:
    opened = []

    async def open_(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        opened.append(writer)
        return reader, writer

    yield open_
    for writer in opened:
        writer.close()


async def _ready(sup, http: aiohttp.ClientSession, model: str) -> None:
    async with http.post(sup.url + "/v1/chat/completions", json=chat(model)) as r:
        assert r.status == 200


async def _served(http: aiohttp.ClientSession, sup) -> dict[str, float]:
    """Requests answered so far by each path (the series must be exported)."""
    text = await scrape(http, sup)
    return {path: metric_value(text, "supervisor_proxy_requests_total", path=path)
            for path in ("fast", "app")}


class _Paths:
    """How many requests each path answered since `start`."""

    def __init__(self, http: aiohttp.ClientSession, sup) -> None:
        self.http, self.sup = http, sup
        self.before: dict[str, float] = {}

    async def start(self) -> _Paths:
        self.before = await _served(self.http, self.sup)
        return self

    async def moved(self) -> dict[str, float]:
        after = await _served(self.http, self.sup)
        app = after["app"] - self.before["app"] - 1  # the scrape itself is aiohttp's
        return {"fast": after["fast"] - self.before["fast"], "app": app}


async def test_an_answer_keeps_its_length_and_a_stream_its_chunks(
        supervisor_factory, http, connect) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    await _ready(sup, http, "chat-fast")
    paths = await _Paths(http, sup).start()
    reader, writer = await connect(sup.url)
    for _ in range(3):  # one keep-alive connection, several requests
        writer.write(_post(chat("chat-fast")))
        status, headers, body = await _read_response(reader)
        assert status == 200 and "transfer-encoding" not in headers
        assert int(headers["content-length"]) == len(body)
        assert headers["x-supervisor-profile"] == "default"
        assert json.loads(body)["object"] == "chat.completion"
    writer.write(_post(chat("chat-fast", stream=True, max_tokens=3)))
    status, headers, body = await _read_response(reader)
    assert status == 200 and headers["transfer-encoding"] == "chunked"
    assert headers["content-type"].startswith("text/event-stream")
    assert body.count(b"data: ") == 4 and body.endswith(b"data: [DONE]\n\n")
    assert await paths.moved() == {"fast": 4, "app": 0}


async def test_pipelined_requests_are_answered_in_order(supervisor_factory, http,
                                                        connect) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    await _ready(sup, http, "chat-fast")
    paths = await _Paths(http, sup).start()
    reader, writer = await connect(sup.url)
    writer.write(_post(chat("chat-fast", max_tokens=1)) + _post(chat("chat-fast", max_tokens=2))
                 + _post(chat("nope")))
    answers = [await _read_response(reader) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 404]
    assert json.loads(answers[2][2])["error"]["code"] == "model_not_found"
    assert await paths.moved() == {"fast": 2, "app": 1}


async def test_connection_close_is_honoured(supervisor_factory, http, connect) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    await _ready(sup, http, "chat-fast")
    paths = await _Paths(http, sup).start()
    reader, writer = await connect(sup.url)
    writer.write(_post(chat("chat-fast"), extra="Connection: close\r\n"))
    status, headers, _ = await _read_response(reader)
    assert status == 200 and headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the supervisor closed it
    assert await paths.moved() == {"fast": 1, "app": 0}


async def test_a_connection_that_used_the_fast_path_can_still_be_held(
        supervisor_factory, http, connect) -> None:
    """A ready model first, then a stopped one on the same connection: the second request
    is held through a cold start, and the connection goes on serving both."""
    sup = await supervisor_factory({"chat-fast": {}, "chat-slow": {}})
    await _ready(sup, http, "chat-fast")
    paths = await _Paths(http, sup).start()
    reader, writer = await connect(sup.url)
    writer.write(_post(chat("chat-fast")))
    assert (await _read_response(reader))[0] == 200
    writer.write(_post(chat("chat-slow")))
    status, headers, _ = await _read_response(reader)
    assert status == 200 and headers["x-supervisor-cold-start"] == "true"
    for model in ("chat-fast", "chat-slow"):
        writer.write(_post(chat(model)))
        assert (await _read_response(reader))[0] == 200
    assert await paths.moved() == {"fast": 3, "app": 1}  # only the held one took aiohttp


async def test_other_routes_on_the_same_connection(supervisor_factory, http, connect) -> None:
    """GETs of the aiohttp application between fast requests, the last with
    `Connection: close` (as urllib sends it): each answered, then the connection ends."""
    sup = await supervisor_factory({"chat-fast": {}})
    await _ready(sup, http, "chat-fast")
    paths = await _Paths(http, sup).start()
    reader, writer = await connect(sup.url)
    for close in (False, False, True):
        writer.write(_post(chat("chat-fast")))
        assert (await _read_response(reader))[0] == 200
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n"
                     + (b"Connection: close\r\n" if close else b"") + b"\r\n")
        status, _, body = await _read_response(reader)
        assert status == 200 and b"supervisor_requests_total" in body
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert await paths.moved() == {"fast": 3, "app": 3}


async def test_bad_input_gets_the_full_paths_errors(supervisor_factory, http, connect) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    await _ready(sup, http, "chat-fast")
    reader, writer = await connect(sup.url)
    bad = b"{not json"
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: "
                 + str(len(bad)).encode() + b"\r\n\r\n" + bad)
    status, _, body = await _read_response(reader)
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_json"
    assert (await _served(http, sup))["app"] >= 2  # the cold start, then this one


async def test_a_client_that_leaves_mid_stream_is_not_counted_in_flight(
        supervisor_factory, http, connect) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    await _ready(sup, http, "chat-fast")
    reader, writer = await connect(sup.url)
    writer.write(_post(chat("chat-fast", stream=True, max_tokens=50,
                            stream_delay=0.2)))
    await reader.readuntil(b"data: ")  # the stream is under way
    handle = sup.handle("chat-fast")
    assert handle.in_flight == 1
    writer.close()
    await wait_for(lambda: handle.in_flight == 0, 5, "the request to leave the flight count")
    assert (await _served(http, sup))["fast"] == 1


class _ClosesAfterOne(asyncio.Protocol):
    """A model server that answers one request on each connection, then closes the next
    one without a word: what a server's keep-alive timeout does to a pooled connection."""

    requests = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.served = 0

    def data_received(self, data: bytes) -> None:
        if data.startswith(b"GET"):  # health probes
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return
        type(self).requests += 1
        if self.served:
            self.transport.close()
            return
        self.served += 1
        body = b'{"object":"chat.completion","choices":[]}'
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


async def test_a_post_the_server_may_have_run_is_not_sent_again(supervisor_factory,
                                                                 http) -> None:
    """A pooled connection that the server closes under a POST: the POST may have run
    (RFC 9110 9.2.2), so the client gets 502 and the server saw it once; the next request
    gets a new connection and its answer."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_ClosesAfterOne, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sup = await supervisor_factory({"chat-fast": {
            "upstream": f"http://127.0.0.1:{port}", "health": "/health"}})
        await _ready(sup, http, "chat-fast")
        _ClosesAfterOne.requests = 0
        statuses = []
        for _ in range(4):
            async with http.post(sup.url + "/v1/chat/completions", json=chat("chat-fast")) as r:
                statuses.append(r.status)
                if r.status == 502:
                    assert (await r.json())["error"]["code"] == "upstream_unreachable"
        assert statuses == [200, 502, 200, 502]  # each second one met a pooled connection
        assert _ClosesAfterOne.requests == 4  # none sent twice
        assert (await _served(http, sup))["fast"] == 4
    finally:
        server.close()


async def test_without_the_fast_path_the_same_answers(supervisor_factory, http,
                                                      connect) -> None:
    sup = await supervisor_factory({"chat-fast": {}}, fast_path=False)
    await _ready(sup, http, "chat-fast")
    paths = await _Paths(http, sup).start()
    reader, writer = await connect(sup.url)
    for _ in range(2):
        writer.write(_post(chat("chat-fast")))
        status, headers, body = await _read_response(reader)
        assert status == 200 and headers["x-supervisor-profile"] == "default"
        assert json.loads(body)["object"] == "chat.completion"
    assert await paths.moved() == {"fast": 0, "app": 2}


class _Refuses(asyncio.Protocol):
    """A model server that answers every completion 400, chunked, for another reason than
    the length."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if data.startswith(b"GET"):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return
        body = b'{"object":"error","message":"temperature must be positive","code":400}'
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
                             % (len(body), body))


async def test_a_400_that_is_not_about_length_reaches_the_client_whole(
        supervisor_factory, http, connect) -> None:
    """On a model with a larger profile a 400 is read whole (is it vLLM's "maximum context
    length"?); any other 400 then goes to the client as the server wrote it."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Refuses, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sup = await supervisor_factory({"ctx": {"upstream": f"http://127.0.0.1:{port}"}})
        async with http.post(sup.url + "/v1/chat/completions", json=chat("ctx")) as r:
            assert r.status == 400  # the first: held through the cold start, aiohttp's path
        reader, writer = await connect(sup.url)
        for _ in range(2):
            writer.write(_post(chat("ctx")))
            status, headers, body = await _read_response(reader)
            assert status == 400 and headers["x-supervisor-profile"] == "short"
            assert json.loads(body)["message"] == "temperature must be positive"
        assert (await _served(http, sup))["fast"] == 2
    finally:
        server.close()


class _Flood(asyncio.Protocol):
    """A model server that streams 32 MiB of SSE as fast as its socket takes it, and counts
    the times the socket told it to wait (the supervisor stopped reading)."""

    EVENT = b"data: " + b"x" * 1018 + b"\n\n"  # 1 KiB
    EVENTS = 32 * 1024
    paused = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.sent = 0
        self.waiting = False

    def data_received(self, data: bytes) -> None:
        if data.startswith(b"GET"):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
        self.pump()

    def pump(self) -> None:
        chunk = b"%x\r\n%s\r\n" % (len(self.EVENT), self.EVENT)
        while self.sent < self.EVENTS and not self.waiting:
            self.transport.write(chunk)
            self.sent += 1
        if self.sent == self.EVENTS and not self.waiting:
            self.transport.write(b"0\r\n\r\n")
            self.sent += 1

    def pause_writing(self) -> None:
        type(self).paused += 1
        self.waiting = True

    def resume_writing(self) -> None:
        self.waiting = False
        self.pump()


async def test_a_client_that_reads_slowly_slows_the_server_down(supervisor_factory, http,
                                                                connect) -> None:
    """Past the socket buffers the supervisor stops reading from the server instead of
    buffering without end, and reads on when the client does: every byte arrives."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Flood, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sup = await supervisor_factory({"chat-fast": {
            "upstream": f"http://127.0.0.1:{port}", "health": "/health"}})
        await _ready(sup, http, "chat-fast")
        _Flood.paused = 0
        reader, writer = await connect(sup.url)
        writer.write(_post(chat("chat-fast", stream=True)))
        await wait_for(lambda: _Flood.paused > 0, 10, "the server to be told to wait")
        status, headers, body = await asyncio.wait_for(_read_response(reader), 60)
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        assert body == _Flood.EVENT * _Flood.EVENTS
        assert (await _served(http, sup))["fast"] == 1
    finally:
        server.close()

