"""A model handle driven end to end on fakes: no Docker, no HTTP, no real time.

Each test plays a scenario the way the proxy and the admin API drive a handle
(`lease`, `start`/`stop`, `reconfigure`, `adopt`, `retire`) and checks what a user
would see: the model's state, what the runtime was asked to do, and what each request
got. Time moves only through the FakeClock; the loop is yielded to with `until`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from supervisor.lifecycle.handle import ModelHandle
from supervisor.lifecycle.lease import HoldRejected, Lease
from supervisor.proxy.http_errors import refusal_response
from supervisor.refusal import Refusal, StartFailed
from supervisor.rules.table import State
from supervisor.runtime.base import RuntimeFailure
from tests.fakes import (
    CTX,
    SINGLE,
    Client,
    FakeClock,
    FakeRuntime,
    make_handle,
    model_config,
    settle,
    until,
)


@dataclass
class Rig:
    handle: ModelHandle
    runtime: FakeRuntime
    clock: FakeClock
    clients: list[Client] = field(default_factory=list)

    def request(self, tokens: int | None = None, *, keep: bool = False) -> Client:
        """A request; `keep` holds its lease open until `finish()`."""
        client = Client(self.handle, tokens, keep=keep)
        self.clients.append(client)
        return client

    async def serve(self, tokens: int | None = None) -> Lease:
        """A request that ends as soon as it got the model."""
        return await self.request(tokens).result()


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def build(settings: dict[str, Any], *, ready: tuple[str, ...] = (), **overrides: Any) -> Rig:
        handle, runtime, clock = make_handle(settings, **overrides)
        runtime.auto_ready.update(ready)
        rig = Rig(handle, runtime, clock)
        rigs.append(rig)
        return rig

    yield build
    for rig in rigs:
        tasks = [c.task for c in rig.clients]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await rig.handle.close()


async def refused(client: Client) -> Refusal:
    """What the handle answered a request it did not serve."""
    with pytest.raises(Refusal) as info:
        await client.result()
    return info.value


# -- cold start and holding ---------------------------------------------------


async def test_cold_start_holds_requests_and_starts_the_service_once(make) -> None:
    rig = make(SINGLE)
    handle, runtime, clock = rig.handle, rig.runtime, rig.clock
    clients = [rig.request() for _ in range(20)]
    await until(lambda: handle.held == 20 and runtime.probes > 5, "20 held, polling health")
    assert handle.state is State.STARTING
    assert runtime.starts == ["chat"]
    assert not any(c.task.done() for c in clients)

    clock.advance(3.5)  # the server takes 3.5 s to load
    runtime.ready("chat")
    leases = [await c.result() for c in clients]

    assert handle.state is State.READY
    assert runtime.starts == ["chat"]
    assert runtime.stops == []
    assert all(lease.cold_start for lease in leases)
    assert {lease.hold_seconds for lease in leases} == {3.5}
    assert {lease.profile.service for lease in leases} == {"chat"}
    assert handle.last_cold_start_seconds == 3.5
    assert (handle.held, handle.in_flight) == (0, 0)
    warm = await rig.serve()
    assert (warm.cold_start, warm.hold_seconds) == (False, 0.0)


async def test_request_past_max_held_is_refused_with_503_and_retry_after(make) -> None:
    rig = make(SINGLE, max_held=2)
    handle, runtime, clock = rig.handle, rig.runtime, rig.clock
    held = [rig.request(), rig.request()]
    await until(lambda: handle.held == 2, "two held")

    error = await refused(rig.request())
    assert isinstance(error, HoldRejected)
    assert (error.status, error.code, error.retry_after) == (503, "model_overloaded", 10)
    assert refusal_response(error).headers["Retry-After"] == "10"
    assert handle.held == 2  # the refused one never joined the queue

    # Once a cold start has been measured, Retry-After is its length.
    clock.advance(42)
    runtime.ready("chat")
    for client in held:
        await client.result()
    handle.stop()
    await until(lambda: handle.state is State.STOPPED, "stopped")
    more = [rig.request(), rig.request()]
    await until(lambda: handle.held == 2, "two held again")
    error = await refused(rig.request())
    assert (error.status, error.code, error.retry_after) == (503, "model_overloaded", 42)
    runtime.ready("chat")
    for client in more:
        await client.result()


async def test_hold_timeout_answers_504_and_the_model_keeps_starting_for_others(make) -> None:
    rig = make(SINGLE, hold_timeout="30s")
    handle, runtime, clock = rig.handle, rig.runtime, rig.clock
    early = rig.request()
    await until(lambda: handle.held == 1)
    clock.advance(10)
    late = rig.request()
    await until(lambda: handle.held == 2)

    clock.advance(20)  # 30 s for the first request, 20 s for the second
    error = await refused(early)
    assert isinstance(error, HoldRejected)
    assert (error.status, error.code) == (504, "hold_timeout")
    await settle()
    assert not late.task.done()
    assert handle.state is State.STARTING
    assert handle.held == 1

    clock.advance(5)
    runtime.ready("chat")
    lease = await late.result()
    assert lease.cold_start and lease.hold_seconds == 25
    assert handle.state is State.READY
    assert runtime.starts == ["chat"]


async def test_start_that_never_gets_healthy_fails_after_startup_timeout(make) -> None:
    rig = make(SINGLE, startup_timeout="60s")
    handle, runtime, clock = rig.handle, rig.runtime, rig.clock
    runtime.log_text = "loading shards 3/8"
    clients = [rig.request(), rig.request()]
    await until(lambda: handle.held == 2 and runtime.probes > 0, "held, polling health")

    clock.advance(59)
    await settle()
    assert handle.state is State.STARTING
    assert not any(c.task.done() for c in clients)

    clock.advance(2)
    for client in clients:
        error = await refused(client)
        assert isinstance(error, StartFailed)
        assert (error.status, error.code) == (503, "model_start_failed")
        assert "within 60s" in error.message and "loading shards 3/8" in error.message
    assert handle.state is State.FAILED
    assert handle.last_error is not None and "did not answer 200" in handle.last_error
    assert handle.held == 0

    # The next request tries again, once the first backoff (1 s) has passed.
    clock.advance(1)
    again = rig.request()
    await until(lambda: len(runtime.starts) == 2, "a second start")
    assert handle.state is State.STARTING
    runtime.ready("chat")
    assert (await again.result()).cold_start
    assert handle.state is State.READY
    assert handle.last_error is None


async def test_container_exiting_while_starting_fails_held_requests_at_once_with_its_log(
    make,
) -> None:
    rig = make(SINGLE)
    handle, runtime, clock = rig.handle, rig.runtime, rig.clock
    runtime.log_text = "loading model\ntorch.OutOfMemoryError: CUDA out of memory"
    clients = [rig.request(), rig.request()]
    await until(lambda: handle.held == 2 and runtime.probes > 0)
    began = clock.now()

    runtime.exit("chat", 137)
    for client in clients:
        error = await refused(client)
        assert (error.status, error.code) == (503, "model_start_failed")
        assert "exited with code 137 while starting" in error.message
        assert "CUDA out of memory" in error.message
    assert clock.now() == began  # no waiting for startup_timeout
    assert handle.state is State.FAILED
    assert handle.last_error is not None and "CUDA out of memory" in handle.last_error


async def test_compose_up_failure_fails_held_requests_with_its_message(make) -> None:
    rig = make(SINGLE)
    rig.runtime.start_errors.append(RuntimeFailure("image model:latest not found"))
    error = await refused(rig.request())
    assert (error.status, error.code) == (503, "model_start_failed")
    assert "image model:latest not found" in error.message
    assert rig.handle.state is State.FAILED


# -- idle stop --------------------------------------------------------------


async def test_idle_model_is_stopped_after_idle_timeout(make) -> None:
    rig = make(SINGLE, ready=("chat",), idle_timeout="10s", stop_timeout="7s")
    handle, runtime, clock = rig.handle, rig.runtime, rig.clock
    await rig.serve()
    assert handle.state is State.READY

    clock.advance(9.5)
    await settle()
    assert runtime.stops == []
    assert handle.state is State.READY

    clock.advance(0.5)
    await until(lambda: handle.state is State.STOPPED, "the idle stop")
    assert runtime.stops == [("chat", 7.0)]
    assert not runtime.is_running("chat")


async def test_request_in_flight_keeps_an_idle_model_up(make) -> None:
    rig = make(SINGLE, ready=("chat",), idle_timeout="10s")
    handle, runtime, clock = rig.handle, rig.runtime, rig.clock
    long_generation = rig.request(keep=True)
    await until(lambda: long_generation.in_flight)

    clock.advance(100)
    await settle()
    assert runtime.stops == []
    assert handle.state is State.READY

    long_generation.finish()
    await long_generation.result()
    clock.advance(9.9)  # the idle time counts from the end of the last request
    await settle()
    assert runtime.stops == []
    clock.advance(0.1)
    await until(lambda: handle.state is State.STOPPED, "the idle stop")
    assert [s for s, _ in runtime.stops] == ["chat"]


async def test_pinned_model_is_not_stopped_when_idle(make) -> None:
    rig = make(SINGLE, ready=("chat",), idle_timeout="10s")
    handle, runtime, clock = rig.handle, rig.runtime, rig.clock
    await rig.serve()
    handle.set_pinned(True)

    clock.advance(1000)
    await settle()
    assert runtime.stops == []
    assert handle.state is State.READY

    handle.set_pinned(False)  # idle for 1000 s already: it goes now
    clock.advance(0)
    await until(lambda: handle.state is State.STOPPED, "the idle stop after unpinning")
    assert [s for s, _ in runtime.stops] == ["chat"]


# -- profiles -----------------------------------------------------------------


async def test_swap_waits_for_min_residency_and_drains_the_running_profile(make) -> None:
    rig = make(CTX, ready=("short-ctx", "long-ctx"), min_residency="60s",
               long_idle_timeout="5s")
    handle, runtime, clock = rig.handle, rig.runtime, rig.clock
    assert (await rig.serve(100)).profile.name == "short"
    assert (await rig.serve(5000)).profile.name == "long"  # the first swap: at once
    clock.advance(5)  # the long profile idles out; the default one comes back next
    await until(lambda: handle.state is State.STOPPED)
    assert (await rig.serve(100)).profile.name == "short"
    calls = list(runtime.calls)
    assert calls == [("start", "short-ctx"), ("stop", "short-ctx"), ("start", "long-ctx"),
                     ("stop", "long-ctx"), ("start", "short-ctx")]

    in_flight = rig.request(100, keep=True)
    await until(lambda: in_flight.in_flight)
    big = rig.request(5000)
    await until(lambda: handle.held == 1)

    # 5 s after the last swap: the next one waits 55 s, serving what fits meanwhile.
    clock.advance(54)
    await settle()
    assert runtime.calls == calls
    assert handle.state is State.READY
    assert (await rig.serve(100)).profile.name == "short"
    assert not big.task.done()

    clock.advance(1)  # min_residency has passed: drain the short profile
    await settle()
    assert handle.state is State.DRAINING
    assert runtime.calls == calls  # the request in flight is not cut
    assert not in_flight.task.done()

    in_flight.finish()
    first = await in_flight.result()
    assert first.profile.name == "short" and not first.aborted
    lease = await big.result()
    assert lease.profile.name == "long" and lease.cold_start
    assert runtime.calls == [*calls, ("stop", "short-ctx"), ("start", "long-ctx")]
    assert handle.state is State.READY and handle.profile.name == "long"


async def test_retry_on_a_larger_profile_swaps_to_it(make) -> None:
    rig = make(CTX, ready=("short-ctx", "long-ctx"))
    handle, runtime = rig.handle, rig.runtime
    # The estimate said 1500 tokens; vLLM on the short profile answers 400 (too long).
    first = await rig.serve(1500)
    assert first.profile.name == "short"
    larger = handle.larger_profile(first.profile)
    assert larger is not None and larger.name == "long"
    assert first.profile.max_model_len is not None

    # The proxy leaves the first lease and asks for one more token than short holds.
    retry = await rig.serve(first.profile.max_model_len + 1)
    assert retry.profile.name == "long" and retry.cold_start
    assert runtime.calls == [("start", "short-ctx"), ("stop", "short-ctx"),
                             ("start", "long-ctx")]
    assert handle.larger_profile(retry.profile) is None
    assert handle.state is State.READY


async def test_a_swap_is_told_under_the_profile_that_starts(make, caplog) -> None:
    """The lifecycle events and log lines of a swap name, for each step, the profile it
    is about: the old one while it stops, the new one from its start on."""
    caplog.set_level(logging.INFO, logger="supervisor.lifecycle")
    rig = make(CTX, ready=("short-ctx", "long-ctx"))
    assert (await rig.serve(100)).profile.name == "short"
    assert (await rig.serve(5000)).profile.name == "long"
    steps = [(e["from"], e["to"], e["event"], e["profile"])
             for e in rig.handle.metrics.events.recent()]
    assert steps == [
        ("stopped", "starting", "demand", "short"),
        ("starting", "ready", "started", "short"),
        ("ready", "stopping", "swap", "short"),  # nothing in flight: no drain
        ("stopping", "starting", "stopped", "long"),
        ("starting", "ready", "started", "long"),
    ]
    told = [r.getMessage() for r in caplog.records if " -> " in r.getMessage()]
    assert "model=m profile=long stopping -> starting on stopped" in told
    assert not any("profile=short stopping -> starting" in line for line in told)


# -- clients and operators --------------------------------------------------


async def test_client_that_disconnects_while_held_leaves_the_queue(make) -> None:
    rig = make(SINGLE)
    handle, runtime = rig.handle, rig.runtime
    gone, stays = rig.request(), rig.request()
    await until(lambda: handle.held == 2)

    gone.task.cancel()
    await until(lambda: handle.held == 1, "the held count to drop")
    assert gone.task.cancelled()
    await settle()
    assert handle.state is State.STARTING
    assert runtime.starts == ["chat"] and runtime.stops == []
    assert not stays.task.done()

    runtime.ready("chat")
    await stays.result()
    assert handle.state is State.READY
    assert (handle.held, handle.in_flight) == (0, 0)


async def test_client_that_disconnects_just_as_it_is_released_is_not_left_in_flight(
    make,
) -> None:
    rig = make(SINGLE, idle_timeout="10s")
    handle, runtime, clock = rig.handle, rig.runtime, rig.clock
    client = rig.request()
    await until(lambda: handle.held == 1 and runtime.probes > 0)
    runtime.ready("chat")
    await until(lambda: handle.state is State.READY)
    # Released and counted in flight, but cancelled before it could resume.
    assert (client.lease, handle.in_flight) == (None, 1)
    client.task.cancel()
    await until(client.task.done)
    assert client.task.cancelled()
    assert (handle.held, handle.in_flight) == (0, 0)
    clock.advance(10)
    await until(lambda: handle.state is State.STOPPED, "the idle stop")


async def test_force_stop_aborts_requests_in_flight_and_fails_held_ones(make) -> None:
    rig = make(SINGLE, ready=("chat",))
    handle, runtime = rig.handle, rig.runtime
    streaming = rig.request(keep=True)
    await until(lambda: streaming.in_flight)
    handle.stop()  # graceful first: it drains, and a new request is held meanwhile
    assert handle.state is State.DRAINING
    waiting = rig.request()
    await until(lambda: handle.held == 1)
    assert runtime.stops == []

    handle.stop(force=True)
    error = await refused(waiting)
    assert (error.status, error.code) == (503, "model_stopped")
    await until(streaming.task.done)
    assert streaming.task.cancelled()
    assert streaming.lease is not None and streaming.lease.aborted
    await until(lambda: handle.state is State.STOPPED)
    assert runtime.stops == [("chat", 0.0)]  # no grace period
    assert runtime.starts == ["chat"]  # nothing starts it again
    assert (handle.held, handle.in_flight) == (0, 0)


async def test_force_stop_while_starting_aborts_the_start_and_fails_held_requests(
    make,
) -> None:
    rig = make(SINGLE)
    handle, runtime = rig.handle, rig.runtime
    held = rig.request()
    await until(lambda: handle.held == 1 and runtime.probes > 0)

    handle.stop(force=True)
    error = await refused(held)
    assert (error.status, error.code) == (503, "model_stopped")
    await until(lambda: handle.state is State.STOPPED)
    assert runtime.stops == [("chat", 0.0)]
    runtime.ready("chat")  # too late: the start was abandoned
    await settle()
    assert handle.state is State.STOPPED


async def test_reload_while_running_applies_timeouts_at_once_and_profiles_at_next_start(
    make,
) -> None:
    rig = make(CTX, ready=("short-ctx", "long-ctx", "huge-ctx"), idle_timeout="10m")
    handle, runtime, clock = rig.handle, rig.runtime, rig.clock
    runtime.health_urls["huge-ctx"] = runtime.health_urls["short-ctx"]
    await rig.serve(100)
    clock.advance(3)  # idle for 3 s

    reloaded = {**CTX, "profiles": {
        "short": {"service": "short-ctx", "max_model_len": 4096},
        "long": {"service": "long-ctx", "max_model_len": 8192},
        "huge": {"service": "huge-ctx", "max_model_len": 32768},
    }}
    handle.reconfigure(model_config(reloaded, idle_timeout="5s"))
    assert handle.idle_timeout == 5
    # The running server keeps the profiles it was started with.
    assert [p.name for p in handle.profiles] == ["short", "long"]
    assert handle.profile.max_model_len == 2048

    clock.advance(1.9)  # 4.9 s idle
    await settle()
    assert runtime.stops == []
    clock.advance(0.1)  # 5 s idle under the new timeout
    await until(lambda: handle.state is State.STOPPED)
    assert [s for s, _ in runtime.stops] == ["short-ctx"]

    lease = await rig.serve(3000)  # fits the reloaded short profile
    assert lease.profile.name == "short" and lease.profile.max_model_len == 4096
    assert [p.name for p in handle.profiles] == ["short", "long", "huge"]
    assert runtime.starts == ["short-ctx", "short-ctx"]


async def test_adopting_a_running_healthy_service_makes_it_ready_without_starting_it(
    make,
) -> None:
    rig = make(CTX)
    handle, runtime = rig.handle, rig.runtime
    runtime.run("long-ctx")
    handle.adopt(await runtime.running_services())
    await until(lambda: handle.state is State.READY, "ready after adoption")
    assert handle.profile.name == "long"
    assert runtime.starts == []
    lease = await rig.serve(5000)
    assert (lease.profile.name, lease.cold_start) == ("long", False)


async def test_adopting_a_service_that_is_not_healthy_yet_keeps_it_starting(make) -> None:
    rig = make(SINGLE)
    handle, runtime = rig.handle, rig.runtime
    runtime.run("chat", healthy=False)
    handle.adopt(await runtime.running_services())
    await until(lambda: runtime.probes > 5)
    assert handle.state is State.STARTING
    held = rig.request()
    await until(lambda: handle.held == 1)

    runtime.ready("chat")
    lease = await held.result()
    assert lease.cold_start
    assert handle.state is State.READY
    assert runtime.starts == []


async def test_adopting_when_nothing_runs_leaves_the_model_stopped(make) -> None:
    rig = make(SINGLE)
    rig.handle.adopt(await rig.runtime.running_services())
    await settle()
    assert rig.handle.state is State.STOPPED
    assert rig.runtime.probes == 0


async def test_retired_model_stops_only_after_its_request_in_flight_ends(make) -> None:
    rig = make(SINGLE, ready=("chat",))
    handle, runtime = rig.handle, rig.runtime
    client = rig.request(keep=True)
    await until(lambda: client.in_flight)

    handle.retire()
    await settle()
    assert runtime.stops == []
    assert handle.state is State.READY
    assert not handle.retired.is_set()

    client.finish()
    assert not (await client.result()).aborted
    await until(handle.retired.is_set, "retired")
    assert handle.state is State.STOPPED
    assert [s for s, _ in runtime.stops] == ["chat"]


async def test_retiring_a_stopped_model_is_immediate(make) -> None:
    rig = make(SINGLE)
    rig.handle.retire()
    assert rig.handle.retired.is_set()
    assert rig.runtime.stops == []


# -- an effect that crashes ---------------------------------------------------


async def test_start_task_that_raises_fails_the_model_and_the_next_request_retries(
    make, caplog,
) -> None:
    caplog.set_level(logging.ERROR, logger="supervisor.lifecycle")
    rig = make(SINGLE, ready=("chat",))
    handle, runtime = rig.handle, rig.runtime
    runtime.start_errors.append(ValueError("boom"))
    clients = [rig.request(), rig.request()]
    for client in clients:
        error = await refused(client)
        assert isinstance(error, StartFailed)
        assert (error.status, error.code) == (503, "model_start_failed")
    assert handle.state is State.FAILED
    assert handle.last_error is not None and "ValueError('boom')" in handle.last_error
    crashes = [r for r in caplog.records
               if r.levelno == logging.ERROR and r.exc_info is not None]
    assert crashes and "start task raised" in crashes[0].getMessage()
    assert isinstance(crashes[0].exc_info[1], ValueError)

    rig.clock.advance(1)  # the crash-loop backoff after one failure
    lease = await rig.serve()
    assert lease.cold_start
    assert runtime.starts == ["chat", "chat"]
    assert handle.state is State.READY
    assert handle.last_error is None


async def test_failed_starts_back_off_1_2_4_s_with_503_meanwhile_and_a_success_resets(
    make,
) -> None:
    rig = make(SINGLE, ready=("chat",), restart_backoff_max="3s")
    handle, runtime, clock = rig.handle, rig.runtime, rig.clock
    runtime.start_errors.extend(RuntimeFailure(f"crash {n}") for n in range(3))
    waits = []
    for n in range(3):
        assert isinstance(await refused(rig.request()), StartFailed)  # the start itself failed
        assert handle.start_failures == n + 1
        waits.append(handle.retry_in)
        during = await refused(rig.request())  # no start while backing off: a clear 503
        assert (during.status, during.code) == (503, "model_start_failed")
        assert during.retry_after == math.ceil(waits[-1])
        assert f"crash {n}" in during.message and f"{n + 1} times" in during.message
        assert len(runtime.starts) == n + 1
        clock.advance(waits[-1])
    assert waits == [1.0, 2.0, 3.0]  # 1, 2, 4 capped at restart_backoff_max
    lease = await rig.serve()  # the 4th start succeeds and serves
    assert lease.cold_start and len(runtime.starts) == 4
    assert (handle.start_failures, handle.retry_in) == (0, 0.0)


async def test_pinned_model_that_failed_to_start_is_retried_after_its_backoff(make) -> None:
    rig = make(SINGLE, ready=("chat",))
    handle, runtime, clock = rig.handle, rig.runtime, rig.clock
    runtime.start_errors.append(RuntimeFailure("no GPU yet"))
    handle.set_pinned(True)
    handle.start()
    await until(lambda: handle.state is State.FAILED, "the failed start")
    clock.advance(0.9)
    await settle()
    assert len(runtime.starts) == 1
    clock.advance(0.1)
    await until(lambda: handle.state is State.READY, "the retry")
    assert len(runtime.starts) == 2


async def test_stop_task_that_raises_still_leaves_the_model_startable(make, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="supervisor.lifecycle")
    rig = make(SINGLE, ready=("chat",))
    handle, runtime = rig.handle, rig.runtime
    await rig.serve()
    runtime.stop_errors.append(KeyError("container"))
    handle.stop()
    await until(lambda: handle.state is State.STOPPED, "not stuck in stopping")
    assert handle.last_error is not None and "KeyError" in handle.last_error
    assert any(r.exc_info is not None for r in caplog.records)
    await rig.serve()
    assert handle.state is State.READY


# -- more of what the README promises -------------------------------------------


async def test_request_arriving_during_an_idle_stop_is_held_and_starts_it_again(make) -> None:
    rig = make(SINGLE, ready=("chat",), idle_timeout="10s")
    handle, runtime, clock = rig.handle, rig.runtime, rig.clock
    await rig.serve()
    stop_done = runtime.block_stops()
    clock.advance(10)
    await until(lambda: runtime.stops != [], "the idle stop")
    assert handle.state is State.STOPPING

    late = rig.request()
    await until(lambda: handle.held == 1)
    await settle()
    assert runtime.starts == ["chat"]  # never sent to the dying server
    stop_done.set()
    lease = await late.result()
    assert lease.cold_start
    assert runtime.calls == [("start", "chat"), ("stop", "chat"), ("start", "chat")]
    assert handle.state is State.READY


async def test_container_that_died_while_ready_is_restarted_by_the_next_request(make) -> None:
    rig = make(SINGLE, ready=("chat",))
    handle, runtime = rig.handle, rig.runtime
    await rig.serve()
    runtime.exit("chat", 139)
    await handle.upstream_failed()  # the proxy's connection was refused
    assert handle.state is State.FAILED
    assert handle.last_error == "container exited while ready"

    assert (await rig.serve()).cold_start
    assert runtime.starts == ["chat", "chat"]
    assert handle.state is State.READY


# -- bugs found while writing these tests, fixed ----------------------------------


async def _short_running_with_a_swap_waiting(rig: Rig) -> Client:
    """ctx: short runs again 5 s after a swap to long, and a 5000-token request waits
    (held, state ready) for min_residency (60 s) before the next swap."""
    handle, clock = rig.handle, rig.clock
    assert (await rig.serve(100)).profile.name == "short"
    assert (await rig.serve(5000)).profile.name == "long"
    clock.advance(5)
    await until(lambda: handle.state is State.STOPPED)
    assert (await rig.serve(100)).profile.name == "short"
    big = rig.request(5000)
    await until(lambda: handle.held == 1)
    assert handle.state is State.READY
    return big


async def test_model_idles_out_after_a_request_waiting_for_a_swap_gives_up(make) -> None:
    rig = make(CTX, ready=("short-ctx", "long-ctx"), min_residency="60s",
               long_idle_timeout="5s", idle_timeout="10s", hold_timeout="20s")
    handle, runtime, clock = rig.handle, rig.runtime, rig.clock
    big = await _short_running_with_a_swap_waiting(rig)
    clock.advance(20)  # the idle timer fired at 10 s while it was held: nothing happened
    error = await refused(big)
    assert error.code == "hold_timeout"
    assert (handle.held, handle.in_flight) == (0, 0)

    clock.advance(1000)
    await until(lambda: handle.state is State.STOPPED, "the idle stop")
    assert runtime.stops[-1][0] == "short-ctx"


async def test_request_waiting_for_a_swap_is_not_stranded_when_the_container_dies(
    make,
) -> None:
    rig = make(CTX, ready=("short-ctx", "long-ctx"), min_residency="60s",
               long_idle_timeout="5s")
    handle, runtime, clock = rig.handle, rig.runtime, rig.clock
    big = await _short_running_with_a_swap_waiting(rig)
    runtime.exit("short-ctx", 139)
    await handle.upstream_failed()
    clock.advance(60)  # even past min_residency
    await settle(200)
    # Either outcome is fine for the user; waiting 20 minutes (hold_timeout) is not.
    assert big.task.done() or handle.state is not State.FAILED
    lease = await big.result()
    assert lease.profile.name == "long"


async def test_start_that_timed_out_does_not_leave_its_container_running(make) -> None:
    rig = make(SINGLE, startup_timeout="60s", idle_timeout="10s")
    handle, runtime, clock = rig.handle, rig.runtime, rig.clock
    held = rig.request()
    await until(lambda: runtime.probes > 0)
    clock.advance(61)
    assert (await refused(held)).code == "model_start_failed"
    assert handle.state is State.FAILED

    clock.advance(1000)
    await settle()
    assert not runtime.is_running("chat")


# -- liveness: a server that hangs or dies while ready ------------------------


async def test_hung_server_is_found_after_failures_probes_its_requests_cut_and_restarted(
    make,
) -> None:
    rig = make(SINGLE, ready=("chat",), liveness={"interval": "1s", "timeout": "0.5s",
                                                  "failures": 3})
    handle, runtime, clock = rig.handle, rig.runtime, rig.clock
    await rig.serve()
    busy = rig.request(keep=True)
    await until(lambda: busy.in_flight, "a request in flight")
    runtime.ready("chat", healthy=False)  # it hangs: no more answers
    for _ in range(2):
        clock.advance(1)
        await settle()
        assert handle.state is State.READY  # one or two misses are not a verdict
    clock.advance(1)
    await until(lambda: handle.state is not State.READY, "the third miss")
    await until(busy.task.done, "the cut request")
    assert busy.task.cancelled() and busy.lease is not None
    assert busy.lease.aborted == "upstream_died"
    assert handle.last_error is not None and "3 liveness probes" in handle.last_error
    held = rig.request()  # arrives while it goes down: held through the restart
    await until(lambda: len(runtime.starts) == 2, "the restart")
    assert runtime.stops and runtime.stops[-1][0] == "chat"
    assert (await held.result()).cold_start
    assert handle.state is State.READY


async def test_hung_server_with_nothing_waiting_is_left_stopped_unless_pinned(make) -> None:
    for pinned in (False, True):
        rig = make(SINGLE, ready=("chat",), liveness={"interval": "1s", "failures": 2})
        handle, runtime, clock = rig.handle, rig.runtime, rig.clock
        await rig.serve()
        handle.set_pinned(pinned)
        runtime.ready("chat", healthy=False)
        clock.advance(1)
        await settle()
        clock.advance(1)
        want = State.READY if pinned else State.STOPPED
        await until(lambda h=handle, r=runtime, w=want: bool(r.stops) and h.state is w,
                    "the stop (and the restart when pinned)")
        assert len(runtime.starts) == (2 if pinned else 1), pinned


async def test_a_probe_that_answers_resets_the_count_of_misses(make) -> None:
    rig = make(SINGLE, ready=("chat",), liveness={"interval": "1s", "failures": 2})
    handle, runtime, clock = rig.handle, rig.runtime, rig.clock
    await rig.serve()
    for healthy in (False, True, False, True, False):
        runtime.ready("chat", healthy=healthy)
        clock.advance(1)
        await settle()
    assert handle.state is State.READY
    assert runtime.stops == []


async def test_container_seen_dead_by_docker_restarts_at_once_when_requests_are_held(
    make,
) -> None:
    rig = make(CTX, ready=("short-ctx", "long-ctx"), min_residency="60s")
    handle, runtime = rig.handle, rig.runtime
    assert (await rig.serve(100)).profile.name == "short"
    runtime.exit("short-ctx", 137)
    handle.container_died()
    assert handle.state is State.FAILED  # nothing held, not pinned: the next request starts it
    assert (await rig.serve(100)).cold_start
    assert runtime.starts == ["short-ctx", "short-ctx"]
