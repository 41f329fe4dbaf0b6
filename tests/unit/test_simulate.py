"""`model-supervisor simulate`: the trace replayed through the real handles on a virtual
clock (the issue's proofs on generated traces: test_simulate_traces.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from supervisor.cli import main
from supervisor.config import Config
from supervisor.simulate import generate
from supervisor.simulate.engine import Setup, replay
from supervisor.simulate.fake_runtime import Durations
from supervisor.simulate.report import as_json
from supervisor.simulate.trace import MONDAY, Request, Trace, dump

CONFIG = """\
compose: {file: compose.yml, project: simtest}
models:
  m: {service: m, upstream: "http://127.0.0.1:19999", idle_timeout: 10m}
"""
SWEEP = (1, 2, 5, 10, 20, 30, 60)  # minutes
COLD = {"m": Durations(start=60.0, stop=3.0, wake=2.0)}


def config() -> Config:
    return Config.model_validate({
        "compose": {"file": "compose.yml", "project": "simtest"},
        "models": {"m": {"service": "m", "upstream": "http://127.0.0.1:19999",
                         "idle_timeout": "10m"}}})


def run(requests: list[Request], policy: str, idle_timeout: float) -> dict[str, float]:
    setup = Setup(config(), COLD, policy, (("idle_timeout", idle_timeout),))
    return as_json(replay(Trace(requests, MONDAY), setup))["models"]["m"]


def sweep(requests: list[Request]) -> dict[int, dict[str, float]]:
    return {minutes: run(requests, "fixed", minutes * 60.0) for minutes in SWEEP}


def test_a_short_trace_by_hand() -> None:
    """Two requests 5 min apart and one 30 min later, fixed 10 min: one cold start for the
    first two, one for the third; GPU held from each start until 10 min after its last
    request, plus the stops."""
    requests = [Request(0.0, "m", 2.0), Request(300.0, "m", 2.0), Request(2100.0, "m", 2.0)]
    m = run(requests, "fixed", 600.0)
    assert (m["requests"], m["cold_starts"], m["wakes"]) == (3, 2, 0)
    assert m["held_seconds"] == pytest.approx(120.0)
    # Started at 0, ready at 60, last request ends at 302, stopped from 902 to 905; then
    # started at 2100 (60 s), 2 s in flight, 600 s idle, 3 s to stop.
    assert m["gpu_seconds"] == pytest.approx(905.0 + 665.0)


def test_the_cli_prints_one_json_object_per_run(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG)
    trace = tmp_path / "trace.jsonl"
    trace.write_text(dump(generate.hourly_jobs("m", 1)))
    assert main(["simulate", "--config", str(cfg), "--trace", str(trace), "--json",
                 "--start", "m=60s", "--stop", "m=3s"]) == 0
    first = json.loads(capsys.readouterr().out)
    model = first["models"]["m"]
    for key, kind in (("requests", int), ("cold_starts", int), ("wakes", int),
                      ("held_seconds", float), ("gpu_seconds", float),
                      ("asleep_seconds", float)):
        assert isinstance(model[key], kind), key
    assert main(["simulate", "--config", str(cfg), "--trace", str(trace), "--json",
                 "--start", "m=60s", "--stop", "m=3s"]) == 0
    assert json.loads(capsys.readouterr().out) == first  # deterministic
    assert main(["simulate", "--config", str(cfg), "--trace", str(trace), "--json",
                 "--start", "m=60s", "--sweep", "idle_timeout=1m,60m"]) == 0
    runs = json.loads(capsys.readouterr().out)["sweep"]["runs"]
    assert [r["value"] for r in runs] == ["1m", "60m"]
    assert runs[0]["models"]["m"]["gpu_seconds"] < runs[1]["models"]["m"]["gpu_seconds"]
    assert main(["simulate", "--config", str(cfg), "--trace", str(trace),
                 "--start", "nope=1s"]) == 1
    assert "NAME=DURATION" in capsys.readouterr().err


def test_a_week_of_50000_requests_replays_within_a_minute() -> None:
    requests = generate.poisson("m", 7, 7 * 86400 / 50_000)
    began = time.perf_counter()
    m = run(requests, "adaptive", 3600.0)
    assert m["requests"] == len(requests) >= 49_000
    assert time.perf_counter() - began < 60
