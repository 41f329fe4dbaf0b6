"""The config file as an operator writes it, and the errors they get."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from supervisor.config import ConfigError, host_port, load_config, parse_duration

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "model-supervisor.yaml"
    path.write_text(text)
    return path


MINIMAL = """
compose: {file: models.yml, project: models}
models:
  chat: {service: chat-svc, upstream: "http://127.0.0.1:9001"}
"""


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400), ("250ms", 0.25), ("2d", 172800),
     ("45", 45), (12, 12), (0.5, 0.5), (" 5 m ", 300)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10x", "m", "", "1h-5m", "-5s", "ten minutes", True, None])
def test_bad_durations_are_rejected(text: object) -> None:
    with pytest.raises(ValueError, match=r"duration"):
        parse_duration(text)


def test_readme_example_loads_with_its_documented_values() -> None:
    readme = (REPO / "README.md").read_text()
    block = re.search(r"```yaml\n(listen:.*?)```", readme, re.S)
    assert block, "the README must show the example configuration"
    example = (REPO / "model-supervisor.example.yaml").read_text()
    assert yaml.safe_load(block.group(1)) == yaml.safe_load(example)
    config = load_config(REPO / "model-supervisor.example.yaml")
    model = config.models["step-audio"]
    assert (model.startup_timeout, model.idle_timeout, model.stop_timeout) == (900, 600, 30)
    assert model.hold_timeout == 1200 and model.max_held == 256
    assert model.aliases == ["step-audio-r1.1"]
    assert config.compose.file == REPO / "compose" / "models.yml"
    assert host_port(config.listen) == ("127.0.0.1", 8080)


def test_defaults_fill_what_the_file_leaves_out(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    model = config.models["chat"]
    assert model.health == "/health"
    assert model.idle_timeout == 600
    assert config.compose.file == tmp_path / "models.yml"


def test_environment_overrides_one_nested_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SUPERVISOR_MODELS__CHAT__IDLE_TIMEOUT", "5m")
    monkeypatch.setenv("SUPERVISOR_LISTEN", "127.0.0.1:9999")
    config = load_config(write(tmp_path, MINIMAL))
    assert config.models["chat"].idle_timeout == 300
    assert config.models["chat"].service == "chat-svc"  # the rest of the file still holds
    assert host_port(config.listen)[1] == 9999


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("idle_timeout: 10x", "models.chat.idle_timeout: invalid duration '10x'"),
        ("upstream: 'localhost:9001'", "models.chat.upstream: 'localhost:9001' is not an http"),
        ("upstream: 'http://127.0.0.1:99999'", "models.chat.upstream: 'http://127.0.0.1:99999'"),
        ("max_held: -1", "models.chat.max_held: Input should be greater than or equal to 0"),
        ("health: health", "models.chat.health: String should match pattern"),
        ("idle_timout: 5m", "models.chat.idle_timout: unknown key"),
    ],
)
def test_errors_name_the_bad_key(tmp_path: Path, snippet: str, expected: str) -> None:
    text = f"""
compose: {{file: models.yml, project: models}}
models:
  chat:
    service: chat-svc
    upstream: "http://127.0.0.1:9001"
    {snippet}
"""
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert any(p.startswith(expected) for p in caught.value.problems), caught.value.problems


def test_missing_required_keys_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, "models:\n  chat: {upstream: 'http://127.0.0.1:1'}\n"))
    assert "compose: required key is missing" in caught.value.problems
    assert "models.chat.service: required (or `profiles`)" in caught.value.problems


def test_two_models_cannot_share_an_alias(tmp_path: Path) -> None:
    text = MINIMAL + """  other:
    service: other-svc
    upstream: "http://127.0.0.1:9002"
    aliases: [chat]
"""
    with pytest.raises(ConfigError, match=r"models.other.aliases: 'chat' is already"):
        load_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("listen: [", "not valid YAML"), ("- a\n- b\n", "expected a mapping")],
)
def test_unusable_files(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")
