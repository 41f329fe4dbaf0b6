"""`check-config`: find what would break at run time before anything starts.

Beyond the schema, it asks the real `docker compose config` to parse the
Compose file (so interpolation, profiles and extends are judged by Compose
itself) and checks that each model's service exists there. With GPU placement in
use (GPUs from NVML or the config's `gpus:`), it also names each profile whose GPUs
cannot be determined and each one that can never fit on them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from supervisor.config import Config, ModelConfig
from supervisor.gpus.inventory import Inventory, read_inventory
from supervisor.gpus.measured import SECTION, Measured
from supervisor.gpus.needs import resolve_need
from supervisor.gpus.services import read_services
from supervisor.lifecycle.placement import never_fits
from supervisor.ops.state_file import StateFile


def context_limit(model_dir: Path) -> tuple[int, str] | None:
    """The longest context a model's weights support, from its config.json, and why.

    vLLM accepts a larger max_model_len and then dies with a CUDA device-side
    assert once a request goes past the positions the model was trained on.
    """
    try:
        raw = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for section in (raw, raw.get("text_config") or {}, raw.get("llm_config") or {}):
        positions = section.get("max_position_embeddings")
        if isinstance(positions, int):
            break
    else:
        return None
    scaling = section.get("rope_scaling") or {}
    factor = scaling.get("factor") if isinstance(scaling, dict) else None
    if isinstance(factor, int | float) and factor > 1:
        base = scaling.get("original_max_position_embeddings") or positions
        return int(base * factor), (
            f"max_position_embeddings {base} x rope_scaling factor {factor:g}"
        )
    return positions, f"max_position_embeddings {positions}"


def _gpu_problems(name: str, model: ModelConfig, pname: str, service: dict[str, Any],
                  inventory: Inventory, measured: Measured) -> list[str]:
    """A profile whose GPUs cannot be determined, or whose need exceeds them."""
    profile = model.profiles[pname]
    key = f"models.{name}" + ("" if model.service else f".profiles.{pname}")
    need = resolve_need(name, model, pname, service, inventory, measured.peak(name, pname))
    if need.gpus is None:
        return [f"{key}.gpus: cannot determine the GPUs of service {profile.service!r}: "
                f"{need.gpus_origin}; name them with `gpus: [0, 1]` (`gpus: []`: none)"]
    refused = never_fits(name, need.per_gpu, inventory.totals)
    if refused is None:
        return []
    # The key that set what does not fit: the GPU list, or the size.
    field = "gpus" if refused.need is None else "vram"
    own, inherited = getattr(profile, field), getattr(model, field)
    if own is not None:
        where = f"{key}.{field}"
    elif inherited is not None:
        where = f"models.{name}.{field}"
    else:
        where = f"{key}.service"
    return [f"{where}: can never fit: {refused.reason} "
            f"(GPUs from {need.gpus_origin}; size from {need.detail})"]


def check(config: Config, nvml: Any = None) -> list[str]:
    """Problems as 'key.path: reason' lines; empty when the config is usable.

    `nvml`: the pynvml module (a fake in tests); NVML's GPUs and the config's `gpus:`
    make the inventory, and GPU checks run only when it is not empty.
    """
    services, problem = read_services(config.compose)
    problems = [problem] if problem else []
    inventory = read_inventory(config.gpus, nvml)
    measured = Measured.from_json(StateFile(config.state_file).load().get(SECTION))
    for name, model in config.models.items():
        limit = context_limit(model.model_dir) if model.model_dir else None
        for pname, profile in model.profiles.items():
            key = f"models.{name}" + ("" if model.service else f".profiles.{pname}")
            if not problem and profile.service not in services:
                problems.append(
                    f"{key}.service: {profile.service!r} is not a service of "
                    f"{config.compose.file} (it has: {', '.join(sorted(services)) or 'none'})"
                )
            if limit and profile.max_model_len and profile.max_model_len > limit[0]:
                problems.append(
                    f"{key}.max_model_len: {profile.max_model_len} "
                    f"exceeds what the model supports: {limit[1]} = {limit[0]} "
                    f"(from {model.model_dir}/config.json)"
                )
            if inventory.enabled and not problem and profile.service in services:
                problems += _gpu_problems(name, model, pname, services[profile.service],
                                          inventory, measured)
    return problems
