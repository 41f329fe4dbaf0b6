"""Replay a trace through the real decision code: the models' handles (lifecycle table,
hold queue, idle timers), the adaptive idle policy's keeper and, where the config declares
GPUs, the GPU budget, on a TimedRuntime and a virtual clock. Only what the runtime and the
servers would do is faked: starting, stopping, sleeping and waking take their measured
seconds, and a request is served for the seconds it took."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from supervisor.config import Config, LivenessConfig, ModelConfig
from supervisor.gpus.budget import GpuBudget
from supervisor.gpus.measured import Measured
from supervisor.gpus.resolver import GpuNeeds
from supervisor.idle.keeper import Keeper
from supervisor.lifecycle.handle import ModelHandle
from supervisor.lifecycle.listeners import Listeners
from supervisor.lifecycle.registry import Model, build_model
from supervisor.observe.metrics import Metrics
from supervisor.refusal import Refusal
from supervisor.rules.profiles import profiles_of
from supervisor.rules.table import DOWN, State
from supervisor.simulate.fake_runtime import Durations, TimedEffects, TimedRuntime
from supervisor.simulate.trace import Trace
from supervisor.simulate.vloop import VirtualClock, VirtualLoop

T0 = 1000.0  # the virtual clock at the trace's start (not 0: a time mixed up with a
# duration shows)
HELD = (State.STARTING, State.WAKING)


@dataclass
class ModelRecord:
    """What happened to one model during a replay."""

    requests: int = 0
    failed: int = 0
    cold_starts: int = 0  # starts that requests waited on
    wakes: int = 0  # wakes that requests waited on
    starts: int = 0  # every start, pre-warms included
    prewarms: int = 0
    held: list[float] = field(default_factory=list)  # seconds each held request waited
    held_at: list[float] = field(default_factory=list)  # when each came (trace seconds)
    seconds: dict[str, float] = field(default_factory=dict)  # state -> seconds in it
    entered: float = T0
    state: str = State.STOPPED.value


class Recorder:
    """A listener: seconds per state, and the starts and wakes that held requests."""

    def __init__(self, clock: VirtualClock, models: dict[str, ModelRecord],
                 units: list[ModelHandle]) -> None:
        self.clock = clock
        self.models = models
        self.units = units  # filled once the models are built
        self.all_down = asyncio.Event()  # every unit is down (stopped or failed)

    def on_state(self, unit: ModelHandle, old: State, new: State, event: str) -> None:
        record = self.models[unit.name]
        now = self.clock.now()
        record.seconds[old.value] = record.seconds.get(old.value, 0.0) + now - record.entered
        record.entered, record.state = now, new.value
        if all(u.state in DOWN for u in self.units):
            self.all_down.set()
        else:
            self.all_down.clear()
        if new is State.STARTING:
            record.starts += 1
            record.prewarms += event == "start"
        if new is State.READY and old in HELD and unit.held:
            if old is State.STARTING:
                record.cold_starts += 1
            else:
                record.wakes += 1

    def close(self) -> None:
        now = self.clock.now()
        for record in self.models.values():
            record.seconds[record.state] = (record.seconds.get(record.state, 0.0)
                                            + now - record.entered)
            record.entered = now


@dataclass(frozen=True, slots=True)
class Setup:
    """What a replay runs: the config (its models' settings, with the overrides applied),
    the seconds each model takes to start, stop and wake, and the policy for all."""

    config: Config
    durations: dict[str, Durations]
    policy: str | None = None  # None: each model's own idle_policy
    overrides: tuple[tuple[str, float], ...] = ()  # (key, seconds) for every model


def _model_config(model: ModelConfig, setup: Setup) -> ModelConfig:
    update: dict[str, Any] = dict(setup.overrides)
    # Nothing hangs in a simulation: no liveness probes.
    update["liveness"] = LivenessConfig.model_validate({"interval": 0})
    update["warmup"] = None
    if setup.policy is not None:
        update["idle_policy"] = setup.policy
    return model.model_copy(update=update)


def _needs(config: Config) -> GpuNeeds | None:
    """The GPU needs of a config that declares its GPUs (never NVML: a replay must not
    depend on the host); loaded before the virtual loop, as it reads files in threads."""
    if not config.gpus:
        return None

    class NoNvml:
        def nvmlInit(self) -> None:
            raise RuntimeError("not in a simulation")

    needs, _ = asyncio.run(GpuNeeds.load(config, Measured(), NoNvml()))
    return needs


def replay(trace: Trace, setup: Setup) -> dict[str, ModelRecord]:
    """Run the trace to its end and until every model is given back (or its idle bound
    has passed); deterministic."""
    needs = _needs(setup.config)
    loop = VirtualLoop(T0)
    try:
        return loop.run_until_complete(_replay(loop, trace, setup, needs))
    finally:
        loop.close()


async def _replay(loop: VirtualLoop, trace: Trace, setup: Setup,
                  needs: GpuNeeds | None) -> dict[str, ModelRecord]:
    clock = VirtualClock(loop)
    names = sorted(trace.models)
    unknown = [n for n in names if n not in setup.config.models]
    if unknown:
        raise ValueError(f"the trace names models the config lacks: {', '.join(unknown)}")
    configs = {n: _model_config(setup.config.models[n], setup) for n in names}
    runtime = TimedRuntime({p.service: setup.durations.get(n, Durations())
                            for n, c in configs.items() for p in profiles_of(c)})
    records = {n: ModelRecord() for n in names}
    units: list[ModelHandle] = []
    listeners = Listeners()
    recorder = Recorder(clock, records, units)
    keeper = Keeper(lambda: trace.epoch + clock.now() - T0)
    listeners.add(recorder)
    listeners.add(keeper)
    budget = None if needs is None else GpuBudget(needs, clock, handles=lambda: units)
    if budget is not None:
        listeners.add(budget)  # plans again when a unit's state or load changes
    effects = TimedEffects(runtime, clock, budget)
    metrics = Metrics(snapshots=lambda: [], gpu=lambda: None)
    models: dict[str, Model] = {n: build_model(n, c, effects, metrics, listeners)
                                for n, c in configs.items()}
    units += [u for m in models.values() for u in m.units()]
    pending: set[asyncio.Task[None]] = set()

    async def serve(model: Model, duration: float, record: ModelRecord) -> None:
        record.requests += 1
        came = loop.time() - T0
        try:
            async with model.lease(None) as lease:
                if lease.cold_start:
                    record.held.append(lease.hold_seconds)
                    record.held_at.append(came)
                await asyncio.sleep(duration)
        except Refusal:
            record.failed += 1

    def arrive(name: str, duration: float) -> None:
        task = loop.create_task(serve(models[name], duration, records[name]))
        pending.add(task)
        task.add_done_callback(pending.discard)

    for r in trace.requests:
        loop.call_at(T0 + r.t, arrive, r.model, r.duration)
    end = T0 + (trace.requests[-1].t if trace.requests else 0.0)
    await asyncio.sleep(max(0.0, end - loop.time()))
    while pending:
        await asyncio.gather(*list(pending))
    # The models are given back once idle for their bound (or the policy's time).
    horizon = loop.time() + max(c.idle_timeout for c in configs.values()) + max(
        (d.stop for d in setup.durations.values()), default=0.0) + 1.0
    if any(u.state not in DOWN for u in units):
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(recorder.all_down.wait(), horizon - loop.time())
    recorder.close()
    keeper.close()
    for unit in units:
        await unit.close()
    return records
