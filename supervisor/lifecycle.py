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
    DRAINING = "draining"  # a profile swap waits for requests in flight on the old profile
    STOPPING = "stopping"
    FAILED = "failed"


class Event(StrEnum):
    DEMAND = "demand"  # a request needs the server and is held until it is ready
    FOUND_RUNNING = "found_running"  # adopt: the service already runs at supervisor start
    STARTED = "started"  # health answered 200 and the container runs
    START_FAILED = "start_failed"  # container exited, or startup_timeout passed
    IDLE = "idle"  # the idle timer fired
    STOPPED = "stopped"  # the runtime finished stopping the service
    EXITED = "exited"  # the container died on its own while ready
    SWAP = "swap"  # a held request needs a larger profile than the running one
    DRAINED = "drained"  # the last request in flight on the old profile finished


class Effect(StrEnum):
    START = "start"  # bring the service up, then await readiness
    AWAIT_READY = "await_ready"  # already running (adopted): only await readiness
    STOP = "stop"  # stop the service with its grace period
    RELEASE_HELD = "release_held"  # forward every held request
    FAIL_HELD = "fail_held"  # answer every held request with the start error
    ARM_IDLE = "arm_idle"  # (re)start the idle timer


@dataclass(frozen=True, slots=True)
class Load:
    """What the handle carries at the moment of the event."""

    in_flight: int = 0
    held: int = 0

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
_STALE = {Event.IDLE, Event.SWAP}


def next_step(state: State, event: Event, load: Load = Load()) -> Step:
    """Return the state after `event` and the effects the handle must carry out."""
    match state, event:
        case (State.STOPPED | State.FAILED), Event.DEMAND:
            return Step(State.STARTING, (Effect.START,))
        case (State.STARTING | State.READY | State.DRAINING | State.STOPPING), Event.DEMAND:
            # Single flight: a start or stop is already under way, or the server is up.
            return Step(state)
        case (State.STOPPED | State.FAILED), Event.FOUND_RUNNING:
            return Step(State.STARTING, (Effect.AWAIT_READY,))
        case State.STARTING, Event.STARTED:
            return Step(State.READY, (Effect.RELEASE_HELD, Effect.ARM_IDLE))
        case State.STARTING, (Event.START_FAILED | Event.EXITED):
            return Step(State.FAILED, (Effect.FAIL_HELD,))
        case State.READY, Event.IDLE:
            return Step(State.READY) if load.busy else Step(State.STOPPING, (Effect.STOP,))
        case State.READY, Event.EXITED:
            # Held requests cannot exist while ready; the next demand starts afresh.
            return Step(State.FAILED)
        case State.READY, Event.SWAP:
            # New requests are held from now on; those in flight finish first.
            return Step(State.DRAINING) if load.in_flight else Step(State.STOPPING, (Effect.STOP,))
        case State.DRAINING, Event.DRAINED:
            return Step(State.STOPPING, (Effect.STOP,))
        case (State.STOPPING, Event.STOPPED) | (State.DRAINING, Event.EXITED):
            # Requests that arrived meanwhile were held: start again (the profile they need).
            if load.held:
                return Step(State.STARTING, (Effect.START,))
            return Step(State.STOPPED)
        case _, _ if event in _STALE:
            return Step(state)
    raise InvalidTransition(state, event)
