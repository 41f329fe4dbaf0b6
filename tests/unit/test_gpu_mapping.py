"""GPU process -> container -> Compose service -> model, from recorded inputs only
(no NVML, no Docker): /proc cgroup texts of the common runtimes and NVML readings
played back by a fake pynvml module.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from supervisor.observe.gpu import (
    PROJECT_LABEL,
    SERVICE_LABEL,
    ComposeLabels,
    GpuProcess,
    GpuSampler,
    ModelMemory,
    attribute,
    container_id_from_cgroup,
    read_container_id,
)

ID_A = "3f4e1d2c" * 8
ID_B = "a1b2c3d4" * 8
ID_C = "0123456789abcdef" * 4
POD = "0f1c0b2e-5a8d-4b52-9b6a-1c6d8e9f0a12"

DOCKER_CGROUPFS_V1 = f"""\
12:pids:/docker/{ID_A}
11:hugetlb:/docker/{ID_A}
10:memory:/docker/{ID_A}
4:cpu,cpuacct:/docker/{ID_A}
1:name=systemd:/docker/{ID_A}
0::/system.slice/containerd.service
"""
DOCKER_SYSTEMD_V2 = f"0::/system.slice/docker-{ID_B}.scope\n"
DOCKER_CGROUPFS_V2 = f"0::/docker/{ID_B}\n"
KUBEPODS_CGROUPFS_V1 = f"""\
11:memory:/kubepods/burstable/pod{POD}/{ID_C}
2:cpu,cpuacct:/kubepods/burstable/pod{POD}/{ID_C}
1:name=systemd:/kubepods/burstable/pod{POD}/{ID_C}
"""
KUBEPODS_SYSTEMD_V2 = (
    "0::/kubepods.slice/kubepods-burstable.slice/"
    f"kubepods-burstable-pod{POD.replace('-', '_')}.slice/cri-containerd-{ID_C}.scope\n"
)
CRIO_V2 = f"0::/kubepods.slice/kubepods-besteffort.slice/x.slice/crio-{ID_A}.scope\n"
PODMAN_V2 = f"0::/user.slice/user-1000.slice/user@1000.service/libpod-{ID_B}.scope/container\n"
HOST_V2 = "0::/user.slice/user-0.slice/session-3.scope\n"
HOST_V1 = """\
12:pids:/user.slice/user-0.slice/session-3.scope
1:name=systemd:/user.slice/user-0.slice/session-3.scope
0::/user.slice/user-0.slice/session-3.scope
"""
PRIVATE_CGROUPNS = "0::/\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (DOCKER_CGROUPFS_V1, ID_A),
        (DOCKER_SYSTEMD_V2, ID_B),
        (DOCKER_CGROUPFS_V2, ID_B),
        (KUBEPODS_CGROUPFS_V1, ID_C),
        (KUBEPODS_SYSTEMD_V2, ID_C),
        (CRIO_V2, ID_A),
        (PODMAN_V2, ID_B),
        (HOST_V2, None),
        (HOST_V1, None),
        (PRIVATE_CGROUPNS, None),
        ("", None),
        (f"0::/docker/{ID_A}0\n", None),  # 65 hex digits: not an id
    ],
    ids=[
        "docker-cgroupfs-v1", "docker-systemd-v2", "docker-cgroupfs-v2", "kubepods-v1",
        "kubepods-systemd-v2", "crio", "podman", "host-v2", "host-v1", "private-ns", "empty",
        "too-long",
    ],
)
def test_container_id_from_cgroup(text: str, expected: str | None) -> None:
    assert container_id_from_cgroup(text) == expected


def test_nested_runtime_takes_innermost() -> None:
    assert container_id_from_cgroup(f"0::/docker/{ID_A}/docker/{ID_B}\n") == ID_B


def write_proc(root: Path, cgroups: Mapping[int, str]) -> Path:
    for pid, text in cgroups.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cgroup").write_text(text)
    return root


def test_read_container_id_missing_pid_is_none(tmp_path: Path) -> None:
    proc = write_proc(tmp_path, {41: DOCKER_SYSTEMD_V2})
    assert read_container_id(41, proc) == ID_B
    assert read_container_id(42, proc) is None  # exited, or not visible without pid: host


LABELS: dict[str, Mapping[str, str]] = {
    ID_A: {PROJECT_LABEL: "models", SERVICE_LABEL: "step-audio-64k"},
    ID_B: {PROJECT_LABEL: "models", SERVICE_LABEL: "chat-32k"},
    ID_C: {PROJECT_LABEL: "other", SERVICE_LABEL: "chat-32k"},  # same name, other project
}
SERVICES = {"step-audio-64k": ("step-audio", "64k"), "chat-32k": ("chat", "32k")}
GIB = 1 << 30


def test_attribute_sums_per_model_profile_gpu() -> None:
    containers = {10: ID_A, 11: ID_A, 12: ID_B, 13: ID_C, 14: None}
    processes = [
        GpuProcess(0, 10, 30 * GIB),  # step-audio's tensor-parallel ranks on GPUs 0 and 1
        GpuProcess(1, 11, 31 * GIB),
        GpuProcess(0, 11, 1 * GIB),  # a second process of the same container on GPU 0
        GpuProcess(2, 12, 20 * GIB),
        GpuProcess(3, 13, 5 * GIB),  # other project: ignored
        GpuProcess(3, 14, 2 * GIB),  # host process: ignored
        GpuProcess(2, 12, None),  # memory unknown: ignored
    ]
    got = attribute(processes, containers.get, LABELS.get, SERVICES.get, project="models")
    assert got == (
        ModelMemory("chat", "32k", 2, 20 * GIB),
        ModelMemory("step-audio", "64k", 0, 31 * GIB),
        ModelMemory("step-audio", "64k", 1, 31 * GIB),
    )


def test_attribute_without_project_filter_and_unknown_service() -> None:
    containers = {13: ID_C, 12: ID_B}
    processes = [GpuProcess(3, 13, 5 * GIB), GpuProcess(2, 12, 1 * GIB)]
    got = attribute(processes, containers.get, LABELS.get, {"chat-32k": ("chat", "32k")}.get)
    assert got == (ModelMemory("chat", "32k", 2, GIB), ModelMemory("chat", "32k", 3, 5 * GIB))
    assert attribute(processes, containers.get, LABELS.get, lambda _s: None) == ()


# -- a recorded NVML reading, played back -----------------------------------


class NVMLError(Exception):
    pass


class FakeNvml:
    """The subset of pynvml the sampler uses, answering from recorded values."""

    NVMLError = NVMLError
    nvmlMemory_v2 = 0x02000028

    def __init__(self, devices: list[dict[str, Any]], init_error: str | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.inits = 0
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        self.inits += 1
        if self.init_error:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict[str, Any]:
        return self.devices[index]

    def nvmlDeviceGetUUID(self, h: dict[str, Any]) -> str:
        return str(h["uuid"])

    def nvmlDeviceGetMemoryInfo(self, h: dict[str, Any], version: int | None = None) -> Any:
        if version and not h.get("v2", True):
            raise NVMLError("Function Not Found")
        return SimpleNamespace(used=h["used"], total=h["total"])

    def nvmlDeviceGetUtilizationRates(self, h: dict[str, Any]) -> Any:
        if h.get("util") is None:
            raise NVMLError("Not Supported")
        return SimpleNamespace(gpu=h["util"], memory=0)

    def nvmlDeviceGetPowerUsage(self, h: dict[str, Any]) -> int:
        if h.get("power_mw") is None:
            raise NVMLError("Not Supported")
        return int(h["power_mw"])

    def nvmlDeviceGetComputeRunningProcesses(self, h: dict[str, Any]) -> list[Any]:
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in h["procs"]]


H100 = 85_520_809_984
RECORDED = [
    {"uuid": "GPU-5e0c7c5a-1f00-4b0e-8a5c-000000000000", "used": 62 * GIB, "total": H100,
     "util": 87, "power_mw": 412_345, "procs": [(1001, 61 * GIB), (2002, 512 << 20)]},
    {"uuid": "GPU-5e0c7c5a-1f00-4b0e-8a5c-000000000001", "used": 0, "total": H100,
     "util": None, "power_mw": None, "v2": False, "procs": []},
]


def test_sampler_reads_devices_and_attributes(tmp_path: Path) -> None:
    proc = write_proc(tmp_path, {1001: DOCKER_SYSTEMD_V2, 2002: HOST_V2})
    nvml = FakeNvml(RECORDED)
    sampler = GpuSampler(SERVICES.get, project="models", proc=proc, labels=LABELS.get, nvml=nvml)
    sample = sampler.sample_once()
    assert sample.available
    d0, d1 = sample.devices
    assert (d0.index, d0.uuid, d0.memory_used_bytes, d0.memory_total_bytes) == (
        0, RECORDED[0]["uuid"], 62 * GIB, H100)
    assert d0.utilization_ratio == pytest.approx(0.87)
    assert d0.power_watts == pytest.approx(412.345)
    assert (d1.utilization_ratio, d1.power_watts, d1.memory_used_bytes) == (None, None, 0)
    assert {(p.gpu, p.pid, p.used_bytes) for p in sample.processes} == {
        (0, 1001, 61 * GIB), (0, 2002, 512 << 20)}
    assert sample.models == (ModelMemory("chat", "32k", 0, 61 * GIB),)
    assert nvml.inits == 1
    sampler.sample_once()
    assert nvml.inits == 1  # initialised once


@pytest.mark.parametrize(
    ("nvml", "reason"),
    [
        (FakeNvml([], init_error="NVML Shared Library Not Found"),
         "NVML: NVML Shared Library Not Found"),
        (FakeNvml([]), "NVML sees no GPU"),
    ],
)
def test_unavailable_logs_one_line(
    nvml: FakeNvml, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    sampler = GpuSampler(SERVICES.get, nvml=nvml)
    with caplog.at_level(logging.WARNING, logger="supervisor.observe.gpu"):
        for _ in range(3):
            sample = sampler.sample_once()
            assert not sample.available
            assert sample.reason == reason
            assert sample.devices == ()
    assert [r.getMessage() for r in caplog.records] == [f"GPU metrics unavailable: {reason}"]


async def test_background_task_samples_and_stops(tmp_path: Path) -> None:
    nvml = FakeNvml(RECORDED)
    sampler = GpuSampler(SERVICES.get, interval=0.01, proc=tmp_path, labels=LABELS.get, nvml=nvml)
    await sampler.start()
    for _ in range(500):
        if sampler.sample is not None:
            break
        await asyncio.sleep(0.01)
    await sampler.stop()
    assert sampler.sample is not None
    assert sampler.sample.available
    assert nvml.shutdowns == 1


# -- Compose labels through a fake Docker SDK client -----------------------


class NotFound(Exception):
    pass


class FakeDocker:
    def __init__(self, labels: Mapping[str, Mapping[str, str]], down: bool = False) -> None:
        self.labels = labels
        self.down = down
        self.calls: list[str] = []
        self.containers = self

    def get(self, container_id: str) -> Any:
        self.calls.append(container_id)
        if self.down:
            raise ConnectionError("Error while fetching server API version")
        if container_id not in self.labels:
            raise NotFound(container_id)
        return SimpleNamespace(labels=self.labels[container_id])


def test_compose_labels_cached_per_container() -> None:
    client = FakeDocker(LABELS)
    labels = ComposeLabels(lambda: client)
    assert labels(ID_A) == LABELS[ID_A]
    assert labels(ID_A) == LABELS[ID_A]
    assert labels(ID_B) == LABELS[ID_B]
    missing = "f" * 64
    assert labels(missing) is None
    assert labels(missing) is None
    assert client.calls == [ID_A, ID_B, missing]
    labels.keep_only([ID_B])
    labels(ID_A)
    assert client.calls[-1] == ID_A  # forgotten, asked again


def test_compose_labels_docker_down_is_retried_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = FakeDocker(LABELS, down=True)
    labels = ComposeLabels(lambda: client)
    with caplog.at_level(logging.WARNING, logger="supervisor.observe.gpu"):
        assert labels(ID_A) is None
        assert labels(ID_A) is None
    assert client.calls == [ID_A, ID_A]  # not cached: Docker may come back
    assert len(caplog.records) == 1
    client.down = False
    assert labels(ID_A) == LABELS[ID_A]
