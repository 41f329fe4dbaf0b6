"""The runtime watcher against a FakeRuntime: container exits from the event stream,
an unreachable daemon, and the re-sync once it is back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from supervisor.lifecycle.handle import ModelHandle
from supervisor.lifecycle.registry import Registry
from supervisor.lifecycle.watcher import watch
from supervisor.refusal import Refusal
from supervisor.rules.table import State
from supervisor.runtime.base import RuntimeFailure
from tests.fakes import SINGLE, Client, FakeClock, FakeRuntime, make_handle, until


@pytest.fixture
async def rig() -> AsyncIterator[tuple[ModelHandle, FakeRuntime, FakeClock]]:
    handle, runtime, clock = make_handle(SINGLE)
    runtime.auto_ready.add("chat")
    task = asyncio.create_task(watch(handle.effects, Registry([handle])))
    yield handle, runtime, clock
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await handle.close()


async def test_a_container_that_exits_is_known_without_a_request(rig) -> None:
    handle, runtime, _ = rig
    await Client(handle, keep=False).result()
    assert handle.state is State.READY
    runtime.exit("chat", 137)
    runtime.events.put_nowait("chat")
    await until(lambda: handle.state is State.FAILED, "the exit to be seen")
    assert handle.last_error == "container exited while ready"


async def test_runtime_away_refuses_starts_serves_what_runs_and_resyncs_when_back(rig) -> None:
    handle, runtime, clock = rig
    await Client(handle, keep=False).result()
    runtime.unreachable = True
    runtime.events.put_nowait(RuntimeFailure("connection refused"))
    await until(lambda: handle.effects.runtime_down is not None, "the outage to be seen")
    lease = await Client(handle, keep=False).result()  # it still runs: served
    assert not lease.cold_start
    # The daemon restarts without its containers; meanwhile the model cannot start.
    runtime.exit("chat", 0)
    handle.container_died()
    with pytest.raises(Refusal) as refused:
        await Client(handle, keep=False).result()
    assert (refused.value.status, refused.value.code) == (503, "runtime_unavailable")
    assert runtime.starts == ["chat"]
    runtime.unreachable = False
    clock.advance(5)  # the watcher's next try
    await until(lambda: handle.effects.runtime_down is None, "the runtime to be back")
    assert (await Client(handle, keep=False).result()).cold_start
    assert runtime.starts == ["chat", "chat"]


async def test_resync_adopts_what_runs_and_forgets_what_is_gone(rig) -> None:
    handle, runtime, clock = rig
    runtime.unreachable = True
    runtime.events.put_nowait(RuntimeFailure("daemon restarting"))
    await until(lambda: handle.effects.runtime_down is not None, "the outage")
    runtime.run("chat")  # someone started it while the supervisor could not look
    runtime.unreachable = False
    clock.advance(5)
    await until(lambda: handle.state is State.READY, "adopted")
    assert runtime.starts == []


async def test_a_frozen_daemon_is_noticed_by_the_heartbeat(rig, monkeypatch) -> None:
    from supervisor.lifecycle import watcher

    monkeypatch.setattr(watcher, "HEARTBEAT_SECONDS", 0.05)  # the ping's own time limit
    handle, runtime, clock = rig
    await until(lambda: bool(clock.timers), "the heartbeat's timer")
    runtime.frozen = True  # its event stream stays open, silent
    clock.advance(5)  # the next heartbeat
    for _ in range(100):
        if handle.effects.runtime_down is not None:
            break
        await asyncio.sleep(0.01)
    assert handle.effects.runtime_down is not None
    assert "does not answer" in handle.effects.runtime_down
    with pytest.raises(Refusal) as refused:
        await Client(handle, keep=False).result()
    assert refused.value.code == "runtime_unavailable"
