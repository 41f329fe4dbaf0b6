"""What a supervisor measured survives an operator's restart: `model-supervisor serve` (a
process of its own) makes one cold start, is stopped with SIGTERM, and its state file's
`idle` section holds the measured start; a second supervisor on the same state file and
config shows those seconds in GET /admin/models and answers its first request (a cold
start of its own) within the start's time and a margin, for the fixed and the adaptive
idle policy alike. Real Docker and Compose, the stand-in model."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .conftest import COMPOSE_FILE, MODELS, chat, compose_project, starts
from .supervisor_process import SupervisorProcess, http_get

MODEL = "chat-slow"  # the stand-in listens 3 s after its container starts
STANDIN_START = 3.0
MARGIN = 30.0  # docker compose up on a busy machine, on top of the measured start


def _config(project: str, state: Path, policy: str) -> dict[str, Any]:
    return {"compose": {"file": str(COMPOSE_FILE), "project": project},
            "state_file": str(state),
            "models": {MODEL: {**MODELS[MODEL], "idle_policy": policy, "idle_timeout": "10m",
                               "startup_timeout": "60s", "stop_timeout": "1s"}}}


async def _cold_request(sup: SupervisorProcess, within: float) -> aiohttp.ClientResponse:
    timeout = aiohttp.ClientTimeout(total=within)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.post(
            sup.url + "/v1/chat/completions", json=chat(MODEL)) as r:
        await r.read()
        assert r.status == 200, await r.text()
        assert r.headers.get("X-Supervisor-Cold-Start") == "true"
        return r


def _measured(sup: SupervisorProcess) -> dict[str, Any]:
    status, body = http_get(sup.admin + "/admin/models")
    assert status == 200, body
    model = next(m for m in body["models"] if m["name"] == MODEL)
    return dict(model["idle"]["measured"])


def _stop(sup: SupervisorProcess) -> None:
    sup.stop()
    assert sup.proc is not None and sup.proc.returncode == 0, sup.log_tail()
    print(f"supervisor log (tail):\n{sup.log_tail(15)}")


@pytest.mark.parametrize("policy", ["fixed", "adaptive"])
async def test_measured_seconds_survive_a_restart_and_the_next_start_is_answered(
        project: str, tmp_path: Path, policy: str) -> None:
    state = tmp_path / "state.json"
    config = _config(compose_project(project).name, state, policy)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = SupervisorProcess(tmp_path / "a", config)
    try:
        first.start()
        await _cold_request(first, STANDIN_START + MARGIN)
    finally:
        _stop(first)
    idle = json.loads(state.read_text()).get("idle")
    assert idle and MODEL in idle, idle
    start = idle[MODEL]["seconds"]["default"]["start"]
    assert start >= STANDIN_START

    # The container the first one left running goes, as a wrapper may remove it: the
    # second supervisor must start the model itself, with the saved seconds as its ETA.
    compose_project(project).run("stop", "--timeout", "1", MODEL)
    second = SupervisorProcess(tmp_path / "b", config)
    try:
        second.start()
        assert _measured(second)["start"] == pytest.approx(start)
        began = time.monotonic()
        await _cold_request(second, start + MARGIN)
        assert time.monotonic() - began < start + MARGIN
        assert starts(project, MODEL) == 2
    finally:
        _stop(second)
    assert json.loads(state.read_text())["idle"][MODEL]["seconds"]["default"]["start"] > 0


ODD_SECTIONS = {
    "empty": {},
    "partial": {MODEL: {"seconds": {"default": {"start": 2.0}}}},
    "not numbers": {MODEL: {"gaps": [float("nan")], "since": float("inf"),
                            "seconds": {"default": {"start": float("nan"), "stop": -1}}}},
}


@pytest.mark.parametrize("policy", ["fixed", "adaptive"])
@pytest.mark.parametrize("section", list(ODD_SECTIONS))
async def test_an_empty_or_partial_idle_section_never_holds_a_request(
        supervisor_factory: Any, project: str, tmp_path: Path, policy: str,
        section: str) -> None:
    """The model starts on the first request and is answered; the second is warm."""
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"version": 1, "idle": ODD_SECTIONS[section]}))
    sup = await supervisor_factory({MODEL: {"idle_policy": policy, "min_idle": "0.5s"}},
                                   state_file=state)
    timeout = aiohttp.ClientTimeout(total=STANDIN_START + MARGIN)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        for cold in ("true", None):
            async with http.post(sup.url + "/v1/chat/completions", json=chat(MODEL)) as r:
                assert r.status == 200, await r.text()
                assert r.headers.get("X-Supervisor-Cold-Start") == cold
    assert starts(project, MODEL) == 1
