"""The adaptive idle policy's decisions, as a table: history and time in, plan out."""

from __future__ import annotations

import random

import pytest

from supervisor.idle.history import IdleHistory
from supervisor.idle.keeper import Keeper
from supervisor.idle.policy import MIN_GAPS, Bounds, Costs, History, plan, requests_per_start
from supervisor.idle.timeofday import DAY, next_demand, quiet_from

MONDAY = 1704067200.0
COSTS = Costs(start=60.0, stop=3.0)
BOUNDS = Bounds(idle_timeout=3600.0)


def bursts(period: float, burst_gaps: int, pace: float) -> list[float]:
    """Gaps of bursts: `burst_gaps` short gaps of `pace` s, then one of about `period` s."""
    gaps: list[float] = []
    for i in range(12):
        gaps += [pace] * burst_gaps
        gaps.append(period * (0.97 + 0.06 * (i % 3) / 2))
    return gaps


@pytest.mark.parametrize(("gaps", "keep", "prewarm"), [
    # Too few gaps: keep as long as a start costs (ski rental), no pre-warm.
    ([5.0] * (MIN_GAPS - 1), (60 + 3 + 6 * 60, 60 + 3 + 6 * 60), None),
    # Only short gaps: nothing says what follows a longer one, so the rent (a keep-alive
    # shorter than it stands on the gaps seen above it).
    ([5.0, 6.0, 7.0, 8.0] * 10, (60 + 3 + 6 * 60, 60 + 3 + 6 * 60), None),
    # ... and once a dozen longer gaps are seen, a quarter of the way back from it.
    ([5.0, 6.0, 7.0, 8.0] * 10 + [20000.0] * 12, (100.0, 130.0), None),
    # Hourly jobs (short gaps, then ~55 min): give back after the burst, start ahead.
    (bursts(3300.0, 30, 10.0), (10.0, 12.0), (2500.0, 3200.0)),
    # Rare and random (one gap per 3 h on average): give back within a minute (what is
    # left of the rent after 30 long gaps), no pre-warm.
    ([600.0, 20000.0, 3000.0, 9000.0, 15000.0, 1200.0, 30000.0, 7000.0, 11000.0,
      4000.0] * 3, (0.0, 60.0), None),
])
def test_the_plan_follows_the_gaps(gaps: list[float], keep: tuple[float, float],
                                   prewarm: tuple[float, float] | None) -> None:
    p = plan(History(gaps, (), MONDAY), MONDAY, BOUNDS, COSTS)
    assert keep[0] <= p.stop_after <= keep[1], p.reason
    if prewarm is None:
        assert p.prewarm_at is None, p.reason
    else:
        assert p.prewarm_at is not None, p.reason
        assert prewarm[0] <= p.prewarm_at - MONDAY <= prewarm[1], p.reason
    assert p.reason


def test_it_is_scale_free() -> None:
    """The same pattern 60 times faster (and a start 60 times shorter) gives the same
    plan, 60 times shorter."""
    slow = plan(History(bursts(3300.0, 30, 10.0), (), 0.0), 0.0, BOUNDS, COSTS)
    fast = plan(History([g / 60 for g in bursts(3300.0, 30, 10.0)], (), 0.0), 0.0,
                Bounds(idle_timeout=60.0), Costs(start=1.0, stop=0.05))
    assert slow.prewarm_at is not None and fast.prewarm_at is not None
    assert fast.stop_after == pytest.approx(slow.stop_after / 60)
    assert fast.prewarm_at == pytest.approx(slow.prewarm_at / 60)


@pytest.mark.parametrize(("bounds", "low", "high"), [
    (Bounds(idle_timeout=600.0, min_idle=120.0), 120.0, 600.0),  # min_idle: the floor
    (Bounds(idle_timeout=5.0), 0.0, 5.0),  # idle_timeout: the ceiling
])
def test_the_operator_bounds_hold(bounds: Bounds, low: float, high: float) -> None:
    for gaps in ([1.0] * 40, [10_000.0] * 40, bursts(3300.0, 30, 10.0)):
        p = plan(History(gaps, (), 0.0), 0.0, bounds, COSTS)
        assert low <= p.stop_after <= high


def test_preferring_latency_keeps_longer_than_preferring_savings() -> None:
    gaps = [30.0 * (i % 17 + 1) for i in range(100)]
    keeps = {prefer: plan(History(gaps, (), 0.0), 0.0, Bounds(3600.0, prefer=prefer),
                          COSTS).stop_after for prefer in ("savings", "balanced", "latency")}
    assert keeps["savings"] <= keeps["balanced"] <= keeps["latency"]
    assert keeps["savings"] < keeps["latency"]


@pytest.mark.parametrize(("gaps", "up", "waiting"), [
    ([1.0, 1.0, 28.0] * 5, 3.5, 3.0),  # bursts of three 1 s apart: all three wait
    ([100.0] * 20, 60.0, 1.0),  # nothing follows within a start: the one request
    ([1.0] * 20, 60.0, 1.0),  # no gap longer than a start: none ever finds it down
])
def test_the_requests_a_start_keeps_waiting(gaps: list[float], up: float,
                                            waiting: float) -> None:
    assert requests_per_start(gaps, up) == pytest.approx(waiting)


def test_the_plan_moves_by_what_the_move_saves() -> None:
    """The last plan's keep-alive moves towards the cheapest by what that saves: bursts
    every 55 min, after a plan that kept the model 60 min, give a plan with a pre-warm at
    once; on random gaps, from a keep-alive that costs nearly the same, a tenth to a
    quarter of the way,
    and from one that costs far more, all the way."""
    pattern = plan(History(bursts(3300.0, 30, 10.0), (), 0.0), 0.0, BOUNDS, COSTS,
                   previous=3600.0)
    assert pattern.stop_after < 60.0 and pattern.prewarm_at is not None, pattern.reason
    rng = random.Random(1)
    gaps = [rng.expovariate(1 / 900.0) for _ in range(200)]
    fresh = plan(History(gaps, (), 0.0), 0.0, BOUNDS, COSTS).stop_after
    near = plan(History(gaps, (), 0.0), 0.0, BOUNDS, COSTS, previous=fresh + 20.0)
    assert fresh + 15.0 <= near.stop_after <= fresh + 18.0, near.reason
    far = plan(History(gaps, (), 0.0), 0.0, BOUNDS, COSTS, previous=1200.0)
    assert far.stop_after == pytest.approx(fresh), far.reason


def test_gaps_the_time_of_day_foresees_do_not_shorten_the_keep_alive() -> None:
    """Office hours: gaps of a few minutes by day, nights of 15 h. Once demand after the
    nights is seen to come at 9:00 each day, the nights are the pre-warm's and the end of
    day's, and the keep-alive is priced on the day's gaps alone: longer than without."""
    rng = random.Random(2)
    gaps: list[float] = []
    downs: list[tuple[float, float]] = []
    for day in range(4):
        gaps += [rng.expovariate(1 / 300.0) for _ in range(100)]
        morning = MONDAY + (day + 1) * DAY + 9 * 3600
        gaps.append(15 * 3600.0)
        downs.append((morning, 15 * 3600.0))
    now = MONDAY + 4 * DAY + 12 * 3600
    by_day = plan(History(gaps, downs, MONDAY), now, BOUNDS, COSTS)
    blind = plan(History(gaps, (), MONDAY), now, BOUNDS, COSTS)
    assert by_day.stop_after > blind.stop_after, (by_day.reason, blind.reason)


def test_demand_at_the_same_time_each_day_is_foreseen() -> None:
    # Three weekdays with the first request at 9:00-9:02 after the night.
    downs = [MONDAY + d * DAY + 9 * 3600 + 60 * d for d in range(3)]
    due = next_demand(downs, MONDAY, MONDAY + 2 * DAY + 18 * 3600)
    assert due is not None
    at, period = due
    assert period == "day"
    assert MONDAY + 3 * DAY + 8.8 * 3600 <= at <= MONDAY + 3 * DAY + 9 * 3600


def test_random_demand_is_not_taken_for_a_pattern() -> None:
    downs = [MONDAY + i * 10_007.0 for i in range(100)]  # every 2.8 h: no phase of the day
    assert next_demand(downs, MONDAY, downs[-1]) is None


def test_the_history_survives_a_restart_and_stays_bounded() -> None:
    history = IdleHistory(since=MONDAY)
    for i in range(2000):
        history.gap(float(i), MONDAY + i, down=i % 2 == 0)
    history.measured("default", "start", 40.0)
    history.measured("default", "start", 20.0)
    again = IdleHistory.from_json(history.to_json(), since=0.0)
    assert len(again.gaps) == 512 and len(again.downs) == 256
    assert again.view() == history.view()
    assert again.duration("default", "start") == 30.0
    assert IdleHistory.from_json({"gaps": "nonsense"}, since=5.0).since == 5.0


def office_nights(days: int, last: float = 17.9 * 3600) -> list[tuple[float, float]]:
    """The first request of each day at 9:00 after a night that began at `last`."""
    return [(MONDAY + d * DAY + 9 * 3600, 9 * 3600 + DAY - last) for d in range(1, days + 1)]


@pytest.mark.parametrize(("days", "now", "until", "ends"), [
    # Two days of nights that began at 17:54: at 17:55 with a keep-alive until 18:20,
    # it goes 5 min after the latest night began (17:59).
    (2, 17.92, 18.33, 17.9 + 1 / 12),
    # At noon (requests came until 17:54 on the days before): no.
    (2, 12.0, 12.5, None),
    # One day seen is not a pattern.
    (1, 17.92, 18.33, None),
    # It would not end before the keep-alive does.
    (2, 17.92, 17.95, None),
])
def test_the_end_of_the_days_demand_is_foreseen(days: int, now: float, until: float,
                                                ends: float | None) -> None:
    downs = office_nights(days)
    today = MONDAY + days * DAY
    got = quiet_from(downs, MONDAY, today + now * 3600, today + until * 3600)
    if ends is None:
        assert got is None
    else:
        assert got == pytest.approx(today + ends * 3600)


def test_a_day_that_had_a_late_request_keeps_the_model() -> None:
    downs = office_nights(3)
    downs[1] = (downs[1][0], 9 * 3600 + DAY - 18.5 * 3600)  # the second night began 18:30
    today = MONDAY + 3 * DAY
    assert quiet_from(downs, MONDAY, today + 17.92 * 3600, today + 18.33 * 3600) is None


def test_a_save_keeps_the_histories_of_models_not_seen_since_the_start() -> None:
    saved = IdleHistory(since=MONDAY)
    saved.gap(42.0, MONDAY + 42, down=True)
    keeper = Keeper(lambda: MONDAY + DAY, {"quiet": saved})
    assert keeper.histories() == {"quiet": saved.to_json()}
