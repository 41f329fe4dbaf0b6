"""Lifecycle units: what starts, stops and holds GPUs on its own.

A model without replicas is one unit, under its own name and config. Each replica of a
model is one too, named `<model>#<n>` (n from 1) in the logs, the events and the GPU
budget, with the model's config made its own: its services, its upstream (for every
profile) and its GPUs. Everything else (timeouts, sleep, warm-up, limits) is the model's.

With `replicas: {min, max}` (one service that the runtime scales: Swarm), replica n is
slot n of each profile's service (`vox#2`, runtime/base.py's slot_name), on the model's
upstream: the runtime reads the slot out of the name and says where its task runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from supervisor.config import Config, ModelConfig, ReplicaConfig, ScalableReplicas
from supervisor.runtime.base import slot_name

REPLICA_MARK = "#"


@dataclass(frozen=True, slots=True)
class Unit:
    name: str  # "voxcpm", or "voxcpm#2" for a replica
    model: str  # the model it serves
    key: str  # where the config defines it, for messages: "models.voxcpm.replicas.1"
    config: ModelConfig


def replica_name(model: str, index: int) -> str:
    return f"{model}{REPLICA_MARK}{index + 1}"


def units_of(name: str, model: ModelConfig) -> list[Unit]:
    if isinstance(model.replicas, ScalableReplicas):
        return [Unit(replica_name(name, i), name, f"models.{name}.replicas",
                     slot_config(model, i + 1)) for i in range(model.replicas.max)]
    if not isinstance(model.replicas, list):
        return [Unit(name, name, f"models.{name}", model)]
    return [Unit(replica_name(name, i), name, f"models.{name}.replicas.{i}",
                 replica_config(model, replica))
            for i, replica in enumerate(model.replicas)]


def kept_replicas(model: ModelConfig) -> int:
    """How many replicas run even when idle: `min_replicas`, or `replicas.min`."""
    if isinstance(model.replicas, ScalableReplicas):
        return model.replicas.min
    return model.min_replicas


def unit_configs(config: Config) -> dict[str, ModelConfig]:
    """Every unit's config by its name (what the GPU budget plans and measures)."""
    return {u.name: u.config for name, model in config.models.items()
            for u in units_of(name, model)}


def replica_config(model: ModelConfig, replica: ReplicaConfig) -> ModelConfig:
    """The model's config as one replica runs it."""
    profiles = {
        name: profile.model_copy(update={
            "service": replica.service if replica.service else replica.profiles[name],
            "upstream": replica.upstream,
            "gpus": replica.gpus if replica.gpus is not None else profile.gpus,
            "vram": replica.vram if replica.vram is not None else profile.vram,
        })
        for name, profile in model.profiles.items()
    }
    return model.model_copy(update={
        "profiles": profiles, "upstream": replica.upstream,
        "service": replica.service if model.service is not None else None,
        "gpus": replica.gpus if replica.gpus is not None else model.gpus,
        "vram": replica.vram if replica.vram is not None else model.vram,
        "replicas": None, "target_concurrency": None, "min_replicas": 0,
    })


def slot_config(model: ModelConfig, slot: int) -> ModelConfig:
    """The model's config as the replica in `slot` of its scaled service(s) runs it."""
    profiles = {name: profile.model_copy(update={"service": slot_name(profile.service, slot)})
                for name, profile in model.profiles.items()}
    return model.model_copy(update={
        "profiles": profiles,
        "service": slot_name(model.service, slot) if model.service is not None else None,
        "replicas": None, "target_concurrency": None, "min_replicas": 0,
    })
