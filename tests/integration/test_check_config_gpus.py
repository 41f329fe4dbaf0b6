"""check-config's GPU placement checks against the real `docker compose config`: a profile
that can never fit on its GPUs, and one whose GPUs cannot be determined, by key path."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

from supervisor.config import load_config
from supervisor.gpus.measured import Measured
from supervisor.gpus.resolver import GpuNeeds
from supervisor.ops.checks import check

from .test_check_config import check_config

DATA = Path(__file__).resolve().parents[1] / "unit" / "data"

COMPOSE = """
x-gpu: &gpu
  image: model-supervisor/empty:latest
  profiles: ["on-demand"]
services:
  audio:  # seed 000: four GPUs, vLLM at 85 %
    <<: *gpu
    command: ["--model", "/m", "--tensor-parallel-size", "4", "--gpu-memory-utilization", "0.85"]
    deploy:
      resources:
        reservations:
          devices:
            - {driver: nvidia, device_ids: ["0", "1", "2", "3"], capabilities: [gpu]}
  small:
    <<: *gpu
    environment: {NVIDIA_VISIBLE_DEVICES: "3"}
  anywhere:
    <<: *gpu
    deploy:
      resources:
        reservations:
          devices:
            - {capabilities: [gpu], count: 2}
  cpu:
    <<: *gpu
"""


def write(tmp_path: Path, models: str, gpus: str = "{0: 46068MiB, 1: 46068MiB, "
          "2: 46068MiB, 3: 46068MiB}") -> Path:
    (tmp_path / "compose.yml").write_text(COMPOSE)
    path = tmp_path / "config.yaml"
    path.write_text(f"compose: {{file: compose.yml, project: gpucheck}}\n"
                    f"{'gpus: ' + gpus if gpus else ''}\nmodels:\n{models}")
    return path


GOOD = """
  audio: {service: audio, upstream: "http://127.0.0.1:1"}
  small: {service: small, upstream: "http://127.0.0.1:2", vram: 6GiB}
  cpu: {service: cpu, upstream: "http://127.0.0.1:3", gpus: []}
"""


def test_models_that_fit_their_gpus_pass(tmp_path: Path) -> None:
    done = check_config(write(tmp_path, GOOD))
    assert done.returncode == 0, done.stderr


def test_a_profile_that_can_never_fit_is_named_by_its_key(tmp_path: Path) -> None:
    done = check_config(write(tmp_path, """
  tts:
    upstream: "http://127.0.0.1:2"
    default_profile: short
    profiles:
      short: {service: small, vram: 6GiB}
      long: {service: small, vram: 50GB}
  pinned:
    service: small
    upstream: "http://127.0.0.1:3"
    gpus: [5]
    vram: 1GiB
"""))
    assert done.returncode == 1
    assert ("models.tts.profiles.long.vram: can never fit: model 'tts' needs 46.57 GiB on "
            "GPU 3, which has 44.99 GiB in all") in done.stderr
    assert "profiles.short" not in done.stderr
    assert ("models.pinned.gpus: can never fit: model 'pinned' needs GPU 5, which is not "
            "among the GPUs (0, 1, 2, 3)") in done.stderr


def test_a_model_whose_gpus_cannot_be_determined_is_named(tmp_path: Path) -> None:
    done = check_config(write(tmp_path, """
  cpu: {service: cpu, upstream: "http://127.0.0.1:3"}
  anywhere: {service: anywhere, upstream: "http://127.0.0.1:4"}
"""))
    assert done.returncode == 1
    assert ("models.cpu.gpus: cannot determine the GPUs of service 'cpu': the service "
            "reserves no GPU") in done.stderr
    assert ("models.anywhere.gpus: cannot determine the GPUs of service 'anywhere': "
            "deploy.resources.reservations.devices[0].count: 2 lets Docker pick") in done.stderr


def test_without_an_inventory_gpu_checks_are_off(tmp_path: Path) -> None:
    """No NVML here and no `gpus:`: CPU configs stay valid as before placement existed."""
    done = check_config(write(tmp_path, """
  cpu: {service: cpu, upstream: "http://127.0.0.1:3"}
  tts: {service: small, upstream: "http://127.0.0.1:2", vram: 50GB}
""", gpus=""))
    assert done.returncode == 0, done.stderr


class _Nvml:
    """Two 24 GiB GPUs, as pynvml would report them."""

    class NVMLError(Exception):
        pass

    nvmlMemory_v2 = 2

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: return 2
    def nvmlDeviceGetHandleByIndex(self, i: int) -> int: return i
    def nvmlDeviceGetUUID(self, h: int) -> str: return f"GPU-{h}"
    def nvmlDeviceGetMemoryInfo(self, h: int, v: int = 1) -> SimpleNamespace:
        return SimpleNamespace(total=24 << 30, used=0)
    def nvmlDeviceGetUtilizationRates(self, h: int) -> None: return None
    def nvmlDeviceGetPowerUsage(self, h: int) -> None: return None
    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[object]: return []


def test_gpus_seen_by_nvml_turn_the_checks_on(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
  audio: {service: audio, upstream: "http://127.0.0.1:1"}
""", gpus=""))
    assert check(config) == []  # no NVML on this machine
    [problem] = check(config, nvml=_Nvml())  # audio names GPUs 2 and 3, NVML has 0 and 1
    assert problem.startswith("models.audio.service: can never fit: model 'audio' needs GPU 2")


def test_the_recorded_compose_json_is_what_compose_prints(tmp_path: Path) -> None:
    """tests/unit/data/compose-gpus.json feeds the unit tests: it must stay real."""
    done = subprocess.run(
        ["docker", "compose", "-f", str(DATA / "compose-gpus.yml"), "-p", "gpus",
         "--profile", "*", "config", "--format", "json"],
        capture_output=True, text=True, timeout=60, check=True)
    recorded = json.loads((DATA / "compose-gpus.json").read_text())
    assert json.loads(done.stdout)["services"] == recorded["services"]


async def test_the_resolver_loads_gpus_and_services_off_the_loop(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    needs, problems = await GpuNeeds.load(config, Measured())
    assert problems == [] and needs.enabled and needs.totals[3] == 46068 << 20
    assert needs.need("audio", "default").gpus == (0, 1, 2, 3)
    assert needs.need("small", "default").per_gpu == {3: 6 << 30}
    assert not needs.need("cpu", "default").placed
