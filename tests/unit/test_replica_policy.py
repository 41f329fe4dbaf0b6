"""The replica rules as tables: routing, scale up and scale down, for every state a
replica can be in. `R` is a ready replica, `S` stopped, and so on (see REPLICA)."""

from __future__ import annotations

import pytest

from supervisor.rules.replica_policy import Choice, ChoiceKind, Replica, route, surplus, to_start
from supervisor.rules.table import State

READY, STARTING, WAKING, ASLEEP = State.READY, State.STARTING, State.WAKING, State.ASLEEP
STOPPED, FAILED, DRAINING, STOPPING = State.STOPPED, State.FAILED, State.DRAINING, State.STOPPING


def r(state: State, in_flight: int = 0, held: int = 0, **kw: bool) -> Replica:
    return Replica(state, in_flight, held, **kw)


SERVE, HOLD = ChoiceKind.SERVE, ChoiceKind.HOLD

ROUTES = [
    # the ready replica with the fewest outstanding (in flight + held), ties to the first
    ([r(READY, 3), r(READY, 1)], Choice(1, SERVE)),
    ([r(READY, 2), r(READY, 2)], Choice(0, SERVE)),
    ([r(READY, 1, held=2), r(READY, 2)], Choice(1, SERVE)),
    # ready beats coming up, however loaded
    ([r(READY, 500), r(STARTING)], Choice(0, SERVE)),
    # ready but its profile is too small: another that fits serves
    ([r(READY, 0, fits=False), r(READY, 9)], Choice(1, SERVE)),
    # none ready: held where it serves soonest
    ([r(STOPPED), r(STARTING, held=5)], Choice(1, HOLD)),
    ([r(STARTING, held=4), r(WAKING, held=2)], Choice(1, HOLD)),
    ([r(STOPPED), r(ASLEEP)], Choice(1, HOLD)),  # a wake beats a cold start
    ([r(STOPPED), r(READY, fits=False)], Choice(1, HOLD)),  # a swap: profiles are the model's
    ([r(DRAINING), r(STOPPED)], Choice(1, HOLD)),  # going down comes last
    ([r(STOPPING), r(DRAINING, held=1)], Choice(0, HOLD)),
    ([r(STOPPED), r(STOPPED)], Choice(0, HOLD)),
    ([r(STARTING, fits=False), r(ASLEEP)], Choice(1, HOLD)),
    # a failed replica in its backoff is skipped while another can start
    ([r(FAILED, backoff=True), r(STOPPED)], Choice(1, HOLD)),
    ([r(FAILED, backoff=True), r(FAILED)], Choice(1, HOLD)),
    ([r(FAILED, backoff=True), r(FAILED, backoff=True)], Choice(0, HOLD)),  # it answers 503
]


@pytest.mark.parametrize(("replicas", "choice"), ROUTES)
def test_route(replicas: list[Replica], choice: Choice) -> None:
    assert route(replicas) == choice


STARTS = [
    # target 4: more than 4 outstanding per replica up (or coming up) starts one more
    ([r(READY, 4), r(STOPPED)], 4, None),
    ([r(READY, 5), r(STOPPED)], 4, 1),
    ([r(READY, 3, held=2), r(STOPPED)], 4, 1),
    ([r(READY, 5), r(STARTING), r(STOPPED)], 4, None),  # the second is on its way
    ([r(READY, 5), r(STARTING, held=4), r(STOPPED)], 4, 2),
    ([r(READY, 9), r(STOPPED), r(ASLEEP)], 4, 2),  # waking is quicker than starting
    ([r(READY, 9), r(FAILED, backoff=True)], 4, None),
    ([r(READY, 9), r(FAILED)], 4, 1),
    ([r(READY, 9), r(DRAINING)], 4, None),  # nothing left to start
    ([r(STARTING, held=50), r(STOPPED)], 4, 1),  # held on the first one coming up
    ([r(STOPPED, held=50), r(STOPPED)], 4, None),  # the held request starts the first
    ([r(READY, 50), r(STOPPED)], None, None),  # no target: no scaling
]


@pytest.mark.parametrize(("replicas", "target", "index"), STARTS)
def test_to_start(replicas: list[Replica], target: int | None, index: int | None) -> None:
    assert to_start(replicas, target) == index


SURPLUS = [
    ([r(READY, 2), r(READY, 2)], 4, 1),  # 4 fit on one: the last goes
    ([r(READY, 3), r(READY, 2)], 4, None),  # 5 do not
    ([r(READY, 0), r(READY, 0)], 4, 1),
    ([r(READY, 0), r(READY, 3)], 4, 1),  # the last one, however busy: its timer runs on
    ([r(READY, 0), r(READY, 1), r(STOPPED)], 4, 1),
    ([r(READY, 0, kept=True), r(READY, 3)], 4, 1),  # never a kept one
    ([r(READY, 0, kept=True), r(READY, 0, kept=True)], 4, None),
    ([r(READY, 0)], 4, None),  # the last ready one follows the model's idle rules
    ([r(READY, 0), r(STARTING), r(STOPPED)], 4, None),
    ([r(READY, 1), r(READY, 1), r(READY, 1)], 2, 2),  # 3 fit on two
    ([r(READY, 0), r(READY, 0), r(STARTING)], 4, None),  # the top goes first (Swarm slots)
    ([r(READY, 0), r(READY, 0), r(DRAINING)], 4, None),
    ([r(READY, 0), r(READY, 0), r(FAILED)], 4, 1),
    ([r(READY, 0), r(READY, 0)], None, None),
]


@pytest.mark.parametrize(("replicas", "target", "index"), SURPLUS)
def test_surplus(replicas: list[Replica], target: int | None, index: int | None) -> None:
    assert surplus(replicas, target) == index
