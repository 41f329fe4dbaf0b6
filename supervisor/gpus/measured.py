"""GPU memory measured per model profile: the peak while awake, and the size while asleep.

A profile with no `vram:` key and no vLLM flag is placed by what it used before; a
sleeping vLLM keeps some memory that only a measurement tells. Both must survive a
restart of the supervisor, so they live in the state file's `measured` section:

    {"measured": {"<model>": {"<profile>": {"peak": {"0": bytes}, "asleep": {"0": bytes}}}}}

Values only grow (max of every sample) until `reset`: a shrinking sample mid-load must
not make the next start look smaller than the last run was. Pure data; the caller feeds
samples (GpuSampler's `ModelMemory`) and saves `to_json()` with the state file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from supervisor.observe.gpu import ModelMemory

SECTION = "measured"
_KINDS = ("peak", "asleep")
PerGpu = dict[int, int]


def by_profile(models: Iterable[ModelMemory]) -> dict[tuple[str, str], PerGpu]:
    """A sample's per-model rows grouped as (model, profile) -> bytes per GPU."""
    out: dict[tuple[str, str], PerGpu] = {}
    for row in models:
        out.setdefault((row.model, row.profile), {})[row.gpu] = row.bytes
    return out


class Measured:
    def __init__(self) -> None:
        self._data: dict[tuple[str, str, str], PerGpu] = {}  # (model, profile, kind)

    def record(self, model: str, profile: str, per_gpu: Mapping[int, int], *,
               asleep: bool = False) -> bool:
        """Fold in one sample; True when a stored value grew (then it is worth saving)."""
        key = (model, profile, "asleep" if asleep else "peak")
        stored = self._data.setdefault(key, {})
        grew = False
        for gpu, size in per_gpu.items():
            if size > stored.get(gpu, -1):
                stored[gpu] = size
                grew = True
        if not stored:
            del self._data[key]
        return grew

    def peak(self, model: str, profile: str) -> PerGpu | None:
        return dict(self._data[(model, profile, "peak")]) if (
            (model, profile, "peak") in self._data) else None

    def asleep(self, model: str, profile: str) -> PerGpu | None:
        return dict(self._data[(model, profile, "asleep")]) if (
            (model, profile, "asleep") in self._data) else None

    def reset(self, model: str, profile: str | None = None) -> None:
        """Forget a profile's (or every profile's) values: its command or model changed."""
        for key in [k for k in self._data if k[0] == model and profile in (None, k[1])]:
            del self._data[key]

    def keep_only(self, profiles: Iterable[tuple[str, str]]) -> None:
        """Drop the values of profiles no longer configured (after a reload)."""
        live = set(profiles)
        self._data = {k: v for k, v in self._data.items() if (k[0], k[1]) in live}

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for (model, profile, kind), per_gpu in sorted(self._data.items()):
            entry = out.setdefault(model, {}).setdefault(profile, {})
            entry[kind] = {str(g): b for g, b in sorted(per_gpu.items())}
        return out

    @classmethod
    def from_json(cls, raw: object) -> Measured:
        """Tolerant: a malformed entry is skipped, never fatal (the file is hand-editable)."""
        measured = cls()
        if not isinstance(raw, dict):
            return measured
        for model, profiles in raw.items():
            if not isinstance(profiles, dict):
                continue
            for profile, kinds in profiles.items():
                if not isinstance(kinds, dict):
                    continue
                for kind in _KINDS:
                    per_gpu = _per_gpu(kinds.get(kind))
                    if per_gpu:
                        measured._data[(str(model), str(profile), kind)] = per_gpu
        return measured


def _per_gpu(raw: object) -> PerGpu:
    if not isinstance(raw, dict):
        return {}
    out: PerGpu = {}
    for gpu, size in raw.items():
        if str(gpu).isdigit() and isinstance(size, int) and not isinstance(size, bool) \
                and size >= 0:
            out[int(gpu)] = size
    return out
