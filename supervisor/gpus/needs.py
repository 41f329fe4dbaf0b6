"""What one profile needs for placement: which GPUs, and how many bytes on each.

Pure: the input is one service of `docker compose config --format json` (Compose has
already resolved interpolation, extends and env files), never YAML parsed by hand.

GPUs, first that applies:
  1. the profile's (else the model's) `gpus:` key ([] means it uses no GPU);
  2. the service's GPU device requests (`deploy.resources.reservations.devices`, or the
     service-level `gpus:`): `device_ids`, else `count: all`;
  3. else `NVIDIA_VISIBLE_DEVICES` in its environment (what the NVIDIA runtime exposes);
  then `CUDA_VISIBLE_DEVICES` picks among those by position, as CUDA does inside the
  container. With none of these the GPUs are unknown: check-config says so.

Memory per GPU, first that applies:
  1. `vram:` of the profile (else of the model): declared;
  2. vLLM's `--gpu-memory-utilization` (0.9 when a vLLM command omits it) x the GPU's
     total: exactly what vLLM claims at start, and refuses to start without;
  3. the peak NVML measured at an earlier run (kept in the state file);
  4. unknown: the profile takes its GPUs whole (no other model beside it).
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from supervisor.config import ModelConfig, SleepConfig
from supervisor.gpus.inventory import Inventory
from supervisor.gpus.sizes import gib

VLLM_DEFAULT_UTILIZATION = 0.9
_UTIL_FLAGS = ("--gpu-memory-utilization", "--gpu_memory_utilization")
_NO_GPU_VALUES = ("none", "void", "", "-1")


class MemorySource(StrEnum):
    DECLARED = "declared"
    VLLM_UTILIZATION = "vllm_utilization"
    MEASURED = "measured"
    UNKNOWN = "unknown"  # the whole GPU


@dataclass(frozen=True, slots=True)
class GpuChoice:
    gpus: tuple[int, ...] | None  # None: cannot be determined
    origin: str  # where they come from, or why they cannot be determined


@dataclass(frozen=True, slots=True)
class GpuNeed:
    """A profile's placement need. `per_gpu[g]` None: the whole GPU g (size unknown)."""

    model: str
    profile: str
    gpus: tuple[int, ...] | None
    gpus_origin: str
    per_gpu: Mapping[int, int | None] = field(default_factory=dict)
    source: MemorySource = MemorySource.UNKNOWN
    detail: str = ""  # how the size was found, for messages and the admin API

    @property
    def placed(self) -> bool:
        """False: nothing to plan (it uses no GPU, or its GPUs are unknown)."""
        return bool(self.gpus)

    def describe(self) -> str:
        if self.gpus is None:
            return f"GPUs unknown: {self.gpus_origin}"
        if not self.gpus:
            return f"no GPU ({self.gpus_origin})"
        sizes = ", ".join(
            f"GPU {g}: {'whole' if b is None else gib(b)}" for g, b in self.per_gpu.items()
        )
        return f"{sizes} ({self.source.value}: {self.detail}; GPUs from {self.gpus_origin})"


# -- GPUs -------------------------------------------------------------------------


def _flat(values: Any) -> list[str]:
    if isinstance(values, str):
        return [values]
    if isinstance(values, list | tuple):
        return [s for v in values for s in _flat(v)]
    return []


def _gpu_requests(service: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(key path, request) for each GPU device request of the service."""
    deploy = service.get("deploy") or {}
    reservations = (deploy.get("resources") or {}).get("reservations") or {}
    found = []
    for i, dev in enumerate(reservations.get("devices") or []):
        if isinstance(dev, Mapping) and (
            "gpu" in _flat(dev.get("capabilities")) or dev.get("driver") == "nvidia"
        ):
            found.append((f"deploy.resources.reservations.devices[{i}]", dev))
    for i, dev in enumerate(service.get("gpus") or []):  # the service-level `gpus:` key
        if isinstance(dev, Mapping):
            found.append((f"gpus[{i}]", dev))
    return found


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # not what `compose config` prints, but cheap to accept
        pairs = [str(item).partition("=") for item in env]
        return {k: v for k, eq, v in pairs if eq}
    return {str(k): str(v) for k, v in env.items() if v is not None}


def _names(names: Sequence[str], inventory: Inventory) -> tuple[int, ...] | str:
    """Host indices from GPU names (indices or NVML UUIDs); a reason string when one is
    neither (a MIG device, a UUID NVML did not report)."""
    out: list[int] = []
    for raw in names:
        name = raw.strip()
        if name.isdigit():
            index = int(name)
        elif name in inventory.uuids:
            index = inventory.uuids[name]
        else:
            return f"GPU {name!r} is neither an index nor the UUID of a known GPU"
        if index not in out:
            out.append(index)
    return tuple(out)


def _requested(service: Mapping[str, Any], inventory: Inventory) -> GpuChoice | None:
    """The GPUs of the device requests, or None when the service makes none."""
    requests = _gpu_requests(service)
    if not requests:
        return None
    ids = [(path, _flat(dev.get("device_ids"))) for path, dev in requests]
    named = [name for _, names in ids for name in names]
    if named:
        chosen = _names(named, inventory)
        where = " + ".join(f"{p}.device_ids" for p, names in ids if names)
        return GpuChoice(None, chosen) if isinstance(chosen, str) else GpuChoice(chosen, where)
    path, dev = requests[0]
    count = dev.get("count", -1)  # Compose prints an omitted count as -1: all
    if count in (-1, "all"):
        if not inventory.enabled:
            return GpuChoice(None, f"{path}: count all, and no GPU inventory to expand it")
        return GpuChoice(inventory.indices, f"{path}.count: all")
    if isinstance(count, int) and count == len(inventory.indices):
        return GpuChoice(inventory.indices, f"{path}.count: {count} (every GPU)")
    return GpuChoice(None, f"{path}.count: {count} lets Docker pick which GPUs; "
                           "name them with device_ids or the profile's `gpus:` key")


def service_gpus(service: Mapping[str, Any], inventory: Inventory) -> GpuChoice:
    """The host GPUs a Compose service (as `docker compose config` prints it) runs on."""
    env = _environment(service)
    base = _requested(service, inventory)
    if base is None and "NVIDIA_VISIBLE_DEVICES" in env:
        value = env["NVIDIA_VISIBLE_DEVICES"].strip().lower()
        if value == "all":
            base = GpuChoice(inventory.indices or None, "NVIDIA_VISIBLE_DEVICES=all")
        elif value in _NO_GPU_VALUES:
            base = GpuChoice((), f"NVIDIA_VISIBLE_DEVICES={value or '(empty)'}")
        else:
            chosen = _names(env["NVIDIA_VISIBLE_DEVICES"].split(","), inventory)
            base = (GpuChoice(None, f"NVIDIA_VISIBLE_DEVICES: {chosen}") if isinstance(chosen, str)
                    else GpuChoice(chosen, "NVIDIA_VISIBLE_DEVICES"))
    if base is not None and base.gpus is None:
        return base
    cuda = env.get("CUDA_VISIBLE_DEVICES")
    if cuda is None:
        return base or GpuChoice(None, "the service reserves no GPU (deploy.resources."
                                       "reservations.devices) and sets no NVIDIA_VISIBLE_DEVICES")
    # Positions among what the container sees; without a reservation, the default NVIDIA
    # runtime shows every GPU, so positions are host indices.
    visible = base.gpus if base is not None else inventory.indices
    where = f"CUDA_VISIBLE_DEVICES among {base.origin}" if base else "CUDA_VISIBLE_DEVICES"
    picked: list[int] = []
    for raw in cuda.split(","):
        item = raw.strip()
        if item in _NO_GPU_VALUES:
            break  # CUDA stops at the first invalid entry: "-1" or "" hide the rest
        if item.isdigit():
            if visible is None or int(item) >= len(visible):
                return GpuChoice(None, f"CUDA_VISIBLE_DEVICES={cuda}: position {item} is "
                                       f"beyond the {len(visible or ())} GPU(s) it can see")
            picked.append(visible[int(item)])
        elif item in inventory.uuids and (visible is None or inventory.uuids[item] in visible):
            picked.append(inventory.uuids[item])
        else:
            return GpuChoice(None, f"CUDA_VISIBLE_DEVICES={cuda}: {item!r} is not a GPU it sees")
    return GpuChoice(tuple(dict.fromkeys(picked)), where)


# -- memory -------------------------------------------------------------------------


def _argv(service: Mapping[str, Any]) -> list[str]:
    """Entrypoint + command as words, shell strings (`sh -c "vllm serve ..."`) split too."""
    words: list[str] = []
    for part in (service.get("entrypoint"), service.get("command")):
        for item in _flat(part):
            try:
                words.extend(shlex.split(item))
            except ValueError:
                words.extend(item.split())
    return words


def vllm_utilization(service: Mapping[str, Any]) -> tuple[float, str] | None:
    """vLLM's `--gpu-memory-utilization` and how it was found; None for a server that is
    not vLLM (no flag, no `vllm` in its command or image) or a value that is no fraction."""
    words = _argv(service)
    for i, word in enumerate(words):
        flag, eq, value = word.partition("=")
        if flag not in _UTIL_FLAGS:
            continue
        if not eq:
            value = words[i + 1] if i + 1 < len(words) else ""
        try:
            ratio = float(value)
        except ValueError:
            return None
        return (ratio, f"{flag} {value}") if 0 < ratio <= 1 else None
    image = str(service.get("image") or "")
    if any("vllm" in w.lower() for w in [*words, image]):
        return VLLM_DEFAULT_UTILIZATION, f"vLLM's default --gpu-memory-utilization {0.9}"
    return None


def _declared_gpus(model: ModelConfig, profile: str) -> list[int] | None:
    own = model.profiles[profile].gpus
    return own if own is not None else model.gpus


def resolve_need(
    name: str,
    model: ModelConfig,
    profile: str,
    service: Mapping[str, Any] | None,
    inventory: Inventory,
    measured: Mapping[int, int] | None = None,
) -> GpuNeed:
    """The need of `model`'s `profile`; `service` is its entry of `compose config` (None when
    the file lacks it), `measured` its recorded peak per GPU (see measured.py)."""
    declared = _declared_gpus(model, profile)
    if declared is not None:
        choice = GpuChoice(tuple(declared), "the `gpus:` key")
    elif service is None:
        choice = GpuChoice(None, f"service {model.profiles[profile].service!r} is not in "
                                 "the Compose file")
    else:
        choice = service_gpus(service, inventory)
    if not choice.gpus:
        return GpuNeed(name, profile, choice.gpus, choice.origin)
    gpus = choice.gpus
    need_bytes = model.profiles[profile].vram or model.vram  # declared, per GPU
    if need_bytes is not None:
        return GpuNeed(name, profile, gpus, choice.origin, dict.fromkeys(gpus, need_bytes),
                       MemorySource.DECLARED, "the `vram:` key")
    util = vllm_utilization(service) if service is not None else None
    if util is not None:
        totals = inventory.totals
        per_gpu = {g: math.ceil(totals[g] * util[0]) if g in totals else None for g in gpus}
        return GpuNeed(name, profile, gpus, choice.origin, per_gpu,
                    MemorySource.VLLM_UTILIZATION, f"{util[1]} x the GPU's total")
    if measured:
        fallback = max(measured.values())
        per_gpu = {g: measured.get(g, fallback) for g in gpus}
        return GpuNeed(name, profile, gpus, choice.origin, per_gpu,
                    MemorySource.MEASURED, "the peak measured at an earlier run")
    return GpuNeed(name, profile, gpus, choice.origin, dict.fromkeys(gpus),
                MemorySource.UNKNOWN, "no vram key, no vLLM flag, never measured: whole GPUs")


def asleep_need(need: GpuNeed, sleep: SleepConfig, measured: Mapping[int, int] | None = None
                ) -> dict[int, int] | None:
    """What the server keeps on each GPU while asleep: the size measured while it slept,
    else `sleep.vram`; None when sleep is off or the size is unknown (then sleeping is
    taken to free nothing)."""
    if not sleep.enabled or not need.gpus:
        return None
    if measured:
        fallback = max(measured.values())
        return {g: measured.get(g, fallback) for g in need.gpus}
    if sleep.vram is not None:
        return dict.fromkeys(need.gpus, sleep.vram)
    return None
