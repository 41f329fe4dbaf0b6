"""What wakes a start that waits for GPU memory, and what cancels it, on seed 004's box
(FakeRuntime, FakeClock). Each was a gap found by these tests, then fixed:

1. A start that waits only for an occupant's min_residency is planned again only when
   something else changes: nothing wakes it when min_residency ends, so with the default
   60 s it waits for the occupant's idle stop (600 s) or another request.
2. Unpinning a model (operator or the end of a keep-warm window) does not wake a start
   that waits for it.
3. A start whose held requests all gave up (hold_timeout, clients gone) stays queued for
   GPU memory; once the occupant becomes evictable it is stopped and the model starts for
   nobody.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from supervisor.refusal import Refusal
from supervisor.rules.table import State
from tests.fakes import Client, settle
from tests.unit.test_budget import box, seed_004

__all__ = ["box"]  # the fixture, shared with test_budget.py


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    """Requests still waiting when a test ends are cancelled (not failed at close)."""
    made: list[Client] = []
    yield made
    for client in made:
        client.task.cancel()


async def test_a_start_waiting_for_min_residency_starts_when_it_ends(
        box: Any, clients: list[Client]) -> None:
    handles, runtime, clock = box(seed_004(stt={"min_residency": "60s"}))
    stt, tts = handles["stt"], handles["tts"]
    await Client(stt, keep=False).result()
    clients.append(Client(tts, keep=False))
    await settle(200)
    assert tts.state is State.STARTING and runtime.stops == []  # stt inside min_residency
    clock.advance(61)
    await settle(500)
    assert runtime.calls == [("start", "stt"), ("stop", "stt"), ("start", "tts")]


async def test_a_start_waiting_for_a_pinned_model_starts_once_it_is_unpinned(
        box: Any, clients: list[Client]) -> None:
    handles, runtime, _ = box(seed_004())
    stt, tts = handles["stt"], handles["tts"]
    await Client(stt, keep=False).result()
    stt.set_pinned(True)
    clients.append(Client(tts, keep=False))
    await settle(200)
    assert tts.state is State.STARTING and runtime.stops == []
    stt.set_pinned(False)
    await settle(500)
    assert runtime.calls == [("start", "stt"), ("stop", "stt"), ("start", "tts")]


async def test_a_start_whose_requests_all_timed_out_evicts_nobody_later(box: Any) -> None:
    handles, runtime, clock = box(seed_004(tts={"hold_timeout": "30s"}))
    stt, tts = handles["stt"], handles["tts"]
    await Client(stt, keep=False).result()
    stt.set_pinned(True)
    waiting = Client(tts, keep=False)
    await settle(200)
    clock.advance(31)
    with pytest.raises(Refusal):
        await waiting.result()  # 504 hold_timeout: nobody wants tts any more
    stt.set_pinned(False)
    await Client(stt, keep=False).result()  # stt serves a request, and is idle again
    await settle(500)
    assert runtime.calls == [("start", "stt")], "stt stopped and tts started for nobody"
    assert (stt.state, tts.state) == (State.READY, State.STOPPED)
