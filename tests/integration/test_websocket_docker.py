"""WebSocket passthrough on `/v1/...` (OpenAI Realtime's `GET /v1/realtime?model=...`), with a
real client (the `websockets` library) through the supervisor to the stand-in, which speaks
RFC 6455 and echoes: a text message comes back as
`{"type": "echo", "model": ..., "path": <the request target it got>, "data": <the text>}`,
a binary one as itself (compose/standin/standin.py)."""

from __future__ import annotations

import asyncio
import json
from http.client import HTTPConnection
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State as WsState

from supervisor.proxy.timeouts import RESOLUTION_SECONDS
from supervisor.rules.table import State
from tests.helpers import Supervisor, scrape

from .conftest import chat, compose_project, container_running, starts, wait_for

# No keep-alive pings of the client's own: a test decides what crosses the socket and when.
# Docker may take a while to create a container on a busy machine: a generous open timeout.
CLIENT = {"open_timeout": 60, "ping_interval": None, "close_timeout": 5}


def ws_url(sup: Supervisor, target: str) -> str:
    return "ws://" + urlsplit(sup.url).netloc + target


async def open_ws(sup: Supervisor, target: str) -> ClientConnection:
    return await connect(ws_url(sup, target), **CLIENT)


async def echo(ws: ClientConnection, text: str) -> dict[str, Any]:
    await ws.send(text)
    reply = await asyncio.wait_for(ws.recv(), 10)
    assert isinstance(reply, str), reply
    answer: dict[str, Any] = json.loads(reply)
    return answer


def standin_log(project: str, service: str, line: str) -> int:
    return compose_project(project).log_lines(service, line)


def websockets_counted(exposition: str) -> float:
    """supervisor_proxy_requests_total{path="websocket"}, summed over its other labels (if
    any); 0 while the series does not exist yet."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "supervisor_proxy_requests_total"
        and sample.labels.get("path") == "websocket"
    )


async def test_cold_start_holds_the_handshake_then_messages_flow_both_ways(
    supervisor_factory, project
) -> None:
    sup = await supervisor_factory({"chat-slow": {}})  # its stand-in takes 3 s to listen
    handle = sup.handle("chat-slow")
    assert handle.state is State.STOPPED
    opening = asyncio.create_task(open_ws(sup, "/v1/realtime?model=chat-slow"))
    await wait_for(lambda: handle.held == 1 or opening.done(), 30,
                   "the WebSocket handshake to be held")
    # result() raises what ended the handshake, if it did end.
    assert not opening.done(), f"not held: {opening.result()!r}"
    assert handle.state is State.STARTING
    ws = await asyncio.wait_for(opening, 90)
    try:
        # Opened only once the model was ready, as the one request that started it.
        assert handle.state is State.READY
        assert ws.response.status_code == 101
        assert ws.response.headers.get("X-Supervisor-Cold-Start") == "true"
        assert handle.held == 0
        assert handle.in_flight == 1
        for i in range(3):
            await ws.send(f"hello {i}")
        replies = [json.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(3)]
        assert replies == [
            {"type": "echo", "model": "chat-slow", "path": "/v1/realtime?model=chat-slow",
             "data": f"hello {i}"}
            for i in range(3)
        ]
        payload = bytes(range(256)) * 300  # 76.8 kB: a 64-bit frame length both ways
        await ws.send(payload)
        assert await asyncio.wait_for(ws.recv(), 10) == payload
    finally:
        await ws.close()
    assert ws.close_code == 1000  # the stand-in's close reply came back through
    await wait_for(lambda: handle.in_flight == 0, 10, "the closed socket to leave in-flight")
    await wait_for(lambda: standin_log(project, "chat-slow", "standin: websocket closed") == 1,
                   10, "the upstream socket to close")
    assert standin_log(project, "chat-slow", "standin: websocket open /v1/realtime") == 1
    assert starts(project, "chat-slow") == 1


async def test_open_socket_keeps_the_model_up_past_its_idle_timeout(
    supervisor_factory, project, http
) -> None:
    sup = await supervisor_factory({"chat-fast": {"idle_timeout": "1s"}})
    handle = sup.handle("chat-fast")
    loop = asyncio.get_running_loop()
    async with await open_ws(sup, "/v1/realtime?model=chat-fast") as ws:
        assert (await echo(ws, "first"))["data"] == "first"
        assert handle.in_flight == 1
        # Four idle timeouts with nothing on the socket: an open socket is a request in
        # flight, so the model is not stopped (a check over a span, not a synchronisation).
        quiet_until = loop.time() + 4
        while loop.time() < quiet_until:
            assert handle.state is State.READY
            assert handle.in_flight == 1
            await asyncio.sleep(0.1)
        assert container_running(project, "chat-fast")
        async with http.get(sup.url + "/v1/models/chat-fast") as r:
            assert r.status == 200
            assert (await r.json())["state"] == "ready"
        assert (await echo(ws, "still here"))["data"] == "still here"
    await wait_for(lambda: handle.in_flight == 0, 10, "the closed socket to leave in-flight")
    # Now the idle rules apply again.
    await wait_for(lambda: not container_running(project, "chat-fast"), 30,
                   "the idle stop after the socket closed")
    await wait_for(lambda: handle.state is State.STOPPED, 10, "state stopped")
    assert starts(project, "chat-fast") == 1


async def test_websocket_idle_timeout_closes_a_quiet_socket_only(
    supervisor_factory, project
) -> None:
    sup = await supervisor_factory({"chat-fast": {}}, http={"websocket_idle_timeout": "1s"})
    handle = sup.handle("chat-fast")
    loop = asyncio.get_running_loop()
    # A socket with something on it every 0.4 s (a message, then a ping) outlives the limit.
    async with await open_ws(sup, "/v1/realtime?model=chat-fast") as ws:
        for tick in range(9):  # 3.6 s
            if tick % 2 == 0:
                assert (await echo(ws, f"tick {tick}"))["data"] == f"tick {tick}"
            else:
                await asyncio.wait_for(await ws.ping(), 5)
            await asyncio.sleep(0.4)
        assert ws.state is WsState.OPEN
        assert (await echo(ws, "last"))["data"] == "last"
    assert ws.close_code == 1000
    # A quiet one is closed by the supervisor after about 1 s, upstream side included.
    ws = await open_ws(sup, "/v1/realtime?model=chat-fast")
    opened = loop.time()
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 15)
    quiet = loop.time() - opened
    # The sweeper fires a timeout within its resolution of the due time, either side
    # (proxy/timeouts.py), and `opened` is read after the handshake: 1 s less that.
    earliest = 1.0 - RESOLUTION_SECONDS - 0.05
    assert earliest <= quiet < 6, f"the quiet socket was closed after {quiet:.2f} s"
    await wait_for(lambda: handle.in_flight == 0, 10, "the closed socket to leave in-flight")
    await wait_for(lambda: standin_log(project, "chat-fast", "standin: websocket closed") == 2,
                   10, "the supervisor to close the upstream socket too")
    assert handle.state is State.READY


async def test_unknown_or_missing_model_is_refused_without_an_upgrade(supervisor_factory) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    with pytest.raises(InvalidStatus) as caught:
        await open_ws(sup, "/v1/realtime?model=no-such-model")
    response = caught.value.response
    assert response.status_code == 404
    assert "Upgrade" not in response.headers
    error = json.loads(response.body)["error"]
    assert error["code"] == "model_not_found"
    assert "no-such-model" in error["message"]
    assert isinstance(error["type"], str)

    with pytest.raises(InvalidStatus) as caught:
        await open_ws(sup, "/v1/realtime")
    response = caught.value.response
    assert response.status_code == 400
    error = json.loads(response.body)["error"]
    assert isinstance(error["message"], str) and isinstance(error["type"], str)
    # Nothing was started for either.
    assert sup.handle("chat-fast").state is State.STOPPED


async def test_sockets_are_counted_under_path_websocket(supervisor_factory, http) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    async with http.post(sup.url + "/v1/chat/completions", json=chat("chat-fast")) as r:
        assert r.status == 200
    assert websockets_counted(await scrape(http, sup)) == 0
    for i in range(2):
        async with await open_ws(sup, "/v1/realtime?model=chat-fast") as ws:
            assert (await echo(ws, f"socket {i}"))["model"] == "chat-fast"

    async def two_counted() -> bool:
        return websockets_counted(await scrape(http, sup)) == 2

    await wait_for(two_counted, 10, 'supervisor_proxy_requests_total{path="websocket"} == 2')


def _h2c(port: int, method: str, target: str, body: bytes | None) -> tuple[str, int, bytes]:
    """One HTTP/1.1 request that asks for an h2c upgrade (RFC 7540 3.2), on its own socket."""
    conn = HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c",
               "HTTP2-Settings": "AAMAAABkAARAAAAAAAIAAAAA"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, target, body=body, headers=headers)
        response = conn.getresponse()
        version = {10: "HTTP/1.0", 11: "HTTP/1.1"}.get(response.version, str(response.version))
        return version, response.status, response.read()
    finally:
        conn.close()


async def test_h2c_upgrade_is_ignored_and_answered_over_http_1_1(supervisor_factory) -> None:
    sup = await supervisor_factory({"chat-fast": {}})
    port = urlsplit(sup.url).port
    assert port is not None
    version, status, body = await asyncio.to_thread(_h2c, port, "GET", "/v1/models", None)
    assert (version, status) == ("HTTP/1.1", 200)
    assert [m["id"] for m in json.loads(body)["data"]] == ["chat-fast"]
    request = json.dumps(chat("chat-fast")).encode()
    version, status, body = await asyncio.to_thread(
        _h2c, port, "POST", "/v1/chat/completions", request)
    assert (version, status) == ("HTTP/1.1", 200), body
    assert json.loads(body)["choices"][0]["message"]["content"] == "stand-in reply"

