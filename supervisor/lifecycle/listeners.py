"""Who hears what a lifecycle unit (a model, or one of its replicas) does: one list of
listeners instead of a hook per subscriber. A listener is any object with some of the
methods of `Listener` (servable.py); `Listeners.add` takes the ones it has, so subscribing
is one line (`listeners.add(budget)`) and a unit calls only the hooks someone wants.

The unit calls them on the event loop, from `_dispatch` and the request path, so a hook
must not block and must not dispatch into the unit it was called from (schedule that).
The flight hooks run on the hot path: each is a loop over a tuple, skipped when empty.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from typing import Any

from supervisor.rules.table import State

log = logging.getLogger("supervisor.lifecycle")

Then = Callable[[], None]
_HOOKS = ("on_state", "on_load", "on_flight_start", "on_flight_end", "on_swap", "fence")


class Listeners:
    """The hooks of the subscribed listeners, by kind. A child (`derive`) has its parent's
    listeners and its own: a replica set hears its replicas, and nobody else's."""

    def __init__(self, parent: Listeners | None = None) -> None:
        self._own: list[Any] = []
        self._parent = parent
        self._children: weakref.WeakSet[Listeners] = weakref.WeakSet()
        self.on_state: tuple[Callable[..., None], ...] = ()
        self.on_load: tuple[Callable[..., None], ...] = ()
        self.on_flight_start: tuple[Callable[..., None], ...] = ()
        self.on_flight_end: tuple[Callable[..., None], ...] = ()
        self.on_swap: tuple[Callable[..., None], ...] = ()
        self.fences: tuple[Callable[..., None], ...] = ()
        if parent is not None:
            parent._children.add(self)
        self._rebuild()

    def add(self, listener: object) -> None:
        """Subscribe `listener` (to every unit that shares this list, and its children's)."""
        self._own.append(listener)
        self._rebuild()

    def remove(self, listener: object) -> None:
        if listener in self._own:
            self._own.remove(listener)
            self._rebuild()

    def derive(self) -> Listeners:
        return Listeners(self)

    def _all(self) -> list[Any]:
        return [*(self._parent._all() if self._parent is not None else ()), *self._own]

    def _rebuild(self) -> None:
        every = self._all()
        for hook in _HOOKS:
            bound = tuple(getattr(li, hook) for li in every if callable(getattr(li, hook, None)))
            setattr(self, "fences" if hook == "fence" else hook, bound)
        for child in list(self._children):
            child._rebuild()

    def state(self, unit: object, old: State, new: State, event: str) -> None:
        """A hook that fails is logged, and the others still hear: the unit has changed
        state already, and its effects (a start a held request waits for) must follow."""
        for hook in self.on_state:
            try:
                hook(unit, old, new, event)
            except Exception:
                log.exception("a listener failed on %s -> %s (%s)", old, new, event)

    def load(self, unit: object) -> None:
        for hook in self.on_load:
            hook(unit)

    def swap(self, unit: object, profile: str) -> None:
        for hook in self.on_swap:
            hook(unit, profile)

    def fence(self, unit: object, then: Then) -> None:
        """`then` at once when nobody fences; else after every fence, one inside the next."""
        for hook in reversed(self.fences):
            then = _fenced(hook, unit, then)
        then()


def _fenced(hook: Callable[..., None], unit: object, then: Then) -> Then:
    return lambda: hook(unit, then)
