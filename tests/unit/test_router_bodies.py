"""`resolve()` on JSON bodies of every size: in memory or spooled, an alias spliced in,
each refusal in the OpenAI shape, and the memory budget held and given back."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import tracemalloc
from typing import Any

import pytest
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request

from supervisor.lifecycle.registry import Registry
from supervisor.proxy.body import SMALL_BODY_BYTES, SPOOL_RESERVE_BYTES, Body
from supervisor.proxy.body_budget import BODY_BUDGET, BodyBudget
from supervisor.proxy.http_errors import refusal_response
from supervisor.proxy.router import resolve
from supervisor.refusal import Refusal
from supervisor.tokens.estimate import load_estimator
from tests.fakes import make_handle

MAX_BODY = 64 << 20


class _Protocol:
    """Flow control as aiohttp's server does it: the stream pauses reading past its high
    water mark and resumes below the low one."""

    connected = True

    def __init__(self) -> None:
        self._reading_paused = False
        self.resumed = asyncio.Event()

    def pause_reading(self, **_: object) -> None:
        self._reading_paused = True
        self.resumed.clear()

    def resume_reading(self, **_: object) -> None:
        self._reading_paused = False
        self.resumed.set()


_FEEDERS: set[asyncio.Task[None]] = set()


async def _feed(stream: StreamReader, protocol: _Protocol, body: bytes,
                error: Exception | None) -> None:
    """The client's bytes, 64 KiB at a time, no faster than the handler reads them."""
    for at in range(0, len(body), 1 << 16):
        while protocol._reading_paused:
            await protocol.resumed.wait()
        stream.feed_data(body[at : at + (1 << 16)])
        await asyncio.sleep(0)
    if error is not None:
        stream.set_exception(error)
    else:
        stream.feed_eof()


def registry() -> Registry:
    plain, _, _ = make_handle({"service": "s", "upstream": "http://127.0.0.1:1",
                               "aliases": ["fast"]}, name="chat")
    limited, _, _ = make_handle({"upstream": "http://127.0.0.1:2", "aliases": ["lim"],
                                 "tokens_per_audio_second": 12.5, "profiles": {
                                     "big": {"service": "a", "max_model_len": 1 << 20}}},
                                name="limited")
    limited.configure(load_estimator(limited.config), {})
    return Registry([plain, limited])


def app(budget: BodyBudget | None = None) -> web.Application:
    application = web.Application(client_max_size=MAX_BODY)
    application[BODY_BUDGET] = budget or BodyBudget(1 << 30)
    return application


def request(application: web.Application, body: bytes, *, length: bool = True,
            headers: dict[str, str] | None = None, max_size: int = MAX_BODY,
            error: Exception | None = None) -> web.Request:
    """A request whose body arrives in 64 KiB chunks, as from a socket."""
    protocol = _Protocol()
    stream = StreamReader(protocol, 1 << 16,  # type: ignore[arg-type]
                          loop=asyncio.get_running_loop())
    feeder = asyncio.create_task(_feed(stream, protocol, body, error))
    _FEEDERS.add(feeder)
    feeder.add_done_callback(_FEEDERS.discard)
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if length:
        all_headers["Content-Length"] = str(len(body))
    return make_mocked_request("POST", "/v1/chat/completions", app=application,
                               payload=stream, client_max_size=max_size, headers=all_headers)


async def sent(body: Body) -> bytes:
    """What the body sends upstream."""
    out = body.forwardable()
    if out is None or isinstance(out, bytes):
        return out or b""
    return b"".join([chunk async for chunk in out])


def chat(model: str, pad: int = 0, **extra: Any) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": "hello there"}],
            "pad": "p" * pad, **extra}
    return json.dumps(body).encode()


def replaced(body: bytes, old: str, new: str) -> bytes:
    return body.replace(json.dumps(old).encode(), json.dumps(new).encode(), 1)


@pytest.mark.parametrize("pad", [0, 3 << 20], ids=["in-memory", "spooled"])
async def test_an_alias_is_spliced_and_the_rest_of_the_body_kept_byte_for_byte(pad: int) -> None:
    budget = BodyBudget(1 << 30)
    body = b'{ "model" : "fast", "n": 1.50, "big": 123456789012345678901234567890, ' \
           b'"s": "\\u00e9", "pad": "' + b"x" * pad + b'" }'
    routed = await resolve(request(app(budget), body), registry())
    assert routed.handle.name == "chat"
    expected = replaced(body, "fast", "chat")
    assert (routed.body.spool is not None) == (pad > 0)
    assert routed.body.replayable and routed.body.length == len(expected)
    assert await sent(routed.body) == expected
    assert await sent(routed.body) == expected  # again, for a retry
    routed.body.close()
    assert budget.in_use == 0


async def test_a_large_body_holds_a_fixed_share_of_the_budget_not_its_size() -> None:
    budget = BodyBudget(1 << 30)
    routed = await resolve(request(app(budget), chat("chat", pad=5 << 20)), registry())
    assert routed.body.data is None and routed.body.spool is not None
    assert budget.in_use == SPOOL_RESERVE_BYTES
    assert routed.body.length == routed.body.spool.size
    routed.body.close()
    assert budget.in_use == 0


async def test_a_small_body_holds_its_length() -> None:
    budget = BodyBudget(1 << 30)
    body = chat("chat")
    routed = await resolve(request(app(budget), body), registry())
    assert routed.body.data == body and budget.in_use == len(body)
    routed.body.close()
    assert budget.in_use == 0


@pytest.mark.parametrize("pad", [10, 2 << 20], ids=["small", "large"])
async def test_a_body_of_unknown_length_is_kept_in_memory_until_it_proves_large(pad: int) -> None:
    budget = BodyBudget(1 << 30)
    body = chat("fast", pad=pad)
    routed = await resolve(request(app(budget), body, length=False), registry())
    assert (routed.body.spool is not None) == (len(body) > SMALL_BODY_BYTES)
    assert await sent(routed.body) == replaced(body, "fast", "chat")
    routed.body.close()
    assert budget.in_use == 0


async def test_a_compressed_body_is_forwarded_as_decoded_without_its_encoding() -> None:
    body = chat("chat", pad=2 << 20)  # what aiohttp's parser hands on after inflating
    routed = await resolve(request(app(), body, length=False,
                                   headers={"Content-Encoding": "gzip"}), registry())
    assert routed.body.decoded and routed.body.length == len(body)
    assert await sent(routed.body) == body
    routed.body.close()


@pytest.mark.parametrize(("body", "status", "code"), [
    (b'{"model": "chat", "x": [' + b"1," * (1 << 20) + b"]}", 400, "invalid_json"),
    (b'{"model": "chat", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b", " + b" " * (2 << 20)
     + b"}", 400, "invalid_json"),
    (b"[" + b"1," * (1 << 20) + b"1]", 400, "invalid_json"),
    (b'{"model": 7, "pad": "' + b"x" * (2 << 20) + b'"}', 400, "missing_model"),
    (b'{"pad": "' + b"x" * (2 << 20) + b'"}', 400, "missing_model"),
    (b'{"model": "' + b"m" * 2000 + b'", "pad": "' + b"x" * (2 << 20) + b'"}', 400,
     "missing_model"),
    (b'{"model": "nope", "pad": "' + b"x" * (2 << 20) + b'"}', 404, "model_not_found"),
    (b"{not json", 400, "invalid_json"),
    (b"", 400, "missing_model"),
    (b'{"model": "' + b"m" * 2000 + b'"}', 400, "missing_model"),
])
async def test_what_cannot_be_served_is_refused_and_frees_its_memory(
        body: bytes, status: int, code: str) -> None:
    budget = BodyBudget(1 << 30)
    with pytest.raises(Refusal) as refused:
        await resolve(request(app(budget), body), registry())
    assert (refused.value.status, refused.value.code) == (status, code)
    response = refusal_response(refused.value)
    assert json.loads(response.body)["error"]["code"] == code  # type: ignore[arg-type]
    assert budget.in_use == 0


async def test_a_body_over_the_size_limit_is_413_whether_its_length_is_known_or_not() -> None:
    body = chat("chat", pad=3 << 20)
    for length in (True, False):
        with pytest.raises(Refusal) as refused:
            await resolve(request(app(), body, length=length, max_size=2 << 20), registry())
        assert (refused.value.status, refused.value.code) == (413, "body_too_large")


async def test_a_body_that_cannot_be_read_is_400() -> None:
    from aiohttp.web_protocol import RequestPayloadError

    for pad in (10, 2 << 20):
        with pytest.raises(Refusal) as refused:
            await resolve(request(app(), chat("chat", pad=pad), length=False,
                                  error=RequestPayloadError("Can not decode content-encoding")),
                          registry())
        assert (refused.value.status, refused.value.code) == (400, "invalid_body")


async def test_past_the_budget_a_body_waits_then_gets_503() -> None:
    budget = BodyBudget(SPOOL_RESERVE_BYTES, wait=0.05)
    held = await budget.reserve(SPOOL_RESERVE_BYTES)
    with pytest.raises(Refusal) as refused:
        await resolve(request(app(budget), chat("chat", pad=3 << 20)), registry())
    assert (refused.value.status, refused.value.code) == (503, "body_memory_exhausted")
    assert refused.value.retry_after
    held.release()
    routed = await resolve(request(app(budget), chat("chat", pad=3 << 20)), registry())
    routed.body.close()


def wav(seconds: float, rate: int = 16000) -> bytes:
    data = int(seconds * rate) * 2
    return (b"RIFF" + struct.pack("<I", 36 + data) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16)
            + b"data" + struct.pack("<I", data) + bytes(data))


async def test_a_spooled_chat_with_audio_is_estimated_like_one_held_in_memory() -> None:
    payload = {"model": "lim", "max_tokens": 50, "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "what is said here, in a few words?"},
            {"type": "input_audio",
             "input_audio": {"data": base64.b64encode(wav(120)).decode(), "format": "wav"}},
        ]}]}
    body = json.dumps(payload).encode()
    assert len(body) > SMALL_BODY_BYTES
    reg = registry()
    routed = await resolve(request(app(), body), reg)
    assert routed.body.spool is not None and routed.need is not None
    expected = reg.get("limited").estimator.for_json(payload)  # type: ignore[union-attr]
    assert routed.need == expected and routed.need.audio_seconds == 120
    assert await sent(routed.body) == replaced(body, "lim", "limited")
    routed.body.close()


async def test_a_30_mb_body_is_routed_in_little_memory() -> None:
    body = chat("fast", pad=30 << 20)
    req = request(app(), body)
    reg = registry()
    tracemalloc.start()
    try:
        routed = await resolve(req, reg)
        streamed = 0
        async for chunk in routed.body.forwardable():  # type: ignore[union-attr]
            streamed += len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    routed.body.close()
    assert streamed == len(body) - len(b'"fast"') + len(b'"chat"')
    print(f"peak traced memory routing and sending a {len(body) / 1e6:.0f} MB body: "
          f"{peak / 1e6:.2f} MB")
    assert peak < SPOOL_RESERVE_BYTES + (1 << 20)
