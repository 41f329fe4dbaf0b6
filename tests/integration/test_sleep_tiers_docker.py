"""The deeper sleep tier on a real container, with the stand-in playing vLLM's sleep
mode (a second /sleep ignored; level 2 drops the weights until `reload_weights`): asleep
at level 1 after `sleep.after`, at level 2 after `sleep.deepen_after`, and a wake from
each level recorded (its phases and level) beside the cold start."""

from __future__ import annotations

import time

import pytest

from supervisor.rules.table import State
from tests.helpers import model_status

from .conftest import chat, wait_for

RELOAD = 2.0  # the sleeper's STANDIN_RELOAD_DELAY: reading the weights again
WAKE = 1.0  # its STANDIN_WAKE_DELAY


async def _ask(http, sup) -> None:
    async with http.post(sup.url + "/v1/chat/completions", json=chat("sleeper")) as r:
        assert r.status == 200, await r.text()  # from level 2 without a reload: 500


async def _events(http, sup) -> list[tuple[str, str, str]]:
    async with http.get(sup.admin + "/admin/events") as r:
        assert r.status == 200, await r.text()
        return [(e["from"], e["to"], e["event"]) for e in (await r.json())["events"]
                if e["model"] == "sleeper"]


async def test_a_level_1_sleeper_deepens_to_2_and_each_wake_is_recorded(
    supervisor_factory, http
) -> None:
    sup = await supervisor_factory({"sleeper": {
        "sleep": {"enabled": True, "after": "1s", "deepen_after": "2s"},
        "idle_timeout": "120s",
        "warmup": {"body": {"messages": [{"role": "user", "content": "hi"}],
                            "max_tokens": 1}}}})
    handle = sup.handle("sleeper")
    await _ask(http, sup)  # cold start
    await wait_for(lambda: handle.state is State.ASLEEP, 10, "asleep")
    assert handle.sleep_level == 1
    await _ask(http, sup)  # wakes from level 1 before deepen_after

    await wait_for(lambda: handle.state is State.ASLEEP, 10, "asleep again")
    asleep_at = time.monotonic()
    await wait_for(lambda: handle.sleep_level == 2, 10, "deepened")
    # deepen_after, then vLLM's way down: a wake (it ignores a second /sleep), a sleep at 2.
    assert time.monotonic() - asleep_at == pytest.approx(2.0 + WAKE, abs=0.8)
    assert handle.state is State.ASLEEP
    await _ask(http, sup)  # wakes from level 2: the weights read again

    status = await model_status(http, sup, "sleeper")
    kinds = [(s["kind"], s.get("level"), s["ok"]) for s in status["starts"]]
    assert kinds == [("start", None, True), ("wake", 1, True), ("wake", 2, True)]
    for wake in status["starts"][1:]:
        assert [p["phase"] for p in wake["phases"]] == ["wake", "warmup"]
        assert sum(p["seconds"] for p in wake["phases"]) == pytest.approx(
            wake["seconds"], abs=0.1)
    level1, level2 = status["starts"][1]["seconds"], status["starts"][2]["seconds"]
    assert level1 == pytest.approx(WAKE, abs=0.8)
    assert level2 == pytest.approx(WAKE + RELOAD, abs=0.8)
    assert status["wake_seconds"] == {"level1": level1, "level2": level2}
    assert status["last_cold_start_seconds"] is not None  # shown beside the cold start

    # The event log says why it went to sleep again while asleep: deepen, then slept.
    events = await _events(http, sup)
    assert ("asleep", "sleeping", "deepen") in events
    deepen = events.index(("asleep", "sleeping", "deepen"))
    assert events[deepen + 1] == ("sleeping", "asleep", "slept")
