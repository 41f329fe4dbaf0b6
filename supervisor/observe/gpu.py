"""GPU sampling from NVML, and attribution of each GPU process's memory to a model.

NVML calls can block for a long time (driver init, a GPU falling off the bus), so
every sample runs in a worker thread and scrapes only ever read the last sample.

Attribution: NVML lists compute processes by PID; `/proc/<pid>/cgroup` names the
container; that container's Compose labels name the service; a callback from the
supervisor maps the service to (model, profile). NVML reports *host* PIDs, so a
containerised supervisor needs `pid: host` (or `--pid=host`) to read their
`/proc/<pid>/cgroup`; without it the per-model series stay empty while the per-GPU
series still work.

Only stdlib and pynvml at import time (docker is imported lazily), so that
`scripts/gpu_check.py` can use this module on a bare GPU host.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"

ServiceMapper = Callable[[str], tuple[str, str] | None]
"""Compose service -> (model, active profile), or None when it is not a model's."""


@dataclass(frozen=True, slots=True)
class Device:
    index: int
    uuid: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_ratio: float | None = None  # None: not supported by this GPU
    power_watts: float | None = None
    # Held by the driver (NVML v2 `reserved`; 0 when unknown): no process can get it, and
    # CUDA's (so vLLM's) total is memory_total_bytes minus this.
    memory_reserved_bytes: int = 0
    # Since the driver loaded (NVML's total-energy counter, Volta and later); None: unknown.
    energy_joules: float | None = None


@dataclass(frozen=True, slots=True)
class GpuProcess:
    gpu: int
    pid: int
    used_bytes: int | None  # None: NVML cannot tell (MIG without privileges, WDDM)


@dataclass(frozen=True, slots=True)
class ModelMemory:
    model: str
    profile: str
    gpu: int
    bytes: int


@dataclass(frozen=True, slots=True)
class GpuSample:
    """One NVML reading; `available` False carries the reason instead of devices."""

    available: bool
    reason: str = ""
    devices: tuple[Device, ...] = ()
    processes: tuple[GpuProcess, ...] = ()
    models: tuple[ModelMemory, ...] = ()


# -- pure helpers: cgroup -> container -> model ----------------------------

# A 64-hex id as a whole path segment, or inside one: docker-<id>.scope,
# cri-containerd-<id>.scope, crio-<id>.scope, libpod-<id>.scope.
_CONTAINER_ID = re.compile(r"(?:^|[-:])([0-9a-f]{64})(?:\.scope)?$")


def container_id_from_cgroup(text: str) -> str | None:
    """The container id in a `/proc/<pid>/cgroup` text (v1 or v2), or None for a host process.

    The deepest id in the path wins: with nested runtimes the innermost container
    is the one its Docker Engine knows. The unified (v2, `0::`) line is preferred.
    """
    lines = [ln.split(":", 2) for ln in text.splitlines() if ln.count(":") >= 2]
    lines.sort(key=lambda parts: parts[0] != "0")  # v2 line first, stable otherwise
    for _, _, path in lines:
        for segment in reversed(path.strip().split("/")):
            match = _CONTAINER_ID.search(segment)
            if match:
                return match.group(1)
    return None


def read_container_id(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The container of a PID, or None when it runs on the host or is not visible."""
    try:
        text = (proc / str(pid) / "cgroup").read_text()
    except OSError:  # exited, or another PID namespace (containerised without pid: host)
        return None
    return container_id_from_cgroup(text)


def attribute(
    processes: Iterable[GpuProcess],
    container_of: Callable[[int], str | None],
    labels_of: Callable[[str], Mapping[str, str] | None],
    service_to_model: ServiceMapper,
    project: str | None = None,
) -> tuple[ModelMemory, ...]:
    """Sum the GPU memory of each (model, profile, gpu) over the processes of its containers.

    `project`, when given, ignores containers of other Compose projects, whose
    service names may collide with ours.
    """
    totals: dict[tuple[str, str, int], int] = {}
    for proc in processes:
        if proc.used_bytes is None:
            continue
        container = container_of(proc.pid)
        labels = labels_of(container) if container else None
        if not labels or SERVICE_LABEL not in labels:
            continue
        if project is not None and labels.get(PROJECT_LABEL) != project:
            continue
        owner = service_to_model(labels[SERVICE_LABEL])
        if owner is None:
            continue
        key = (owner[0], owner[1], proc.gpu)
        totals[key] = totals.get(key, 0) + proc.used_bytes
    return tuple(ModelMemory(m, p, g, b) for (m, p, g), b in sorted(totals.items()))


# -- NVML reading (runs in a thread) ---------------------------------------


def _optional(nvml: Any, call: Callable[..., Any], *args: Any) -> Any:
    """A reading that some GPUs do not support: None instead of an error."""
    try:
        return call(*args)
    except nvml.NVMLError:
        return None


def read_devices(nvml: Any) -> tuple[tuple[Device, ...], tuple[GpuProcess, ...]]:
    """Read every GPU and its compute processes; `nvml` is the pynvml module (or a fake)."""
    devices: list[Device] = []
    processes: list[GpuProcess] = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = nvml.nvmlDeviceGetUUID(handle)
        # v2 leaves driver-reserved memory out of `used`, as nvidia-smi does.
        memory = _optional(nvml, nvml.nvmlDeviceGetMemoryInfo, handle, nvml.nvmlMemory_v2)
        if memory is None:
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        util = _optional(nvml, nvml.nvmlDeviceGetUtilizationRates, handle)
        power_mw = _optional(nvml, nvml.nvmlDeviceGetPowerUsage, handle)
        energy = getattr(nvml, "nvmlDeviceGetTotalEnergyConsumption", None)
        energy_mj = None if energy is None else _optional(nvml, energy, handle)
        devices.append(Device(
            index=index,
            uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
            memory_used_bytes=int(memory.used),
            memory_total_bytes=int(memory.total),
            utilization_ratio=None if util is None else util.gpu / 100.0,
            power_watts=None if power_mw is None else power_mw / 1000.0,
            memory_reserved_bytes=int(getattr(memory, "reserved", 0) or 0),
            energy_joules=None if energy_mj is None else energy_mj / 1000.0,
        ))
        running = _optional(nvml, nvml.nvmlDeviceGetComputeRunningProcesses, handle) or ()
        for p in running:
            used = p.usedGpuMemory
            processes.append(GpuProcess(index, int(p.pid), None if used is None else int(used)))
    return tuple(devices), tuple(processes)


class ComposeLabels:
    """Compose labels per container id via the Docker SDK, cached (ids are never reused).

    Called from the sampler's thread only. A failed Docker connection is retried
    on the next sample, and logged once.
    """

    def __init__(self, client_factory: Callable[[], Any] | None = None) -> None:
        self._factory = client_factory
        self._client: Any = None
        self._cache: dict[str, Mapping[str, str] | None] = {}
        self._warned = False

    def __call__(self, container_id: str) -> Mapping[str, str] | None:
        if container_id in self._cache:
            return self._cache[container_id]
        try:
            import docker  # lazily: gpu_check.py runs where the SDK may be absent

            if self._client is None:
                self._client = (self._factory or docker.from_env)()
            labels: Mapping[str, str] | None = dict(
                self._client.containers.get(container_id).labels or {}
            )
        except Exception as exc:  # NotFound, connection errors, SDK missing
            if type(exc).__name__ == "NotFound":
                labels = None  # not a container of this engine: remember that
            else:
                if not self._warned:
                    log.warning("cannot read container labels from Docker: %s", exc)
                    self._warned = True
                return None
        self._cache[container_id] = labels
        return labels

    def keep_only(self, ids: Iterable[str]) -> None:
        """Forget containers no longer on a GPU, so the cache stays bounded."""
        live = set(ids)
        self._cache = {k: v for k, v in self._cache.items() if k in live}


# -- the background sampler ------------------------------------------------


class GpuSampler:
    """Samples every `interval` seconds in a thread; `sample` is the last reading.

    `sample` is None until the first reading ends. Start it from the app's startup
    and stop it from its cleanup. `project` limits attribution to one Compose project.
    """

    def __init__(
        self,
        service_to_model: ServiceMapper,
        *,
        interval: float = 5.0,
        project: str | None = None,
        proc: Path = Path("/proc"),
        labels: Callable[[str], Mapping[str, str] | None] | None = None,
        nvml: Any = None,  # the pynvml module; a fake in tests
    ) -> None:
        self.service_to_model = service_to_model
        self.interval = interval
        self.project = project
        self.proc = proc
        self.labels = labels if labels is not None else ComposeLabels()
        self.nvml = nvml
        self.sample: GpuSample | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = False
        self._reason_logged = ""
        self._lock = threading.Lock()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="gpu-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await asyncio.to_thread(self.close)

    async def _run(self) -> None:
        while True:
            self.sample = await asyncio.to_thread(self.sample_once)
            await asyncio.sleep(self.interval)

    def sample_once(self) -> GpuSample:
        """One blocking reading: call it from a thread (or a script)."""
        with self._lock:
            try:
                self._init()
                devices, processes = read_devices(self.nvml)
            except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, GpuIsLost...
                return self._unavailable(f"NVML: {exc or type(exc).__name__}")
            if not devices:
                return self._unavailable("NVML sees no GPU")
            self._reason_logged = ""
            containers = {p.pid: read_container_id(p.pid, self.proc) for p in processes}
            models = attribute(
                processes, containers.get, self.labels, self.service_to_model, self.project
            )
            if isinstance(self.labels, ComposeLabels):
                self.labels.keep_only(c for c in containers.values() if c)
            return GpuSample(True, devices=devices, processes=processes, models=models)

    def _init(self) -> None:
        if self._ready:
            return
        if self.nvml is None:
            import pynvml  # type: ignore[import-untyped]

            self.nvml = pynvml
        self.nvml.nvmlInit()
        self._ready = True

    def close(self) -> None:
        """Release NVML (blocking; `stop` runs it in a thread)."""
        with self._lock:
            if self._ready:
                self._ready = False
                try:
                    self.nvml.nvmlShutdown()
                except Exception as exc:
                    log.debug("nvmlShutdown: %s", exc)

    def _unavailable(self, reason: str) -> GpuSample:
        if reason != self._reason_logged:  # one line per cause, not one per sample
            log.warning("GPU metrics unavailable: %s", reason)
            self._reason_logged = reason
        return GpuSample(False, reason=reason)
