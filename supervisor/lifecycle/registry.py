"""The model handles by name and alias: what the router looks a request's model up
in, and what the admin API and reload change."""

from __future__ import annotations

from collections.abc import Iterable

from supervisor.errors import Refusal
from supervisor.lifecycle.handle import ModelHandle


class Registry:
    def __init__(self, handles: Iterable[ModelHandle]) -> None:
        self.handles = {h.name: h for h in handles}
        self._index()

    def _index(self) -> None:
        self._by_alias = {
            alias: h for h in self.handles.values() for alias in [h.name, *h.config.aliases]
        }

    def add(self, handle: ModelHandle) -> None:
        """Add (or re-index, after a reload) a model."""
        self.handles[handle.name] = handle
        self._index()

    def remove(self, name: str) -> ModelHandle:
        handle = self.handles.pop(name)
        self._index()
        return handle

    def get(self, name: str) -> ModelHandle:
        handle = self._by_alias.get(name)
        if handle is None:
            known = ", ".join(sorted(self.handles)) or "(none)"
            raise Refusal(f"The model {name!r} does not exist. Known models: {known}",
                          status=404, code="model_not_found")
        return handle
