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
    (S.DRAINING, E.DEMAND): Step(S.DRAINING),
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
    (S.READY, E.SWAP): lambda load: (
        Step(S.DRAINING) if load.in_flight else Step(S.STOPPING, (F.STOP,))
    ),
    (S.DRAINING, E.DRAINED): Step(S.STOPPING, (F.STOP,)),
    (S.DRAINING, E.EXITED): lambda load: (
        Step(S.STARTING, (F.START,)) if load.held else Step(S.STOPPED)
    ),
}
# A late idle timer, or a swap request outside READY (re-evaluated once ready), is harmless.
for _state in State:
    for _event in (E.IDLE, E.SWAP):
        EXPECTED.setdefault((_state, _event), Step(_state))


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


def test_swap_drains_in_flight_requests_before_stopping() -> None:
    state = next_step(S.READY, E.SWAP, Load(in_flight=2, held=1)).state
    assert state is S.DRAINING
    assert next_step(state, E.DEMAND, Load(in_flight=2, held=5)) == Step(S.DRAINING)
    step = next_step(state, E.DRAINED, Load(in_flight=0, held=5))
    assert step == Step(S.STOPPING, (F.STOP,))
    assert next_step(step.state, E.STOPPED, Load(held=5)) == Step(S.STARTING, (F.START,))


def test_request_during_stop_restarts_after_the_stop() -> None:
    assert next_step(S.STOPPING, E.DEMAND, HELD) == Step(S.STOPPING)
    assert next_step(S.STOPPING, E.STOPPED, HELD) == Step(S.STARTING, (F.START,))
