"""The proxy's connection limit and its accept loop (supervisor/proxy/limits.py), on real loopback
sockets, under asyncio and uvloop: past the limit a new client gets an immediate 503; when
accept() itself runs out of descriptors the waiting clients get the same 503 (not a silent
close) and the listener goes on accepting."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib.util
import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supervisor.proxy.limits import REFUSAL, connection_limit

SERVER = Path(__file__).with_name("limits_server.py")
LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(
    importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed"))]


@pytest.fixture(autouse=True)
def client_descriptors() -> None:
    """The clients here open a few hundred sockets at once."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))


@pytest.fixture
def server() -> Iterator[Callable[[str, int, int | None], int]]:
    """Start limits_server.py in a process group of its own; stopped by that group."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(loop: str, nofile: int, limit: int | None) -> int:
        proc = subprocess.Popen(
            [sys.executable, str(SERVER), loop, str(nofile), str(limit or "none")],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        procs.append(proc)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 20)
        line = proc.stdout.readline() if ready else b""
        assert line.strip().isdigit(), f"the test server did not start: {line!r}"
        return int(line)

    yield start
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


async def get(port: int, path: str) -> tuple[str, bytes]:
    """('200' | '503' | 'no answer' | an error's name, the raw response)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 30)  # none may hang
        writer.close()
    except (OSError, TimeoutError) as exc:
        return type(exc).__name__, b""
    if not data.startswith(b"HTTP/1.1 "):
        return "no answer", data
    return data.split(b" ", 2)[1].decode(), data


def body(raw: bytes) -> dict[str, object]:
    decoded: dict[str, object] = json.loads(raw.partition(b"\r\n\r\n")[2])
    return decoded


async def stats(port: int, within: float, until: Callable[[dict[str, object]], bool]
                ) -> dict[str, object]:
    """GET /stats until `until` holds (a refused poll counts as not yet)."""
    deadline = time.monotonic() + within
    while True:
        status, raw = await get(port, "/stats")
        if status == "200" and until(found := body(raw)):
            return found
        assert time.monotonic() < deadline, f"/stats never matched: {status} {raw[-300:]!r}"
        await asyncio.sleep(0.05)


def test_the_default_limit_leaves_the_reserve_and_two_descriptors_a_request() -> None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert connection_limit(None, 128) == max(1, (soft - 128) // 2)
    assert connection_limit(10, 128) == 10
    assert REFUSAL.startswith(b"HTTP/1.1 503 ")


@pytest.mark.parametrize("loop", LOOPS)
async def test_past_the_limit_a_new_client_gets_503_at_once_and_a_free_slot_serves_again(
    server, loop
) -> None:
    port = server(loop, 1024, 5)
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(5)]
    began = time.monotonic()
    status, raw = await get(port, "/stats")
    took = time.monotonic() - began
    head = raw.partition(b"\r\n\r\n")[0].decode().lower()
    assert status == "503", raw
    assert "retry-after: 1" in head and "connection: close" in head
    assert "content-type: application/json" in head
    error = body(raw)["error"]
    assert isinstance(error, dict) and error["code"] == "too_many_connections"
    assert took < 1.0, took
    idle.pop()[1].close()  # one slot frees up: the next client is served
    found = await stats(port, 5, lambda s: True)
    assert found["open"] == 5 and found["refused"] >= 1  # polls before the close was seen
    for _, writer in idle:
        writer.close()
    await stats(port, 5, lambda s: s["open"] == 1)  # the count follows closed connections


@pytest.mark.parametrize("loop", LOOPS)
async def test_a_burst_past_the_limit_every_client_gets_an_answer(server, loop) -> None:
    port = server(loop, 1024, 20)
    results = await asyncio.gather(*[get(port, "/hold?s=0.5") for _ in range(400)])
    counts = collections.Counter(status for status, _ in results)
    print(f"{loop}: {dict(counts)}")
    assert set(counts) <= {"200", "503"}, counts
    assert counts["200"] >= 20
    assert all(body(raw)["error"]["code"] == "too_many_connections"  # type: ignore[index]
               for status, raw in results if status == "503")
    await stats(port, 5, lambda s: s["open"] == 1 and s["serving"] is True)


@pytest.mark.parametrize("loop", LOOPS)
async def test_out_of_descriptors_waiting_clients_get_503_and_the_listener_recovers(
    server, loop
) -> None:
    """No limit and 64 descriptors: accept() fails with EMFILE during the burst. uvloop's
    own server would accept and close those clients without a word (libuv's EMFILE trick)."""
    port = server(loop, 64, None)
    results = await asyncio.gather(*[get(port, "/hold?s=1") for _ in range(300)])
    counts = collections.Counter(status for status, _ in results)
    print(f"{loop}: {dict(counts)}")
    assert set(counts) <= {"200", "503"}, counts
    assert counts["200"] >= 20 and counts["503"] > 0
    found = await stats(port, 5, lambda s: s["open"] == 1)
    assert found["serving"] is True
    assert found["refused"] == counts["503"]
