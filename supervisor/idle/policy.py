"""The adaptive idle policy as a pure function: a model's history and the time in, a plan
out (when to sleep, when to stop, when to start again ahead of demand, and why).

After "Serverless in the Wild" (Shahrad et al., USENIX ATC 2020): the distribution of a
model's idle gaps decides a keep-alive window and a pre-warm window. Here the windows are
chosen by pricing every candidate on the gaps already seen, as GPU-seconds held plus the
seconds requests would wait on a start (times `prefer`'s weight): a fixed timer is one of
the candidates, so the choice is never worse on the past than the operator's bound. Where
the gaps say nothing (demand that repeats by time of day or week, not by gap), the arrivals
that found the model down are folded by day and by week (timeofday.py): a phase seen in
most periods is demand to pre-warm for, and the long gaps before it are left out of the
keep-alive's price (the pre-warm and the end of the day's demand deal with them). Each gap
seen stands for a spread around it, and the keep-alive moves towards each new cheapest one
by what the move saves: on the flat cost of random gaps a choice that follows every new gap
wanders, and pays more than any one choice. Below the rent (what a start costs) it comes
only as far as the gaps seen above it allow: a heavy tail shows itself late. Nothing
here knows seconds from hours: margins are fractions of the gaps and of the period, so a
pattern of 30 s is learned as one of 30 min.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

from supervisor.idle.timeofday import DAY, PHASE_TOLERANCE, next_demand

MIN_GAPS = 6  # fewer idle gaps seen: the operator's fixed timers (not representative yet)
MARGIN = 0.1  # of a gap: a pre-warm is ready this much early, a keep-alive this much late
# One user-second waited is worth this many GPU-seconds held.
WAIT_WEIGHT = {"latency": 30.0, "balanced": 6.0, "savings": 1.0}
LONG_GAP = 4.0  # x the keep-alive: demand after such gaps is looked for by time of day
DAMPING = 0.1  # how far a new plan moves the keep-alive towards the cheapest, at least
MAX_FOLLOWERS = 100  # requests counted as waiting on one start, at most
DECISIVE = 0.25  # a move that saves this share of the cost is taken in full
TAIL_PRIOR = 4.0  # gaps above a keep-alive shorter than the rent that count as much as it
QUANTILES = tuple(i / 40 for i in range(41))  # keep-alive candidates among the gaps
KERNEL = (-1.28, -0.52, 0.0, 0.52, 1.28)  # normal quantiles: five equally likely points
BANDWIDTH = 0.5  # the widest kernel, in log-seconds
NEIGHBOURS = 3  # a gap's kernel spans this many gaps on either side of it
FLOOR = 0.25  # the narrowest, for one gap seen (Silverman: x n^-1/5)
GRID = tuple(2 ** (-i / 4) for i in range(41))  # keep-alive candidates, of idle_timeout
PREWARM_WINDOWS = ((0.0, 1.0), (0.05, 0.99), (0.1, 0.9), (0.25, 0.75))  # of the long gaps


@dataclass(frozen=True, slots=True)
class Bounds:
    """What the operator allows: `idle_timeout` (the upper bound of a stop), `min_idle` (the
    lower bound of both), the fixed `sleep.after` (None: no sleep tier)."""

    idle_timeout: float
    min_idle: float = 0.0
    sleep_after: float | None = None
    prefer: str = "balanced"


@dataclass(frozen=True, slots=True)
class Costs:
    """Measured seconds of a start, a stop and a wake from sleep (None: no sleep mode)."""

    start: float
    stop: float = 0.0
    wake: float | None = None


@dataclass(frozen=True, slots=True)
class History:
    """`gaps`: idle gaps in seconds (oldest first); `downs`: (wall-clock time, gap) of the
    arrivals that found the model given back (the demand to pre-warm for), by time;
    `since`: the wall-clock time the history began."""

    gaps: Sequence[float] = ()
    downs: Sequence[tuple[float, float]] = ()
    since: float = 0.0


@dataclass(frozen=True, slots=True)
class Plan:
    """Seconds of idleness before a sleep and before a stop; the wall-clock time to start
    (or wake) it again, None for none; how long a pre-warmed model waits for its first
    request before it is given back again; and the reason, for the log and the admin API."""

    sleep_after: float | None
    stop_after: float
    prewarm_at: float | None
    prewarm_window: float
    reason: str


@dataclass(frozen=True, slots=True)
class _Choice:
    keep: float  # seconds kept after the last request
    prewarm: float | None  # seconds after the last request at which a start begins
    window: float  # seconds a pre-warmed model waits, once ready
    cost: float
    colds: float


class _Gaps:
    """Sorted gaps with prefix sums: the cost of a choice in O(log n). Each gap seen stands
    for a spread of gaps around it (a log-normal kernel as wide as the gaps near it are
    apart): a sample's cost curve is jagged where gaps are few (the tail), so that its
    cheapest point would follow each new long gap; where gaps cluster (a job that comes
    every hour) they stay as sharp as seen."""

    def __init__(self, gaps: Sequence[float]) -> None:
        logs = sorted(math.log(max(g, 1e-9)) for g in gaps)
        n, inf = len(logs), math.inf
        k = min(NEIGHBOURS, 1 + n // 16)  # few gaps: a pair alike is already a cluster
        floor = FLOOR * n ** -0.2
        # Apart from the k-th gap on the nearer side: at a cluster's edge, its own side.
        near = [min(x - logs[i - k] if i >= k else inf, logs[i + k] - x if i + k < n else inf)
                for i, x in enumerate(logs)]
        widths = [min(BANDWIDTH, max(floor, d)) for d in near]
        self.s = sorted(math.exp(x + w * z) for x, w in zip(logs, widths, strict=True)
                        for z in KERNEL)
        self.sums = [0.0, *accumulate(self.s)]

    def count(self, lo: float, hi: float) -> tuple[int, float]:
        """How many gaps lie in (lo, hi], and their sum."""
        i, j = bisect_right(self.s, lo), bisect_right(self.s, hi)
        return j - i, self.sums[j] - self.sums[i]

    def quantile(self, q: float, above: float = -1.0) -> float:
        start = bisect_right(self.s, above)
        rest = self.s[start:]
        return rest[min(len(rest) - 1, int(q * (len(rest) - 1) + 0.5))]


def _price(g: _Gaps, keep: float, prewarm: float | None, window: float, up: float,
           down: float, weight: float) -> _Choice:
    """GPU-seconds held plus `weight` x seconds waited, summed over the gaps, had the model
    been kept `keep` s, then given back (`down` s to stop), and started again `prewarm` s
    after the last request (`up` s to come up), waiting `window` s once ready."""
    n_warm, s_warm = g.count(-1.0, keep)
    gpu, wait, colds = s_warm, 0.0, 0.0
    n_after = len(g.s) - n_warm
    gpu += n_after * (keep + down)
    if prewarm is None:
        gpu += n_after * up
        wait += n_after * up
        colds += n_after
        return _Choice(keep, None, 0.0, gpu + weight * wait, colds)
    ready, until = prewarm + up, prewarm + up + window
    n_cold, _ = g.count(keep, prewarm)  # came before the pre-warm began
    n_mid, s_mid = g.count(prewarm, ready)  # came while it started: waited part of it
    n_hit, s_hit = g.count(ready, until)
    n_late = n_after - n_cold - n_mid - n_hit  # the pre-warm was given back before it came
    gpu += (n_cold + n_mid) * up + s_hit - n_hit * prewarm + n_late * (up + window + down + up)
    wait += n_cold * up + (n_mid * ready - s_mid) + n_late * up
    colds += n_cold + n_mid + n_late
    return _Choice(keep, prewarm, window, gpu + weight * wait, colds)


def _best(gaps: Sequence[float], up: float, down: float, lo: float, hi: float,
          weight: float, previous: float | None = None, rent: float | None = None) -> _Choice:
    """The cheapest keep-alive in [lo, hi] on these gaps, with or without a pre-warm; with
    a `previous` keep-alive, one moved from it only part of the way towards the cheapest:
    on a flat cost the cheapest follows each new gap, and a policy that jumps between
    keep-alives pays more than any one of them would. With a `rent`, a keep-alive shorter
    than it stands on the gaps seen above it: with few of them (a heavy tail not yet
    seen), it comes only part of the way from the rent."""
    g = _Gaps(gaps)
    fresh = _cheapest(g, up, down, lo, hi, weight)
    if rent is not None and fresh.prewarm is None and fresh.keep < rent:
        above = sum(1 for x in gaps if x > fresh.keep)
        keep = fresh.keep + (rent - fresh.keep) * TAIL_PRIOR / (TAIL_PRIOR + above)
        fresh = _price(g, keep, None, 0.0, up, down, weight)
    if previous is None or not lo <= previous <= hi:
        return fresh
    # The step grows with what the move saves: a cost that is flat between the two (random
    # gaps) moves the keep-alive a little; one the gaps clearly favour (a pattern that
    # repeats) is taken at once.
    stay = _with_prewarm(g, previous, fresh, up, down, weight)
    gain = (stay.cost - fresh.cost) / stay.cost if stay.cost > 0 else 0.0
    step = min(1.0, max(DAMPING, gain / DECISIVE))
    return _with_prewarm(g, previous + step * (fresh.keep - previous), fresh, up, down, weight)


def _with_prewarm(g: _Gaps, keep: float, fresh: _Choice, up: float, down: float,
                  weight: float) -> _Choice:
    """`keep` priced with the fresh choice's pre-warm where there is room for it."""
    if fresh.prewarm is not None and fresh.prewarm - keep - down >= up:
        return _price(g, keep, fresh.prewarm, fresh.window, up, down, weight)
    return _price(g, keep, None, 0.0, up, down, weight)


def _cheapest(g: _Gaps, up: float, down: float, lo: float, hi: float,
              weight: float) -> _Choice:
    keeps = ({hi, lo} | {min(hi, max(lo, g.quantile(q) * (1 + MARGIN))) for q in QUANTILES}
             | {max(lo, hi * f) for f in GRID})
    best: _Choice | None = None  # ties go to the shorter keep-alive: no gap seen says more
    for keep in sorted(keeps):
        candidates = [_price(g, keep, None, 0.0, up, down, weight)]
        if g.s[-1] > keep:
            for q_lo, q_hi in PREWARM_WINDOWS:
                head = g.quantile(q_lo, keep) * (1 - MARGIN) - up
                tail = g.quantile(q_hi, keep) * (1 + MARGIN)
                window = min(hi, max(lo, tail - head - up))
                # Worth it where the demand is predictable: given back for longer than a
                # start takes, and longer than the window it is then kept waiting.
                if head - keep - down >= max(up, window):
                    candidates.append(_price(g, keep, head, window, up, down, weight))
        for choice in candidates:
            if best is None or choice.cost < best.cost - 1e-9:
                best = choice
    assert best is not None
    return best


def requests_per_start(gaps: Sequence[float], up: float) -> float:
    """How many requests a start keeps waiting: the one that found the model down (the
    first after a gap longer than a start), plus those that followed it within a start's
    seconds, on average over the history (a burst of three 1 s apart: three). A start
    the history has not yet seen the end of does not count."""
    followers: list[int] = []
    for i, gap in enumerate(gaps):
        if gap < up:
            continue
        waited, j = 0.0, i + 1
        while j < len(gaps) and waited + gaps[j] < up and j - i <= MAX_FOLLOWERS:
            waited += gaps[j]
            j += 1
        if j < len(gaps) or j - i > MAX_FOLLOWERS:
            followers.append(j - i - 1)
    return 1.0 + sum(followers) / len(followers) if followers else 1.0


def plan(history: History, now: float, bounds: Bounds, costs: Costs, *,
         by_gap: bool = True, previous: float | None = None) -> Plan:
    """The plan for an idle period that begins at `now` (wall-clock seconds); `by_gap`
    False: no pre-warm from the gaps (one of them came to nothing in this idle period),
    only for demand seen at this time of day or week; `previous`: the keep-alive of the
    last plan."""
    lo, hi = min(bounds.min_idle, bounds.idle_timeout), bounds.idle_timeout
    sleep_fixed = None if bounds.sleep_after is None else min(bounds.sleep_after, hi)
    gaps = history.gaps
    weight = WAIT_WEIGHT.get(bounds.prefer, WAIT_WEIGHT["balanced"])
    if len(gaps) < MIN_GAPS:
        rent = _rent(costs, weight, lo, hi)
        return Plan(sleep_fixed, rent, None, 0.0,
                    f"keep {_secs(rent)}, what a start costs, until {MIN_GAPS} idle gaps "
                    f"are seen ({len(gaps)} so far)")
    # Where demand after long gaps repeats by time of day, those gaps are the time-of-day
    # plan's (a stop when demand ends, a pre-warm before it comes back), not the
    # keep-alive's: it is priced on the gaps within the periods of demand.
    overnight = LONG_GAP * hi
    if next_demand(sorted(t for t, gap in history.downs if gap >= overnight), history.since,
                   now) is not None:
        within = [g for g in gaps if g < overnight]
        gaps = within if len(within) >= MIN_GAPS else gaps
    weight *= requests_per_start(gaps, costs.start)
    stop = _best(gaps, costs.start, costs.stop, lo, hi, weight, previous,
                 rent=_rent(costs, weight, lo, hi))
    sleep_after = None
    if sleep_fixed is not None and costs.wake is not None and stop.keep > lo:
        nap = _best(gaps, costs.wake, 0.0, lo, stop.keep, weight)
        sleep_after = nap.keep if nap.keep < stop.keep else None
    why = (f"{len(gaps)} idle gaps (median {_secs(sorted(gaps)[len(gaps) // 2])}): "
           f"keep {_secs(stop.keep)}")
    if sleep_after is not None:
        why += f", asleep after {_secs(sleep_after)}"
    prewarm_at, window = None, 0.0
    if stop.prewarm is not None and by_gap:
        prewarm_at, window = now + stop.prewarm, stop.window
        why += (f", start again {_secs(stop.prewarm)} after the last request (gaps repeat), "
                f"wait {_secs(window)} for it")
    # Demand after gaps far longer than the keep-alive: what the gaps cannot foresee.
    long = sorted(t for t, gap in history.downs if gap >= LONG_GAP * stop.keep)
    periodic = next_demand(long, history.since, now + stop.keep + costs.stop)
    if periodic is not None:
        due, period = periodic
        at = due - costs.start
        if at >= now + stop.keep + costs.stop and (prewarm_at is None or at < prewarm_at):
            tol = DAY * PHASE_TOLERANCE
            prewarm_at, window = at, max(window, min(hi, 2 * tol + stop.keep))
            why += f", start again for demand seen at this time of {period}"
    return Plan(sleep_after, stop.keep, prewarm_at, window, why)


def _rent(costs: Costs, weight: float, lo: float, hi: float) -> float:
    """Keep it as long as a start would cost (ski rental: never more than twice the best
    choice in hindsight, whatever comes): where nothing is learnt yet, and what a short
    keep-alive comes from."""
    return min(hi, max(lo, costs.start + costs.stop + weight * costs.start))


def _secs(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    if seconds >= 60:
        return f"{seconds / 60:.1f}m"
    return f"{seconds:.1f}s"
