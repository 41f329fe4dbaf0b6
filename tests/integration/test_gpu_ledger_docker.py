"""The ledger stand-in in real containers: two services share one "GPU" (a ledger file in a
bind-mounted folder); the second exits with vLLM's own error while the first holds the
memory, starts once it stops, and a SIGKILLed holder's claim expires with its heartbeat
(containers have their own pid namespaces, so the pid cannot tell)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import EMPTY_IMAGE, PATIENCE, ComposeProject, require_docker, wait_for
from tests.standin import STANDIN, load_ledger

GiB = 1 << 30



L = load_ledger()

COMPOSE = """
x-standin: &standin
  image: {image}
  network_mode: host
  volumes:
    - /usr:/usr:ro
    - /lib:/lib:ro
    - /lib64:/lib64:ro
    - /bin:/bin:ro
    - /etc:/etc:ro
    - {standin}:/standin:ro
    - {ledger}:/ledger
  command: ["/usr/bin/python3", "/standin/standin.py"]
  stop_grace_period: 5s
  profiles: ["on-demand"]
services:
  stt:
    <<: *standin
    environment:
      STANDIN_PORT: "19141"
      STANDIN_MODEL: stt
      STANDIN_GPU_LEDGER: /ledger/gpu.json
      STANDIN_VRAM_BYTES: "{stt}"
  tts:
    <<: *standin
    environment:
      STANDIN_PORT: "19142"
      STANDIN_MODEL: tts
      STANDIN_GPU_LEDGER: /ledger/gpu.json
      STANDIN_GPU_MEMORY_UTILIZATION: "0.5"
      STANDIN_LEDGER_STALE: "2"
"""


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[ComposeProject, str]]:
    require_docker()
    folder = tmp_path / "ledger"
    folder.mkdir()
    ledger = str(folder / "gpu.json")
    L.init(ledger, {0: 4 * GiB})  # seed 004: a 4 GB GTX 1050 Ti
    compose = tmp_path / "compose.yml"
    compose.write_text(COMPOSE.format(image=EMPTY_IMAGE, standin=STANDIN, ledger=folder,
                                      stt=int(3.1 * GiB)))
    project = ComposeProject(compose)
    yield project, ledger
    project.down()


async def test_two_models_that_do_not_fit_one_gpu_take_turns(
        stack: tuple[ComposeProject, str]) -> None:
    project, ledger = stack
    project.run("up", "--detach", "stt")
    await wait_for(lambda: L.held(ledger)[0] == int(3.1 * GiB), 15, "stt holds 3.1 GiB")
    project.run("up", "--detach", "tts")
    await wait_for(lambda: not project.running("tts") and project.containers("tts") == 1,
                   15, "tts exited")
    logs = project.run("logs", "--no-log-prefix", "tts")
    assert ("ValueError: Free memory on device cuda:0 (0.9/4.0 GiB) on startup is less than "
            "desired GPU memory utilization (0.5, 2.0 GiB). Decrease GPU memory utilization "
            "or reduce GPU memory used by other processes.") in logs
    project.run("stop", "--timeout", "5", "stt")
    assert L.held(ledger)[0] == 0  # given back on SIGTERM
    project.run("up", "--detach", "tts")
    await wait_for(lambda: L.held(ledger)[0] == 2 * GiB, 15, "tts holds 2 GiB")
    project.run("kill", "-s", "SIGKILL", "tts")
    killed = time.monotonic()
    assert L.held(ledger)[0] == 2 * GiB  # another pid namespace: only the heartbeat tells
    await wait_for(lambda: L.held(ledger)[0] == 0, PATIENCE, "the dead holder's claim expired")
    assert time.monotonic() - killed >= 1.0  # by its heartbeat going stale (2 s), not at once
