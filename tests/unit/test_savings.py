"""The savings account on a FakeClock: state seconds, GPU memory held and given back, starts,
wakes and what held requests waited, since the start and per UTC day, and as counters."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from supervisor.gpus.budget import GpuBudget
from supervisor.lifecycle.lease import Flight
from supervisor.observe.gpu import Device, GpuSample, GpuSampler, ModelMemory
from supervisor.rules.profiles import profiles_of
from supervisor.rules.table import State
from supervisor.savings.account import SavingsAccount
from supervisor.savings.figures import EnergyMeter, gpu_sizer
from supervisor.savings.metrics import SavingsCollector
from supervisor.savings.tally import by_day
from tests.fakes import SINGLE, Client, FakeClock, make_handle, model_config, until

GIB = 1 << 30
NOON = dt.datetime(2026, 3, 2, 12, tzinfo=dt.UTC).timestamp()


def account_for(clock: FakeClock, units: list[Any], *, wall0: float = NOON,
                sampler: GpuSampler | None = None, **kw: Any) -> SavingsAccount:
    sampler = sampler or GpuSampler(lambda service: None)
    return SavingsAccount(clock, lambda: wall0 + clock.now() - 1000.0, units=lambda: units,
                          sizer=gpu_sizer(GpuBudget(None, clock), sampler), **kw)


async def test_a_cold_start_requests_and_a_stop_are_accounted_to_the_second() -> None:
    handle, runtime, clock = make_handle(SINGLE, vram="2GiB")
    account = account_for(clock, [handle])
    handle.listeners.add(account)
    clock.advance(10)
    clients = [Client(handle) for _ in range(3)]
    await until(lambda: handle.held == 3 and runtime.probes > 2, "3 held, polling health")
    clock.advance(4)
    runtime.ready("chat")
    await until(lambda: all(c.in_flight for c in clients), "3 in flight")
    clock.advance(20)
    for c in clients:
        c.finish()
        await c.result()
    handle.stop()
    await until(lambda: handle.state is State.STOPPED, "stopped")
    clock.advance(6)

    seen = account.report()["models"]["m"]
    total = seen["since_start"]
    assert total["state_seconds"] == {"stopped": 16.0, "starting": 4.0, "ready": 20.0,
                                      "stopping": 0.0}
    assert total["profile_state_seconds"]["default"]["ready"] == 20.0
    assert (total["cold_starts"], total["wakes"], total["held_requests"]) == (
        1, 0, {"start": 3, "wake": 0})
    assert total["waited_seconds"] == total["cold_start_wait_seconds"] == 12.0
    assert total["gpu_hours_held"] == pytest.approx(24 / 3600, abs=1e-6)
    assert total["gpu_hours_always_on"] == pytest.approx(40 / 3600, abs=1e-6)
    assert total["gpu_hours_given_back"] == pytest.approx(16 / 3600, abs=1e-6)
    assert total["gpu_memory_byte_seconds"] == 24 * 2 * GIB
    assert total["gpu_memory_byte_seconds_given_back"] == 16 * 2 * GIB
    assert total["energy_joules"] is None
    assert seen["days"] == {"2026-03-02": total}

    clock.advance(5)  # no state change: a read still counts the open interval
    assert account.report()["models"]["m"]["since_start"]["state_seconds"]["stopped"] == 21.0


def test_a_wake_and_sleep_count_the_asleep_share_and_what_waited_on_the_wake() -> None:
    clock = FakeClock()
    config = model_config({**SINGLE, "vram": "4GiB", "sleep": {"enabled": True,
                                                                "vram": "1GiB"}})
    unit = SimpleNamespace(name="m", config=config, profile=profiles_of(config)[0],
                           state=State.STOPPED)
    account = account_for(clock, [unit])
    steps = [(State.STOPPED, State.STARTING, 5), (State.STARTING, State.READY, 2),
             (State.READY, State.SLEEPING, 10), (State.SLEEPING, State.ASLEEP, 0),
             (State.ASLEEP, State.WAKING, 40), (State.WAKING, State.READY, 1)]
    for old, new, seconds in steps:
        clock.advance(seconds)
        unit.state = new
        account.on_state(unit, old, new, "x")  # type: ignore[arg-type]
    account.on_flight_start(unit, Flight(None, held_since=clock.now() - 1.5))  # type: ignore[arg-type]
    account.on_flight_start(unit, Flight(None))  # type: ignore[arg-type]  # never held
    total = account.report()["models"]["m"]["since_start"]
    assert (total["cold_starts"], total["wakes"]) == (1, 1)
    assert total["held_requests"] == {"start": 0, "wake": 1}
    assert total["wake_wait_seconds"] == 1.5
    assert total["state_seconds"]["asleep"] == 40.0
    # starting 2 + ready 10 + waking 1 whole, asleep 40 at a quarter (1 of 4 GiB)
    assert total["gpu_hours_held"] == pytest.approx((2 + 10 + 1 + 40 / 4) / 3600, abs=1e-6)
    assert total["gpu_memory_byte_seconds"] == 13 * 4 * GIB + 40 * GIB


def test_gpus_empty_holds_nothing_and_nothing_is_given_back() -> None:
    clock = FakeClock()
    config = model_config({**SINGLE, "gpus": []})
    unit = SimpleNamespace(name="cpu", config=config, profile=profiles_of(config)[0],
                           state=State.READY)
    account = account_for(clock, [unit])
    clock.advance(30)
    total = account.report()["models"]["cpu"]["since_start"]
    assert total["state_seconds"] == {"ready": 30.0}
    assert (total["gpu_hours_held"], total["gpu_hours_always_on"]) == (0.0, 0.0)


def test_an_interval_over_midnight_is_split_between_the_days() -> None:
    clock = FakeClock()
    config = model_config(SINGLE)
    unit = SimpleNamespace(name="m", config=config, profile=profiles_of(config)[0],
                           state=State.READY)
    midnight = dt.datetime(2026, 3, 3, tzinfo=dt.UTC).timestamp()
    account = account_for(clock, [unit], wall0=midnight - 100)
    clock.advance(250)
    report = account.report()["models"]["m"]
    assert {d: v["state_seconds"]["ready"] for d, v in report["days"].items()} == {
        "2026-03-02": 100.0, "2026-03-03": 150.0}
    assert report["since_start"]["state_seconds"]["ready"] == 250.0
    assert by_day(midnight - 1, midnight - 1) == []


def test_per_day_totals_survive_a_restart_through_the_saved_section() -> None:
    clock = FakeClock()
    config = model_config(SINGLE)
    unit = SimpleNamespace(name="m", config=config, profile=profiles_of(config)[0],
                           state=State.STOPPED)
    first = account_for(clock, [unit])
    clock.advance(60)
    first.on_state(unit, State.STOPPED, State.STARTING, "demand")  # type: ignore[arg-type]
    saved = first.to_json()
    clock.advance(10)
    second = account_for(clock, [unit], saved=saved)
    clock.advance(5)
    report = second.report()["models"]["m"]
    day = report["days"]["2026-03-02"]
    assert (day["state_seconds"], day["cold_starts"]) == ({"stopped": 65.0, "starting": 0.0},
                                                          1)
    assert report["since_start"]["state_seconds"] == {"stopped": 5.0}


def test_counters_are_exported_at_zero_from_the_start_and_follow_the_account() -> None:
    clock = FakeClock()
    config = model_config({**SINGLE, "vram": "1GiB"})
    unit = SimpleNamespace(name="m", config=config, profile=profiles_of(config)[0],
                           state=State.STOPPED)
    account = account_for(clock, [unit])
    registry = CollectorRegistry()
    registry.register(SavingsCollector(account))
    value = registry.get_sample_value
    assert value("supervisor_cold_starts_total", {"model": "m", "kind": "start"}) == 0
    assert value("supervisor_cold_start_wait_seconds_total", {"model": "m", "kind": "wake"}) == 0
    assert value("supervisor_model_memory_held_byte_seconds_total", {"model": "m"}) == 0
    assert value("supervisor_energy_joules_total", {"model": "m"}) is None  # not known here
    clock.advance(7)
    unit.state = State.STARTING
    account.on_state(unit, State.STOPPED, State.STARTING, "demand")  # type: ignore[arg-type]
    clock.advance(3)
    assert value("supervisor_state_seconds_total",
                 {"model": "m", "profile": "", "state": "stopped"}) == 7
    assert value("supervisor_state_seconds_total",
                 {"model": "m", "profile": "default", "state": "starting"}) == 3
    assert value("supervisor_cold_starts_total", {"model": "m", "kind": "start"}) == 1
    assert value("supervisor_gpu_hours_given_back_total", {"model": "m"}) == pytest.approx(
        7 / 3600)


def test_energy_is_shared_among_the_models_on_a_gpu_as_their_memory_is() -> None:
    def sample(joules: float) -> GpuSample:
        device = Device(0, "GPU-0", 30 * GIB, 80 * GIB, energy_joules=joules)
        return GpuSample(True, devices=(device,), models=(
            ModelMemory("a", "default", 0, 30 * GIB), ModelMemory("b", "default", 0, 10 * GIB)))

    sampler = GpuSampler(lambda service: None)
    meter = EnergyMeter(sampler)
    assert meter() is None  # no sample yet: unknown
    sampler.sample = sample(1000.0)
    assert meter() == {}  # the first reading is where counting starts
    sampler.sample = sample(1400.0)
    assert meter() == {"a": 300.0, "b": 100.0}
    sampler.sample = GpuSample(True, devices=(Device(0, "GPU-0", 0, 80 * GIB),))
    assert meter() is None  # this GPU has no energy counter
