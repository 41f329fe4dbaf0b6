"""Every (state, event, load) combination of the lifecycle table."""

from __future__ import annotations

import itertools

import pytest

from supervisor.rules.table import (
    Effect,
    Event,
    InvalidTransition,
    Load,
    State,
    Step,
    next_step,
)

S, E, F = State, Event, Effect
IDLE_LOAD = Load()
BUSY = Load(in_flight=1)
HELD = Load(held=2)
PINNED = Load(pinned=True)
WANTED = Load(wanted=True)
ASLEEP_1, ASLEEP_2 = Load(sleep_level=1), Load(sleep_level=2)
LOADS = (IDLE_LOAD, BUSY, HELD, Load(in_flight=3, held=1), PINNED, WANTED,
         Load(in_flight=1, pinned=True, wanted=True), ASLEEP_1, ASLEEP_2,
         Load(held=1, sleep_level=1), Load(pinned=True, sleep_level=1))
DOWN = (S.STOPPED, S.FAILED)

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
    (S.READY, E.IDLE): lambda load: (
        Step(S.READY) if load.busy or load.pinned else Step(S.STOPPING, (F.STOP,))
    ),
    (S.ASLEEP, E.IDLE): lambda load: (
        Step(S.ASLEEP) if load.busy or load.pinned else Step(S.STOPPING, (F.STOP,))
    ),
    (S.READY, E.SLEEP_DUE): lambda load: (
        Step(S.READY) if load.busy or load.pinned else Step(S.SLEEPING, (F.SLEEP,))
    ),
    (S.READY, E.EXITED): lambda load: (
        Step(S.STARTING, (F.START,)) if load.held or load.pinned or load.wanted
        else Step(S.FAILED)
    ),
    (S.ASLEEP, E.EXITED): lambda load: (
        Step(S.STARTING, (F.START,)) if load.held or load.pinned or load.wanted
        else Step(S.FAILED)
    ),
    (S.READY, E.UNHEALTHY): Step(S.STOPPING, (F.FAIL_IN_FLIGHT, F.STOP)),
    (S.ASLEEP, E.UNHEALTHY): Step(S.STOPPING, (F.FAIL_IN_FLIGHT, F.STOP)),
    (S.STOPPING, E.STOPPED): lambda load: (
        Step(S.STARTING, (F.START,)) if load.held or load.wanted else Step(S.STOPPED)
    ),
    (S.READY, E.SWAP): lambda load: (
        Step(S.DRAINING) if load.in_flight else Step(S.STOPPING, (F.STOP,))
    ),
    (S.DRAINING, E.DRAINED): Step(S.STOPPING, (F.STOP,)),
    (S.DRAINING, E.EXITED): lambda load: (
        Step(S.STARTING, (F.START,)) if load.held or load.wanted else Step(S.STOPPED)
    ),
    # Sleep mode: a request (or the operator) wakes an asleep model.
    (S.ASLEEP, E.DEMAND): Step(S.WAKING, (F.WAKE,)),
    (S.SLEEPING, E.DEMAND): Step(S.SLEEPING),
    (S.WAKING, E.DEMAND): Step(S.WAKING),
    (S.SLEEPING, E.DRAINED): Step(S.SLEEPING, (F.SLEEP,)),
    (S.SLEEPING, E.SLEPT): lambda load: (
        Step(S.WAKING, (F.WAKE,)) if load.held or load.wanted else Step(S.ASLEEP)
    ),
    (S.SLEEPING, E.SLEEP_FAILED): Step(S.READY, (F.RELEASE_HELD, F.ARM_IDLE)),
    (S.WAKING, E.WOKE): Step(S.READY, (F.RELEASE_HELD, F.ARM_IDLE)),
    (S.WAKING, E.WAKE_FAILED): Step(S.STOPPING, (F.STOP,)),
    (S.READY, E.SLEEP): lambda load: (
        Step(S.SLEEPING) if load.in_flight else Step(S.SLEEPING, (F.SLEEP,))
    ),
    (S.ASLEEP, E.WAKE): Step(S.WAKING, (F.WAKE,)),
    # The deeper tier: level 1 to 2 (sleep.deepen_after, or host RAM short); SLEEPING holds
    # requests meanwhile, and a sleeper that cannot deepen is stopped.
    (S.ASLEEP, E.DEEPEN): lambda load: (
        Step(S.SLEEPING, (F.DEEPEN,)) if load.sleep_level == 1 and not load.busy
        else Step(S.ASLEEP)
    ),
    (S.SLEEPING, E.DEEPEN_FAILED): Step(S.STOPPING, (F.STOP,)),
}
# A late idle or sleep timer, or a swap request outside READY (re-evaluated once ready),
# is harmless.
for _state in State:
    for _event in (E.IDLE, E.SLEEP_DUE, E.DEEPEN, E.SWAP, E.UNHEALTHY):
        EXPECTED.setdefault((_state, _event), Step(_state))
    # Operator events are never "impossible": they act, wait, or are refused (409).
    if _state in DOWN:
        EXPECTED[_state, E.START] = Step(S.STARTING, (F.START,))
        EXPECTED[_state, E.RESTART] = Step(S.STARTING, (F.START,))
        EXPECTED[_state, E.STOP] = Step(_state)
        EXPECTED[_state, E.FORCE_STOP] = Step(_state)
    EXPECTED.setdefault((_state, E.START), Step(_state))
    EXPECTED.setdefault((_state, E.SLEEP), Step(_state, (F.REFUSE,)))
    EXPECTED.setdefault((_state, E.WAKE), Step(_state, (F.REFUSE,)))
EXPECTED[S.ASLEEP, E.START] = Step(S.WAKING, (F.WAKE,))
for _state in (S.SLEEPING, S.ASLEEP):
    EXPECTED[_state, E.SLEEP] = Step(_state)
for _state in (S.READY, S.WAKING, S.SLEEPING):
    EXPECTED[_state, E.WAKE] = Step(_state)


def _graceful(state: State):
    """STOP and RESTART while it runs: nothing in flight is cut, nothing held fails."""
    def step(load: Load) -> Step:
        if state in (S.READY, S.SLEEPING) and load.in_flight:
            return Step(S.DRAINING)
        if state in (S.STARTING, S.WAKING, S.SLEEPING):
            return Step(S.STOPPING, (F.ABORT, F.STOP))
        if state in (S.READY, S.ASLEEP):
            return Step(S.STOPPING, (F.STOP,))
        return Step(state)
    return step


for _state in State:
    if _state not in DOWN:
        EXPECTED[_state, E.STOP] = EXPECTED[_state, E.RESTART] = _graceful(_state)
_FAIL = (F.FAIL_IN_FLIGHT, F.FAIL_HELD, F.STOP)
EXPECTED.update({
    (S.STOPPING, E.FORCE_STOP): Step(S.STOPPING, (F.FAIL_HELD,)),
    (S.READY, E.FORCE_STOP): Step(S.STOPPING, _FAIL),
    (S.DRAINING, E.FORCE_STOP): Step(S.STOPPING, _FAIL),
    (S.ASLEEP, E.FORCE_STOP): Step(S.STOPPING, _FAIL),
    (S.STARTING, E.FORCE_STOP): Step(S.STOPPING, (F.ABORT, *_FAIL)),
    (S.WAKING, E.FORCE_STOP): Step(S.STOPPING, (F.ABORT, *_FAIL)),
    (S.SLEEPING, E.FORCE_STOP): Step(S.STOPPING, (F.ABORT, *_FAIL)),
})


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


def test_every_operator_event_is_handled_in_every_state() -> None:
    operator = (E.START, E.RESTART, E.STOP, E.FORCE_STOP, E.SLEEP, E.WAKE)
    for state, event, load in itertools.product(State, operator, LOADS):
        next_step(state, event, load)  # never InvalidTransition


def test_pinned_model_is_not_stopped_when_idle() -> None:
    assert next_step(S.READY, E.IDLE, PINNED) == Step(S.READY)
    assert next_step(S.READY, E.IDLE, IDLE_LOAD) == Step(S.STOPPING, (F.STOP,))


def test_admin_stop_drains_then_stops_and_a_later_request_cold_starts() -> None:
    step = next_step(S.READY, E.STOP, Load(in_flight=2))
    assert step == Step(S.DRAINING)
    step = next_step(step.state, E.DRAINED, IDLE_LOAD)
    assert step == Step(S.STOPPING, (F.STOP,))
    step = next_step(step.state, E.STOPPED, IDLE_LOAD)
    assert step == Step(S.STOPPED)
    assert next_step(step.state, E.DEMAND, HELD) == Step(S.STARTING, (F.START,))


def test_restart_to_another_profile_starts_again_after_the_stop() -> None:
    step = next_step(S.READY, E.RESTART, WANTED)
    assert step == Step(S.STOPPING, (F.STOP,))
    assert next_step(step.state, E.STOPPED, WANTED) == Step(S.STARTING, (F.START,))


def test_request_to_a_sleeping_model_is_held_while_it_wakes() -> None:
    step = next_step(S.READY, E.SLEEP, IDLE_LOAD)
    assert step == Step(S.SLEEPING, (F.SLEEP,))
    step = next_step(step.state, E.SLEPT, IDLE_LOAD)
    assert step == Step(S.ASLEEP)
    step = next_step(step.state, E.DEMAND, HELD)
    assert step == Step(S.WAKING, (F.WAKE,))
    assert next_step(step.state, E.DEMAND, HELD) == Step(S.WAKING)  # one wake-up call
    assert next_step(step.state, E.WOKE, HELD) == Step(S.READY, (F.RELEASE_HELD, F.ARM_IDLE))


def test_request_arriving_while_falling_asleep_wakes_it_right_after() -> None:
    assert next_step(S.SLEEPING, E.SLEPT, HELD) == Step(S.WAKING, (F.WAKE,))


def test_sleep_waits_for_requests_in_flight() -> None:
    assert next_step(S.READY, E.SLEEP, BUSY) == Step(S.SLEEPING)
    assert next_step(S.SLEEPING, E.DRAINED, HELD) == Step(S.SLEEPING, (F.SLEEP,))


def test_a_failed_wake_restarts_the_server_for_the_held_requests() -> None:
    step = next_step(S.WAKING, E.WAKE_FAILED, HELD)
    assert step == Step(S.STOPPING, (F.STOP,))
    assert next_step(step.state, E.STOPPED, HELD) == Step(S.STARTING, (F.START,))


def test_sleep_and_wake_are_refused_when_nothing_runs() -> None:
    for state in (S.STOPPED, S.STARTING, S.STOPPING):
        assert F.REFUSE in next_step(state, E.SLEEP).effects
        assert F.REFUSE in next_step(state, E.WAKE).effects


def test_a_level_1_sleeper_deepens_then_wakes_like_any_sleeper() -> None:
    """asleep (1) -> deepen -> sleeping -> slept -> asleep (2, no deeper) -> demand -> waking."""
    step = next_step(S.ASLEEP, E.DEEPEN, ASLEEP_1)
    assert step == Step(S.SLEEPING, (F.DEEPEN,))
    assert next_step(step.state, E.SLEPT, IDLE_LOAD) == Step(S.ASLEEP)
    assert next_step(S.ASLEEP, E.DEEPEN, ASLEEP_2) == Step(S.ASLEEP)  # already as deep
    # A request that came while it deepened is served by a wake as soon as it is asleep.
    assert next_step(S.SLEEPING, E.SLEPT, HELD) == Step(S.WAKING, (F.WAKE,))
    assert next_step(S.ASLEEP, E.DEMAND, ASLEEP_2) == Step(S.WAKING, (F.WAKE,))
    # Its deepen timer firing after a request woke it is stale.
    assert next_step(S.READY, E.DEEPEN, IDLE_LOAD) == Step(S.READY)
