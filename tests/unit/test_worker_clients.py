"""Named clients with `workers: N > 1`: a worker leaves a limited client's requests to the
owner, whose one gate counts them across processes (it takes no token or slot of its
own), and sends what its clients used to the owner, which adds it once."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from supervisor.clients.report import usage_report
from supervisor.clients.table import Client, Clients
from supervisor.lifecycle.listeners import Listeners
from supervisor.lifecycle.registry import Registry
from supervisor.observe.metrics import Metrics
from supervisor.proxy.context import Context
from supervisor.proxy.fastpath import DataPlane
from supervisor.proxy.gate import Gate
from supervisor.proxy.inner import InnerPool
from supervisor.workers import messages, usage_feed
from supervisor.workers.journal_feed import BACKLOG
from supervisor.workers.mirror import Mirror, Mirrors
from supervisor.workers.owner import Fleet
from supervisor.workers.relay import Relay
from tests.fakes import SINGLE, model_config
from tests.unit.test_worker_journal import Channel, owner_reads

ANSWER = {"usage": {"prompt_tokens": 3, "completion_tokens": 2}}


def clients() -> Clients:
    """`capped` (a slot and a token bucket), `metered` (a bucket only), `free` (none)."""
    named = {"capped": Client("capped", per_minute=60, concurrent=1),
             "metered": Client("metered", per_minute=60), "free": Client("free")}
    keys = {hashlib.sha256(f"sk-{name}".encode()).digest(): c for name, c in named.items()}
    return Clients(named, keys)


def bearer(name: str) -> bytes:
    return f"Bearer sk-{name}".encode()


def test_a_worker_context_leaves_limited_clients_to_the_owner() -> None:
    table = clients()
    registry = Mirrors([])
    owner = Context(registry, Metrics(), Gate(table))
    worker = Context(registry, Metrics(), Gate(table), limits=False)
    for name in ("capped", "metered"):
        assert owner.client_of(bearer(name)) is table.named[name]
        assert worker.client_of(bearer(name)) is None  # the application's: the relay
    assert worker.client_of(bearer("free")) is table.named["free"]


async def serve(app: web.Application, *, unix: str | None = None) -> AsyncIterator[int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.UnixSite(runner, unix) if unix else web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield 0 if unix else runner.addresses[0][1]
    finally:
        await runner.cleanup()


def answering(who: str) -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"from": who, **ANSWER})
    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    return app


@pytest.fixture
async def model_port() -> AsyncIterator[int]:
    async for port in serve(answering("model")):
        yield port


@pytest.fixture
async def owner_socket(tmp_path: Path) -> AsyncIterator[str]:
    path = str(tmp_path / "owner.sock")
    async for _ in serve(answering("owner"), unix=path):
        yield path


async def test_a_workers_fast_path_forwards_only_unlimited_clients(
        model_port: int, owner_socket: str) -> None:
    """A worker's listener with a ready model: the unlimited client's request is forwarded
    to the model's server; each limited client's goes to the owner, its token and slot
    untouched in the worker; the worker's usage counts only what it forwarded."""
    mirror = Mirror("m", model_config(SINGLE), lambda message: None)
    mirror.update(messages.Entry("m", True, "default", f"http://127.0.0.1:{model_port}"))
    table = clients()
    plane = DataPlane(relay_to=owner_socket)
    plane.start(InnerPool(lambda: Relay(owner_socket), idle=2, close_after=True),
                Context(Mirrors([mirror]), Metrics(), Gate(table), limits=False))
    server = await asyncio.get_running_loop().create_server(plane.protocol, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions"
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    try:
        async with aiohttp.ClientSession() as http:
            answered = {}
            for name in ("free", "capped", "metered"):
                async with http.post(url, json=body,
                                     headers={"Authorization": f"Bearer sk-{name}"}) as r:
                    assert r.status == 200
                    answered[name] = (await r.json())["from"]
    finally:
        server.close()
        await plane.shutdown(None)
    assert answered == {"free": "model", "capped": "owner", "metered": "owner"}
    capped, metered = table.named["capped"], table.named["metered"]
    assert capped.bucket is not None and capped.bucket.tokens == capped.bucket.capacity
    assert capped.slots is not None and capped.slots.running == [] and capped.slots.mean is None
    assert metered.bucket is not None and metered.bucket.tokens == metered.bucket.capacity
    assert not capped.usage and not metered.usage  # the owner counts theirs
    assert table.named["free"].usage["m"].requests == 1
    assert table.named["free"].usage["m"].prompt_tokens == 3


# -- usage ---------------------------------------------------------------------------


def use(client: Client, model: str, seconds: float, tokens: tuple[int, int] | None) -> None:
    client.used(model).add(seconds, 0.0, tokens)


def fleet(owner: Clients) -> Fleet:
    return Fleet(2, "/dev/null", "/nonexistent", Registry([]),
                 Metrics(snapshots=lambda: [], gpu=lambda: None), Gate(owner), Listeners())


async def test_a_workers_usage_reaches_the_owner_once_over_two_ticks() -> None:
    worker, owner = clients(), clients()
    use(owner.named["free"], "m", 1.0, (1, 1))  # the owner's own request
    channel = Channel()
    use(worker.named["free"], "m", 0.5, (10, 5))
    use(worker.named["free"], "m", 0.5, (10, 5))
    use(worker.anonymous, "e", 0.25, None)
    usage_feed.ship(worker, channel.send, lambda: 0)  # tick 1
    use(worker.named["free"], "m", 0.5, (10, 5))
    usage_feed.ship(worker, channel.send, lambda: 0)  # tick 2: only what came since
    usage_feed.ship(worker, channel.send, lambda: 0)  # tick 3: nothing new, nothing sent
    assert len(channel.sent("usage")) == 2
    assert not any(c.usage for c in worker.every())  # reset once sent
    await owner_reads(fleet(owner), channel.lines)
    report = usage_report(owner)["clients"]
    assert report["free"]["models"]["m"] == {
        "requests": 4, "seconds": 2.5, "held_seconds": 0.0, "prompt_tokens": 31,
        "completion_tokens": 16}
    assert report["anonymous"]["models"]["e"]["requests"] == 1
    assert report["capped"]["total"]["requests"] == 0


async def test_the_owner_leaves_out_unknown_clients_and_bad_messages(
        caplog: pytest.LogCaptureFixture) -> None:
    worker, owner = Clients({"gone": Client("gone"), "free": Client("free")}), clients()
    use(worker.named["gone"], "m", 1.0, None)  # a client a reload removed in the owner
    use(worker.named["free"], "m", 1.0, None)
    channel = Channel()
    usage_feed.ship(worker, channel.send, lambda: 0)
    bad: list[dict[str, Any]] = [{"t": "usage", "rows": [["free", "m", 1, 1.0]]},
                                 {"t": "usage", "rows": [["free", "m", "x", 1, 1, 1, 1]]}]
    for message in bad:
        channel.send(message)
    with caplog.at_level(logging.WARNING):
        await owner_reads(fleet(owner), channel.lines)
    assert "gone" not in usage_report(owner)["clients"]
    assert owner.named["free"].usage["m"].requests == 1
    assert caplog.text.count("a usage message that is not one") == 2


def test_usage_waits_summed_while_the_owner_reads_slowly() -> None:
    worker, channel = clients(), Channel()
    for _ in range(3):
        use(worker.named["free"], "m", 1.0, None)
        usage_feed.ship(worker, channel.send, lambda: BACKLOG)
    assert not channel.sent("usage")
    usage_feed.ship(worker, channel.send, lambda: 0)
    (message,) = channel.sent("usage")
    assert message["rows"] == [["free", "m", 3, 3.0, 0.0, 0, 0]]
