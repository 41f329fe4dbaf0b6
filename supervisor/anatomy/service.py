"""The anatomy of every start and wake, kept per unit (a model, or one of its replicas).

A listener on state changes begins a record when a unit starts or wakes and ends it when
that fails; the effects tell it when the container runs, when the server first answers
healthy and when the warm-up is done; a log follower feeds it the server's own lines,
read through the unit's server kind's phase table. A finished start is observed in
`supervisor_start_phase_seconds{model,profile,phase}` (a phase not seen: not observed).
A failed one is kept (ok false, its phases until it failed) but not observed: a start cut
by startup_timeout or a crash would pull a phase's distribution towards how long it took
to fail (`supervisor_cold_start_seconds{outcome="failed"}` counts failures). A wake's
record names the level it woke from; `wake_seconds` is the last of each level.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from supervisor.anatomy import phases
from supervisor.anatomy.follow import LogFollower, LogSource
from supervisor.anatomy.record import START, WAKE, StartRecord, StartRecords
from supervisor.observe.histogram import LoopHistogram
from supervisor.rules.table import State

if TYPE_CHECKING:
    from supervisor.lifecycle.handle import ModelHandle

log = logging.getLogger("supervisor.anatomy")
# From a stand-in's tenth of a second to a large model's quarter hour of compiling.
PHASE_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0)
_BEGINS = {State.STARTING: START, State.WAKING: WAKE}


def server_kind(unit: ModelHandle) -> str:
    return unit.config.server


class Anatomy:
    """The records of every unit's starts and wakes (see the module's docstring)."""

    def __init__(self, runtime: object, registry: CollectorRegistry,
                 clock: Callable[[], float] = time.time) -> None:
        self._source: LogSource | None = runtime if hasattr(runtime, "log_stream") else None
        self._clock = clock
        self.records = StartRecords()
        self._units: dict[str, ModelHandle] = {}
        self._followers: dict[str, LogFollower] = {}
        self._seconds = LoopHistogram(
            "supervisor_start_phase_seconds",
            "Each phase of a start or wake, from the server's log and the supervisor's own "
            "view: container, weights, compile, kv_cache, graphs, api, healthy, warmup (a "
            "wake: wake, warmup).", ["model", "profile", "phase"], PHASE_BUCKETS, registry)

    # -- a listener (lifecycle/listeners.py) ----------------------------------

    def on_state(self, unit: ModelHandle, old: State, new: State, event: str) -> None:
        kind = _BEGINS.get(new)
        if kind is not None and old is not new:
            self._begin(unit, kind)
        elif old in _BEGINS and new is not State.READY:
            self._finish(unit.name, ok=False)

    # -- told by the effects ----------------------------------------------------

    def up(self, name: str) -> None:
        """The container runs: a server whose log says nothing the supervisor reads is
        waited on for its first healthy answer from now on."""
        record, unit = self.records.running.get(name), self._units.get(name)
        if record is not None and unit is not None and not phases.has_table(server_kind(unit)):
            record.enter(phases.HEALTHY, self._clock())

    def admitted(self, name: str) -> None:
        """The GPU budget admitted its start or wake: any time before was a wait for it."""
        record = self.records.running.get(name)
        if record is not None:
            record.admitted(self._clock())

    def healthy(self, name: str) -> None:
        """The first healthy answer (a wake: the server woke): the warm-up runs next, or
        the start is done."""
        record, unit = self.records.running.get(name), self._units.get(name)
        if record is None or unit is None:
            return
        if unit.config.warmup is not None:
            record.enter(phases.WARMUP, self._clock())
        else:
            self._finish(name, ok=True)

    def warm(self, name: str) -> None:
        self._finish(name, ok=True)

    # -- read -------------------------------------------------------------------

    def phase(self, name: str) -> str | None:
        """The phase a start or wake of `name` is in now; None when none runs."""
        record = self.records.running.get(name)
        return None if record is None else record.phase

    def wake_seconds(self, model: str) -> dict[str, float]:
        """The last successful wake's seconds from each sleep level (`level1`, `level2`)."""
        found: dict[str, float] = {}
        for record in sorted(self.records.of(model), key=lambda r: r.began):
            if record.kind == WAKE and record.ok and record.level is not None:
                found[f"level{record.level}"] = round(record.total(0.0), 3)
        return found

    def starts(self, model: str) -> list[dict[str, Any]]:
        """The last records of a model and of its replicas (`model#n`), oldest first."""
        now = self._clock()
        names = {model, *(n for n in self._units if n.startswith(model + "#"))}
        found = [r for n in names for r in self.records.of(n)]
        return [{"unit": r.model, **r.to_json(now)} for r in sorted(found, key=lambda r: r.began)]

    # -- inside -----------------------------------------------------------------

    def _begin(self, unit: ModelHandle, kind: str) -> None:
        self._finish(unit.name, ok=False)  # one that never ended (it cannot: be sure)
        self._units[unit.name] = unit
        now = self._clock()
        record = self.records.begin(StartRecord(
            unit.name, unit.profile.name, kind, now,
            level=(unit.sleep_level or None) if kind == WAKE else None))
        server = server_kind(unit)
        if kind == START and self._source is not None and phases.has_table(server):
            def on_line(at: float, text: str) -> None:
                seen = phases.read(server, text)
                if seen is not None:
                    record.saw(seen, at)
            self._followers[unit.name] = LogFollower(self._source, unit.profile.service, now,
                                                     on_line)

    def _finish(self, name: str, *, ok: bool) -> None:
        follower = self._followers.pop(name, None)
        if follower is not None:
            follower.stop()
        record = self.records.running.get(name)
        if record is None:
            return
        record.end(self._clock(), ok=ok)
        self.records.finish(record)
        spans = record.seconds()
        log.info("model=%s profile=%s %s %s in %.2fs: %s%s", name, record.profile, record.kind,
                 "done" if ok else "failed", record.total(0.0),
                 ", ".join(f"{p} {s:.2f}s" for p, s in spans.items()),
                 f" (compile cache {record.cache})" if record.cache else "")
        if ok:
            for phase, seconds in spans.items():
                self._seconds.observe((name, record.profile, phase), seconds)


ANATOMY: web.AppKey[Anatomy] = web.AppKey("anatomy", Anatomy)
