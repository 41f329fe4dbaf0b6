"""Fakes for driving a ModelHandle without Docker, HTTP or real time.

- `FakeClock`: the handle's Clock; time moves only when a test calls `advance`, which
  runs every timer that falls due, in order.
- `FakeRuntime`: the Runtime Protocol in memory: it records what it was asked, keeps a
  state per service, and answers the health probe from what the test said
  (`ready`, `exit`). Starts and stops can be made to fail or to block.
- `make_handle`: a handle on those fakes, polling readiness on every loop turn.
- `Client`: a request that takes a lease and keeps it until told to finish.
- `until`: yield to the loop until a condition holds (a bounded number of turns).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp

from supervisor.clients.fairness import NOBODY, Asker
from supervisor.config import ModelConfig
from supervisor.lifecycle.effects import Effects
from supervisor.lifecycle.handle import ModelHandle
from supervisor.lifecycle.lease import Lease
from supervisor.lifecycle.listeners import Listeners
from supervisor.observe.metrics import Metrics
from supervisor.rules.profiles import profiles_of
from supervisor.runtime.base import RuntimeFailure, ServiceState, ServiceStatus

# -- time -------------------------------------------------------------------


class FakeTimer:
    __slots__ = ("args", "callback", "cancelled", "fired", "when")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False
        self.fired = False

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def pending(self) -> bool:
        return not (self.cancelled or self.fired)


class FakeClock:
    """Monotonic seconds that move only on `advance`; timers run synchronously there."""

    def __init__(self, start: float = 1000.0) -> None:
        # Not 0: code that mixes up a timestamp and a duration shows up.
        self._now = start
        self._queue: list[tuple[float, int, FakeTimer]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> FakeTimer:
        timer = FakeTimer(self._now + max(0.0, delay), callback, args)
        heapq.heappush(self._queue, (timer.when, next(self._seq), timer))
        return timer

    def advance(self, seconds: float = 0.0) -> None:
        """Move time on by `seconds`, running every timer due by then (those that the
        callbacks schedule included) in due order, with `now()` at each one's time."""
        if seconds < 0:
            raise ValueError("time does not go back")
        target = self._now + seconds
        while self._queue and self._queue[0][0] <= target:
            when, _, timer = heapq.heappop(self._queue)
            if timer.cancelled:
                continue
            self._now = max(self._now, when)
            timer.fired = True
            timer.callback(*timer.args)
        self._now = target

    @property
    def timers(self) -> list[FakeTimer]:
        """The timers still to fire, soonest first."""
        return [t for _, _, t in sorted(self._queue) if t.pending]


# -- the runtime ------------------------------------------------------------


@dataclass
class _Service:
    state: ServiceState = ServiceState.ABSENT
    exit_code: int | None = None
    healthy: bool = False  # its health endpoint answers 200 (while it runs)


@dataclass
class FakeRuntime:
    """The Runtime Protocol in memory.

    `health_urls` maps a service to the health URL its server answers on (several
    profiles of a model may share one port: the URL answers for whichever runs).
    A started service runs but is not healthy until `ready(service)`, unless it is
    in `auto_ready`.
    """

    health_urls: dict[str, str] = field(default_factory=dict)
    auto_ready: set[str] = field(default_factory=set)
    log_text: str = "fake log line 1\nfake log line 2"
    starts: list[str] = field(default_factory=list)
    stops: list[tuple[str, float]] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)  # ("start"|"stop", service)
    probes: int = 0
    services: dict[str, _Service] = field(default_factory=dict)
    start_errors: list[BaseException] = field(default_factory=list)  # raised by next starts
    stop_errors: list[BaseException] = field(default_factory=list)
    start_gate: asyncio.Event | None = None  # set: starts wait until it is set
    stop_gate: asyncio.Event | None = None
    unreachable: bool = False  # ping fails
    frozen: bool = False  # ping never answers (a stopped, not dead, daemon)
    # Docker events: a service name for a container that exits, or a RuntimeFailure
    # for a broken stream.
    events: asyncio.Queue[str | RuntimeFailure] = field(default_factory=asyncio.Queue)
    # The hosts a service's tasks run on (a runtime that places them, like Swarm); none:
    # the upstream as configured.
    nodes: dict[str, list[str]] = field(default_factory=dict)

    def _service(self, service: str) -> _Service:
        return self.services.setdefault(service, _Service())

    # -- what the test controls ------------------------------------------

    def ready(self, service: str, healthy: bool = True) -> None:
        """Its health endpoint answers 200 from now on (while it runs)."""
        self._service(service).healthy = healthy

    def exit(self, service: str, code: int = 1) -> None:
        """Its container dies on its own."""
        s = self._service(service)
        s.state, s.exit_code, s.healthy = ServiceState.EXITED, code, False

    def run(self, service: str, *, healthy: bool = True) -> None:
        """It already runs (started before the supervisor): for adoption."""
        s = self._service(service)
        s.state, s.exit_code, s.healthy = ServiceState.RUNNING, None, healthy

    def block_starts(self) -> asyncio.Event:
        """Starts wait (after being recorded) until the returned event is set."""
        self.start_gate = asyncio.Event()
        return self.start_gate

    def block_stops(self) -> asyncio.Event:
        self.stop_gate = asyncio.Event()
        return self.stop_gate

    def is_running(self, service: str) -> bool:
        return self._service(service).state is ServiceState.RUNNING

    # -- the Runtime Protocol --------------------------------------------

    async def start(self, service: str) -> None:
        self.starts.append(service)
        self.calls.append(("start", service))
        if self.start_gate is not None:
            await self.start_gate.wait()
        if self.start_errors:
            raise self.start_errors.pop(0)
        s = self._service(service)
        s.state, s.exit_code, s.healthy = (
            ServiceState.RUNNING, None, service in self.auto_ready)

    async def stop(self, service: str, grace: float) -> None:
        self.stops.append((service, grace))
        self.calls.append(("stop", service))
        if self.stop_gate is not None:
            await self.stop_gate.wait()
        if self.stop_errors:
            raise self.stop_errors.pop(0)
        s = self._service(service)
        if s.state is ServiceState.RUNNING:
            s.state, s.exit_code = ServiceState.EXITED, 0
        s.healthy = False

    async def status(self, service: str) -> ServiceStatus:
        s = self._service(service)
        return ServiceStatus(s.state, s.exit_code)

    async def logs_tail(self, service: str, lines: int) -> str:
        return "\n".join(self.log_text.splitlines()[-lines:])

    async def running_services(self) -> set[str]:
        await self.ping()
        return {name for name, s in self.services.items() if s.state is ServiceState.RUNNING}

    async def endpoints(self, service: str) -> list[str]:
        return list(self.nodes.get(service, []))

    async def scale(self, service: str, replicas: int) -> None:
        self.calls.append(("scale", f"{service}={replicas}"))

    async def ping(self) -> None:
        if self.frozen:
            await asyncio.Event().wait()
        if self.unreachable:
            raise RuntimeFailure("fake runtime unreachable")

    async def exits(self) -> AsyncIterator[str]:
        await self.ping()
        while True:
            item = await self.events.get()
            if isinstance(item, RuntimeFailure):
                raise item
            yield item

    # -- the health probe (Effects(probe=...)) -----------------------------

    async def probe(self, url: str, limit: float = 2.0) -> bool:
        self.probes += 1
        return any(
            self._service(service).state is ServiceState.RUNNING and self._service(service).healthy
            for service, health in self.health_urls.items()
            if health == url
        )


# -- building a handle ------------------------------------------------------

SINGLE: dict[str, Any] = {"service": "chat", "upstream": "http://127.0.0.1:19101"}
# Two profiles of one model on one port (as tests/integration/conftest.py MODELS["ctx"]).
CTX: dict[str, Any] = {
    "upstream": "http://127.0.0.1:19105",
    "default_profile": "short",
    "profiles": {
        "short": {"service": "short-ctx", "max_model_len": 2048},
        "long": {"service": "long-ctx", "max_model_len": 8192},
    },
    "min_residency": "0s",
}


def model_config(settings: dict[str, Any], **overrides: Any) -> ModelConfig:
    """A ModelConfig that polls readiness on every loop turn (health_interval 0)."""
    return ModelConfig.model_validate({"health_interval": 0, **settings, **overrides})


def make_handle(
    settings: dict[str, Any],
    *,
    name: str = "m",
    runtime: FakeRuntime | None = None,
    clock: FakeClock | None = None,
    **overrides: Any,
) -> tuple[ModelHandle, FakeRuntime, FakeClock]:
    """A handle for one model (`settings` as under `models.<name>` in the YAML, plus
    `overrides`), on a FakeRuntime that knows its profiles' health URLs and a FakeClock."""
    config = model_config(settings, **overrides)
    runtime = runtime if runtime is not None else FakeRuntime()
    for profile in profiles_of(config):
        runtime.health_urls.setdefault(profile.service, profile.health_url)
    clock = clock if clock is not None else FakeClock()
    # The HTTP session is only used for sleep mode and the default probe: neither here.
    effects = Effects(runtime, cast(aiohttp.ClientSession, None), clock, probe=runtime.probe)
    metrics = Metrics(snapshots=lambda: [], gpu=lambda: None)
    return ModelHandle(name, config, effects, metrics, listening(metrics)), runtime, clock


def listening(metrics: Metrics) -> Listeners:
    """Listeners as the supervisor subscribes them (add the GPU budget once made)."""
    listeners = Listeners()
    listeners.add(metrics)
    listeners.add(metrics.events)
    return listeners


# -- requests and waiting ---------------------------------------------------


class Client:
    """A request: takes a lease (held while the model comes up) and keeps it until
    `finish()` (at once with `keep=False`). `await client.result()` gives the lease or
    raises what the handle answered."""

    def __init__(self, handle: ModelHandle, tokens: int | None = None, *,
                 keep: bool = True, client: Asker = NOBODY) -> None:
        self.client = client
        self.lease: Lease | None = None
        self._done = asyncio.Event()
        if not keep:
            self._done.set()
        self.task: asyncio.Task[Lease] = asyncio.create_task(self._run(handle, tokens))

    async def _run(self, handle: ModelHandle, tokens: int | None) -> Lease:
        async with handle.lease(tokens, self.client) as lease:
            self.lease = lease
            await self._done.wait()
        return lease

    @property
    def in_flight(self) -> bool:
        return self.lease is not None and not self.task.done()

    def finish(self) -> None:
        self._done.set()

    async def result(self, turns: int = 2000) -> Lease:
        """The lease, once the request got one and ended (or what it was answered: raised);
        fails instead of hanging when it does not end within `turns` loop turns."""
        await until(self.task.done, "the request to end", turns)
        return self.task.result()


async def until(condition: Callable[[], bool], what: str = "the condition",
                turns: int = 2000) -> None:
    """Yield to the loop until `condition()` holds; fail after `turns` loop turns."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    if not condition():
        raise AssertionError(f"{what} did not happen within {turns} loop turns")


async def settle(turns: int = 50) -> None:
    """Let the loop run a while (for asserting that something does *not* happen)."""
    for _ in range(turns):
        await asyncio.sleep(0)
