"""`idle_policy: adaptive` at work: a listener on the units that learns each one's history
(idle gaps, the arrivals that found it given back, its measured start, stop and wake
seconds) and carries out the pure policy's plan (policy.py) through the unit's public
commands: a sleep or a stop once the unit has been idle for the planned time, and a start
(or a wake) ahead of the demand the plan predicts.

The unit's own fixed timers stay armed as the upper bound (`idle_timeout`); a decision
that needs "nothing in flight" is fenced like the unit's own idle decisions. A pre-warm
is a start like an operator's: it goes through the GPU budget (which evicts only idle
models), and it gives way: none begins while another model waits for GPU memory, and a
pre-warmed model nobody used is given back after the plan's window.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from supervisor.config import ModelConfig
from supervisor.idle.history import IdleHistory
from supervisor.idle.policy import Bounds, Costs, Plan, plan
from supervisor.idle.timeofday import quiet_from
from supervisor.lifecycle.clock import Timer
from supervisor.refusal import Conflict
from supervisor.rules.table import DOWN, State

if TYPE_CHECKING:
    from supervisor.lifecycle.handle import ModelHandle

log = logging.getLogger("supervisor.idle")

DEFAULT_SECONDS = {"start": 30.0, "stop": 3.0, "wake": 2.0}  # until one is measured
# What a decision is told to besides the log (the event log's `record`): model, from and
# to state, the event ("prewarm") and the reason.
Note = Callable[..., None]
_GOING = {State.STARTING: "start", State.WAKING: "wake", State.STOPPING: "stop"}


@dataclass
class _Unit:
    history: IdleHistory
    idle_at: float | None = None  # clock time the unit went idle (None: in use)
    plan: Plan | None = None
    planned_at_version: int = -1
    timers: list[Timer] = field(default_factory=list)
    prewarming: bool = False  # started ahead of demand; no request since
    since: dict[str, float] = field(default_factory=dict)  # kind -> clock time it began
    decision: dict[str, Any] = field(default_factory=dict)  # the last, for the admin API
    prewarms: int = 0

    def cancel(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()


class Keeper:
    def __init__(self, wall: Callable[[], float],
                 histories: dict[str, IdleHistory] | None = None,
                 note: Note | None = None) -> None:
        self.wall = wall  # wall-clock seconds (time of day and week)
        self.note = note
        self._units: dict[str, _Unit] = {}
        self._handles: dict[str, ModelHandle] = {}
        self._saved = dict(histories or {})

    @staticmethod
    def applies(unit: ModelHandle) -> bool:
        return unit.config.idle_policy == "adaptive"

    def _unit(self, unit: ModelHandle) -> _Unit:
        u = self._units.get(unit.name)
        if u is None:
            history = self._saved.pop(unit.name, None) or IdleHistory(self.wall())
            u = self._units[unit.name] = _Unit(history)
            self._handles[unit.name] = unit
        return u

    def histories(self) -> dict[str, Any]:
        """The state file's `idle` section (with the saved histories of models not seen
        since the start, which a save would otherwise drop)."""
        return {**{name: h.to_json() for name, h in self._saved.items()},
                **{name: u.history.to_json() for name, u in self._units.items()}}

    def describe(self, name: str) -> dict[str, Any] | None:
        """The last timeout chosen and the last pre-warm, with their reasons."""
        u = self._units.get(name)
        return None if u is None else {**u.decision, "prewarms": u.prewarms}

    def measured(self, name: str, profile: str, kind: str) -> float | None:
        """The measured seconds of a unit's start, stop or wake on `profile` (every
        model's, adaptive or not), None before the first."""
        u = self._units.get(name)
        history = u.history if u is not None else self._saved.get(name)
        return None if history is None else history.duration(profile, kind)

    def view(self, name: str, config: ModelConfig, profile: str,
             idle_timeout: float) -> dict[str, Any]:
        """`GET /admin/models`'s `idle`: the policy's current choice and why, and the
        measured seconds it weighs."""
        measured = {k: self.measured(name, profile, k) for k in DEFAULT_SECONDS}
        nap = config.sleep.after if config.sleep.enabled else None
        fixed = {"policy": config.idle_policy, "sleep_after": nap, "stop_after": idle_timeout,
                 "prewarm_at": None, "reason": "fixed timers (idle_policy: fixed)",
                 "prewarms": 0, "measured": measured}
        if config.idle_policy != "adaptive":
            return fixed
        decision = self.describe(name) or {}
        if not decision.get("reason"):
            decision = {**decision, "reason": "no idle period yet: the fixed bounds"}
        return {**fixed, **decision, "measured": measured}

    def close(self) -> None:
        for u in self._units.values():
            u.cancel()

    # -- listener hooks ----------------------------------------------------

    def on_flight_start(self, unit: ModelHandle, flight: object) -> None:
        if self.applies(unit):
            _advice(self._arrived, unit, self._unit(unit), down=False)

    def on_flight_end(self, unit: ModelHandle, flight: object) -> None:
        if (self.applies(unit) and unit.state is State.READY and not unit.in_flight
                and not unit.held):
            _advice(self._idle, unit, self._unit(unit))

    def on_state(self, unit: ModelHandle, old: State, new: State, event: str) -> None:
        u = self._unit(unit)  # durations are measured for every model: the simulator's
        now = unit.clock.now()
        if new in _GOING:
            u.since[_GOING[new]] = now
        if old in _GOING and (new is State.READY or new is State.STOPPED):
            began = u.since.pop(_GOING[old], None)
            if began is not None:
                u.history.measured(unit.profile.name, _GOING[old], now - began)
        if not self.applies(unit):
            return
        if new in (State.STARTING, State.WAKING) and event == "demand":
            self._arrived(unit, u, down=True)
        elif new is State.STOPPING and event == "idle":  # its own timer: the upper bound
            u.cancel()
            self._plan_prewarm(unit, u)
        elif new is State.READY and u.prewarming and not unit.in_flight and not unit.held:
            window = u.plan.prewarm_window if u.plan is not None else unit.idle_timeout
            self._after(unit, u, window, self._give_back, "nobody came for the pre-warm")

    # -- decisions -----------------------------------------------------------

    def _arrived(self, unit: ModelHandle, u: _Unit, *, down: bool) -> None:
        if u.idle_at is not None:
            gap = unit.clock.now() - u.idle_at
            u.history.gap(gap, self.wall(), down=down or u.prewarming)
        u.idle_at, u.prewarming = None, False
        if u.decision.get("prewarm_at") is not None:  # demand came: that one is past
            u.decision["prewarm_at"] = None
        u.cancel()

    def _idle(self, unit: ModelHandle, u: _Unit) -> None:
        u.cancel()
        u.idle_at = unit.clock.now()
        stride = max(1, len(u.history.gaps) // 32)  # a plan per new gap is wasted work
        if u.plan is None or u.history.version - u.planned_at_version >= stride:
            u.plan = self._plan(unit, u)
            u.planned_at_version = u.history.version
            u.decision = {"policy": "adaptive", "sleep_after": u.plan.sleep_after,
                          "stop_after": u.plan.stop_after, "prewarm_at": None,
                          "reason": u.plan.reason}
            log.info("model=%s idle policy: sleep after %s, stop after %.1fs (%s)", unit.name,
                     "-" if u.plan.sleep_after is None else f"{u.plan.sleep_after:.1f}s",
                     u.plan.stop_after, u.plan.reason)
        if u.plan.sleep_after is not None:
            self._after(unit, u, u.plan.sleep_after, self._sleep, "planned sleep")
        stop_after, why = u.plan.stop_after, "planned stop"
        wall = self.wall()
        ended = quiet_from(u.history.downs, u.history.since, wall, wall + stop_after)
        if ended is not None:  # demand has ended for today: no keep-alive to pay for
            stop_after = max(unit.config.min_idle, ended - wall)
            why = "no request at this time of day on the last days"
            u.decision = {**u.decision, "stop_after": stop_after, "reason": why}
            log.info("model=%s idle policy: stop after %.1fs (%s)", unit.name, stop_after, why)
        if stop_after < unit.idle_timeout:
            self._after(unit, u, stop_after, self._give_back, why)

    def _plan(self, unit: ModelHandle, u: _Unit, *, at: float | None = None,
              by_gap: bool = True) -> Plan:
        config = unit.config
        nap = None  # the sleep tier's bound: sleep.after, else idle_timeout
        if config.sleep.enabled:
            nap = unit.idle_timeout if config.sleep.after is None else config.sleep.after
        bounds = Bounds(unit.idle_timeout, config.min_idle, nap, config.prefer)
        seconds = {k: u.history.duration(unit.profile.name, k) or v
                   for k, v in DEFAULT_SECONDS.items()}
        costs = Costs(seconds["start"], seconds["stop"],
                      seconds["wake"] if config.sleep.enabled else None)
        previous = u.plan.stop_after if u.plan is not None else None
        return plan(u.history.view(), self.wall() if at is None else at, bounds, costs,
                    by_gap=by_gap, previous=previous)

    def _after(self, unit: ModelHandle, u: _Unit, delay: float,
               action: Callable[[ModelHandle, _Unit, str], None], why: str) -> None:
        u.timers.append(unit.clock.call_later(delay, action, unit, u, why))

    def _still_idle(self, unit: ModelHandle) -> bool:
        return (not unit.in_flight and not unit.held and not unit.is_pinned
                and unit.state in (State.READY, State.ASLEEP))

    def _sleep(self, unit: ModelHandle, u: _Unit, why: str) -> None:
        def then() -> None:
            if self._still_idle(unit) and unit.state is State.READY:
                log.info("model=%s idle policy: asleep (%s)", unit.name, why)
                unit.sleep()
        unit.listeners.fence(unit, then)

    def _give_back(self, unit: ModelHandle, u: _Unit, why: str) -> None:
        def then() -> None:
            if not self._still_idle(unit):
                return
            log.info("model=%s idle policy: stopping (%s)", unit.name, why)
            u.cancel()
            unit.stop()
            self._plan_prewarm(unit, u)
        unit.listeners.fence(unit, then)

    def _plan_prewarm(self, unit: ModelHandle, u: _Unit) -> None:
        """Given back: plan the start ahead of the next demand, from the idle period's
        beginning (gaps count from the last request)."""
        now, wall = unit.clock.now(), self.wall()
        wasted, u.prewarming = u.prewarming, False
        idle_at = u.idle_at if u.idle_at is not None and not wasted else now
        fresh = self._plan(unit, u, at=wall - (now - idle_at), by_gap=not wasted)
        u.plan = fresh
        if fresh.prewarm_at is None:
            return
        delay = max(0.0, fresh.prewarm_at - wall)
        u.decision = {**u.decision, "prewarm_at": fresh.prewarm_at, "reason": fresh.reason}
        log.info("model=%s idle policy: pre-warm in %.0fs (%s)", unit.name, delay, fresh.reason)
        self._after(unit, u, delay, self._prewarm, fresh.reason)

    def _prewarm(self, unit: ModelHandle, u: _Unit, why: str) -> None:
        if unit.state not in DOWN and unit.state is not State.ASLEEP:
            return
        waiting = [n for n, h in self._handles.items() if h.effects.gpus.waiting(n)]
        if waiting:
            log.info("model=%s idle policy: no pre-warm, %s wait for GPU memory",
                     unit.name, ", ".join(waiting))
            return
        log.info("model=%s idle policy: pre-warming (%s)", unit.name, why)
        if self.note is not None:
            state = unit.state.value
            self.note(unit.name, state, state, event="prewarm", profile=unit.profile.name,
                      reason=why)
        u.prewarming, u.prewarms = True, u.prewarms + 1
        u.decision = {**u.decision, "last_prewarm": self.wall(), "prewarm_reason": why}
        try:
            unit.start()
        except Conflict:
            u.prewarming = False


def _advice(decide: Callable[..., None], unit: ModelHandle, *args: Any, **kwargs: Any) -> None:
    """The policy advises; the request that called it goes on whatever it does: a failure
    is logged, and the unit's own timers (the upper bound) still apply."""
    try:
        decide(unit, *args, **kwargs)
    except Exception:
        log.exception("model=%s idle policy failed; the fixed timers apply", unit.name)
