"""Priority, fair shares and the ETA where requests wait, through a real handle on fakes
(the hold queue's release order and admission, each held request's standing) and the GPU
planner (its queue's order)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from supervisor.clients.fairness import Asker
from supervisor.gpus.placement import Demand, Verdict, plan
from supervisor.lifecycle.handle import ModelHandle
from supervisor.lifecycle.lease import HoldRejected
from supervisor.rules.table import State
from tests.fakes import SINGLE, Client, make_handle, until

GiB = 1 << 30


@pytest.fixture
async def rig() -> AsyncIterator[list[Client]]:
    clients: list[Client] = []
    yield clients
    for c in clients:
        c.task.cancel()
    await asyncio.gather(*(c.task for c in clients), return_exceptions=True)


def ask(handle: ModelHandle, clients: list[Client], who: Asker, order: list[str]) -> Client:
    client = Client(handle, client=who, keep=False)
    clients.append(client)

    client.task.add_done_callback(
        lambda t: order.append(who.client) if not t.cancelled() and not t.exception() else None)
    return client


async def test_held_requests_are_released_by_priority_then_in_turns(rig) -> None:
    handle, runtime, _ = make_handle(SINGLE, max_held=200)
    served: list[str] = []
    for _ in range(100):
        ask(handle, rig, Asker("batch"), served)
    ask(handle, rig, Asker("batch2"), served)
    ask(handle, rig, Asker("urgent", priority=5), served)
    await until(lambda: handle.held == 102, "all held")
    assert [s.client for s in handle.queue()[:3]] == ["urgent", "batch", "batch2"]
    await until(lambda: runtime.starts == ["chat"], "the start")
    runtime.ready("chat")
    await until(lambda: len(served) == 102, "all served", 5000)
    assert served[:3] == ["urgent", "batch", "batch2"]
    await handle.close()


async def test_a_full_hold_gives_a_quiet_client_its_share(rig) -> None:
    handle, runtime, _ = make_handle(SINGLE, max_held=4)
    flood = [ask(handle, rig, Asker("flood"), []) for _ in range(4)]
    await until(lambda: handle.held == 4, "four held")
    refused = ask(handle, rig, Asker("flood"), [])
    await until(refused.task.done, "the flood's fifth answered")
    assert isinstance(refused.task.exception(), HoldRejected)
    quiet = [ask(handle, rig, Asker("quiet"), []) for _ in range(2)]
    await until(lambda: flood[3].task.done() and flood[2].task.done(), "two displaced")
    error = flood[3].task.exception()
    assert isinstance(error, HoldRejected)
    assert (error.status, error.code) == (503, "model_overloaded")
    assert "gave its place" in error.message
    third = ask(handle, rig, Asker("quiet"), [])  # quiet at its share (2 of 4) now
    await until(third.task.done, "the quiet one's third answered")
    assert isinstance(third.task.exception(), HoldRejected)
    await until(lambda: runtime.starts == ["chat"], "the start")
    runtime.ready("chat")
    for c in [*flood[:2], *quiet]:
        await c.result()
    await handle.close()


async def test_each_held_request_knows_its_place_and_the_eta(rig) -> None:
    handle, runtime, clock = make_handle(SINGLE, max_held=10)
    handle.effects.durations = lambda unit, profile, kind: 6.0 if kind == "start" else None
    first = ask(handle, rig, Asker("a"), [])
    second = ask(handle, rig, Asker("b", priority=1), [])
    await until(lambda: handle.held == 2, "two held")
    assert handle.state is State.STARTING
    mine = handle.standing(first.task)
    assert mine is not None
    assert (mine.client, mine.position, mine.eta, mine.phase) == ("a", 2, 6.0, "starting")
    clock.advance(4.5)
    now = handle.standing(first.task)
    assert now is not None and (now.eta, now.waited) == (1.5, 4.5)
    second.task.cancel()  # the one ahead goes away: the place counts down
    await until(lambda: handle.held == 1, "one held")
    later = handle.standing(first.task)
    assert later is not None and later.position == 1
    assert [s.to_json()["eta_seconds"] for s in handle.queue()] == [1.5]
    clock.advance(3)
    overdue = handle.standing(first.task)
    assert overdue is not None and overdue.eta == 0.0
    await until(lambda: runtime.starts == ["chat"], "the start")
    runtime.ready("chat")
    await first.result()
    assert handle.standing(first.task) is None
    await handle.close()


def test_the_gpu_queue_serves_by_rank_before_age() -> None:
    """Two starts want the one GPU: the planner starts the one the fair order ranks first
    (budget.py ranks them by their most urgent held request), not the older one."""
    gpus = {0: 10 * GiB}
    older = Demand("batch-model", "default", {0: 8 * GiB}, 1.0, rank=1)
    urgent = Demand("chat-model", "default", {0: 8 * GiB}, 5.0, rank=0)
    decisions = {d.model: d.kind for d in plan(gpus, [], [older, urgent])}
    assert decisions == {"chat-model": Verdict.START, "batch-model": Verdict.WAIT}
