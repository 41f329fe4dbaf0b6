"""The account as Prometheus counters, read at scrape (the open intervals up to now), every
unit's at 0 from the start. GPU-hours given back only grow: a unit never holds more GPUs
than its always-on counterfactual."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from supervisor.savings.account import SavingsAccount
from supervisor.savings.tally import KINDS


class SavingsCollector(Collector):
    def __init__(self, account: SavingsAccount) -> None:
        self.account = account

    def collect(self) -> Iterator[Metric]:
        self.account.fold()
        totals = sorted(self.account.totals.items())
        states = CounterMetricFamily(
            "supervisor_state_seconds", "Seconds each unit spent in each state, per profile "
            "(\"\" while stopped or failed).", labels=["model", "profile", "state"])
        held = CounterMetricFamily(
            "supervisor_model_memory_held_byte_seconds",
            "GPU memory each unit held over time (measured where known, else its need).",
            labels=["model"])
        always = CounterMetricFamily(
            "supervisor_model_memory_always_on_byte_seconds",
            "The same had the unit been always on with its full need.", labels=["model"])
        gpu = CounterMetricFamily(
            "supervisor_gpu_seconds_held", "GPU-seconds each unit reserved (asleep: its "
            "share).", labels=["model"])
        back = CounterMetricFamily(
            "supervisor_gpu_hours_given_back",
            "GPU-hours given back against the same unit always on.", labels=["model"])
        starts = CounterMetricFamily(
            "supervisor_cold_starts", "Starts and wakes of each unit.", labels=["model", "kind"])
        waits = CounterMetricFamily(
            "supervisor_cold_start_waits", "Held requests released once a start or a wake "
            "ended.", labels=["model", "kind"])
        waited = CounterMetricFamily(
            "supervisor_cold_start_wait_seconds", "Seconds held requests waited on starts "
            "and wakes (what users paid).", labels=["model", "kind"])
        energy = CounterMetricFamily(
            "supervisor_energy_joules", "Energy of each unit's GPUs, shared as memory is "
            "(only where NVML reports it).", labels=["model"])
        for name, t in totals:
            for profile, per in sorted(t.seconds.items()):
                for state, seconds in sorted(per.items()):
                    states.add_metric([name, profile, state], seconds)
            held.add_metric([name], t.byte_seconds)
            always.add_metric([name], t.always_on_byte_seconds)
            gpu.add_metric([name], t.gpu_seconds)
            back.add_metric([name], t.given_back_gpu_seconds / 3600)
            starts.add_metric([name, "start"], t.starts)
            starts.add_metric([name, "wake"], t.wakes)
            for kind in KINDS:
                waits.add_metric([name, kind], t.waits[kind])
                waited.add_metric([name, kind], t.waited[kind])
            if t.energy_joules is not None:
                energy.add_metric([name], t.energy_joules)
        yield from (states, held, always, gpu, back, starts, waits, waited, energy)
