"""Streaming (SSE) backend and client for proxy_bench.py, each run as a process of its own.

    python bench/_stream.py serve PORT        # the backend
    python bench/_stream.py client SPEC_JSON  # one measured run; prints one JSON line

The backend answers `POST` with a chunked `text/event-stream` of `max_tokens` events,
`stream_interval_ms` apart (from the request body; the first at once), then `data: [DONE]`.
Every event carries `"ts"`: CLOCK_MONOTONIC (time.monotonic_ns) taken just before its write.
Any `GET` (the supervisor's health probe) answers 200.

The client runs `concurrency` keep-alive connections in a closed loop (next stream as soon as
one ends). Stream starts are spread over one stream's length so the chunk rate is even; only
what arrives after that ramp, inside the measured window, counts. Per event: delay = arrival
(CLOCK_MONOTONIC in `data_received`) - `ts`. Per stream started in the window: time to first
byte = first response byte - request written. Both run on asyncio raw sockets (uvloop when
installed); the chunked framing and SSE events are parsed by hand.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

EVENT_HEAD = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,'
    b'"model":"bench-stream","choices":[{"index":0,"delta":{"content":"tok "},'
    b'"finish_reason":null}],"ts":'
)
DONE_AND_END = b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
TS = re.compile(rb'"ts":(\d+)')


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


# ---- backend ------------------------------------------------------------------------------


class _Backend(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.busy = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while not self.busy and self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buf[:end].decode("latin-1").split("\r\n")
            method = lines[0].split(" ", 1)[0]
            length, chunked = 0, False
            for line in lines[1:]:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "content-length":
                    length = int(value)
                elif key == "transfer-encoding":
                    chunked = True
            if chunked:  # not needed by the benchmark: refuse rather than mis-frame
                self.transport.write(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\n"
                                     b"Connection: close\r\n\r\n")
                self.transport.close()
                return
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            if method != "POST":
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                     b"Content-Length: 3\r\n\r\nok\n")
                continue
            req = json.loads(body or b"{}")
            self.start_stream(int(req.get("max_tokens") or 60),
                              float(req.get("stream_interval_ms") or 0) / 1e3)

    def start_stream(self, chunks: int, interval: float) -> None:
        assert self.transport is not None
        self.busy = True
        self.transport.write(STREAM_HEAD)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        sent = 0

        def tick() -> None:
            nonlocal sent
            self.timer = None
            if self.transport is None:
                return
            while True:
                event = b"%s%d}\n\n" % (EVENT_HEAD, time.monotonic_ns())
                self.transport.write(b"%x\r\n%s\r\n" % (len(event), event))
                sent += 1
                if sent >= chunks:
                    self.transport.write(DONE_AND_END)
                    self.busy = False
                    if self.buf:
                        self.data_received(b"")  # a pipelined request
                    return
                if interval > 0:
                    self.timer = loop.call_at(t0 + sent * interval, tick)
                    return

        tick()


async def _serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Backend, "127.0.0.1", port, backlog=4096)
    print(f"stream backend on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


# ---- client -------------------------------------------------------------------------------


class _Stats:
    def __init__(self, window_start: float, window_end: float, expect: int) -> None:
        self.start_ns = int(window_start * 1e9)
        self.end_ns = int(window_end * 1e9)
        self.expect = expect
        self.ttfb_ns: list[int] = []
        self.delay_ns: list[int] = []
        self.started = self.completed = 0
        self.errors: dict[str, int] = {}

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


class _Slot(asyncio.Protocol):
    """One keep-alive connection that streams back to back until the window ends."""

    def __init__(self, stats: _Stats, request: bytes, on_lost: Callable[[], None]) -> None:
        self.stats = stats
        self.request = request
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.reset()

    def reset(self) -> None:
        self.head = True
        self.raw = b""  # undecoded body bytes (chunked framing)
        self.sse = b""  # decoded SSE bytes not yet split into events
        self.sent_ns = 0
        self.events = 0
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.sent_ns and time.monotonic_ns() < self.stats.end_ns:
            self.stats.error("connection lost mid-stream")
        self.transport = None
        self.on_lost()

    def send(self) -> None:
        if self.transport is None:
            return
        self.reset()
        self.sent_ns = time.monotonic_ns()
        self.stats.started += 1
        self.transport.write(self.request)

    def fail(self, what: str) -> None:
        self.stats.error(what)
        self.sent_ns = 0
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        st = self.stats
        if self.head:
            self.raw += data
            end = self.raw.find(b"\r\n\r\n")
            if end < 0:
                return
            if st.start_ns <= self.sent_ns <= st.end_ns:
                st.ttfb_ns.append(now - self.sent_ns)
            head, self.raw = self.raw[:end].lower(), self.raw[end + 4 :]
            if not head.startswith(b"http/1.1 2"):
                return self.fail(f"status {head[9:12].decode(errors='replace')}")
            if b"transfer-encoding: chunked" not in head:
                return self.fail("not chunked")
            self.head = False
        else:
            self.raw += data
        raw, pos, sse = self.raw, 0, []
        while True:
            eol = raw.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(raw[pos:eol].split(b";", 1)[0], 16)
            if size == 0:
                if len(raw) < eol + 4:
                    break
                self.done = True
                pos = eol + 4
                break
            if len(raw) < eol + 2 + size + 2:
                break
            sse.append(raw[eol + 2 : eol + 2 + size])
            pos = eol + 2 + size + 2
        self.raw = raw[pos:]
        if sse:
            self.sse += b"".join(sse)
            cut = self.sse.rfind(b"\n\n")
            if cut >= 0:
                events, self.sse = self.sse[: cut + 2], self.sse[cut + 2 :]
                in_window = st.start_ns <= now <= st.end_ns
                for ts in TS.findall(events):
                    self.events += 1
                    if in_window:
                        st.delay_ns.append(now - int(ts))
        if self.done:
            if self.events != st.expect or self.raw:
                return self.fail(f"stream of {self.events} events, not {st.expect}")
            st.completed += 1
            self.sent_ns = 0
            if now < st.end_ns:
                self.send()


def _pct(values: list[int], p: float) -> float | None:
    if not values:
        return None
    rank = max(1, min(len(values), round(p / 100 * len(values) + 0.5)))
    return values[rank - 1] / 1e6


def _summary(values: list[int]) -> dict[str, Any]:
    values.sort()
    out: dict[str, Any] = {f"p{str(p).replace('.', '')}_ms": _pct(values, p)
                           for p in (50, 90, 99, 99.9)}
    out["max_ms"] = values[-1] / 1e6 if values else None
    out["n"] = len(values)
    return out


async def _client(spec: dict[str, Any]) -> dict[str, Any]:
    """spec: port, path, model, concurrency, chunks, interval_ms, duration, settle."""
    loop = asyncio.get_running_loop()
    n, chunks = int(spec["concurrency"]), int(spec["chunks"])
    stream_len = chunks * spec["interval_ms"] / 1e3
    ramp = stream_len if n > 1 else 0.0
    body = json.dumps({
        "model": spec["model"], "stream": True, "max_tokens": chunks,
        "stream_interval_ms": spec["interval_ms"],
        "messages": [{"role": "user", "content": "Say hi"}],
    }, separators=(",", ":")).encode()  # fmt: skip
    request = (
        f"POST {spec['path']} HTTP/1.1\r\nHost: 127.0.0.1:{spec['port']}\r\n"
        f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    slots: list[_Slot] = []
    connect_start = time.monotonic()
    stats = _Stats(0, 0, chunks)  # window set once every connection is open
    lost = 0

    def on_lost() -> None:  # before the end of the window: the server closed it
        nonlocal lost
        lost += time.monotonic_ns() < stats.end_ns

    async def connect() -> _Slot:
        _, proto = await loop.create_connection(
            lambda: _Slot(stats, request, on_lost), "127.0.0.1", spec["port"])
        return proto

    for i in range(0, n, 100):  # bursts of 100 connects
        slots += await asyncio.gather(*(connect() for _ in range(i, min(n, i + 100))))
    connect_s = time.monotonic() - connect_start
    t0 = time.monotonic() + 0.05
    stats.start_ns = int((t0 + ramp + spec["settle"]) * 1e9)
    stats.end_ns = stats.start_ns + int(spec["duration"] * 1e9)
    for k, slot in enumerate(slots):
        loop.call_at(loop.time() + 0.05 + k * ramp / n, slot.send)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.sleep(max(0.0, stats.start_ns / 1e9 - time.monotonic()))
    cpu_a = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.sleep(max(0.0, stats.end_ns / 1e9 - time.monotonic()))
    cpu_b = resource.getrusage(resource.RUSAGE_SELF)
    for slot in slots:
        slot.sent_ns = 0  # a stream cut by the end of the window is no error
        if slot.transport is not None:
            slot.transport.close()
    await asyncio.sleep(0.05)

    def cpu(a: resource.struct_rusage, b: resource.struct_rusage) -> float:
        return (b.ru_utime - a.ru_utime) + (b.ru_stime - a.ru_stime)

    return {
        "concurrency": n,
        "chunks_per_stream": chunks,
        "interval_ms": spec["interval_ms"],
        "nominal_chunks_per_s": n / (spec["interval_ms"] / 1e3) if spec["interval_ms"] else None,
        "window_s": spec["duration"],
        "ramp_s": ramp + spec["settle"],
        "connect_s": connect_s,
        "streams_started": stats.started,
        "streams_completed": stats.completed,
        "chunks_in_window": len(stats.delay_ns),
        "chunks_per_s": len(stats.delay_ns) / spec["duration"],
        "errors": sum(stats.errors.values()),
        "connections_lost": lost,
        "error_kinds": stats.errors,
        "client_cpu_window_pct": 100 * cpu(cpu_a, cpu_b) / spec["duration"],
        "client_cpu_total_s": cpu(cpu0, cpu_b),
        "ttfb": _summary(stats.ttfb_ns),
        "delay": _summary(stats.delay_ns),
    }


def client_command(spec: dict[str, Any]) -> list[str]:
    return [sys.executable, __file__, "client", json.dumps(spec)]


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "serve":
        run(lambda: _serve(int(argv[1])))
        return 0
    if len(argv) == 2 and argv[0] == "client":
        print(json.dumps(run(lambda: _client(json.loads(argv[1])))))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
