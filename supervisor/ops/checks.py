"""`check-config`: find what would break at run time before anything starts.

Beyond the schema, it asks the real `docker compose config` to parse the
Compose file (so interpolation, profiles and extends are judged by Compose
itself) and checks that each model's service exists there; with `runtime: swarm`
it asks the Swarm manager for the services of the stack instead. With GPU placement in
use (GPUs from NVML or the config's `gpus:`), it also names each profile whose GPUs
cannot be determined and each one that can never fit on them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from supervisor.config import Config
from supervisor.gpus.inventory import Inventory, read_inventory
from supervisor.gpus.measured import SECTION, Measured
from supervisor.gpus.needs import resolve_need
from supervisor.gpus.placement import never_fits
from supervisor.gpus.services import read_services
from supervisor.lifecycle.units import Unit, units_of
from supervisor.ops.cache_check import cache_warnings
from supervisor.runtime.base import split_slot
from supervisor.runtime.swarm import read_services as swarm_services
from supervisor.runtime.swarm_tasks import replicas as swarm_replicas
from supervisor.state_file import StateFile


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


def _key(unit: Unit, pname: str) -> str:
    """Where a unit's profile is defined: the model's (profiles.<p>), or a replica's."""
    return unit.key + ("" if unit.config.service else f".profiles.{pname}")


def _service_key(unit: Unit, pname: str) -> str:
    replica_profile = unit.name != unit.model and not unit.config.service
    return _key(unit, pname) if replica_profile else f"{_key(unit, pname)}.service"


def _gpu_problems(unit: Unit, pname: str, service: dict[str, Any],
                  inventory: Inventory, measured: Measured) -> list[str]:
    """A profile whose GPUs cannot be determined, or whose need exceeds them."""
    name, model = unit.name, unit.config
    profile = model.profiles[pname]
    key = _key(unit, pname)
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
        where = f"models.{unit.model}.{field}"
    else:
        where = f"{key}.service"
    return [f"{where}: can never fit: {refused.reason} "
            f"(GPUs from {need.gpus_origin}; size from {need.detail})"]


def _services(config: Config) -> tuple[dict[str, dict[str, Any]], str | None, str]:
    """The services models may name, the problem reading them, and where they are: the
    Compose file as Compose resolves it, or the stack's services on the Swarm manager."""
    if config.swarm is not None and config.runtime == "swarm":
        services, problem = swarm_services(config.swarm)
        return services, problem, f"stack {config.swarm.stack!r} on the Swarm manager"
    services, problem = read_services(config.compose)
    return services, problem, str(config.compose.file if config.compose else "")


def check(config: Config, nvml: Any = None, warnings: list[str] | None = None) -> list[str]:
    """Problems as 'key.path: reason' lines; empty when the config is usable.

    `nvml`: the pynvml module (a fake in tests); NVML's GPUs and the config's `gpus:`
    make the inventory, and GPU checks run only when it is not empty. `warnings` gets
    what works but costs (a vLLM service's caches inside its container).
    """
    services, problem, where = _services(config)
    problems = [problem] if problem else []
    inventory = read_inventory(config.gpus, nvml)
    measured = Measured.from_json(StateFile(config.state_file).load().get(SECTION))
    units = [u for name, model in config.models.items() for u in units_of(name, model)]
    for unit in units:  # a model, or each of its replicas
        model = unit.config
        limit = context_limit(model.model_dir) if model.model_dir else None
        for pname, profile in model.profiles.items():
            service, slot = split_slot(profile.service)  # slot: replicas: {min, max}
            if not problem and service not in services:
                problems.append(
                    f"{_service_key(unit, pname)}: {service!r} is not a service of "
                    f"{where} (it has: {', '.join(sorted(services)) or 'none'})"
                )
            elif not problem and slot == 1 and swarm_replicas(services[service]) is None:
                problems.append(f"models.{unit.model}.replicas: {service!r} is a global "
                                "service; {min, max} scales a replicated one")
            key = f"models.{unit.model}" + ("" if model.service else f".profiles.{pname}")
            first = unit.key in (f"models.{unit.model}", f"models.{unit.model}.replicas.0")
            if first and limit and profile.max_model_len and profile.max_model_len > limit[0]:
                problems.append(
                    f"{key}.max_model_len: {profile.max_model_len} "
                    f"exceeds what the model supports: {limit[1]} = {limit[0]} "
                    f"(from {model.model_dir}/config.json)"
                )
            if (warnings is not None and model.server == "vllm" and not problem
                    and config.runtime == "compose" and service in services):
                found = cache_warnings(_service_key(unit, pname), service, services[service])
                warnings += [w for w in found if w not in warnings]
            if (inventory.enabled and config.runtime == "compose" and not problem
                    and profile.service in services):
                problems += _gpu_problems(unit, pname, services[profile.service],
                                          inventory, measured)
    return problems
