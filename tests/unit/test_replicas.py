"""A model with replicas, driven end to end on fakes (no Docker, no HTTP, no real time):
routing by requests outstanding, a second replica started by the load and stopped once
the load is gone, min_replicas, profile swaps of the whole set, the GPU budget per replica,
a dead replica, operator actions and reloads."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import pytest

from supervisor.config import Config, ModelConfig
from supervisor.gpus.budget import GpuBudget
from supervisor.gpus.inventory import Inventory
from supervisor.gpus.measured import Measured
from supervisor.gpus.resolver import GpuNeeds
from supervisor.lifecycle.effects import Effects
from supervisor.lifecycle.handle import ModelHandle
from supervisor.lifecycle.registry import Model, Registry, build_model, snapshot_rows
from supervisor.lifecycle.replicas import ReplicaSet
from supervisor.observe.metrics import Metrics
from supervisor.rules.table import State
from tests.fakes import Client, FakeClock, FakeRuntime, listening, model_config, settle, until

GIB = 1 << 30
VOX: dict[str, Any] = {
    "replicas": [{"service": "vox-a", "upstream": "http://127.0.0.1:19111"},
                 {"service": "vox-b", "upstream": "http://127.0.0.1:19112"}],
    "target_concurrency": 2, "idle_timeout": "10s", "min_residency": "0s",
}
LONG: dict[str, Any] = {  # two profiles, each replica runs each as a service of its own
    "default_profile": "short",
    "profiles": {"short": {"max_model_len": 2048}, "long": {"max_model_len": 8192}},
    "replicas": [
        {"upstream": "http://127.0.0.1:19111", "profiles": {"short": "a-short", "long": "a-long"}},
        {"upstream": "http://127.0.0.1:19112", "profiles": {"short": "b-short", "long": "b-long"}},
    ],
    "target_concurrency": 1, "min_replicas": 2, "min_residency": "0s",
}


class Rig:
    def __init__(self, settings: dict[str, Any], *, others: dict[str, Any] | None = None,
                 gpus: dict[int, str] | None = None) -> None:
        self.runtime, self.clock = FakeRuntime(), FakeClock()
        self.effects = Effects(self.runtime, cast(aiohttp.ClientSession, None), self.clock,
                               probe=self.runtime.probe)
        self.metrics = Metrics(snapshots=lambda: [], gpu=lambda: None)
        self.listeners = listening(self.metrics)
        raw = {"vox": settings, **(others or {})}
        models = {n: model_config(s) for n, s in raw.items()}
        self.models: dict[str, Model] = {
            n: build_model(n, m, self.effects, self.metrics, self.listeners)
            for n, m in models.items()}
        self.registry = Registry(self.models.values())
        for unit in self.registry.units():
            for p in unit.profiles:
                self.runtime.health_urls[p.service] = p.health_url
                self.runtime.auto_ready.add(p.service)
        if gpus:
            config = Config(compose={"file": "c.yml", "project": "p"}, gpus=gpus,
                            models=raw)
            needs = GpuNeeds(config, Inventory(totals={g: 8 * GIB for g in gpus}), {},
                             Measured())
            self.effects.gpus = GpuBudget(needs, self.clock, handles=self.registry.units)
            self.listeners.add(self.effects.gpus)
        self.clients: list[Client] = []

    @property
    def vox(self) -> ReplicaSet:
        model = self.models["vox"]
        assert isinstance(model, ReplicaSet)
        return model

    def request(self, tokens: int | None = None, *, keep: bool = True) -> Client:
        client = Client(cast(ModelHandle, self.vox), tokens, keep=keep)
        self.clients.append(client)
        return client

    def states(self) -> list[State]:
        return [r.state for r in self.vox.replicas]


@pytest.fixture
async def rig() -> AsyncIterator[Any]:
    made: list[Rig] = []

    def build(settings: dict[str, Any], **kw: Any) -> Rig:
        made.append(Rig(settings, **kw))
        return made[-1]

    yield build
    for r in made:
        for c in r.clients:
            c.task.cancel()
        for model in r.models.values():
            await model.close()


def served_by(clients: list[Client]) -> list[str]:
    return [c.lease.replica.name for c in clients if c.lease is not None]


async def test_a_model_without_replicas_is_one_handle_as_before() -> None:
    config = model_config({"service": "chat", "upstream": "http://127.0.0.1:19101"})
    effects = Effects(FakeRuntime(), cast(aiohttp.ClientSession, None), FakeClock())
    model = build_model("chat", config, effects, Metrics(snapshots=lambda: []))
    assert type(model) is ModelHandle
    assert Registry([model]).units() == [model]


async def test_a_cold_model_starts_one_replica_and_the_load_starts_the_second(rig) -> None:
    r = rig(VOX)
    first = [r.request() for _ in range(2)]
    await until(lambda: all(c.in_flight for c in first), "two served")
    assert r.runtime.starts == ["vox-a"]  # 2 outstanding on one replica: within the target
    assert served_by(first) == ["vox#1", "vox#1"]
    assert all(c.lease is not None and c.lease.cold_start for c in first)

    third = r.request()  # 3 > 2 per replica up: the second replica starts
    await until(lambda: third.in_flight and r.states()[1] is State.READY, "vox#2 ready")
    assert r.runtime.starts == ["vox-a", "vox-b"]
    assert served_by([third]) == ["vox#1"]  # a ready replica serves; none is held meanwhile

    more = [r.request() for _ in range(3)]  # the fewest outstanding: vox#2 until even
    await until(lambda: all(c.in_flight for c in more), "three more served")
    assert served_by(more) == ["vox#2", "vox#2", "vox#2"]
    assert [x.in_flight for x in r.vox.replicas] == [3, 3]
    assert r.vox.granted == [3, 3]
    assert r.runtime.starts == ["vox-a", "vox-b"]  # two replicas: nothing more to start


async def test_the_extra_replica_stops_after_idle_timeout_once_the_load_is_gone(rig) -> None:
    r = rig({**VOX, "min_replicas": 1})
    r.vox.adopt(set())  # start-up: min_replicas runs at once
    await until(lambda: r.states() == [State.READY, State.STOPPED], "vox#1 kept up")
    load = [r.request() for _ in range(4)]
    await until(lambda: r.states()[1] is State.READY and all(c.in_flight for c in load))
    for c in load:
        c.finish()
    await until(lambda: all(c.task.done() for c in load), "the load ends")

    r.clock.advance(9.9)
    await settle()
    assert r.states() == [State.READY, State.READY]
    r.clock.advance(0.1)
    await until(lambda: r.states() == [State.READY, State.STOPPED], "vox#2 stopped")
    assert [s for s, _ in r.runtime.stops] == ["vox-b"]
    r.clock.advance(1000)  # min_replicas: the first is kept
    await settle()
    assert r.states() == [State.READY, State.STOPPED]


async def test_a_steady_load_that_fits_on_one_replica_drains_and_stops_the_other(rig) -> None:
    r = rig({**VOX, "idle_timeout": "60s"})
    busy = [r.request() for _ in range(3)]
    await until(lambda: r.states() == [State.READY, State.READY] and all(
        c.in_flight for c in busy), "both up")
    for c in busy[:2]:  # 1 in flight: the load fits on one replica (surplus from now)
        c.finish()
    await until(lambda: r.vox.in_flight == 1)
    r.clock.advance(25)
    assert (await r.request(keep=False).result()).replica.name == "vox#2"  # the fewest
    r.clock.advance(25)
    late = r.request()  # vox#2 again: its own idle timer never runs out
    await until(lambda: late.in_flight)
    assert served_by([late]) == ["vox#2"]
    r.clock.advance(10)  # 60 s since the load fitted on one replica
    await until(lambda: r.states()[1] is State.DRAINING, "vox#2 drains")
    assert not late.task.done()  # what it serves finishes: a drain, not a cut
    late.finish()
    await until(lambda: r.states()[1] is State.STOPPED, "vox#2 stopped")
    assert [s for s, _ in r.runtime.stops] == ["vox-b"]
    assert r.states()[0] is State.READY


async def test_min_replicas_start_at_startup_and_a_pin_keeps_the_first(rig) -> None:
    r = rig({**VOX, "min_replicas": 2})
    r.runtime.run("vox-b")
    r.vox.adopt({"vox-b"})  # vox#2 already runs: adopted; vox#1 is started
    await until(lambda: r.states() == [State.READY, State.READY], "both up")
    assert r.runtime.starts == ["vox-a"]
    assert r.vox.scheduled == set() and not r.vox.is_pinned  # min_replicas is no pin
    r.clock.advance(1000)
    await settle()
    assert r.states() == [State.READY, State.READY]


async def test_a_request_too_long_for_the_running_profile_swaps_every_replica(rig) -> None:
    r = rig(LONG)
    r.vox.adopt(set())
    await until(lambda: r.states() == [State.READY, State.READY], "both on short")
    short = r.request()
    await until(lambda: short.in_flight)
    long = r.request(5000)  # held on vox#2 (nothing in flight: it swaps at once)
    await until(lambda: long.in_flight, "served on the long profile")
    assert long.lease is not None and long.lease.profile.name == "long"
    assert long.lease.replica.name == "vox#2"
    assert r.states()[0] is State.DRAINING  # vox#1 follows once `short` is done
    short.finish()
    await short.result()
    await until(lambda: all(x.profile.name == "long" and x.state is State.READY
                            for x in r.vox.replicas), "both on long")
    assert sorted(r.runtime.starts) == ["a-long", "a-short", "b-long", "b-short"]


async def test_each_replica_is_admitted_by_the_gpu_budget_on_its_own_gpus(rig) -> None:
    # vox#1 on GPU 0, vox#2 on GPU 1 where an idle model sits: the second start evicts it.
    settings = {**VOX, "vram": "6GiB"}
    settings["replicas"] = [{**VOX["replicas"][0], "gpus": [0]},
                            {**VOX["replicas"][1], "gpus": [1]}]
    other = {"service": "tts", "upstream": "http://127.0.0.1:19120", "gpus": [1],
             "vram": "4GiB", "min_residency": "0s"}
    r = rig(settings, others={"tts": other}, gpus={0: "8GiB", 1: "8GiB"})
    tts = r.models["tts"]
    await Client(cast(ModelHandle, tts), keep=False).result()
    load = [r.request() for _ in range(3)]
    await until(lambda: r.states()[1] is State.READY, "vox#2 up")
    assert tts.state is State.STOPPED
    assert r.runtime.calls[-3:] == [("start", "vox-a"), ("stop", "tts"), ("start", "vox-b")]
    assert r.effects.gpus.reservations() == {"vox#1": {0: 6 * GIB}, "vox#2": {1: 6 * GIB}}
    rows = snapshot_rows(r.vox, r.effects.gpus.reservations())
    assert rows[0].gpu_reserved == {0: 6 * GIB, 1: 6 * GIB}
    assert [(s.model, s.replica_of) for s in rows] == [
        ("vox", ""), ("vox#1", "vox"), ("vox#2", "vox")]
    for c in load:
        c.finish()


async def test_a_replica_whose_container_died_is_passed_over(rig) -> None:
    r = rig({**VOX, "min_replicas": 2})
    r.vox.adopt(set())
    await until(lambda: r.states() == [State.READY, State.READY])
    gate = r.runtime.block_starts()
    r.runtime.exit("vox-a")
    assert await r.vox.replicas[0].upstream_failed() == "exited"  # as a refused connection
    assert r.states()[0] is State.STARTING  # kept by min_replicas: restarted at once
    again = r.request(keep=False)
    assert (await again.result()).replica.name == "vox#2"
    gate.set()
    await until(lambda: r.states() == [State.READY, State.READY])


async def test_operator_actions_act_on_the_model(rig) -> None:
    r = rig({**VOX, "min_replicas": 2})
    r.vox.adopt(set())
    await until(lambda: r.states() == [State.READY, State.READY])
    r.vox.set_pinned(True)
    assert r.vox.pinned and r.vox.replicas[0].pinned and not r.vox.replicas[1].pinned
    r.vox.set_idle_timeout(42)
    assert [x.idle_timeout for x in r.vox.replicas] == [42, 42]
    r.vox.stop()
    await until(lambda: r.states() == [State.STOPPED, State.STOPPED], "all stopped")
    r.vox.start()  # the first; the load brings the others
    await until(lambda: r.states() == [State.READY, State.STOPPED])


async def test_a_reload_adds_and_drops_replicas(rig) -> None:
    r = rig({**VOX, "min_replicas": 2})
    r.vox.adopt(set())
    await until(lambda: r.states() == [State.READY, State.READY])
    busy = r.request()
    await until(lambda: busy.in_flight)
    one = {**VOX, "replicas": VOX["replicas"][:1]}
    r.vox.reconfigure(ModelConfig.model_validate({**one, "health_interval": 0}))
    assert [x.name for x in r.vox.replicas] == ["vox#1"]
    await until(lambda: not r.runtime.is_running("vox-b") or busy.lease is not None)
    busy.finish()
    await until(lambda: not r.runtime.is_running("vox-b"), "the dropped replica stopped")
    r.vox.reconfigure(ModelConfig.model_validate({**VOX, "health_interval": 0}))
    assert [x.name for x in r.vox.replicas] == ["vox#1", "vox#2"]
