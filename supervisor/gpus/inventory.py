"""The GPUs placement plans on: NVML's view at start, merged with the config's `gpus:`.

The config may declare GPUs that NVML cannot see (a CPU-only machine, a test) or override
a size (keep a margin for a desktop session). NVML is read once, in a thread: its calls can
block for seconds (driver init, a GPU fallen off the bus). An empty inventory means
placement is off, and models start as they did before placement existed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from supervisor.gpus.sizes import gib
from supervisor.observe.gpu import Device, read_devices


@dataclass(frozen=True, slots=True)
class Inventory:
    """Bytes per GPU index that processes can get: NVML's total less what the driver
    reserves, which is CUDA's total and so the one vLLM multiplies by
    --gpu-memory-utilization (measured on an H200: NVML 150754820096, reserved 644939776,
    torch.cuda.mem_get_info total 150109880320). `uuids` maps NVML's `GPU-...` names to
    indices (Compose `device_ids` and NVIDIA_VISIBLE_DEVICES may name GPUs either way)."""

    totals: Mapping[int, int] = field(default_factory=dict)
    uuids: Mapping[str, int] = field(default_factory=dict)
    origin: Mapping[int, str] = field(default_factory=dict)  # "nvml" or "config"
    nvml_problem: str = ""  # why NVML contributed nothing ("" when it did)

    @property
    def enabled(self) -> bool:
        return bool(self.totals)

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(sorted(self.totals))

    def describe(self) -> str:
        if not self.totals:
            return f"no GPUs (placement off){': ' + self.nvml_problem if self.nvml_problem else ''}"
        return ", ".join(
            f"GPU {i}: {gib(self.totals[i])} ({self.origin.get(i, '?')})" for i in self.indices
        )


def merge(devices: Sequence[Device], declared: Mapping[int, int], nvml_problem: str = ""
          ) -> Inventory:
    """NVML's GPUs, then the config's entries on top (they win, and may add GPUs)."""
    totals = {d.index: d.memory_total_bytes - d.memory_reserved_bytes for d in devices}
    origin = dict.fromkeys(totals, "nvml")
    for index, size in declared.items():
        totals[index] = size
        origin[index] = "config"
    uuids = {d.uuid: d.index for d in devices if d.uuid}
    return Inventory(dict(sorted(totals.items())), uuids, origin, nvml_problem)


def read_nvml(nvml: Any = None) -> tuple[tuple[Device, ...], str]:
    """Every GPU NVML sees, or () and the reason (blocking: run it in a thread)."""
    try:
        if nvml is None:
            import pynvml  # type: ignore[import-untyped]

            nvml = pynvml
        nvml.nvmlInit()
    except Exception as exc:  # no driver, no library: a CPU machine
        return (), f"NVML: {exc or type(exc).__name__}"
    try:
        devices, _ = read_devices(nvml)
        return devices, "" if devices else "NVML sees no GPU"
    except Exception as exc:
        return (), f"NVML: {exc or type(exc).__name__}"
    finally:
        with contextlib.suppress(Exception):  # shutting down a library that half-failed
            nvml.nvmlShutdown()


def read_inventory(declared: Mapping[int, int], nvml: Any = None) -> Inventory:
    """Blocking (NVML): the daemon calls it in a thread (GpuNeeds.load)."""
    devices, problem = read_nvml(nvml)
    return merge(devices, declared, problem)
