"""The models by name and alias: what the router looks a request's model up in, and what
the admin API and reload change. A model is one handle, or a set of replicas (one handle
each); `units` lists every handle, for what follows lifecycles (GPU budget, watcher)."""

from __future__ import annotations

from collections.abc import Iterable

from supervisor.config import ModelConfig
from supervisor.lifecycle.effects import Effects
from supervisor.lifecycle.handle import ModelHandle
from supervisor.lifecycle.listeners import Listeners
from supervisor.lifecycle.replicas import ReplicaSet
from supervisor.lifecycle.servable import Model
from supervisor.observe.metrics import Metrics, ModelSnapshot
from supervisor.refusal import Refusal

__all__ = ["Model", "Registry", "build_model", "snapshot_rows", "unknown_model"]


def build_model(name: str, config: ModelConfig, effects: Effects, metrics: Metrics,
                listeners: Listeners | None = None) -> Model:
    if config.replicas is not None:  # a list, or {min, max}
        return ReplicaSet(name, config, effects, metrics, listeners)
    return ModelHandle(name, config, effects, metrics, listeners)


def snapshot_rows(model: Model, reserved: dict[str, dict[int, int]]) -> list[ModelSnapshot]:
    """The metrics' rows of a model (and of its replicas), with the GPU memory each holds."""
    return model.snapshots(reserved)


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
        return [u for h in self.handles.values() for u in h.units()]

    def unit(self, name: str) -> ModelHandle | None:
        """A unit by its own name (a model's, or a replica's: `vox#2`)."""
        return next((u for u in self.units() if u.name == name), None)

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
