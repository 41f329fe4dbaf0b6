"""Keep-warm windows: a model is started and pinned from a `start` cron time until
an `end` cron time, then the normal idle rules apply again.

APScheduler (3.x, AsyncIOScheduler) fires the edges. Whether a window is open
*now* (at supervisor start, or after a reload) is the pure `window_open`: the
next `end` comes before the next `start`. The wall clock is a `WallClock` that tests
can move; the cron triggers are read on that clock, so a test sets the clock to
one second before 08:45 and sees the start fire a second later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger

from supervisor.config import ScheduleConfig
from supervisor.lifecycle.registry import Model
from supervisor.refusal import Conflict

log = logging.getLogger(__name__)


class WallClock:
    """Wall-clock time: the real one plus an offset that tests set."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self, tz: ZoneInfo) -> datetime:
        return datetime.now(tz) + self.offset

    def set(self, when: datetime) -> None:
        """From now on the clock reads `when` (an aware datetime), then runs on."""
        self.offset = when - datetime.now(when.tzinfo)


class ClockTrigger(BaseTrigger):  # type: ignore[misc]  # apscheduler 3 is untyped
    """A cron trigger whose times are read on `clock`; APScheduler itself keeps real time."""

    def __init__(self, cron: CronTrigger, clock: WallClock) -> None:
        self.cron = cron
        self.clock = clock

    def get_next_fire_time(self, previous_fire_time: datetime | None,
                           now: datetime) -> datetime | None:
        offset = self.clock.offset
        previous = None if previous_fire_time is None else previous_fire_time + offset
        fire: datetime | None = self.cron.get_next_fire_time(previous, now + offset)
        return None if fire is None else fire - offset


def cron(expression: str, tz: ZoneInfo) -> CronTrigger:
    return CronTrigger.from_crontab(expression, timezone=tz)


def window_open(start: CronTrigger, end: CronTrigger, now: datetime) -> bool:
    """True inside a window [start, end): the next end comes before the next start."""
    after = now + timedelta(microseconds=1)  # cron times are whole seconds: strictly after now
    next_start = start.get_next_fire_time(None, after)
    next_end = end.get_next_fire_time(None, after)
    if next_end is None:
        return False
    return next_start is None or next_end < next_start


class KeepWarm:
    """The schedules of one supervisor; `find` maps a model name to its handle."""

    def __init__(self, find: Callable[[str], Model | None], timezone: str,
                 clock: WallClock | None = None) -> None:
        self.find = find
        self.tz = ZoneInfo(timezone)
        self.clock = clock or WallClock()
        self.schedules: dict[str, ScheduleConfig] = {}
        self.origin: dict[str, str] = {}  # "config" or "api"
        self._scheduler = AsyncIOScheduler(timezone=self.tz)

    def start(self) -> None:
        self._scheduler.start()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    def set(self, name: str, schedule: ScheduleConfig, origin: str) -> None:
        """Add or replace a schedule, and apply its window as it stands now."""
        old = self.schedules.get(name)
        if old is not None and old.model != schedule.model:
            self._pin(old, name, False)
        self.schedules[name], self.origin[name] = schedule, origin
        for edge, expression in (("start", schedule.start), ("end", schedule.end)):
            self._scheduler.add_job(
                self._edge, ClockTrigger(cron(expression, self.tz), self.clock),
                args=(name, edge == "start"), id=f"{name}:{edge}", replace_existing=True,
                coalesce=True, misfire_grace_time=300)
        self._apply(name, self.is_open(name))

    def remove(self, name: str) -> None:
        schedule = self.schedules.pop(name)
        self.origin.pop(name)
        for edge in ("start", "end"):
            self._scheduler.remove_job(f"{name}:{edge}")
        self._pin(schedule, name, False)

    def is_open(self, name: str) -> bool:
        s = self.schedules[name]
        return window_open(cron(s.start, self.tz), cron(s.end, self.tz), self.clock.now(self.tz))

    def next_edges(self, name: str) -> dict[str, Any]:
        s, now = self.schedules[name], self.clock.now(self.tz)
        starts = cron(s.start, self.tz).get_next_fire_time(None, now)
        ends = cron(s.end, self.tz).get_next_fire_time(None, now)
        return {"open": self.is_open(name),
                "next_start": starts.isoformat() if starts else None,
                "next_end": ends.isoformat() if ends else None}

    def clock_changed(self) -> None:
        """After WallClock.set: recompute every job's next run and every window."""
        for name, schedule in list(self.schedules.items()):
            self.set(name, schedule, self.origin[name])

    async def _edge(self, name: str, opening: bool) -> None:
        if name in self.schedules:
            log.info("schedule=%s window %s", name, "opens" if opening else "closes")
            self._apply(name, opening)

    def _apply(self, name: str, opening: bool) -> None:
        schedule = self.schedules[name]
        handle = self._pin(schedule, name, opening)
        if handle is None or not opening:
            return
        try:
            handle.start(schedule.profile)
        except Conflict as exc:
            log.warning("schedule=%s cannot start model=%s: %s", name, schedule.model, exc)

    def _pin(self, schedule: ScheduleConfig, name: str, pinned: bool) -> Model | None:
        handle = self.find(schedule.model)
        if handle is None:
            log.warning("schedule=%s names model=%s, which no longer exists", name,
                        schedule.model)
            return None
        handle.set_pinned(pinned, schedule=name)
        return handle
