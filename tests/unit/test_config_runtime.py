"""`runtime: compose | swarm` and their sections, as an operator writes them, and the
errors that name the key to fix."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from supervisor.config import Config, ConfigError, load_config
from supervisor.runtime.compose import ComposeRuntime
from supervisor.runtime.factory import runtime_for
from supervisor.runtime.swarm import SwarmRuntime

MODELS = """
models:
  chat: {service: chat, upstream: "http://127.0.0.1:9001"}
"""


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "model-supervisor.yaml"
    path.write_text(text + MODELS)
    return load_config(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    return info.value.problems


def test_compose_is_the_default_runtime(tmp_path: Path) -> None:
    config = load(tmp_path, "compose: {file: models.yml, project: models}\n")
    assert config.runtime == "compose" and config.swarm is None
    assert isinstance(runtime_for(config), ComposeRuntime)


def test_swarm_needs_no_compose_section(tmp_path: Path) -> None:
    config = load(tmp_path, "runtime: swarm\nswarm: {stack: models}\n")
    assert config.compose is None
    assert config.swarm is not None
    assert (config.swarm.stack, config.swarm.host, config.swarm.poll_interval) == (
        "models", None, 1.0)
    assert config.swarm.unplaceable_timeout == 30.0
    runtime = runtime_for(config)
    assert isinstance(runtime, SwarmRuntime) and runtime.stack == "models"


def test_each_runtime_asks_for_its_own_section(tmp_path: Path) -> None:
    assert problems(tmp_path, "runtime: swarm\n") == ["swarm: required key is missing"]
    assert problems(tmp_path, "") == ["compose: required key is missing"]
    assert problems(tmp_path, "runtime: kubernetes\nswarm: {stack: s}\n") == [
        "runtime: Input should be 'compose' or 'swarm'"]


def test_bad_swarm_keys_are_named(tmp_path: Path) -> None:
    assert problems(tmp_path, "runtime: swarm\nswarm: {}\n") == [
        "swarm.stack: required key is missing"]
    found = problems(tmp_path, "runtime: swarm\nswarm: {stack: m, poll_interval: 0s}\n")
    assert len(found) == 1 and found[0].startswith("swarm.poll_interval: ")
    found = problems(tmp_path, "runtime: swarm\nswarm: {stack: m, unplaceable_timeout: 3x}\n")
    assert found == ["swarm.unplaceable_timeout: invalid duration '3x': use e.g. 90s, 10m, "
                     "1h or 1h30m"]
    assert problems(tmp_path, "runtime: swarm\nswarm: {stack: m, hots: tcp://x:2376}\n") == [
        "swarm.hots: unknown key"]
    found = problems(tmp_path, "runtime: swarm\nswarm: {stack: 'my stack'}\n")
    assert len(found) == 1 and found[0].startswith("swarm.stack: ")


def test_the_example_swarm_config_names_services_of_the_example_stack() -> None:
    """compose/swarm-stack.yml as `docker stack deploy` reads it: every service at 0
    replicas on the node's network, GPUs as generic resources; the example config's models
    name its services, on the ports their servers listen on."""
    repo = Path(__file__).resolve().parents[2]
    stack = yaml.safe_load((repo / "compose" / "swarm-stack.yml").read_text())
    config = load_config(repo / "compose" / "swarm-supervisor.yaml")
    assert config.runtime == "swarm" and config.swarm is not None
    assert stack["networks"]["hostnet"] == {"external": True, "name": "host"}
    for name, model in config.models.items():
        service = stack["services"][model.profiles["default"].service]
        deploy = service["deploy"]
        assert deploy["replicas"] == 0, name
        assert service["networks"] == ["hostnet"], name
        gpus = deploy["resources"]["reservations"]["generic_resources"]
        assert gpus[0]["discrete_resource_spec"]["kind"] == "gpu", name
        assert f"--port={urlsplit(str(model.upstream)).port}" in service["command"], name
    assert any("placement" in s["deploy"] for s in stack["services"].values())
