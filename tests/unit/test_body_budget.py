"""The memory budget of request bodies: reservations, bounded FIFO waits, 503 past them."""

from __future__ import annotations

import asyncio

import pytest

from supervisor.proxy.body_budget import BodyBudget
from supervisor.refusal import Refusal


async def test_reservations_within_the_limit_are_granted_at_once_and_given_back() -> None:
    budget = BodyBudget(100)
    a = await budget.reserve(60)
    b = budget.try_reserve(40)
    assert b is not None and budget.in_use == 100
    assert budget.try_reserve(1) is None
    a.shrink(10)  # a parsed copy dropped
    assert budget.in_use == 50
    a.release()
    a.release()  # idempotent
    b.release()
    assert budget.in_use == 0 and budget.peak == 100


async def test_past_the_limit_a_body_waits_for_memory_in_order_of_arrival() -> None:
    budget = BodyBudget(100, wait=30)
    held = await budget.reserve(90)
    first = asyncio.create_task(budget.reserve(50))
    second = asyncio.create_task(budget.reserve(5))  # would fit now, but must not overtake
    await asyncio.sleep(0)
    assert budget.waiting == 2 and not first.done() and not second.done()
    held.release()
    granted = await asyncio.gather(first, second)
    assert [r.size for r in granted] == [50, 5] and budget.in_use == 55
    for reservation in granted:
        reservation.release()
    assert budget.in_use == 0 and budget.waiting == 0


async def test_a_body_that_waited_too_long_gets_503_with_retry_after() -> None:
    budget = BodyBudget(100, wait=0.05)
    held = await budget.reserve(100)
    with pytest.raises(Refusal) as refused:
        await budget.reserve(10)
    assert refused.value.status == 503
    assert refused.value.code == "body_memory_exhausted"
    assert refused.value.retry_after and refused.value.retry_after >= 1
    assert "max_body_memory" in refused.value.message
    assert budget.waiting == 0 and budget.in_use == 100 and budget.refused == 1
    held.release()
    assert budget.in_use == 0


async def test_more_than_the_whole_budget_is_refused_without_waiting() -> None:
    budget = BodyBudget(100, wait=30)
    with pytest.raises(Refusal, match="more than the whole budget"):
        await budget.reserve(101)
    assert budget.waiting == 0


async def test_a_client_that_leaves_while_waiting_takes_nothing_with_it() -> None:
    budget = BodyBudget(100, wait=30)
    held = await budget.reserve(100)
    leaving = asyncio.create_task(budget.reserve(60))
    behind = asyncio.create_task(budget.reserve(30))
    await asyncio.sleep(0)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert budget.waiting == 1
    held.release()
    assert (await behind).size == 30 and budget.in_use == 30


async def test_a_grant_that_races_the_cancellation_is_given_back() -> None:
    budget = BodyBudget(100, wait=30)
    held = await budget.reserve(100)
    waiter = asyncio.create_task(budget.reserve(40))
    await asyncio.sleep(0)
    held.release()  # grants the waiter's bytes ...
    waiter.cancel()  # ... but it is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert budget.in_use == 0


async def test_a_waiter_that_gives_up_lets_smaller_ones_behind_it_in() -> None:
    budget = BodyBudget(100, wait=30)
    held = await budget.reserve(50)
    big = asyncio.create_task(budget.reserve(80))
    small = asyncio.create_task(budget.reserve(20))
    await asyncio.sleep(0)
    assert not small.done()  # behind the big one
    big.cancel()
    with pytest.raises(asyncio.CancelledError):
        await big
    assert (await small).size == 20
    held.release()


async def test_memory_freed_before_a_cancelled_waiter_has_run_goes_to_the_next() -> None:
    budget = BodyBudget(100, wait=30)
    held = await budget.reserve(100)
    gone = asyncio.create_task(budget.reserve(60))
    behind = asyncio.create_task(budget.reserve(30))
    await asyncio.sleep(0)
    gone.cancel()
    held.release()  # the cancelled waiter is still queued, its task not yet resumed
    assert (await behind).size == 30
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert budget.in_use == 30 and budget.waiting == 0
