"""The config's JSON Schema: the checked-in file is what `model-supervisor schema` prints,
every config file in the repo names it for editors and validates against it, and it
refuses what `serve` refuses (an unknown key, a bad duration)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from supervisor.config import load_config
from supervisor.ops.config_schema import SCHEMA_FILE

REPO = Path(__file__).resolve().parents[2]
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$", re.MULTILINE)
# At least these must be found, so that a broken search cannot pass by finding nothing.
KNOWN = {"model-supervisor.example.yaml", "compose/demo-supervisor.yaml",
         "compose/demo-vllm.yaml", "tests/integration/stack-supervisor.yaml",
         "compose/swarm-supervisor.yaml"}


def repo_configs() -> dict[str, Any]:
    """Every supervisor config among the repo's YAML files (tracked or new, not ignored):
    those with top-level `models` and `compose` or `swarm` keys. Compose files have
    `services`."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.yaml", "*.yml"],
        cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    configs = {}
    for name in listed:
        path = REPO / name
        if not path.is_file():
            continue  # deleted in the work tree
        data = yaml.safe_load(path.read_text())
        if isinstance(data, dict) and "models" in data and data.keys() & {"compose", "swarm"}:
            configs[name] = data
    return configs


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((REPO / SCHEMA_FILE).read_text())
    Draft202012Validator.check_schema(loaded)
    return loaded


def errors(schema: dict[str, Any], instance: Any) -> list[str]:
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in Draft202012Validator(schema).iter_errors(instance))


def test_the_checked_in_schema_is_what_the_command_prints() -> None:
    printed = subprocess.run([sys.executable, "-m", "supervisor", "schema"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    assert printed == (REPO / SCHEMA_FILE).read_text(), (
        f"{SCHEMA_FILE} is stale: run `model-supervisor schema > {SCHEMA_FILE}`")


def test_every_config_in_the_repo_names_the_schema_and_validates(schema) -> None:
    configs = repo_configs()
    assert set(configs) >= KNOWN
    for name, data in configs.items():
        path = REPO / name
        modeline = MODELINE.search(path.read_text())
        assert modeline, f"{name}: no '# yaml-language-server: $schema=...' line"
        assert (path.parent / modeline.group(1)).resolve() == REPO / SCHEMA_FILE, name
        assert errors(schema, data) == [], name
        load_config(path)  # and the supervisor agrees


def test_the_schema_refuses_what_the_supervisor_refuses(schema) -> None:
    base = yaml.safe_load((REPO / "model-supervisor.example.yaml").read_text())
    model = base["models"]["step-audio"]
    assert errors(schema, {**base, "models": {"m": {**model, "idle_timeout": "1h30m"}}}) == []
    assert errors(schema, {**base, "models": {"m": {**model, "idle_timeout": 90}}}) == []
    bad_duration = errors(schema, {**base, "models": {"m": {**model, "idle_timeout": "10x"}}})
    assert len(bad_duration) == 1 and bad_duration[0].startswith("models.m.idle_timeout:")
    typo = errors(schema, {**base, "models": {"m": {**model, "idle_timout": "5m"}}})
    assert typo == ["models.m: Additional properties are not allowed ('idle_timout' was "
                    "unexpected)"]
    assert errors(schema, {**base, "models": {"m": {**model, "upstream": "127.0.0.1:9001"}}})
    assert errors(schema, {**base, "listen": "8080"})
    assert errors(schema, {**base, "models": {}})  # at least one model
