"""The idle policy's bounds and the request journal's keys, checked once at load with
errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.config import ConfigError, load_config
from tests.unit.test_config import write

MODEL = """
compose: {{file: models.yml, project: models}}
{top}
models:
  chat:
    service: chat-svc
    upstream: "http://127.0.0.1:9001"
    {model}
"""


def problems(tmp_path: Path, model: str = "", top: str = "") -> list[str]:
    try:
        load_config(write(tmp_path, MODEL.format(model=model, top=top)))
    except ConfigError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize(("keys", "expected"), [
    ({"idle_timeout": "5m", "min_idle": "10m"},
     "models.chat.min_idle: 600 s is above idle_timeout"),
    ({"idle_timeout": "30m", "long_idle_timeout": "2m", "min_idle": "5m"},
     "models.chat.min_idle: 300 s is above long_idle_timeout"),
    ({"idle_policy": "adaptive", "idle_timeout": "0"},
     "models.chat.idle_timeout: idle_policy adaptive needs one above 0"),
])
def test_the_idle_bounds_must_hold(tmp_path: Path, keys: dict[str, str], expected: str) -> None:
    found = problems(tmp_path, "\n    ".join(f"{k}: {v}" for k, v in keys.items()))
    assert any(p.startswith(expected) for p in found), found


def test_sound_idle_bounds_load(tmp_path: Path) -> None:
    assert problems(tmp_path, "idle_policy: adaptive\n    idle_timeout: 1h\n"
                              "    min_idle: 1m") == []
    assert problems(tmp_path, "idle_timeout: 5m\n    min_idle: 5m") == []


@pytest.mark.parametrize(("top", "expected"), [
    ("journal_max_bytes: 10", "journal_max_bytes: Input should be greater than or equal to 4096"),
    ("journal_max_bytes: lots", "journal_max_bytes: "),
    ("journal_keep: -1", "journal_keep: Input should be greater than or equal to 0"),
    ("journal: [a, b]", "journal: "),
])
def test_journal_keys_are_checked(tmp_path: Path, top: str, expected: str) -> None:
    found = problems(tmp_path, top=top)
    assert any(p.startswith(expected) for p in found), found


def test_the_journal_is_off_by_default_and_relative_to_the_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MODEL.format(model="", top="")))
    assert config.journal is None
    assert (config.journal_max_bytes, config.journal_keep) == (64 << 20, 3)
    config = load_config(write(tmp_path, MODEL.format(
        model="", top="journal: logs/journal.jsonl\njournal_max_bytes: 1MiB\njournal_keep: 0")))
    assert config.journal == tmp_path / "logs" / "journal.jsonl"
    assert (config.journal_max_bytes, config.journal_keep) == (1 << 20, 0)
