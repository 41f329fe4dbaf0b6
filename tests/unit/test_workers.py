"""The multi-worker data plane's coordination, without processes: the control messages,
a worker's mirror of a model (its lease rules and busy/idle edges), and the owner's fence
around a real handle on a FakeClock (a "busy" racing the fence, a worker that dies or does
not answer during one)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aiohttp
import pytest

from supervisor.lifecycle.effects import Effects
from supervisor.lifecycle.lease import Flight
from supervisor.lifecycle.registry import Registry, build_model
from supervisor.observe.metrics import Metrics
from supervisor.proxy.fastpath import DataPlane
from supervisor.proxy.gate import Gate
from supervisor.proxy.inner import InnerPool
from supervisor.rules.table import State
from supervisor.workers import link as link_module
from supervisor.workers import messages, stats
from supervisor.workers.link import Link
from supervisor.workers.mirror import Mirror, Mirrors, MirrorSet
from supervisor.workers.owner import Fleet
from supervisor.workers.relay import Relay
from tests.fakes import (
    SINGLE,
    FakeClock,
    FakeRuntime,
    listening,
    make_handle,
    model_config,
    settle,
    until,
)
from tests.helpers import wait_for

# -- messages ------------------------------------------------------------------------


def test_messages_round_trip_one_line_each() -> None:
    entry = messages.Entry("m", True, "default", "http://127.0.0.1:1")
    line = messages.encode(messages.table([entry], draining=True))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    message = messages.decode(line)
    assert message["draining"] is True
    assert messages.entries(message) == [entry]
    with pytest.raises(ValueError):
        messages.decode(b"[1, 2]")
    with pytest.raises(ValueError):
        messages.decode(b'{"no": "type"}')


async def test_read_gives_messages_in_order_then_none_at_the_end() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(messages.encode({"t": "busy", "m": "a"}) + messages.encode({"t": "ack"}))
    reader.feed_eof()
    assert (await messages.read(reader) or {})["t"] == "busy"
    assert (await messages.read(reader) or {})["t"] == "ack"
    assert await messages.read(reader) is None


# -- the mirror ----------------------------------------------------------------------


class Task:
    def __init__(self) -> None:
        self.cancelled = 0

    def cancel(self, msg: Any | None = None) -> bool:
        self.cancelled += 1
        return True


def mirror(settings: dict[str, Any] | None = None) -> tuple[Mirror, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    return Mirror("m", model_config(settings or SINGLE), sent.append), sent


def ready(m: Mirror, upstream: str = "http://127.0.0.1:19101") -> None:
    m.update(messages.Entry("m", True, "default", upstream))


def test_a_mirror_leases_only_when_the_owner_said_ready_and_tells_only_the_edges() -> None:
    m, sent = mirror()
    assert m.lease_now(None, Task()) is None  # no table yet
    ready(m)
    first, second = m.lease_now(None, Task()), m.lease_now(None, Task())
    assert first is not None and second is not None
    assert sent == [{"t": "busy", "m": "m"}]
    m.release(first)
    m.release(first)  # twice: counted once
    assert sent == [{"t": "busy", "m": "m"}]
    m.release(second)
    assert sent == [{"t": "busy", "m": "m"}, {"t": "idle", "m": "m"}]
    m.close()  # the fence
    assert m.lease_now(None, Task()) is None


def test_flights_are_told_apart_by_identity_not_by_their_fields() -> None:
    """Two flights with equal fields (no task) are two requests: ending one twice leaves
    the other in flight (kept in a dict by identity, not found by equality in a list)."""
    m, sent = mirror()
    ready(m)
    first, second = m.lease_now(None, None), m.lease_now(None, None)
    assert first is not None and second is not None
    m.release(first)
    m.release(first)
    assert m.in_flight == 1 and sent == [{"t": "busy", "m": "m"}]
    m.release(second)
    assert m.in_flight == 0 and sent[-1] == {"t": "idle", "m": "m"}


def test_a_mirror_follows_the_owner_profile_and_upstream() -> None:
    m, _ = mirror()
    ready(m, "http://10.0.0.7:19101")  # a Swarm task on another node
    assert m.upstream == "http://10.0.0.7:19101"
    m.update(messages.Entry("m", True, "no-such-profile", "http://x"))
    assert not m.ready


def test_models_the_table_leaves_out_are_not_forwarded() -> None:
    plain, _ = mirror()
    registry = Mirrors([plain])
    ready(plain)
    registry.apply(messages.table([], draining=False))
    assert not plain.ready
    assert registry.get("m") is plain


def test_a_replica_set_forwards_to_its_ready_replicas_and_busy_names_the_replica() -> None:
    sent: list[dict[str, Any]] = []
    config = model_config({"replicas": [
        {"service": "a", "upstream": "http://127.0.0.1:19111"},
        {"service": "b", "upstream": "http://127.0.0.1:19112"}], "target_concurrency": 4})
    vox = MirrorSet("vox", config, sent.append)
    registry = Mirrors([vox])
    assert registry.get("vox") is vox and vox.lease_now(None, Task()) is None
    registry.apply(messages.table([
        messages.Entry("vox#1", False, "default", "http://127.0.0.1:19111"),
        messages.Entry("vox#2", True, "default", "http://127.0.0.1:19112")], draining=False))
    lease = vox.lease_now(None, Task())
    assert lease is not None and lease.replica.upstream == "http://127.0.0.1:19112"
    assert sent == [{"t": "busy", "m": "vox#2"}]
    registry.apply(messages.table([
        messages.Entry("vox#1", True, "default", "http://127.0.0.1:19111"),
        messages.Entry("vox#2", True, "default", "http://127.0.0.1:19112")], draining=False))
    second = vox.lease_now(None, Task())  # the replica with fewer of this worker's requests
    assert second is not None and second.replica.name == "vox#1"
    vox.release(lease)
    vox.release(second)
    assert sent[-2:] == [{"t": "idle", "m": "vox#2"}, {"t": "idle", "m": "vox#1"}]


def test_abort_cancels_every_exchange_with_its_code() -> None:
    m, _ = mirror()
    ready(m)
    tasks = [Task(), Task()]
    leases = [m.lease_now(None, t) for t in tasks]
    m.abort("upstream_died")
    assert [t.cancelled for t in tasks] == [1, 1]
    assert [lease.flight.aborted for lease in leases if lease] == ["upstream_died"] * 2


# -- the owner's fence ----------------------------------------------------------------


class Writer:
    """A control channel's owner end: what the owner sent, decoded."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def write(self, data: bytes) -> None:
        self.sent.extend(messages.decode(line) for line in data.splitlines())

    def is_closing(self) -> bool:
        return False

    def closes(self) -> list[int]:
        return [m["id"] for m in self.sent if m["t"] == "close"]


def fleet_with(handle: Any, workers: int = 1) -> tuple[Fleet, list[Link], list[Writer]]:
    fleet = Fleet(workers + 1, "/dev/null", "/nonexistent", Registry([handle]),
                  Metrics(snapshots=lambda: [], gpu=lambda: None), Gate(), handle.listeners)
    writers = []
    for link in fleet.links:
        writer = Writer()
        link.writer = cast(asyncio.StreamWriter, writer)
        writers.append(writer)
    fleet.listeners.add(fleet)  # as start() does, without processes
    return fleet, fleet.links, writers


async def ready_handle(**overrides: Any) -> Any:
    handle, runtime, clock = make_handle(SINGLE, idle_timeout="10s", **overrides)
    runtime.auto_ready.add("chat")
    async with handle.lease(None):
        pass
    assert handle.state is State.READY
    return handle, clock


async def test_a_busy_that_races_the_fence_keeps_the_model_up() -> None:
    handle, clock = await ready_handle()
    fleet, (link,), (writer,) = fleet_with(handle)
    clock.advance(10)  # the idle timer: a fence first, not a stop
    await until(lambda: writer.closes(), "the fence's close")
    assert handle.state is State.READY and "m" in fleet.fencing
    fleet._busy(link, "m")  # the worker had leased just before it saw the close
    link.acked(writer.closes()[0])
    await until(lambda: not fleet.fencing, "the fence to end")
    assert handle.state is State.READY and handle.in_flight == 1
    link.idle("m")  # its last request ends: the timer is armed again, and stops it
    clock.advance(10)
    await until(lambda: len(writer.closes()) == 2, "the second fence")
    link.acked(writer.closes()[1])
    await until(lambda: handle.state is State.STOPPED, "the idle stop")
    await handle.close()


async def test_a_timer_re_armed_during_the_fence_voids_it() -> None:
    handle, clock = await ready_handle()
    fleet, (link,), (writer,) = fleet_with(handle)
    clock.advance(10)
    await until(lambda: writer.closes(), "the fence's close")
    fleet._busy(link, "m")
    link.idle("m")  # a request came and went during the fence: idle counts from now
    link.acked(writer.closes()[0])
    await until(lambda: not fleet.fencing, "the fence to end")
    await settle()
    assert handle.state is State.READY
    table = [m for m in writer.sent if m["t"] == "table"][-1]
    assert messages.entries(table)[0].ready  # open again after the fence
    await handle.close()


async def test_a_worker_that_dies_during_the_fence_releases_its_flights() -> None:
    handle, clock = await ready_handle()
    fleet, (link,), (writer,) = fleet_with(handle)
    fleet._busy(link, "m")
    fleet._busy(link, "m")  # one virtual flight per busy worker, not per message
    assert handle.in_flight == 1
    link.gone()
    assert handle.in_flight == 0 and not link.flights
    link.writer = cast(asyncio.StreamWriter, writer)  # restarted
    clock.advance(10)
    await until(lambda: writer.closes(), "the fence's close")
    assert not messages.entries(fleet._table())[0].ready  # closed for a restarted one too
    link.gone()  # dies before it acks: the fence goes on without it
    await until(lambda: handle.state is State.STOPPED, "the idle stop")
    await handle.close()


async def test_a_worker_that_does_not_answer_is_given_up(monkeypatch) -> None:
    monkeypatch.setattr(link_module, "ACK_SECONDS", 0.05)
    handle, _ = await ready_handle()
    fleet, (link,), _ = fleet_with(handle)
    fleet._busy(link, "m")
    link.pid = None  # no process to kill here
    handle.evict(False, "for a test")  # an eviction waits for the fence too
    await wait_for(lambda: not link.alive, 5, "the fence to give the worker up")
    await until(lambda: handle.state is State.STOPPED, "the eviction")
    assert handle.in_flight == 0
    await handle.close()


async def test_a_force_stop_aborts_the_workers_requests() -> None:
    handle, _ = await ready_handle()
    fleet, (link,), (writer,) = fleet_with(handle)
    fleet._busy(link, "m")
    handle.stop(force=True)
    await settle()
    assert {"t": "abort", "m": "m", "code": "model_stopped"} in writer.sent
    link.idle("m")  # the worker's exchanges answered and released
    await until(lambda: handle.state is State.STOPPED and handle.in_flight == 0)
    fleet._busy(link, "m")  # a lease on a stale table: aborted at once
    assert writer.sent[-1]["t"] == "abort"
    await handle.close()


# -- metrics across processes ----------------------------------------------------------


def test_snapshots_add_up_and_merge_into_the_owner_series() -> None:
    worker = Metrics(snapshots=lambda: [], gpu=lambda: None)
    worker.request("m", 200, 0.01, 0.005, cold_start=False, first=False)
    one = stats.snapshot(worker)
    both = stats.add(one, one)
    assert stats.forwarded(both) == 2
    owner = Metrics(snapshots=lambda: [], gpu=lambda: None)
    owner.request("m", 200, 0.01, 0.005, cold_start=False, first=False)
    families = {f.name: f for f in stats.Merged(owner, both).collect()}
    total = [s.value for s in families["supervisor_requests"].samples
             if s.name == "supervisor_requests_total"]
    assert total == [3.0]
    assert Flight(None).aborted is None  # (what VirtualTask reads when none was set)


# -- the relay -------------------------------------------------------------------------


async def test_a_relayed_answer_that_closes_ends_both_connections(tmp_path) -> None:
    """The owner answers `Connection: close` and leaves its side open: the worker ends its
    connection to the owner and the client's (as aiohttp would close the client's)."""
    owner_closed = asyncio.Event()

    async def owner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await reader.read()  # until the worker closes
        owner_closed.set()
        writer.close()

    path = str(tmp_path / "owner.sock")
    owner_server = await asyncio.start_unix_server(owner, path)
    plane = DataPlane()
    plane.inner = InnerPool(lambda: Relay(path), idle=2, close_after=True)
    server = await asyncio.get_running_loop().create_server(plane.protocol, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)  # to the end: the client's closed
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
    await asyncio.wait_for(owner_closed.wait(), 5)
    writer.close()
    server.close()
    owner_server.close()


async def test_a_workers_busy_for_a_replica_counts_in_flight_on_that_replica() -> None:
    """Workers forward for a model with replicas (MirrorSet says busy for `vox#2`): the
    owner counts that flight on the replica that serves it, and on no other."""
    runtime, clock = FakeRuntime(auto_ready={"vox-a", "vox-b"}), FakeClock()
    effects = Effects(runtime, cast(aiohttp.ClientSession, None), clock, probe=runtime.probe)
    metrics = Metrics(snapshots=lambda: [], gpu=lambda: None)
    listeners = listening(metrics)
    vox = build_model("vox", model_config({
        "replicas": [{"service": "vox-a", "upstream": "http://127.0.0.1:19111"},
                     {"service": "vox-b", "upstream": "http://127.0.0.1:19112"}],
        "min_replicas": 2, "idle_timeout": "10s", "min_residency": "0s"}),
        effects, metrics, listeners)
    for replica in vox.replicas:
        runtime.health_urls[replica.profile.service] = replica.profile.health_url
    vox.adopt(set())  # start-up: min_replicas are started
    await until(lambda: all(r.state is State.READY for r in vox.replicas), "both replicas up")
    fleet = Fleet(2, "/dev/null", "/nonexistent", Registry([vox]), metrics, Gate(), listeners)
    (link,) = fleet.links
    link.writer = cast(asyncio.StreamWriter, Writer())
    fleet._busy(link, "vox#2")
    assert [r.in_flight for r in vox.replicas] == [0, 1]
    assert vox.in_flight == 1 and not [m for m in link_sent(link) if m["t"] == "abort"]
    link.idle("vox#2")
    assert [r.in_flight for r in vox.replicas] == [0, 0]
    await vox.close()


def link_sent(link: Link) -> list[dict[str, Any]]:
    return cast(Writer, link.writer).sent
