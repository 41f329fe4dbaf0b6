"""`model-supervisor worker`: a process the owner spawns (workers/owner.py) that binds the
proxy port with SO_REUSEPORT and runs only the fast path, against mirrors of the models
(mirror.py) that the owner keeps up to date over the control channel; what it does not
forward goes to the owner over its private Unix socket (relay.py), and so do the requests
of clients with limits (only the owner's gate counts them across processes). What its
clients used goes to the owner once a second (usage_feed.py). It exits when the channel
ends: the owner is gone, and a worker without one must not serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from collections.abc import Callable

from supervisor.auth import upstream_key
from supervisor.clients.table import build_clients
from supervisor.config import Config, host_port
from supervisor.observe.metrics import Metrics
from supervisor.proxy.context import Context
from supervisor.proxy.fastpath import DataPlane
from supervisor.proxy.gate import Gate
from supervisor.proxy.inner import InnerPool
from supervisor.proxy.limits import LimitedServer, connection_limit, listen
from supervisor.tokens.estimate import load_estimator
from supervisor.workers import stats, usage_feed
from supervisor.workers.journal_feed import JournalFeed
from supervisor.workers.messages import LINE_LIMIT, Message, encode, read
from supervisor.workers.mirror import Mirror, Mirrors, MirrorSet
from supervisor.workers.relay import Relay

log = logging.getLogger(__name__)

STATS_SECONDS = 1.0
GRACE_SECONDS = 5.0  # on SIGTERM: how long the requests it forwards may take to end
FLUSH_SECONDS = 1.0  # then, for its last messages to reach the owner (within STOP_SECONDS)
RELAY_IDLE = 16  # unused connections to the owner it keeps (each is a descriptor there)


async def run_worker(config: Config, fd: int, owner_socket: str) -> None:
    channel = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=channel, limit=LINE_LIMIT)

    quiet = asyncio.Event()  # set when its last request in flight ended

    def send(message: Message) -> None:
        if message["t"] == "idle" and not any(m.in_flight for m in units):
            quiet.set()
        if not writer.is_closing():
            writer.write(encode(message))

    mirrors = [(Mirror if model.replicas is None else MirrorSet)(name, model, send)
               for name, model in config.models.items()]
    for mirror in mirrors:
        estimator = await asyncio.to_thread(load_estimator, mirror.config)
        key = upstream_key(mirror.name, mirror.config)
        mirror.configure(estimator, {"Authorization": f"Bearer {key}"} if key else {})
    registry = Mirrors(mirrors)
    units = list(registry.units.values())
    metrics = Metrics()
    gate = Gate(build_clients(config), retry_after=config.drain_retry_after)
    feed = JournalFeed() if config.journal is not None else None  # none: nothing kept
    plane = DataPlane(config.http, relay_to=owner_socket)  # WebSockets go to the owner
    plane.start(InnerPool(lambda: Relay(owner_socket), idle=RELAY_IDLE, close_after=True),
                Context(registry, metrics, gate, feed, limits=False))
    host, port = host_port(config.listen)
    limit = connection_limit(config.max_connections, config.fd_reserve)
    server = LimitedServer(plane.protocol, listen(host, port, 1024, reuse_port=True), limit,
                           "worker listener")
    await server.start_serving()
    send({"t": "hello", "pid": os.getpid()})
    def report(backlog: Callable[[], int]) -> None:
        send({"t": "stats", "stats": stats.snapshot(metrics),
              "in_flight": sum(m.in_flight for m in units)})
        usage_feed.ship(gate.clients, send, backlog)
        if feed is not None:
            feed.ship(send, backlog)

    reporter = asyncio.create_task(_report(report, writer))
    loop = asyncio.get_running_loop()
    control = asyncio.create_task(_obey(reader, registry, gate, send))
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopped = asyncio.create_task(stop.wait())
    gc.collect()
    gc.freeze()
    await asyncio.wait((control, stopped), return_when=asyncio.FIRST_COMPLETED)
    server.close()  # no new clients; the owner and the other workers take them
    if not control.done():  # a stop, not a lost owner: let what it forwards end, still
        await _drained(units, quiet, GRACE_SECONDS)  # obeying (a fence, an abort)
        control.cancel()
    stopped.cancel()
    reporter.cancel()
    await plane.shutdown(None)
    report(lambda: 0)  # its last totals, usage and journal rows (BUFFER at most)
    with contextlib.suppress(ConnectionError, TimeoutError):
        await asyncio.wait_for(writer.drain(), FLUSH_SECONDS)  # before the loop ends
    writer.close()


async def _drained(mirrors: list[Mirror], quiet: asyncio.Event, within: float) -> None:
    """Until no request it forwards is in flight, or `within` seconds have passed."""
    quiet.clear()
    if any(m.in_flight for m in mirrors):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(quiet.wait(), within)


async def _obey(reader: asyncio.StreamReader, registry: Mirrors, gate: Gate,
                send: Callable[[Message], None]) -> None:
    """The owner's messages, in order, until the channel ends."""
    while (message := await read(reader)) is not None:
        kind = message["t"]
        if kind == "table":
            registry.apply(message)
            gate.draining = bool(message.get("draining"))
        elif kind == "close":
            mirror = registry.units.get(message["m"])
            if mirror is not None:
                mirror.close()
            send({"t": "ack", "id": message["id"]})
        elif kind == "abort":
            mirror = registry.units.get(message["m"])
            if mirror is not None:
                mirror.abort(str(message.get("code") or "model_stopped"))
    log.info("worker %d: the owner's channel ended; exiting", os.getpid())


async def _report(report: Callable[[Callable[[], int]], None],
                  writer: asyncio.StreamWriter) -> None:
    """About once a second: its totals, what its clients used, its journal rows (the last
    two held back while the owner reads slowly: `writer`'s buffer)."""
    while True:
        await asyncio.sleep(STATS_SECONDS)
        report(writer.transport.get_write_buffer_size)
