"""What a model's idle history looks like after a restart: the state file's `idle` section
as HistoryStore writes it and the next supervisor reads it (saved_histories), and what
GET /admin/models shows of it (Keeper.view) before the model has done anything; and that
an odd saved state cannot stop a unit's start."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from supervisor.config import ModelConfig
from supervisor.idle.history import IdleHistory
from supervisor.idle.keeper import Keeper
from supervisor.idle.store import HistoryStore, saved_histories
from supervisor.lifecycle.listeners import Listeners
from supervisor.rules.table import State
from supervisor.state_file import StateFile

NOW = 1704067200.0
MODEL = ModelConfig(service="chat", upstream="http://127.0.0.1:9")
ADAPTIVE = ModelConfig(service="chat", upstream="http://127.0.0.1:9", idle_policy="adaptive")


def _measured() -> IdleHistory:
    history = IdleHistory(since=NOW)
    history.measured("default", "start", 3.3)
    history.measured("default", "stop", 0.4)
    history.gap(12.0, NOW + 12, down=True)
    return history


async def test_a_save_and_the_next_start_keep_the_measured_seconds(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "state.json")
    await state.save_section("models", {"chat": {"pinned": True}})  # another owner's
    assert await HistoryStore(Keeper(lambda: NOW, {"chat": _measured()}), state).save()
    loaded = saved_histories(await _load(state), NOW + 60)
    again = Keeper(lambda: NOW + 60, loaded)
    assert again.measured("chat", "default", "start") == pytest.approx(3.3)
    assert again.measured("chat", "default", "stop") == pytest.approx(0.4)
    assert list(loaded["chat"].gaps) == [12.0]
    assert (await _load(state))["models"] == {"chat": {"pinned": True}}


async def test_a_failed_save_is_logged_not_raised(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store = HistoryStore(Keeper(lambda: NOW, {"chat": _measured()}),
                         StateFile(blocker / "state.json"))
    with caplog.at_level(logging.ERROR, "supervisor.idle"):
        assert not await store.save()
    assert "cannot save the idle histories" in caplog.text


@pytest.mark.parametrize("section", [
    None, [], {}, {"chat": None}, {"chat": {}}, {"chat": {"seconds": {}}},
    {"chat": {"seconds": {"default": {}}}}, {"chat": {"seconds": {"default": None}}},
    {"chat": {"gaps": None, "downs": None, "seconds": None}},
    {"chat": {"seconds": {"default": {"start": float("nan")}}}},
    {"chat": {"seconds": {"default": {"start": float("inf")}}}},
    {"chat": {"seconds": {"default": {"start": -3.0}}}},
    {"chat": {"gaps": [1.0, "x"]}}, {"chat": {"since": float("nan")}},
])
def test_an_empty_partial_or_odd_section_reads_as_nothing_measured(section: Any) -> None:
    loaded = saved_histories({"idle": section}, NOW)
    keeper = Keeper(lambda: NOW, loaded)
    assert keeper.measured("chat", "default", "start") is None
    assert all(h.since == NOW for h in loaded.values())
    view = keeper.view("chat", ADAPTIVE, "default", 600.0)
    assert view["measured"] == {"start": None, "stop": None, "wake": None}
    assert view["reason"] == "no idle period yet: the fixed bounds"


def test_a_partial_entry_keeps_what_it_has() -> None:
    loaded = saved_histories({"idle": {"chat": {"seconds": {"default": {"start": 3.0}}}}}, NOW)
    assert Keeper(lambda: NOW, loaded).measured("chat", "default", "start") == 3.0
    assert list(loaded["chat"].gaps) == [] and loaded["chat"].since == NOW


@pytest.mark.parametrize(("config", "policy", "reason"), [
    (MODEL, "fixed", "fixed timers (idle_policy: fixed)"),
    (ADAPTIVE, "adaptive", "no idle period yet: the fixed bounds"),
])
def test_the_view_shows_the_saved_seconds_before_the_model_did_anything(
        config: ModelConfig, policy: str, reason: str) -> None:
    view = Keeper(lambda: NOW, {"chat": _measured()}).view("chat", config, "default", 600.0)
    assert view["policy"] == policy and view["reason"] == reason
    assert view["measured"] == {"start": 3.3, "stop": 0.4, "wake": None}
    assert view["stop_after"] == 600.0 and view["prewarms"] == 0
    assert view["prewarm_at"] is None


async def _load(state: StateFile) -> dict[str, Any]:
    assert state.path is not None
    return dict(json.loads(state.path.read_text()))


def test_a_listener_that_fails_on_a_state_change_does_not_stop_the_others(
        caplog: pytest.LogCaptureFixture) -> None:
    """The unit has changed state when it tells its listeners; its start must follow
    even when one of them fails (else a held request waits for a start never made)."""
    heard: list[State] = []

    class Broken:
        def on_state(self, *args: object) -> None:
            raise ValueError("odd saved state")

    class Hears:
        def on_state(self, unit: object, old: State, new: State, event: str) -> None:
            heard.append(new)

    listeners = Listeners()
    listeners.add(Broken())
    listeners.add(Hears())
    with caplog.at_level(logging.ERROR, "supervisor.lifecycle"):
        listeners.state(object(), State.STOPPED, State.STARTING, "demand")
    assert heard == [State.STARTING]
    assert "odd saved state" in caplog.text
