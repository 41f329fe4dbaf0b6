"""The lifecycle of one model's server, as a pure state machine.

No I/O and no clock here: the model handle feeds events in and carries out the
effects that come back. Keeping the rules pure is what lets every
(state, event) pair be unit-tested without Docker, and keeps single-flight
starts a property of the table rather than of locking.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"  # requests in flight finish before a stop (swap, admin stop)
    STOPPING = "stopping"
    FAILED = "failed"
    SLEEPING = "sleeping"  # going to sleep, or deeper (vLLM sleep mode): requests are held
    ASLEEP = "asleep"  # weights in host RAM (level 1) or dropped (2), container up
    WAKING = "waking"  # wake_up in progress: requests are held


class Event(StrEnum):
    DEMAND = "demand"  # a request needs the server and is held until it is ready
    FOUND_RUNNING = "found_running"  # adopt: the service already runs at supervisor start
    STARTED = "started"  # health answered 200 and the container runs
    START_FAILED = "start_failed"  # container exited, or startup_timeout passed
    IDLE = "idle"  # the idle timer fired (tier 2: stop)
    SLEEP_DUE = "sleep_due"  # the sleep timer fired (tier 1: sleep.after)
    STOPPED = "stopped"  # the runtime finished stopping the service
    EXITED = "exited"  # the container died on its own while ready
    UNHEALTHY = "unhealthy"  # liveness: the server stopped answering its health check
    SWAP = "swap"  # a held request needs a larger profile than the running one
    DRAINED = "drained"  # the last request in flight finished (DRAINING, SLEEPING)
    # Operator events (admin API, schedules).
    START = "start"  # run it; a start asked for while it goes down runs after (load.wanted)
    RESTART = "restart"  # run it again (another profile): stop if running, then start
    STOP = "stop"  # stop after requests in flight finish; held ones start it again after
    FORCE_STOP = "force_stop"  # stop at once; in-flight and held requests fail
    SLEEP = "sleep"
    SLEPT = "slept"
    SLEEP_FAILED = "sleep_failed"
    WAKE = "wake"
    WOKE = "woke"
    WAKE_FAILED = "wake_failed"
    # Asleep at level 1: sleep.deepen_after passed, or host RAM is short (the GPU budget).
    DEEPEN = "deepen"
    DEEPEN_FAILED = "deepen_failed"


class Effect(StrEnum):
    START = "start"  # bring the service up, then await readiness
    AWAIT_READY = "await_ready"  # already running (adopted): only await readiness
    STOP = "stop"  # stop the service with its grace period (after any aborted task)
    RELEASE_HELD = "release_held"  # forward every held request
    FAIL_HELD = "fail_held"  # answer every held request with the start (or stop) error
    ARM_IDLE = "arm_idle"  # (re)start the idle timer
    ABORT = "abort"  # cancel the start, sleep or wake task under way
    FAIL_IN_FLIGHT = "fail_in_flight"  # cut requests in flight (force stop, dead server)
    SLEEP = "sleep"  # ask the server to sleep
    WAKE = "wake"  # ask the server to wake up
    DEEPEN = "deepen"  # from sleep level 1 to level 2 (vLLM: wake up, then sleep at level 2)
    REFUSE = "refuse"  # the operator's request makes no sense in this state: 409


@dataclass(frozen=True, slots=True)
class Load:
    """What the handle carries at the moment of the event."""

    in_flight: int = 0
    held: int = 0
    pinned: bool = False  # never stopped (or woken from sleep) for being idle
    wanted: bool = False  # an operator asked for it to run: start again after a stop
    sleep_level: int = 0  # while asleep: 1 (weights in host RAM) or 2 (weights dropped)

    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or self.held > 0


@dataclass(frozen=True, slots=True)
class Step:
    state: State
    effects: tuple[Effect, ...] = ()


class InvalidTransition(RuntimeError):
    """An event that cannot happen in this state: a bug in the driver, not user input."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"event {event.value!r} is impossible in state {state.value!r}")
        self.state = state
        self.event = event


# Events that may arrive late (a timer that fired just as a request came in) or
# that are re-evaluated once the server is ready again; dropped instead of raising.
_STALE = {Event.IDLE, Event.SLEEP_DUE, Event.DEEPEN, Event.SWAP, Event.UNHEALTHY}
DOWN = (State.STOPPED, State.FAILED)  # nothing runs
_UP_TASK = (State.STARTING, State.WAKING)  # a task runs that a stop must abort first


def _after_stop(load: Load) -> Step:
    """The service is gone: requests that waited meanwhile (or an operator) start it again."""
    if load.held or load.wanted:
        return Step(State.STARTING, (Effect.START,))
    return Step(State.STOPPED)


def _stop(state: State, load: Load) -> Step:
    """A graceful stop: nothing in flight is cut, nothing held is failed."""
    if state in (State.READY, State.SLEEPING) and load.in_flight:
        return Step(State.DRAINING)
    if state in (*_UP_TASK, State.SLEEPING):
        return Step(State.STOPPING, (Effect.ABORT, Effect.STOP))
    if state in (State.READY, State.ASLEEP):
        return Step(State.STOPPING, (Effect.STOP,))
    return Step(state)  # DRAINING, STOPPING: already going down


def _force_stop(state: State) -> Step:
    if state in DOWN:
        return Step(state)
    if state is State.STOPPING:
        return Step(state, (Effect.FAIL_HELD,))
    fail = (Effect.FAIL_IN_FLIGHT, Effect.FAIL_HELD, Effect.STOP)
    if state in (*_UP_TASK, State.SLEEPING):
        return Step(State.STOPPING, (Effect.ABORT, *fail))
    return Step(State.STOPPING, fail)


def _operator(state: State, event: Event, load: Load) -> Step | None:
    """Operator events; None for the others."""
    match event:
        case Event.START | Event.RESTART if state in DOWN:
            return Step(State.STARTING, (Effect.START,))
        case Event.START if state is State.ASLEEP:
            return Step(State.WAKING, (Effect.WAKE,))
        case Event.START:
            return Step(state)  # up, coming up, or going down with load.wanted set
        case Event.RESTART | Event.STOP:
            return _stop(state, load)
        case Event.FORCE_STOP:
            return _force_stop(state)
        case Event.SLEEP if state is State.READY:
            return Step(State.SLEEPING) if load.in_flight else Step(
                State.SLEEPING, (Effect.SLEEP,))
        case Event.SLEEP if state in (State.SLEEPING, State.ASLEEP):
            return Step(state)
        case Event.WAKE if state is State.ASLEEP:
            return Step(State.WAKING, (Effect.WAKE,))
        case Event.WAKE if state in (State.READY, State.WAKING, State.SLEEPING):
            return Step(state)  # SLEEPING: wakes once asleep (load.wanted)
        case Event.SLEEP | Event.WAKE:
            return Step(state, (Effect.REFUSE,))
    return None


def next_step(state: State, event: Event, load: Load = Load()) -> Step:
    """Return the state after `event` and the effects the handle must carry out."""
    operator = _operator(state, event, load)
    if operator is not None:
        return operator
    match state, event:
        case (State.STOPPED | State.FAILED), Event.DEMAND:
            return Step(State.STARTING, (Effect.START,))
        case State.ASLEEP, Event.DEMAND:
            return Step(State.WAKING, (Effect.WAKE,))
        case _, Event.DEMAND:
            # Single flight: a start, stop, sleep or wake is under way, or the server is up.
            return Step(state)
        case (State.STOPPED | State.FAILED), Event.FOUND_RUNNING:
            return Step(State.STARTING, (Effect.AWAIT_READY,))
        case State.STARTING, Event.STARTED:
            return Step(State.READY, (Effect.RELEASE_HELD, Effect.ARM_IDLE))
        case State.STARTING, (Event.START_FAILED | Event.EXITED):
            return Step(State.FAILED, (Effect.FAIL_HELD,))
        case (State.READY | State.ASLEEP), Event.IDLE:
            if load.busy or load.pinned:
                return Step(state)
            return Step(State.STOPPING, (Effect.STOP,))
        case State.READY, Event.SLEEP_DUE:
            if load.busy or load.pinned:
                return Step(state)
            return Step(State.SLEEPING, (Effect.SLEEP,))
        case (State.READY | State.ASLEEP), Event.UNHEALTHY:
            # A hung server answers nothing: cut what waits on it, stop it; held requests
            # (or load.wanted) start it again once it is down.
            return Step(State.STOPPING, (Effect.FAIL_IN_FLIGHT, Effect.STOP))
        case (State.READY | State.ASLEEP), Event.EXITED:
            # Requests held for a swap, a pin or an operator's start bring it back at once;
            # otherwise the next demand starts it afresh.
            if load.held or load.pinned or load.wanted:
                return Step(State.STARTING, (Effect.START,))
            return Step(State.FAILED)
        case State.READY, Event.SWAP:
            # New requests are held from now on; those in flight finish first.
            return Step(State.DRAINING) if load.in_flight else Step(State.STOPPING, (Effect.STOP,))
        case State.DRAINING, Event.DRAINED:
            return Step(State.STOPPING, (Effect.STOP,))
        case State.SLEEPING, Event.DRAINED:
            return Step(State.SLEEPING, (Effect.SLEEP,))
        case (State.STOPPING, Event.STOPPED) | (State.DRAINING, Event.EXITED):
            return _after_stop(load)
        case State.ASLEEP, Event.DEEPEN if load.sleep_level == 1 and not load.busy:
            # Held requests would have woken it already; a deeper sleep keeps the process.
            return Step(State.SLEEPING, (Effect.DEEPEN,))
        case State.SLEEPING, Event.DEEPEN_FAILED:
            # Neither asleep at level 1 for sure nor awake: stopping frees what deepening
            # would have; held requests (or load.wanted) start it again once it is down.
            return Step(State.STOPPING, (Effect.STOP,))
        case State.SLEEPING, Event.SLEPT:
            if load.held or load.wanted:
                return Step(State.WAKING, (Effect.WAKE,))
            return Step(State.ASLEEP)
        case State.SLEEPING, Event.SLEEP_FAILED:
            return Step(State.READY, (Effect.RELEASE_HELD, Effect.ARM_IDLE))
        case State.WAKING, Event.WOKE:
            return Step(State.READY, (Effect.RELEASE_HELD, Effect.ARM_IDLE))
        case State.WAKING, Event.WAKE_FAILED:
            # A server that cannot wake is restarted; held requests wait for the new one.
            return Step(State.STOPPING, (Effect.STOP,))
        case _, _ if event in _STALE:
            return Step(state)
    raise InvalidTransition(state, event)
