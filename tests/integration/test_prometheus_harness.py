"""The Prometheus harness against a real Prometheus, scraping a `Metrics` endpoint
(no Docker needed): every dashboard query must parse and evaluate.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from supervisor.observe.gpu import Device, GpuSample, ModelMemory
from supervisor.observe.metrics import Metrics, ModelSnapshot
from tests.integration.prometheus_harness import (
    JOB,
    PrometheusError,
    load_generator,
    running_prometheus,
)


@pytest.fixture
async def metrics_target() -> AsyncIterator[str]:
    """A tiny app serving a Metrics instance with every kind of series filled in."""
    metrics = Metrics(
        lambda: [ModelSnapshot("chat", "ready", "32k", in_flight=1, idle_seconds=0.0,
                               seconds_since_last_request=0.2)],
        lambda: GpuSample(True, devices=(Device(0, "GPU-test", 10 << 30, 80 << 30, 0.5, 300.0),),
                          models=(ModelMemory("chat", "32k", 0, 9 << 30),)),
    )
    metrics.transition("chat", "stopped", "starting")
    metrics.cold_start("chat", "32k", 12.0, ok=True)
    metrics.swap("chat", "8k", "32k")
    metrics.request("chat", 200, 1.5, 0.2, cold_start=True)
    metrics.hold("chat", 11.0)
    metrics.refusal("", "unknown_model")
    app = web.Application()
    app.router.add_get("/metrics", metrics.handler())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.usefixtures("prometheus_binary")
async def test_dashboard_queries_run_on_real_prometheus(
    metrics_target: str, tmp_path: Path
) -> None:
    gen = load_generator()
    async with running_prometheus(metrics_target, tmp_path) as prom:
        up = await prom.wait_for(f'up{{job="{JOB}"}} == 1')
        assert up[0]["metric"]["instance"] == metrics_target
        state = await prom.wait_for('supervisor_model_state{model="chat",state="ready"}')
        assert state[0]["value"][1] == "1"
        assert (await prom.query("supervisor_gpu_available"))["result"][0]["value"][1] == "1"

        failures = []
        for title, expr in gen.queries(gen.dashboard()):
            try:
                data = await prom.query(gen.for_prometheus(expr))
            except PrometheusError as exc:
                failures.append(f"{title}: {exc}")
                continue
            assert data["resultType"] in {"vector", "scalar", "matrix"}
        assert not failures, "\n".join(failures)

        with pytest.raises(PrometheusError, match="bad_data"):
            await prom.query("sum(")
        process = prom.process
    assert process.poll() is not None  # stopped
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, signal.SIG_DFL)  # its whole group is gone
