"""The account of what idling saved and cost, live: a listener that integrates each unit's
time in every state (per profile) and the GPU memory it held, counts its starts and wakes
and the seconds the held requests waited on them, since the start and per UTC day.

It integrates on every state change; a read (a scrape, GET /admin/savings) adds the open
interval up to now, so nothing waits for the next change to show. What a unit holds in a
state comes from `sizer` (figures.py: the GPU budget's figures, measured bytes where
known), priced when the interval is added; energy from `energy` (joules since the last
call, attributed to units as memory is; None where NVML has no energy counter).

The per-day totals are kept in the state file's `savings` section (saved every minute
and at close), so a day's figures survive a restart; "since start" is this process's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from supervisor.lifecycle.clock import Clock
from supervisor.lifecycle.units import REPLICA_MARK
from supervisor.rules.table import DOWN, State
from supervisor.savings.tally import NOTHING, Holding, Kind, Tally, by_day, day_of

if TYPE_CHECKING:
    from supervisor.lifecycle.handle import ModelHandle

SECTION = "savings"
KEEP_DAYS = 31

Sizer = Callable[["ModelHandle", str, State], Holding]  # unit, profile, state -> held
Energy = Callable[[], dict[str, float] | None]  # unit -> joules since the last call


def _nothing(unit: ModelHandle, profile: str, state: State) -> Holding:
    return NOTHING


@dataclass(slots=True)
class _Open:
    """A unit's open interval: in `state` (with `profile`) since `since`."""

    unit: ModelHandle
    state: State
    profile: str
    since: float


class SavingsAccount:
    def __init__(self, clock: Clock, wall: Callable[[], float] = time.time, *,
                 units: Callable[[], Iterable[ModelHandle]] = tuple,
                 sizer: Sizer = _nothing, energy: Energy | None = None,
                 saved: dict[str, Any] | None = None,
                 keep_days: int = KEEP_DAYS) -> None:
        self.clock, self.wall, self.units = clock, wall, units
        self.sizer, self.energy, self.keep_days = sizer, energy, keep_days
        self.began, self.began_wall = clock.now(), wall()
        self.totals: dict[str, Tally] = {}  # since the start, by unit
        self.days: dict[str, dict[str, Tally]] = _load_days(saved)  # day -> unit -> tally
        self._open: dict[str, _Open] = {}
        self._came: dict[str, Kind] = {}  # what a unit's last READY came from
        self._folded = False

    # -- listener hooks ---------------------------------------------------------------

    def on_state(self, unit: ModelHandle, old: State, new: State, event: str) -> None:
        self._discover(unit, old)
        now = self.clock.now()
        self._close(self._open[unit.name], now)
        self._open[unit.name] = _Open(unit, new, _profile(unit, new), now)
        if new is State.STARTING:
            self._count(unit.name, lambda t: setattr(t, "starts", t.starts + 1))
        elif new is State.WAKING:
            self._count(unit.name, lambda t: setattr(t, "wakes", t.wakes + 1))
        elif new is State.READY:
            self._came[unit.name] = "wake" if old is State.WAKING else "start"

    def on_flight_start(self, unit: ModelHandle, flight: object) -> None:
        """A request released from the hold queue: what it waited is what users paid."""
        held_since = getattr(flight, "held_since", None)
        if held_since is None:
            return
        waited = max(0.0, self.clock.now() - held_since)
        kind = self._came.get(unit.name, "start")
        self._count(unit.name, lambda t: t.waited_on(kind, waited))

    # -- reading ----------------------------------------------------------------------

    def fold(self) -> None:
        """Add every open interval up to now (and the energy since the last fold)."""
        self._discover()
        now = self.clock.now()
        for name, interval in list(self._open.items()):
            self._close(interval, now)
            self._open[name] = _Open(interval.unit, interval.state, interval.profile, now)
        joules = self.energy() if self.energy is not None else None
        if joules is not None:
            today = day_of(self.wall())
            for name in self._open:
                for tally in (self._total(name), self._day(today, name)):
                    tally.add_energy(joules.get(name, 0.0))

    def report(self) -> dict[str, Any]:
        """GET /admin/savings: per unit, since the start and per UTC day."""
        self.fold()
        names = sorted({*self.totals, *(n for day in self.days.values() for n in day)})
        return {
            "since": self.began_wall, "seconds": round(self.clock.now() - self.began, 3),
            "models": {name: {
                "model": self._model_of(name),
                "since_start": self._total(name).view(),
                "days": {day: units[name].view() for day, units in sorted(self.days.items())
                         if name in units},
            } for name in names},
        }

    def to_json(self) -> dict[str, Any]:
        self.fold()
        return {"days": {day: {n: t.to_json() for n, t in units.items()}
                         for day, units in self.days.items()}}

    # -- inside -----------------------------------------------------------------------

    def _discover(self, changed: ModelHandle | None = None, old: State = State.STOPPED
                  ) -> None:
        """Every unit is on the account from the start (the first read or change) or from
        when it first shows up (a reload added it); one that just changed, in its old
        state."""
        since = self.clock.now() if self._folded else self.began
        self._folded = True
        seen = [] if changed is None else [(changed, old)]
        for unit, state in [*seen, *((u, u.state) for u in self.units())]:
            if unit.name not in self._open:
                self._open[unit.name] = _Open(unit, state, _profile(unit, state), since)

    def _close(self, interval: _Open, now: float) -> None:
        seconds = now - interval.since
        if seconds < 0:
            return
        unit, name = interval.unit, interval.unit.name
        held = self.sizer(unit, interval.profile, interval.state) if interval.profile else (
            NOTHING)
        full = self.sizer(unit, interval.profile or unit.profile.name, State.READY)
        state = interval.state.value
        self._total(name).spend(interval.profile, state, seconds, held, full)
        end = self.wall()
        for day, part in by_day(end - seconds, end) or [(day_of(end), 0.0)]:
            self._day(day, name).spend(interval.profile, state, part, held, full)

    def _count(self, name: str, change: Callable[[Tally], None]) -> None:
        change(self._total(name))
        change(self._day(day_of(self.wall()), name))

    def _total(self, name: str) -> Tally:
        tally = self.totals.get(name)
        if tally is None:
            tally = self.totals[name] = Tally()
        return tally

    def _day(self, day: str, name: str) -> Tally:
        units = self.days.get(day)
        if units is None:
            units = self.days[day] = {}
            for old in sorted(self.days)[:-self.keep_days]:
                del self.days[old]
        tally = units.get(name)
        if tally is None:
            tally = units[name] = Tally()
        return tally

    @staticmethod
    def _model_of(name: str) -> str:
        return name.split(REPLICA_MARK)[0]


def _profile(unit: ModelHandle, state: State) -> str:
    """A down unit has no profile: its seconds are counted under ""."""
    return "" if state in DOWN else unit.profile.name


def _load_days(saved: dict[str, Any] | None) -> dict[str, dict[str, Tally]]:
    days = (saved or {}).get("days")
    if not isinstance(days, dict):
        return {}
    return {str(day): {str(n): Tally.from_json(t) for n, t in units.items()}
            for day, units in days.items() if isinstance(units, dict)}
