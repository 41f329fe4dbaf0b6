"""A stopped model's container is started again, not recreated (what it keeps inside, a
compile cache, survives); when its Compose config changed, `up` recreates it and the log
says so. The real `docker compose` and Docker Engine, on a stand-in service."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from supervisor.config import ComposeConfig
from supervisor.runtime.compose import ComposeRuntime
from tests.helpers import ComposeProject

from .conftest import COMPOSE_FILE

SERVICE = """
services:
  keeps:
    image: model-supervisor/empty:latest
    network_mode: host
    volumes: ["/usr:/usr:ro", "/lib:/lib:ro", "/lib64:/lib64:ro", "/bin:/bin:ro",
              "/etc:/etc:ro", "{standin}:/standin:ro"]
    command: ["/usr/bin/python3", "/standin/standin.py"]
    stop_grace_period: 1s
    profiles: ["on-demand"]
    environment: {{STANDIN_MODEL: keeps, STANDIN_PORT: "19114", STANDIN_NOTE: "{note}"}}
"""


@pytest.fixture
def compose(docker_engine: None, tmp_path: Path) -> Iterator[ComposeProject]:
    project = ComposeProject(tmp_path / "compose.yml")
    write(project, note="first")
    yield project
    project.down()


def write(project: ComposeProject, note: str) -> None:
    standin = (COMPOSE_FILE.parents[2] / "compose" / "standin").resolve()
    project.file.write_text(SERVICE.format(standin=standin, note=note))


def container_id(project: ComposeProject) -> str:
    return project.run("ps", "--all", "-q", "--no-trunc", "keeps").strip()


async def test_a_stopped_container_is_started_again_unless_its_config_changed(
    compose: ComposeProject, caplog: pytest.LogCaptureFixture
) -> None:
    runtime = ComposeRuntime(ComposeConfig.model_validate(compose.compose_config()))
    caplog.set_level(logging.INFO, logger="supervisor.runtime.compose")
    await runtime.start("keeps")
    first = container_id(compose)
    assert first and compose.running("keeps")

    await runtime.stop("keeps", grace=1)
    assert not compose.running("keeps")
    await runtime.start("keeps")
    assert compose.running("keeps")
    assert container_id(compose) == first  # the same container: started, not recreated
    assert "recreated" not in caplog.text

    await runtime.stop("keeps", grace=1)
    write(compose, note="changed")  # the operator edits the service
    await runtime.start("keeps")
    assert compose.running("keeps")
    assert container_id(compose) not in ("", first)
    warned = [r for r in caplog.records if "recreated its container" in r.getMessage()]
    assert len(warned) == 1 and warned[0].levelno == logging.WARNING
    assert "service=keeps" in warned[0].getMessage()
    assert "config changed" in warned[0].getMessage()
