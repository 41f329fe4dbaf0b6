"""Issue 21, the account, on real Compose: two cold starts of the stand-in (3 s) each with
requests held on it, warm requests, idle stops; then GET /admin/savings agrees with the
admin events' transitions (seconds per state), with what the clients measured (seconds
waited), with the request journal (cold starts, held seconds) and with /metrics, and the
day's totals are in the state file after the supervisor stopped."""

from __future__ import annotations

import asyncio
import json
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp

from supervisor.rules.table import State
from tests.helpers import Supervisor, scrape, start_supervisor

from .conftest import MODELS, chat, compose_project, wait_for

MODEL = "chat-slow"  # the stand-in with a 3 s start
GIB = 1 << 30


async def _timed(http: aiohttp.ClientSession, sup: Supervisor) -> tuple[float, float]:
    """(seconds the client waited for the answer, X-Supervisor-Hold-Seconds or 0)."""
    began = time.monotonic()
    async with http.post(sup.url + "/v1/chat/completions", json=chat(MODEL)) as r:
        await r.read()
        assert r.status == 200, await r.text()
        return time.monotonic() - began, float(r.headers.get("X-Supervisor-Hold-Seconds", 0))


async def _get(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.json()


def _state_seconds(events: list[dict[str, Any]], since: float, until: float
                   ) -> dict[str, float]:
    """Seconds per state from the state changes, stopped from `since`, the last to `until`."""
    changes = [e for e in events if e["from"] != e["to"]]
    marks = [{"to": "stopped", "time": since}, *changes, {"to": None, "time": until}]
    out: dict[str, float] = {}
    for a, b in pairwise(marks):
        out[a["to"]] = out.get(a["to"], 0.0) + b["time"] - a["time"]
    return out


async def test_the_account_agrees_with_events_clients_journal_and_metrics(
    project: str, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    model = {**MODELS[MODEL], "idle_timeout": "3s", "vram": "1GiB"}
    state, journal = tmp_path / "state.json", tmp_path / "journal.jsonl"
    sup = await start_supervisor(compose_project(project), {MODEL: model},
                                 state_file=state, journal=journal)
    handle = sup.handle(MODEL)
    try:
        cold = list(await asyncio.gather(*(_timed(http, sup) for _ in range(3))))
        warm = [await _timed(http, sup) for _ in range(2)]
        await wait_for(lambda: handle.state is State.STOPPED, 30, "the idle stop")
        cold += await asyncio.gather(*(_timed(http, sup) for _ in range(2)))
        await wait_for(lambda: handle.state is State.STOPPED, 30, "the second idle stop")

        report = await _get(http, sup.admin + "/admin/savings")
        events = [e for e in (await _get(http, sup.admin + "/admin/events"))["events"]
                  if e["model"] == MODEL]
        metrics = await scrape(http, sup)
    finally:
        await sup.stop()  # writes the journal and the state file

    account = report["models"][MODEL]["since_start"]
    expected = _state_seconds(events, report["since"], report["since"] + report["seconds"])
    assert set(account["state_seconds"]) == set(expected)
    for name, seconds in expected.items():
        assert abs(account["state_seconds"][name] - seconds) < 0.5, (name, account, expected)

    starts = [e for e in events if e["to"] == "starting"]
    assert account["cold_starts"] == len(starts) == 2
    assert account["wakes"] == 0
    assert account["held_requests"] == {"start": 5, "wake": 0}
    # What users paid: the clients' own measure of the held requests (their answers took
    # a few milliseconds more), and the hold each was told in its header.
    assert all(hold > 0 for _, hold in cold) and all(hold == 0 for _, hold in warm)
    assert abs(account["waited_seconds"] - sum(seconds for seconds, _ in cold)) < 0.5
    assert abs(account["waited_seconds"] - sum(hold for _, hold in cold)) < 0.1

    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    held = [line for line in lines if line["start"] == "cold"]
    assert len(held) == account["held_requests"]["start"]
    assert abs(sum(line["held"] for line in held) - account["cold_start_wait_seconds"]) < 0.5

    # GPU-hours: 1 GiB declared on one GPU, held from each start to each stop.
    reserved = sum(v for k, v in expected.items() if k != "stopped")
    assert abs(account["gpu_hours_held"] * 3600 - reserved) < 0.5
    assert abs(account["gpu_hours_given_back"] * 3600 - expected["stopped"]) < 0.5
    assert abs(account["gpu_memory_byte_seconds"] / GIB - reserved) < 0.5
    assert account["energy_joules"] is None  # no NVML energy counter on this host

    assert f'supervisor_cold_starts_total{{model="{MODEL}",kind="start"}} 2.0' in metrics
    assert f'supervisor_cold_start_waits_total{{model="{MODEL}",kind="start"}} 5.0' in metrics

    saved = json.loads(state.read_text())["savings"]["days"]
    [today] = [units[MODEL] for units in saved.values()]
    assert (today["starts"], today["waits"]["start"]) == (2, 5)
