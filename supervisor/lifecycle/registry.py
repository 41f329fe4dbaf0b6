"""The models by name and alias: what the router looks a request's model up in, and what
the admin API and reload change. A model is one handle, or a set of replicas (one handle
each); `units` lists every handle, for what follows lifecycles (GPU budget, watcher)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from supervisor.config import ModelConfig
from supervisor.lifecycle.effects import Effects
from supervisor.lifecycle.handle import ModelHandle
from supervisor.lifecycle.replicas import ReplicaSet
from supervisor.observe.metrics import Metrics, ModelSnapshot
from supervisor.refusal import Refusal

Model = ModelHandle | ReplicaSet


def build_model(name: str, config: ModelConfig, effects: Effects, metrics: Metrics) -> Model:
    if config.replicas is not None:  # a list, or {min, max}
        return ReplicaSet(name, config, effects, metrics)
    return ModelHandle(name, config, effects, metrics)


def handles_of(model: Model) -> list[ModelHandle]:
    return model.units() if isinstance(model, ReplicaSet) else [model]


def snapshot_rows(model: Model, reserved: dict[str, dict[int, int]]) -> list[ModelSnapshot]:
    """The metrics' rows of a model (and of its replicas), with the GPU memory each holds."""
    if isinstance(model, ReplicaSet):
        return model.snapshots(reserved)
    return [replace(model.snapshot(), gpu_reserved=reserved.get(model.name, {}))]


class Registry:
    def __init__(self, handles: Iterable[Model]) -> None:
        self.handles = {h.name: h for h in handles}
        self._index()

    def _index(self) -> None:
        self._by_alias = {
            alias: h for h in self.handles.values() for alias in [h.name, *h.config.aliases]
        }

    def units(self) -> list[ModelHandle]:
        """Every handle with a lifecycle of its own: the models' and their replicas'."""
        return [u for h in self.handles.values() for u in handles_of(h)]

    def add(self, handle: Model) -> None:
        """Add (or re-index, after a reload) a model."""
        self.handles[handle.name] = handle
        self._index()

    def remove(self, name: str) -> Model:
        handle = self.handles.pop(name)
        self._index()
        return handle

    def get(self, name: str) -> Model:
        handle = self._by_alias.get(name)
        if handle is None:
            raise unknown_model(name, self.handles)
        return handle


def unknown_model(name: str, known: Iterable[str]) -> Refusal:
    listed = ", ".join(sorted(known)) or "(none)"
    return Refusal(f"The model {name!r} does not exist. Known models: {listed}",
                   status=404, code="model_not_found")
