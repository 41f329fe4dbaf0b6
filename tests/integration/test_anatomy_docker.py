"""The anatomy of a start on real Compose: a stand-in prints a vLLM start's log lines with
set waits (standin-vllm-start.txt); the supervisor follows the container's log, records
each phase's seconds, exports them, and names the phase to a held streaming client."""

from __future__ import annotations

import pytest

from tests.helpers import model_status, scrape, series_sum

from .conftest import chat

# The waits of standin-vllm-start.txt between the lines that begin each phase.
SCRIPTED = {"weights": 1.5, "compile": 2.0, "kv_cache": 1.0, "api": 1.0}


async def test_a_start_is_split_into_the_phases_its_log_tells(supervisor_factory, http) -> None:
    sup = await supervisor_factory({"vllm-like": {
        "loading_progress": True, "loading_progress_after": "0.1s",
        "loading_progress_every": "0.2s"}})
    async with http.post(sup.url + "/v1/chat/completions",
                         json=chat("vllm-like", stream=True, max_tokens=3)) as r:
        assert r.status == 200
        lines = [line.decode().rstrip("\n") async for line in r.content]
    named: list[str] = []
    for line in lines:
        if line.startswith(": model vllm-like is starting (") and "): " in line:
            phase = line.rpartition("): ")[2]
            if not named or named[-1] != phase:
                named.append(phase)
    # Loading progress named each phase as it came, in order.
    assert [p for p in named if p in SCRIPTED] == list(SCRIPTED), lines

    status = await model_status(http, sup, "vllm-like")
    assert len(status["starts"]) == 1
    start = status["starts"][0]
    assert start["ok"] is True and start["kind"] == "start" and start["phase"] is None
    seconds = {p["phase"]: p["seconds"] for p in start["phases"]}
    assert list(seconds) == ["container", "weights", "compile", "kv_cache", "api", "healthy"]
    for phase, scripted in SCRIPTED.items():
        assert seconds[phase] == pytest.approx(scripted, abs=0.5), (phase, seconds)
    assert sum(seconds.values()) == pytest.approx(start["seconds"], abs=1.0)
    weights = next(p for p in start["phases"] if p["phase"] == "weights")
    assert weights["server_seconds"] == 1.40  # vLLM's own figure, beside the measured one

    async with http.get(f"{sup.admin}/admin/models/vllm-like/starts") as r:
        assert (await r.json())["starts"] == status["starts"]

    exposition = await scrape(http, sup)
    for phase in [*SCRIPTED, "container", "healthy"]:
        assert series_sum(exposition, "supervisor_start_phase_seconds_count",
                          model="vllm-like", phase=phase) == 1
    # Not seen, not observed: this start captured no CUDA graphs.
    assert series_sum(exposition, "supervisor_start_phase_seconds_count",
                      model="vllm-like", phase="graphs") == 0


async def test_a_server_without_a_table_gets_the_supervisors_own_phases(
    supervisor_factory, http
) -> None:
    sup = await supervisor_factory({"chat-slow": {"server": "other"}})
    async with http.post(sup.url + "/v1/chat/completions", json=chat("chat-slow")) as r:
        assert r.status == 200
    start = (await model_status(http, sup, "chat-slow"))["starts"][0]
    seconds = {p["phase"]: p["seconds"] for p in start["phases"]}
    assert list(seconds) == ["container", "healthy"]
    assert seconds["healthy"] == pytest.approx(3.0, abs=1.0)  # STANDIN_STARTUP_DELAY
