"""Traces with a known shape, for the proofs (tests/unit/test_simulate_traces.py) and the
README's table (bench/idle_tradeoff.py). Seeded: the same arguments give the same trace."""

from __future__ import annotations

import random

from supervisor.simulate.trace import Request

HOUR, DAY = 3600.0, 86400.0


def hourly_jobs(model: str, days: float, *, seed: int = 1, every: float = HOUR,
                jitter: float = 120.0, burst: float = 300.0, pace: float = 10.0,
                duration: float = 2.0) -> list[Request]:
    """A job every `every` s (± `jitter`) sending a request every `pace` s for `burst` s."""
    rng = random.Random(seed)
    out: list[Request] = []
    start = every / 2
    while start < days * DAY:
        begin = start + rng.uniform(-jitter, jitter)
        t = begin
        while t < begin + burst:
            out.append(Request(t, model, duration))
            t += rng.uniform(0.5, 1.5) * pace
        start += every
    return out


def poisson(model: str, days: float, mean_gap: float, *, seed: int = 2,
            duration: float = 5.0) -> list[Request]:
    rng = random.Random(seed)
    out, t = [], rng.expovariate(1 / mean_gap)
    while t < days * DAY:
        out.append(Request(t, model, duration))
        t += rng.expovariate(1 / mean_gap)
    return out


def office_hours(model: str, weeks: int, *, seed: int = 3, mean_gap: float = 300.0,
                 opens: float = 9 * HOUR, closes: float = 18 * HOUR,
                 duration: float = 5.0) -> list[Request]:
    """Weekdays from `opens` to `closes` (seconds after midnight), Poisson arrivals; the
    trace starts on a Monday at 00:00."""
    rng = random.Random(seed)
    out: list[Request] = []
    for day in range(7 * weeks):
        if day % 7 >= 5:
            continue
        t = day * DAY + opens + rng.expovariate(1 / mean_gap)
        while t < day * DAY + closes:
            out.append(Request(t, model, duration))
            t += rng.expovariate(1 / mean_gap)
    return out


def pareto(model: str, count: int, *, seed: int = 4, scale: float = 30.0,
           shape: float = 1.2, duration: float = 5.0) -> list[Request]:
    """Heavy-tailed gaps: Pareto with minimum `scale` s and tail index `shape`."""
    rng = random.Random(seed)
    out, t = [], 0.0
    for _ in range(count):
        t += scale * rng.paretovariate(shape)
        out.append(Request(t, model, duration))
    return out
