"""A Docker daemon that cannot be reached is a RuntimeFailure, never an SDK error that
escapes to a client as a 500 page. Real SDK calls against a socket nobody serves."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.config import ComposeConfig
from supervisor.runtime.base import RuntimeFailure
from supervisor.runtime.compose import ComposeRuntime


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ComposeRuntime:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")
    return ComposeRuntime(ComposeConfig(file=tmp_path / "compose.yml", project="p"))


async def test_status_logs_adopt_and_ping_raise_runtime_failure(runtime: ComposeRuntime) -> None:
    for call in (runtime.status("svc"), runtime.logs_tail("svc", 5),
                 runtime.running_services(), runtime.ping()):
        with pytest.raises(RuntimeFailure, match="Docker is not reachable"):
            await call
