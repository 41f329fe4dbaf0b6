"""Demand by time of day and of week, from the arrivals that found a model given back
(`downs`: wall-clock time and the idle gap before it): when demand begins (a pre-warm is
due) and when it ends (the model can go at once, not after its keep-alive). These two
are tied to the clock by nature; margins are fractions of a day.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Sequence

DAY = 86400.0
WEEK = 7 * DAY
PHASE_TOLERANCE = 1 / 288  # of a day: arrivals this close are at the same time (5 min)
SIGNIFICANCE = 1e-3  # a phase is demand when chance explains its periods this rarely
QUIET_DAYS = (2, 7)  # days looked back on for the end of demand: at least, at most
WEEK_LATE = DAY / 24  # how much later than foreseen demand may have come a week before


def _tail(n: int, k: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): how often chance alone puts demand into k of n
    periods at one phase."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def _seen_a_week_before(downs: Sequence[float], since: float, due: float, tol: float,
                        period: float) -> bool:
    """Daily demand on a day of the week that had none at that time a week before (a
    weekend) is not foreseen, once a week has been seen."""
    if period >= WEEK or due - WEEK < since:
        return True
    i = bisect_left(downs, due - WEEK - tol)
    return i < len(downs) and downs[i] <= due - WEEK + WEEK_LATE


def next_demand(downs: Sequence[float], since: float, after: float) -> tuple[float, str] | None:
    """The first wall-clock time after `after` at which demand that found the model down
    (`downs`, sorted) has come in more of the periods seen than chance explains (week, else
    day; two periods seen at least), less the tolerance; with the period's name. None: no
    such phase."""
    for period, name in ((WEEK, "week"), (DAY, "day")):
        covered = int((after - since) // period)
        if covered < 2 or not downs:
            continue
        tol = DAY * PHASE_TOLERANCE
        recent = [t for t in downs if t >= after - covered * period]
        phases = sorted((t % period, int(t // period)) for t in recent)
        keys = [p for p, _ in phases]
        # How likely one period has demand in a window of 2 x tol by chance.
        chance = min(1.0, len(recent) / covered * 2 * tol / period)
        needed = next((k for k in range(2, covered + 1)
                       if _tail(covered, k, chance) < SIGNIFICANCE), None)
        if needed is None:
            continue
        best: float | None = None
        for phase, _ in phases:
            i, j = bisect_left(keys, phase - tol), bisect_right(keys, phase + tol)
            if len({k for _, k in phases[i:j]}) < needed:
                continue
            due = after - after % period + phase - tol
            while due <= after or not _seen_a_week_before(downs, since, due, tol, period):
                due += period
            best = due if best is None else min(best, due)
        if best is not None:
            return best, name
    return None



def quiet_from(downs: Sequence[tuple[float, float]], since: float, now: float,
               until: float) -> float | None:
    """The earliest time from `now` after which, on each of the last days (two at least,
    a week at most), no request came until this time of day's `until`: demand has ended
    for today (the evening after office hours). From the quiet periods before each
    arrival that found the model down; None where a day had a request in that window
    (or a look-back day is not covered), or where it would not end before `until`."""
    days = min(QUIET_DAYS[1], int((now - since) // DAY))
    if days < QUIET_DAYS[0] or until <= now:
        return None
    ends = [t for t, _ in downs]
    latest = now
    for j in range(1, days + 1):
        at = until - j * DAY
        i = bisect_left(ends, at)
        if i == len(ends) or ends[i] - downs[i][1] > at:
            return None
        latest = max(latest, ends[i] - downs[i][1] + j * DAY)
    latest += DAY * PHASE_TOLERANCE
    return latest if latest < until else None
