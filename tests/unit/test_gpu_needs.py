"""What a profile needs, from `docker compose config` JSON (recorded from the real CLI in
data/compose-gpus.json), the config, the inventory and measured peaks; the inventory
itself (NVML played back by a fake); measured peaks and their place in the state file."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from supervisor.config import Config, ModelConfig, SleepConfig, parse_bytes
from supervisor.gpus.inventory import Inventory, merge, read_inventory
from supervisor.gpus.measured import SECTION, Measured, by_profile
from supervisor.gpus.needs import (
    MemorySource,
    asleep_need,
    resolve_need,
    service_gpus,
    vllm_utilization,
)
from supervisor.gpus.resolver import GpuNeeds
from supervisor.observe.gpu import Device, ModelMemory
from supervisor.rules.table import State
from supervisor.state_file import StateFile

GiB = 1 << 30
DATA = Path(__file__).parent / "data"
SERVICES: dict[str, dict[str, Any]] = json.loads(
    (DATA / "compose-gpus.json").read_text())["services"]
UUID = "GPU-0c3b1c4e-aaaa-bbbb-cccc-000000000001"
FOUR = Inventory({i: 24 * GiB for i in range(4)}, {UUID: 2})


# -- sizes in the config ---------------------------------------------------------------


@pytest.mark.parametrize(("text", "size"), [
    ("24GiB", 24 * GiB), ("512MiB", 512 << 20), ("3.1GB", 3_100_000_000),
    ("1.5TB", 1_500_000_000_000), ("1024", 1024), (4096, 4096), ("0.5 gib", GiB // 2),
    ("2KiB", 2048), ("7B", 7),
])
def test_sizes(text: object, size: int) -> None:
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["24G", "lots", "-1GiB", "1e3GiB", "", True])
def test_bad_sizes_are_named(text: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_bytes(text)


def _config(**extra: Any) -> Config:
    return Config.model_validate({
        "compose": {"file": "x.yml", "project": "p"},
        "models": {"m": {"service": "s", "upstream": "http://127.0.0.1:1", **extra}}})


def test_gpu_keys_in_the_config() -> None:
    config = Config.model_validate({
        "compose": {"file": "x.yml", "project": "p"}, "gpus": {0: "24GiB", "1": "4GB"},
        "models": {"m": {"upstream": "http://127.0.0.1:1", "default_profile": "a",
                         "gpus": [1], "vram": "2GiB",
                         "sleep": {"enabled": True, "vram": "512MiB"},
                         "profiles": {"a": {"service": "a"},
                                      "b": {"service": "b", "gpus": [0, 1], "vram": "20GiB"}}}}})
    assert config.gpus == {0: 24 * GiB, 1: 4_000_000_000}
    model = config.models["m"]
    assert (model.gpus, model.vram, model.sleep.vram) == ([1], 2 * GiB, 512 << 20)
    assert (model.profiles["b"].gpus, model.profiles["b"].vram) == ([0, 1], 20 * GiB)


@pytest.mark.parametrize(("extra", "match"), [
    ({"vram": "24G"}, "invalid size '24G'"),
    ({"vram": 0}, "greater than 0"),
    ({"gpus": [0, 0]}, "named twice"),
    ({"gpus": [-1]}, "greater than or equal to 0"),
])
def test_bad_gpu_keys(extra: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        _config(**extra)


# -- which GPUs ------------------------------------------------------------------------


@pytest.mark.parametrize(("service", "gpus", "origin"), [
    ("ids", (0, 1, 2, 3), "deploy.resources.reservations.devices[0].device_ids"),
    ("ids-cuda", (3,), "CUDA_VISIBLE_DEVICES among deploy"),
    ("all", (0, 1, 2, 3), "count: all"),
    ("service-gpus", (1,), "gpus[0].device_ids"),
    ("nvidia-env", (0, 2), "NVIDIA_VISIBLE_DEVICES"),
    ("cuda-env", (3,), "CUDA_VISIBLE_DEVICES"),
    ("no-gpu", (), "NVIDIA_VISIBLE_DEVICES=none"),
    ("uuid", (2,), "device_ids"),
    ("count", None, "count: 2 lets Docker pick"),
    ("nothing", None, "reserves no GPU"),
])
def test_gpus_of_a_service(service: str, gpus: tuple[int, ...] | None, origin: str) -> None:
    choice = service_gpus(SERVICES[service], FOUR)
    assert choice.gpus == gpus
    assert origin in choice.origin


def test_gpus_that_need_an_inventory() -> None:
    assert service_gpus(SERVICES["all"], Inventory()).gpus is None
    assert service_gpus(SERVICES["uuid"], Inventory({0: GiB})).gpus is None
    two = Inventory({0: GiB, 1: GiB})
    assert service_gpus(SERVICES["count"], two).gpus == (0, 1)  # count 2 of 2: every GPU
    bad = {**SERVICES["ids-cuda"], "environment": {"CUDA_VISIBLE_DEVICES": "5"}}
    assert "position 5" in service_gpus(bad, FOUR).origin


# -- how much memory ---------------------------------------------------------------------


@pytest.mark.parametrize(("service", "ratio"), [
    ("ids", 0.85), ("ids-cuda", 0.5), ("service-gpus", 0.3), ("all", 0.9), ("nothing", None),
])
def test_vllm_utilization(service: str, ratio: float | None) -> None:
    found = vllm_utilization(SERVICES[service])
    assert (found[0] if found else None) == ratio


def test_a_utilization_that_is_no_fraction_is_ignored() -> None:
    assert vllm_utilization({"command": ["vllm", "--gpu-memory-utilization", "lots"]}) is None
    assert vllm_utilization({"command": ["--gpu_memory_utilization=1.5"]}) is None


def _model(**extra: Any) -> ModelConfig:
    return ModelConfig.model_validate({"service": "ids", "upstream": "http://x:1", **extra})


def test_need_declared_beats_vllm_beats_measured_beats_unknown() -> None:
    service = SERVICES["ids"]
    declared = resolve_need("m", _model(vram="20GiB"), "default", service, FOUR)
    assert (declared.source, declared.per_gpu[3]) == (MemorySource.DECLARED, 20 * GiB)
    vllm = resolve_need("m", _model(), "default", service, FOUR, {0: GiB})
    assert vllm.source is MemorySource.VLLM_UTILIZATION
    assert vllm.per_gpu == dict.fromkeys(range(4), math.ceil(24 * GiB * 0.85))
    plain = SERVICES["nvidia-env"]
    measured = resolve_need("m", _model(), "default", plain, FOUR, {0: 3 * GiB, 2: 5 * GiB})
    assert (measured.source, measured.per_gpu) == (MemorySource.MEASURED,
                                                  {0: 3 * GiB, 2: 5 * GiB})
    unknown = resolve_need("m", _model(), "default", plain, FOUR)
    assert (unknown.source, unknown.per_gpu) == (MemorySource.UNKNOWN, {0: None, 2: None})
    assert "GPU 0: whole" in unknown.describe()


def test_the_gpus_key_overrides_the_service_and_the_profile_overrides_the_model() -> None:
    model = ModelConfig.model_validate({"upstream": "http://x:1", "default_profile": "a",
                                        "gpus": [1], "vram": "1GiB",
                                        "profiles": {"a": {"service": "ids"},
                                                     "b": {"service": "ids", "gpus": [2, 3],
                                                           "vram": "2GiB"}}})
    a = resolve_need("m", model, "a", SERVICES["ids"], FOUR)
    b = resolve_need("m", model, "b", SERVICES["ids"], FOUR)
    assert (a.gpus, a.per_gpu) == ((1,), {1: GiB})
    assert (b.gpus, b.per_gpu) == ((2, 3), {2: 2 * GiB, 3: 2 * GiB})


def test_no_gpu_and_unknown_gpus_are_not_placed() -> None:
    none = resolve_need("m", _model(gpus=[]), "default", SERVICES["ids"], FOUR)
    assert (none.gpus, none.placed) == ((), False)
    lost = resolve_need("m", _model(), "default", None, FOUR)
    assert (lost.gpus, lost.placed) == (None, False)
    assert "not in the Compose file" in lost.describe()


def test_what_a_sleeping_server_keeps() -> None:
    need = resolve_need("m", _model(), "default", SERVICES["ids"], FOUR)
    off = SleepConfig.model_validate({"vram": "1GiB"})
    on = SleepConfig.model_validate({"enabled": True, "vram": "1GiB"})
    assert asleep_need(need, off) is None
    assert asleep_need(need, on) == dict.fromkeys(range(4), GiB)
    assert asleep_need(need, on, {0: 700 << 20}) == dict.fromkeys(range(4), 700 << 20)
    assert asleep_need(need, SleepConfig.model_validate({"enabled": True})) is None


# -- inventory ---------------------------------------------------------------------------


def _device(index: int, total: int, uuid: str = "") -> Device:
    return Device(index, uuid or f"GPU-{index}", 0, total)


def test_inventory_merges_nvml_with_the_config() -> None:
    inv = merge([_device(0, 24 * GiB), _device(1, 24 * GiB)], {1: 20 * GiB, 2: 4 * GiB})
    assert inv.totals == {0: 24 * GiB, 1: 20 * GiB, 2: 4 * GiB}
    assert inv.origin == {0: "nvml", 1: "config", 2: "config"}
    assert inv.uuids == {"GPU-0": 0, "GPU-1": 1}
    assert inv.enabled and "GPU 1: 20 GiB (config)" in inv.describe()
    assert not merge([], {}).enabled


class FakeNvml:
    """Just enough of pynvml for `read_devices`."""

    class NVMLError(Exception):
        pass

    nvmlMemory_v2 = 2

    def __init__(self, totals: list[int], fail: bool = False, reserved: int = 0) -> None:
        self.totals, self.fail, self.shut, self.reserved = totals, fail, False, reserved

    def nvmlInit(self) -> None:
        if self.fail:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self) -> None:
        self.shut = True

    def nvmlDeviceGetCount(self) -> int:
        return len(self.totals)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUUID(self, h: int) -> bytes:
        return f"GPU-{h}".encode()

    def nvmlDeviceGetMemoryInfo(self, h: int, version: int = 1) -> SimpleNamespace:
        if version == self.nvmlMemory_v2:  # v2 tells the driver's reservation apart
            return SimpleNamespace(total=self.totals[h], reserved=self.reserved, used=0)
        return SimpleNamespace(total=self.totals[h], used=self.reserved)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=0)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        return 0

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[object]:
        return []


def test_the_inventory_counts_what_cuda_can_hand_out() -> None:
    """An H200 as measured: NVML's total less the driver's reservation is CUDA's total."""
    nvml = FakeNvml([150754820096], reserved=644939776)
    assert read_inventory({}, nvml).totals == {0: 150109880320}


def test_inventory_from_nvml_and_without_it() -> None:
    nvml = FakeNvml([46068 << 20] * 2)
    inv = read_inventory({}, nvml)
    assert inv.totals == {0: 46068 << 20, 1: 46068 << 20} and nvml.shut
    down = read_inventory({0: 4 * GiB}, FakeNvml([], fail=True))
    assert down.totals == {0: 4 * GiB} and "Driver Not Loaded" in down.nvml_problem
    assert not read_inventory({}, FakeNvml([], fail=True)).enabled
    assert read_inventory({3: GiB}, FakeNvml([GiB])).indices == (0, 3)  # NVML's and declared


# -- measured peaks ----------------------------------------------------------------------


def test_measured_peaks_only_grow_until_reset() -> None:
    m = Measured()
    assert m.record("a", "p", {0: 5, 1: 7})
    assert not m.record("a", "p", {0: 4})
    assert m.record("a", "p", {0: 6})
    assert m.peak("a", "p") == {0: 6, 1: 7} and m.asleep("a", "p") is None
    assert m.record("a", "p", {0: 2}, asleep=True) and m.asleep("a", "p") == {0: 2}
    m.reset("a", "p")
    assert m.peak("a", "p") is None and m.asleep("a", "p") is None


def test_measured_rows_of_a_sample_by_profile() -> None:
    rows = [ModelMemory("a", "p", 0, 5), ModelMemory("a", "p", 1, 6), ModelMemory("b", "q", 0, 1)]
    assert by_profile(rows) == {("a", "p"): {0: 5, 1: 6}, ("b", "q"): {0: 1}}


def test_measured_round_trip_tolerates_junk() -> None:
    m = Measured()
    m.record("a", "p", {0: 5})
    m.record("a", "p", {0: 1}, asleep=True)
    m.record("b", "q", {2: 9})
    raw = json.loads(json.dumps(m.to_json()))
    assert raw == {"a": {"p": {"asleep": {"0": 1}, "peak": {"0": 5}}},
                   "b": {"q": {"peak": {"2": 9}}}}
    again = Measured.from_json({**raw, "c": "junk", "d": {"r": {"peak": {"x": 1, "1": -3}}}})
    assert again.to_json() == raw
    m.keep_only([("b", "q")])
    assert m.to_json() == {"b": {"q": {"peak": {"2": 9}}}}


async def test_measured_lives_beside_the_toggles_in_the_state_file(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "s.json")
    await state.save({"models": {"a": {"pinned": True}}, "schedules": {}})
    m = Measured()
    m.record("a", "p", {0: 5})
    await state.save_section(SECTION, m.to_json())
    await state.save({"models": {}, "schedules": {}})  # ops/control.py's persist
    saved = StateFile(tmp_path / "s.json").load()
    assert saved["models"] == {} and Measured.from_json(saved[SECTION]).peak("a", "p") == {0: 5}
    assert saved["version"] == 1


# -- the resolver the handles ask ----------------------------------------------------------


def _resolver(measured: Measured | None = None) -> GpuNeeds:
    config = Config.model_validate({
        "compose": {"file": "x.yml", "project": "p"},
        "models": {
            "audio": {"service": "ids", "upstream": "http://x:1",
                      "sleep": {"enabled": True, "vram": "1GiB"}},
            "plain": {"service": "nvidia-env", "upstream": "http://x:2"},
            "huge": {"service": "cuda-env", "upstream": "http://x:3", "vram": "30GiB"},
            "cpu": {"service": "nothing", "upstream": "http://x:4"},
        }})
    return GpuNeeds(config, FOUR, SERVICES, measured or Measured())


def test_what_a_model_holds_in_each_state() -> None:
    needs = _resolver()
    awake = math.ceil(24 * GiB * 0.85)
    assert needs.holds("audio", "default", State.READY) == dict.fromkeys(range(4), awake)
    assert needs.holds("audio", "default", State.ASLEEP) == dict.fromkeys(range(4), GiB)
    assert needs.holds("audio", "default", State.STOPPED) == {}
    assert needs.holds("plain", "default", State.ASLEEP) == {0: None, 2: None}
    assert needs.asleep("plain", "default") is None


def test_a_measured_peak_is_used_by_the_next_start_without_a_reload() -> None:
    measured = Measured()
    needs = _resolver(measured)
    assert needs.need("plain", "default").source is MemorySource.UNKNOWN
    measured.record("plain", "default", {0: 5 * GiB, 2: 6 * GiB})
    assert needs.holds("plain", "default", State.STARTING) == {0: 5 * GiB, 2: 6 * GiB}


def test_the_refusal_of_a_profile_that_can_never_run() -> None:
    needs = _resolver()
    assert needs.never_fits("huge", "default") == (
        "model 'huge' needs 30 GiB on GPU 3, which has 24 GiB in all")
    assert needs.never_fits("audio", "default") is None
    assert needs.never_fits("cpu", "default") is None  # GPUs unknown: not placed
