"""Every (state, event, load) combination of the lifecycle table."""

from __future__ import annotations

import itertools

import pytest

from supervisor.lifecycle import Effect, Event, InvalidTransition, Load, State, Step, next_step

S, E, F = State, Event, Effect
IDLE_LOAD = Load()
BUSY = Load(in_flight=1)
HELD = Load(held=2)
LOADS = (IDLE_LOAD, BUSY, HELD, Load(in_flight=3, held=1))

# Expected outcome for each (state, event); a callable when it depends on the load,
# None when the event is impossible in that state.
EXPECTED: dict[tuple[State, Event], object] = {
    (S.STOPPED, E.DEMAND): Step(S.STARTING, (F.START,)),
    (S.FAILED, E.DEMAND): Step(S.STARTING, (F.START,)),
    (S.STARTING, E.DEMAND): Step(S.STARTING),
    (S.READY, E.DEMAND): Step(S.READY),
    (S.STOPPING, E.DEMAND): Step(S.STOPPING),
    (S.STOPPED, E.FOUND_RUNNING): Step(S.STARTING, (F.AWAIT_READY,)),
    (S.FAILED, E.FOUND_RUNNING): Step(S.STARTING, (F.AWAIT_READY,)),
    (S.STARTING, E.STARTED): Step(S.READY, (F.RELEASE_HELD, F.ARM_IDLE)),
    (S.STARTING, E.START_FAILED): Step(S.FAILED, (F.FAIL_HELD,)),
    (S.STARTING, E.EXITED): Step(S.FAILED, (F.FAIL_HELD,)),
    (S.READY, E.IDLE): lambda load: Step(S.READY) if load.busy else Step(S.STOPPING, (F.STOP,)),
    (S.READY, E.EXITED): Step(S.FAILED),
    (S.STOPPING, E.STOPPED): lambda load: (
        Step(S.STARTING, (F.START,)) if load.held else Step(S.STOPPED)
    ),
    # A late idle timer is harmless everywhere else.
    (S.STOPPED, E.IDLE): Step(S.STOPPED),
    (S.STARTING, E.IDLE): Step(S.STARTING),
    (S.STOPPING, E.IDLE): Step(S.STOPPING),
    (S.FAILED, E.IDLE): Step(S.FAILED),
}


@pytest.mark.parametrize(
    ("state", "event", "load"), list(itertools.product(State, Event, LOADS))
)
def test_every_transition(state: State, event: Event, load: Load) -> None:
    expected = EXPECTED.get((state, event))
    if expected is None:
        with pytest.raises(InvalidTransition, match=event.value):
            next_step(state, event, load)
        return
    if callable(expected):
        expected = expected(load)
    assert next_step(state, event, load) == expected


def test_table_covers_the_documented_happy_path() -> None:
    """stopped -> starting -> ready -> stopping -> stopped, as a user sees it."""
    state = S.STOPPED
    seen = [state]
    for event, load in [
        (E.DEMAND, HELD),
        (E.STARTED, IDLE_LOAD),
        (E.IDLE, IDLE_LOAD),
        (E.STOPPED, IDLE_LOAD),
    ]:
        state = next_step(state, event, load).state
        seen.append(state)
    assert seen == [S.STOPPED, S.STARTING, S.READY, S.STOPPING, S.STOPPED]


def test_only_one_start_however_many_demands() -> None:
    state, starts = S.STOPPED, 0
    for _ in range(100):
        step = next_step(state, E.DEMAND, HELD)
        starts += step.effects.count(F.START)
        state = step.state
    assert starts == 1 and state is S.STARTING


def test_streaming_request_longer_than_idle_timeout_is_not_stopped() -> None:
    assert next_step(S.READY, E.IDLE, BUSY) == Step(S.READY)


def test_request_during_stop_restarts_after_the_stop() -> None:
    assert next_step(S.STOPPING, E.DEMAND, HELD) == Step(S.STOPPING)
    assert next_step(S.STOPPING, E.STOPPED, HELD) == Step(S.STARTING, (F.START,))
